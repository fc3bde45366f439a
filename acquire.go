package shylock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// Acquire blocks until the lock is held or ctx ends. While another owner holds it, Acquire
// waits for a release or the holder's expiry (see WithRetry). When ctx ends first, the error
// matches both ctx.Err() and the reason it was not acquired (ErrLocked, or the backend's last
// error), and no lock is left behind: anything an attempt whose reply was lost may have written
// is removed before Acquire returns. If the backend stays unreachable, Acquire keeps trying to
// remove it for up to 10 s (or the TTL, if shorter); the error then says that the lock may stay
// taken until its TTL runs out.
func (l *Lock) Acquire(ctx context.Context) error {
	_, err := l.acquire(ctx, true)
	return err
}

// TryAcquire makes one attempt. It returns (true, nil) when the lock is now held, (false, nil)
// when another owner holds it, and (false, err) when the attempt failed, in which case nothing is
// left behind either, as with Acquire.
func (l *Lock) TryAcquire(ctx context.Context) (bool, error) {
	return l.acquire(ctx, false)
}

// AcquireAsync runs Acquire in the background. The channel receives exactly one value, nil once
// the lock is held or the error, and is never closed. Nothing leaks if nobody reads it, but a
// lock acquired that way is held until Release or its TTL, so cancel ctx to give up.
func (l *Lock) AcquireAsync(ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- l.Acquire(ctx) }()
	return ch
}

func (l *Lock) acquire(ctx context.Context, wait bool) (bool, error) {
	cfg, err := resolve(l.name, l.opts)
	if err != nil {
		return false, l.errorf("acquire", err)
	}
	l.mu.Lock()
	switch {
	case l.h != nil:
		l.mu.Unlock()
		return false, l.errorf("acquire", fmt.Errorf("this Lock already holds it; Release it first or use another Lock: %w", ErrLocked))
	case l.acquiring:
		l.mu.Unlock()
		return false, l.errorf("acquire", fmt.Errorf("another Acquire on this Lock is in progress; use one Lock per goroutine: %w", ErrLocked))
	}
	l.acquiring = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.acquiring = false
		l.mu.Unlock()
	}()

	req := AcquireRequest{Name: l.name, Owner: ownerid.New(), Label: cfg.label, TTL: cfg.ttl}
	var wake <-chan struct{}
	if n, ok := cfg.backend.(Notifier); ok && wait {
		sub := n.Subscribe(l.name, cfg.retryMin, cfg.retryMax)
		defer sub.Close()
		wake = sub.C()
	}
	var (
		poll    = backoff.New(cfg.retryMin, cfg.retryMax)
		errBo   = backoff.New(cfg.retryMin, max(cfg.retryMax, time.Second)) // an outage is not a busy lock
		timer   *time.Timer
		lastErr error     // why the last attempt failed
		unknown time.Time // when the last attempt of unknown outcome was sent; zero if none
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// undo removes what an attempt of unknown outcome may have written, and says what it could
	// not remove.
	undo := func() error {
		if unknown.IsZero() {
			return nil
		}
		return l.cleanup(ctx, cfg, req, unknown)
	}
	for {
		if ctx.Err() != nil {
			left := undo()
			if lastErr == nil || errors.Is(lastErr, ctx.Err()) {
				return false, join(l.errorf("acquire", ctx.Err()), left)
			}
			return false, join(l.errorf("acquire", lastErr), ctx.Err(), left)
		}
		sent := time.Now()
		lease, err := cfg.backend.Acquire(ctx, req)
		if err == nil {
			l.hold(cfg, req, lease, sent)
			return true, nil
		}
		if errors.Is(err, ErrInvalidName) || errors.Is(err, ErrInvalidTTL) || errors.Is(err, ErrRefused) {
			// Refused without a write, and no retry can help; an earlier attempt may still
			// have written.
			return false, join(l.errorf("acquire", err), undo())
		}
		locked := errors.Is(err, ErrLocked)
		if errors.Is(lastErr, ErrLocked) && errors.Is(err, ctx.Err()) {
			err = lastErr // keep the reason we were waiting, not the interrupted attempt
		}
		lastErr = err
		if locked {
			unknown = time.Time{} // another owner holds it, so no earlier attempt of ours does
		} else {
			unknown = sent
		}
		if ctx.Err() != nil {
			continue
		}
		if !wait {
			if locked {
				return false, nil
			}
			return false, join(l.errorf("acquire", err), undo())
		}
		// While the lock is held, wait for the shared watcher, which polls within the retry
		// bounds and wakes no later than the holder's expiry (or poll alone, without one);
		// after an error, back off, up to a second at least.
		wakeup, backedOff := wake, (<-chan time.Time)(nil)
		if !locked || wake == nil {
			delay := poll.Next
			if !locked {
				cfg.logger.Debug("shylock: acquire attempt failed; retrying", "name", l.name, "err", err)
				delay = errBo.Next
			}
			if timer == nil {
				timer = time.NewTimer(delay())
			} else {
				timer.Reset(delay())
			}
			wakeup, backedOff = nil, timer.C
		}
		select {
		case <-wakeup:
		case <-backedOff:
		case <-ctx.Done():
		}
	}
}

// cleanup removes whatever an attempt sent at sent, whose outcome is unknown, may have written.
// The owner id is fresh for each Acquire, so this can only ever remove our own lock. It retries
// until it succeeds, cleanupTimeout passes, or the lease would have run out anyway, and returns
// an error, for the caller to pass on, when something may be left.
func (l *Lock) cleanup(ctx context.Context, cfg config, req AcquireRequest, sent time.Time) error {
	end := sent.Add(cfg.ttl) // the lease it may have taken ends about then
	if !time.Now().Before(end) {
		return nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(time.Until(end), cleanupTimeout))
	defer cancel()
	bo := retryBackoff(cfg)
	for {
		err := cfg.backend.Release(cctx, req.Name, req.Owner, 0)
		switch {
		case err == nil:
			cfg.logger.Debug("shylock: removed the lock an interrupted acquire had written", "name", l.name)
			return nil
		case errors.Is(err, ErrNotHeld):
			return nil
		}
		select {
		case <-time.After(bo.Next()):
		case <-cctx.Done():
			cfg.logger.Warn("shylock: could not remove what an interrupted acquire may have written; it expires by itself",
				"name", l.name, "ttl", cfg.ttl, "err", err)
			// %v: the cleanup's own deadline must not make the error match the caller's.
			return fmt.Errorf("shylock: %q may stay taken until its TTL (%v) runs out: the attempt may have "+
				"acquired it and could not be undone: %v", l.name, cfg.ttl, err)
		}
	}
}
