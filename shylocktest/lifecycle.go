package shylocktest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

func testWithoutHolding(t *testing.T, s *suite) {
	l := s.lock("x")
	wantErr(t, "Release before Acquire", l.Release(s.ctx), shylock.ErrNotHeld)
	wantErr(t, "Extend before Acquire", l.Extend(s.ctx, time.Minute), shylock.ErrNotHeld)
	s.mustAcquire(t, l)
	if ok, err := l.TryAcquire(s.ctx); ok || !errors.Is(err, shylock.ErrAlreadyHeld) || errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("TryAcquire on a Lock that already holds = %v, %v; want false and ErrAlreadyHeld, not ErrLocked", ok, err)
	}
	if err := l.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wantErr(t, "second Release", l.Release(s.ctx), shylock.ErrNotHeld)
	wantErr(t, "Extend after Release", l.Extend(s.ctx, time.Minute), shylock.ErrNotHeld)
}

// testCancelledAcquire ends waits by deadline and by cancellation: the error must match both
// the context's error and ErrLocked, and neither waiter may leave a lock behind.
func testCancelledAcquire(t *testing.T, s *suite) {
	a := s.lock("x", shylock.WithTTL(time.Minute))
	s.mustAcquire(t, a)

	// The errors match ErrLocked only if an attempt was answered before the context ended; on a
	// loaded machine the first answer can take longer than the deadline, so that case is tried
	// again with a longer one. A cancellation comes right after the first answer.
	var (
		b       *shylock.Lock
		checked bool
	)
	for _, d := range []time.Duration{time.Second, 5 * time.Second, 20 * time.Second} {
		var answered atomic.Bool
		b = s.lock("x", shylock.WithHook(func(_ context.Context, e shylock.Event) {
			answered.Store(answered.Load() || e.Kind == shylock.EventAttempt)
		}))
		ctx, cancel := context.WithTimeout(s.ctx, d)
		err := b.Acquire(ctx)
		cancel()
		if !answered.Load() {
			t.Logf("no attempt was answered within %v; trying a longer deadline: %v", d, err)
			continue
		}
		wantErr(t, "Acquire until a deadline", err, context.DeadlineExceeded, shylock.ErrLocked)
		checked = true
		break
	}
	if !checked {
		t.Fatal("no acquire attempt was answered within 20s")
	}

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	c := s.lock("x", shylock.WithHook(func(_ context.Context, e shylock.Event) {
		if e.Kind == shylock.EventAttempt && errors.Is(e.Err, shylock.ErrLocked) {
			cancel()
		}
	}))
	wantErr(t, "Acquire until cancelled", c.Acquire(ctx), context.Canceled, shylock.ErrLocked)

	if b.Held() || c.Held() {
		t.Fatal("a cancelled Acquire reports Held")
	}
	if info := s.inspect(t, a.Name()); info.Token != a.Token() {
		t.Fatalf("the lock is %+v; it should still be the first holder's (token %d)", info, a.Token())
	}
	if err := a.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if info := s.inspect(t, a.Name()); info.Held {
		t.Fatalf("after the holder released, the lock is %+v: a cancelled waiter left it behind", info)
	}

	done, cancel := context.WithCancel(s.ctx)
	cancel()
	wantErr(t, "Acquire with a cancelled context", s.lock("fresh").Acquire(done), context.Canceled)
	s.wantNoRecord(t, s.name("fresh"))
}

// replyLost makes Acquire reach the backend but lose the reply, as when a connection drops just
// after the server applied the write.
type replyLost struct {
	shylock.Backend
	lose   atomic.Int32       // how many successful acquires lose their reply
	cancel context.CancelFunc // if set, ends the caller's context too, as a timeout would
}

// Acquire implements shylock.Backend, losing the reply of the next successful acquires.
func (r *replyLost) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	lease, err := r.Backend.Acquire(ctx, req)
	if err == nil && r.lose.Add(-1) >= 0 {
		if r.cancel != nil {
			r.cancel()
		}
		return shylock.Lease{}, errors.New("connection reset after the write (test fault)")
	}
	return lease, err
}

