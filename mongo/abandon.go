package mongo

import (
	"context"
	"sync"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/janitor"
)

// Abandon implements shylock.Backend. On the server-clock path every acquire attempt carries a
// deadline that the server enforces, so the last release comes once the owner's latest deadline
// has passed by the server's clock, and nothing the owner sent can take the lock after it. On
// servers without pipeline updates nothing bounds a write's life on the server: the last
// release comes shylock.AttemptTimeout after the call, and a write that reaches the server later
// still can leave a lock, which expires at its TTL.
func (b *Backend) Abandon(name, owner string, ttl time.Duration) {
	var settle func(ctx context.Context) error
	switch deadline, ok := b.inflight.take(owner); {
	case !b.serverNow:
		settle = func(ctx context.Context) error { return janitor.Sleep(ctx, shylock.AttemptTimeout) }
	case ok:
		settle = func(ctx context.Context) error { return b.waitPast(ctx, deadline.Add(b.offset)) }
	}
	b.janitor.Undo(name, shylock.AttemptTimeout+b.offset+ttl, func(ctx context.Context) error {
		return b.Release(ctx, name, owner, 0)
	}, settle)
}

// waitPast returns once t has passed by every reading of the server's clock.
func (b *Backend) waitPast(ctx context.Context, t time.Time) error {
	for {
		lo, _, err := b.server.clock.Bounds(ctx)
		if err != nil {
			return err
		}
		if lo.After(t) {
			return nil
		}
		if err := janitor.Sleep(ctx, t.Sub(lo)+time.Millisecond); err != nil {
			return err
		}
	}
}

// inflight keeps the latest deadline of each owner's acquire attempts, by the server's clock,
// until Abandon takes it or it has long passed.
type inflight struct {
	mu      sync.Mutex
	until   map[string]noted
	sweepAt int
}

type noted struct {
	deadline time.Time // server clock
	at       time.Time // client clock, when noted
}

// forgetAfter is how long after it was noted a deadline is dropped unasked: far beyond the
// attempt's own window and any uncertainty of the clock estimate.
const forgetAfter = time.Minute

func (f *inflight) note(owner string, deadline time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.until == nil {
		f.until, f.sweepAt = map[string]noted{}, 64
	}
	if len(f.until) >= f.sweepAt {
		for o, n := range f.until {
			if time.Since(n.at) > forgetAfter {
				delete(f.until, o)
			}
		}
		f.sweepAt = max(64, 2*len(f.until))
	}
	if n, ok := f.until[owner]; !ok || deadline.After(n.deadline) {
		f.until[owner] = noted{deadline: deadline, at: time.Now()}
	}
}

func (f *inflight) take(owner string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.until[owner]
	delete(f.until, owner)
	return n.deadline, ok
}
