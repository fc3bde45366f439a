package arango

import (
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Defaults of the options.
const (
	// DefaultMaxClockOffset is the clock offset allowed for between the coordinators and
	// DB-Servers of a cluster, which each read their own clock. It is CockroachDB's default
	// maximum offset, far above what NTP keeps between servers.
	DefaultMaxClockOffset = 500 * time.Millisecond

	// DefaultGracePeriod is how long released and expired lock records are kept before the
	// TTL index deletes them.
	DefaultGracePeriod = 24 * time.Hour
)

// Option configures New.
type Option func(*settings)

type settings struct {
	log               *slog.Logger
	readOnly          bool
	offset            *time.Duration // nil: decided by whether the server is a cluster
	grace             time.Duration
	replicationFactor int
	writeConcern      int
	err               error // the first invalid option
}

func (s *settings) invalid(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("arango: "+format, args...)
	}
}

// WithLogger sets where the backend reports what it set up. The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(s *settings) {
		if l == nil {
			s.invalid("WithLogger(nil)")
		}
		s.log = l
	}
}

// WithReadOnly makes a backend for tools that only look (Inspect, List): New creates nothing and
// fails if the collection does not exist, and every operation that would write fails with
// ErrRefused.
func WithReadOnly() Option { return func(s *settings) { s.readOnly = true } }

// WithMaxClockOffset sets how far apart the clocks of the servers that evaluate DATE_NOW() may
// be. In a cluster each coordinator and DB-Server reads its own clock, so a lease stamped by one
// is judged by another. A takeover then needs the record expired by more than d, and a holder
// trusts its lease for the TTL less d: together they survive clocks up to 2d apart.
//
// The default is DefaultMaxClockOffset (500ms) in a cluster and 0 on a single server. Rule of
// thumb: at least twice the largest offset your time synchronisation has been seen to allow, and
// well below the TTLs you use (a TTL must be longer than d).
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
// than the grace period. Rule of thumb: far longer than any clock correction you expect.
func WithGracePeriod(d time.Duration) Option {
	return func(s *settings) {
		if d < time.Second || d > math.MaxInt32*time.Second {
			s.invalid("WithGracePeriod(%v): the grace period must be between a second and 68 years", d)
		}
		s.grace = d
	}
}

// WithReplicationFactor sets the replication factor New gives the collection when it creates it
// in a cluster (default: the database's). Use at least 2, so that losing a DB-Server loses no
// lock; an existing collection is left as it is.
func WithReplicationFactor(n int) Option {
	return func(s *settings) {
		if n < 1 {
			s.invalid("WithReplicationFactor(%d): it must be at least 1", n)
		}
		s.replicationFactor = n
	}
}

// WithWriteConcern sets the write concern New gives the collection when it creates it in a
// cluster: how many copies of a shard must be in sync before a write is acknowledged (default:
// the database's). Use at least 2 with a replication factor of at least 2, so that an
// acknowledged acquire survives losing a DB-Server; an existing collection is left as it is.
func WithWriteConcern(n int) Option {
	return func(s *settings) {
		if n < 1 {
			s.invalid("WithWriteConcern(%d): it must be at least 1", n)
		}
		s.writeConcern = n
	}
}
