// Package serve is the lock service of the shylock command: Relukko's v1 API over HTTP, so that
// Relukko's clients work unchanged, a WebSocket broadcast of releases, a live web page, metrics
// and a health check. The database is its only state: any number of replicas serve one
// collection.
package serve

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/shylock-go/shylock"
)

// Bounds of the service, documented in the README.
const (
	newLease    = 10 * time.Minute // what a new lock lasts unless kept alive, as in Relukko
	keepAlive   = 5 * time.Minute  // what keep_alive and add_to_expire_at add without a body
	maxBody     = 64 << 10
	maxWait     = 10 * time.Minute // the longest ?wait of a blocking acquire
	callTimeout = 3 * time.Second  // what a call may wait for the lock store before it answers 503
)

// Config is what a Server serves.
type Config struct {
	// Backend stores the locks. It must implement shylock.Holdings, which finds a holding by
	// its id without reading every record.
	Backend shylock.Backend
	// Keys are the API keys a request may carry; with none, every request is accepted.
	Keys [][]byte
	// MaxLease is the longest lease a client may set, 0 for shylock.MaxAmendTTL.
	MaxLease time.Duration
	// Poll is how often the held locks are read for the broadcast and the page.
	Poll time.Duration
	Log  *slog.Logger
}

// Server serves the locks of one backend.
type Server struct {
	b        shylock.Backend
	store    shylock.Holdings
	keys     [][]byte
	maxLease time.Duration
	log      *slog.Logger
	hub      *broadcaster
	health   *health
	metrics  *metrics
}

// New returns a server for c.
func New(c Config) (*Server, error) {
	store, ok := c.Backend.(shylock.Holdings)
	if !ok {
		return nil, fmt.Errorf("the backend %T cannot serve locks by id: it does not implement shylock.Holdings", c.Backend)
	}
	if c.MaxLease == 0 {
		c.MaxLease = shylock.MaxAmendTTL
	}
	if c.MaxLease < shylock.MinTTL || c.MaxLease > shylock.MaxAmendTTL {
		return nil, fmt.Errorf("the longest lease must be between %v and 200 years, not %v", shylock.MinTTL, c.MaxLease)
	}
	if c.Poll <= 0 {
		return nil, fmt.Errorf("the poll interval must be positive, not %v", c.Poll)
	}
	m := newMetrics()
	h := newHealth(func(ctx context.Context) error { _, err := c.Backend.Inspect(ctx, healthName); return err })
	return &Server{b: c.Backend, store: store, keys: c.Keys, maxLease: c.MaxLease, log: c.Log, metrics: m, health: h,
		hub: newBroadcaster(store, c.Backend, c.Poll, m, h, c.Log)}, nil
}

// Run reads the held locks for the broadcast and the page until ctx ends.
func (s *Server) Run(ctx context.Context) { s.hub.run(ctx) }

// CloseSockets ends every WebSocket, for shutdown: the HTTP server does not close connections
// it handed over.
func (s *Server) CloseSockets() { s.hub.closeAll() }

