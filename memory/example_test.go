package memory_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

// The memory backend has the semantics of the database ones inside one process: for tests of
// code that takes locks, and for programs that run as a single process.
func ExampleNew() {
	backend := memory.New()
	defer backend.Close()

	ctx := context.Background()
	a := shylock.New("jobs/cleanup", shylock.WithBackend(backend), shylock.WithTTL(time.Minute))
	b := shylock.New("jobs/cleanup", shylock.WithBackend(backend))
	okA, _ := a.TryAcquire(ctx)
	okB, _ := b.TryAcquire(ctx)
	fmt.Println(okA, okB)
	_ = a.Release(ctx)
	okB, _ = b.TryAcquire(ctx)
	fmt.Println(okB, b.Token() > a.Token())
	_ = b.Release(ctx)
	// Output:
	// true false
	// true true
}

// WithClock lets a test move time forward instead of sleeping through a TTL.
func ExampleWithClock() {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	backend := memory.New(memory.WithClock(func() time.Time { return now }))
	defer backend.Close()

	ctx := context.Background()
	crashed := shylock.New("jobs/cleanup", shylock.WithBackend(backend), shylock.WithTTL(time.Minute))
	_, _ = crashed.TryAcquire(ctx) // and never released
	now = now.Add(2 * time.Minute)
	ok, _ := shylock.New("jobs/cleanup", shylock.WithBackend(backend)).TryAcquire(ctx)
	fmt.Println("taken over after the TTL:", ok)
	// Output:
	// taken over after the TTL: true
}
