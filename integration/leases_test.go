package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	"github.com/shylock-go/shylock/mongo"
)

// The lease workload: workers contend for one lock with short TTLs, and their holders sometimes
// outlast the TTL, then release or extend late, while (through the relay) single commands are
// delayed, held behind others, or lose their replies. Porcupine checks the history against a
// model of a lease: at most one holding at a time, where a holding also ends when its lease runs
// out; tokens strictly increase; a release or extend succeeds only for the current holding, so a
// late one after a takeover neither succeeds nor disturbs the new holder.
//
// Times are this machine's clock, which is also the clock of the servers the tests run against
// (memory, the embedded FerretDB, a local pipeline-capable server). A lease taken by a call in
// [call, return] for ttl ends between call+ttl and return+ttl; the model allows a slack for the
// millisecond precision of stored dates and the uncertainty of a client's estimate of the
// server's clock.

// Outcomes of a workload operation.
const (
	outOK      = "ok"
	outNotHeld = "not held" // ErrNotHeld
	outUnknown = "unknown"  // any other error: it may or may not have taken effect
)

// leaseOp is the input of a workload operation.
type leaseOp struct {
	Op     string // acquire, extend, release
	Handle int    // the Lock: one holding at most
	Token  uint64 // acquire: the token it got; extend, release: the holding's
	TTL    int64  // of an acquire or extend, in ns
	Call   int64  // when it was called, ns since the workload began
	Return int64  // when it returned, or for an outcome of unknown effect the last moment it may take effect
}

// leaseState is the model's lock. A holding stays the holder after its lease ran out until it
// is released or taken over: only its owner can release it meanwhile.
type leaseState struct {
	Holder       int    // handle of the holding Lock; -1 when none
	Token        uint64 // its token
	Last         uint64 // the greatest token issued
	ExpLo, ExpHi int64  // the holding's lease ends between these
}

// leaseModel is the model with the given slack on every comparison of times.
func leaseModel(slack time.Duration) porcupine.Model {
	sl := slack.Nanoseconds()
	step := func(state, input, output any) []any {
		s, in, out := state.(leaseState), input.(leaseOp), output.(string)
		mine := s.Holder == in.Handle && s.Token == in.Token
		ended := s.Holder < 0 || s.ExpLo-sl <= in.Return // the holding may be over by the return
		live := s.Holder >= 0 && s.ExpHi+sl >= in.Call   // the holding may still run at the call
		holding := func(token uint64, from int64) leaseState {
			return leaseState{Holder: in.Handle, Token: token, Last: max(s.Last, token), ExpLo: from + in.TTL, ExpHi: in.Return + in.TTL}
		}
		free := leaseState{Holder: -1, Last: s.Last}
		switch in.Op + "/" + out {
		case "acquire/" + outOK:
			if in.Token <= s.Last || !ended {
				return nil
			}
			if s.Holder >= 0 { // a takeover: the new lease began once the old one had run out
				return []any{holding(in.Token, max(in.Call, s.ExpLo-sl))}
			}
			return []any{holding(in.Token, in.Call)}
		case "extend/" + outOK:
			if !mine || !live {
				return nil
			}
			return []any{holding(s.Token, in.Call)}
		case "extend/" + outNotHeld, "extend/" + outUnknown:
			// Not held is right once the lease may have run out, by the holder's clock or the
			// server's; an extension that returns it may still have been applied.
			if out == outNotHeld && mine && !ended {
				return nil
			}
			if mine && live {
				return []any{s, holding(s.Token, in.Call)}
			}
			return []any{s}
		case "release/" + outOK:
			if !mine {
				return nil
			}
			return []any{free}
		case "release/" + outNotHeld, "release/" + outUnknown:
			if out == outNotHeld && mine && !ended {
				return nil
			}
			if mine {
				return []any{s, free}
			}
			return []any{s}
		}
		return nil
	}
	nm := porcupine.NondeterministicModel{
		Init: func() []any { return []any{leaseState{Holder: -1}} },
		Step: step,
		DescribeOperation: func(input, output any) string {
			in := input.(leaseOp)
			return fmt.Sprintf("%s(lock %d, token %d) -> %s", in.Op, in.Handle, in.Token, output)
		},
		DescribeState: func(state any) string {
			s := state.(leaseState)
			if s.Holder < 0 {
				return fmt.Sprintf("free (last token %d)", s.Last)
			}
			return fmt.Sprintf("lock %d, token %d, ends in [%v, %v]", s.Holder, s.Token,
				time.Duration(s.ExpLo).Round(time.Millisecond), time.Duration(s.ExpHi).Round(time.Millisecond))
		},
	}
	return nm.ToModel()
}

