package waiter

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type probeCounter struct {
	calls     atomic.Int32
	names     atomic.Int32 // asked about, over all calls
	held      atomic.Bool
	remaining atomic.Int64
}

func (p *probeCounter) probe(_ context.Context, names []string) (map[string]time.Duration, error) {
	p.calls.Add(1)
	p.names.Add(int32(len(names)))
	held := map[string]time.Duration{}
	if p.held.Load() {
		for _, n := range names {
			held[n] = time.Duration(p.remaining.Load())
		}
	}
	return held, nil
}

func received(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestOnePollerForManyWaiters: 100 waiters on one name cause as many probes as one would.
func TestOnePollerForManyWaiters(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(time.Hour))
	h := New(p.probe, nil)
	defer h.Close()
	var subs []*Sub
	for range 100 {
		subs = append(subs, h.Subscribe("x", 10*time.Millisecond, 10*time.Millisecond))
	}
	time.Sleep(205 * time.Millisecond)
	// One probe at once, then one per 10ms: about 21 for one waiter, and so for a hundred.
	if n := p.calls.Load(); n < 5 || n > 40 {
		t.Fatalf("%d probes in 205ms at a 10ms interval for 100 waiters; want about 21", n)
	}
	for _, s := range subs {
		s.Close()
	}
}

// TestWakesOneAndPassesOn: a release wakes the longest waiting subscriber only, and a woken
// subscriber that leaves passes the wake-up on.
func TestWakesOneAndPassesOn(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(time.Hour))
	h := New(p.probe, nil)
	defer h.Close()
	a := h.Subscribe("x", time.Hour, time.Hour)
	b := h.Subscribe("x", time.Hour, time.Hour)
	defer b.Close()
	h.Notify("x")
	if !received(a.C(), time.Second) {
		t.Fatal("the first waiter was not woken")
	}
	if received(b.C(), 20*time.Millisecond) {
		t.Fatal("the second waiter was woken too")
	}
	a.Close()
	if !received(b.C(), time.Second) {
		t.Fatal("the wake-up was not passed on when the woken waiter left")
	}
}

// TestWakesAtExpiry: a poller with a long interval still probes at the holder's expiry.
func TestWakesAtExpiry(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(50 * time.Millisecond))
	h := New(p.probe, nil)
	defer h.Close()
	s := h.Subscribe("x", time.Hour, time.Hour)
	defer s.Close()
	time.Sleep(10 * time.Millisecond) // the first probe has learned the expiry
	p.held.Store(false)
	if !received(s.C(), 5*time.Second) {
		t.Fatal("no wake-up at the holder's expiry")
	}
}

