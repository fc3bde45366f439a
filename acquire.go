package shylock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
	"github.com/shylock-go/shylock/internal/ownerid"
	"github.com/shylock-go/shylock/internal/quote"
)

// Acquire blocks until the lock is held or ctx ends. While another owner holds it, Acquire
// waits for a release or the holder's expiry (see WithRetry). It returns by ctx's deadline. When
// ctx ends first, the error matches both ctx.Err() and the reason it was not acquired
// (ErrLocked, or the backend's last error). If an attempt's outcome is unknown (its reply never
// came), the backend removes in the background whatever it may have written, and the error says
// that the lock may stay taken until then; an error that does not say so leaves nothing behind.
// After the backend's Close, Acquire returns at once with an error matching ErrClosed.
func (l *Lock) Acquire(ctx context.Context) error {
	_, err := l.acquire(ctx, true)
	return err
}

// TryAcquire makes one attempt, which lasts at most AttemptTimeout even when ctx has no
// deadline. It returns (true, nil) when the lock is now held, (false, nil) when another owner
// holds it or a waiter of another process has the next turn (Holder then says who, or
// HeldError.Queued), and (false, err) when the attempt failed; then, as with
// Acquire, the error says whether the lock may stay taken.
func (l *Lock) TryAcquire(ctx context.Context) (bool, error) {
	return l.acquire(ctx, false)
}

// Holder returns what the last attempt of this Lock that was refused saw of the holding that
// refused it, and false if the last attempt was not refused. It does no I/O.
func (l *Lock) Holder() (HeldError, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.holder == nil {
		return HeldError{}, false
	}
	return *l.holder, true
}

func (l *Lock) sawHolder(err error) {
	h := &HeldError{Name: l.name}
	errors.As(err, &h)
	l.mu.Lock()
	l.holder = h
	l.mu.Unlock()
}

// AcquireAsync runs Acquire in the background. The channel receives exactly one value, nil once
// the lock is held or the error, and is never closed. Nothing leaks if nobody reads it, but a
// lock acquired that way is held until Release or its TTL, so cancel ctx to give up.
func (l *Lock) AcquireAsync(ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- l.Acquire(ctx) }()
	return ch
}

// party is this process's id in the locks' queues (see AcquireRequest.Queue).
var party = ownerid.New()

