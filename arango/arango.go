// Package arango stores shylock locks in an ArangoDB collection.
//
// Each lock is one document {name, owner, label, token, acquiredAt, renewedAt, expiresAt} with
// a unique persistent index on name and a TTL index on expiresAt (numeric seconds) that deletes
// a record a grace period (WithGracePeriod, a day by default) after its lease ended. Expiry is
// never left to the TTL index (its thread runs every 30 seconds): every operation is one AQL
// query that reads the server's clock with DATE_NOW() and decides expiry there. Values reach
// queries only as bind parameters.
//
// Fencing tokens start, for a new record, from the server's time in microseconds (of millisecond
// precision) and grow by at least one with every holding. Records are kept for the grace period
// after their last lease, so tokens increase per name unless the server's clock steps back by
// more than the grace period while nobody holds the name.
//
// In a cluster each coordinator and DB-Server reads its own clock, so a takeover needs the
// record expired by more than a maximum clock offset (WithMaxClockOffset, 500ms in a cluster by
// default), and a holder trusts its lease for the TTL less that offset. A unique index must
// contain the shard key, so the collection must be sharded by name: New creates it that way
// (WithReplicationFactor and WithWriteConcern set its replication), and refuses an existing
// collection sharded otherwise.
//
// Every acquire attempt carries a deadline, its context's by an estimate of the server's clock
// (read with RETURN DATE_NOW() every 30 s), that the query checks: an attempt held up in the
// network past its clean-up (see Abandon) takes nothing.
//
// ArangoDB has no change streams: waiters on a name in one process share one poller, and a
// release in the process wakes them at once.
package arango

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/arangodb/shared"
	"golang.org/x/text/unicode/norm"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/clock"
	"github.com/shylock-go/shylock/internal/janitor"
	"github.com/shylock-go/shylock/internal/ownerid"
	"github.com/shylock-go/shylock/internal/waiter"
)

// Index names this package creates.
const (
	NameIndex = "shylock_name_unique"
	TTLIndex  = "shylock_expiresAt_ttl"
)

// ArangoDB error numbers that mean another client got there first.
const (
	errConflict         = 1200 // write-write conflict, or a revision that no longer matches
	errUniqueConstraint = 1210 // unique constraint violated
	errDuplicateName    = 1207 // a collection of that name exists (a concurrent creator)
)

// Backend is a shylock.Backend on one ArangoDB collection. It is safe for concurrent use.
type Backend struct {
	db       arangodb.Database
	coll     string
	log      *slog.Logger
	hub      *waiter.Hub
	janitor  *janitor.Janitor
	clock    *clock.Estimator  // of the server's clock, for the deadlines of attempts
	inflight janitor.Deadlines // of acquire attempts, for Abandon
	readOnly bool
	offset   time.Duration // the maximum clock offset between the servers
	closed   atomic.Bool
}

// New returns a backend on the collection called collection in db. It creates the collection
// if it is missing (sharded by name; a concurrent creator is fine), a unique persistent index on
// name and a TTL index on expiresAt, and refuses a collection or indexes that would break a
// guarantee, saying what to do.
func New(ctx context.Context, db arangodb.Database, collection string, opts ...Option) (*Backend, error) {
	if db == nil || collection == "" {
		return nil, errors.New("arango: New needs a database and a collection name")
	}
	s := settings{log: slog.Default(), grace: DefaultGracePeriod}
	for _, o := range opts {
		o(&s)
	}
	if s.err != nil {
		return nil, s.err
	}
	b := &Backend{db: db, coll: collection, log: s.log, readOnly: s.readOnly, janitor: janitor.New(s.log)}
	b.clock = clock.New(time.Now, b.serverTime)
	b.hub = waiter.New(b.probe, &waiter.Queue{Renew: b.renewQueue, Leave: b.leaveQueue, Every: shylock.QueueLease / 3})
	if s.offset != nil {
		b.offset = *s.offset
	} else {
		info, err := db.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("arango: reading database %s: %w", db.Name(), err)
		}
		if clustered(info) {
			b.offset = DefaultMaxClockOffset
		}
	}
	if s.readOnly {
		exists, err := db.CollectionExists(ctx, collection)
		switch {
		case err != nil:
			return nil, fmt.Errorf("arango: looking up collection %s: %w", collection, err)
		case !exists:
			return nil, fmt.Errorf("arango: collection %s does not exist: nothing has been locked there (is the name right?)", collection)
		}
		return b, nil
	}
	if err := b.setUp(ctx, s); err != nil {
		return nil, err
	}
	return b, nil
}

