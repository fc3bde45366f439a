// Package arango stores shylock locks in an ArangoDB collection.
//
// Each lock is one document {name, owner, label, token, acquiredAt, renewedAt, expiresAt} with
// a unique persistent index on name and a TTL index on expiresAt (numeric seconds, expireAfter
// 0), which garbage-collects records whose holders are gone. Expiry is never left to the TTL
// index (its thread runs every 30 seconds): every operation is one AQL query that reads the
// server's clock with DATE_NOW() and decides expiry there. Values reach queries only as bind
// parameters.
//
// In a cluster a unique index must contain the shard key, so the collection must be sharded by
// name: New creates it that way. An existing collection sharded otherwise is refused.
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
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/arangodb/shared"

	"github.com/shylock-go/shylock"
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
	readOnly bool
}

// Option configures New.
type Option func(*settings)

type settings struct {
	log      *slog.Logger
	readOnly bool
}

// WithLogger sets where the backend reports what it set up. The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.log = l } }

// WithReadOnly makes a backend for tools that only look (Inspect, List): New creates nothing and
// fails if the collection does not exist, and every operation that would write fails with
// ErrRefused.
func WithReadOnly() Option { return func(s *settings) { s.readOnly = true } }

// New returns a backend on the collection called collection in db. It creates the collection
// if it is missing (sharded by name; a concurrent creator is fine), a unique persistent index on
// name and a TTL index on expiresAt.
func New(ctx context.Context, db arangodb.Database, collection string, opts ...Option) (*Backend, error) {
	if db == nil || collection == "" {
		return nil, errors.New("arango: New needs a database and a collection name")
	}
	s := settings{log: slog.Default()}
	for _, o := range opts {
		o(&s)
	}
	b := &Backend{db: db, coll: collection, log: s.log, readOnly: s.readOnly}
	b.hub = waiter.New(func(ctx context.Context, name string) (bool, time.Duration, error) {
		info, err := b.Inspect(ctx, name)
		return info.Held, info.Remaining, err
	})
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
	c, err := b.ensureCollection(ctx)
	if err != nil {
		return nil, err
	}
	unique := true
	if _, _, err := c.EnsurePersistentIndex(ctx, []string{"name"}, &arangodb.CreatePersistentIndexOptions{
		Name: NameIndex, Unique: &unique}); err != nil {
		return nil, fmt.Errorf("arango: creating the unique index on name in %s (in a cluster the collection must be sharded by name): %w",
			collection, err)
	}
	if _, _, err := c.EnsureTTLIndex(ctx, []string{"expiresAt"}, 0, &arangodb.CreateTTLIndexOptions{Name: TTLIndex}); err != nil {
		return nil, fmt.Errorf("arango: creating the TTL index on expiresAt in %s: %w", collection, err)
	}
	return b, nil
}

func (b *Backend) ensureCollection(ctx context.Context) (arangodb.Collection, error) {
	exists, err := b.db.CollectionExists(ctx, b.coll)
	if err != nil {
		return nil, fmt.Errorf("arango: looking up collection %s: %w", b.coll, err)
	}
	if !exists {
		shardKeys := []string{"name"}
		_, err := b.db.CreateCollectionV2(ctx, b.coll, &arangodb.CreateCollectionPropertiesV2{ShardKeys: &shardKeys})
		switch {
		case shared.IsArangoErrorWithErrorNum(err, errDuplicateName):
		case err != nil:
			return nil, fmt.Errorf("arango: creating collection %s: %w", b.coll, err)
		default:
			b.log.Debug("shylock/arango: created the lock collection, sharded by name", "collection", b.coll)
		}
	}
	c, err := b.db.GetCollection(ctx, b.coll, nil)
	if err != nil {
		return nil, fmt.Errorf("arango: opening collection %s: %w", b.coll, err)
	}
	return c, nil
}

// Close stops the pollers of waiting goroutines. Locks stay in the database.
func (b *Backend) Close() { b.hub.Close() }

// record is the stored document; times are seconds since the epoch.
type record struct {
	Name       string  `json:"name"`
	Owner      string  `json:"owner"`
	Label      string  `json:"label"`
	Token      float64 `json:"token"`
	AcquiredAt float64 `json:"acquiredAt"`
	RenewedAt  float64 `json:"renewedAt"`
	ExpiresAt  float64 `json:"expiresAt"`
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
	in.AcquiredAt, in.RenewedAt, in.ExpiresAt = seconds(r.AcquiredAt), seconds(r.RenewedAt), seconds(r.ExpiresAt)
	if left := time.Duration((r.ExpiresAt*1000 - w.Now) * float64(time.Millisecond)); r.Owner != "" && left > 0 {
		in.Held, in.Remaining = true, left
	}
	return in
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

// acquireError classifies a failed acquire: a unique-constraint violation or a write conflict
// means another client took or changed the lock first, so it is held; anything else is the
// driver's error, for the caller to retry.
func acquireError(name string, err error) error {
	if shared.IsArangoErrorWithErrorNum(err, errUniqueConstraint, errConflict) {
		return fmt.Errorf("%w: %q changed hands during the attempt", shylock.ErrLocked, name)
	}
	return fmt.Errorf("arango: acquire %q: %w", name, err)
}

type leaseRow struct {
	Token     float64 `json:"token"`
	ExpiresAt float64 `json:"expiresAt"`
}

// Acquire implements shylock.Backend.
func (b *Backend) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if err := shylock.ValidateName(req.Name); err != nil {
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
	var row *leaseRow
	err := b.run(ctx, b.acquireQuery(req.Name, req.Owner, req.Label, req.TTL), func(c arangodb.Cursor) error {
		row = new(leaseRow)
		_, err := c.ReadDocument(ctx, row)
		return err
	})
	switch {
	case err != nil:
		return shylock.Lease{}, acquireError(req.Name, err)
	case row == nil:
		return shylock.Lease{}, fmt.Errorf("%w: %q", shylock.ErrLocked, req.Name)
	}
	// The server stamped the expiry after this request was sent.
	return shylock.Lease{Token: uint64(row.Token), ExpiresAt: seconds(row.ExpiresAt), Valid: req.TTL}, nil
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
	if err := shylock.ValidateName(name); err != nil {
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
	return shylock.Lease{Token: token, ExpiresAt: seconds(row.ExpiresAt), Valid: ttl}, nil
}

// Release implements shylock.Backend.
func (b *Backend) Release(ctx context.Context, name, owner string, token uint64) error {
	if err := shylock.ValidateName(name); err != nil {
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
	if err := shylock.ValidateName(name); err != nil {
		return shylock.Info{}, err
	}
	var row withNow
	err := b.run(ctx, b.inspectQuery(name), func(c arangodb.Cursor) error {
		_, err := c.ReadDocument(ctx, &row)
		return err
	})
	if err != nil {
		return shylock.Info{}, fmt.Errorf("arango: inspect %q: %w", name, err)
	}
	return row.info(name), nil
}

// List implements shylock.Backend.
func (b *Backend) List(ctx context.Context, prefix string) ([]shylock.Info, error) {
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
	if err := shylock.ValidateName(name); err != nil {
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
