package shylock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// trusted is how long after its request a holder trusts a lease good for valid: 1% plus 2ms
// less, Redlock's allowance for the holder's clock running slow and its timers firing late.
func trusted(valid time.Duration) time.Duration {
	return valid - valid/100 - 2*time.Millisecond
}

// cleanupTimeout bounds the release that Do and a failed or cancelled Acquire make on their
// own, after the caller's context may have ended. What they cannot remove expires at its TTL.
const cleanupTimeout = 10 * time.Second

// Lock is a handle on one named lock. Create it with New.
type Lock struct {
	name string
	opts []Option

	mu        sync.Mutex
	acquiring bool
	h         *holding      // the current holding, nil when none
	lost      chan struct{} // Lost of the current holding, or of the next one
}

// holding is one successful acquisition, from Acquire to Release.
type holding struct {
	cfg      config
	owner    string
	token    uint64
	acquired time.Time // local clock, when the acquiring request was sent

	// Guarded by Lock.mu.
	ttl      time.Duration
	valid    time.Duration // of the last lease: how long it was good for from its request
	deadline time.Time     // local clock; past it the lease may have expired on the server
	isLost   bool
	lost     chan struct{}
	timer    *time.Timer // fires at deadline

	stopRenew context.CancelFunc // nil without auto-renew
	renewed   chan struct{}      // closed when the renewal goroutine has returned

	// A release failed in a way that may have applied; a retry that finds nothing to release
	// is then a success, not a loss.
	releaseUncertain bool
}

// Name returns the lock's name.
func (l *Lock) Name() string { return l.name }

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

func (l *Lock) errorf(op string, err error) error {
	return fmt.Errorf("shylock: %s %q: %w", op, l.name, err)
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
		bo        = backoff.New(cfg.retryMin, cfg.retryMax)
		timer     *time.Timer
		lastErr   error     // why the last attempt failed
		ambiguous bool      // the last attempt may have written without our knowing
		lastSent  time.Time // when the last attempt was sent
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if ctx.Err() != nil {
			var left error
			if ambiguous {
				left = l.cleanup(ctx, cfg, req, lastSent)
			}
			if lastErr == nil || errors.Is(lastErr, ctx.Err()) {
				return false, errors.Join(l.errorf("acquire", ctx.Err()), left)
			}
			return false, errors.Join(l.errorf("acquire", lastErr), ctx.Err(), left)
		}
		lastSent = time.Now()
		lease, err := cfg.backend.Acquire(ctx, req)
		if err == nil {
			l.hold(cfg, req, lease, lastSent)
			return true, nil
		}
		locked := errors.Is(err, ErrLocked)
		if errors.Is(err, ErrInvalidName) || errors.Is(err, ErrInvalidTTL) {
			return false, l.errorf("acquire", err) // refused before any write
		}
		if errors.Is(lastErr, ErrLocked) && errors.Is(err, ctx.Err()) {
			err = lastErr // keep the reason we were waiting, not the interrupted attempt
		}
		lastErr, ambiguous = err, !locked
		if ctx.Err() != nil {
			continue
		}
		if !wait {
			if locked {
				return false, nil
			}
			return false, errors.Join(l.errorf("acquire", err), l.cleanup(ctx, cfg, req, lastSent))
		}
		// While the lock is held, wait for the shared watcher, which polls within the retry
		// bounds and wakes no later than the holder's expiry; after an error, back off.
		wakeup, backedOff := wake, (<-chan time.Time)(nil)
		if !locked || wake == nil {
			if !locked {
				cfg.logger.Debug("shylock: acquire attempt failed; retrying", "name", l.name, "err", err)
			}
			if timer == nil {
				timer = time.NewTimer(bo.Next())
			} else {
				timer.Reset(bo.Next())
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

func (l *Lock) hold(cfg config, req AcquireRequest, lease Lease, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := &holding{cfg: cfg, owner: req.Owner, token: lease.Token, acquired: sent,
		ttl: cfg.ttl, valid: lease.Valid, deadline: sent.Add(trusted(lease.Valid)), lost: l.lost}
	l.h = h
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
	close(h.lost)
	h.timer.Stop()
	if h.stopRenew != nil {
		h.stopRenew()
	}
	h.cfg.logger.Warn("shylock: lock lost", "name", l.name, "token", h.token, "reason", why)
}

// extended records a successful Extend sent at sent. It reports false if the holding was lost
// or released meanwhile.
func (l *Lock) extended(h *holding, lease Lease, ttl time.Duration, sent time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h.isLost || l.h != h {
		return false
	}
	h.ttl, h.valid, h.deadline = ttl, lease.Valid, sent.Add(trusted(lease.Valid))
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
		l.mu.Lock()
		ttl, valid := h.ttl, h.valid
		l.mu.Unlock()
		if !sleep(valid / 3) {
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
	for {
		l.mu.Lock()
		deadline, lost := h.deadline, h.isLost
		l.mu.Unlock()
		if lost {
			return false
		}
		sent := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		lease, err := cfg.backend.Extend(rctx, l.name, h.owner, h.token, ttl)
		cancel()
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
		cfg.logger.Warn("shylock: renewal failed; retrying until the lease runs out",
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

// Extend sets the lease to expire ttl from now, by the backend's clock, and makes ttl the
// lease length of later auto-renewals. It returns an error matching ErrNotHeld if this handle
// does not hold the lock, matching ErrLost too if the holding was lost (Lost is then closed).
// A transient error leaves the holding as it was: the lease still runs to its old expiry.
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
	lease, err := h.cfg.backend.Extend(ctx, l.name, h.owner, h.token, ttl)
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

// Held reports whether this handle holds the lock: acquired, not released, not known to be
// lost, and its lease not yet run out by the local clock. It does no I/O.
func (l *Lock) Held() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h != nil && !l.h.isLost && time.Now().Before(l.h.deadline)
}

// Lost returns a channel that is closed when the current holding is lost: its lease ran out
// without renewal, renewal kept failing until it would have, or a renewal or Extend found it
// released or taken over. Release does not close it. Before the first Acquire, and after a
// Release, it returns the channel of the next holding.
func (l *Lock) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// Token returns the fencing token of the current holding, or 0 when nothing is held. Tokens
// strictly increase per name: pass it with each write to a resource that can remember the
// highest token it has seen and reject lower ones.
func (l *Lock) Token() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h == nil {
		return 0
	}
	return l.h.token
}
