package memory

import (
	"context"
	"fmt"
	"sort"

	"github.com/shylock-go/shylock"
)

// The map holds no released records, so reading it whole costs what the live locks cost.

// Holding implements shylock.Holdings.
func (b *Backend) Holding(ctx context.Context, owner string) (shylock.Info, error) {
	if err := ctx.Err(); err != nil {
		return shylock.Info{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	found := shylock.Info{}
	for name, r := range b.locks {
		if owner != "" && r.owner == owner && (found.Name == "" || name < found.Name) {
			found = b.info(name, r, now)
		}
	}
	if found.Name == "" {
		return found, fmt.Errorf("%w: no lock is held by owner %q (released, expired or taken over)", shylock.ErrNotHeld, owner)
	}
	return found, nil
}

// Held implements shylock.Holdings.
func (b *Backend) Held(ctx context.Context) ([]shylock.Info, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	now := b.now()
	var out []shylock.Info
	for name, r := range b.locks {
		if r.held(now) {
			out = append(out, b.info(name, r, now))
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Amend implements shylock.Holdings.
func (b *Backend) Amend(ctx context.Context, name, owner string, token uint64, a shylock.Amendment) (shylock.Info, error) {
	if err := check(ctx, name); err != nil {
		return shylock.Info{}, err
	}
	if err := a.Validate(); err != nil {
		return shylock.Info{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	r := b.locks[name]
	if r == nil || owner == "" || r.owner != owner || r.token != token || !r.held(now) {
		return shylock.Info{}, fmt.Errorf("%w: %q is not held by this owner (expired, released or taken over)", shylock.ErrNotHeld, name)
	}
	if a.Label != nil {
		r.label = *a.Label
	}
	switch {
	case a.TTL != 0:
		r.renewedAt, r.expiresAt = now, now.Add(a.TTL)
	case !a.ExpiresAt.IsZero():
		r.renewedAt, r.expiresAt = now, a.ExpiresAt
	}
	return b.info(name, r, now), nil
}

var _ shylock.Holdings = (*Backend)(nil)