// leaseRecord is one operation as a worker recorded it.
type leaseRecord struct {
	Client int
	In     leaseOp
	Out    string
	Err    string `json:",omitempty"`
}

// leaseWorkload is one run of the workload: workers on one lock for d, recording what they do.
// window is how long after its return an operation of unknown outcome may still take effect (a
// delayed command landing).
type leaseWorkload struct {
	ttl, d, window time.Duration
	begin          time.Time

	mu      sync.Mutex
	records []leaseRecord
	handles atomic.Int64
}

func (w *leaseWorkload) now() int64 { return time.Since(w.begin).Nanoseconds() }

func (w *leaseWorkload) record(client int, in leaseOp, err error) {
	out := outOK
	switch {
	case errors.Is(err, shylock.ErrNotHeld):
		out = outNotHeld
	case err != nil:
		out = outUnknown
		in.Return += w.window.Nanoseconds()
	}
	r := leaseRecord{Client: client, In: in, Out: out}
	if err != nil {
		r.Err = err.Error()
	}
	w.mu.Lock()
	w.records = append(w.records, r)
	w.mu.Unlock()
}

// op runs f as operation op of the holding (handle, token) and records it.
func (w *leaseWorkload) op(client, handle int, op string, token uint64, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	in := leaseOp{Op: op, Handle: handle, Token: token, TTL: w.ttl.Nanoseconds(), Call: w.now()}
	err := f(ctx)
	in.Return = w.now()
	w.record(client, in, err)
	return err
}

// worker takes the lock again and again until the workload's time is up. Its holders do one
// of: short work then release; work past the TTL then a late release; an extension just as the
// lease runs out; an extension in time, then work past the new TTL and a late extend and release.
func (w *leaseWorkload) worker(client int, b shylock.Backend) {
	for end := w.begin.Add(w.d); time.Now().Before(end); {
		handle := int(w.handles.Add(1))
		l := shylock.New("leases", shylock.WithBackend(b), shylock.WithTTL(w.ttl),
			shylock.WithRetry(5*time.Millisecond, 25*time.Millisecond), discardLogs)
		var (
			in     leaseOp
			ok     bool
			err    error
			leased time.Time // about when the lease began, for timing the holder's work
		)
		if rand.N(3) == 0 { // wait, woken by the backend's waiters
			in = leaseOp{Op: "acquire", Handle: handle, TTL: w.ttl.Nanoseconds(), Call: w.now()}
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			err = l.Acquire(ctx)
			ok = err == nil
			cancel()
			leased = time.Now()
		} else {
			// Poll. Refusals are not recorded: on servers without pipeline updates the claim of a
			// takeover or release in progress refuses others, and the model, which does not track
			// claims, could not judge them. Availability has tests of its own.
			for deadline := time.Now().Add(2 * w.ttl); ; time.Sleep(5*time.Millisecond + rand.N(20*time.Millisecond)) {
				in = leaseOp{Op: "acquire", Handle: handle, TTL: w.ttl.Nanoseconds(), Call: w.now()}
				leased = time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				ok, err = l.TryAcquire(ctx)
				cancel()
				if ok || err != nil || time.Now().After(deadline) {
					break
				}
			}
		}
		in.Return, in.Token = w.now(), l.Token()
		if ok || err != nil {
			w.record(client, in, err)
		}
		if !ok {
			continue
		}
		token := l.Token()
		release := func(ctx context.Context) error { return l.Release(ctx) }
		extend := func(ctx context.Context) error { return l.Extend(ctx, w.ttl) }
		switch rand.N(4) {
		case 0:
			time.Sleep(rand.N(w.ttl / 4))
		case 1:
			time.Sleep(time.Until(leased.Add(w.ttl - 10*time.Millisecond + rand.N(50*time.Millisecond))))
		case 2:
			time.Sleep(time.Until(leased.Add(w.ttl - rand.N(30*time.Millisecond))))
			if w.op(client, handle, "extend", token, extend) == nil {
				time.Sleep(rand.N(w.ttl / 4))
			}
		case 3:
			time.Sleep(w.ttl / 3)
			leased = time.Now()
			_ = w.op(client, handle, "extend", token, extend)
			time.Sleep(time.Until(leased.Add(w.ttl - 10*time.Millisecond + rand.N(50*time.Millisecond))))
			_ = w.op(client, handle, "extend", token, extend)
		}
		_ = w.op(client, handle, "release", token, release)
	}
}

