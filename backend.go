package shylock

import (
	"context"
	"time"
)

// Backend stores locks. The mongo, arango and memory packages implement it; any implementation
// must pass shylocktest.Run. Users normally hand a Backend to Configure and never call it
// directly, except for the administrative Inspect, List and ForceRelease.
//
// Every method validates its input with ValidateName and ValidateTTL before any I/O. Expiry is
// always judged by the backend's clock (the database server's), never by the caller's.
// Implementations must be safe for concurrent use. An error that no retry can cure (a command
// the server refuses, a missing permission) wraps ErrRefused; after Close, or once the database
// client is closed, errors wrap ErrClosed; a request that surely had no effect (it never left the
// process) fails with an error wrapping ErrUnavailable. Any other error is taken to be transient,
// and an Acquire that returned one may have been applied.
//
// Every method returns by its context's deadline. The Lock gives each request a deadline at
// most AttemptTimeout away; an acquire attempt must not take effect after its context's
// deadline where the backend can make the server enforce that (see Abandon).
type Backend interface {
	// Acquire makes one attempt to take req.Name for req.Owner. It succeeds when nobody holds
	// the name, when the holder's lease has expired, or when req.Owner already holds it (a retry
	// after an ambiguous write recognises its own lock; the new label replaces the old one).
	// Each success issues a fencing token greater than every token issued before for that name,
	// except that a holder taking its own lock again keeps its token and acquisition time: no
	// other holding came between. It returns an error wrapping ErrLocked when another owner
	// holds the name, and changes nothing then but req's place in the name's queue.
	//
	// Turns are fair across processes: each name has a queue of parties (see
	// AcquireRequest.Queue), each entry with the time it joined and a lease of QueueLease. An
	// attempt refused while req.Wait puts req.Queue in the queue, or renews its entry there,
	// unless the holding that refused it is req.Queue's own (its turn goes on); an attempt
	// takes a lock that nobody holds only when no live entry of another party joined before
	// req.Queue's (a refusal then is a HeldError with Queued set), and taking it removes
	// req.Queue's entry, so that its next waiter joins at the end. Entries whose lease ran out
	// by the backend's clock count for nothing. So a party that has the lock to itself keeps
	// no entry, and pays nothing for the queue.
	Acquire(ctx context.Context, req AcquireRequest) (Lease, error)

	// Extend sets the expiry of the holding (name, owner, token) to ttl from now. It returns an
	// error wrapping ErrNotHeld, and changes nothing, when that holding has expired, was
	// released, or was taken over. Extending the same holding twice is harmless, so a renewal
	// whose reply was lost can be retried.
	Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (Lease, error)

	// Release frees name if owner still has it. Token 0 matches any holding of owner, which lets
	// a cancelled acquire remove what it may have written without knowing its token. It returns
	// an error wrapping ErrNotHeld, and changes nothing, when owner has nothing to release.
	Release(ctx context.Context, name, owner string, token uint64) error

	// Inspect reads the state of one lock. A name that was never locked, or whose record was
	// garbage-collected, gives Info{Name: name}.
	Inspect(ctx context.Context, name string) (Info, error)

	// List returns the records whose names start with prefix (literally: no pattern syntax),
	// sorted by name. Released and expired records that still exist are included with
	// Held false. A prefix that no name could start with (see ValidatePrefix) is an error
	// matching ErrInvalidName.
	List(ctx context.Context, prefix string) ([]Info, error)

	// ForceRelease frees name whoever holds it, for operators. The fencing sequence continues,
	// so the next holder's token is still greater. It returns the record as it was before, and
	// an error wrapping ErrNotHeld if nobody held the name.
	ForceRelease(ctx context.Context, name string) (Info, error)

	// Abandon takes over what a caller gives up without knowing the outcome: acquire attempts
	// of owner whose replies never came, or a holding of owner that could not be released
	// within the caller's context. It returns at once. In the background, bounded by about ttl
	// and stopped by the backend's Close, it releases whatever owner holds of name, retrying
	// while that may help, and once more when no attempt of owner still in flight can take
	// effect: at once where nothing can be in flight (process memory), after each attempt's
	// deadline where the server enforces it, after a fixed delay where it cannot. Owner ids are
	// never reused, so Abandon can only ever remove that owner's own holding.
	Abandon(name, owner string, ttl time.Duration)
}

