package shylock_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

// Configure once at start-up, then lock by name anywhere. With MongoDB the backend comes from
// mongo.New, with ArangoDB from arango.New; the rest is the same.
func Example() {
	backend := memory.New()
	defer backend.Close()
	shylock.Configure(backend)
	defer shylock.Configure(nil)

	err := shylock.Do(context.Background(), "orders/42", func(ctx context.Context) error {
		fmt.Println("charging order 42")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// charging order 42
	// err: <nil>
}

// Do renews the lock while fn runs and cancels fn's context if the lock is lost.
func ExampleDo() {
	backend := memory.New()
	defer backend.Close()

	err := shylock.Do(context.Background(), "reports/nightly", func(ctx context.Context) error {
		select {
		case <-ctx.Done(): // the lock was lost: stop touching what it protects
			return context.Cause(ctx)
		default:
		}
		token, _ := shylock.TokenFrom(ctx)
		fmt.Println("building the report with fencing token", token)
		return nil
	}, shylock.WithBackend(backend), shylock.WithTTL(10*time.Second))
	fmt.Println("err:", err)
	// Output:
	// building the report with fencing token 1
	// err: <nil>
}

// TryAcquire answers at once, for callers that would rather do something else than wait.
func ExampleLock_TryAcquire() {
	backend := memory.New()
	defer backend.Close()
	holder := shylock.New("tenants/7/migrate", shylock.WithBackend(backend), shylock.WithOwner("migrator-1"))
	_, _ = holder.TryAcquire(context.Background())

	l := shylock.New("tenants/7/migrate", shylock.WithBackend(backend))
	ok, err := l.TryAcquire(context.Background())
	fmt.Println(ok, err)
	info, _ := backend.Inspect(context.Background(), l.Name())
	fmt.Println("held by", info.Label)
	// Output:
	// false <nil>
	// held by migrator-1
}

// Acquire waits until the lock is free or the context ends; the error then matches both
// ErrLocked and the context's error, and no lock is left behind.
func ExampleLock_Acquire() {
	backend := memory.New()
	defer backend.Close()
	holder := shylock.New("orders/42", shylock.WithBackend(backend))
	_, _ = holder.TryAcquire(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	l := shylock.New("orders/42", shylock.WithBackend(backend))
	err := l.Acquire(ctx)
	fmt.Println(errors.Is(err, shylock.ErrLocked), errors.Is(err, context.DeadlineExceeded))

	_ = holder.Release(context.Background())
	if err := l.Acquire(context.Background()); err == nil {
		fmt.Println("acquired after the release")
	}
	_ = l.Release(context.Background())
	// Output:
	// true true
	// acquired after the release
}

// AcquireAsync fits a select over several events.
func ExampleLock_AcquireAsync() {
	backend := memory.New()
	defer backend.Close()
	l := shylock.New("queues/emails", shylock.WithBackend(backend))
	select {
	case err := <-l.AcquireAsync(context.Background()):
		fmt.Println("acquired:", err == nil)
	case <-time.After(time.Second):
		fmt.Println("gave up")
	}
	_ = l.Release(context.Background())
	// Output: acquired: true
}

// Fencing tokens grow with every holding. A resource that remembers the highest token it has
// seen can refuse a write from a holder that paused past its lease and was taken over.
func ExampleLock_Token() {
	backend := memory.New()
	defer backend.Close()
	var highest uint64
	write := func(token uint64) error {
		if token < highest {
			return fmt.Errorf("stale token %d, already saw %d", token, highest)
		}
		highest = token
		return nil
	}

	first := shylock.New("files/ledger", shylock.WithBackend(backend), shylock.WithTTL(20*time.Millisecond))
	_, _ = first.TryAcquire(context.Background())
	<-first.Lost() // it paused past its TTL
	second := shylock.New("files/ledger", shylock.WithBackend(backend))
	_ = second.Acquire(context.Background())

	fmt.Println(write(second.Token()))
	fmt.Println(write(first.Token()) != nil)
	// Output:
	// <nil>
	// true
}

// Lost is closed when a held lock is lost, so long work can stop.
func ExampleLock_Lost() {
	backend := memory.New()
	defer backend.Close()
	l := shylock.New("jobs/reindex", shylock.WithBackend(backend), shylock.WithTTL(30*time.Millisecond))
	_ = l.Acquire(context.Background())
	select {
	case <-l.Lost():
		fmt.Println("lost:", l.Release(context.Background()))
	case <-time.After(time.Second):
		fmt.Println("still held")
	}
	// Output: lost: shylock: release "jobs/reindex": lock not held: lock lost (another owner may have held it meanwhile)
}

// A refused attempt says who holds the lock, from the attempt itself: no second, racy read.
func ExampleLock_Holder() {
	backend := memory.New()
	defer backend.Close()
	ctx := context.Background()
	_, _ = shylock.New("reports/nightly", shylock.WithBackend(backend), shylock.WithOwner("cron on host-1")).TryAcquire(ctx)

	l := shylock.New("reports/nightly", shylock.WithBackend(backend))
	if ok, err := l.TryAcquire(ctx); !ok && err == nil {
		h, _ := l.Holder()
		fmt.Printf("busy: held by %q\n", h.Label)
	}
	// Acquire's error carries the same, for errors.As.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	var held *shylock.HeldError
	if err := l.Acquire(wctx); errors.As(err, &held) {
		fmt.Printf("gave up waiting for %q\n", held.Label)
	}
	// Output:
	// busy: held by "cron on host-1"
	// gave up waiting for "cron on host-1"
}

// Hooks see every event of a lock's life; here they count acquisitions and time held. The
// module github.com/shylock-go/shylock/otel turns them into OpenTelemetry metrics and spans.
func ExampleWithHook() {
	backend := memory.New()
	defer backend.Close()
	acquired := 0
	count := func(_ context.Context, e shylock.Event) {
		switch e.Kind {
		case shylock.EventAcquired:
			acquired++
		case shylock.EventReleased:
			fmt.Printf("released %s after holding it a while: %v\n", e.Name, e.Held > 0)
		}
	}
	for range 2 {
		_ = shylock.Do(context.Background(), "jobs/reindex", func(context.Context) error { return nil },
			shylock.WithBackend(backend), shylock.WithHook(count))
	}
	fmt.Println("acquired", acquired, "times")
	// Output:
	// released jobs/reindex after holding it a while: true
	// released jobs/reindex after holding it a while: true
	// acquired 2 times
}

// Until says when the lease ends by this process's clock, for work that must finish before.
func ExampleLock_Until() {
	backend := memory.New()
	defer backend.Close()
	l := shylock.New("migrations/tenant-7", shylock.WithBackend(backend), shylock.WithTTL(time.Minute))
	if ok, _ := l.TryAcquire(context.Background()); ok {
		left := time.Until(l.Until())
		fmt.Println("time left under a minute:", left > 50*time.Second && left <= time.Minute)
	}
	// Output:
	// time left under a minute: true
}
