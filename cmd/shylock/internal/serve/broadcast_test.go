package serve

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

// TestBroadcasterLeavesNothingRunning: the names a broadcaster follows end with its run, and a
// name refused after that is not followed any more.
func TestBroadcasterLeavesNothingRunning(t *testing.T) {
	defer goleak.VerifyNone(t)
	m := memory.New()
	defer m.Close()
	h := newBroadcaster(m, m, 20*time.Millisecond, newMetrics(), newHealth(nil), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.run(ctx) }()

	req := shylock.AcquireRequest{Name: "x", Owner: "o1", Label: "holder", TTL: time.Minute}
	if _, err := m.Acquire(ctx, req); err != nil {
		t.Fatal(err)
	}
	in, err := m.Inspect(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	h.watch(in)
	h.mu.Lock()
	followed := len(h.follow)
	h.mu.Unlock()
	if followed != 1 {
		t.Fatalf("%d names followed after a refusal; want 1", followed)
	}
	cancel()
	<-done
	h.watch(in)
	if len(h.follow) != 0 {
		t.Fatalf("names followed after the run ended: %v", h.follow)
	}
}
