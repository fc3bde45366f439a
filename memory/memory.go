// Package memory is an in-process shylock backend. It has the same semantics as the database
// backends (expiry by its own clock, fencing tokens, owner-only release, shared waiters) and
// serves single-process programs and unit tests of code that uses shylock.
//
// Locks live only as long as the Backend value: they exclude goroutines of one process, never
// processes.
package memory

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/waiter"
)

// Backend is the in-process backend. It is safe for concurrent use by any number of goroutines.
type Backend struct {
	now func() time.Time
	hub *waiter.Hub

	mu     sync.Mutex
	closed bool
	locks  map[string]*record
	// seq is one counter for every name: tokens that grow globally grow per name, and no
	// per-name state has to outlive a release.
	seq       uint64
	sweepSize int
	// lines holds each name's queue: the parties waiting for it, and their entries.
	lines map[string]map[string]entry
}

// entry is a party's place in a name's queue.
type entry struct{ since, until time.Time }

type record struct {
	owner, label, party              string
	token                            uint64
	acquiredAt, renewedAt, expiresAt time.Time
}

// Option configures New. (The memory backend has no logger: nothing in it fails or falls back
// in a way a return value would not say.)
type Option func(*settings)

type settings struct{ now func() time.Time }

// WithClock replaces the backend's clock, which alone decides expiry, as a database server's
// clock does; now must be safe for concurrent use. It moves the backend's time only: a Lock's
// Held, Until and Lost follow the process's clock, as they would against a database server
// whose clock jumped ahead. So after advancing it, another handle can take a lock whose first
// holder still reports Held; that holder learns of the loss at its next Extend, renewal or
// Release (ErrNotHeld and ErrLost). To test how code reacts to expiry, use a short TTL and wait
// for Lost; to test what others see (a takeover, a waiter woken at expiry), advance this clock.
func WithClock(now func() time.Time) Option {
	return func(s *settings) { s.now = now }
}

// New returns an empty in-process backend.
func New(opts ...Option) *Backend {
	s := settings{now: time.Now}
	for _, o := range opts {
		o(&s)
	}
	b := &Backend{now: s.now, locks: map[string]*record{}, sweepSize: 1024, lines: map[string]map[string]entry{}}
	b.hub = waiter.New(func(ctx context.Context, names []string) (map[string]time.Duration, error) {
		held := map[string]time.Duration{}
		for _, name := range names {
			info, err := b.Inspect(ctx, name)
			if err != nil {
				return nil, err
			}
			if info.Held {
				held[name] = info.Remaining
			}
		}
		return held, nil
	}, &waiter.Queue{Renew: b.renew, Leave: b.leave, Every: shylock.QueueLease / 3})
	b.hub.SetPushed(true) // every release happens in this process and notifies
	return b
}

// Close stops the pollers of waiting goroutines; waiting acquires then return an error matching
// shylock.ErrClosed, as does every later call. The locks themselves need no cleanup.
func (b *Backend) Close() {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.hub.Close()
}

var errClosed = fmt.Errorf("memory: %w", shylock.ErrClosed)

func (r *record) held(now time.Time) bool { return r.owner != "" && now.Before(r.expiresAt) }

func check(ctx context.Context, name string) error {
	if err := shylock.ValidateName(name); err != nil {
		return err
	}
	return ctx.Err()
}

// Acquire implements shylock.Backend.
func (b *Backend) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if err := check(ctx, req.Name); err != nil {
		return shylock.Lease{}, err
	}
	if err := shylock.ValidateTTL(req.TTL); err != nil {
		return shylock.Lease{}, err
	}
	if req.Owner == "" {
		return shylock.Lease{}, fmt.Errorf("memory: acquire %q: empty owner id", req.Name)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return shylock.Lease{}, errClosed
	}
	now := b.now()
	r := b.locks[req.Name]
	switch {
	case r != nil && r.owner != req.Owner && r.held(now):
		if r.party != req.Queue {
			b.join(req, now)
		}
		return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Label: r.label, Token: r.token, ExpiresAt: r.expiresAt}
	case r != nil && r.owner == req.Owner:
		// The same holding goes on: nobody held the name in between, so its token still fences.
		r.label, r.renewedAt, r.expiresAt = req.Label, now, now.Add(req.TTL)
		return shylock.Lease{Token: r.token, ExpiresAt: r.expiresAt, Valid: req.TTL}, nil
	case b.behind(req, now):
		b.join(req, now)
		return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Queued: true}
	}
	if line := b.lines[req.Name]; line != nil {
		delete(line, req.Queue)
		b.prune(req.Name, now)
		b.hub.Took(req.Name, req.Queue)
	}
	b.sweep(now)
	b.seq++
	exp := now.Add(req.TTL)
	b.locks[req.Name] = &record{owner: req.Owner, label: req.Label, party: req.Queue, token: b.seq,
		acquiredAt: now, renewedAt: now, expiresAt: exp}
	return shylock.Lease{Token: b.seq, ExpiresAt: exp, Valid: req.TTL}, nil
}

// behind reports whether another party's live entry in req.Name's queue came before req.Queue's.
func (b *Backend) behind(req shylock.AcquireRequest, now time.Time) bool {
	line := b.lines[req.Name]
	mine, queued := line[req.Queue]
	queued = queued && req.Queue != "" && mine.until.After(now)
	for party, e := range line {
		if party != req.Queue && e.until.After(now) && (!queued || e.since.Before(mine.since)) {
			return true
		}
	}
	return false
}

