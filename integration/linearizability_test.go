package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/shylock-go/shylock"
)

const (
	envOps    = "SHYLOCK_CHILD_OPS"
	envClient = "SHYLOCK_CHILD_CLIENT"
)

// historyTTL is the lease of the history workers' locks: long enough that no holding expires
// in the history, so every holding ends with a recorded release.
const historyTTL = 20 * time.Second

// histEvent is one recorded operation of a history worker.
type histEvent struct {
	Client int    `json:"client"`
	Op     string `json:"op"` // "acquire" (TryAcquire) or "release"
	Ok     bool   `json:"ok"`
	Err    string `json:"err,omitempty"`
	Call   int64  `json:"call"`
	Return int64  `json:"return"`
}

// historyMain tries, holds briefly and releases one lock until it has recorded
// $SHYLOCK_CHILD_OPS operations, then prints them as JSON lines.
func historyMain() int {
	ctx := context.Background()
	b, _, done, err := childBackend(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "history:", err)
		return 1
	}
	defer done()
	ops, _ := strconv.Atoi(os.Getenv(envOps))
	client, _ := strconv.Atoi(os.Getenv(envClient))
	var events []histEvent
	record := func(op string, call int64, ok bool, err error) {
		e := histEvent{Client: client, Op: op, Ok: ok, Call: call, Return: time.Now().UnixNano()}
		if err != nil {
			e.Err = err.Error()
		}
		events = append(events, e)
	}
	for len(events) < ops {
		l := shylock.New("linearizable", shylock.WithBackend(b), shylock.WithTTL(historyTTL))
		call := time.Now().UnixNano()
		ok, err := l.TryAcquire(ctx)
		record("acquire", call, ok, err)
		if !ok {
			time.Sleep(time.Millisecond) // let the holder finish rather than fill the history with refusals
			continue
		}
		time.Sleep(time.Duration(len(events)%3) * 200 * time.Microsecond)
		// A release that fails is retried (a retry of one that did apply succeeds), so every
		// holding ends by a release in the history rather than by an expiry it cannot show. On
		// a loaded machine an attempt can fail for want of an answer in time, so the retries go
		// on for as long as the lease may last, not for a fixed time of their own.
		call = time.Now().UnixNano()
		for end := time.Unix(0, call).Add(historyTTL); ; time.Sleep(10 * time.Millisecond) {
			if err = l.Release(ctx); err == nil || errors.Is(err, shylock.ErrNotHeld) || time.Now().After(end) {
				break
			}
		}
		record("release", call, err == nil, err)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, e := range events {
		_ = enc.Encode(e)
	}
	return 0
}

type lockInput struct {
	Op     string // acquire, release, or acquire? and release? for an acquire that failed
	Client int
}

// mutexModel is a lock as porcupine sees it. The state is the set of holders the lock may have
// (bit 0: free; bit c+1: client c), so that an acquire which failed with an unknown outcome
// can be modelled as one that may have taken and given back the lock (acquire?, release?).
var mutexModel = porcupine.Model{
	Init: func() any { return uint64(1) },
	Step: func(state, input, output any) (bool, any) {
		const free = uint64(1)
		s, in, ok := state.(uint64), input.(lockInput), output.(bool)
		me := uint64(1) << (in.Client + 1)
		switch in.Op {
		case "acquire":
			if ok {
				return s&free != 0, me
			}
			return s&^free != 0, s &^ free // refused: somebody held it
		case "release":
			return s&me != 0, free
		case "acquire?":
			if s&free != 0 {
				return true, s | me
			}
			return true, s
		default: // release?
			if s&me != 0 {
				return true, s&^me | free
			}
			return true, s
		}
	},
	DescribeOperation: func(input, output any) string {
		return fmt.Sprintf("%s(%d) -> %v", input.(lockInput).Op, input.(lockInput).Client, output)
	},
}

// waitUnder waits for wg while faults runs; faults's argument is closed once wg is done.
func waitUnder(wg *sync.WaitGroup, faults func(done <-chan struct{})) {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	if faults != nil {
		faults(done)
	}
	<-done
}