// testAmbiguousAcquire: a write that was applied but whose reply was lost must be recognised by
// the retry, and removed when the caller gives up.
func testAmbiguousAcquire(t *testing.T, s *suite) {
	faulty := &replyLost{Backend: s.b}

	faulty.lose.Store(1)
	ok, err := shylock.New(s.name("try"), s.with(shylock.WithBackend(faulty))...).TryAcquire(s.ctx)
	if ok || err == nil {
		t.Fatalf("TryAcquire whose reply was lost = %v, %v; want false and the error", ok, err)
	}
	s.wantFreed(t, s.name("try"), "TryAcquire failed but left the lock behind")

	ctx, cancel := context.WithCancel(s.ctx)
	faulty.lose.Store(1)
	faulty.cancel = cancel
	err = shylock.New(s.name("cancel"), s.with(shylock.WithBackend(faulty))...).Acquire(ctx)
	wantErr(t, "Acquire cancelled while its write was in flight", err, context.Canceled)
	s.wantFreed(t, s.name("cancel"), "a cancelled Acquire left the lock behind")

	// With a TTL far beyond the context, only recognising its own lock lets the retry succeed.
	faulty.lose.Store(1)
	faulty.cancel = nil
	l := shylock.New(s.name("retry"), s.with(shylock.WithBackend(faulty), shylock.WithTTL(time.Hour),
		shylock.WithRetry(time.Millisecond, 10*time.Millisecond))...)
	ctx, cancel = context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	if err := l.Acquire(ctx); err != nil {
		t.Fatalf("Acquire after a lost reply: %v; the retry must recognise its own lock", err)
	}
	if info := s.inspect(t, l.Name()); !info.Held || info.Token != l.Token() {
		t.Fatalf("the lock is %+v; want it held with token %d", info, l.Token())
	}
	if err := l.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// wantFreed fails unless name is free within a few seconds: what an attempt of unknown outcome
// wrote is released by the backend in the background, at once where the server answers.
func (s *suite) wantFreed(t *testing.T, name, what string) {
	t.Helper()
	var info shylock.Info
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if info = s.inspect(t, name); !info.Held {
			return
		}
	}
	t.Fatalf("%s, still held after 3s: %+v", what, info)
}

