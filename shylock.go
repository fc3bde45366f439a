// Package shylock provides distributed locks stored in the database a service already has:
// MongoDB (package mongo), ArangoDB (package arango), or process memory (package memory).
//
// Configure a backend once at start-up, then lock anywhere:
//
//	shylock.Configure(backend)
//	err := shylock.Do(ctx, "orders/42", func(ctx context.Context) error {
//		return charge(ctx, 42) // ctx is cancelled if the lock is lost
//	})
//
// or hold a Lock by hand:
//
//	l := shylock.New("reports/nightly", shylock.WithTTL(time.Minute))
//	if err := l.Acquire(ctx); err != nil { ... }
//	defer l.Release(context.WithoutCancel(ctx))
//
// A lock is a record with a unique name, a random owner id per holding, a fencing token and an
// expiry. What the library guarantees:
//
//   - At most one holder per name at any instant of the database server's time.
//   - Expiry is decided by the server's clock when acquiring, never by the client's, and never
//     left to the database's TTL garbage collector alone.
//   - Only the holding that acquired a lock can extend or release it; a late release after a
//     takeover changes nothing and returns ErrNotHeld.
//   - Fencing tokens (Lock.Token) strictly increase per name, across release, expiry, takeover
//     and deletion of the record, so a resource can reject writes from a paused old holder.
//   - A cancelled Acquire leaves no lock behind, even when its write reached the server and only
//     the reply was lost.
//   - Waiting is cheap and quick: the waiters of one name in one process share one poller, and a
//     release in another process reaches them through the backend's notification channel (a
//     change stream, or release events on other MongoDB-wire servers) where it has one.
//
// What it cannot guarantee: that a holder stops working the instant its lease ends. A process
// that pauses (GC, SIGSTOP, a slow disk) past its TTL keeps running code it believes is
// protected. Watch Lost (or the context Do passes), keep TTLs well above expected pauses, and
// pass Token to resources that can reject stale writers.
package shylock

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
)

type processDefaults struct {
	backend Backend
	opts    []Option
}

var defaults atomic.Pointer[processDefaults]

// Configure sets the backend (and default options) that New and Do use when no WithBackend is
// given. Call it once at start-up; it is safe for concurrent use, and a later call replaces the
// defaults for locks acquired after it. Configure(nil) removes the default backend.
func Configure(b Backend, opts ...Option) {
	defaults.Store(&processDefaults{backend: b, opts: slices.Clone(opts)})
}

// Default returns the backend set by Configure, or nil.
func Default() Backend {
	if d := defaults.Load(); d != nil {
		return d.backend
	}
	return nil
}

// New returns a handle on the lock called name. It does no I/O, and options are checked, and the
// default backend looked up, when the lock is acquired: a New at package level before Configure
// works. Any string that passes ValidateName is a name, used as a value, never as query syntax.
//
// A Lock is safe for concurrent use, but it is one holder: acquire it again only after Release.
// Use one Lock per goroutine that competes for the name.
func New(name string, opts ...Option) *Lock {
	return &Lock{name: name, opts: slices.Clone(opts), lost: make(chan struct{})}
}

type tokenKey struct{}

// TokenFrom returns the fencing token of the lock that Do holds while it runs fn, from fn's
// context. It reports false for any other context.
func TokenFrom(ctx context.Context) (uint64, bool) {
	t, ok := ctx.Value(tokenKey{}).(uint64)
	return t, ok
}

// Do acquires the lock called name (waiting while ctx allows), runs fn, and releases the lock,
// also when fn returns an error or panics. The lock is renewed automatically while fn runs (pass
// WithAutoRenew(false) to turn that off). If the lock is lost, fn's context is cancelled with
// cause ErrLost and Do's error matches ErrLost; fn should then stop touching the protected
// resource. TokenFrom(ctx) gives fn the holding's fencing token.
//
// fn's own error is returned as it is, joined with any release error. When fn returned nil but
// the lock was lost while it ran, Do's error matches both ErrLost and ErrWorkDone: the work was
// done, perhaps not alone, and retrying it would do it twice. Do returns by ctx's deadline: a
// release it cannot make by then (ctx has ended, or the backend does not answer) is left to the
// backend, which makes it in the background.
func Do(ctx context.Context, name string, fn func(ctx context.Context) error, opts ...Option) (err error) {
	l := New(name, append([]Option{WithAutoRenew(true)}, opts...)...)
	if err := l.Acquire(ctx); err != nil {
		return err
	}
	fnCtx, cancel := context.WithCancelCause(context.WithValue(ctx, tokenKey{}, l.Token()))
	stop, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-l.Lost():
			cancel(l.errorf("hold", ErrLost))
		case <-stop:
		}
	}()
	returned := false // fn returned rather than panicked
	defer func() {
		close(stop)
		<-watched
		cancel(nil)
		var rerr error
		select {
		case <-l.Lost(): // nothing to wait for: the lease has ended
		default:
			if ctx.Err() == nil {
				rerr = l.Release(ctx)
			}
		}
		if l.holding() {
			rerr = l.handOff()
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, ErrLost) && errors.Is(err, ErrLost): // fn has said so already
		case returned && err == nil && errors.Is(rerr, ErrLost):
			err = join(ErrWorkDone, rerr)
		default:
			err = join(err, rerr)
		}
	}()
	err = fn(fnCtx)
	returned = true
	return err
}
