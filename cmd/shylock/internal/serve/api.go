package serve

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// Relukko's v1 API, as its clients use it. No call on a lock's id ever takes a lock: they change
// only the holding the id names, through shylock.Holdings, or answer 422.

const (
	ipSeparator  = " @ " // between the creator and the client's address in the label
	relukkoTimes = "2006-01-02T15:04:05.999999Z07:00"
)

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

func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// create takes a lock: POST /v1/locks/ {"lock_name", "creator"}. With ?wait=D (at most 10m) it
// waits that long for a held lock to be free, woken by releases, instead of answering 409.
func (s *Server) create(w http.ResponseWriter, r *http.Request) error {
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
	ctx, cancel := bounded(r, wait)
	defer cancel()
	req := shylock.AcquireRequest{Name: *body.LockName, Owner: ownerid.New(), Label: joinLabel(creator, clientIP(r)),
		TTL: min(newLease, s.maxLease)}
	sent := time.Now()
	lease, err := s.acquire(ctx, req, wait)
	s.metrics.hook(ctx, shylock.Event{Kind: shylock.EventAttempt, Name: req.Name, Token: lease.Token, Err: err, Took: time.Since(sent)})
	if err != nil {
		return err
	}
	s.hub.changed()
	at := lease.ExpiresAt.Add(-req.TTL) // stamped by the server, as the expiry was
	writeJSON(w, http.StatusCreated, dto(shylock.Info{Name: req.Name, Owner: req.Owner, Label: req.Label, Token: lease.Token,
		AcquiredAt: at, RenewedAt: at, ExpiresAt: lease.ExpiresAt}))
	return nil
}

