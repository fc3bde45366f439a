package shylock

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/shylock-go/shylock/internal/quote"
)

// Sentinel errors. Every error returned by this package and its backends wraps at most a few of
// these, so callers match them with errors.Is; the message around them says which lock and what
// to do.
var (
	// ErrNotHeld means the caller does not hold the lock: it never acquired it, already released
	// it, or lost it (then the error matches ErrLost too). A late Release or Extend after another
	// owner took over returns it and changes nothing.
	ErrNotHeld = errors.New("shylock: lock not held")

	// ErrLocked means someone else holds the lock. Acquire returns it joined with ctx.Err() when
	// the context ends while waiting, so both errors.Is(err, ErrLocked) and
	// errors.Is(err, context.DeadlineExceeded) hold.
	ErrLocked = errors.New("shylock: lock held by another owner")

	// ErrAlreadyHeld means this Lock holds the lock already, or another call on it is acquiring
	// it: a Lock is one holder. Release it first, or use one Lock per goroutine. It does not
	// match ErrLocked, which says that another owner holds the lock.
	ErrAlreadyHeld = errors.New("shylock: this Lock holds it already")

	// ErrLost means a lock that was held is no longer: it expired without renewal, renewal failed
	// until the lease ran out, or it was force-released and taken over. Work done under it may
	// have overlapped with the next holder; fencing tokens let a resource reject such late writes.
	ErrLost = errors.New("shylock: lock lost")

	// ErrNotConfigured means no backend was given: call Configure at start-up or pass WithBackend.
	ErrNotConfigured = errors.New("shylock: no backend configured (call shylock.Configure or use WithBackend)")

	// ErrInvalidName means a lock name was empty, longer than MaxNameLen bytes, not valid UTF-8,
	// or contained a NUL byte. Any other string is a valid name and is stored as a plain value.
	ErrInvalidName = errors.New("shylock: invalid lock name")

	// ErrInvalidTTL means a TTL was not within [MinTTL, MaxTTL].
	ErrInvalidTTL = errors.New("shylock: invalid TTL")

	// ErrRefused means the backend refused a request in a way that no retry can cure: the
	// server lacks a command the backend needs, the credentials lack a permission, or the
	// collection is set up so that it would break a guarantee. Acquire returns it at once
	// instead of waiting; the message says what to change.
	ErrRefused = errors.New("shylock: refused by the backend")

	// ErrWorkDone is joined with ErrLost by Do when fn returned nil although the lock was lost
	// while it ran (found by a renewal that came too late to stop fn, or by the release): the
	// work was done, but perhaps not alone. Do not simply retry it; ask the protected resource,
	// which the fencing token lets refuse a stale holder's writes.
	ErrWorkDone = errors.New("shylock: the work finished, but the lock was lost while it ran")

	// ErrInvalidOption means an option's value cannot work, for example WithRetry with max < min.
	ErrInvalidOption = errors.New("shylock: invalid option")

	// ErrClosed means the backend, or the database client under it, was closed. Acquire returns
	// it at once, also to a caller that was waiting; nothing was sent.
	ErrClosed = errors.New("shylock: backend closed")

	// ErrUnavailable means the backend could not be reached and the request surely had no
	// effect: it never left the process (no server could be selected, the connection was
	// refused), or the server refused it unapplied because it arrived after its deadline. A
	// failure that does not match it may have been applied.
	ErrUnavailable = errors.New("shylock: backend unavailable; nothing was changed")
)

// HeldError is the error of an acquire attempt refused because another owner holds the lock. It
// matches ErrLocked; errors.As finds it in what Acquire returns, and Lock.Holder returns it after
// TryAcquire's (false, nil). It says what the refusing attempt itself saw, with no further round
// trip; a field the backend could not see is left zero.
type HeldError struct {
	Name      string
	Label     string    // the holder's label (see WithOwner)
	Token     uint64    // the holding's fencing token
	ExpiresAt time.Time // when its lease ends, by the backend's clock
	// Queued says that nobody held the lock, but a waiter of another process had been waiting
	// longer: the turn is that process's (see Backend.Acquire).
	Queued bool
}

func (e *HeldError) Error() string {
	if e.Queued {
		return ErrLocked.Error() + ": " + quote.Name(e.Name) + " is free, but a waiter of another process came first and has the next turn"
	}
	msg := ErrLocked.Error() + ": " + quote.Name(e.Name) + " is held"
	if e.Label != "" {
		msg += fmt.Sprintf(" by %q", e.Label)
	}
	if !e.ExpiresAt.IsZero() {
		msg += " until " + e.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	return msg
}

// Unwrap makes a HeldError match ErrLocked.
func (e *HeldError) Unwrap() error { return ErrLocked }

// opError is the error of an operation on a lock. Its text names the package once, though the
// sentinels it wraps carry the package's name too.
type opError struct {
	op, name string
	err      error
}

func (e *opError) Error() string {
	return "shylock: " + e.op + " " + quote.Name(e.name) + ": " + strings.ReplaceAll(e.err.Error(), "shylock: ", "")
}

func (e *opError) Unwrap() error { return e.err }

// joined is errors.Join on one line, so that a log line stays one line.
type joined []error

func (j joined) Error() string {
	parts := make([]string, len(j))
	for i, err := range j {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

func (j joined) Unwrap() []error { return j }

// join returns the errors that are not nil as one error, or nil.
func join(errs ...error) error {
	var j joined
	for _, err := range errs {
		if err != nil {
			j = append(j, err)
		}
	}
	switch len(j) {
	case 0:
		return nil
	case 1:
		return j[0]
	}
	return j
}
