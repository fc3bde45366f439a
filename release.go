package shylock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
)

// Release gives the lock up. It returns an error matching ErrNotHeld if this handle does not
// hold the lock, and one matching both ErrNotHeld and ErrLost if the holding was lost before
// the release (work done under it may have overlapped with another holder's). If the backend
// cannot be reached the error says so, the lock stays held until its TTL, and Release may be
// retried. Auto-renewal has stopped when Release returns, whatever the outcome.
func (l *Lock) Release(ctx context.Context) error {
	l.mu.Lock()
	h := l.h
	if h == nil {
		l.mu.Unlock()
		return l.errorf("release", fmt.Errorf("%w: this Lock does not hold it", ErrNotHeld))
	}
	if h.stopRenew != nil {
		h.stopRenew()
	}
	l.mu.Unlock()
	if h.renewed != nil {
		<-h.renewed
	}

	err := h.cfg.backend.Release(ctx, l.name, h.owner, h.token)
	l.mu.Lock()
	defer l.mu.Unlock()
	unreachable := err != nil && !errors.Is(err, ErrNotHeld)
	if unreachable && !h.isLost && time.Now().Before(h.deadline) {
		h.releaseUncertain = true
		return l.errorf("release", fmt.Errorf("%w (the lock stays held until it expires; Release may be retried)", err))
	}
	if errors.Is(err, ErrNotHeld) && h.releaseUncertain {
		err = nil // the earlier attempt did release it
	}
	if l.h != h { // a concurrent Release finished first
		return l.errorf("release", fmt.Errorf("%w: already released", ErrNotHeld))
	}
	l.h = nil
	l.lost = make(chan struct{})
	switch {
	case err != nil:
		l.markLost(h, err)
	case !time.Now().Before(h.deadline):
		l.markLost(h, errors.New("the lease had expired before Release"))
	}
	h.timer.Stop()
	switch {
	case !h.isLost:
		return nil
	case unreachable: // the lease has ended anyway: nothing is left to release or retry
		return l.errorf("release", fmt.Errorf("%w: %w; the backend could not be told (%w), and the lock expires there by itself",
			ErrNotHeld, ErrLost, err))
	}
	return l.errorf("release", fmt.Errorf("%w: %w (another owner may have held it meanwhile)", ErrNotHeld, ErrLost))
}

// releaseRetrying releases, retrying failures other than ErrNotHeld with backoff until ctx
// ends; the retry of a release that did apply succeeds.
func (l *Lock) releaseRetrying(ctx context.Context) error {
	var (
		cfg *config // resolved at the first failure, so a release that gets through costs nothing more
		bo  *backoff.Backoff
	)
	for {
		err := l.Release(ctx)
		if err == nil || errors.Is(err, ErrNotHeld) {
			return err
		}
		if cfg == nil {
			c, _ := resolve(l.name, l.opts) // valid: the lock was acquired with them
			cfg, bo = &c, retryBackoff(c)
		}
		cfg.logger.Debug("shylock: release failed; retrying", "name", l.name, "err", err)
		select {
		case <-time.After(bo.Next()):
		case <-ctx.Done():
			return err
		}
	}
}

// retryBackoff paces retries of a write that must get through: within the lock's retry
// bounds, but at least once a second.
func retryBackoff(cfg config) *backoff.Backoff {
	return backoff.New(cfg.retryMin, max(cfg.retryMin, min(cfg.retryMax, time.Second)))
}
