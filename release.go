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
// retried. It waits at most AttemptTimeout for the backend. Auto-renewal has stopped when
// Release returns, whatever the outcome.
func (l *Lock) Release(ctx context.Context) (err error) {
	h := l.stopRenewal()
	if h == nil {
		return l.errorf("release", fmt.Errorf("%w: this Lock does not hold it", ErrNotHeld))
	}
	sent, detached := time.Now(), false
	defer func() {
		if detached {
			h.cfg.emit(ctx, func() Event {
				return Event{Kind: EventReleased, Name: l.name, Token: h.token, Err: err, Took: time.Since(sent), Held: time.Since(h.acquired)}
			})
		}
	}()
	rctx, cancel := context.WithTimeout(ctx, AttemptTimeout)
	err = l.releaseUnapplied(rctx, h)
	cancel()
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
	if !l.detach(h) {
		return l.errorf("release", fmt.Errorf("%w: already released", ErrNotHeld))
	}
	detached = true
	if err != nil {
		l.markLost(h, err)
	}
	switch {
	case !h.isLost:
		return nil
	case unreachable: // the lease has ended anyway: nothing is left to release or retry
		return l.errorf("release", fmt.Errorf("%w: %w; the backend could not be told (%w), and the lock expires there by itself",
			ErrNotHeld, ErrLost, err))
	}
	return l.errorf("release", fmt.Errorf("%w: %w (another owner may have held it meanwhile)", ErrNotHeld, ErrLost))
}

// releaseUnapplied releases h, trying again while the backend answers that nothing changed (a
// busy server, a connection not to be had) and ctx allows: such a retry is free of doubt.
func (l *Lock) releaseUnapplied(ctx context.Context, h *holding) error {
	bo := backoff.New(10*time.Millisecond, 250*time.Millisecond)
	for {
		err := h.cfg.backend.Release(ctx, l.name, h.owner, h.token)
		if !errors.Is(err, ErrUnavailable) {
			return err
		}
		t := time.NewTimer(bo.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return err
		}
	}
}

// handOff gives the holding up without waiting for the backend, which releases it in the
// background. It returns what Release would of a holding that was lost, else nil.
func (l *Lock) handOff() error {
	h := l.stopRenewal()
	if h == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.detach(h) {
		return nil // a concurrent Release finished first
	}
	if !h.pending { // detach has asked for the release already otherwise
		h.cfg.backend.Abandon(l.name, h.owner, h.ttl)
	}
	h.cfg.emit(context.Background(), func() Event {
		var err error
		if h.isLost {
			err = ErrLost
		}
		return Event{Kind: EventReleased, Name: l.name, Token: h.token, Err: err, Held: time.Since(h.acquired)}
	})
	if h.isLost {
		return l.errorf("release", fmt.Errorf("%w: %w (another owner may have held it meanwhile)", ErrNotHeld, ErrLost))
	}
	return nil
}

// stopRenewal stops the auto-renewal of the current holding and returns the holding, or nil.
func (l *Lock) stopRenewal() *holding {
	l.mu.Lock()
	h := l.h
	if h != nil && h.stopRenew != nil {
		h.stopRenew()
	}
	l.mu.Unlock()
	if h != nil && h.renewed != nil {
		<-h.renewed
	}
	return h
}

// detach ends h as the current holding, marking it lost if its lease ran out first, and
// reports false if it already was not. An acquire attempt of h's owner that may still reach
// the server is left to the backend to undo. Call with l.mu held.
func (l *Lock) detach(h *holding) bool {
	if l.h != h {
		return false
	}
	l.h = nil
	l.lost = make(chan struct{})
	if !time.Now().Before(h.deadline) {
		l.markLost(h, errors.New("the lease had expired before Release"))
	}
	h.timer.Stop()
	if h.pending {
		h.cfg.backend.Abandon(l.name, h.owner, h.ttl)
	}
	return true
}
