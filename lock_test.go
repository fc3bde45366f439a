package shylock_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/janitor"
	"github.com/shylock-go/shylock/memory"
)

var ctx = context.Background()

func newMemory(t *testing.T) *memory.Backend {
	b := memory.New()
	t.Cleanup(b.Close)
	return b
}

// These tests change the process defaults, so they do not run in parallel.
func TestConfigure(t *testing.T) {
	t.Cleanup(func() { shylock.Configure(nil) })
	shylock.Configure(nil)
	early := shylock.New("jobs/early") // before Configure, as a package-level var would be
	if shylock.Default() != nil {
		t.Fatal("Default() is not nil before Configure")
	}
	_, err := early.TryAcquire(ctx)
	if !errors.Is(err, shylock.ErrNotConfigured) {
		t.Fatalf("TryAcquire without a backend: %v, want ErrNotConfigured", err)
	}
	err = shylock.Do(ctx, "jobs/x", func(context.Context) error { return nil })
	if !errors.Is(err, shylock.ErrNotConfigured) {
		t.Fatalf("Do without a backend: %v, want ErrNotConfigured", err)
	}

	b := newMemory(t)
	shylock.Configure(b, shylock.WithTTL(5*time.Second), shylock.WithOwner("billing-api"))
	if shylock.Default() != shylock.Backend(b) {
		t.Fatal("Default() does not return the configured backend")
	}
	if ok, err := early.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire on a Lock made before Configure = %v, %v", ok, err)
	}
	info, _ := b.Inspect(ctx, "jobs/early")
	if info.Label != "billing-api" || info.Remaining > 5*time.Second {
		t.Fatalf("the process defaults were not applied: %+v", info)
	}
	override := shylock.New("jobs/override", shylock.WithOwner("cron"), shylock.WithTTL(time.Minute))
	if ok, _ := override.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	info, _ = b.Inspect(ctx, "jobs/override")
	if info.Label != "cron" || info.Remaining <= 5*time.Second {
		t.Fatalf("per-lock options did not override the defaults: %+v", info)
	}
	other := newMemory(t)
	if ok, _ := shylock.New("jobs/early", shylock.WithBackend(other)).TryAcquire(ctx); !ok {
		t.Fatal("WithBackend did not override the default backend")
	}
}

// faulty wraps a backend with switchable failures of Acquire, Extend and Release.
type faulty struct {
	shylock.Backend
	loseAcquire  atomic.Int32 // acquires that apply but report an error
	refuse       atomic.Bool  // acquires are refused (ErrRefused) without applying
	failExtend   atomic.Bool
	extendCalls  atomic.Int32
	loseRelease  atomic.Int32 // releases that apply but report an error
	failRelease  atomic.Bool  // releases that fail without applying
	failReleases atomic.Int32 // as many releases as this fail without applying
	unavailable  atomic.Bool  // acquires fail without leaving the process
	hangRelease  atomic.Bool  // releases get no answer until their context ends
	abandoned    atomic.Int32 // calls of Abandon
	slowAcquire  atomic.Int64 // a successful acquire's reply comes this many nanoseconds late
}

func (f *faulty) Abandon(name, owner string, ttl time.Duration) {
	f.abandoned.Add(1)
	f.Backend.Abandon(name, owner, ttl)
}

var errTransient = errors.New("connection refused (test fault)")

func (f *faulty) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if f.refuse.Load() {
		return shylock.Lease{}, fmt.Errorf("%w: the server does not know this command (test fault)", shylock.ErrRefused)
	}
	if f.unavailable.Load() {
		return shylock.Lease{}, fmt.Errorf("%w: no server could be selected (test fault)", shylock.ErrUnavailable)
	}
	lease, err := f.Backend.Acquire(ctx, req)
	if err == nil && f.loseAcquire.Add(-1) >= 0 {
		return shylock.Lease{}, errTransient
	}
	if err == nil {
		err = janitor.Sleep(ctx, time.Duration(f.slowAcquire.Load()))
	}
	return lease, err
}

