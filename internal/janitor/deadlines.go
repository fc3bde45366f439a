package janitor

import (
	"context"
	"sync"
	"time"
)

// Deadlines keeps the latest deadline, by the server's clock, of each owner's acquire attempts,
// until the owner is abandoned or the deadline has long passed. The zero value is ready to use.
type Deadlines struct {
	mu      sync.Mutex
	until   map[string]noted
	sweepAt int
}

type noted struct {
	deadline time.Time // server clock
	at       time.Time // client clock, when noted
}

// forgetAfter is how long after it was noted a deadline is dropped unasked: far beyond an
// attempt's own window and any uncertainty of the clock estimate.
const forgetAfter = time.Minute

// Note records that an attempt of owner must not take effect after deadline.
func (d *Deadlines) Note(owner string, deadline time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.until == nil {
		d.until, d.sweepAt = map[string]noted{}, 64
	}
	if len(d.until) >= d.sweepAt {
		for o, n := range d.until {
			if time.Since(n.at) > forgetAfter {
				delete(d.until, o)
			}
		}
		d.sweepAt = max(64, 2*len(d.until))
	}
	if n, ok := d.until[owner]; !ok || deadline.After(n.deadline) {
		d.until[owner] = noted{deadline: deadline, at: time.Now()}
	}
}

// Take returns and forgets owner's latest deadline.
func (d *Deadlines) Take(owner string) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.until[owner]
	delete(d.until, owner)
	return n.deadline, ok
}

// Bounds is an interval certain to contain the server's time now (see internal/clock).
type Bounds func(ctx context.Context) (lo, hi time.Time, err error)

// WaitPast returns once t has passed by every reading of the server's clock.
func WaitPast(ctx context.Context, t time.Time, bounds Bounds) error {
	for {
		lo, _, err := bounds(ctx)
		if err != nil {
			return err
		}
		if lo.After(t) {
			return nil
		}
		if err := Sleep(ctx, t.Sub(lo)+time.Millisecond); err != nil {
			return err
		}
	}
}

// AttemptDeadline is the server time after which an attempt sent now with ctx must not take
// effect: ctx's deadline, at most window away, by the high end of the estimate of the server's
// clock (hi), plus the clock offset between servers, so that no server judges an attempt late
// that reached it in time. It is rounded up to the millisecond that servers keep.
func AttemptDeadline(ctx context.Context, hi time.Time, window, offset time.Duration) time.Time {
	if d, ok := ctx.Deadline(); ok {
		window = max(min(window, time.Until(d)), 0)
	}
	return hi.Add(window + offset + time.Millisecond).Truncate(time.Millisecond)
}
