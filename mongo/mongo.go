// Package mongo stores shylock locks in a MongoDB collection (or any server that speaks the
// MongoDB wire protocol well enough, such as FerretDB).
//
// Each lock is one document {name, owner, label, token, acquiredAt, renewedAt, expiresAt,
// createdAt} under a unique index on name, which makes "insert or take over" atomic, and a TTL
// index on expiresAt, which deletes records a grace period (WithGracePeriod, a day by default)
// after they were released or expired. Expiry is never left to the TTL index: every acquire
// decides it with the server's clock.
//
// On MongoDB 4.4 and later an acquire is one findAndModify: it filters on the name alone (MongoDB
// refuses $expr in the filter of an upsert) and decides in an aggregation-pipeline update, where
// $$NOW is the server's clock, whether the record is free, expired, or still held; the document
// it returns says who holds the lock. Where several servers stamp times (mongos routers, a new
// primary after a failover), a takeover needs the record expired by more than the maximum clock
// offset between them (WithMaxClockOffset). New finds out whether the server takes that command
// by sending it once, on a record of its own.
//
// Servers without pipeline updates (FerretDB 1.x) also rewrite a matched document by _id after
// querying it, without checking the filter again, so a conditional update is not atomic there.
// On them expiry is judged with an interval estimate of the server's clock, sampled from its
// hello replies and corrected for the round trip, that never judges a live lock expired; every
// change of holder, releases included, is decided by inserting a claim record for the next token
// under the unique index, a takeover replaces the record (a delete and an insert, so that a late
// write of the old holding, which such a server applies by the old _id, changes nothing), and an
// extend reads back what it wrote. An extend that reaches such a server more than a second after
// its claim and after its lease's end can still land between a taker's read and its delete, and
// look applied until its read-back: keep TTLs far above the server's worst stall.
//
// Every acquire attempt on the server-clock path carries a deadline (its context's, at most
// shylock.AttemptTimeout away) that the pipeline checks against $$NOW, so an attempt held up in
// the network past its clean-up (see Abandon) is refused unapplied.
//
// Fencing tokens start, for a new record, from the server's time in microseconds (of millisecond
// precision) and grow by at least one with every holding. Records are kept for the grace period
// after their last holding, so tokens increase per name unless the server's clock steps back by
// more than the grace period while nobody holds the name.
//
// Waiters of other processes are woken by one change stream per backend where the server has
// change streams (replica sets, sharded clusters), and elsewhere by release events: each release
// also inserts {name} into the capped collection "<collection>.events", which every backend with
// waiters follows with one tailable awaitData cursor. Both are hints; waiters still poll, and
// wake at the holder's expiry.
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
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/janitor"
	"github.com/shylock-go/shylock/internal/ownerid"
	"github.com/shylock-go/shylock/internal/waiter"
)

// Backend is a shylock.Backend on one MongoDB collection. It is safe for concurrent use.
type Backend struct {
	coll    *mongo.Collection
	streams *mongo.Collection // coll read at majority, the only level change streams accept
	log     *slog.Logger
	server  *server
	hub     *waiter.Hub
	janitor *janitor.Janitor
	reads   *reads // of the estimate path's attempts
	closed  atomic.Bool

	inflight janitor.Deadlines // of server-clock acquire attempts, for Abandon

	readOnly  bool          // from WithReadOnly: nothing is written
	serverNow bool          // expiry judged by $$NOW in pipeline updates, not by the estimate
	offset    time.Duration // the maximum clock offset between the servers
	grace     time.Duration // how long the TTL index keeps a record after its expiry

	indexMu sync.Mutex // one index check at a time
	noTTL   bool       // the server refused a TTL index; guarded by indexMu

	// Waking waiters of other processes: a change stream, or else release events in a capped
	// collection, which a single server publishes to (nil where not used).
	streamOnce sync.Once
	streamStop context.CancelFunc
	streamDone chan struct{}
	noStreams  bool // from WithChangeStreams(false)
	events     *mongo.Collection
}

// New returns a backend on coll. It creates a unique index on name and a TTL index on expiresAt
// if they are missing, refuses indexes that would break a guarantee, and finds out what the
// server supports. A server that cannot be reached, or refuses what the backend needs, fails New
// with an error that says so. New does not own the client: disconnect it after Close.
func New(ctx context.Context, coll *mongo.Collection, opts ...Option) (*Backend, error) {
	if coll == nil {
		return nil, errors.New("mongo: New: nil collection")
	}
	wc := writeconcern.Majority()
	wc.Journal = new(bool)
	*wc.Journal = true
	s := settings{log: slog.Default(), now: time.Now, wc: wc, rc: readconcern.Majority(), streams: true, events: true, grace: DefaultGracePeriod}
	for _, o := range opts {
		o(&s)
	}
	if s.err != nil {
		return nil, s.err
	}
	coll = coll.Clone(options.Collection().SetWriteConcern(s.wc).SetReadConcern(s.rc))
	b := &Backend{
		coll:      coll,
		streams:   coll.Clone(options.Collection().SetReadConcern(readconcern.Majority())),
		log:       s.log,
		janitor:   janitor.New(s.log),
		reads:     newReads(coll),
		grace:     s.grace.Round(time.Second),
		noStreams: !s.streams,
	}
	b.server = newServer(coll.Database(), s.now)
	topo, err := b.server.topology(ctx)
	if err != nil {
		return nil, fmt.Errorf("mongo: New: %w", err)
	}
	b.offset = topo.defaultOffset()
	if s.offset != nil {
		b.offset = *s.offset
	}
	if s.readOnly {
		return b.openReadOnly(ctx)
	}
	if err := retryBusy(ctx, func() error { return b.ensureIndexes(ctx) }); err != nil {
		return nil, err
	}
	if s.serverClock != nil {
		b.serverNow = *s.serverClock
	} else if err = retryBusy(ctx, func() (err error) { b.serverNow, err = b.detect(ctx); return err }); err != nil {
		return nil, err
	}
	if !topo.several && s.events {
		b.events = eventsCollection(coll)
		if ok, err := b.detectEvents(ctx); err != nil {
			return nil, err
		} else if !ok {
			b.events = nil
		}
	}
	b.hub = waiter.New(b.probe, &waiter.Queue{Renew: b.renewQueue, Leave: b.leaveQueue, Every: shylock.QueueLease / 3})
	return b, nil
}