func (f *faulty) Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	f.extendCalls.Add(1)
	if f.failExtend.Load() {
		return shylock.Lease{}, errTransient
	}
	return f.Backend.Extend(ctx, name, owner, token, ttl)
}

func (f *faulty) Release(ctx context.Context, name, owner string, token uint64) error {
	if f.hangRelease.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if f.failRelease.Load() || f.failReleases.Add(-1) >= 0 {
		return errTransient
	}
	err := f.Backend.Release(ctx, name, owner, token)
	if err == nil && f.loseRelease.Add(-1) >= 0 {
		return errTransient
	}
	return err
}

// TestRenewalOutlivesAcquireContext: a heartbeat tied to the acquiring context would die with
// it and lose the lock.
func TestRenewalOutlivesAcquireContext(t *testing.T) {
	b := newMemory(t)
	l := shylock.New("x", shylock.WithBackend(b), shylock.WithTTL(150*time.Millisecond), shylock.WithAutoRenew(true))
	actx, cancel := context.WithTimeout(ctx, time.Second)
	if err := l.Acquire(actx); err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(600 * time.Millisecond)
	if !l.Held() {
		t.Fatal("the lock was lost after its acquiring context ended")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTransientRenewalErrors: failures of renewal are retried, and the lock is reported lost
// only when the lease runs out, not at the first error.
func TestTransientRenewalErrors(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	const ttl = 300 * time.Millisecond
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithTTL(ttl), shylock.WithAutoRenew(true),
		shylock.WithRetry(10*time.Millisecond, 20*time.Millisecond))
	if ok, err := l.TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	f.failExtend.Store(true)
	time.Sleep(ttl / 2) // renewal fails from TTL/3 on
	f.failExtend.Store(false)
	time.Sleep(ttl)
	if !l.Held() || closedWithin(l.Lost(), 0) {
		t.Fatal("a transient renewal failure lost the lock")
	}

	f.failExtend.Store(true)
	start := f.extendCalls.Load()
	if !closedWithin(l.Lost(), 5*time.Second) {
		t.Fatal("renewal failing forever never reported the lock lost")
	}
	if n := f.extendCalls.Load() - start; n < 2 {
		t.Fatalf("renewal gave up after %d attempts; it should retry until the lease runs out", n)
	}
	err := l.Release(ctx)
	if !errors.Is(err, shylock.ErrNotHeld) || !errors.Is(err, shylock.ErrLost) {
		t.Fatalf("Release after loss: %v, want ErrNotHeld and ErrLost", err)
	}
}

// TestRenewalCountsFromTheRequest: a lease runs from when its request was sent, so after a reply
// that took most of it the first renewal is due at once, not a third of a lease later, when the
// lease has run out.
func TestRenewalCountsFromTheRequest(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	const ttl, slow = 1200 * time.Millisecond, 850 * time.Millisecond // more than 2/3 of the lease
	f.slowAcquire.Store(int64(slow))
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithTTL(ttl), shylock.WithAutoRenew(true))
	if ok, err := l.TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if closedWithin(l.Lost(), 3*ttl) {
		t.Fatalf("lost after %d renewals, when the reply to its acquire took %v of a %v lease", f.extendCalls.Load(), slow, ttl)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseWhoseReplyWasLost: the retry of a release that did apply succeeds.
func TestReleaseWhoseReplyWasLost(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	l := shylock.New("x", shylock.WithBackend(f))
	if ok, _ := l.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	f.loseRelease.Store(1)
	if err := l.Release(ctx); !errors.Is(err, errTransient) {
		t.Fatalf("Release = %v, want the transient error", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatalf("retried Release = %v; the first one applied, so this is a success", err)
	}
	if closedWithin(l.Lost(), 0) {
		t.Fatal("Lost closed for a lock that was released")
	}
}

// plain hides a backend's Notifier, as a third-party backend without one would.
type plain struct{ shylock.Backend }

func TestWaitingWithoutNotifierPolls(t *testing.T) {
	b := plain{newMemory(t)}
	a := shylock.New("x", shylock.WithBackend(b))
	if ok, _ := a.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	time.AfterFunc(50*time.Millisecond, func() { _ = a.Release(ctx) })
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	w := shylock.New("x", shylock.WithBackend(b), shylock.WithRetry(time.Millisecond, 20*time.Millisecond))
	if err := w.Acquire(wctx); err != nil {
		t.Fatalf("Acquire by polling: %v", err)
	}
}

func TestConcurrentUseOfOneLock(t *testing.T) {
	b := newMemory(t)
	h := shylock.New("x", shylock.WithBackend(b))
	if ok, _ := h.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	l := shylock.New("x", shylock.WithBackend(b))
	ch := l.AcquireAsync(ctx)
	time.Sleep(20 * time.Millisecond)
	if ok, err := l.TryAcquire(ctx); ok || !errors.Is(err, shylock.ErrAlreadyHeld) || errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("a second acquire on a Lock already acquiring = %v, %v; want false and ErrAlreadyHeld, not ErrLocked", ok, err)
	}
	_ = h.Release(ctx)
	if err := <-ch; err != nil {
		t.Fatal(err)
	}
	_ = l.Release(ctx)
}

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestReleaseAfterLossWithServerDown: once the lease has ended, a Release that cannot reach the
// backend says the lock was lost, and there is nothing to retry.
func TestReleaseAfterLossWithServerDown(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithTTL(20*time.Millisecond))
	if ok, _ := l.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	<-l.Lost()
	f.failRelease.Store(true)
	err := l.Release(ctx)
	if !errors.Is(err, shylock.ErrNotHeld) || !errors.Is(err, shylock.ErrLost) || !errors.Is(err, errTransient) {
		t.Fatalf("Release = %v; want ErrNotHeld, ErrLost and the backend's error", err)
	}
	if err := l.Release(ctx); !errors.Is(err, shylock.ErrNotHeld) || errors.Is(err, shylock.ErrLost) {
		t.Fatalf("a second Release = %v; the holding is over, so just ErrNotHeld", err)
	}
}

// TestFailedAcquireLeavesCleanupToTheBackend: when the reply of an applied acquire is lost,
// TryAcquire returns at once, hands the owner to the backend to release, and says that the lock
// may stay taken until then.
func TestFailedAcquireLeavesCleanupToTheBackend(t *testing.T) {
	m := newMemory(t)
	f := &faulty{Backend: m}
	f.loseAcquire.Store(1)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, 5*time.Millisecond))
	ok, err := l.TryAcquire(ctx)
	if ok || !errors.Is(err, errTransient) || !strings.Contains(err.Error(), "may stay taken") {
		t.Fatalf("TryAcquire = %v, %v; want false, the acquire's error, and that the lock may stay taken", ok, err)
	}
	if n := f.abandoned.Load(); n != 1 {
		t.Fatalf("Abandon called %d times; want once", n)
	}
	if info, err := m.Inspect(ctx, "x"); err != nil || info.Held {
		t.Fatalf("Inspect = %+v, %v; the backend should have removed the lock", info, err)
	}
}

