package shylock

import (
	"context"
	"time"
)

// EventKind says what happened to a lock.
type EventKind int

// The events a Hook receives.
const (
	// EventAttempt: the backend answered one acquire attempt. Err is nil when it took the lock,
	// matches ErrLocked when another owner holds it, and is the failure otherwise; Took is the
	// round trip.
	EventAttempt EventKind = iota + 1
	// EventAcquired: Acquire or TryAcquire took the lock, Waited after the call began.
	EventAcquired
	// EventGaveUp: Acquire or TryAcquire returned without the lock, Waited after the call
	// began. Err says why; it matches ErrLocked when another owner held it (also for
	// TryAcquire's (false, nil)).
	EventGaveUp
	// EventRenewed: an auto-renewal or an Extend pushed the lease out; Took is the round trip.
	EventRenewed
	// EventRenewFailed: a renewal or an Extend failed (Err); the lease stands until it runs out.
	EventRenewFailed
	// EventLost: the holding was lost (Err says why), Held after it was acquired.
	EventLost
	// EventReleased: Release ended the holding, Held after it was acquired; Err is set if the
	// release did not go cleanly (the holding was lost first, or the backend could not be told).
	EventReleased
)

var kindNames = [...]string{"", "attempt", "acquired", "gave_up", "renewed", "renew_failed", "lost", "released"}

// String returns the kind in snake_case, as metrics and logs name it.
func (k EventKind) String() string {
	if k < 0 || int(k) >= len(kindNames) {
		return "unknown"
	}
	return kindNames[k]
}

// Event is one thing that happened to a lock. Fields that do not apply to its Kind are zero.
type Event struct {
	Kind   EventKind
	Name   string        // the lock's name: unbounded, so never a metric label by default
	Token  uint64        // the holding's fencing token, 0 before there is one
	Err    error         // see the kinds
	Took   time.Duration // the round trip of an attempt, a renewal or a release
	Waited time.Duration // EventAcquired, EventGaveUp: since Acquire or TryAcquire began
	Held   time.Duration // EventLost, EventReleased: since the holding was acquired
}

// Hook receives a lock's events as they happen, in the goroutine that caused them: keep it quick,
// and never call the Lock from it. ctx is the context of the call the event comes from
// (Acquire's, Release's, Extend's), or context.Background() for what happens in the background
// (auto-renewal, a lease running out), so a tracing hook can hang its spans under the caller's.
// Add hooks with WithHook; the OpenTelemetry adapter lives in its own module
// (github.com/shylock-go/shylock/otel). A lock without hooks builds no events.
type Hook func(ctx context.Context, e Event)

// WithHook adds h to the hooks that receive the lock's events (see Hook). Hooks given to
// Configure run first, then those given to New or Do, in order.
func WithHook(h Hook) Option {
	return func(c *config) {
		if h == nil {
			c.invalid("WithHook(nil)")
			return
		}
		c.hooks = append(c.hooks, h)
	}
}

// emit passes the event to every hook; without hooks it returns at once and builds nothing.
func (c *config) emit(ctx context.Context, event func() Event) {
	if len(c.hooks) == 0 {
		return
	}
	e := event()
	for _, h := range c.hooks {
		h(ctx, e)
	}
}