// join puts the party of a refused attempt that waits in the name's queue, or renews its entry.
func (b *Backend) join(req shylock.AcquireRequest, now time.Time) {
	if !req.Wait || req.Queue == "" {
		return
	}
	line := b.lines[req.Name]
	if line == nil {
		line = map[string]entry{}
		b.lines[req.Name] = line
	}
	e, ok := line[req.Queue]
	if !ok || !e.until.After(now) {
		e.since = now
	}
	e.until = now.Add(shylock.QueueLease)
	line[req.Queue] = e
	b.hub.Joined(req.Name, req.Queue)
}

// prune drops the entries of name's queue whose lease ran out, and the queue once empty.
func (b *Backend) prune(name string, now time.Time) {
	line := b.lines[name]
	for party, e := range line {
		if !e.until.After(now) {
			delete(line, party)
		}
	}
	if len(line) == 0 {
		delete(b.lines, name)
	}
}

func (b *Backend) renew(_ context.Context, party string, names []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	for _, name := range names {
		if e, ok := b.lines[name][party]; ok && e.until.After(now) {
			e.until = now.Add(shylock.QueueLease)
			b.lines[name][party] = e
		}
	}
	return nil
}

func (b *Backend) leave(_ context.Context, party, name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.lines[name], party)
	b.prune(name, b.now())
	return nil
}

// sweep drops expired records once the map has doubled since the last sweep, so that names
// abandoned by crashed holders do not accumulate; the cost stays amortised O(1) per acquire.
func (b *Backend) sweep(now time.Time) {
	if len(b.locks) < b.sweepSize {
		return
	}
	for name, r := range b.locks {
		if !r.held(now) {
			delete(b.locks, name)
		}
	}
	for name := range b.lines {
		b.prune(name, now)
	}
	b.sweepSize = max(1024, 2*len(b.locks))
}

// Extend implements shylock.Backend.
func (b *Backend) Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	if err := check(ctx, name); err != nil {
		return shylock.Lease{}, err
	}
	if err := shylock.ValidateTTL(ttl); err != nil {
		return shylock.Lease{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	r := b.locks[name]
	if r == nil || r.owner != owner || r.token != token || !r.held(now) {
		return shylock.Lease{}, fmt.Errorf("%w: %q is not held by this owner (expired, released or taken over)", shylock.ErrNotHeld, name)
	}
	r.renewedAt, r.expiresAt = now, now.Add(ttl)
	return shylock.Lease{Token: token, ExpiresAt: r.expiresAt, Valid: ttl}, nil
}

// Release implements shylock.Backend. It removes owner's record even when it has expired, as
// long as nobody took it over.
func (b *Backend) Release(ctx context.Context, name, owner string, token uint64) error {
	if err := check(ctx, name); err != nil {
		return err
	}
	return b.release(name, owner, token)
}

// Abandon implements shylock.Backend. Nothing is ever in flight in process memory, so it
// releases at once.
func (b *Backend) Abandon(name, owner string, _ time.Duration) {
	_ = b.release(name, owner, 0)
}

func (b *Backend) release(name, owner string, token uint64) error {
	b.mu.Lock()
	r := b.locks[name]
	if r == nil || owner == "" || r.owner != owner || (token != 0 && r.token != token) {
		b.mu.Unlock()
		return fmt.Errorf("%w: %q has no holding of this owner to release", shylock.ErrNotHeld, name)
	}
	delete(b.locks, name)
	b.mu.Unlock()
	b.hub.Notify(name)
	return nil
}

func (b *Backend) info(name string, r *record, now time.Time) shylock.Info {
	in := shylock.Info{Name: name}
	if r == nil {
		return in
	}
	in.Owner, in.Label, in.Token = r.owner, r.label, r.token
	in.AcquiredAt, in.RenewedAt, in.ExpiresAt = r.acquiredAt, r.renewedAt, r.expiresAt
	if r.held(now) {
		in.Held, in.Remaining = true, r.expiresAt.Sub(now)
	}
	return in
}

// Inspect implements shylock.Backend.
func (b *Backend) Inspect(ctx context.Context, name string) (shylock.Info, error) {
	if err := check(ctx, name); err != nil {
		return shylock.Info{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.info(name, b.locks[name], b.now()), nil
}

// List implements shylock.Backend.
func (b *Backend) List(ctx context.Context, prefix string) ([]shylock.Info, error) {
	if err := shylock.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	now := b.now()
	var out []shylock.Info
	for name, r := range b.locks {
		if strings.HasPrefix(name, prefix) {
			out = append(out, b.info(name, r, now))
		}
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ForceRelease implements shylock.Backend.
func (b *Backend) ForceRelease(ctx context.Context, name string) (shylock.Info, error) {
	if err := check(ctx, name); err != nil {
		return shylock.Info{}, err
	}
	b.mu.Lock()
	now := b.now()
	r := b.locks[name]
	in := b.info(name, r, now)
	delete(b.locks, name)
	b.mu.Unlock()
	if !in.Held {
		return in, fmt.Errorf("%w: nobody holds %q", shylock.ErrNotHeld, name)
	}
	b.hub.Notify(name)
	return in, nil
}

// Subscribe implements shylock.Notifier.
func (b *Backend) Subscribe(name string, minPoll, maxPoll time.Duration) shylock.Subscription {
	return b.hub.Subscribe(name, minPoll, maxPoll)
}

var (
	_ shylock.Backend  = (*Backend)(nil)
	_ shylock.Notifier = (*Backend)(nil)
)
