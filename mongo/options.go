package mongo

import (
	"fmt"
	"log/slog"
	"math"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
)

// Defaults of the options.
const (
	// DefaultMaxClockOffset is the clock offset allowed for between the servers that stamp
	// lock times, where there are several (a replica set, a sharded cluster). It is
	// CockroachDB's default maximum offset, far above what NTP keeps between servers.
	DefaultMaxClockOffset = 500 * time.Millisecond

	// DefaultGracePeriod is how long released and expired lock records are kept before the
	// TTL index deletes them.
	DefaultGracePeriod = 24 * time.Hour
)

// Option configures New.
type Option func(*settings)

type settings struct {
	log         *slog.Logger
	now         func() time.Time
	wc          *writeconcern.WriteConcern
	rc          *readconcern.ReadConcern
	streams     bool
	events      bool
	offset      *time.Duration // nil: decided by the topology
	grace       time.Duration
	serverClock *bool // nil: detected
	readOnly    bool
	err         error // the first invalid option
}

func (s *settings) invalid(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("mongo: "+format, args...)
	}
}

// WithLogger sets where the backend says, once and at debug level, which server features it
// fell back from, and reports change-stream failures. The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(s *settings) {
		if l == nil {
			s.invalid("WithLogger(nil)")
		}
		s.log = l
	}
}

// WithClock replaces the client clock the backend uses to extrapolate its estimate of the
// server's clock. Only differences of its readings matter, so a clock that is off by a constant
// changes nothing; tests use it to prove that.
func WithClock(now func() time.Time) Option { return func(s *settings) { s.now = now } }

// WithWriteConcern replaces the default write concern (majority, journaled). A weaker one makes
// acquires faster on a replica set, but an acknowledged acquire may then be rolled back by a
// failover and the lock granted twice.
func WithWriteConcern(wc *writeconcern.WriteConcern) Option { return func(s *settings) { s.wc = wc } }

// WithReadConcern replaces the default read concern (majority) of Inspect, List and the
// waiters' polls. A weaker one may show a lock that a failover will roll back. Change streams
// always read at majority, the only level they accept.
func WithReadConcern(rc *readconcern.ReadConcern) Option { return func(s *settings) { s.rc = rc } }

// WithChangeStreams turns the use of change streams for waking waiters on or off (default on
// where the server supports them: replica sets and sharded clusters). Off, waiters poll.
func WithChangeStreams(on bool) Option { return func(s *settings) { s.streams = on } }

// WithReleaseEvents turns release events on or off (default on where the server has no change
// streams but keeps tailable cursors open: a standalone mongod, FerretDB 1.x). On, every release
// also inserts one small document into the capped collection "<collection>.events", and the
// waiters of every process that reads it wake within a few round trips of a release in any
// process; idle, each backend with waiters keeps one cursor waiting on the server. Off, waiters
// in other processes notice a release by polling. All processes on a collection should agree.
func WithReleaseEvents(on bool) Option { return func(s *settings) { s.events = on } }

// WithMaxClockOffset sets how far apart the clocks of the servers that stamp lock times may be.
// On a sharded cluster each mongos reads its own clock, and after a failover the new primary
// reads its own, so a lease stamped by one server is judged by another. A takeover then needs
// the record expired by more than d, and a holder trusts its lease for the TTL less d: the two
// allowances together survive clocks up to 2d apart.
//
// The default is DefaultMaxClockOffset (500ms) on replica sets and sharded clusters, and 0 on a
// single server, whose one clock stamps and judges every lease. Rule of thumb: at least twice
// the largest offset your time synchronisation has been seen to allow, and well below the TTLs
// you use (a TTL must be longer than d; an acquire with a shorter one fails with ErrInvalidTTL).
func WithMaxClockOffset(d time.Duration) Option {
	return func(s *settings) {
		if d < 0 {
			s.invalid("WithMaxClockOffset(%v): the offset must not be negative", d)
		}
		s.offset = &d
	}
}

// WithGracePeriod sets how long released and expired lock records are kept before the TTL index
// deletes them (default DefaultGracePeriod, a day; whole seconds). A record remembers its name's
// last fencing token; once it is deleted, the next holder's token starts from the server's clock
// in microseconds, which is above every earlier token unless that clock has stepped back by more
// than the grace period. Rule of thumb: far longer than any clock correction you expect, and
// short enough that records of names nobody uses again do not pile up.
func WithGracePeriod(d time.Duration) Option {
	return func(s *settings) {
		if d < time.Second || d > math.MaxInt32*time.Second {
			s.invalid("WithGracePeriod(%v): the grace period must be between a second and 68 years", d)
		}
		s.grace = d
	}
}

// WithServerClock skips the detection New makes of whether the server evaluates $$NOW in
// aggregation-pipeline updates (MongoDB 4.4 and later do). true always judges expiry with the
// server's own clock: on a server without pipeline updates every acquire then fails with
// ErrRefused. false always judges it with an estimate of the server's clock taken from its hello
// replies, which holds only for a single server (use it where the server's pipeline updates
// misbehave). Without this option New sends one acquire of a record of its own to find out.
func WithServerClock(on bool) Option { return func(s *settings) { s.serverClock = &on } }

// WithReadOnly makes a backend for tools that only look (Inspect, List): New writes nothing (no
// index, no probe, no events collection) and fails if the collection does not exist, and every
// operation that would write fails with ErrRefused.
func WithReadOnly() Option { return func(s *settings) { s.readOnly = true } }
