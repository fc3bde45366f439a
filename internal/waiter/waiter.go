// Package waiter lets every waiter in one process share one poller, and lets releases seen in
// the process (or pushed by a change stream or release events) wake them at once.
//
// A backend owns one Hub. Waiters Subscribe to a name; the hub runs a single poller goroutine
// while anyone waits, and each poll asks about every waited name that is due in one batched
// probe, so the server sees about as many probes from a process waiting on a thousand names as
// from one waiting on one. Each name keeps its own schedule (its backoff, its holder's expiry);
// a name whose probe is due early joins a batch that another name's schedule starts, which keeps
// the names in step.
//
// A probe that fails wakes a waiter too, so that waiters never depend on a poller that cannot
// reach the server: they keep attempting on their own, at most maxPoll apart.
//
// A wake-up goes to one waiter, the longest waiting, not to all: only one can win the lock, so
// waking all would cost one failed attempt per waiter per release. A woken waiter that leaves
// (it acquired, or gave up) passes the wake-up on to the next, so none is lost.
//
// Where the backend keeps queues (see shylock.AcquireRequest.Queue), the hub also keeps its
// process's places in them: it renews the entries of every waited name in one batch per
// Queue.Every, and takes a name's entry out when the last waiter of the name leaves without it.
package waiter

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/shylock-go/shylock/internal/backoff"
)

// Probe reports which of names are held and, for each held one, an upper bound on how long its
// lease has left. A name missing from the result may be taken now.
type Probe func(ctx context.Context, names []string) (held map[string]time.Duration, err error)

// PushedPoll is how far apart a poller looks, at the least, while every release reaches the
// waiters by Notify (a change stream or release events are running, or every release happens in
// the process) and the last probe found the lock held: the holder's expiry, which the poller
// wakes at anyway, and a lost notification are all it looks for. Idle waiters then cost the
// server one batched probe per PushedPoll.
const PushedPoll = 10 * time.Second

// MaxBatch is the most names one probe asks about; a poll that finds more due sends several.
const MaxBatch = 1000

// joinDelay is how soon a name is probed that needs it at once (a new waiter, a missed holder):
// the names that need it within joinDelay share one probe, which keeps a burst of new waiters
// (a thousand goroutines starting to wait) from sending a probe each.
const joinDelay = 2 * time.Millisecond

// probeShare bounds the share of the server's time that a poller's probes take: after a probe
// that took d, names it found held wait at least (probeShare-1)×d for the next, whatever their
// poll interval. Where a probe takes a millisecond or two this never binds; where the server
// scans the whole collection for it (FerretDB 1.x, a process waiting on 1,000 names, 0.1 s a
// probe), back-to-back probes kept the server busy and made another client's find 5× slower.
// A waiter still wakes at its holder's expiry.
const probeShare = 3

// probeTimeout bounds one probe, so a hung server cannot stall the poller forever.
const probeTimeout = 10 * time.Second

// leaveTimeout bounds the removal of an entry from a queue, which runs in the background.
const leaveTimeout = 5 * time.Second

// Queue is how a hub keeps its process's places in the queues of the names its waiters wait on.
// A backend that keeps queues passes one to New.
type Queue struct {
	// Renew pushes out the lease of party's entries in the queues of names; a name where
	// party has no entry is left alone.
	Renew func(ctx context.Context, party string, names []string) error
	// Leave takes party's entry out of name's queue.
	Leave func(ctx context.Context, party, name string) error
	// Every is how often entries are renewed: at most a third of their lease, so that one lost
	// renewal costs no place.
	Every time.Duration
}

// Hub is the set of waiters of one backend. The zero value is not usable; call New.
type Hub struct {
	probe Probe
	queue *Queue // nil where the backend keeps no queues

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	groups map[string]*group
	pushed bool
	closed bool
	poller *poller // running while groups is not empty
	// lines holds, for each name, the parties that joined its queue through this backend and
	// when they last joined or renewed.
	lines    map[string]map[string]time.Time
	renewed  time.Time // when the entries were last renewed
	renewing bool      // a renewal is under way
}

// poller is one run of the hub's polling goroutine.
type poller struct {
	cancel context.CancelFunc
	kick   chan struct{} // a name became due at once
	exited chan struct{}
}

// group is the waiters of one name and that name's polling schedule. Guarded by Hub.mu.
type group struct {
	name         string
	subs         []*Sub // in order of arrival
	bo           *backoff.Backoff
	boMin, boMax time.Duration
	due          time.Time // when the name must be probed; zero: at once
	early        time.Time // from when it may join a batch that another name starts
	again        bool      // a reason to probe at once arose while a probe was in flight
}