// queued reports whether err is a refusal of a free lock whose turn is another process's. The
// poller then has nothing new to learn about the holder: the waiter waits for its next wake-up.
func queued(err error) bool {
	var h *HeldError
	return errors.As(err, &h) && h.Queued
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
		return false, l.errorf("acquire", fmt.Errorf("%w; Release it first or use another Lock", ErrAlreadyHeld))
	case l.acquiring:
		l.mu.Unlock()
		return false, l.errorf("acquire", fmt.Errorf("%w: another Acquire on this Lock is in progress; use one Lock per goroutine", ErrAlreadyHeld))
	}
	l.acquiring = true
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.acquiring = false
		l.mu.Unlock()
	}()

	began := time.Now()
	req := AcquireRequest{Name: l.name, Owner: ownerid.New(), Label: cfg.label, TTL: cfg.ttl, Queue: party, Wait: wait}
	var (
		poll    = backoff.New(cfg.retryMin, cfg.retryMax)
		errBo   = backoff.New(cfg.retryMin, max(cfg.retryMax, time.Second)) // an outage is not a busy lock
		timer   *time.Timer
		sub     Subscription
		woken   bool  // the last attempt followed a value from the subscription
		lastErr error // why the last attempt failed
		// An attempt of unknown outcome was sent: it may have taken the lock, or may still
		// take it if it arrives late. Another owner holding the lock now does not rule that out.
		pending bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	// giveUp returns err, handing what a pending attempt may have written to the backend.
	giveUp := func(err error) (bool, error) {
		cfg.emit(ctx, func() Event {
			why := err
			if why == nil {
				why = lastErr // TryAcquire's (false, nil): held by another owner
			}
			return Event{Kind: EventGaveUp, Name: l.name, Err: why, Waited: time.Since(began)}
		})
		if !pending {
			return false, err
		}
		cfg.backend.Abandon(l.name, req.Owner, cfg.ttl)
		return false, join(err, fmt.Errorf("an attempt's outcome is unknown: if it took %s, the backend releases it "+
			"in the background, and it may stay taken until then (at most its TTL, %v)", quote.Name(l.name), cfg.ttl))
	}
	for {
		if ctx.Err() != nil {
			if lastErr == nil || errors.Is(lastErr, ctx.Err()) {
				return giveUp(l.errorf("acquire", ctx.Err()))
			}
			return giveUp(join(l.errorf("acquire", lastErr), ctx.Err()))
		}
		sent := time.Now()
		actx, cancel := context.WithTimeout(ctx, AttemptTimeout)
		lease, err := cfg.backend.Acquire(actx, req)
		cancel()
		if took := time.Since(sent); err == nil && took >= trusted(lease.Valid) {
			// Held up longer than the lease: it ended before the reply came, and another
			// owner may hold the lock already. Its token must not be used; the record it
			// may have left is ours to release.
			err = fmt.Errorf("the lease of %v ran out before the attempt's reply came, %v after it was sent: the server or the network is too slow for this TTL",
				cfg.ttl, took.Round(time.Millisecond))
		}
		cfg.emit(ctx, func() Event {
			return Event{Kind: EventAttempt, Name: l.name, Token: lease.Token, Err: err, Took: time.Since(sent)}
		})
		if err == nil {
			l.hold(cfg, req, lease, sent, pending)
			cfg.emit(ctx, func() Event {
				return Event{Kind: EventAcquired, Name: l.name, Token: lease.Token, Waited: time.Since(began)}
			})
			return true, nil
		}
		if !errors.Is(err, ErrLocked) {
			l.mu.Lock()
			l.holder = nil
			l.mu.Unlock()
		}
		if errors.Is(err, ErrInvalidName) || errors.Is(err, ErrInvalidTTL) || errors.Is(err, ErrRefused) || errors.Is(err, ErrClosed) {
			// Refused without a write, and no retry can help; an earlier attempt may still
			// have written.
			return giveUp(l.errorf("acquire", err))
		}
		locked := errors.Is(err, ErrLocked)
		if locked {
			l.sawHolder(err)
		}
		if errors.Is(lastErr, ErrLocked) && errors.Is(err, ctx.Err()) {
			err = lastErr // keep the reason we were waiting, not the interrupted attempt
		}
		lastErr = err
		if !locked && !errors.Is(err, ErrUnavailable) {
			pending = true
		}
		if !wait {
			if ctx.Err() != nil {
				continue
			}
			if locked {
				return giveUp(nil) // a single attempt, whose outcome is known: nothing pending
			}
			return giveUp(l.errorf("acquire", err))
		}
		if n, ok := cfg.backend.(Notifier); ok && sub == nil {
			// Subscribed only once an attempt has failed, so an uncontended acquire costs
			// the attempt alone. A release between that attempt and this subscription is not
			// missed: the shared poller probes at once for a new subscriber. Subscribed even
			// when ctx has ended: the refusal may have put this process in the lock's queue,
			// and the subscription's end takes it out.
			sub = n.Subscribe(l.name, cfg.retryMin, cfg.retryMax)
			defer sub.Close()
		} else if sub != nil && locked && woken && !queued(err) {
			sub.Missed() // another owner got in first; its expiry must wake us
		}
		if ctx.Err() != nil {
			continue
		}
		var wake <-chan struct{}
		if sub != nil {
			wake = sub.C()
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
		woken = false
		select {
		case <-wakeup:
			woken = true
		case <-backedOff:
		case <-ctx.Done():
		}
	}
}
