package integration

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// discardLogs keeps the losses these tests provoke on purpose out of their output.
var discardLogs = shylock.WithLogger(slog.New(slog.DiscardHandler))

// TestLateReleaseAtTakeover: a holder whose work outlasted its TTL releases just as a waiter
// takes the lock over at the expiry. The release must change nothing: the new holding stays, and
// the next holder's token is greater still. The relay holds the late release and the takeover's
// write until both have arrived, then lets the release go first and the write a moment later, so
// that they meet in the server as they would by chance now and then. Several names in parallel,
// each lock in turn the waiter of one round and the late holder of the next.
func TestLateReleaseAtTakeover(t *testing.T) {
	const (
		names  = 8
		rounds = 12
		ttl    = 300 * time.Millisecond
	)
	ctx := context.Background()
	coll := collection(t)
	r := startRelay(t, mongoURIHost(t))
	direct := newMongo(t, coll)
	backends := []*mongo.Backend{newMongo(t, r.collection(t, coll)), newMongo(t, r.collection(t, coll))}
	t.Logf("%s, server clock %v", mongoServer, direct.ServerClock())
	// How long after the first of them the other must arrive. On servers without pipeline
	// updates, longer than the second a claim keeps takeovers off (an extend's; a release's,
	// when releases claimed), so that a release held past any claim still meets the takeover.
	within := ttl
	if !direct.ServerClock() {
		within = 2 * time.Second
	}
	var (
		mu       sync.Mutex
		freed    []string // takeovers whose new holding the late release undid
		repeated []string // tokens issued twice
		missed   int      // rounds in which the release and the takeover did not meet in the relay
		wg       sync.WaitGroup
	)
	fail := func(list *[]string, format string, args ...any) {
		mu.Lock()
		*list = append(*list, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	start := time.Now()
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("late-release/%d", i)
			lock := func(round int) *shylock.Lock {
				return shylock.New(name, shylock.WithBackend(backends[round%2]), shylock.WithTTL(ttl),
					shylock.WithOwner(fmt.Sprintf("%s/%d", name, round)), discardLogs)
			}
			holder := lock(0)
			leased := time.Now()
			if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
				t.Errorf("%s: TryAcquire = %v, %v", name, ok, err)
				return
			}
			last := holder.Token()
			for round := 1; round <= rounds; round++ {
				release := r.Hold(func(c wireCommand) bool { return isRelease(c) && c.Lock() == name })
				takeover := r.Hold(func(c wireCommand) bool { return isTakeoverOf(c, name) })
				waiter := lock(round)
				actx, cancel := context.WithTimeout(ctx, 10*time.Second)
				acquired := waiter.AcquireAsync(actx)
				time.Sleep(time.Until(leased.Add(ttl + rand.N(20*time.Millisecond))))
				released := make(chan struct{})
				go func() { _ = holder.Release(ctx); close(released) }()
				if meet(release, takeover, 5*time.Second, within) {
					release.Release()
					time.Sleep(rand.N(2 * time.Millisecond))
				} else {
					mu.Lock()
					missed++
					mu.Unlock()
				}
				for _, f := range []*fault{release, takeover} {
					r.Disarm(f)
					f.Release()
				}
				<-released
				err := <-acquired
				cancel()
				if err != nil {
					t.Errorf("%s round %d: Acquire = %v", name, round, err)
					return
				}
				info, err := direct.Inspect(ctx, name)
				if err != nil {
					t.Errorf("%s: Inspect: %v", name, err)
					return
				}
				tok := waiter.Token()
				if info.Token != tok || info.Owner == "" {
					fail(&freed, "%s round %d: the new holding (token %d) reads %+v after the old holder's late release",
						name, round, tok, info)
				}
				if tok <= last {
					fail(&repeated, "%s round %d: token %d after %d", name, round, tok, last)
				}
				last = tok
				leased = time.Now()
				_ = waiter.Extend(ctx, ttl) // a fresh lease for its late release in the next round
				holder = waiter
			}
			_ = holder.Release(ctx)
		}()
	}
	wg.Wait()
	t.Logf("%d takeovers in %v (%d without the release meeting the takeover): %d new holdings undone by a late release, %d tokens repeated",
		names*rounds, time.Since(start).Round(time.Millisecond), missed, len(freed), len(repeated))
	for _, list := range [][]string{freed, repeated} {
		for _, s := range list[:min(len(list), 5)] {
			t.Error(s)
		}
	}
}