// AcquireRequest is one acquire attempt.
type AcquireRequest struct {
	Name  string        // the lock's name
	Owner string        // random id of this holding; only it can extend or release
	Label string        // human-readable description of the holder, stored for operators
	TTL   time.Duration // how long the lease lasts without renewal

	// Queue is the party the attempt stands in line for: the Lock sets it to an id of its
	// process, which all its waiters share, so that turns alternate between processes while
	// each process hands the lock to its own waiters in the order they came. Empty: the
	// attempt has no place in any queue and gets no turn while another party waits.
	Queue string
	// Wait says that the caller waits for the lock if refused: the refusal puts Queue in
	// the name's queue, or renews its entry.
	Wait bool
}

// QueueLease is how long an entry in a lock's queue lasts unless renewed. A waiting process
// renews its entries every QueueLease/3, so a process that died blocks nobody for longer, and
// a waiter that gives up removes its process's entry at once when it was the last one waiting.
const QueueLease = 6 * time.Second

// Lease is the outcome of a successful Acquire or Extend.
type Lease struct {
	// Token is the fencing token of the holding.
	Token uint64
	// ExpiresAt is when the lease expires, by the backend's clock.
	ExpiresAt time.Time
	// Valid is how long after the request was sent the holder may consider the lock its own. It
	// is at most the TTL, less any uncertainty about the backend's clock, so a holder that
	// stops trusting its lock after Valid never overlaps with the next holder. (Lock trusts it
	// 1% + 2ms less still, for its own clock and timers.)
	Valid time.Duration
}

// Info describes a lock record, for Inspect and List.
type Info struct {
	Name       string
	Owner      string // owner id of the holding; empty once released
	Label      string // the holder's label (see WithOwner)
	Token      uint64 // fencing token of the current or last holding (or of the release that ended it, where a release takes one)
	AcquiredAt time.Time
	RenewedAt  time.Time
	ExpiresAt  time.Time // by the backend's clock
	// Held reports whether the lock was held when it was read: owned and not expired by the
	// backend's clock.
	Held bool
	// Remaining is how long the lease had left when it was read, 0 when not held.
	Remaining time.Duration
}

// Notifier is implemented by backends that can tell waiters when a lock may have become free,
// so that any number of waiters on one name in one process share a single watcher or poller
// instead of each polling the server. Backends without it are polled by every waiter.
type Notifier interface {
	// Subscribe starts watching name. A value arrives on the subscription's channel whenever the
	// lock may have become free: released in this process, released in another as a
	// notification channel of the backend's (a change stream, release events) reports, or found
	// free or expired by the shared poller, which polls with jittered exponential backoff
	// between minPoll and maxPoll (at least 10s apart while a channel pushes every release) and
	// wakes no later than the holder's expiry plus one poll. The poller of a name that had no
	// subscriber probes at once, so a release between a failed attempt and the subscription is
	// not missed; Lock subscribes only after its first attempt failed, so that an uncontended
	// acquire costs the attempt alone. After the backend's Close, C receives a value at once.
	Subscribe(name string, minPoll, maxPoll time.Duration) Subscription
}

// Subscription is a Notifier's registration for one waiter.
type Subscription interface {
	// C receives a value when the lock may have become free. Values coalesce: one pending
	// value stands for any number of changes.
	C() <-chan struct{}
	// Missed tells the watcher that an attempt made after a value from C found the lock held
	// by another owner: the holder changed since the watcher last looked, and it must learn the
	// new holder's expiry to wake the waiter no later than that plus one poll.
	Missed()
	// Close ends the subscription; the shared watcher stops when its last subscriber leaves.
	Close()
}
