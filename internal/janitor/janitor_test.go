package janitor

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

var errDown = errors.New("connection refused (test fault)")

// TestUndoRetriesThenReleasesAgain: a release that fails is retried; after settle, one more.
func TestUndoRetriesThenReleasesAgain(t *testing.T) {
	j := New(nil)
	defer j.Close()
	var calls, fails atomic.Int32
	fails.Store(3)
	settled := make(chan struct{})
	done := make(chan struct{})
	j.Undo("x", time.Minute, func(context.Context) error {
		n := calls.Add(1)
		if fails.Add(-1) >= 0 {
			return errDown
		}
		if n == 5 {
			close(done)
		}
		return shylock.ErrNotHeld
	}, func(context.Context) error { close(settled); return nil })
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d releases in 10s; want 3 failures, one success, and one after settling", calls.Load())
	}
	select {
	case <-settled:
	default:
		t.Fatal("the second release came before settle returned")
	}
}

// TestUndoGivesUpAtItsLimit: a backend that never answers costs at most the limit.
func TestUndoGivesUpAtItsLimit(t *testing.T) {
	j := New(nil)
	var calls atomic.Int32
	j.Undo("x", 200*time.Millisecond, func(context.Context) error { calls.Add(1); return errDown }, nil)
	time.Sleep(400 * time.Millisecond)
	n := calls.Load()
	time.Sleep(300 * time.Millisecond)
	if calls.Load() != n || n < 2 {
		t.Fatalf("%d releases, then %d more after the limit; want retries within it and none after", n, calls.Load()-n)
	}
	j.Close()
}

// TestCloseAbandons: Close ends work in progress at once, and later work is not started.
func TestCloseAbandons(t *testing.T) {
	j := New(nil)
	j.Undo("x", time.Hour, func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }, nil)
	start := time.Now()
	j.Close()
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Close took %v", d)
	}
	ran := false
	j.Undo("x", time.Hour, func(context.Context) error { ran = true; return nil }, nil)
	j.Close()
	if ran {
		t.Fatal("work started after Close")
	}
}
