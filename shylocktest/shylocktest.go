// Package shylocktest is the conformance suite every shylock backend passes. Backend authors
// call Run from a test:
//
//	func TestConformance(t *testing.T) {
//		shylocktest.Run(t, func(t *testing.T) shylock.Backend { return mybackend.New(...) })
//	}
//
// The suite checks the guarantees a backend owns (mutual exclusion, expiry by the backend's
// clock, owner-only release and extend, increasing fencing tokens, input validation,
// administration) through both the Backend interface and the Lock API on top of it. Subtests run
// in parallel on distinct names, so one shared database serves them all; every name starts with
// a random prefix, so suites may share a collection.
package shylocktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// NewBackend returns the backend to test. It may return the same backend to every subtest, or a
// fresh one (then close it with t.Cleanup).
type NewBackend func(t *testing.T) shylock.Backend

type test struct {
	name string
	fn   func(t *testing.T, s *suite)
}

var tests = []test{
	{"MutualExclusion", testMutualExclusion},
	{"TryAcquireRace", testTryAcquireRace},
	{"TryAcquireWhileHeld", testTryAcquireWhileHeld},
	{"TakeoverAfterExpiry", testTakeoverAfterExpiry},
	{"OwnerOnlyReleaseAndExtend", testOwnerOnly},
	{"RetryRecognisesOwnLock", testRetryRecognisesOwnLock},
	{"FencingTokensIncrease", testFencingTokens},
	{"InvalidNames", testInvalidNames},
	{"InvalidTTLs", testInvalidTTLs},
	{"NamesAreValues", testNamesAreValues},
	{"ReleaseAndExtendWithoutHolding", testWithoutHolding},
	{"CancelledAcquireLeavesNoLock", testCancelledAcquire},
	{"AmbiguousAcquireLeavesNoLock", testAmbiguousAcquire},
	{"LostOnTakeover", testLostOnTakeover},
	{"AutoRenewKeepsLock", testAutoRenew},
	{"MaxHoldBoundsRenewal", testMaxHold},
	{"ReleaseWakesWaiters", testReleaseWakesWaiters},
	{"AcquireAsync", testAcquireAsync},
	{"Do", testDo},
	{"DoCancelsOnLoss", testDoCancelsOnLoss},
	{"InspectListForceRelease", testAdmin},
}

// Run runs the conformance suite against the backends newBackend returns.
func Run(t *testing.T, newBackend NewBackend) {
	t.Helper()
	prefix := "shylocktest/" + randomID() + "/"
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t.Cleanup(cancel)
			tc.fn(t, &suite{b: b, ctx: ctx, prefix: prefix + tc.name + "/", log: testLogger(t)})
		})
	}
}

// suite is what one subtest works with.
type suite struct {
	b      shylock.Backend
	ctx    context.Context
	prefix string
	log    *slog.Logger
}

// name returns a lock name unique to this subtest.
func (s *suite) name(n string) string { return s.prefix + n }

// with returns opts after the options every lock of the suite starts from.
func (s *suite) with(opts ...shylock.Option) []shylock.Option {
	return append([]shylock.Option{shylock.WithBackend(s.b), shylock.WithLogger(s.log)}, opts...)
}

// lock returns a Lock on the backend under test.
func (s *suite) lock(n string, opts ...shylock.Option) *shylock.Lock {
	return shylock.New(s.name(n), s.with(opts...)...)
}

// testLogger shows the library's log records with t's output while t runs, and drops those
// that come later (a lock a test left to expire reports its loss after the test).
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{w: t.Output()}
	t.Cleanup(w.close)
	return slog.New(slog.NewTextHandler(w, nil))
}

type testWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	return w.w.Write(p)
}

func (w *testWriter) close() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

func (s *suite) mustAcquire(t *testing.T, l *shylock.Lock) {
	t.Helper()
	ok, err := l.TryAcquire(s.ctx)
	if err != nil || !ok {
		t.Fatalf("TryAcquire(%q) = %v, %v; want true, nil", l.Name(), ok, err)
	}
}

func (s *suite) inspect(t *testing.T, name string) shylock.Info {
	t.Helper()
	info, err := s.b.Inspect(s.ctx, name)
	if err != nil {
		t.Fatalf("Inspect(%q): %v", name, err)
	}
	return info
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// wantErr fails unless err matches every target.
func wantErr(t *testing.T, what string, err error, targets ...error) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got no error, want one matching %v", what, targets)
	}
	for _, target := range targets {
		if !errors.Is(err, target) {
			t.Fatalf("%s: error %q does not match %v", what, err, target)
		}
	}
}

// closedWithin reports whether ch is closed (or yields) within d.
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
