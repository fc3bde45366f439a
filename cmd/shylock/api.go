package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// Relukko's v1 API, as its clients use it. A lock's id is the owner id of its holding, written
// as a UUID, so any replica finds the holding from the id alone: the database is the only state.
const (
	newLease     = 10 * time.Minute // what a new lock lasts unless kept alive, as in Relukko
	keepAlive    = 5 * time.Minute  // what keep_alive and add_to_expire_at add without a body
	maxBody      = 64 << 10
	maxWait      = 10 * time.Minute // the longest ?wait of a blocking acquire
	ipSeparator  = " @ "            // between the creator and the client's address in the label
	relukkoTimes = "2006-01-02T15:04:05.999999Z07:00"
)

type server struct {
	b        shylock.Backend
	keys     [][]byte
	maxLease time.Duration
	log      *slog.Logger
	hub      *broadcaster
	metrics  *metrics
}

func newServer(b shylock.Backend, keys [][]byte, maxLease, poll time.Duration, log *slog.Logger) *server {
	m := newMetrics()
	return &server{b: b, keys: keys, maxLease: maxLease, log: log, metrics: m, hub: newBroadcaster(b, poll, m, log)}
}

func (s *server) routes() http.Handler {
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
	mux.HandleFunc("GET /healthchecker", s.health)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, apiError(http.StatusNotFound, "no such endpoint: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// authorized lets a request through only with a valid API key in X-api-Key (when there are
// keys). The key is never logged.
func (s *server) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.keys) > 0 && !keyOK(s.keys, r.Header.Get("X-api-Key")) {
			s.fail(w, apiError(http.StatusUnauthorized, "missing or unknown API key: send one in the X-api-Key header"))
			return
		}
		h(w, r)
	}
}