// TestNothingSentNothingToUndo: an attempt that never left the process needs no clean-up, and
// the error does not say that a lock may remain.
func TestNothingSentNothingToUndo(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	f.unavailable.Store(true)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, 5*time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err := l.Acquire(actx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, shylock.ErrUnavailable) || strings.Contains(err.Error(), "may stay taken") {
		t.Fatalf("Acquire = %v; want the deadline and the backend's error, and no word of a leftover", err)
	}
	if n := f.abandoned.Load(); n != 0 {
		t.Fatalf("Abandon called %d times for attempts that never left", n)
	}
}

// TestPendingAttemptUndoneAfterRelease: an attempt of unknown outcome may still reach the
// server after a later attempt of the same Acquire succeeded and the holder released: the
// release hands the owner to the backend too.
func TestPendingAttemptUndoneAfterRelease(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	f.loseAcquire.Store(1)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, time.Millisecond))
	if err := l.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.abandoned.Load(); n != 0 {
		t.Fatalf("Abandon called %d times while the lock is held", n)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.abandoned.Load(); n != 1 {
		t.Fatalf("Abandon called %d times after the release; want once", n)
	}
}

// TestDoRetriesItsRelease: when the backend refuses a few requests as fn ends, the release
// is left to the backend rather than the lock to its TTL.
func TestDoRetriesItsRelease(t *testing.T) {
	m := newMemory(t)
	f := &faulty{Backend: m}
	err := shylock.Do(ctx, "x", func(context.Context) error {
		f.failReleases.Store(3)
		return nil
	}, shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatalf("Do = %v; the release should have been retried until it got through", err)
	}
	if info, err := m.Inspect(ctx, "x"); err != nil || info.Held {
		t.Fatalf("Inspect = %+v, %v; Do left the lock taken", info, err)
	}
}