// runHistory has processes contend through uri while faults runs (until its argument is
// closed, when the workers are done), and checks the merged history against the mutex model.
func runHistory(t *testing.T, uri string, processes, opsEach int, faults func(done <-chan struct{})) (failed int) {
	t.Helper()
	coll := collection(t)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		events []histEvent
	)
	for i := range processes {
		cmd := child("history", uri, coll, envOps+"="+strconv.Itoa(opsEach), envClient+"="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var e histEvent
				if err := json.Unmarshal(sc.Bytes(), &e); err == nil {
					mu.Lock()
					events = append(events, e)
					mu.Unlock()
				}
			}
			if err := cmd.Wait(); err != nil {
				t.Errorf("history worker %d: %v", i, err)
			}
		}()
	}
	waitUnder(&wg, faults)
	var (
		history  []porcupine.Operation
		acquired int
		stuck    int // failed acquires that could not be undone
	)
	for _, e := range events {
		op := porcupine.Operation{ClientId: e.Client, Input: lockInput{e.Op, e.Client}, Output: e.Ok, Call: e.Call, Return: e.Return}
		switch {
		case e.Err != "" && e.Op == "acquire":
			// Unknown outcome: it may have held the lock until the library removed it, before
			// returning, or, when the error says it could not, until the lease ran out.
			failed++
			op.Input = lockInput{"acquire?", e.Client}
			history = append(history, op)
			op.Input = lockInput{"release?", e.Client}
			if strings.Contains(e.Err, "may stay taken") {
				stuck++
				op.Return += historyTTL.Nanoseconds()
			}
		case e.Err != "" && strings.Contains(e.Err, shylock.ErrLost.Error()):
			t.Fatalf("a release kept failing until the holding's %v lease ran out: %+v", historyTTL, e)
		case e.Err != "":
			t.Fatalf("a release failed: %+v", e)
		case e.Op == "acquire" && e.Ok:
			acquired++
		}
		history = append(history, op)
	}
	if len(history) < processes*opsEach {
		t.Fatalf("only %d of %d operations recorded", len(history), processes*opsEach)
	}
	start := time.Now()
	result, info := porcupine.CheckOperationsVerbose(mutexModel, history, 2*time.Minute)
	switch result {
	case porcupine.Ok:
		t.Logf("%d operations from %d processes (%d holdings, %d acquires of unknown outcome, %d of them not undone) are linearizable; checked in %v",
			len(history), processes, acquired, failed, stuck, time.Since(start).Round(time.Millisecond))
	case porcupine.Illegal:
		path := filepath.Join(t.ArtifactDir(), "history.html")
		if err := porcupine.VisualizePath(mutexModel, info, path); err != nil {
			t.Log("visualizing the history:", err)
		}
		raw, _ := json.Marshal(events)
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "history.json"), raw, 0o644)
		t.Fatalf("the history of %d operations is not linearizable as a mutex (run with -artifacts to keep %s and history.json)",
			len(history), path)
	default:
		t.Fatalf("porcupine could not decide within 2 minutes on %d operations", len(history))
	}
	return failed
}

// TestLinearizability checks 3 processes x 3,400 operations against a mutex model.
func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 operations")
	}
	runHistory(t, mongoURI, 3, 3400, nil)
}