// Handler serves the API, the WebSockets, the page, the metrics and the health check.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	api := func(pattern string, h func(w http.ResponseWriter, r *http.Request) error) {
		mux.Handle(pattern, s.metrics.timed(pattern, s.authorized(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			if err := h(w, r); err != nil {
				s.fail(w, err)
			}
		})))
	}
	api("POST /v1/locks/{$}", s.create)
	api("POST /v1/locks", s.create)
	api("GET /v1/locks/{$}", s.list)
	api("GET /v1/locks", s.list)
	api("GET /v1/locks/{id}", s.get)
	api("PUT /v1/locks/{id}", s.update)
	api("DELETE /v1/locks/{id}", s.remove)
	api("GET /v1/locks/{id}/keep_alive", s.keepAlive)
	api("PUT /v1/locks/{id}/keep_alive", s.keepAlive)
	api("GET /v1/locks/{id}/add_to_expire_at", s.addToExpireAt)
	api("PUT /v1/locks/{id}/add_to_expire_at", s.addToExpireAt)
	mux.Handle("GET /ws/broadcast", s.authorized(s.hub.serveBroadcast))
	mux.HandleFunc("GET /ws/locks", s.hub.servePage(s.keys))
	mux.HandleFunc("GET /{$}", servePage)
	mux.Handle("GET /metrics", s.metrics.handler())
	mux.HandleFunc("GET /healthchecker", s.healthcheck)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, apiError(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// authorized lets a request through only with a valid API key in X-api-Key (when there are
// keys). The key is never logged.
func (s *Server) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.keys) > 0 && !keyOK(s.keys, r.Header.Get("X-api-Key")) {
			s.fail(w, apiError(http.StatusUnauthorized, "missing or unknown API key: send one in the X-api-Key header"))
			return
		}
		h(w, r)
	}
}

// keyOK reports whether key is one of keys, comparing each in constant time.
func keyOK(keys [][]byte, key string) bool {
	ok := 0
	for _, k := range keys {
		ok |= subtle.ConstantTimeCompare(k, []byte(key))
	}
	return ok == 1
}

// bounded is the request's context, ending callTimeout after now plus wait: no call waits
// longer for the lock store, which may be away.
func bounded(r *http.Request, wait time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), wait+callTimeout)
}

// errorBody is Relukko's shape of an error.
type errorBody struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func apiError(status int, format string, args ...any) error {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...)}
}

// fail answers err: its own status if it is an apiError, 422 for a lock that is not held, 409
// for one held by another, 400 for bad input, and 503 for the lock store's failures, which a
// client may retry.
func (s *Server) fail(w http.ResponseWriter, err error) {
	var he *httpError
	var mb *http.MaxBytesError
	switch {
	case errors.As(err, &he):
	case errors.As(err, &mb):
		he = &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over %d bytes", mb.Limit)}
	case errors.Is(err, shylock.ErrNotHeld):
		he = &httpError{http.StatusUnprocessableEntity, "the lock does not exist (released, expired or taken over): " + text(err)}
	case errors.Is(err, shylock.ErrLocked):
		he = &httpError{http.StatusConflict, text(err)}
	case errors.Is(err, shylock.ErrInvalidName), errors.Is(err, shylock.ErrInvalidTTL):
		he = &httpError{http.StatusBadRequest, text(err)}
	case errors.Is(err, context.DeadlineExceeded):
		s.log.Warn("shylock serve: the lock store did not answer in time", "err", err)
		he = &httpError{http.StatusServiceUnavailable, fmt.Sprintf("the lock store did not answer within %v; try again", callTimeout)}
	default:
		s.log.Warn("shylock serve: the lock store failed", "err", err)
		he = &httpError{http.StatusServiceUnavailable, "the lock store failed; try again: " + text(err)}
	}
	writeJSON(w, he.status, errorBody{Status: he.status, Message: he.msg})
}

// text is an error's message without the package names the library's errors carry.
func text(err error) string { return strings.ReplaceAll(err.Error(), "shylock: ", "") }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: unknown fields and trailing data are errors. An empty
// body is an empty object (Relukko's clients send none with GET-like PUTs).
func decode(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if body := strings.TrimSpace(string(data)); body == "" || body == "null" {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(http.StatusBadRequest, "the body is not the JSON this call takes: %v", err)
	}
	if dec.More() {
		return apiError(http.StatusBadRequest, "the body has more than one JSON value")
	}
	return nil
}

// page is the web page at /: every held lock with its holder, address, start, token and a live
// countdown, pushed over /ws/locks, with a prefix filter, and release, extend and a new expiry
// behind a confirmation. With API keys on it asks for one and keeps it in the tab's session
// storage, never in a URL.
//
//go:embed page.html
var page []byte

func servePage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(page)
}