// MaxClockOffset reports the clock offset between servers that the backend allows for (see
// WithMaxClockOffset).
func (b *Backend) MaxClockOffset() time.Duration { return b.offset }

// Close stops the pollers of waiting goroutines and the background releases (see Abandon);
// waiting acquires then return an error matching shylock.ErrClosed, as does every later
// acquire. Locks stay in the database.
func (b *Backend) Close() {
	b.closed.Store(true)
	b.hub.Close()
	b.janitor.Close()
}

var errClosed = fmt.Errorf("arango: %w", shylock.ErrClosed)

// Abandon implements shylock.Backend. Every acquire attempt carries a deadline that its query
// checks against DATE_NOW(), so the last release comes once the owner's latest deadline has
// passed by the server's clock, and nothing the owner sent can take the lock after it.
func (b *Backend) Abandon(name, owner string, ttl time.Duration) {
	var settle func(ctx context.Context) error
	if deadline, ok := b.inflight.Take(owner); ok {
		settle = func(ctx context.Context) error { return janitor.WaitPast(ctx, deadline.Add(b.offset), b.clock.Bounds) }
	}
	b.janitor.Undo(name, shylock.AttemptTimeout+b.offset+ttl, func(ctx context.Context) error {
		return b.Release(ctx, name, owner, 0)
	}, settle)
}