// TestLinearizabilityUnderFaults does the same through a network that slows down, resets
// connections, loses replies and goes away, to a server that is killed hard and restarted on
// its data. (A holder paused past its TTL is not in this history: a mutex model cannot show
// an expiry. TestLeaseHistoryMongo checks such holders against a lease model, and
// TestFaultPausedHolder with fencing tokens.)
func TestLinearizabilityUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 operations")
	}
	var (
		upstream = mongoURIHost(t)
		srv      *serverProcess // a server of our own to kill, unless one was given
	)
	if os.Getenv("SHYLOCK_MONGO_URI") == "" {
		srv = &serverProcess{addr: freeAddr(t), dir: t.TempDir()}
		srv.start(t)
		t.Cleanup(srv.kill)
		upstream = srv.addr
	} else {
		t.Log("SHYLOCK_MONGO_URI is set: network faults only, the server is not killed")
	}
	net := startFaultyNetwork(t, upstream)
	// Fail fast rather than wait out the faults, so that they show in the history.
	uri := net.uri() + "?serverSelectionTimeoutMS=500&retryReads=false&retryWrites=false"
	rounds := 0
	failed := runHistory(t, uri, 3, 3400, func(done <-chan struct{}) {
		// Cycle through the faults for 20s (or until the workers finish), with calm between
		// them so that work goes on. Downstream faults lose the replies of applied writes.
		faults := []func(){
			func() { net.toxic(t, "slow", "latency", "downstream", `{"latency":50,"jitter":50}`, time.Second) },
			func() { net.toxic(t, "reset", "reset_peer", "upstream", `{"timeout":10}`, 300*time.Millisecond) },
			func() { net.toxic(t, "reset-down", "reset_peer", "downstream", `{"timeout":10}`, 300*time.Millisecond) },
			func() { net.cut(t, time.Second) },
			func() { net.toxic(t, "blackhole", "timeout", "upstream", `{"timeout":100}`, 300*time.Millisecond) },
			func() { net.toxic(t, "lost-replies", "timeout", "downstream", `{"timeout":100}`, 300*time.Millisecond) },
			func() { net.toxic(t, "slow-up", "latency", "upstream", `{"latency":30}`, time.Second) },
		}
		if srv != nil {
			faults = append(faults, func() {
				srv.kill()
				time.Sleep(500 * time.Millisecond)
				srv.start(t)
			})
		}
		for i, end := 0, time.Now().Add(20*time.Second); time.Now().Before(end); i++ {
			select {
			case <-done:
				return
			case <-time.After(time.Second):
			}
			faults[i%len(faults)]()
			rounds++
		}
	})
	t.Logf("%d faults injected", rounds)
	if failed == 0 {
		t.Fatal("no operation failed: the faults did not reach the workers")
	}
}

// TestMutexModelRejectsTwoHolders makes sure the checker above can fail.
func TestMutexModelRejectsTwoHolders(t *testing.T) {
	ops := []porcupine.Operation{
		{ClientId: 0, Input: lockInput{"acquire", 0}, Output: true, Call: 0, Return: 10},
		{ClientId: 1, Input: lockInput{"acquire", 1}, Output: true, Call: 20, Return: 30},
		{ClientId: 0, Input: lockInput{"release", 0}, Output: true, Call: 40, Return: 50},
	}
	if porcupine.CheckOperations(mutexModel, ops) {
		t.Fatal("two holders at once passed the mutex model")
	}
	ops[1].Call, ops[1].Return = 45, 60 // overlapping the release: linearizable after it
	if !porcupine.CheckOperations(mutexModel, ops) {
		t.Fatal("a handoff that overlaps the release was refused")
	}
	refused := porcupine.Operation{ClientId: 2, Input: lockInput{"acquire", 2}, Output: false, Call: 70, Return: 80}
	if porcupine.CheckOperations(mutexModel, append(ops, refused, porcupine.Operation{
		ClientId: 1, Input: lockInput{"release", 1}, Output: true, Call: 62, Return: 65})) {
		t.Fatal("a refusal while nobody held the lock passed")
	}
	maybe := []porcupine.Operation{ // a failed acquire may explain a refusal during it
		{ClientId: 0, Input: lockInput{"acquire?", 0}, Output: false, Call: 0, Return: 100},
		{ClientId: 1, Input: lockInput{"acquire", 1}, Output: false, Call: 10, Return: 20},
		{ClientId: 0, Input: lockInput{"release?", 0}, Output: false, Call: 0, Return: 100},
		{ClientId: 1, Input: lockInput{"acquire", 1}, Output: true, Call: 110, Return: 120},
	}
	if !porcupine.CheckOperations(mutexModel, maybe) {
		t.Fatal("a refusal explained by an acquire of unknown outcome was refused")
	}
}
