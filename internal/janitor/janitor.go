// Package janitor runs the clean-up that must outlive the call that needed it: removing what an
// acquire attempt of unknown outcome may have written, and releasing a holding its caller could
// not wait for. A backend owns one Janitor; Close ends the work still running and waits for it,
// so no goroutine outlives the backend, and no caller waits for a server that does not answer.
package janitor

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/backoff"
)

// Janitor is the background work of one backend. The zero value is not usable; call New.
type Janitor struct {
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
}

// New returns a Janitor that reports releases it could not make to log (nil: slog.Default()).
func New(log *slog.Logger) *Janitor {
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Janitor{log: log, ctx: ctx, cancel: cancel}
}

// Close abandons the work still running and returns once none runs. What it abandons expires at
// its TTL.
func (j *Janitor) Close() {
	j.mu.Lock()
	j.closed = true
	j.mu.Unlock()
	j.cancel()
	j.wg.Wait()
}

// Release is one release of a holding; it returns an error matching shylock.ErrNotHeld when
// there is nothing to release.
type Release func(ctx context.Context) error

// Undo releases name for owner in the background: at once, and again once settle returns (it
// waits until no attempt of owner still in flight can take effect; nil when none can be). Each
// release is retried with backoff while it fails in a way a retry may cure, for at most limit
// in all; a release that never got through is logged, since the lock then stays taken until it
// expires.
func (j *Janitor) Undo(name string, limit time.Duration, release Release, settle func(ctx context.Context) error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return
	}
	j.wg.Add(1)
	go func() {
		defer j.wg.Done()
		ctx, cancel := context.WithTimeout(j.ctx, limit)
		defer cancel()
		err := retry(ctx, release)
		if err == nil && settle != nil {
			if err = settle(ctx); err == nil {
				err = retry(ctx, release)
			}
		}
		if err != nil && j.ctx.Err() == nil {
			j.log.Warn("shylock: could not release in the background; the lock expires by itself",
				"name", name, "err", err)
		}
	}()
}

// retry calls release until it succeeds, finds nothing to release, fails in a way no retry
// cures, or ctx ends.
func retry(ctx context.Context, release Release) error {
	bo := backoff.New(25*time.Millisecond, time.Second)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		err := release(ctx)
		switch {
		case err == nil || errors.Is(err, shylock.ErrNotHeld):
			return nil
		case errors.Is(err, shylock.ErrClosed) || errors.Is(err, shylock.ErrRefused):
			return err
		}
		t.Reset(bo.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			return err
		}
	}
}

// Sleep waits d, or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