// serverTime reads the server's clock, for the estimate of it.
func (b *Backend) serverTime(ctx context.Context) (time.Time, error) {
	var ms float64
	err := b.run(ctx, query{text: "RETURN DATE_NOW()"}, func(c arangodb.Cursor) error {
		_, err := c.ReadDocument(ctx, &ms)
		return err
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("arango: reading the server's clock: %w", err)
	}
	return time.UnixMilli(int64(ms)), nil
}

// record is the stored document; times are seconds since the epoch.
type record struct {
	Name       string  `json:"name"`
	Owner      string  `json:"owner"`
	Label      string  `json:"label"`
	Token      float64 `json:"token"`
	AcquiredAt float64 `json:"acquiredAt"`
	RenewedAt  float64 `json:"renewedAt"`
	ExpiresAt  float64 `json:"expiresAt"`
	Party      string  `json:"party,omitempty"` // ownerid.QueueKey of the holder's party
}

// withNow is a record read together with the server's clock in milliseconds.
type withNow struct {
	Doc *record `json:"doc"`
	Now float64 `json:"now"`
}

func seconds(s float64) time.Time { return time.UnixMilli(int64(s*1000 + 0.5)).UTC() }

func (w withNow) info(name string) shylock.Info {
	in := shylock.Info{Name: name}
	if w.Doc == nil {
		return in
	}
	r := w.Doc
	in.Name, in.Owner, in.Label, in.Token = r.Name, r.Owner, r.Label, uint64(r.Token)
	in.AcquiredAt, in.RenewedAt = seconds(r.AcquiredAt), seconds(r.RenewedAt)
	if r.Owner != "" { // a released record keeps its last expiry only for the TTL index
		in.ExpiresAt = seconds(r.ExpiresAt)
	}
	if left := w.left(0); r.Owner != "" && left > 0 {
		in.Held, in.Remaining = true, left
	}
	return in
}

// left is how long the record's lease has to run, by the server's clock, before it has been
// expired for longer than offset.
func (w withNow) left(offset time.Duration) time.Duration {
	return time.Duration((w.Doc.ExpiresAt*1000-w.Now)*float64(time.Millisecond)) + offset
}

// probe tells the waiters of names which of them may be taken now, and for each that may not,
// how long at most until its lease ends and the clock offset has passed. One query asks about
// all of them.
func (b *Backend) probe(ctx context.Context, names []string) (map[string]time.Duration, error) {
	held := map[string]time.Duration{}
	err := b.run(ctx, b.probeQuery(names), func(c arangodb.Cursor) error {
		var row withNow
		if _, err := c.ReadDocument(ctx, &row); err != nil {
			return err
		}
		if row.Doc != nil && row.Doc.Owner != "" {
			if left := row.left(b.offset); left > 0 {
				held[row.Doc.Name] = left
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return held, nil
}

// read reads name's record with the server's time.
func (b *Backend) read(ctx context.Context, name string) (withNow, error) {
	var row withNow
	err := b.run(ctx, b.inspectQuery(name), func(c arangodb.Cursor) error {
		_, err := c.ReadDocument(ctx, &row)
		return err
	})
	return row, err
}

// run executes q and decodes each result row with read.
func (b *Backend) run(ctx context.Context, q query, read func(c arangodb.Cursor) error) error {
	c, err := b.db.Query(ctx, q.text, &arangodb.QueryOptions{BindVars: q.bind})
	if err != nil {
		return err
	}
	defer c.Close()
	for c.HasMore() {
		if err := read(c); err != nil {
			return err
		}
	}
	return nil
}

// collided reports whether err says that a concurrent write got in the way of an acquire: a
// write-write conflict with a change made after the query's snapshot (1200: RocksDB waits only
// 1 ms for a lock, so these are common), or a second insert of a name that had no record (1210).
// Neither says who holds the lock now: it may be free, or this owner's own.
func collided(err error) bool {
	return shared.IsArangoErrorWithErrorNum(err, errUniqueConstraint, errConflict)
}

// afterCollision decides an acquire that collided, from the record as read again: held by this
// owner (an earlier attempt of its own was applied): that lease; held live by another: ErrLocked;
// anything else (free, expired, deleted): a transient error, worth another attempt.
func (b *Backend) afterCollision(req shylock.AcquireRequest, row withNow, cause error) (shylock.Lease, error) {
	if row.Doc != nil && row.Doc.Owner != "" {
		switch left := row.left(0); {
		case row.Doc.Owner == req.Owner && left > b.offset:
			return shylock.Lease{Token: uint64(row.Doc.Token), ExpiresAt: seconds(row.Doc.ExpiresAt), Valid: left - b.offset}, nil
		case row.Doc.Owner != req.Owner && left+b.offset > 0:
			return shylock.Lease{}, held(req.Name, *row.Doc)
		}
	}
	return shylock.Lease{}, fmt.Errorf("arango: acquire %q: a concurrent change got in the way (%w); try again", req.Name, cause)
}

func held(name string, r record) error {
	return &shylock.HeldError{Name: name, Label: r.Label, Token: uint64(r.Token), ExpiresAt: seconds(r.ExpiresAt)}
}

type leaseRow struct {
	Token     float64 `json:"token"`
	ExpiresAt float64 `json:"expiresAt"`
}

// Acquire implements shylock.Backend.
func (b *Backend) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if err := validateName(req.Name); err != nil {
		return shylock.Lease{}, err
	}
	if err := shylock.ValidateTTL(req.TTL); err != nil {
		return shylock.Lease{}, err
	}
	if req.Owner == "" {
		return shylock.Lease{}, fmt.Errorf("arango: acquire %q: empty owner id", req.Name)
	}
	if b.readOnly {
		return shylock.Lease{}, refuseWrite("acquire", req.Name)
	}
	if b.closed.Load() {
		return shylock.Lease{}, errClosed
	}
	if req.TTL <= b.offset {
		return shylock.Lease{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers, so no holder could trust it; "+
			"use a longer TTL or set arango.WithMaxClockOffset", shylock.ErrInvalidTTL, req.TTL, b.offset)
	}
	_, hi, err := b.clock.Bounds(ctx)
	if err != nil {
		return shylock.Lease{}, fmt.Errorf("arango: acquire %q: %w: %w", req.Name, shylock.ErrUnavailable, err)
	}
	deadline := janitor.AttemptDeadline(ctx, hi, shylock.AttemptTimeout, b.offset)
	b.inflight.Note(req.Owner, deadline)
	var row *acquireRow
	err = b.run(ctx, b.acquireQuery(req, deadline), func(c arangodb.Cursor) error {
		row = new(acquireRow)
		_, err := c.ReadDocument(ctx, row)
		return err
	})
	switch {
	case collided(err):
		again, rerr := b.read(ctx, req.Name)
		if rerr != nil {
			return shylock.Lease{}, fmt.Errorf("arango: acquire %q: a concurrent change got in the way (%w), and reading the record again failed: %w",
				req.Name, err, rerr)
		}
		return b.afterCollision(req, again, err)
	case err != nil:
		return shylock.Lease{}, fmt.Errorf("arango: acquire %q: %w", req.Name, err)
	case row == nil:
		return shylock.Lease{}, fmt.Errorf("arango: acquire %q: the query returned no row", req.Name)
	case row.Lease == nil:
		if req.Wait && (row.State == "queued" || row.State == "held" && row.Doc != nil && row.Doc.Party != ownerid.QueueKey(req.Queue)) {
			b.hub.Joined(req.Name, req.Queue)
		}
		switch {
		case row.State == "queued":
			return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Queued: true}
		case row.State == "held" && row.Doc != nil:
			return shylock.Lease{}, held(req.Name, *row.Doc)
		}
		// A late attempt's reply came before its own deadline: the server judged it in time,
		// so this is not the state it saw but a clock uncertainty: say it is held.
		return shylock.Lease{}, &shylock.HeldError{Name: req.Name}
	}
	b.hub.Took(req.Name, req.Queue)
	// The server stamped the expiry after this request was sent.
	return shylock.Lease{Token: uint64(row.Lease.Token), ExpiresAt: seconds(row.Lease.ExpiresAt), Valid: req.TTL - b.offset}, nil
}

// acquireRow is what acquireAQL returns.
type acquireRow struct {
	State string    `json:"state"`
	Doc   *record   `json:"doc"`
	Lease *leaseRow `json:"lease"`
}

// validateName is shylock.ValidateName, and more: the name must be in Unicode normalization form
// C. A lookup through the unique index compares names with the server's ICU collation, which
// holds canonically equivalent strings equal (an "é" written as one code point or as "e" and a
// combining accent), so two such names would be one lock here and two elsewhere; NFC is the form
// text is almost always in already.
func validateName(name string) error {
	if err := shylock.ValidateName(name); err != nil {
		return err
	}
	if !norm.NFC.IsNormalString(name) {
		return fmt.Errorf("%w: %s is not in Unicode normalization form C, which the ArangoDB backend needs (use norm.NFC.String)",
			shylock.ErrInvalidName, strconv.Quote(name))
	}
	return nil
}

// refuseWrite is the error of a write on a read-only backend.
func refuseWrite(op, name string) error {
	return fmt.Errorf("arango: %s %q: %w: the backend was opened with WithReadOnly", op, name, shylock.ErrRefused)
}

func notHeld(name string) error {
	return fmt.Errorf("%w: %q is not held by this owner (expired, released or taken over)", shylock.ErrNotHeld, name)
}

// Extend implements shylock.Backend.
func (b *Backend) Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	if err := validateName(name); err != nil {
		return shylock.Lease{}, err
	}
	if err := shylock.ValidateTTL(ttl); err != nil {
		return shylock.Lease{}, err
	}
	if owner == "" {
		return shylock.Lease{}, notHeld(name)
	}
	if b.readOnly {
		return shylock.Lease{}, refuseWrite("extend", name)
	}
	if ttl <= b.offset {
		return shylock.Lease{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers", shylock.ErrInvalidTTL, ttl, b.offset)
	}
	var row *leaseRow
	err := b.run(ctx, b.extendQuery(name, owner, token, ttl), func(c arangodb.Cursor) error {
		row = new(leaseRow)
		_, err := c.ReadDocument(ctx, row)
		return err
	})
	switch {
	case err != nil:
		// A write conflict too is worth retrying: if a takeover caused it, the retry finds the
		// record no longer ours and says so.
		return shylock.Lease{}, fmt.Errorf("arango: extend %q: %w", name, err)
	case row == nil:
		return shylock.Lease{}, notHeld(name)
	}
	return shylock.Lease{Token: token, ExpiresAt: seconds(row.ExpiresAt), Valid: ttl - b.offset}, nil
}

// Release implements shylock.Backend.
func (b *Backend) Release(ctx context.Context, name, owner string, token uint64) error {
	if err := validateName(name); err != nil {
		return err
	}
	if owner == "" {
		return notHeld(name)
	}
	if b.readOnly {
		return refuseWrite("release", name)
	}
	released := false
	err := b.run(ctx, b.releaseQuery(name, owner, token), func(c arangodb.Cursor) error {
		_, err := c.ReadDocument(ctx, &released)
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("arango: release %q: %w", name, err)
	case !released:
		return notHeld(name)
	}
	b.hub.Notify(name)
	return nil
}

// Inspect implements shylock.Backend.
func (b *Backend) Inspect(ctx context.Context, name string) (shylock.Info, error) {
	if err := validateName(name); err != nil {
		return shylock.Info{}, err
	}
	row, err := b.read(ctx, name)
	if err != nil {
		return shylock.Info{}, fmt.Errorf("arango: inspect %q: %w", name, err)
	}
	return row.info(name), nil
}

// List implements shylock.Backend.
func (b *Backend) List(ctx context.Context, prefix string) ([]shylock.Info, error) {
	if err := shylock.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	var out []shylock.Info
	err := b.run(ctx, b.listQuery(prefix), func(c arangodb.Cursor) error {
		var row withNow
		if _, err := c.ReadDocument(ctx, &row); err != nil {
			return err
		}
		if row.Doc != nil {
			out = append(out, row.info(row.Doc.Name))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("arango: list %q: %w", prefix, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ForceRelease implements shylock.Backend.
func (b *Backend) ForceRelease(ctx context.Context, name string) (shylock.Info, error) {
	if err := validateName(name); err != nil {
		return shylock.Info{}, err
	}
	if b.readOnly {
		return shylock.Info{}, refuseWrite("force-release", name)
	}
	var row *withNow
	err := b.run(ctx, b.forceReleaseQuery(name), func(c arangodb.Cursor) error {
		row = new(withNow)
		_, err := c.ReadDocument(ctx, row)
		return err
	})
	switch {
	case err != nil:
		return shylock.Info{}, fmt.Errorf("arango: force-release %q: %w", name, err)
	case row == nil:
		return shylock.Info{Name: name}, fmt.Errorf("%w: nobody holds %q", shylock.ErrNotHeld, name)
	}
	b.hub.Notify(name)
	in := row.info(name)
	if !in.Held {
		return in, fmt.Errorf("%w: nobody holds %q (its last holder's lease had expired)", shylock.ErrNotHeld, name)
	}
	return in, nil
}

// Subscribe implements shylock.Notifier: waiters on one name share one poller.
func (b *Backend) Subscribe(name string, minPoll, maxPoll time.Duration) shylock.Subscription {
	return b.hub.Subscribe(name, minPoll, maxPoll)
}

var (
	_ shylock.Backend  = (*Backend)(nil)
	_ shylock.Notifier = (*Backend)(nil)
)

// renewQueue renews party's entries in the queues of names, in one query.
func (b *Backend) renewQueue(ctx context.Context, party string, names []string) error {
	return b.run(ctx, b.renewQueueQuery(party, names), nil)
}

// leaveQueue takes party's entry out of name's queue.
func (b *Backend) leaveQueue(ctx context.Context, party, name string) error {
	return b.run(ctx, b.leaveQueueQuery(party, name), nil)
}
