package mongo

import (
	"context"
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
	switch deadline, ok := b.inflight.Take(owner); {
	case !b.serverNow:
		settle = func(ctx context.Context) error { return janitor.Sleep(ctx, shylock.AttemptTimeout) }
	case ok:
		settle = func(ctx context.Context) error {
			return janitor.WaitPast(ctx, deadline.Add(b.offset), b.server.clock.Bounds)
		}
	}
	b.janitor.Undo(name, shylock.AttemptTimeout+b.offset+ttl, func(ctx context.Context) error {
		return b.Release(ctx, name, owner, 0)
	}, settle)
}
