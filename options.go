package shylock

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"
)

// Defaults for the options.
const (
	DefaultTTL      = 30 * time.Second
	DefaultRetryMin = 25 * time.Millisecond
	DefaultRetryMax = 50 * time.Millisecond
)

// Option configures a Lock, Do, or (through Configure) every lock of the process. Options given
// to New or Do override those given to Configure.
type Option func(*config)

type config struct {
	backend            Backend
	ttl                time.Duration
	autoRenew          bool
	retryMin, retryMax time.Duration
	label              string
	logger             *slog.Logger
	maxHold            time.Duration
	hooks              []Hook
	err                error // the first invalid option
}

func (c *config) invalid(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
	}
}

// WithBackend makes the lock use b instead of the backend given to Configure.
func WithBackend(b Backend) Option {
	return func(c *config) { c.backend = b }
}

// WithTTL sets how long a lease lasts without renewal (default 30s). It is also how long a
// crashed holder keeps others waiting. Rule of thumb: without auto-renew, longer than the work
// plus the longest pause you expect (GC, a slow network); with auto-renew, at least three times
// the worst round trip to the database, since renewals run every TTL/3.
func WithTTL(ttl time.Duration) Option {
	return func(c *config) { c.ttl = ttl }
}

// WithAutoRenew turns automatic renewal on or off. It is on in Do and off for locks from New.
// While on, the lease is extended every TTL/3 from a goroutine that outlives the Acquire call
// and stops at Release; transient errors are retried until the lease would run out, and only
// then is the lock reported lost.
func WithAutoRenew(on bool) Option {
	return func(c *config) { c.autoRenew = on }
}

// WithMaxHold bounds how long auto-renewal may keep one holding alive (default: no bound). A
// holder that hangs, yet keeps its renewal goroutine running, then loses the lock at most d after
// acquiring it instead of holding it forever. Rule of thumb: a few times the longest run of the
// work the lock protects.
func WithMaxHold(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.invalid("WithMaxHold(%v): the bound must not be negative", d)
		}
		c.maxHold = d
	}
}

// WithRetry sets the bounds of the polling while waiting for a held lock (defaults 25ms and 50ms):
// polls start min apart and double, with jitter, up to max, and never wait beyond the holder's
// known expiry. Where one probe takes long (a server that scans the collection to answer it), the
// next waits at least twice as long as it took, so that a process's probes keep the server busy a
// third of the time at most. Where releases reach waiters by other means (a change stream, release
// events, or a backend in process memory), polls only look for expiry and lost notifications, at
// least 10s apart, and a release wakes a waiter at once. After errors, attempts back off from min
// up to max or a second, whichever is longer.
//
// Rule of thumb: max is the handoff latency you accept across processes where releases are not
// pushed (ArangoDB, FerretDB 2.x); each waiting process then sends about 1/max probes per second,
// each one query for every name it waits on, however many goroutines and names wait. Measured on
// FerretDB, the defaults give a cross-process handoff of 26 ms at the median (Python's shylock
// polls every 62.5 ms) for 25 probes a second; a max of 1s gives 447 ms for 1.3.
func WithRetry(min, max time.Duration) Option {
	return func(c *config) {
		if min <= 0 || max < min {
			c.invalid("WithRetry(%v, %v): need 0 < min <= max", min, max)
		}
		c.retryMin, c.retryMax = min, max
	}
}

// WithOwner sets the human-readable description of the holder stored on the lock, shown by
// Inspect, List and the shylock command (default "host/pid"). It identifies nothing: only the
// random owner id of each holding can release or extend it.
func WithOwner(label string) Option {
	return func(c *config) { c.label = label }
}

// WithLogger sets where the lock reports what the caller cannot see in return values: a renewal
// failing (a warning, once per renewal, then debug while it retries), and, at debug level, a
// lost lock (which Lost, Release and Do report too) and acquire attempts being retried. The
// backend logs its own clean-up and notification channels to its own logger. The default is
// slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l == nil {
			c.invalid("WithLogger(nil)")
		}
		c.logger = l
	}
}

var defaultLabel = sync.OnceValue(func() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	return host + "/" + strconv.Itoa(os.Getpid())
})

// resolve merges the process defaults and opts, then checks the result.
func resolve(name string, opts []Option) (config, error) {
	c := config{ttl: DefaultTTL, retryMin: DefaultRetryMin, retryMax: DefaultRetryMax}
	if g := defaults.Load(); g != nil {
		c.backend = g.backend
		for _, o := range g.opts {
			o(&c)
		}
	}
	for _, o := range opts {
		o(&c)
	}
	if c.label == "" {
		c.label = defaultLabel()
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	switch {
	case c.err != nil:
		return c, c.err
	case c.backend == nil:
		return c, ErrNotConfigured
	}
	if err := ValidateName(name); err != nil {
		return c, err
	}
	return c, ValidateTTL(c.ttl)
}
