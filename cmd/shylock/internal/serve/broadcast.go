package serve

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/shylock-go/shylock"
)

// broadcaster tells WebSocket clients about the locks. It reads the held locks at each poll (and
// at once after a change through this replica, and at the next expiry), through the index on
// owner, so a poll costs what the held locks cost, not the released records kept for the grace
// period: a lock that was held and is not any more was released (here, by another replica or by
// a library user) or expired, and Relukko's clients on /ws/broadcast get {"deleted": lock} for
// it, so that their waiting acquires try again. Pages on /ws/locks get every change of the list,
// and of whether the lock store can be read. Where the backend pushes releases (change streams,
// release events), a name a client was refused for is also followed that way, and a release of
// it elsewhere starts a poll at once. Each poll's outcome tells the health check.
type broadcaster struct {
	store   shylock.Holdings
	b       shylock.Backend
	every   time.Duration
	metrics *metrics
	health  *health
	log     *slog.Logger
	kick    chan struct{}

	mu        sync.Mutex
	clients   map[*client]struct{}
	held      map[string]shylock.Info  // by owner: the locks held at the last poll
	watched   map[string]watched       // by name and owner: holders a 409 here named, not yet judged by a poll
	polls     uint64                   // polls started
	pageLocks []byte                   // the locks of the last snapshot sent to pages
	pageErr   string                   // and why they could not be read
	page      []byte                   // that snapshot
	follow    map[string]chan struct{} // by name: the names followed through the backend; closing one stops it
	stopped   bool                     // run has ended: nothing more is followed
	followers sync.WaitGroup
}

// The reasons /ws/locks gives for closing a page's socket without a valid key.
const (
	pageKeyNeeded  = "this server needs an API key"
	pageKeyRefused = "the API key was refused"
)

// maxFollowed bounds the names followed through the backend's notifications; beyond it, the
// polls alone find releases elsewhere.
const maxFollowed = 1024

// watched is a holder a client was refused for, and the number of polls started before it was
// seen held: only a poll started after that can tell whether it has gone since.
type watched struct {
	in    shylock.Info
	polls uint64
}

// client is one WebSocket connection. Its writer sends what arrives on out; a client too slow to
// keep up is dropped rather than let it hold the others back.
type client struct {
	conn *websocket.Conn
	out  chan []byte
	page bool // a page (snapshots) rather than a Relukko client (deletions)
	done chan struct{}
	once sync.Once
}

func (c *client) close(code websocket.StatusCode, why string) {
	c.once.Do(func() {
		close(c.done)
		_ = c.conn.Close(code, why)
	})
}

func newBroadcaster(store shylock.Holdings, b shylock.Backend, every time.Duration, m *metrics, h *health, log *slog.Logger) *broadcaster {
	return &broadcaster{store: store, b: b, every: every, metrics: m, health: h, log: log, kick: make(chan struct{}, 1),
		clients: map[*client]struct{}{}, held: map[string]shylock.Info{}, watched: map[string]watched{},
		follow: map[string]chan struct{}{}}
}

// changed asks for a poll now: a lock changed through this replica.
func (h *broadcaster) changed() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// watch makes sure the end of a holding a client was refused for is broadcast, though this
// replica's polls may never see it held: taken and given up elsewhere between two of them.
func (h *broadcaster) watch(in shylock.Info) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.held[in.Owner]; !ok {
		h.watched[in.Name+"\x00"+in.Owner] = watched{in: in, polls: h.polls}
	}
	n, ok := h.b.(shylock.Notifier)
	if !ok || h.stopped || h.follow[in.Name] != nil || len(h.follow) >= maxFollowed {
		return
	}
	// The polls find what the notifier's own polling would, so it polls rarely; only what the
	// backend pushes matters here.
	sub := n.Subscribe(in.Name, time.Minute, time.Minute)
	stop := make(chan struct{})
	h.follow[in.Name] = stop
	h.followers.Add(1)
	go func() {
		defer h.followers.Done()
		defer sub.Close()
		for {
			select {
			case <-sub.C():
				h.changed()
			case <-stop:
				return
			}
		}
	}()
}

// unfollow stops following the names that are neither held nor watched. h.mu is held.
func (h *broadcaster) unfollow(held map[string]shylock.Info) {
	keep := map[string]bool{}
	for _, in := range held {
		keep[in.Name] = true
	}
	for _, w := range h.watched {
		keep[w.in.Name] = true
	}
	for name, stop := range h.follow {
		if !keep[name] || h.stopped {
			close(stop)
			delete(h.follow, name)
		}
	}
}

// released tells the clients at once about a release through this replica.
func (h *broadcaster) released(in shylock.Info) {
	h.mu.Lock()
	delete(h.held, in.Owner)
	h.mu.Unlock()
	h.deleted(in)
	h.changed()
}

func (h *broadcaster) deleted(in shylock.Info) {
	msg, _ := json.Marshal(map[string]any{"deleted": dto(in)})
	h.send(msg, false)
}

func (h *broadcaster) send(msg []byte, page bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sendLocked(msg, page)
}

// sendLocked is send with h.mu held.
func (h *broadcaster) sendLocked(msg []byte, page bool) {
	for c := range h.clients {
		if c.page != page {
			continue
		}
		select {
		case c.out <- msg:
		default:
			go c.close(websocket.StatusPolicyViolation, "too slow")
		}
	}
}