// TestDoReturnsByItsDeadline: when fn runs until the deadline and the backend then does not
// answer, Do returns at the deadline and leaves the release to the backend.
func TestDoReturnsByItsDeadline(t *testing.T) {
	m := newMemory(t)
	f := &faulty{Backend: m}
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	deadline, _ := dctx.Deadline()
	err := shylock.Do(dctx, "x", func(fctx context.Context) error {
		f.hangRelease.Store(true)
		<-fctx.Done()
		return fctx.Err()
	}, shylock.WithBackend(f))
	if late := time.Since(deadline); late > 500*time.Millisecond {
		t.Fatalf("Do returned %v after its deadline", late)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %v; want fn's error", err)
	}
	if n := f.abandoned.Load(); n != 1 {
		t.Fatalf("Abandon called %d times; want the release left to the backend once", n)
	}
	if info, _ := m.Inspect(ctx, "x"); info.Held {
		t.Fatalf("the backend did not release the lock: %+v", info)
	}
}

// TestDoReturnsAtOnceAfterLoss: when renewal keeps failing until the lease runs out, fn's context
// is cancelled, and Do returns as soon as fn does, without waiting for a backend that does not
// answer.
func TestDoReturnsAtOnceAfterLoss(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	var returned time.Time
	start := time.Now()
	err := shylock.Do(ctx, "x", func(fctx context.Context) error {
		f.failExtend.Store(true)
		f.hangRelease.Store(true)
		<-fctx.Done()
		returned = time.Now()
		return context.Cause(fctx)
	}, shylock.WithBackend(f), shylock.WithTTL(300*time.Millisecond))
	if !errors.Is(err, shylock.ErrLost) {
		t.Fatalf("Do = %v; want ErrLost", err)
	}
	if d := time.Since(returned); d > 500*time.Millisecond {
		t.Fatalf("Do returned %v after fn (%v after it began); want at once", d, time.Since(start))
	}
}

// TestHolderFromTheRefusingAttempt: a refused attempt says who holds the lock, through the error
// and, after TryAcquire's (false, nil), through Holder; Until says when a holding's lease ends.
func TestHolderFromTheRefusingAttempt(t *testing.T) {
	b := newMemory(t)
	h := shylock.New("x", shylock.WithBackend(b), shylock.WithOwner("billing"), shylock.WithTTL(time.Minute))
	if h.Until() != (time.Time{}) {
		t.Fatal("Until is set before any holding")
	}
	if ok, _ := h.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	if u := time.Until(h.Until()); u <= 50*time.Second || u > time.Minute {
		t.Fatalf("Until is %v away; want just under the 1m TTL", u)
	}
	w := shylock.New("x", shylock.WithBackend(b))
	if _, ok := w.Holder(); ok {
		t.Fatal("Holder reports a holding before any attempt")
	}
	if ok, err := w.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	got, ok := w.Holder()
	if !ok || got.Label != "billing" || got.Token != h.Token() || got.ExpiresAt.IsZero() {
		t.Fatalf("Holder = %+v, %v; want billing's holding, token %d", got, ok, h.Token())
	}
	actx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	var held *shylock.HeldError
	if err := w.Acquire(actx); !errors.As(err, &held) || held.Label != "billing" || !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("Acquire = %v; want a HeldError naming billing, matching ErrLocked", err)
	}
	_ = h.Release(ctx)
	if ok, _ := w.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire after the release failed")
	}
	if _, ok := w.Holder(); ok {
		t.Fatal("Holder still reports the old holding after a successful attempt")
	}
}

