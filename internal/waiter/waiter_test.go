package waiter

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

type probeCounter struct {
	calls     atomic.Int32
	held      atomic.Bool
	remaining atomic.Int64
}

func (p *probeCounter) probe(context.Context, string) (bool, time.Duration, error) {
	p.calls.Add(1)
	return p.held.Load(), time.Duration(p.remaining.Load()), nil
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
	h := New(p.probe)
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
	h := New(p.probe)
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
	h := New(p.probe)
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
	h := New(p.probe)
	defer h.Close()
	before := runtime.NumGoroutine()
	s1 := h.Subscribe("x", time.Millisecond, time.Millisecond)
	s2 := h.Subscribe("y", time.Millisecond, time.Millisecond)
	if runtime.NumGoroutine() != before+2 {
		t.Fatalf("%d goroutines for 2 names; want one poller each", runtime.NumGoroutine()-before)
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
	h := New(p.probe)
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
	h := New(func(context.Context, string) (bool, time.Duration, error) {
		calls.Add(1)
		return false, 0, errors.New("server unreachable (test)")
	})
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
	h := New(p.probe)
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
	h := New(p.probe)
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
