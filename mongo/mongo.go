// Package mongo stores shylock locks in a MongoDB collection (or any server that speaks the
// MongoDB wire protocol well enough, such as FerretDB).
//
// Each lock is one document {name, owner, label, token, acquiredAt, renewedAt, expiresAt} under
// a unique index on name, which makes "insert or take over" atomic, and a TTL index on
// expiresAt, which garbage-collects records whose holders are gone. Expiry is never left to the
// TTL index (its monitor runs every 60 seconds): every acquire decides it in its filter, with
// the server's clock ($$NOW) where the server evaluates aggregation expressions in updates, and
// otherwise with an interval estimate of the server's clock, sampled from the hello command and
// corrected for the round trip, that never judges a live lock expired.
//
// Fencing tokens are derived from the server's clock when a record is created (in
// microseconds) and incremented on every acquisition after that, so they keep increasing when a
// record is deleted by the TTL monitor or by hand.
//
// Servers without pipeline updates (FerretDB) also rewrite a matched document by _id after
// querying it, without checking the filter again, so a conditional update is not atomic there.
// On them every change of holder is decided by inserting a claim record under the unique index,
// and an extend reads back what it wrote. An extend or release that stalls inside such a server
// from before the end of its lease until after a takeover can still overwrite the new holding:
// keep TTLs far above the server's worst stall.
//
// Writes use write concern majority with journaling and reads use read concern majority, so an
// acknowledged acquire survives a replica-set failover. WithWriteConcern and WithReadConcern
// relax that, at the price of locks that a failover can forget: two holders at once.
package mongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/clock"
	"github.com/shylock-go/shylock/internal/waiter"
)

// Index names this package creates.
const (
	NameIndex = "shylock_name_unique"
	TTLIndex  = "shylock_expiresAt_ttl"
)

// Backend is a shylock.Backend on one MongoDB collection. It is safe for concurrent use.
type Backend struct {
	coll   *mdb.Collection
	log    *slog.Logger
	server *clock.Estimator
	hub    *waiter.Hub

	// What the server offers, detected once by New.
	serverNow bool // $$NOW and $expr in updates (aggregation-pipeline updates)

	streamOnce sync.Once
	streamStop context.CancelFunc
	streamDone chan struct{}
	noStreams  bool // from WithChangeStreams(false)
}

// Option configures New.
type Option func(*settings)

type settings struct {
	log     *slog.Logger
	now     func() time.Time
	wc      *writeconcern.WriteConcern
	rc      *readconcern.ReadConcern
	streams bool
}

// WithLogger sets where the backend says, once and at debug level, which server features it
// fell back from, and reports change-stream failures. The default is slog.Default().
func WithLogger(l *slog.Logger) Option { return func(s *settings) { s.log = l } }

// WithClock replaces the client clock the backend uses to extrapolate its estimate of the
// server's clock. Only differences of its readings matter, so a clock that is off by a constant
// changes nothing; tests use it to prove that.
func WithClock(now func() time.Time) Option { return func(s *settings) { s.now = now } }

// WithWriteConcern replaces the default write concern (majority, journaled). A weaker one makes
// acquires faster on a replica set, but an acknowledged acquire may then be rolled back by a
// failover and the lock granted twice.
func WithWriteConcern(wc *writeconcern.WriteConcern) Option { return func(s *settings) { s.wc = wc } }

// WithReadConcern replaces the default read concern (majority) of Inspect, List and the
// waiters' polls. A weaker one may show a lock that a failover will roll back.
func WithReadConcern(rc *readconcern.ReadConcern) Option { return func(s *settings) { s.rc = rc } }

// WithChangeStreams turns the use of change streams for waking waiters on or off (default on
// where the server supports them: replica sets and sharded clusters). Off, waiters poll.
func WithChangeStreams(on bool) Option { return func(s *settings) { s.streams = on } }

// New returns a backend on coll. It creates a unique index on name and a TTL index on expiresAt
// if they are missing, refuses indexes of those names or keys with other options, and detects
// what the server supports. It does not own the client: disconnect it after Close.
func New(ctx context.Context, coll *mdb.Collection, opts ...Option) (*Backend, error) {
	if coll == nil {
		return nil, errors.New("mongo: New: nil collection")
	}
	wc := writeconcern.Majority()
	wc.Journal = new(bool)
	*wc.Journal = true
	s := settings{log: slog.Default(), now: time.Now, wc: wc, rc: readconcern.Majority(), streams: true}
	for _, o := range opts {
		o(&s)
	}
	b := &Backend{
		coll:      coll.Clone(options.Collection().SetWriteConcern(s.wc).SetReadConcern(s.rc)),
		log:       s.log,
		noStreams: !s.streams,
	}
	b.server = clock.New(s.now, b.readServerClock)
	if err := b.ensureIndexes(ctx); err != nil {
		return nil, err
	}
	if err := b.detect(ctx); err != nil {
		return nil, err
	}
	b.hub = waiter.New(func(ctx context.Context, name string) (bool, time.Duration, error) {
		info, err := b.Inspect(ctx, name)
		return info.Held, info.Remaining, err
	})
	return b, nil
}