// retryBusy runs f until it succeeds, fails otherwise than with a busy server (see busy), or ctx
// ends: a loaded FerretDB answers so for a while without anything being wrong.
func retryBusy(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || !busy(err) {
			return err
		}
		if janitor.Sleep(ctx, 50*time.Millisecond) != nil {
			return err
		}
	}
}

// openReadOnly finishes New for WithReadOnly: it only makes sure the collection exists.
func (b *Backend) openReadOnly(ctx context.Context) (*Backend, error) {
	names, err := b.coll.Database().ListCollectionNames(ctx, bson.D{{Key: "name", Value: b.coll.Name()}})
	if err != nil {
		return nil, fmt.Errorf("mongo: New: looking up collection %s: %w", b.coll.Name(), err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("mongo: collection %s.%s does not exist: nothing has been locked there (is the name right?)",
			b.coll.Database().Name(), b.coll.Name())
	}
	b.readOnly, b.noStreams = true, true
	b.hub = waiter.New(b.probe, nil)
	return b, nil
}

// refuseWrite is the error of a write on a read-only backend.
func (b *Backend) refuseWrite(op, name string) error {
	return fmt.Errorf("mongo: %s %q: %w: the backend was opened with WithReadOnly", op, name, shylock.ErrRefused)
}

// Close stops the change stream, every waiter's poller and the background releases (see
// Abandon); waiting acquires then return an error matching shylock.ErrClosed, as does every later
// acquire. Locks stay in the database.
func (b *Backend) Close() {
	b.closed.Store(true)
	b.hub.Close()
	b.janitor.Close()
	b.reads.close()
	b.streamOnce.Do(func() {}) // no stream may start after Close
	if b.streamStop != nil {
		b.streamStop()
		<-b.streamDone
	}
}

// ServerClock reports whether acquires judge expiry with the server's own clock ($$NOW) rather
// than with an estimate of it.
func (b *Backend) ServerClock() bool { return b.serverNow }

// ReleaseEvents reports whether releases are published as events in the capped collection
// "<collection>.events" for waiters in other processes (see WithReleaseEvents).
func (b *Backend) ReleaseEvents() bool { return b.events != nil }

// MaxClockOffset reports the clock offset between servers that the backend allows for (see
// WithMaxClockOffset).
func (b *Backend) MaxClockOffset() time.Duration { return b.offset }

// probeName cannot be a lock name (it holds a NUL), so detection never touches a lock.
const probeName = "\x00shylock-probe"

// detect reports whether the server takes the server-clock acquire, by sending one for a record
// of the backend's own. Only an answer that the server lacks the feature selects the estimate;
// any other failure fails New, as does a reply that is not the record such an acquire leaves.
func (b *Backend) detect(ctx context.Context) (bool, error) {
	req := shylock.AcquireRequest{Name: probeName, Owner: ownerid.New(), Label: probeLabel, TTL: shylock.MinTTL}
	deadline, err := b.attemptDeadline(ctx, req.Owner)
	if err != nil {
		return false, fmt.Errorf("mongo: New: %w", err)
	}
	rec, err := b.upsert(ctx, req, deadline)
	switch {
	case lacksFeature(err):
		b.log.Debug("shylock/mongo: the server has no aggregation-pipeline updates with $$NOW; expiry is judged with an estimate of its clock",
			"collection", b.coll.Name(), "err", err)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("mongo: New: trying a server-clock acquire on %s: %w", b.coll.Name(), err)
	case rec.Label != probeLabel || rec.Owner == "" || rec.Token <= 0 || !rec.ExpiresAt.After(rec.RenewedAt):
		return false, fmt.Errorf("mongo: New: the server answered a server-clock acquire on %s with %+v, not the record it should leave; "+
			"pass WithServerClock(false) to judge expiry with an estimate of its clock", b.coll.Name(), rec)
	}
	return true, nil // taken by this probe, or held by another backend's
}

const probeLabel = "shylock server-clock probe"

var (
	_ shylock.Backend  = (*Backend)(nil)
	_ shylock.Notifier = (*Backend)(nil)
)