// testLostOnTakeover force-releases a renewing holder's lock and lets another take it: the old
// holder must learn at its next renewal, and its Release must not touch the new holding.
func testLostOnTakeover(t *testing.T, s *suite) {
	a := s.lock("x", shylock.WithTTL(3*time.Second), shylock.WithAutoRenew(true))
	s.mustAcquire(t, a)
	if _, err := s.b.ForceRelease(s.ctx, a.Name()); err != nil {
		t.Fatalf("ForceRelease: %v", err)
	}
	b := s.lock("x", shylock.WithTTL(time.Minute))
	s.mustAcquire(t, b)
	if !closedWithin(a.Lost(), 5*time.Second) {
		t.Fatal("Lost() was not closed after the lock was taken over")
	}
	if a.Held() {
		t.Fatal("the old holder still reports Held")
	}
	wantErr(t, "Release by the old holder", a.Release(s.ctx), shylock.ErrNotHeld, shylock.ErrLost)
	if info := s.inspect(t, b.Name()); !info.Held || info.Token != b.Token() {
		t.Fatalf("the lock is %+v; the new holder (token %d) must still hold it", info, b.Token())
	}
	if err := b.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// testAutoRenew holds a renewed lock for 3 TTLs and releases it. The TTL leaves a loaded server
// 1s to answer each renewal; a loss during a stall of a fifth of the TTL or more (the release
// included, which can outlast what is left of the lease) is tried again with longer leases.
func testAutoRenew(t *testing.T, s *suite) {
	s.withLongerLeases(t, func(s *suite, scale time.Duration) string {
		ttl := scale * 1500 * time.Millisecond
		r := newRenewals()
		a := s.lock("x", shylock.WithTTL(ttl), shylock.WithAutoRenew(true), r.hook())
		s.mustAcquire(t, a)
		meter := s.meterStalls(a.Name())
		time.Sleep(3 * ttl)
		ok, err := s.lock("x").TryAcquire(s.ctx)
		lost := !a.Held() || closedWithin(a.Lost(), 0)
		var rerr error
		if !ok && err == nil && !lost {
			rerr = a.Release(s.ctx)
		}
		if stall := meter.stop(); (ok || lost || rerr != nil) && stall >= ttl/5 {
			_ = a.Release(s.ctx)
			return fmt.Sprintf("the lease of %v was lost during a stall of %v", ttl, stall)
		}
		if ok || err != nil {
			t.Fatalf("TryAcquire after 3 TTLs of a renewed lock = %v, %v; want false, nil", ok, err)
		}
		if lost {
			t.Fatalf("a renewed lock reports itself not held or lost: %v", r)
		}
		if rerr != nil {
			t.Fatalf("Release: %v; %v", rerr, r)
		}
		s.mustAcquire(t, s.lock("x"))
		return ""
	})
}

// testMaxHold: auto-renewal keeps a lock until WithMaxHold's bound, and no longer. A loss
// before the bound during a stall of a fifth of the TTL or more is tried again with longer
// leases.
func testMaxHold(t *testing.T, s *suite) {
	s.withLongerLeases(t, func(s *suite, scale time.Duration) string {
		ttl, maxHold := scale*time.Second, scale*3*time.Second
		r := newRenewals()
		a := s.lock("x", shylock.WithTTL(ttl), shylock.WithAutoRenew(true), shylock.WithMaxHold(maxHold), r.hook())
		s.mustAcquire(t, a)
		meter := s.meterStalls(a.Name())
		early := closedWithin(a.Lost(), 2*ttl)
		if stall := meter.stop(); early && stall >= ttl/5 {
			return fmt.Sprintf("the lease of %v was lost during a stall of %v", ttl, stall)
		}
		if early {
			t.Fatalf("lost before WithMaxHold's bound although auto-renew was on: %v", r)
		}
		if !closedWithin(a.Lost(), maxHold+7*time.Second) {
			t.Fatalf("still held %v after it was acquired, with WithMaxHold(%v)", 2*ttl+maxHold+7*time.Second, maxHold)
		}
		b := s.lock("x")
		if err := b.Acquire(s.ctx); err != nil {
			t.Fatalf("Acquire after the bound: %v", err)
		}
		wantErr(t, "Release past the bound", a.Release(s.ctx), shylock.ErrNotHeld, shylock.ErrLost)
		if err := b.Release(s.ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
		return ""
	})
}

// testReleaseWakesWaiters hands one lock down a chain of waiters whose polling bounds are far
// longer than the test's deadline: only the release notification can wake them in time.
func testReleaseWakesWaiters(t *testing.T, s *suite) {
	if _, ok := s.b.(shylock.Notifier); !ok {
		t.Skip("the backend does not implement shylock.Notifier; waiters poll on their own")
	}
	holder := s.lock("x", shylock.WithTTL(time.Minute))
	s.mustAcquire(t, holder)
	ctx, cancel := context.WithTimeout(s.ctx, 15*time.Second)
	defer cancel()
	const waiters = 8
	var (
		wg   sync.WaitGroup
		held atomic.Int32
	)
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := s.lock("x", shylock.WithTTL(time.Minute), shylock.WithRetry(time.Minute, time.Minute))
			if err := l.Acquire(ctx); err != nil {
				t.Errorf("waiter: %v", err)
				return
			}
			if n := held.Add(1); n > waiters {
				t.Errorf("%d holdings for %d waiters", n, waiters)
			}
			if err := l.Release(s.ctx); err != nil {
				t.Errorf("waiter Release: %v", err)
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the waiters start waiting
	if err := holder.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wg.Wait()
	if n := held.Load(); n != waiters {
		t.Fatalf("%d of %d waiters acquired after the release", n, waiters)
	}
}

func testAcquireAsync(t *testing.T, s *suite) {
	a := s.lock("x")
	s.mustAcquire(t, a)
	b := s.lock("x")
	ch := b.AcquireAsync(s.ctx)
	select {
	case err := <-ch:
		t.Fatalf("AcquireAsync delivered %v while the lock was held", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := a.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case err := <-ch:
		if err != nil || !b.Held() {
			t.Fatalf("AcquireAsync delivered %v (Held %v) after the release; want nil and held", err, b.Held())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AcquireAsync delivered nothing 10s after the release")
	}
	select {
	case err, ok := <-ch:
		t.Fatalf("AcquireAsync delivered a second value (%v, open %v)", err, ok)
	case <-time.After(20 * time.Millisecond):
	}

	ctx, cancel := context.WithCancel(s.ctx)
	c := s.lock("x")
	ch = c.AcquireAsync(ctx)
	cancel()
	select {
	case err := <-ch:
		wantErr(t, "AcquireAsync after cancel", err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled AcquireAsync delivered nothing")
	}
	if err := b.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func testDo(t *testing.T, s *suite) {
	name := s.name("x")
	errFn := errors.New("fn failed")
	err := shylock.Do(s.ctx, name, func(ctx context.Context) error {
		info := s.inspect(t, name)
		if tok, ok := shylock.TokenFrom(ctx); !info.Held || !ok || tok != info.Token {
			t.Errorf("inside Do the lock is %+v and TokenFrom gives %d, %v; want held with that token", info, tok, ok)
		}
		if ok, err := s.lock("x").TryAcquire(ctx); ok || err != nil {
			t.Errorf("TryAcquire inside Do = %v, %v; want false, nil", ok, err)
		}
		return errFn
	}, s.with()...)
	if !errors.Is(err, errFn) {
		t.Fatalf("Do returned %v; want fn's error", err)
	}
	if info := s.inspect(t, name); info.Held {
		t.Fatalf("after Do returned an error the lock is still held: %+v", info)
	}

	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v; want the panic to propagate", r)
			}
		}()
		_ = shylock.Do(s.ctx, name, func(context.Context) error { panic("boom") }, s.with()...)
	}()
	if info := s.inspect(t, name); info.Held {
		t.Fatalf("after fn panicked the lock is still held: %+v", info)
	}

	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := shylock.Do(s.ctx, name, func(context.Context) error {
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
				inside.Add(-1)
				return nil
			}, s.with()...)
			if err != nil {
				t.Errorf("Do: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Fatalf("%d overlapping runs of fn", n)
	}

	holder := s.lock("x")
	s.mustAcquire(t, holder)
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	err = shylock.Do(ctx, name, func(context.Context) error {
		t.Error("fn ran although the lock was held")
		return nil
	}, s.with()...)
	wantErr(t, "Do on a held lock until a deadline", err, shylock.ErrLocked, context.DeadlineExceeded)
	if err := holder.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func testDoCancelsOnLoss(t *testing.T, s *suite) {
	name := s.name("x")
	err := shylock.Do(s.ctx, name, func(ctx context.Context) error {
		if _, err := s.b.ForceRelease(s.ctx, name); err != nil {
			t.Errorf("ForceRelease: %v", err)
		}
		select {
		case <-ctx.Done():
			if !errors.Is(context.Cause(ctx), shylock.ErrLost) {
				t.Errorf("fn's context ended with cause %v; want ErrLost", context.Cause(ctx))
			}
			return ctx.Err()
		case <-time.After(10 * time.Second):
			t.Error("fn's context was not cancelled 10s after its lock was force-released")
			return nil
		}
	}, s.with(shylock.WithTTL(3*time.Second))...) // long enough that a loaded server answers ForceRelease within it
	wantErr(t, "Do whose lock was lost", err, shylock.ErrLost)
}
