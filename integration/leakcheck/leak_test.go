// Package leakcheck runs the conformance suite on the in-process backend in a test binary of
// its own, with no server or driver in the process, so goleak can demand that no goroutine at
// all outlives a test.
package leakcheck

import (
	"testing"

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