// TestRefusedAcquireEndsAtOnce: an error no retry can cure ends a blocking Acquire at once,
// instead of retrying it for as long as the context lives.
func TestRefusedAcquireEndsAtOnce(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	f.refuse.Store(true)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	err := l.Acquire(actx)
	if !errors.Is(err, shylock.ErrRefused) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire = %v; want ErrRefused, at once", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Acquire retried a refused request for %v", d)
	}
}

// TestRefusedAfterUnknownOutcome: a refusal says nothing about an earlier attempt whose reply was
// lost, so what that one may have written is still removed.
func TestRefusedAfterUnknownOutcome(t *testing.T) {
	mem := newMemory(t)
	l := shylock.New("x", shylock.WithBackend(&lostThenRefused{Backend: mem}), shylock.WithTTL(time.Minute),
		shylock.WithRetry(time.Millisecond, time.Millisecond))
	err := l.Acquire(ctx)
	if !errors.Is(err, shylock.ErrRefused) {
		t.Fatalf("Acquire = %v; want ErrRefused", err)
	}
	if info, _ := mem.Inspect(ctx, "x"); info.Held {
		t.Fatalf("the lock the lost attempt wrote is still held: %+v", info)
	}
}

// lostThenRefused applies its first acquire and loses the reply, then refuses every acquire.
type lostThenRefused struct {
	shylock.Backend
	calls atomic.Int32
}

func (b *lostThenRefused) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if b.calls.Add(1) > 1 {
		return shylock.Lease{}, fmt.Errorf("%w: test fault", shylock.ErrRefused)
	}
	if _, err := b.Backend.Acquire(ctx, req); err != nil {
		return shylock.Lease{}, err
	}
	return shylock.Lease{}, errTransient
}

// TestDoSaysWhetherTheWorkWasDone: a loss found only after fn returned nil must not read like
// an abandoned task (retrying would do the work twice), and one that stopped fn must.
func TestDoSaysWhetherTheWorkWasDone(t *testing.T) {
	b := newMemory(t)
	// A 10s lease renews after 3.3s: a force-release during a short fn is found at release.
	err := shylock.Do(ctx, "done", func(context.Context) error {
		if _, err := b.ForceRelease(ctx, "done"); err != nil {
			t.Fatal(err)
		}
		return nil
	}, shylock.WithBackend(b), shylock.WithTTL(10*time.Second))
	if !errors.Is(err, shylock.ErrLost) || !errors.Is(err, shylock.ErrWorkDone) {
		t.Fatalf("Do whose fn finished after the lock was lost = %v; want ErrLost and ErrWorkDone", err)
	}
	// A loss that cancels fn, which then gives up: the work was not done.
	err = shylock.Do(ctx, "stopped", func(fctx context.Context) error {
		if _, err := b.ForceRelease(ctx, "stopped"); err != nil {
			t.Fatal(err)
		}
		<-fctx.Done()
		return context.Cause(fctx)
	}, shylock.WithBackend(b), shylock.WithTTL(300*time.Millisecond))
	if !errors.Is(err, shylock.ErrLost) || errors.Is(err, shylock.ErrWorkDone) {
		t.Fatalf("Do whose fn stopped on the loss = %v; want ErrLost, not ErrWorkDone", err)
	}
}

// TestErrorTextIsOneLine: errors go into one-line logs; they name the package once.
func TestErrorTextIsOneLine(t *testing.T) {
	b := newMemory(t)
	h := shylock.New("busy", shylock.WithBackend(b))
	if ok, _ := h.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	long := strings.Repeat("n", 600)
	for _, err := range []error{
		shylock.New("busy", shylock.WithBackend(b)).Acquire(wctx),
		shylock.New("", shylock.WithBackend(b)).Acquire(ctx),
		shylock.New(long, shylock.WithBackend(b)).Acquire(ctx),
		shylock.New(long+"\x00", shylock.WithBackend(b)).Acquire(ctx),
		shylock.New("x", shylock.WithBackend(b), shylock.WithTTL(5*time.Millisecond)).Acquire(ctx),
	} {
		msg := err.Error()
		switch {
		case strings.Contains(msg, "\n"):
			t.Errorf("error on several lines: %q", msg)
		case strings.Count(msg, "shylock: ") != 1:
			t.Errorf("error names the package %d times: %q", strings.Count(msg, "shylock: "), msg)
		case len(msg) > 300:
			t.Errorf("error of %d bytes echoes the whole name: %q", len(msg), msg)
		case strings.Contains(msg, "168h"):
			t.Errorf("error writes a week as hours: %q", msg)
		}
	}
}