// runLeaseHistory runs the workload with one worker per backend for d, with faults running
// (until its argument is closed) beside it, and checks the history with slack.
func runLeaseHistory(t *testing.T, backends []shylock.Backend, ttl, d, window, slack time.Duration, faults func(done <-chan struct{})) {
	t.Helper()
	w := &leaseWorkload{ttl: ttl, d: d, window: window, begin: time.Now()}
	var wg sync.WaitGroup
	for i, b := range backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.worker(i, b)
		}()
	}
	waitUnder(&wg, faults)

	var (
		history []porcupine.Operation
		count   = map[string]int{}
	)
	for _, r := range w.records {
		count[r.In.Op+" "+r.Out]++
		if r.In.Op == "acquire" && r.Out == outUnknown {
			// Left out: it may have taken the lock, but where it did, only refusals (which are
			// not recorded) could tell, and a history that such a holding explains is one that
			// the lock staying with its previous holder explains too. Modelling it as maybe
			// taken would only multiply the states to search.
			continue
		}
		history = append(history, porcupine.Operation{ClientId: r.Client, Input: r.In, Output: r.Out, Call: r.In.Call, Return: r.In.Return})
	}
	model := leaseModel(slack)
	start := time.Now()
	result, info := porcupine.CheckOperationsVerbose(model, history, time.Minute)
	summary := fmt.Sprintf("%d operations from %d workers in %v (%v)", len(history), len(backends), d, count)
	switch result {
	case porcupine.Ok:
		t.Logf("%s: linearizable as a lease; checked in %v", summary, time.Since(start).Round(time.Millisecond))
	case porcupine.Illegal:
		path := filepath.Join(t.ArtifactDir(), "leases.html")
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			t.Log("visualizing the history:", err)
		}
		raw, _ := json.Marshal(w.records)
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "leases.json"), raw, 0o644)
		t.Fatalf("%s: not linearizable as a lease%s (run with -artifacts to keep %s and leases.json)", summary, repeats(w.records), path)
	default:
		t.Fatalf("%s: porcupine could not decide within a minute", summary)
	}
	if count["acquire ok"] < 10 {
		t.Fatalf("%s: too few holdings to say anything", summary)
	}
}

// repeats says which tokens more than one holding got, the commonest way to fail the model.
func repeats(records []leaseRecord) string {
	seen, out := map[uint64]int{}, ""
	for _, r := range records {
		if r.In.Op != "acquire" || r.Out != outOK {
			continue
		}
		if h, ok := seen[r.In.Token]; ok {
			out += fmt.Sprintf("; token %d went to lock %d and lock %d", r.In.Token, h, r.In.Handle)
		}
		seen[r.In.Token] = r.In.Handle
	}
	return out
}