// meet reports whether both faults caught their commands: the first within first, the other
// within then of it.
func meet(a, b *fault, first, then time.Duration) bool {
	select {
	case <-a.Arrived:
	case <-b.Arrived:
	case <-time.After(first):
		return false
	}
	timeout := time.After(then)
	for _, f := range []*fault{a, b} {
		select {
		case <-f.Arrived:
		case <-timeout:
			return false
		}
	}
	return true
}

// isRelease reports whether c is a release of the mongo backend: it frees a record.
func isRelease(c wireCommand) bool {
	owner, ok := c.Set.Lookup("owner").StringValueOK()
	return c.Name == "update" && ok && owner == ""
}

// isTakeover reports whether c is the write by which the holder labelled label takes name: the
// server-clock acquire, or the insert of its record after a won claim on other servers.
func isTakeover(c wireCommand, name, label string) bool {
	return isTakeoverWrite(c) && (c.Pipeline && c.Lock() == name || str(c.Doc, "label") == label)
}

// isTakeoverOf reports whether c is the first write of a takeover of name: the server-clock
// acquire, or the delete of the old record after a won claim on other servers, which a late
// write of the old holding (by the old record's _id, on such servers) could meet.
func isTakeoverOf(c wireCommand, name string) bool {
	return isTakeoverWrite(c) && c.Name != "insert" && c.Lock() == name
}