// acquire makes attempts until the lock is taken, wait has passed, or ctx ends. An attempt that
// failed for another reason than a holder may have been applied: the backend removes it in the
// background, so that the client hears of the failure at once.
func (s *Server) acquire(ctx context.Context, req shylock.AcquireRequest, wait time.Duration) (shylock.Lease, error) {
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
				s.b.Abandon(req.Name, req.Owner, req.TTL)
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
func (s *Server) refused(ctx context.Context, name string) bool {
	in, err := s.b.Inspect(ctx, name)
	if err != nil {
		return true
	}
	s.hub.watch(in)
	return in.Held
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

// holding returns the held lock the request's id stands for, or a 422; with ?token=N, only the
// holding with that fencing token (so that a late call cannot touch a later holding).
func (s *Server) holding(ctx context.Context, r *http.Request) (readLock, error) {
	id := r.PathValue("id")
	owner, err := ownerOf(id)
	if err != nil {
		return readLock{}, err
	}
	var token uint64
	if v := r.URL.Query().Get("token"); v != "" {
		if token, err = strconv.ParseUint(v, 10, 64); err != nil || token == 0 {
			return readLock{}, apiError(http.StatusBadRequest, "token=%q is not a fencing token", v)
		}
	}
	in, err := s.store.Holding(ctx, owner)
	read := time.Now()
	switch {
	case errors.Is(err, shylock.ErrNotHeld) || err == nil && !in.Held:
		return readLock{}, apiError(http.StatusUnprocessableEntity, "lock %s does not exist (released, expired or taken over)", id)
	case err != nil:
		return readLock{}, err
	case token != 0 && token != in.Token:
		return readLock{}, apiError(http.StatusUnprocessableEntity, "lock %s has token %d now, not %d", id, in.Token, token)
	}
	return readLock{in, read}, nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := bounded(r, 0)
	defer cancel()
	infos, err := s.store.Held(ctx)
	if err != nil {
		return err
	}
	out := make([]lockDTO, len(infos))
	for i, in := range infos {
		out[i] = dto(in)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := bounded(r, 0)
	defer cancel()
	l, err := s.holding(ctx, r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(l.Info))
	return nil
}

// remove releases a lock and answers it as it was.
func (s *Server) remove(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := bounded(r, 0)
	defer cancel()
	l, err := s.holding(ctx, r)
	if err != nil {
		return err
	}
	if err := s.release(ctx, l.Info); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(l.Info))
	return nil
}

func (s *Server) release(ctx context.Context, in shylock.Info) error {
	if err := s.b.Release(ctx, in.Name, in.Owner, in.Token); err != nil {
		return err
	}
	s.metrics.hook(ctx, shylock.Event{Kind: shylock.EventReleased, Name: in.Name, Token: in.Token, Held: time.Since(in.AcquiredAt)})
	s.hub.released(in)
	return nil
}

// amend changes the holding in names, and nothing else.
func (s *Server) amend(ctx context.Context, in shylock.Info, a shylock.Amendment) (shylock.Info, error) {
	out, err := s.store.Amend(ctx, in.Name, in.Owner, in.Token, a)
	if err != nil {
		return in, err
	}
	s.hub.changed()
	return out, nil
}

// seconds reads a {"seconds": N} body, or gives def when there is none (GET). N is checked as
// the number it is, before it becomes a duration: 0 < N <= --max-lease.
func (s *Server) seconds(r *http.Request, def time.Duration) (time.Duration, error) {
	if r.Method == http.MethodGet {
		return min(def, s.maxLease), nil
	}
	var body struct {
		Seconds *float64 `json:"seconds"`
	}
	if err := decode(r, &body); err != nil {
		return 0, err
	}
	if body.Seconds == nil || !(*body.Seconds > 0) || *body.Seconds > s.maxLease.Seconds() {
		return 0, apiError(http.StatusBadRequest, `give {"seconds": N} with N above 0 and at most %.0f (%s, --max-lease)`,
			s.maxLease.Seconds(), human(s.maxLease))
	}
	return max(time.Duration(*body.Seconds*float64(time.Second)), shylock.MinTTL), nil
}

// keepAlive sets the expiry to now + 5 minutes (GET) or now + seconds (PUT).
func (s *Server) keepAlive(w http.ResponseWriter, r *http.Request) error {
	return s.prolong(w, r, false)
}

// addToExpireAt moves the expiry 5 minutes (GET) or seconds (PUT) past the current one.
func (s *Server) addToExpireAt(w http.ResponseWriter, r *http.Request) error {
	return s.prolong(w, r, true)
}

// prolong sets the expiry of the lock of the request's id seconds from now by the backend's
// clock, or seconds past its current expiry.
func (s *Server) prolong(w http.ResponseWriter, r *http.Request, fromExpiry bool) error {
	d, err := s.seconds(r, keepAlive)
	if err != nil {
		return err
	}
	ctx, cancel := bounded(r, 0)
	defer cancel()
	l, err := s.holding(ctx, r)
	if err != nil {
		return err
	}
	a := shylock.Amendment{TTL: d}
	if fromExpiry {
		if d > s.maxLease-l.left() {
			return apiError(http.StatusBadRequest, "the lock would then expire further ahead than this server allows (%s, --max-lease)", human(s.maxLease))
		}
		a = shylock.Amendment{ExpiresAt: l.ExpiresAt.Add(d)}
	}
	out, err := s.amend(ctx, l.Info, a)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, dto(out))
	return nil
}

// update changes a lock's creator and expiry: PUT /v1/locks/{id} {"creator"?, "expires_at"?}
// (null is the same as leaving it out). The expiry is stored as given, to the millisecond, and
// judged by the database's clock like every other; one in the past releases the lock.
func (s *Server) update(w http.ResponseWriter, r *http.Request) error {
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
		until = t.Truncate(time.Millisecond)
	}
	ctx, cancel := bounded(r, 0)
	defer cancel()
	l, err := s.holding(ctx, r)
	if err != nil {
		return err
	}
	in := l.Info
	var a shylock.Amendment
	if body.Creator != nil {
		_, ip := splitLabel(in.Label)
		label := joinLabel(*body.Creator, ip)
		a.Label = &label
	}
	if !until.IsZero() {
		now := l.serverNow()
		switch {
		case !until.After(now):
			if err := s.release(ctx, in); err != nil {
				return err
			}
			if a.Label != nil {
				in.Label = *a.Label
			}
			in.ExpiresAt = until
			writeJSON(w, http.StatusOK, dto(in))
			return nil
		case until.Sub(now) > s.maxLease:
			return apiError(http.StatusBadRequest, "expires_at %s is further ahead than this server allows (%s, --max-lease)",
				until.UTC().Format(relukkoTimes), human(s.maxLease))
		}
		a.ExpiresAt = until
	}
	if a.Label != nil || !a.ExpiresAt.IsZero() {
		if in, err = s.amend(ctx, in, a); err != nil {
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

// human writes a long duration in days or years, as --max-lease reads best.
func human(d time.Duration) string {
	const day, year = 24 * time.Hour, 365 * 24 * time.Hour
	switch {
	case d >= year && d%year == 0:
		return strconv.FormatInt(int64(d/year), 10) + " years"
	case d >= day && d%day == 0:
		return strconv.FormatInt(int64(d/day), 10) + " days"
	}
	return d.String()
}