// TestPollerStopsWithLastWaiter: no goroutine outlives the subscriptions.
func TestPollerStopsWithLastWaiter(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	h := New(p.probe, nil)
	defer h.Close()
	before := runtime.NumGoroutine()
	s1 := h.Subscribe("x", time.Millisecond, time.Millisecond)
	s2 := h.Subscribe("y", time.Millisecond, time.Millisecond)
	if runtime.NumGoroutine() != before+1 {
		t.Fatalf("%d goroutines for 2 names; want one poller", runtime.NumGoroutine()-before)
	}
	s1.Close()
	s2.Close()
	// Close returns once the pollers have; a goroutine of the runtime's may still be ending.
	for end := time.Now().Add(time.Second); runtime.NumGoroutine() != before && time.Now().Before(end); {
		time.Sleep(time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n != before {
		t.Fatalf("%d goroutines left after the last waiters closed", n-before)
	}
	calls := p.calls.Load()
	time.Sleep(20 * time.Millisecond)
	if p.calls.Load() != calls {
		t.Fatal("probes went on after the last waiter left")
	}
}

func TestCloseWakesEveryWaiter(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	h := New(p.probe, nil)
	a, b := h.Subscribe("x", time.Hour, time.Hour), h.Subscribe("x", time.Hour, time.Hour)
	h.Close()
	if !received(a.C(), time.Second) || !received(b.C(), time.Second) {
		t.Fatal("Close did not wake every waiter")
	}
	if !received(h.Subscribe("x", time.Hour, time.Hour).C(), time.Second) {
		t.Fatal("a subscription after Close is not woken at once")
	}
	a.Close()
	b.Close()
}

// TestFailingProbeWakesWaiters: a probe that keeps failing (for any reason) must not leave the
// waiters asleep until their context ends; they are woken to attempt on their own, at most
// maxPoll apart.
func TestFailingProbeWakesWaiters(t *testing.T) {
	var calls atomic.Int32
	h := New(func(context.Context, []string) (map[string]time.Duration, error) {
		calls.Add(1)
		return nil, errors.New("server unreachable (test)")
	}, nil)
	defer h.Close()
	s := h.Subscribe("x", 5*time.Millisecond, 20*time.Millisecond)
	defer s.Close()
	for i := range 5 {
		if !received(s.C(), time.Second) {
			t.Fatalf("wake-up %d never came while the probe failed (%d probes)", i, calls.Load())
		}
	}
}

// TestPollsAgainWhenPushingStops: while releases are pushed the poller sleeps long; when the
// pushing stops (a change stream or events cursor died) it must poll at its own pace at once,
// not after the long sleep.
func TestPollsAgainWhenPushingStops(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(time.Hour))
	h := New(p.probe, nil)
	defer h.Close()
	h.SetPushed(true)
	s := h.Subscribe("x", 5*time.Millisecond, 20*time.Millisecond)
	defer s.Close()
	time.Sleep(100 * time.Millisecond)
	if n := p.calls.Load(); n > 2 {
		t.Fatalf("%d probes in 100ms while pushed; want the first alone", n)
	}
	h.SetPushed(false)
	p.held.Store(false)
	if !received(s.C(), time.Second) {
		t.Fatal("the waiter was not woken by polling within a second after the pushing stopped")
	}
}

// TestPushedPollerLooksAgainAfterFree: while releases are pushed, a probe that found the lock
// free is followed soon by another, not PushedPoll later: the woken waiter may have lost the lock
// to another client, and that holder's expiry must wake the waiter within a poll of it.
func TestPushedPollerLooksAgainAfterFree(t *testing.T) {
	p := &probeCounter{} // free at first
	h := New(p.probe, nil)
	defer h.Close()
	h.SetPushed(true)
	s := h.Subscribe("x", 5*time.Millisecond, 20*time.Millisecond)
	defer s.Close()
	if !received(s.C(), time.Second) {
		t.Fatal("a probe that found the lock free woke nobody")
	}
	// Another client takes it for 200ms before the woken waiter's attempt, then dies.
	p.remaining.Store(int64(200 * time.Millisecond))
	p.held.Store(true)
	start := time.Now()
	expired := time.AfterFunc(200*time.Millisecond, func() { p.held.Store(false) })
	defer expired.Stop()
	if !received(s.C(), 5*time.Second) {
		t.Fatal("the waiter was not woken at the new holder's expiry")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("woken %v after a 200ms lease began; want its expiry plus one poll", d)
	}
}

// TestOneProbeForManyNames: a process waiting on a thousand names sends about as many probes as
// one waiting on one name, each asking about every name.
func TestOneProbeForManyNames(t *testing.T) {
	one, many := &probeCounter{}, &probeCounter{}
	for _, p := range []*probeCounter{one, many} {
		p.held.Store(true)
		p.remaining.Store(int64(time.Hour))
	}
	h1, hN := New(one.probe, nil), New(many.probe, nil)
	defer h1.Close()
	defer hN.Close()
	var subs []*Sub
	subs = append(subs, h1.Subscribe("x", 10*time.Millisecond, 20*time.Millisecond))
	for i := range 1000 {
		subs = append(subs, hN.Subscribe(fmt.Sprint("name-", i), 10*time.Millisecond, 20*time.Millisecond))
	}
	time.Sleep(300 * time.Millisecond) // past the first probes, the backoff's climb and the names falling in step
	c1, cN, namesN := one.calls.Load(), many.calls.Load(), many.names.Load()
	time.Sleep(300 * time.Millisecond)
	for _, s := range subs {
		s.Close()
	}
	c1, cN, namesN = one.calls.Load()-c1, many.calls.Load()-cN, many.names.Load()-namesN
	// A loaded machine (the race detector, other packages' tests) stretches a probe of 1,000
	// names more than one of one name, and the names fall out of step a little: the bound is
	// loose, as a probe per name would be hundreds of times as many.
	if c1 < 5 || cN > 3*c1+5 {
		t.Fatalf("%d probes for 1,000 names, %d for one name, in the same 300ms; want about as many", cN, c1)
	}
	if per := namesN / max(cN, 1); per < 500 {
		t.Fatalf("%d names per probe on average; want the batch to hold about all 1,000", per)
	}
}

// TestNamesProbedTogetherStayTogether: names that came to be waited on at different moments,
// with a probe that takes a while (a server's round trip), fall into one batch and stay there:
// each probe asks about all of them. With a delay drawn per name they split into cohorts probed
// in turn, each probe asking about part of them.
func TestNamesProbedTogetherStayTogether(t *testing.T) {
	const n = 100
	var calls, names atomic.Int32
	h := New(func(_ context.Context, batch []string) (map[string]time.Duration, error) {
		time.Sleep(8 * time.Millisecond)
		calls.Add(1)
		names.Add(int32(len(batch)))
		held := map[string]time.Duration{}
		for _, name := range batch {
			held[name] = time.Hour
		}
		return held, nil
	}, nil)
	defer h.Close()
	var subs []*Sub
	for i := range n {
		subs = append(subs, h.Subscribe(fmt.Sprint("name-", i), 25*time.Millisecond, 50*time.Millisecond))
		time.Sleep(400 * time.Microsecond) // subscriptions spread over 40ms
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	time.Sleep(500 * time.Millisecond) // past the first probes and the backoff's climb
	c0, n0 := calls.Load(), names.Load()
	time.Sleep(time.Second)
	c, asked := calls.Load()-c0, names.Load()-n0
	if c == 0 {
		t.Fatal("no probe in a second")
	}
	if per := float64(asked) / float64(c); per < 0.95*n {
		t.Fatalf("%d probes in a second asked about %.1f names each on average; want all %d in each", c, per, n)
	}
}

// TestSlowProbesLeaveTheServerMostlyIdle: where each probe takes long (a server that scans the
// collection for it), the poller waits in proportion before the next, whatever the poll
// interval: back to back, a 40 ms probe every 5-10 ms kept the server busy 80% of the time.
func TestSlowProbesLeaveTheServerMostlyIdle(t *testing.T) {
	const took = 40 * time.Millisecond
	var calls atomic.Int32
	h := New(func(_ context.Context, batch []string) (map[string]time.Duration, error) {
		time.Sleep(took)
		calls.Add(1)
		return map[string]time.Duration{batch[0]: time.Hour}, nil
	}, nil)
	defer h.Close()
	s := h.Subscribe("slow", 5*time.Millisecond, 10*time.Millisecond)
	defer s.Close()
	time.Sleep(200 * time.Millisecond)
	c0, start := calls.Load(), time.Now()
	time.Sleep(1500 * time.Millisecond)
	c := calls.Load() - c0
	if c == 0 {
		t.Fatal("no probe in 1.5 s")
	}
	if share := float64(c) * float64(took) / float64(time.Since(start)); share > 1.0/probeShare+0.1 {
		t.Fatalf("%d probes of %v in %v: the server was probed %.0f%% of the time, want at most %.0f%%",
			c, took, time.Since(start).Round(time.Millisecond), 100*share, 100.0/probeShare)
	}
}

// blockingProbe answers held for an hour, each call once the test lets it.
type blockingProbe struct {
	calls   chan []string
	proceed chan struct{}
}

func newBlockingProbe() *blockingProbe {
	return &blockingProbe{calls: make(chan []string, 100), proceed: make(chan struct{}, 100)}
}

func (p *blockingProbe) probe(ctx context.Context, names []string) (map[string]time.Duration, error) {
	p.calls <- names
	select {
	case <-p.proceed:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	held := map[string]time.Duration{}
	for _, n := range names {
		held[n] = time.Hour
	}
	return held, nil
}

func (p *blockingProbe) next(t *testing.T) []string {
	t.Helper()
	select {
	case names := <-p.calls:
		return names
	case <-time.After(5 * time.Second):
		t.Fatal("no probe within 5s")
		return nil
	}
}

// TestMissedDuringProbe: a waiter that finds a new holder while a probe is in flight has its
// name probed again at once: the answer in flight may predate the new holder.
func TestMissedDuringProbe(t *testing.T) {
	p := newBlockingProbe()
	h := New(p.probe, nil)
	defer h.Close()
	s := h.Subscribe("x", time.Hour, time.Hour)
	defer s.Close()
	p.next(t)
	s.Missed()
	p.proceed <- struct{}{}
	if names := p.next(t); !slices.Equal(names, []string{"x"}) {
		t.Fatalf("probed %v after Missed; want x", names)
	}
	p.proceed <- struct{}{}
}

// TestNewWaiterGetsItsOwnProbe: an answer asked for before a name's waiters came (the previous
// ones left while it was in flight) does not stand for the new waiters: they get a probe of
// their own, since a release between their failed attempt and their subscription must be seen.
func TestNewWaiterGetsItsOwnProbe(t *testing.T) {
	p := newBlockingProbe()
	h := New(p.probe, nil)
	defer h.Close()
	y := h.Subscribe("y", time.Hour, time.Hour) // keeps the poller running
	defer y.Close()
	p.next(t)
	p.proceed <- struct{}{}
	x := h.Subscribe("x", time.Hour, time.Hour)
	if names := p.next(t); !slices.Contains(names, "x") {
		t.Fatalf("probed %v; want x", names)
	}
	x.Close()
	x2 := h.Subscribe("x", time.Hour, time.Hour)
	defer x2.Close()
	p.proceed <- struct{}{} // the answer about x's earlier waiters
	if names := p.next(t); !slices.Contains(names, "x") {
		t.Fatalf("probed %v; want x again, for its new waiter", names)
	}
	p.proceed <- struct{}{}
}

// TestEachNameWakesAtItsExpiry: names probed in one batch keep their own holders' expiries.
func TestEachNameWakesAtItsExpiry(t *testing.T) {
	var shortFree atomic.Bool
	h := New(func(_ context.Context, names []string) (map[string]time.Duration, error) {
		held := map[string]time.Duration{}
		for _, n := range names {
			switch {
			case n == "long":
				held[n] = time.Hour
			case !shortFree.Load():
				held[n] = 50 * time.Millisecond
			}
		}
		return held, nil
	}, nil)
	defer h.Close()
	long := h.Subscribe("long", time.Hour, time.Hour)
	defer long.Close()
	short := h.Subscribe("short", time.Hour, time.Hour)
	defer short.Close()
	time.Sleep(10 * time.Millisecond)
	shortFree.Store(true)
	if !received(short.C(), 5*time.Second) {
		t.Fatal("no wake-up at the short holder's expiry")
	}
	if received(long.C(), 50*time.Millisecond) {
		t.Fatal("the other name's waiter was woken too")
	}
}

// queueRecorder records what a hub asks of the queues.
type queueRecorder struct {
	mu      sync.Mutex
	renewed [][]string
	left    []string
}

func (q *queueRecorder) queue(every time.Duration) *Queue {
	return &Queue{Every: every,
		Renew: func(_ context.Context, party string, names []string) error {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.renewed = append(q.renewed, append([]string{party}, names...))
			return nil
		},
		Leave: func(_ context.Context, party, name string) error {
			q.mu.Lock()
			defer q.mu.Unlock()
			q.left = append(q.left, party+"/"+name)
			return nil
		}}
}

// TestQueueRenewedInOneBatch: the entries of every waited name are renewed in one call per
// interval; an entry the party took is not renewed, nor left.
func TestQueueRenewedInOneBatch(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(time.Hour))
	rec := &queueRecorder{}
	h := New(p.probe, rec.queue(50*time.Millisecond))
	defer h.Close()
	var subs []*Sub
	for i := range 100 {
		name := fmt.Sprint("n", i)
		h.Joined(name, "me")
		subs = append(subs, h.Subscribe(name, time.Second, time.Second))
	}
	h.Took("n0", "me")
	time.Sleep(300 * time.Millisecond)
	rec.mu.Lock()
	calls := slices.Clone(rec.renewed)
	rec.mu.Unlock()
	if len(calls) < 2 || len(calls) > 8 {
		t.Fatalf("%d renewals in 300ms at a 50ms interval; want about 3 (one per other interval)", len(calls))
	}
	for _, c := range calls {
		if c[0] != "me" || len(c) != 100 || slices.Contains(c, "n0") {
			t.Fatalf("a renewal of %d names for %q (n0 among them: %v); want the 99 still waited, in one call",
				len(c)-1, c[0], slices.Contains(c, "n0"))
		}
	}
	for _, s := range subs {
		s.Close()
	}
	waitFor(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.left) == 99
	}, "the last waiter of each name to leave its entry")
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if slices.Contains(rec.left, "me/n0") {
		t.Fatal("an entry the party took was left again")
	}
}

// TestQueueLeftByTheLastWaiterOnly: a name's entry stays while a waiter of it remains.
func TestQueueLeftByTheLastWaiterOnly(t *testing.T) {
	p := &probeCounter{}
	p.held.Store(true)
	p.remaining.Store(int64(time.Hour))
	rec := &queueRecorder{}
	h := New(p.probe, rec.queue(time.Hour))
	defer h.Close()
	h.Joined("x", "me")
	a, b := h.Subscribe("x", time.Second, time.Second), h.Subscribe("x", time.Second, time.Second)
	a.Close()
	time.Sleep(50 * time.Millisecond)
	rec.mu.Lock()
	n := len(rec.left)
	rec.mu.Unlock()
	if n != 0 {
		t.Fatal("the entry left while a waiter of the name remained")
	}
	b.Close()
	waitFor(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return slices.Equal(rec.left, []string{"me/x"})
	}, "the last waiter to leave the entry")
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
