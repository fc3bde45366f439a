// Package waiter lets every waiter on a lock name in one process share one poller, and lets
// releases seen in the process (or pushed by a change stream) wake them at once.
//
// A backend owns one Hub. Waiters Subscribe to a name; the first subscriber starts a poller
// goroutine for that name and the last one to leave stops it, so the server sees one probe per
// interval per name, however many goroutines wait.
//
// A probe that fails wakes a waiter too, so that waiters never depend on a poller that cannot
// reach the server: they keep attempting on their own, at most maxPoll apart.
//
// A wake-up goes to one waiter, the longest waiting, not to all: only one can win the lock, so
// waking all would cost one failed attempt per waiter per release. A woken waiter that leaves
// (it acquired, or gave up) passes the wake-up on to the next, so none is lost.
package waiter

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
)

// Probe reports whether name is held and, if so, an upper bound on how long its lease has left.
type Probe func(ctx context.Context, name string) (held bool, remaining time.Duration, err error)

// PushedPoll is how far apart a poller looks, at the least, while every release reaches the
// waiters by Notify (a change stream or release events are running, or every release happens in
// the process) and the last probe found the lock held: the holder's expiry, which the poller
// wakes at anyway, and a lost notification are all it looks for. Idle waiters then cost the
// server one probe per name per PushedPoll.
const PushedPoll = 10 * time.Second

// probeTimeout bounds one probe, so a hung server cannot stall a poller forever.
const probeTimeout = 10 * time.Second

// Hub is the set of waiters of one backend. The zero value is not usable; call New.
type Hub struct {
	probe  Probe
	pushed atomic.Bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	groups  map[string]*group
	closed  bool
	flipped chan struct{} // closed, and replaced, when pushed changes
}

type group struct {
	subs   []*Sub          // in order of arrival
	missed chan struct{}   // a woken waiter found the lock held again: probe at once
	ctx    context.Context // cancelled when the last subscriber leaves or the hub closes
	cancel context.CancelFunc
	exited chan struct{} // closed when the group's poller has returned
}

// New returns a Hub that polls with probe.
func New(probe Probe) *Hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &Hub{probe: probe, ctx: ctx, cancel: cancel, groups: map[string]*group{}, flipped: make(chan struct{})}
}

// SetPushed tells the hub whether every release by any process is delivered through Notify (a
// change stream or release events are running). Pollers then look for expiry and lost
// notifications only, at least PushedPoll apart.
// A poller sleeping a pushed interval looks again at once when the pushing stops.
func (h *Hub) SetPushed(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pushed.Swap(on) != on {
		close(h.flipped)
		h.flipped = make(chan struct{})
	}
}

// Subscribe registers a waiter on name; see shylock.Notifier.
func (h *Hub) Subscribe(name string, minPoll, maxPoll time.Duration) *Sub {
	s := &Sub{h: h, name: name, c: make(chan struct{}, 1), minPoll: minPoll, maxPoll: maxPoll}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		s.c <- struct{}{} // let the waiter retry and see the backend's own error
		return s
	}
	g := h.groups[name]
	if g == nil {
		ctx, cancel := context.WithCancel(h.ctx)
		g = &group{ctx: ctx, cancel: cancel, exited: make(chan struct{}), missed: make(chan struct{}, 1)}
		h.groups[name] = g
		h.wg.Add(1)
		go h.poll(name, g)
	}
	g.subs = append(g.subs, s)
	s.g = g
	return s
}

// Notify wakes the longest waiting waiter on name.
func (h *Hub) Notify(name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if g := h.groups[name]; g != nil {
		g.wake()
	}
}

// NotifyAll wakes one waiter of every name, for when changes may have been missed (a change
// stream restart).
func (h *Hub) NotifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, g := range h.groups {
		g.wake()
	}
}

// Close stops every poller and wakes every waiter. It returns once no poller runs.
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		h.cancel() // cancels every group's context
		for _, g := range h.groups {
			for _, s := range g.subs {
				s.signal()
			}
		}
	}
	h.mu.Unlock()
	h.wg.Wait()
}

