package integration

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	"github.com/shylock-go/shylock/shylocktest"
)

// checkLeaks fails t if a goroutine started during it is still running at its end, beyond what
// the backend legitimately keeps until Close.
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// TestMemoryConformance runs the suite on the in-process backend and checks that no lock, waiter,
// renewal or Do goroutine outlives it.
func TestMemoryConformance(t *testing.T) {
	checkLeaks(t)
	shylocktest.Run(t, func(t *testing.T) shylock.Backend {
		b := memory.New()
		t.Cleanup(b.Close)
		return b
	})
}
