package shylock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
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
}

var errTransient = errors.New("connection refused (test fault)")

func (f *faulty) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if f.refuse.Load() {
		return shylock.Lease{}, fmt.Errorf("%w: the server does not know this command (test fault)", shylock.ErrRefused)
	}
	lease, err := f.Backend.Acquire(ctx, req)
	if err == nil && f.loseAcquire.Add(-1) >= 0 {
		return shylock.Lease{}, errTransient
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
	if ok, err := l.TryAcquire(ctx); ok || !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("a second acquire on a Lock already acquiring = %v, %v; want false and ErrLocked", ok, err)
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

// TestFailedAcquireRetriesCleanup: when the reply of an applied acquire is lost and the backend
// then refuses a few requests, the cleanup keeps trying and nothing is left behind.
func TestFailedAcquireRetriesCleanup(t *testing.T) {
	m := newMemory(t)
	f := &faulty{Backend: m}
	f.loseAcquire.Store(1)
	f.failReleases.Store(3)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithRetry(time.Millisecond, 5*time.Millisecond))
	ok, err := l.TryAcquire(ctx)
	if ok || !errors.Is(err, errTransient) || strings.Contains(err.Error(), "may stay taken") {
		t.Fatalf("TryAcquire = %v, %v; want false and only the acquire's error", ok, err)
	}
	if info, err := m.Inspect(ctx, "x"); err != nil || info.Held {
		t.Fatalf("Inspect = %+v, %v; the cleanup's retries should have removed the lock", info, err)
	}
	if n := f.failReleases.Load(); n >= 0 {
		t.Fatalf("%d injected release failures left; the cleanup did not retry", n+1)
	}
}

// TestFailedAcquireCleanupGivesUp: when the backend never answers, the cleanup stops once the
// lease would have run out, and the error says the lock may stay taken until then.
func TestFailedAcquireCleanupGivesUp(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	f.loseAcquire.Store(1)
	f.failRelease.Store(true)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithTTL(200*time.Millisecond))
	start := time.Now()
	ok, err := l.TryAcquire(ctx)
	if ok || err == nil || !strings.Contains(err.Error(), "may stay taken until its TTL") {
		t.Fatalf("TryAcquire = %v, %v; want an error saying the lock may stay taken", ok, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the error %q matches context.DeadlineExceeded, but the caller's context is alive", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("TryAcquire took %v; cleaning up a 200ms lease should stop when it runs out", d)
	}
}

// TestCancelledAcquireAfterTheLeaseEnded: an attempt of unknown outcome whose lease has run out
// by the time Acquire gives up has nothing left to remove, so nothing is tried or reported.
func TestCancelledAcquireAfterTheLeaseEnded(t *testing.T) {
	f := &faulty{Backend: newMemory(t)}
	f.loseAcquire.Store(1)
	f.failRelease.Store(true)
	l := shylock.New("x", shylock.WithBackend(f), shylock.WithTTL(50*time.Millisecond), shylock.WithRetry(time.Minute, time.Minute))
	actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err := l.Acquire(actx)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errTransient) || strings.Contains(err.Error(), "may stay taken") {
		t.Fatalf("Acquire = %v; want the deadline and the attempt's error, and no leftover", err)
	}
}

// TestDoRetriesItsRelease: when the backend refuses a few requests as fn ends, Do keeps
// releasing rather than leave the lock taken until its TTL.
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
