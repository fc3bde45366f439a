package shylock

import (
	"context"
	"sync"
	"time"
)

// trusted is how long after its request a holder trusts a lease good for valid: 1% plus 2ms
// less, Redlock's allowance for the holder's clock running slow and its timers firing late.
func trusted(valid time.Duration) time.Duration {
	return valid - valid/100 - 2*time.Millisecond
}

// AttemptTimeout bounds each request a Lock makes to its backend: one acquire attempt (and so
// TryAcquire, also without a deadline), one Release, one Extend. A server that has not answered
// by then may still apply the request; where the server reads its own clock, an acquire attempt
// that reaches it later than this after it was sent is refused there, unapplied.
const AttemptTimeout = 5 * time.Second

// Lock is a handle on one named lock. Create it with New.
type Lock struct {
	name string
	opts []Option

	mu        sync.Mutex
	acquiring bool
	h         *holding      // the current holding, nil when none
	lost      chan struct{} // Lost of the current holding, or of the next one
	holder    *HeldError    // what the last refused attempt saw
}

// holding is one successful acquisition, from Acquire to Release.
type holding struct {
	cfg      config
	owner    string
	token    uint64
	acquired time.Time // local clock, when the acquiring request was sent

	// Guarded by Lock.mu.
	ttl      time.Duration
	valid    time.Duration // of the last lease: how long it was good for from its request
	leased   time.Time     // local clock, when the request of the last lease was sent
	deadline time.Time     // local clock; past it the lease may have expired on the server
	isLost   bool
	lost     chan struct{}
	timer    *time.Timer // fires at deadline

	stopRenew context.CancelFunc // nil without auto-renew
	renewed   chan struct{}      // closed when the renewal goroutine has returned

	// A release failed in a way that may have applied; a retry that finds nothing to release
	// is then a success, not a loss.
	releaseUncertain bool
	// An acquire attempt of this owner whose outcome is unknown may still reach the server:
	// after the release, the backend must make sure it did not take the lock again.
	pending bool
}

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

func (l *Lock) errorf(op string, err error) error {
	return &opError{op: op, name: l.name, err: err}
}

// holding reports whether the handle has a holding that Release has not ended.
func (l *Lock) holding() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h != nil
}

// Held reports whether this handle holds the lock: acquired, not released, not known to be
// lost, and its lease not yet run out by the local clock. It does no I/O.
func (l *Lock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h != nil && !l.h.isLost && time.Now().Before(l.h.deadline)
}

// Until returns when the current holding's lease ends by this process's clock: the moment after
// which Held reports false unless the lease is extended first. It is a little before the
// backend ends the lease (see Lease.Valid). It returns the zero time when the handle holds
// nothing, and the lease's end even after the holding was lost. It does no I/O.
func (l *Lock) Until() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		return time.Time{}
	}
	return l.h.deadline
}

// Lost returns a channel that is closed when the current holding is lost: its lease ran out
// without renewal, renewal kept failing until it would have, or a renewal or Extend found it
// released or taken over. Release does not close it. Before the first Acquire, and after a
// Release, it returns the channel of the next holding.
func (l *Lock) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Token returns the fencing token of the current holding, or 0 before the first Acquire and
// after Release. A holding that was lost keeps its token until Release, so that it can be
// reported. Tokens strictly increase per name: pass it with each write to a resource that can
// remember the highest token it has seen and reject lower ones.
func (l *Lock) Token() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		return 0
	}
	return l.h.token
}