// run polls until ctx ends.
func (h *broadcaster) run(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-h.kick:
		case <-ctx.Done():
			h.mu.Lock()
			h.stopped = true
			h.unfollow(nil)
			h.mu.Unlock()
			h.followers.Wait()
			return
		}
		next := h.poll(ctx)
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next)
	}
}

// poll reads the held locks, reports the ones that went, and returns when to poll next: at the
// interval, or sooner when a lease ends before it.
func (h *broadcaster) poll(ctx context.Context) time.Duration {
	h.mu.Lock()
	h.polls++
	poll := h.polls
	h.mu.Unlock()
	pctx, cancel := context.WithTimeout(ctx, callTimeout)
	infos, err := h.store.Held(pctx)
	cancel()
	if ctx.Err() != nil {
		return h.every
	}
	h.health.record(err)
	if err != nil {
		h.log.Warn("shylock serve: reading the locks failed; retrying", "err", err)
		h.snapshot(nil, err)
		return h.every
	}
	now := map[string]shylock.Info{}
	next := h.every
	page := []lockDTO{}
	for _, in := range infos {
		now[in.Owner] = in
		page = append(page, dto(in))
		next = min(next, in.Remaining+time.Millisecond)
	}
	h.mu.Lock()
	var gone []shylock.Info
	for owner, in := range h.held {
		if _, ok := now[owner]; !ok {
			gone = append(gone, in)
		}
	}
	for key, w := range h.watched {
		if w.polls >= poll {
			continue // seen after this poll's read began: the next poll judges it
		}
		delete(h.watched, key)
		_, still := now[w.in.Owner]
		_, seen := h.held[w.in.Owner] // then the loop above has judged it
		if !still && !seen {
			gone = append(gone, w.in)
		}
	}
	h.held = now
	h.unfollow(now)
	h.mu.Unlock()
	for _, in := range gone {
		h.metrics.gone.Inc()
		h.deleted(in)
	}
	h.metrics.held.Set(float64(len(now)))
	h.snapshot(page, nil)
	return next
}

// pageMsg is what pages get: the held locks, or, when the lock store cannot be read, why, with
// the locks last seen; and the server's time, so that a page counts down by the server's clock,
// not the browser's.
type pageMsg struct {
	Locks json.RawMessage `json:"locks"`
	Error string          `json:"error,omitempty"`
	Now   string          `json:"now"`
}

// snapshot sends the pages what they show, if it changed since the last snapshot.
func (h *broadcaster) snapshot(locks []lockDTO, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	msg := pageMsg{Locks: h.pageLocks}
	if err != nil {
		msg.Error = "the lock store cannot be read: " + text(err)
	} else {
		msg.Locks, _ = json.Marshal(locks)
	}
	if h.page != nil && bytes.Equal(msg.Locks, h.pageLocks) && msg.Error == h.pageErr {
		return
	}
	h.pageLocks, h.pageErr = msg.Locks, msg.Error
	msg.Now = time.Now().UTC().Format(relukkoTimes)
	h.page, _ = json.Marshal(msg)
	h.sendLocked(h.page, true)
}

// serveBroadcast is Relukko's /ws/broadcast.
func (h *broadcaster) serveBroadcast(w http.ResponseWriter, r *http.Request) {
	h.serve(w, r, false, nil)
}

// servePage is /ws/locks, for the web page: a browser cannot set headers on a WebSocket, so the
// page sends the API key (or nothing) as its first message, never in the URL. A refusal closes
// the socket with a reason the page shows.
func (h *broadcaster) servePage(keys [][]byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h.serve(w, r, true, func(ctx context.Context, conn *websocket.Conn) bool {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, key, err := conn.Read(rctx)
			switch {
			case err != nil:
				_ = conn.Close(websocket.StatusPolicyViolation, "no API key arrived")
				return false
			case len(keys) > 0 && len(key) == 0:
				_ = conn.Close(websocket.StatusPolicyViolation, pageKeyNeeded)
				return false
			case len(keys) > 0 && !keyOK(keys, string(key)):
				_ = conn.Close(websocket.StatusPolicyViolation, pageKeyRefused)
				return false
			}
			return true
		})
	}
}

func (h *broadcaster) serve(w http.ResponseWriter, r *http.Request, page bool, auth func(context.Context, *websocket.Conn) bool) {
	conn, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept has answered
	}
	if auth != nil && !auth(r.Context(), conn) {
		return
	}
	c := &client{conn: conn, out: make(chan []byte, 64), page: page, done: make(chan struct{})}
	h.mu.Lock()
	h.clients[c] = struct{}{}
	if page && h.page != nil {
		c.out <- h.page
	}
	h.mu.Unlock()
	h.metrics.sockets.Inc()
	defer func() {
		h.mu.Lock()
		delete(h.clients, c)
		h.mu.Unlock()
		h.metrics.sockets.Dec()
		c.close(websocket.StatusNormalClosure, "")
	}()
	ctx := conn.CloseRead(r.Context()) // answers pings; done when the client goes
	for {
		select {
		case msg := <-c.out:
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := conn.Write(wctx, websocket.MessageText, msg)
			cancel()
			if err != nil {
				return
			}
		case <-ctx.Done():
			return
		case <-c.done:
			return
		}
	}
}

// closeAll ends every WebSocket, for shutdown: the HTTP server does not close connections it
// handed over.
func (h *broadcaster) closeAll() {
	h.mu.Lock()
	clients := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); c.close(websocket.StatusGoingAway, "the server is shutting down") }()
	}
	wg.Wait()
}