// lockDTO is a lock as Relukko's clients read it, and its fencing token besides.
type lockDTO struct {
	ID        string `json:"id"`
	LockName  string `json:"lock_name"`
	Creator   string `json:"creator"`
	IP        string `json:"ip"`
	ExpiresAt string `json:"expires_at"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Token     uint64 `json:"token"`
}

func dto(in shylock.Info) lockDTO {
	creator, ip := splitLabel(in.Label)
	at := func(t time.Time) string { return t.UTC().Format(relukkoTimes) }
	return lockDTO{ID: uuid(in.Owner), LockName: in.Name, Creator: creator, IP: ip, ExpiresAt: at(in.ExpiresAt),
		CreatedAt: at(in.AcquiredAt), UpdatedAt: at(in.RenewedAt), Token: in.Token}
}

// The label of a lock taken through the API holds its creator and the client's address.
func joinLabel(creator, ip string) string { return creator + ipSeparator + ip }

func splitLabel(label string) (creator, ip string) {
	if i := strings.LastIndex(label, ipSeparator); i >= 0 {
		return label[:i], label[i+len(ipSeparator):]
	}
	return label, ""
}

// uuid writes a 128-bit owner id (32 hex digits) the way Relukko writes lock ids.
func uuid(owner string) string {
	if len(owner) != 32 {
		return owner
	}
	return owner[:8] + "-" + owner[8:12] + "-" + owner[12:16] + "-" + owner[16:20] + "-" + owner[20:]
}

// ownerOf reads a lock id back into the owner id it stands for.
func ownerOf(id string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(id, "-", ""))
	if len(h) != 32 || strings.Count(id, "-") > 4 {
		return "", apiError(http.StatusBadRequest, "%q is not a lock id (a UUID)", id)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", apiError(http.StatusBadRequest, "%q is not a lock id (a UUID)", id)
	}
	return h, nil
}

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
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

// fail answers err: its own status if it is an apiError, 422 for a lock that is not held, 400
// for bad input, and 503 for the backend's failures, which a client may retry.
func (s *server) fail(w http.ResponseWriter, err error) {
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
	default:
		s.log.Warn("shylock serve: backend error", "err", err)
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
	if strings.TrimSpace(string(data)) == "" || strings.TrimSpace(string(data)) == "null" {
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

// create takes a lock: POST /v1/locks/ {"lock_name", "creator"}. With ?wait=D (at most 10m) it
// waits that long for a held lock to be free, woken by releases, instead of answering 409.
func (s *server) create(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		LockName *string `json:"lock_name"`
		Creator  *string `json:"creator"`
	}
	if err := decode(r, &body); err != nil {
		return err
	}
	if body.LockName == nil {
		return apiError(http.StatusBadRequest, "lock_name is missing")
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxWait {
			return apiError(http.StatusBadRequest, "wait=%q: give a duration between 0s and %v", v, maxWait)
		}
		wait = d
	}
	creator := ""
	if body.Creator != nil {
		creator = *body.Creator
	}
	req := shylock.AcquireRequest{Name: *body.LockName, Owner: ownerid.New(), Label: joinLabel(creator, clientIP(r)),
		TTL: min(newLease, s.maxLease)}
	lease, err := s.acquire(r.Context(), req, wait)
	if err != nil {
		if errors.Is(err, shylock.ErrLocked) {
			s.metrics.conflicts.Inc()
		}
		return err
	}
	s.metrics.acquires.Inc()
	s.hub.changed()
	at := lease.ExpiresAt.Add(-req.TTL) // stamped by the server, as the expiry was
	writeJSON(w, http.StatusCreated, dto(shylock.Info{Name: req.Name, Owner: req.Owner, Label: req.Label, Token: lease.Token,
		AcquiredAt: at, RenewedAt: at, ExpiresAt: lease.ExpiresAt}))
	return nil
}

// acquire makes attempts until the lock is taken, wait has passed, or the request ends. An
// attempt that failed for another reason than a holder may have been written: it is undone.
func (s *server) acquire(ctx context.Context, req shylock.AcquireRequest, wait time.Duration) (shylock.Lease, error) {
	var wake <-chan struct{}
	if n, ok := s.b.(shylock.Notifier); ok && wait > 0 {
		sub := n.Subscribe(req.Name, 25*time.Millisecond, 50*time.Millisecond)
		defer sub.Close()
		wake = sub.C()
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for again := 0; ; {
		lease, err := s.b.Acquire(ctx, req)
		switch {
		case err == nil:
			return lease, nil
		case !errors.Is(err, shylock.ErrLocked):
			if !errors.Is(err, shylock.ErrInvalidName) && !errors.Is(err, shylock.ErrInvalidTTL) {
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				_ = s.b.Release(uctx, req.Name, req.Owner, 0)
				cancel()
			}
			return shylock.Lease{}, err
		case !s.refused(ctx, req.Name) && again < 3:
			again++ // the holder has gone already
			continue
		case wait == 0:
			return shylock.Lease{}, err
		}
		poll := time.NewTimer(time.Second) // besides the notifications, in case one is lost
		select {
		case <-wake:
		case <-poll.C:
		case <-deadline.C:
			poll.Stop()
			return shylock.Lease{}, err
		case <-ctx.Done():
			poll.Stop()
			return shylock.Lease{}, errors.Join(err, ctx.Err())
		}
		poll.Stop()
	}
}

// refused reports whether name is still held after an acquire was refused, and has the
// broadcast watch its holder, so that a client answered 409 hears of the release wherever it
// happens (a lease that has ended but cannot be taken yet, within the backend's clock offset, is
// broadcast at the next poll). It reports true when it cannot tell.
func (s *server) refused(ctx context.Context, name string) bool {
	in, err := s.b.Inspect(ctx, name)
	if err != nil {
		return true
	}
	s.hub.watch(in)
	return in.Held
}

// health answers Relukko's /healthchecker, without a key, as load balancers and test harnesses
// ask it: 200 while the last read of the lock store succeeded, 503 otherwise.
func (s *server) health(w http.ResponseWriter, _ *http.Request) {
	if err := s.hub.lastErr(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Status: http.StatusServiceUnavailable,
			Message: "the lock store cannot be read: " + text(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readLock is a held lock and when it was read, which tells how much of its lease is left now
// by the backend's clock.
type readLock struct {
	shylock.Info
	read time.Time
}

func (l readLock) left() time.Duration { return l.Remaining - time.Since(l.read) }

// serverNow is the backend's clock now, as the lock's expiry and remaining lease tell it.
func (l readLock) serverNow() time.Time { return l.ExpiresAt.Add(-l.left()) }

// find returns the held lock the id stands for, or a 422.
func (s *server) find(ctx context.Context, id string) (readLock, error) {
	owner, err := ownerOf(id)
	if err != nil {
		return readLock{}, err
	}
	infos, err := s.b.List(ctx, "")
	if err != nil {
		return readLock{}, err
	}
	read := time.Now()
	for _, in := range infos {
		if in.Held && in.Owner == owner {
			return readLock{in, read}, nil
		}
	}
	return readLock{}, apiError(http.StatusUnprocessableEntity, "lock %s does not exist (released, expired or taken over)", id)
}

func (s *server) list(w http.ResponseWriter, r *http.Request) error {
	infos, err := s.b.List(r.Context(), "")
	if err != nil {
		return err
	}
	out := []lockDTO{}
	for _, in := range infos {
		if in.Held {
			out = append(out, dto(in))
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) get(w http.ResponseWriter, r *http.Request) error {
	in, err := s.find(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(in.Info))
	return nil
}

// holding returns the lock of the request's id, checked against ?token= when the client gives
// one (so that a late call cannot touch a later holding of the same lock).
func (s *server) holding(r *http.Request) (readLock, error) {
	in, err := s.find(r.Context(), r.PathValue("id"))
	if err != nil {
		return in, err
	}
	if v := r.URL.Query().Get("token"); v != "" {
		t, perr := strconv.ParseUint(v, 10, 64)
		if perr != nil {
			return in, apiError(http.StatusBadRequest, "token=%q is not a fencing token", v)
		}
		if t != in.Token {
			return in, apiError(http.StatusUnprocessableEntity, "lock %s has token %d now, not %d", r.PathValue("id"), in.Token, t)
		}
	}
	return in, nil
}

// remove releases a lock and answers it as it was.
func (s *server) remove(w http.ResponseWriter, r *http.Request) error {
	in, err := s.holding(r)
	if err != nil {
		return err
	}
	if err := s.release(r.Context(), in.Info); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(in.Info))
	return nil
}

func (s *server) release(ctx context.Context, in shylock.Info) error {
	if err := s.b.Release(ctx, in.Name, in.Owner, in.Token); err != nil {
		return err
	}
	s.metrics.releases.Inc()
	s.hub.released(in)
	return nil
}

// extend sets the lock's expiry ttl from now, by the backend's clock, within --max-lease.
func (s *server) extend(ctx context.Context, in shylock.Info, ttl time.Duration) (shylock.Info, error) {
	if ttl > s.maxLease {
		return in, apiError(http.StatusBadRequest, "a lease of %v is longer than this server allows (%v, --max-lease); "+
			"keep the lock alive instead", ttl.Round(time.Second), s.maxLease)
	}
	lease, err := s.b.Extend(ctx, in.Name, in.Owner, in.Token, max(ttl, shylock.MinTTL))
	if err != nil {
		return in, err
	}
	in.ExpiresAt, in.RenewedAt = lease.ExpiresAt, lease.ExpiresAt.Add(-max(ttl, shylock.MinTTL))
	s.hub.changed()
	return in, nil
}

// seconds reads a {"seconds": N} body, or gives def when there is none (GET).
func seconds(r *http.Request, def time.Duration) (time.Duration, error) {
	if r.Method == http.MethodGet {
		return def, nil
	}
	var body struct {
		Seconds *float64 `json:"seconds"`
	}
	if err := decode(r, &body); err != nil {
		return 0, err
	}
	if body.Seconds == nil || *body.Seconds <= 0 {
		return 0, apiError(http.StatusBadRequest, `give {"seconds": N} with N above 0`)
	}
	return time.Duration(*body.Seconds * float64(time.Second)), nil
}

// keepAlive sets the expiry to now + 5 minutes (GET) or now + seconds (PUT).
func (s *server) keepAlive(w http.ResponseWriter, r *http.Request) error {
	return s.prolong(w, r, false)
}

// addToExpireAt moves the expiry 5 minutes (GET) or seconds (PUT) past the current one.
func (s *server) addToExpireAt(w http.ResponseWriter, r *http.Request) error {
	return s.prolong(w, r, true)
}

// prolong extends the lock of the request's id by its seconds, from now or from its expiry.
func (s *server) prolong(w http.ResponseWriter, r *http.Request, fromExpiry bool) error {
	d, err := seconds(r, keepAlive)
	if err != nil {
		return err
	}
	in, err := s.holding(r)
	if err != nil {
		return err
	}
	if fromExpiry {
		d += in.left()
	}
	out, err := s.extend(r.Context(), in.Info, d)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(out))
	return nil
}

// update changes a lock's creator and expiry: PUT /v1/locks/{id} {"creator"?, "expires_at"?}.
// An expiry in the past releases the lock; one beyond --max-lease is refused.
func (s *server) update(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Creator   *string `json:"creator"`
		ExpiresAt *string `json:"expires_at"`
	}
	if err := decode(r, &body); err != nil {
		return err
	}
	var until time.Time
	if body.ExpiresAt != nil {
		t, err := parseTime(*body.ExpiresAt)
		if err != nil {
			return err
		}
		until = t
	}
	if !until.IsZero() && time.Until(until) > s.maxLease { // refused before anything changes
		return apiError(http.StatusBadRequest, "expires_at %s is further ahead than this server allows (%v, --max-lease)",
			until.UTC().Format(relukkoTimes), s.maxLease)
	}
	l, err := s.holding(r)
	if err != nil {
		return err
	}
	in := l.Info
	if body.Creator != nil {
		_, ip := splitLabel(in.Label)
		label := joinLabel(*body.Creator, ip)
		ttl := max(l.left(), shylock.MinTTL)
		// The holder taking its lock again changes the label and keeps the holding (token,
		// creation time).
		lease, err := s.b.Acquire(r.Context(), shylock.AcquireRequest{Name: in.Name, Owner: in.Owner, Label: label, TTL: ttl})
		if err != nil {
			return err
		}
		in.Label, in.Token, in.ExpiresAt, in.RenewedAt = label, lease.Token, lease.ExpiresAt, lease.ExpiresAt.Add(-ttl)
		s.hub.changed()
	}
	if !until.IsZero() {
		ttl := until.Sub(l.serverNow()) // by the backend's clock, as every expiry
		if ttl <= 0 {
			if err := s.release(r.Context(), in); err != nil {
				return err
			}
			in.ExpiresAt = until
			writeJSON(w, http.StatusOK, dto(in))
			return nil
		}
		if in, err = s.extend(r.Context(), in, ttl); err != nil {
			return err
		}
	}
	writeJSON(w, http.StatusOK, dto(in))
	return nil
}

// parseTime reads an ISO 8601 time as Python's isoformat writes it; one without a zone is UTC.
func parseTime(v string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, nil
		}
	}
	return time.Time{}, apiError(http.StatusBadRequest, "expires_at=%q is not an ISO 8601 time such as 2030-01-02T15:04:05Z", v)
}