// Close stops the change stream and every waiter's poller. Locks stay in the database.
func (b *Backend) Close() {
	b.hub.Close()
	b.streamOnce.Do(func() {}) // no stream may start after Close
	if b.streamStop != nil {
		b.streamStop()
		<-b.streamDone
	}
}

// ServerClock reports whether acquires judge expiry with the server's own clock ($$NOW) rather
// than with an estimate of it.
func (b *Backend) ServerClock() bool { return b.serverNow }

func (b *Backend) readServerClock(ctx context.Context) (time.Time, error) {
	var reply struct {
		LocalTime time.Time `bson:"localTime"`
	}
	if err := b.coll.Database().RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&reply); err != nil {
		return time.Time{}, fmt.Errorf("mongo: reading the server's clock: %w", err)
	}
	if reply.LocalTime.IsZero() {
		return time.Time{}, errors.New("mongo: the server's hello reply has no localTime")
	}
	return reply.LocalTime, nil
}

// ensureIndexes creates the two indexes, each on its own: a server that refuses TTL indexes
// must not take the unique index down with it.
func (b *Backend) ensureIndexes(ctx context.Context) error {
	specs, err := b.coll.Indexes().ListSpecifications(ctx)
	if err != nil {
		return fmt.Errorf("mongo: listing the indexes of %s: %w", b.coll.Name(), err)
	}
	haveName, haveTTL := false, false
	for _, spec := range specs {
		key := keyOf(spec.KeysDocument)
		switch {
		case key == "name":
			if spec.Unique == nil || !*spec.Unique {
				return fmt.Errorf("mongo: collection %s has index %q on name that is not unique; drop it or use another collection",
					b.coll.Name(), spec.Name)
			}
			haveName = true
		case spec.Name == NameIndex:
			return fmt.Errorf("mongo: collection %s has an index named %q on other keys; drop it or use another collection",
				b.coll.Name(), spec.Name)
		case key == "expiresAt" && spec.ExpireAfterSeconds != nil:
			if *spec.ExpireAfterSeconds != 0 {
				return fmt.Errorf("mongo: collection %s has TTL index %q with expireAfterSeconds %d; it must be 0 (expire at expiresAt): drop it",
					b.coll.Name(), spec.Name, *spec.ExpireAfterSeconds)
			}
			haveTTL = true
		case spec.Name == TTLIndex:
			return fmt.Errorf("mongo: collection %s has an index named %q that is not a TTL index on expiresAt; drop it",
				b.coll.Name(), spec.Name)
		}
	}
	if !haveName {
		_, err := b.coll.Indexes().CreateOne(ctx, mdb.IndexModel{
			Keys:    bson.D{{Key: "name", Value: 1}},
			Options: options.Index().SetUnique(true).SetName(NameIndex),
		})
		if err != nil {
			return fmt.Errorf("mongo: creating the unique index on name: %w", err)
		}
	}
	if !haveTTL {
		_, err := b.coll.Indexes().CreateOne(ctx, mdb.IndexModel{
			Keys:    bson.D{{Key: "expiresAt", Value: 1}},
			Options: options.Index().SetExpireAfterSeconds(0).SetName(TTLIndex),
		})
		var cmd mdb.CommandError
		switch {
		case errors.As(err, &cmd):
			b.log.Debug("shylock/mongo: the server refused a TTL index; expiry still works, but released records stay until deleted",
				"collection", b.coll.Name(), "err", err)
		case err != nil:
			return fmt.Errorf("mongo: creating the TTL index on expiresAt: %w", err)
		}
	}
	return nil
}

// keyOf returns the field of a single-field ascending index key, or "".
func keyOf(keys bson.Raw) string {
	elems, err := keys.Elements()
	if err != nil || len(elems) != 1 {
		return ""
	}
	if v, ok := elems[0].Value().AsInt64OK(); !ok || v != 1 {
		if d, ok := elems[0].Value().DoubleOK(); !ok || d != 1 {
			return ""
		}
	}
	return elems[0].Key()
}

// probeName cannot be a lock name (it holds a NUL), so the probe never touches a lock.
const probeName = "\x00shylock-probe"

// detect asks the server, once, whether updates can read its clock.
func (b *Backend) detect(ctx context.Context) error {
	err := b.coll.FindOneAndUpdate(ctx,
		bson.D{{Key: "name", Value: probeName}, {Key: "$expr", Value: bson.D{{Key: "$lte", Value: bson.A{"$expiresAt", "$$NOW"}}}}},
		mdb.Pipeline{{{Key: "$set", Value: bson.D{{Key: "renewedAt", Value: "$$NOW"}}}}},
	).Err()
	var cmd mdb.CommandError
	switch {
	case errors.Is(err, mdb.ErrNoDocuments):
		b.serverNow = true
	case errors.As(err, &cmd):
		b.log.Debug("shylock/mongo: the server has no aggregation-pipeline updates ($$NOW); expiry is judged with an estimate of its clock",
			"collection", b.coll.Name(), "err", err)
	case err != nil:
		return fmt.Errorf("mongo: detecting server features: %w", err)
	}
	return nil
}

var (
	_ shylock.Backend  = (*Backend)(nil)
	_ shylock.Notifier = (*Backend)(nil)
)
