package serve

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// healthFresh is how old the outcome of a read of the lock store /healthchecker answers with may
// be; an older one is replaced by a read of its own, which has healthTimeout to succeed. So the
// answer reflects the lock store of at most about a second and a half ago.
const (
	healthFresh   = 500 * time.Millisecond
	healthTimeout = time.Second
)

// healthName is the lock the health check inspects: any name does, and nothing is written.
const healthName = "shylock serve/healthchecker"

// health is the state of the lock store as the last read found it: the broadcast's periodic
// reads report to it, and a health check makes one of its own when none is fresh.
type health struct {
	read func(ctx context.Context) error

	mu      sync.Mutex
	at      time.Time     // when the last outcome was learned
	err     error         // that outcome
	running chan struct{} // closed when the read under way ends
}

func newHealth(read func(ctx context.Context) error) *health { return &health{read: read} }

// record notes the outcome of a read of the lock store.
func (h *health) record(err error) {
	h.mu.Lock()
	h.at, h.err = time.Now(), err
	h.mu.Unlock()
}

// state returns the outcome of a read no older than healthFresh, reading once more (one read
// for all callers) if there is none.
func (h *health) state(ctx context.Context) error {
	h.mu.Lock()
	if time.Since(h.at) <= healthFresh {
		defer h.mu.Unlock()
		return h.err
	}
	if h.running == nil {
		done := make(chan struct{})
		h.running = done
		go func() {
			rctx, cancel := context.WithTimeout(context.Background(), healthTimeout)
			err := h.read(rctx)
			if rctx.Err() != nil {
				err = fmt.Errorf("no answer within %v", healthTimeout)
			}
			cancel()
			h.mu.Lock()
			h.at, h.err, h.running = time.Now(), err, nil
			h.mu.Unlock()
			close(done)
		}()
	}
	done := h.running
	h.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// healthcheck answers Relukko's /healthchecker, without a key, as load balancers and test
// harnesses ask it: 200 while the lock store answers, 503 with the reason while it does not.
func (s *Server) healthcheck(w http.ResponseWriter, r *http.Request) {
	if err := s.health.state(r.Context()); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Status: http.StatusServiceUnavailable,
			Message: "the lock store cannot be read: " + text(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
