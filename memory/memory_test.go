package memory_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	"github.com/shylock-go/shylock/shylocktest"
)

func TestConformance(t *testing.T) {
	shylocktest.Run(t, func(t *testing.T) shylock.Backend {
		b := memory.New()
		t.Cleanup(b.Close)
		return b
	})
}

// fakeClock is the backend's clock, moved by hand; the backend alone judges expiry by it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestExpiryFollowsTheBackendClock moves the backend's clock while the caller's stays put, as a
// database server's clock runs independently of a client's: only the backend's decides.
func TestExpiryFollowsTheBackendClock(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	b := memory.New(memory.WithClock(clock.Now))
	defer b.Close()
	req := shylock.AcquireRequest{Name: "jobs/report", Owner: "a", TTL: time.Hour}
	lease, err := b.Acquire(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Hour); !lease.ExpiresAt.Equal(want) {
		t.Fatalf("ExpiresAt = %v, want %v (backend clock + TTL)", lease.ExpiresAt, want)
	}
	other := shylock.AcquireRequest{Name: req.Name, Owner: "b", TTL: time.Hour}
	clock.Add(59 * time.Minute)
	if _, err := b.Acquire(ctx, other); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("Acquire one minute before expiry: %v, want ErrLocked", err)
	}
	clock.Add(time.Minute)
	if _, err := b.Extend(ctx, req.Name, "a", lease.Token, time.Hour); !errors.Is(err, shylock.ErrNotHeld) {
		t.Fatalf("Extend at expiry: %v, want ErrNotHeld", err)
	}
	taken, err := b.Acquire(ctx, other)
	if err != nil {
		t.Fatalf("Acquire at expiry: %v", err)
	}
	if taken.Token <= lease.Token {
		t.Fatalf("takeover token %d not above %d", taken.Token, lease.Token)
	}
	if err := b.Release(ctx, req.Name, "a", lease.Token); !errors.Is(err, shylock.ErrNotHeld) {
		t.Fatalf("late Release after takeover: %v, want ErrNotHeld", err)
	}
	if info, _ := b.Inspect(ctx, req.Name); info.Owner != "b" || !info.Held {
		t.Fatalf("after the late release the lock is %+v; want b's", info)
	}
}

// TestThousandsOfGoroutines has 2,000 goroutines take one name in turn.
func TestThousandsOfGoroutines(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	b := memory.New()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 2000
	var inside, total atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := shylock.Do(ctx, "hot", func(context.Context) error {
				if inside.Add(1) != 1 {
					t.Error("two holders at once")
				}
				total.Add(1)
				inside.Add(-1)
				return nil
			}, shylock.WithBackend(b), shylock.WithRetry(time.Millisecond, 100*time.Millisecond))
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if total.Load() != n {
		t.Fatalf("%d of %d goroutines ran", total.Load(), n)
	}
}

// TestSweepDropsExpiredRecords checks that names abandoned by crashed holders do not pile up.
func TestSweepDropsExpiredRecords(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Unix(0, 0)}
	b := memory.New(memory.WithClock(clock.Now))
	defer b.Close()
	for i := range 5000 {
		name := "abandoned/" + time.Duration(i).String()
		if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: name, Owner: "o", TTL: time.Second}); err != nil {
			t.Fatal(err)
		}
		clock.Add(time.Second)
	}
	list, err := b.List(ctx, "abandoned/")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) > 2048 {
		t.Fatalf("%d records kept for 5000 expired names; the sweep should bound them", len(list))
	}
}

func TestClose(t *testing.T) {
	shylocktest.RunClose(t, func(*testing.T) (shylock.Backend, func()) {
		b := memory.New()
		return b, b.Close
	})
}

// slowAttempts delays every acquire attempt, so that another client gets in between the wake-up
// of a waiter and its attempt.
type slowAttempts struct{ *memory.Backend }

func (s slowAttempts) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	time.Sleep(30 * time.Millisecond)
	return s.Backend.Acquire(ctx, req)
}

// TestWaiterWakesAtNewHoldersExpiry: releases are pushed here, so a poller sleeps long between
// probes while the lock is held. When a release wakes a waiter but another client takes the lock
// first and then dies, the waiter must still take it at that holder's expiry plus a poll, not a
// pushed interval (10 s) later.
func TestWaiterWakesAtNewHoldersExpiry(t *testing.T) {
	b := memory.New()
	defer b.Close()
	ctx := context.Background()
	for trial := range 3 {
		name := fmt.Sprintf("x%d", trial)
		holder := shylock.New(name, shylock.WithBackend(b))
		if ok, _ := holder.TryAcquire(ctx); !ok {
			t.Fatal("TryAcquire failed")
		}
		waiting := shylock.New(name, shylock.WithBackend(slowAttempts{b}))
		done := make(chan error, 1)
		go func() { done <- waiting.Acquire(ctx) }()
		time.Sleep(100 * time.Millisecond)
		_ = holder.Release(ctx)
		// The thief takes it while the woken waiter's attempt is on its way, and dies.
		if ok, _ := shylock.New(name, shylock.WithBackend(b), shylock.WithTTL(time.Second)).TryAcquire(ctx); !ok {
			t.Fatal("the thief did not get the lock")
		}
		start := time.Now()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("trial %d: the waiter was still waiting 5s after a 1s lease began", trial)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("trial %d: woken %v after a 1s lease began", trial, d)
		}
		_ = waiting.Release(ctx)
	}
}