// TestInfoJSON: Info has one JSON shape, the command's: snake_case, seconds, no zero times.
func TestInfoJSON(t *testing.T) {
	at := time.Date(2026, 12, 2, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	held, err := json.Marshal(shylock.Info{Name: "orders/42", Owner: "o1", Label: "api", Token: 7,
		AcquiredAt: at, RenewedAt: at, ExpiresAt: at.Add(30 * time.Second), Held: true, Remaining: 1500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"orders/42","state":"held","holder":"api","owner_id":"o1","token":7,"acquired_at":"2026-12-02T09:00:00Z",` +
		`"renewed_at":"2026-12-02T09:00:00Z","expires_at":"2026-12-02T09:00:30Z","remaining_seconds":1.5}`
	if string(held) != want {
		t.Fatalf("held lock as JSON:\n%s\nwant\n%s", held, want)
	}
	free, _ := json.Marshal(shylock.Info{Name: "x", Token: 3, ExpiresAt: at})
	if string(free) != `{"name":"x","state":"free","token":3}` {
		t.Fatalf("free lock as JSON: %s", free)
	}
}

// recorder is a Hook that keeps the kinds of the events it receives.
type recorder struct {
	mu    sync.Mutex
	kinds []string
}

func (r *recorder) hook(_ context.Context, e shylock.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds = append(r.kinds, e.Kind.String())
}

func (r *recorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.kinds, " ")
	r.kinds = nil
	return s
}

// TestHooks: every event of a lock's life reaches the hooks, in order, with what it says.
func TestHooks(t *testing.T) {
	b := newMemory(t)
	var r recorder
	var last shylock.Event
	keep := func(_ context.Context, e shylock.Event) { last = e }
	h := shylock.New("x", shylock.WithBackend(b), shylock.WithHook(r.hook), shylock.WithHook(keep), shylock.WithTTL(time.Minute))
	if ok, _ := h.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	if got := r.take(); got != "attempt acquired" || last.Token != h.Token() {
		t.Fatalf("events %q, last %+v", got, last)
	}
	w := shylock.New("x", shylock.WithBackend(b), shylock.WithHook(r.hook))
	if ok, err := w.TryAcquire(ctx); ok || err != nil {
		t.Fatal(ok, err)
	}
	if got := r.take(); got != "attempt gave_up" {
		t.Fatalf("a refused TryAcquire gave events %q", got)
	}
	if err := h.Extend(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if got := r.take(); got != "renewed released" || last.Kind != shylock.EventReleased || last.Held <= 0 || last.Err != nil {
		t.Fatalf("events %q, last %+v", got, last)
	}
	l := shylock.New("y", shylock.WithBackend(b), shylock.WithHook(r.hook), shylock.WithTTL(20*time.Millisecond))
	if ok, _ := l.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	<-l.Lost()
	if got := r.take(); got != "attempt acquired lost" {
		t.Fatalf("events %q", got)
	}
	if err := l.Release(ctx); !errors.Is(err, shylock.ErrLost) {
		t.Fatal(err)
	}
	if got := r.take(); got != "released" {
		t.Fatalf("events %q", got)
	}
	if _, err := shylock.New("z", shylock.WithBackend(b), shylock.WithHook(nil)).TryAcquire(ctx); !errors.Is(err, shylock.ErrInvalidOption) {
		t.Fatalf("WithHook(nil) = %v; want ErrInvalidOption", err)
	}
}