// TestAbandonedAcquireLandsLate: an acquire's write is delayed in flight for 1.5s (as TCP
// retransmission or a queue in the server would) and the Acquire's context ends after 300ms,
// while the write is still on its way; then the write lands. Acquire must return by its
// deadline, and the lock must not stay taken by the owner nobody will release: another client
// takes it within a bounded time, long before the TTL of a minute. Each write an acquire can
// make on the server's path is delayed in turn.
func TestAbandonedAcquireLandsLate(t *testing.T) {
	const (
		delay    = 1500 * time.Millisecond
		deadline = 300 * time.Millisecond
		bound    = 8 * time.Second // for the lock to be free again after Acquire returned
	)
	ctx := context.Background()
	r := startRelay(t, mongoURIHost(t))
	coll := collection(t)
	direct := newMongo(t, coll)
	via := newMongo(t, r.collection(t, coll))
	type write struct {
		what  string
		free  bool // the record exists, free, before the attempt; else the attempt creates it
		match func(c wireCommand, name, label string) bool
	}
	writes := []write{
		{"new record", false, func(c wireCommand, name, _ string) bool { return c.Name == "insert" && c.Lock() == name }},
		{"claim", true, func(c wireCommand, name, _ string) bool {
			return c.Name == "insert" && strings.HasPrefix(c.Lock(), "\x00"+name+"\x00")
		}},
		{"old record", true, func(c wireCommand, name, _ string) bool { return c.Name == "delete" && isTakeoverOf(c, name) }},
		{"takeover", true, func(c wireCommand, name, label string) bool { return isTakeover(c, name, label) }},
	}
	if via.ServerClock() { // one findAndModify, whether it creates the record or takes it
		writes = []write{{"new record", false, isTakeover}, {"free record", true, isTakeover}}
	}
	t.Logf("%s, server clock %v", mongoServer, via.ServerClock())
	for _, w := range writes {
		t.Run(w.what, func(t *testing.T) {
			t.Parallel()
			name, label := "abandoned/"+w.what, "abandoned "+w.what
			if w.free {
				l := shylock.New(name, shylock.WithBackend(direct))
				if ok, err := l.TryAcquire(ctx); !ok || err != nil {
					t.Fatalf("TryAcquire = %v, %v", ok, err)
				}
				if err := l.Release(ctx); err != nil {
					t.Fatal(err)
				}
			}
			late := r.Delay(func(c wireCommand) bool { return c.Collection == coll.Name() && w.match(c, name, label) }, delay)
			l := shylock.New(name, shylock.WithBackend(via), shylock.WithTTL(time.Minute), shylock.WithOwner(label), discardLogs)
			actx, cancel := context.WithTimeout(ctx, deadline)
			start := time.Now()
			err := l.Acquire(actx)
			returned := time.Now()
			cancel()
			over := returned.Sub(start) - deadline
			t.Logf("Acquire returned %v after its deadline: %v", over.Round(time.Millisecond), err)
			select {
			case <-late.Arrived:
			default:
				r.Disarm(late)
				t.Fatalf("no %s write reached the relay: the test did not delay the acquire", w.what)
			}
			if err == nil {
				t.Fatal("Acquire succeeded though its write was delayed past its deadline")
			}
			if over > time.Second {
				t.Errorf("Acquire returned %v after its deadline", over)
			}
			select {
			case <-late.Applied:
			case <-time.After(5 * time.Second):
				t.Fatal("the delayed write never reached the server")
			}
			// The write has landed. Another client must get the lock well before its TTL.
			other := shylock.New(name, shylock.WithBackend(direct), discardLogs)
			for {
				ok, err := other.TryAcquire(ctx)
				if ok {
					t.Logf("another client took the lock %v after Acquire returned", time.Since(returned).Round(time.Millisecond))
					_ = other.Release(ctx)
					return
				}
				if time.Since(returned) > bound {
					info, _ := direct.Inspect(ctx, name)
					t.Fatalf("%v after the cancelled Acquire returned, another client still cannot take the lock (TryAcquire: %v; "+
						"Inspect: %+v): the late write left behind what nobody removes before its TTL", bound, err, info)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestStalledTakeover: a takeover whose write is held up in flight for longer than its TTL
// (here by the relay) has let its claim, on servers without pipeline updates, run out; a second
// taker may then take the lock over, and the two writes may meet in the server. At most one of
// the two may come out holding the lock with a given token, and the stalled write must not
// overwrite the second taker's holding.
func TestStalledTakeover(t *testing.T) {
	const (
		rounds = 6
		ttl    = 300 * time.Millisecond
	)
	ctx := context.Background()
	r := startRelay(t, mongoURIHost(t))
	coll := collection(t)
	direct := newMongo(t, coll)
	via := newMongo(t, r.collection(t, coll))
	t.Logf("%s, server clock %v", mongoServer, via.ServerClock())
	type result struct {
		ok    bool
		err   error
		token uint64
	}
	try := func(l *shylock.Lock) <-chan result {
		ch := make(chan result, 1)
		go func() {
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			ok, err := l.TryAcquire(actx)
			ch <- result{ok, err, l.Token()}
		}()
		return ch
	}
	twice, overwritten := 0, 0
	for round := range rounds {
		name := fmt.Sprintf("stalled/%d", round)
		holder := shylock.New(name, shylock.WithBackend(direct), shylock.WithTTL(ttl), discardLogs)
		if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("TryAcquire = %v, %v", ok, err)
		}
		time.Sleep(ttl + 50*time.Millisecond) // expired
		first, second := name+" first", name+" second"
		stalled := r.Hold(func(c wireCommand) bool { return isTakeover(c, name, first) })
		next := r.Hold(func(c wireCommand) bool { return isTakeover(c, name, second) })
		r1 := try(shylock.New(name, shylock.WithBackend(via), shylock.WithTTL(ttl), shylock.WithOwner(first), discardLogs))
		select {
		case <-stalled.Arrived:
		case <-time.After(5 * time.Second):
			t.Fatal("the first taker's write never reached the relay")
		}
		time.Sleep(ttl + 50*time.Millisecond) // the lease the first taker would take, and its claim, have run out
		r2 := try(shylock.New(name, shylock.WithBackend(via), shylock.WithTTL(ttl), shylock.WithOwner(second), discardLogs))
		select {
		case <-next.Arrived:
		case <-time.After(2 * time.Second): // refused, as it may be
		}
		stalled.Release()
		next.Release()
		r.Disarm(next)
		a, b := <-r1, <-r2
		if a.ok && b.ok && a.token == b.token {
			twice++
			t.Errorf("round %d: both takers acquired the lock, with the same token %d", round, a.token)
		}
		if b.ok {
			if info, err := direct.Inspect(ctx, name); err != nil || !info.Held || info.Token != b.token || info.Label != second {
				overwritten++
				t.Logf("round %d: the second taker holds token %d, but the record reads %+v (%v)", round, b.token, info, err)
			}
		}
		t.Logf("round %d: the stalled taker: %v, %v, token %d; the second: %v, %v, token %d", round, a.ok, a.err, a.token, b.ok, b.err, b.token)
	}
	if twice > 0 {
		t.Errorf("in %d of %d rounds two takers came out holding the lock with one token", twice, rounds)
	}
	if overwritten > 0 {
		t.Errorf("in %d of %d rounds the stalled taker's write overwrote the second taker's holding", overwritten, rounds)
	}
}
