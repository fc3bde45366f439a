// Package leakcheck runs the conformance suite on the in-process backend in a test binary of
// its own, with no server or driver in the process, so goleak can demand that no goroutine at
// all outlives a test.
package leakcheck

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	"github.com/shylock-go/shylock/shylocktest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMemoryConformance checks that no lock, waiter, renewal or Do goroutine outlives the suite.
func TestMemoryConformance(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) }) // after every parallel subtest has ended
	shylocktest.Run(t, func(t *testing.T) shylock.Backend {
		b := memory.New()
		t.Cleanup(b.Close)
		return b
	})
}

// TestUnreadAcquireAsync drops AcquireAsync's channel unread, both after success and after
// cancellation: no goroutine may stay behind (TestMain checks).
func TestUnreadAcquireAsync(t *testing.T) {
	b := memory.New()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	held := shylock.New("x", shylock.WithBackend(b))
	_ = held.AcquireAsync(ctx) // acquired; nobody reads the nil
	for !held.Held() {
		time.Sleep(time.Millisecond)
	}
	waiter := shylock.New("x", shylock.WithBackend(b))
	_ = waiter.AcquireAsync(ctx) // waits; nobody reads its error
	time.Sleep(20 * time.Millisecond)
	cancel()
	if err := held.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}