// TestLeaseHistoryMemory runs the lease workload on the memory backend.
func TestLeaseHistoryMemory(t *testing.T) {
	const ttl = 200 * time.Millisecond
	b := memory.New()
	defer b.Close()
	// Leases end exactly at their TTL here; the holder trusts them 1% + 2ms less.
	runLeaseHistory(t, []shylock.Backend{b, b, b, b}, ttl, 15*time.Second, 0, ttl/100+10*time.Millisecond, nil)
}

// TestLeaseHistoryMongo runs the lease workload through the relay, which keeps delaying single
// commands of the lock collection, holding a release back behind the next acquire's write, and
// losing the reply of a write. Each worker has a client and a backend of its own, as a process
// would.
func TestLeaseHistoryMongo(t *testing.T) {
	const (
		ttl      = 300 * time.Millisecond
		maxDelay = 600 * time.Millisecond
	)
	r := startRelay(t, mongoURIHost(t))
	coll := collection(t)
	var backends []shylock.Backend
	for range 4 {
		backends = append(backends, newMongo(t, r.collection(t, coll), mongo.WithLogger(slog.New(slog.DiscardHandler))))
	}
	t.Logf("%s, server clock %v", mongoServer, backends[0].(*mongo.Backend).ServerClock())
	var injected sync.Map // kind -> *atomic.Int32
	caught := func(kind string) {
		n, _ := injected.LoadOrStore(kind, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
	}
	ours := func(match func(wireCommand) bool) func(wireCommand) bool {
		return func(c wireCommand) bool { return c.Collection == coll.Name() && match(c) }
	}
	kinds := map[string]func(wireCommand) bool{
		"acquire": isAcquireWrite, "release": isRelease, "extend": isExtend,
		"read": func(c wireCommand) bool { return c.Name == "find" },
	}
	names := []string{"acquire", "release", "extend", "read"}
	// Until the workers are done: every 50-250ms, one fault on the next command it matches.
	faults := func(done <-chan struct{}) {
		for {
			select {
			case <-done:
				return
			case <-time.After(50*time.Millisecond + rand.N(200*time.Millisecond)):
			}
			kind := names[rand.N(len(names))]
			var f *fault
			switch n := rand.N(9); {
			case n < 4:
				f = r.Delay(ours(kinds[kind]), 20*time.Millisecond+rand.N(maxDelay-20*time.Millisecond))
				kind = "delayed " + kind
			case n < 7: // a release and an acquire's write let go together, to meet in the server
				f = r.Hold(ours(isRelease))
				next := r.Hold(ours(isTakeoverWrite))
				go func() {
					if meet(f, next, time.Second, maxDelay) {
						caught("release met an acquire")
					}
					f.Release()
					time.Sleep(rand.N(2 * time.Millisecond))
					next.Release()
					r.Disarm(next)
				}()
				kind = "held release"
			case n < 8: // a release held back until the next acquire's write has been answered
				f = r.Hold(ours(isRelease))
				next := r.Delay(ours(isAcquireWrite), 0)
				go func() {
					defer f.Release()
					defer r.Disarm(next)
					timeout := time.After(maxDelay)
					select {
					case <-f.Arrived:
					case <-timeout:
						return
					}
					select {
					case <-next.Applied:
						caught("release reordered behind an acquire")
					case <-timeout:
					}
				}()
				kind = "held release"
			default:
				f = r.DropReply(ours(func(c wireCommand) bool { return isAcquireWrite(c) || isRelease(c) || isExtend(c) }))
				kind = "lost reply"
			}
			select {
			case <-f.Arrived:
				caught(kind)
			case <-time.After(time.Second):
				r.Disarm(f)
			case <-done:
				r.Disarm(f)
				return
			}
		}
	}
	// A command can be held up to maxDelay; its client gives up after a second at most.
	runLeaseHistory(t, backends, ttl, 25*time.Second, maxDelay+200*time.Millisecond, 100*time.Millisecond, faults)
	var report []string
	injected.Range(func(k, v any) bool {
		report = append(report, fmt.Sprintf("%s: %d", k, v.(*atomic.Int32).Load()))
		return true
	})
	t.Logf("faults: %v", report)
}

// isAcquireWrite reports whether c is a write by which an acquire takes a lock: the server-clock
// findAndModify, the insert of a record or a claim, or the delete of a record taken over.
func isAcquireWrite(c wireCommand) bool { return c.Name == "insert" || isTakeoverWrite(c) }

// isTakeoverWrite reports whether c is a write that changes a lock's holder: the server-clock
// findAndModify; on other servers, after a won claim, the delete of the old record or the
// insert of the new one.
func isTakeoverWrite(c wireCommand) bool {
	lock := c.Lock() != "" && !strings.Contains(c.Lock(), "\x00") // not a claim or a queue entry
	return c.Name == "findAndModify" && c.Pipeline && str(c.Filter, "owner") == "" ||
		c.Name == "delete" && lock && c.Filter.Lookup("token").Type != 0 ||
		c.Name == "insert" && lock && str(c.Doc, "owner") != ""
}

// isExtend reports whether c is an extension: a findAndModify of one owner's holding.
func isExtend(c wireCommand) bool {
	return c.Name == "findAndModify" && str(c.Filter, "owner") != ""
}

// TestLeaseModel makes sure the lease model refuses what it is there to find, and allows what a
// correct lock does.
func TestLeaseModel(t *testing.T) {
	const ttl = int64(100)
	model := leaseModel(0)
	acquire := func(handle int, token uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: leaseOp{Op: "acquire", Handle: handle, Token: token, TTL: ttl, Call: call, Return: ret},
			Output: outOK, Call: call, Return: ret}
	}
	op := func(kind string, handle int, token uint64, out string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: leaseOp{Op: kind, Handle: handle, Token: token, TTL: ttl, Call: call, Return: ret},
			Output: out, Call: call, Return: ret}
	}
	for _, c := range []struct {
		what string
		ok   bool
		ops  []porcupine.Operation
	}{
		{"takeover after the expiry", true, []porcupine.Operation{acquire(1, 5, 0, 10), acquire(2, 6, 110, 120)}},
		{"takeover before the expiry", false, []porcupine.Operation{acquire(1, 5, 0, 10), acquire(2, 6, 50, 60)}},
		{"takeover after a release", true, []porcupine.Operation{acquire(1, 5, 0, 10), op("release", 1, 5, outOK, 20, 30),
			acquire(2, 6, 40, 50)}},
		{"a repeated token", false, []porcupine.Operation{acquire(1, 5, 0, 10), acquire(2, 5, 200, 210)}},
		{"a late release that succeeds after a takeover", false, []porcupine.Operation{acquire(1, 5, 0, 10),
			acquire(2, 6, 110, 120), op("release", 1, 5, outOK, 130, 140)}},
		{"a late release that finds nothing", true, []porcupine.Operation{acquire(1, 5, 0, 10),
			acquire(2, 6, 110, 120), op("release", 1, 5, outNotHeld, 130, 140), op("extend", 2, 6, outOK, 150, 160)}},
		{"the new holder's extension refused while its lease runs", false, []porcupine.Operation{acquire(1, 5, 0, 10),
			acquire(2, 6, 110, 120), op("release", 1, 5, outNotHeld, 130, 140), op("extend", 2, 6, outNotHeld, 150, 160)}},
		{"a late extension that succeeds", false, []porcupine.Operation{acquire(1, 5, 0, 10), op("extend", 1, 5, outOK, 120, 130)}},
		{"a takeover within an extended lease", false, []porcupine.Operation{acquire(1, 5, 0, 10), op("extend", 1, 5, outOK, 80, 90),
			acquire(2, 6, 150, 160)}},
		{"a takeover after an extended lease", true, []porcupine.Operation{acquire(1, 5, 0, 10), op("extend", 1, 5, outOK, 80, 90),
			acquire(2, 6, 200, 210)}},
	} {
		if got := porcupine.CheckOperations(model, c.ops); got != c.ok {
			t.Errorf("%s: linearizable = %v, want %v", c.what, got, c.ok)
		}
	}
}