// New returns a Hub that polls with probe and, if queue is not nil, keeps the places in queues.
func New(probe Probe, queue *Queue) *Hub {
	ctx, cancel := context.WithCancel(context.Background())
	return &Hub{probe: probe, queue: queue, ctx: ctx, cancel: cancel, groups: map[string]*group{},
		lines: map[string]map[string]time.Time{}}
}

// Joined tells the hub that an attempt put party in name's queue, or renewed its entry: the
// hub renews it while name has waiters here, and takes it out when the last one leaves.
func (h *Hub) Joined(name, party string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.queue == nil || h.closed {
		return
	}
	if h.lines[name] == nil {
		h.lines[name] = map[string]time.Time{}
	}
	h.lines[name][party] = time.Now()
}

// Took tells the hub that party took name, which took its entry out of the queue.
func (h *Hub) Took(name, party string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if line := h.lines[name]; line != nil {
		delete(line, party)
		if len(line) == 0 {
			delete(h.lines, name)
		}
	}
}

// renewals returns, per party, the names whose entries are due for renewal at now: those
// joined or renewed at least Queue.Every ago, looked at once per Queue.Every so that they go
// in one batch, and never older than twice that. It forgets the entries of names nobody here
// waits on any more (a Joined without a Subscribe): their leases have run out.
func (h *Hub) renewals(now time.Time) map[string][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.queue == nil || now.Sub(h.renewed) < h.queue.Every {
		return nil
	}
	h.renewed = now
	due := map[string][]string{}
	for name, line := range h.lines {
		for party, at := range line {
			switch {
			case h.groups[name] == nil:
				if now.Sub(at) > 3*h.queue.Every {
					delete(line, party)
				}
			case now.Sub(at) >= h.queue.Every:
				due[party] = append(due[party], name)
				line[party] = now
			}
		}
		if len(line) == 0 {
			delete(h.lines, name)
		}
	}
	return due
}

// renew starts renewing the entries due at now, in batches of MaxBatch names, in a goroutine of
// its own: a slow server must not hold up the probes, which wake waiters at their holders'
// expiry. One renewal runs at a time; a failed one is not retried before the next, which the
// lease allows for.
func (h *Hub) renew(ctx context.Context, now time.Time) {
	h.mu.Lock()
	busy := h.renewing
	h.mu.Unlock()
	if busy {
		return
	}
	due := h.renewals(now)
	if len(due) == 0 {
		return
	}
	h.mu.Lock()
	h.renewing = true
	h.wg.Add(1)
	h.mu.Unlock()
	go func() {
		defer h.wg.Done()
		defer func() {
			h.mu.Lock()
			h.renewing = false
			h.mu.Unlock()
		}()
		for party, names := range due {
			slices.Sort(names)
			for chunk := range slices.Chunk(names, MaxBatch) {
				rctx, cancel := context.WithTimeout(ctx, probeTimeout)
				_ = h.queue.Renew(rctx, party, chunk)
				cancel()
			}
		}
	}()
}

// leave takes the entries of name out of the queue in the background, after its last waiter
// left; h.mu is held.
func (h *Hub) leaveLocked(name string) {
	line := h.lines[name]
	delete(h.lines, name)
	if len(line) == 0 || h.closed {
		return
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		ctx, cancel := context.WithTimeout(h.ctx, leaveTimeout)
		defer cancel()
		for party := range line {
			_ = h.queue.Leave(ctx, party, name)
		}
	}()
}

// SetPushed tells the hub whether every release by any process is delivered through Notify (a
// change stream or release events are running). The poller then looks for expiry and lost
// notifications only, at least PushedPoll apart; when the pushing stops, it looks at every name
// at once.
func (h *Hub) SetPushed(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pushed == on {
		return
	}
	h.pushed = on
	if !on {
		for _, g := range h.groups {
			g.dueSoon()
		}
		h.kickLocked()
	}
}

// Subscribe registers a waiter on name; see shylock.Notifier. The first waiter of a name has it
// probed at once (within joinDelay), so that a release between the waiter's failed attempt and its subscription is
// not missed.
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
		g = &group{name: name}
		h.groups[name] = g
		g.dueSoon()
		if h.poller == nil {
			h.start()
		}
		h.kickLocked()
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

