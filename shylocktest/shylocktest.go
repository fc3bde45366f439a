// Package shylocktest is the conformance suite every shylock backend passes. Backend authors
// call Run from a test:
//
//	func TestConformance(t *testing.T) {
//		shylocktest.Run(t, func(t *testing.T) shylock.Backend { return mybackend.New(...) })
//	}
//
// The suite checks the guarantees a backend owns (mutual exclusion, expiry by the backend's
// clock, owner-only release and extend, increasing fencing tokens, input validation,
// administration, fair turns across processes) through both the Backend interface and the Lock
// API on top of it. Subtests run in parallel on distinct names, so one shared database serves
// them all; every name starts with a random prefix, so suites may share a collection.
package shylocktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
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
	{"QueueTurns", testQueueTurns},
	{"QueueEntryExpires", testQueueEntryExpires},
	{"CancelledWaiterLeavesQueue", testCancelledWaiterLeaves},
	{"WaitersGetTurns", testWaitersGetTurns},
	{"WaiterKeepsItsPlace", testWaiterKeepsItsPlace},
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

// acquireWithin takes l, whose lease is ttl, and returns "" when it did; an attempt that took
// longer than the lease (so that it holds nothing) is the machine's stall, which it returns.
func (s *suite) acquireWithin(t *testing.T, l *shylock.Lock, ttl time.Duration) (stalled string) {
	t.Helper()
	ok, err := l.TryAcquire(s.ctx)
	switch {
	case err != nil && strings.Contains(err.Error(), "ran out before the attempt's reply came"):
		return fmt.Sprintf("the attempt outlasted its %v lease: %v", ttl, err)
	case err != nil || !ok:
		t.Fatalf("TryAcquire(%q) = %v, %v; want true, nil", l.Name(), ok, err)
	}
	return ""
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

// Timing on a loaded machine. A check that needs something to happen within a lease cannot
// tell a backend that failed it from a machine that stalled the test's process, or the server,
// for a good part of the lease: a busy 2-core machine does, for seconds. Such checks measure
// the stalls while they run; one whose lease ran out during a stall that explains it runs again
// with longer leases, on fresh names, and only a failure without such a stall is the backend's.

// stallMeter measures, while a check runs, the worst of how late this process's timers fire
// and how long the backend takes to answer a read.
type stallMeter struct {
	worst  atomic.Int64 // nanoseconds
	cancel context.CancelFunc
	done   chan struct{}
}

// meterStalls starts measuring, reading name (which the check need not use).
func (s *suite) meterStalls(name string) *stallMeter {
	ctx, cancel := context.WithCancel(s.ctx)
	m := &stallMeter{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		const nap = 50 * time.Millisecond
		for ctx.Err() == nil {
			start := time.Now()
			time.Sleep(nap)
			m.note(time.Since(start) - nap)
			start = time.Now()
			if _, err := s.b.Inspect(ctx, name); err == nil || ctx.Err() == nil {
				m.note(time.Since(start))
			}
		}
	}()
	return m
}

func (m *stallMeter) note(d time.Duration) {
	for old := m.worst.Load(); int64(d) > old && !m.worst.CompareAndSwap(old, int64(d)); old = m.worst.Load() {
	}
}

// stop ends the measurement and returns the worst stall seen.
func (m *stallMeter) stop() time.Duration {
	m.cancel()
	<-m.done
	return time.Duration(m.worst.Load())
}

// renewals records what happened to a renewed holding, so that a check that finds it lost can
// say how: which renewals went out, how long each took, and why the loss was declared.
type renewals struct {
	start time.Time
	mu    sync.Mutex
	log   []string
}

func newRenewals() *renewals { return &renewals{start: time.Now()} }

// hook is the option that feeds r.
func (r *renewals) hook() shylock.Option {
	return shylock.WithHook(func(_ context.Context, e shylock.Event) {
		switch e.Kind {
		case shylock.EventAcquired, shylock.EventRenewed, shylock.EventRenewFailed, shylock.EventLost:
		default:
			return
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		line := fmt.Sprintf("%v: %v", time.Since(r.start).Round(time.Millisecond), e.Kind)
		if e.Took > 0 {
			line += fmt.Sprintf(" (took %v)", e.Took.Round(time.Millisecond))
		}
		if e.Err != nil {
			line += ": " + e.Err.Error()
		}
		r.log = append(r.log, line)
	})
}

func (r *renewals) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.log, "; ")
}

// leaseScales are the factors a timing-sensitive check scales its leases by, one attempt each.
var leaseScales = []time.Duration{1, 3, 9}

// withLongerLeases runs check with its leases scaled by each of leaseScales in turn, on fresh
// names, until an attempt is conclusive: check returns "" when it passed (it fails the test
// itself when the backend is at fault), or why the machine's stalls left it unable to tell.
func (s *suite) withLongerLeases(t *testing.T, check func(s *suite, scale time.Duration) (stalled string)) {
	t.Helper()
	var why string
	for _, scale := range leaseScales {
		sub := *s
		sub.prefix = fmt.Sprintf("%sx%d/", s.prefix, scale)
		if why = check(&sub, scale); why == "" {
			return
		}
		t.Logf("inconclusive with leases scaled x%d: %s", scale, why)
	}
	t.Fatalf("inconclusive even with leases scaled x%d: %s", leaseScales[len(leaseScales)-1], why)
}

// progressContext returns a context that ends when progress has not been called for idle: for
// work whose total time a loaded machine can stretch at will, a bound on a stall rather than on
// the total. It also ends with parent.
func progressContext(parent context.Context, idle time.Duration) (ctx context.Context, progress func(), cancel func()) {
	ctx, cancelCause := context.WithCancelCause(parent)
	timer := time.AfterFunc(idle, func() { cancelCause(fmt.Errorf("no progress for %v", idle)) })
	return ctx, func() { timer.Reset(idle) }, func() { timer.Stop(); cancelCause(nil) }
}
