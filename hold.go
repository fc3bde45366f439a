package shylock

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
)

func (l *Lock) hold(cfg config, req AcquireRequest, lease Lease, sent time.Time, pending bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := &holding{cfg: cfg, owner: req.Owner, token: lease.Token, acquired: sent,
		ttl: cfg.ttl, valid: lease.Valid, leased: sent, deadline: sent.Add(trusted(lease.Valid)), lost: l.lost, pending: pending}
	l.h, l.holder = h, nil
	h.timer = time.AfterFunc(time.Until(h.deadline), func() { l.expire(h) })
	if cfg.autoRenew {
		// Renewal must outlive the acquiring context: only Release or loss stops it.
		ctx, cancel := context.WithCancel(context.Background())
		h.stopRenew, h.renewed = cancel, make(chan struct{})
		go l.renew(ctx, h)
	}
}

// expire runs at the holding's deadline.
func (l *Lock) expire(h *holding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h.isLost || l.h != h {
		return
	}
	if d := time.Until(h.deadline); d > 0 { // extended since the timer was set
		h.timer.Reset(d)
		return
	}
	l.markLost(h, errors.New("the lease expired without renewal"))
}

// markLost records the loss of h. Call with l.mu held.
func (l *Lock) markLost(h *holding, why error) {
	if h.isLost {
		return
	}
	h.isLost = true
	h.timer.Stop()
	if h.stopRenew != nil {
		h.stopRenew()
	}
	// The caller hears of it through Lost, and from Release, Extend or Do; hooks first, so that
	// what they record is there when Lost is closed.
	h.cfg.logger.Debug("shylock: lock lost", "name", l.name, "token", h.token, "reason", why)
	h.cfg.emit(context.Background(), func() Event {
		return Event{Kind: EventLost, Name: l.name, Token: h.token, Err: why, Held: time.Since(h.acquired)}
	})
	close(h.lost)
}

// renewal tells the hooks how a renewal or Extend sent at sent came out.
func (l *Lock) renewal(ctx context.Context, h *holding, sent time.Time, err error) {
	h.cfg.emit(ctx, func() Event {
		kind := EventRenewed
		if err != nil {
			kind = EventRenewFailed
		}
		return Event{Kind: kind, Name: l.name, Token: h.token, Err: err, Took: time.Since(sent)}
	})
}

// extended records a successful Extend sent at sent. It reports false if the holding was lost
// or released meanwhile.
func (l *Lock) extended(h *holding, lease Lease, ttl time.Duration, sent time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h.isLost || l.h != h {
		return false
	}
	h.ttl, h.valid, h.leased, h.deadline = ttl, lease.Valid, sent, sent.Add(trusted(lease.Valid))
	h.timer.Reset(time.Until(h.deadline))
	return true
}

func (l *Lock) renew(ctx context.Context, h *holding) {
	defer close(h.renewed)
	cfg := h.cfg
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	sleep := func(d time.Duration) bool {
		t.Reset(d)
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		// Renew a third of the way into the lease, which leaves two thirds of it for retries.
		// That is TTL/3 unless the backend's clock is uncertain enough to shorten the lease.
		// The lease runs from when its request was sent: after a slow reply, renewal may be
		// due on arrival.
		l.mu.Lock()
		ttl, due := h.ttl, h.leased.Add(h.valid/3)
		l.mu.Unlock()
		if !sleep(max(time.Until(due), 0)) {
			return
		}
		if cfg.maxHold > 0 {
			left := cfg.maxHold - time.Since(h.acquired)
			if left < MinTTL {
				cfg.logger.Warn("shylock: stopped renewing at the WithMaxHold bound; the lock will expire",
					"name", l.name, "max_hold", cfg.maxHold)
				return
			}
			ttl = min(ttl, left)
		}
		if !l.renewOnce(ctx, h, ttl) {
			return
		}
	}
}

// renewOnce extends h, retrying transient errors until the lease would run out. It reports
// whether renewal should go on.
func (l *Lock) renewOnce(ctx context.Context, h *holding, ttl time.Duration) bool {
	cfg := h.cfg
	bo := backoff.New(cfg.retryMin, max(cfg.retryMin, min(cfg.retryMax, ttl/3)))
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	retried := false
	for {
		l.mu.Lock()
		deadline, lost := h.deadline, h.isLost
		if !lost && !time.Now().Before(deadline) {
			// Retrying with a context already past the deadline would fail at once, again
			// and again, until the expiry timer runs.
			l.markLost(h, errors.New("renewal kept failing until the lease ran out"))
			lost = true
		}
		l.mu.Unlock()
		if lost {
			return false
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		lease, err := cfg.backend.Extend(rctx, l.name, h.owner, h.token, ttl)
		cancel()
		l.renewal(context.Background(), h, sent, err)
		switch {
		case err == nil:
			return l.extended(h, lease, ttl, sent)
		case ctx.Err() != nil:
			return false
		case errors.Is(err, ErrNotHeld):
			l.mu.Lock()
			l.markLost(h, err)
			l.mu.Unlock()
			return false
		}
		// Nothing returns this error to the caller: say it, once per renewal.
		level := slog.LevelWarn
		if retried {
			level = slog.LevelDebug
		}
		retried = true
		cfg.logger.Log(context.Background(), level, "shylock: renewal failed; retrying until the lease runs out",
			"name", l.name, "until", time.Until(deadline), "err", err)
		t.Reset(min(bo.Next(), max(time.Until(deadline), 0)))
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
		// The deadline timer marks the loss if no retry succeeds in time.
	}
}

// Extend sets the lease to expire ttl from now, by the backend's clock, and makes ttl the
// lease length of later auto-renewals. It returns an error matching ErrNotHeld if this handle
// does not hold the lock, matching ErrLost too if the holding was lost (Lost is then closed).
// A transient error leaves the holding as it was: the lease still runs to its old expiry. It
// waits at most AttemptTimeout for the backend.
func (l *Lock) Extend(ctx context.Context, ttl time.Duration) error {
	if err := ValidateTTL(ttl); err != nil {
		return l.errorf("extend", err)
	}
	l.mu.Lock()
	h := l.h
	switch {
	case h == nil:
		l.mu.Unlock()
		return l.errorf("extend", fmt.Errorf("%w: this Lock does not hold it", ErrNotHeld))
	case h.isLost:
		l.mu.Unlock()
		return l.errorf("extend", fmt.Errorf("%w: %w", ErrNotHeld, ErrLost))
	}
	l.mu.Unlock()

	sent := time.Now()
	ectx, cancel := context.WithTimeout(ctx, AttemptTimeout)
	lease, err := h.cfg.backend.Extend(ectx, l.name, h.owner, h.token, ttl)
	cancel()
	l.renewal(ctx, h, sent, err)
	switch {
	case errors.Is(err, ErrNotHeld):
		l.mu.Lock()
		l.markLost(h, err)
		l.mu.Unlock()
		return l.errorf("extend", fmt.Errorf("%w: %w", err, ErrLost))
	case err != nil:
		return l.errorf("extend", err)
	case !l.extended(h, lease, ttl, sent):
		return l.errorf("extend", fmt.Errorf("%w: %w (it ran out while the extension was in flight)", ErrNotHeld, ErrLost))
	}
	return nil
}