func (g *group) wake() {
	if len(g.subs) > 0 {
		g.subs[0].woken = true
		g.subs[0].signal()
	}
}

// bounds returns the tightest polling bounds any subscriber asked for.
func (h *Hub) bounds(g *group) (minPoll, maxPoll time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range g.subs {
		if minPoll == 0 || s.minPoll < minPoll {
			minPoll = s.minPoll
		}
		if maxPoll == 0 || s.maxPoll < maxPoll {
			maxPoll = s.maxPoll
		}
	}
	return minPoll, max(minPoll, maxPoll)
}

func (h *Hub) poll(name string, g *group) {
	defer h.wg.Done()
	defer close(g.exited)
	var (
		bo           *backoff.Backoff
		boMin, boMax time.Duration
		hint         time.Duration
		delay        time.Duration // the first probe runs at once, to learn the holder's expiry
		timer        = time.NewTimer(time.Hour)
	)
	defer timer.Stop()
	for g.ctx.Err() == nil {
		h.mu.Lock()
		flipped := h.flipped
		h.mu.Unlock()
		timer.Reset(delay)
		select {
		case <-timer.C:
		case <-flipped:
		case <-g.missed:
			timer.Stop()
		case <-g.ctx.Done():
			return
		}
		ctx, cancel := context.WithTimeout(g.ctx, probeTimeout)
		held, remaining, err := h.probe(ctx, name)
		cancel()
		hint = 0
		minPoll, maxPoll := h.bounds(g)
		if bo == nil || minPoll != boMin || maxPoll != boMax {
			bo, boMin, boMax = backoff.New(minPoll, maxPoll), minPoll, maxPoll
		}
		switch {
		case err != nil:
			// The waiters cannot rely on this poller now: let them attempt on their own, at
			// the pace of its backoff, and report their own errors.
			h.Notify(name)
		case !held:
			h.Notify(name)
			bo.Reset()
		default:
			hint = max(remaining, time.Millisecond)
		}
		delay = bo.Next()
		if h.pushed.Load() && err == nil && held {
			// Releases arrive by Notify; only the expiry needs a poll. Not so after a probe
			// found the lock free: the woken waiter may lose it to another client, whose
			// expiry the next probe must learn soon.
			delay = max(maxPoll, PushedPoll)
		}
		if hint > 0 && hint < delay {
			delay = hint
		}
	}
}

// Sub is one waiter's subscription. It implements shylock.Subscription.
type Sub struct {
	h                *Hub
	g                *group
	name             string
	c                chan struct{}
	minPoll, maxPoll time.Duration
	once             sync.Once
	woken            bool // guarded by Hub.mu: a wake-up was sent that Close must pass on
}

func (s *Sub) signal() {
	select {
	case s.c <- struct{}{}:
	default:
	}
}

// C receives a value when the lock may have become free.
func (s *Sub) C() <-chan struct{} { return s.c }

// Missed tells the poller that the waiter, woken, found the lock held by another owner: the
// holder changed since the poller last looked, so it probes at once to learn the new holder's
// expiry, which it would otherwise learn only a pushed interval later.
func (s *Sub) Missed() {
	if s.g == nil {
		return
	}
	select {
	case s.g.missed <- struct{}{}:
	default:
	}
}

// Close ends the subscription. The last one on a name stops its poller and returns once the
// poller has, so no goroutine outlives the waiters.
func (s *Sub) Close() {
	s.once.Do(func() {
		if s.g == nil {
			return
		}
		h := s.h
		h.mu.Lock()
		g := s.g
		if i := slices.Index(g.subs, s); i >= 0 {
			g.subs = slices.Delete(g.subs, i, i+1)
		}
		last := len(g.subs) == 0
		if s.woken && !last {
			g.wake()
		}
		if last {
			s.g.cancel()
			if h.groups[s.name] == s.g {
				delete(h.groups, s.name)
			}
		}
		h.mu.Unlock()
		if last {
			<-s.g.exited
		}
	})
}