// Close stops the poller and wakes every waiter. It returns once no poller runs.
func (h *Hub) Close() {
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		h.cancel() // ends the poller's context
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

// dueSoon has the name probed within joinDelay, or again after the probe in flight.
func (g *group) dueSoon() {
	g.due, g.early, g.again = time.Now().Add(joinDelay), time.Time{}, true
}

// bounds returns the tightest polling bounds any subscriber asked for.
func (g *group) bounds() (minPoll, maxPoll time.Duration) {
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

// start runs a poller; h.mu is held.
func (h *Hub) start() {
	ctx, cancel := context.WithCancel(h.ctx)
	p := &poller{cancel: cancel, kick: make(chan struct{}, 1), exited: make(chan struct{})}
	h.poller = p
	h.wg.Add(1)
	go h.poll(ctx, p)
}

func (h *Hub) kickLocked() {
	if h.poller != nil {
		select {
		case h.poller.kick <- struct{}{}:
		default:
		}
	}
}

func (h *Hub) poll(ctx context.Context, p *poller) {
	defer h.wg.Done()
	defer close(p.exited)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		h.renew(ctx, time.Now())
		batch, wait := h.dueBatch(time.Now())
		if len(batch) == 0 {
			if h.queue != nil {
				wait = min(wait, h.queue.Every)
			}
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-p.kick:
			case <-ctx.Done():
				return
			}
			continue
		}
		for chunk := range slices.Chunk(batch, MaxBatch) {
			names := make([]string, len(chunk))
			for i, g := range chunk {
				names[i] = g.name
			}
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			sent := time.Now()
			held, err := h.probe(pctx, names)
			cancel()
			if ctx.Err() != nil {
				return
			}
			now := time.Now()
			h.apply(chunk, held, err, now, now.Sub(sent))
		}
	}
}

// dueBatch returns the groups to probe now: none until one is due, and then every one that may
// go early too. Without a batch, it says how long to wait for the next.
func (h *Hub) dueBatch(now time.Time) ([]*group, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	wait, due := time.Hour, false
	for _, g := range h.groups {
		if !g.due.After(now) {
			due = true
			break
		}
		wait = min(wait, g.due.Sub(now))
	}
	if !due {
		return nil, wait
	}
	var batch []*group
	for _, g := range h.groups {
		if !g.early.After(now) {
			g.again = false
			batch = append(batch, g)
		}
	}
	return batch, 0
}

// apply schedules each group of a probe's batch from its answer, and wakes a waiter of each name
// the probe found free (or could not ask about). The groups found held, which wait for their next
// poll, all take the first one's draw of the delay (within their own bounds): groups probed
// together stay together, one probe per tick. With a draw each, their next probes spread over the
// jitter, the next batch took only those due early enough, and the names split into cohorts
// probed in turn (100 names: two probes every 28 ms where one name has one). took is how long
// the probe took: see probeShare.
func (h *Hub) apply(batch []*group, held map[string]time.Duration, err error, now time.Time, took time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var shared time.Duration // the held groups' delay, drawn by the first of them
	for _, g := range batch {
		if h.groups[g.name] != g {
			continue // its waiters left while the probe ran
		}
		minPoll, maxPoll := g.bounds()
		if g.bo == nil || minPoll != g.boMin || maxPoll != g.boMax {
			g.bo, g.boMin, g.boMax = backoff.New(minPoll, maxPoll), minPoll, maxPoll
		}
		remaining, isHeld := held[g.name]
		switch {
		case err != nil:
			// The waiters cannot rely on the poller now: let them attempt on their own, at
			// the pace of its backoff, and report their own errors.
			g.wake()
		case !isHeld:
			g.wake()
			g.bo.Reset()
		}
		delay := g.bo.Next()
		switch {
		case err != nil || !isHeld:
		case h.pushed:
			// Releases arrive by Notify; only the expiry needs a poll. Not so after a probe
			// found the lock free: the woken waiter may lose it to another client, whose
			// expiry the next probe must learn soon.
			delay = max(maxPoll, PushedPoll)
		case shared == 0:
			shared = delay
		default:
			delay = min(max(shared, minPoll), maxPoll)
		}
		if err == nil && isHeld {
			delay = max(delay, (probeShare-1)*took)
		}
		g.due, g.early = now.Add(delay), now.Add(delay/2)
		if hint := max(remaining, time.Millisecond); err == nil && isHeld && hint < delay {
			// Nothing is learnt by looking before the holder's expiry.
			g.due, g.early = now.Add(hint), now.Add(hint)
		}
		if g.again {
			g.dueSoon()
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
	h := s.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.groups[s.name] == s.g {
		s.g.dueSoon()
		h.kickLocked()
	}
}

// Close ends the subscription. The last one in the hub stops the poller and returns once it
// has, so no goroutine outlives the waiters.
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
		if s.woken && len(g.subs) > 0 {
			g.wake()
		}
		if len(g.subs) == 0 && h.groups[s.name] == g {
			delete(h.groups, s.name)
			h.leaveLocked(s.name)
		}
		var stopped *poller
		if len(h.groups) == 0 && h.poller != nil {
			stopped, h.poller = h.poller, nil
			stopped.cancel()
		}
		h.mu.Unlock()
		if stopped != nil {
			<-stopped.exited
		}
	})
}
