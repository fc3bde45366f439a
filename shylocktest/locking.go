package shylocktest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// testMutualExclusion has 50 goroutines contend for one name and fails if two are ever inside
// the critical section at once, or if tokens do not increase in the order of holding.
func testMutualExclusion(t *testing.T, s *suite) {
	const workers, rounds = 50, 2
	// A loaded machine stretches the 100 holdings from a second to well over the suite's
	// minute, so the bound is on a stall: no holding for longer than any holding takes there.
	ctx, progress, cancel := progressContext(context.WithoutCancel(s.ctx), 30*time.Second)
	defer cancel()
	var (
		inside atomic.Int32
		mu     sync.Mutex
		tokens []uint64
		wg     sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				l := s.lock("contended", shylock.WithTTL(20*time.Second), shylock.WithRetry(5*time.Millisecond, 50*time.Millisecond))
				if err := l.Acquire(ctx); err != nil {
					t.Errorf("worker %d round %d: Acquire: %v (%v)", w, r, err, context.Cause(ctx))
					return
				}
				progress()
				if n := inside.Add(1); n != 1 {
					t.Errorf("worker %d round %d: %d holders at once", w, r, n)
				}
				mu.Lock()
				tokens = append(tokens, l.Token())
				mu.Unlock()
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				if err := l.Release(ctx); err != nil {
					t.Errorf("worker %d round %d: Release: %v", w, r, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(tokens) != workers*rounds {
		t.Fatalf("%d holdings, want %d", len(tokens), workers*rounds)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("holding %d got token %d after token %d; tokens must strictly increase", i, tokens[i], tokens[i-1])
		}
	}
}

// testTryAcquireRace has goroutines race TryAcquire on names nobody has used yet, so that their
// first attempts meet while the record is being created. Exactly one wins each name; every
// other one must be told (false, nil), not an error: a blocking Acquire would hide such errors
// behind its retries. The one error allowed is ErrUnavailable, "nothing was changed", which an
// overloaded server (or a starved client, whose driver then leaves the server no time) gives
// whatever the race; a name whose racers met it may have no winner.
func testTryAcquireRace(t *testing.T, s *suite) {
	const names, racers = 5, 8
	for n := range names {
		name := fmt.Sprintf("fresh-%d", n)
		var (
			wins, unavailable atomic.Int32
			wg                sync.WaitGroup
			start             = make(chan struct{})
		)
		for r := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				ok, err := s.lock(name, shylock.WithTTL(time.Minute)).TryAcquire(s.ctx)
				switch {
				case errors.Is(err, shylock.ErrUnavailable):
					unavailable.Add(1)
					t.Logf("%s: racer %d: %v", name, r, err)
				case err != nil:
					t.Errorf("%s: racer %d: TryAcquire = %v, %v; a loser must get false, nil", name, r, ok, err)
				}
				if ok {
					wins.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if w := wins.Load(); w > 1 || w == 0 && unavailable.Load() == 0 {
			t.Errorf("%s: %d of %d racers acquired a fresh name; want exactly 1", name, w, racers)
		}
	}
}

func testTryAcquireWhileHeld(t *testing.T, s *suite) {
	a, b := s.lock("x"), s.lock("x")
	s.mustAcquire(t, a)
	ok, err := b.TryAcquire(s.ctx)
	if ok || err != nil {
		t.Fatalf("TryAcquire while another holds it = %v, %v; want false, nil", ok, err)
	}
	if b.Held() || b.Token() != 0 {
		t.Fatalf("the loser reports Held=%v Token=%d; want false, 0", b.Held(), b.Token())
	}
	// What the refusing attempt saw of the holding, as far as the backend reports it.
	if h, ok := b.Holder(); !ok || (h.Token != 0 && h.Token != a.Token()) {
		t.Fatalf("the loser's Holder = %+v, %v; want the holding of token %d", h, ok, a.Token())
	}
	if !a.Held() || a.Token() == 0 {
		t.Fatalf("the holder reports Held=%v Token=%d; want true and a token", a.Held(), a.Token())
	}
	if err := a.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if a.Held() || a.Token() != 0 {
		t.Fatalf("after Release: Held=%v Token=%d; want false, 0", a.Held(), a.Token())
	}
	s.mustAcquire(t, b)
	if err := b.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// testTakeoverAfterExpiry lets a lease run out and checks that a waiter takes over at the
// holder's expiry (its polling bounds are far longer, so only the expiry hint can wake it in
// time), and that the old holder is told.
func testTakeoverAfterExpiry(t *testing.T, s *suite) {
	s.withLongerLeases(t, func(s *suite, scale time.Duration) string {
		ttl := scale * 200 * time.Millisecond
		a := s.lock("x", shylock.WithTTL(ttl))
		start := time.Now()
		if why := s.acquireWithin(t, a, ttl); why != "" {
			return why
		}
		b := s.lock("x", shylock.WithRetry(20*time.Second, 30*time.Second))
		ok, err := b.TryAcquire(s.ctx)
		if took := time.Since(start); ok && err == nil && took >= ttl {
			_ = b.Release(s.ctx)
			return fmt.Sprintf("the waiter's first attempt came %v after the holder's began, past its %v lease", took, ttl)
		}
		if ok || err != nil {
			t.Fatalf("TryAcquire before expiry = %v, %v; want false, nil", ok, err)
		}
		if err := b.Acquire(s.ctx); err != nil {
			t.Fatalf("Acquire after the holder's lease ran out: %v", err)
		}
		// The holder's own timer ends its lease before the backend's expiry; only a stalled
		// process runs it later than this.
		if !closedWithin(a.Lost(), scale*time.Second) {
			t.Fatal("the expired holder's Lost() is not closed after another owner took over")
		}
		if a.Held() {
			t.Fatal("the expired holder still reports Held")
		}
		if b.Token() <= a.Token() {
			t.Fatalf("takeover token %d is not above the expired holder's %d", b.Token(), a.Token())
		}
		wantErr(t, "Extend by the expired holder", a.Extend(s.ctx, time.Minute), shylock.ErrNotHeld, shylock.ErrLost)
		wantErr(t, "Release by the expired holder", a.Release(s.ctx), shylock.ErrNotHeld, shylock.ErrLost)
		if info := s.inspect(t, b.Name()); !info.Held || info.Token != b.Token() {
			t.Fatalf("after the late Release the lock is %+v; the new holder (token %d) must still hold it", info, b.Token())
		}
		if err := b.Release(s.ctx); err != nil {
			t.Fatalf("Release by the new holder: %v", err)
		}
		return ""
	})
}

// testOwnerOnly checks at the Backend level that nobody but the holding owner can extend or
// release, and that such attempts change nothing.
func testOwnerOnly(t *testing.T, s *suite) {
	name := s.name("x")
	lease, err := s.b.Acquire(s.ctx, shylock.AcquireRequest{Name: name, Owner: "owner-a", Label: "a", TTL: time.Minute})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if lease.Token == 0 || lease.Valid <= 0 || lease.Valid > time.Minute {
		t.Fatalf("lease %+v: want a token and 0 < Valid <= TTL", lease)
	}
	_, err = s.b.Acquire(s.ctx, shylock.AcquireRequest{Name: name, Owner: "owner-b", Label: "b", TTL: time.Minute})
	wantErr(t, "Acquire by another owner", err, shylock.ErrLocked)
	wantErr(t, "Release by another owner", s.b.Release(s.ctx, name, "owner-b", 0), shylock.ErrNotHeld)
	wantErr(t, "Release with the wrong token", s.b.Release(s.ctx, name, "owner-a", lease.Token+1), shylock.ErrNotHeld)
	_, err = s.b.Extend(s.ctx, name, "owner-b", lease.Token, time.Hour)
	wantErr(t, "Extend by another owner", err, shylock.ErrNotHeld)
	_, err = s.b.Extend(s.ctx, name, "owner-a", lease.Token+1, time.Hour)
	wantErr(t, "Extend with the wrong token", err, shylock.ErrNotHeld)
	_, err = s.b.Extend(s.ctx, name, "", lease.Token, time.Hour)
	wantErr(t, "Extend with an empty owner", err, shylock.ErrNotHeld)
	wantErr(t, "Release with an empty owner", s.b.Release(s.ctx, name, "", 0), shylock.ErrNotHeld)

	info := s.inspect(t, name)
	if !info.Held || info.Owner != "owner-a" || info.Token != lease.Token || info.Remaining > time.Minute+time.Second {
		t.Fatalf("after refused calls the lock is %+v; want held by owner-a, token %d, at most a minute left", info, lease.Token)
	}
	ext, err := s.b.Extend(s.ctx, name, "owner-a", lease.Token, 2*time.Minute)
	if err != nil || ext.Token != lease.Token {
		t.Fatalf("Extend by the owner = %+v, %v; want the same token", ext, err)
	}
	if info := s.inspect(t, name); info.Remaining <= time.Minute {
		t.Fatalf("after Extend(2m) %v remain; want more than a minute", info.Remaining)
	}
	if err := s.b.Release(s.ctx, name, "owner-a", lease.Token); err != nil {
		t.Fatalf("Release by the owner: %v", err)
	}
	wantErr(t, "second Release", s.b.Release(s.ctx, name, "owner-a", lease.Token), shylock.ErrNotHeld)
	_, err = s.b.Extend(s.ctx, name, "owner-a", lease.Token, time.Minute)
	wantErr(t, "Extend after Release", err, shylock.ErrNotHeld)
}

// testRetryRecognisesOwnLock repeats an acquire whose reply the caller never saw: the backend
// must hand the lock back to the same owner rather than make it wait for its own TTL.
func testRetryRecognisesOwnLock(t *testing.T, s *suite) {
	req := shylock.AcquireRequest{Name: s.name("x"), Owner: "owner-a", Label: "a", TTL: time.Minute}
	first, err := s.b.Acquire(s.ctx, req)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	again, err := s.b.Acquire(s.ctx, req)
	if err != nil {
		t.Fatalf("repeated Acquire by the same owner: %v; it must recognise its own lock", err)
	}
	if again.Token != first.Token {
		t.Fatalf("repeated Acquire gave token %d after %d; the holding goes on and keeps its token", again.Token, first.Token)
	}
	// The holder takes its lock again with another label: the lock stays its own, relabelled,
	// with the same token and acquisition time.
	before := s.inspect(t, req.Name)
	req.Label = "a, relabelled"
	relabelled, err := s.b.Acquire(s.ctx, req)
	if err != nil {
		t.Fatalf("Acquire by the holder with a new label: %v", err)
	}
	info := s.inspect(t, req.Name)
	if !info.Held || info.Owner != req.Owner || info.Label != req.Label || relabelled.Token != first.Token ||
		info.Token != first.Token || !info.AcquiredAt.Equal(before.AcquiredAt) {
		t.Fatalf("after the holder took its lock again with a new label: %+v (token %d); want it relabelled, token %d, acquired at %v",
			info, relabelled.Token, first.Token, before.AcquiredAt)
	}
	if err := s.b.Release(s.ctx, req.Name, req.Owner, 0); err != nil {
		t.Fatalf("Release with token 0 (any holding of the owner): %v", err)
	}
	if info := s.inspect(t, req.Name); info.Held {
		t.Fatalf("after Release the lock is %+v", info)
	}
}

func testFencingTokens(t *testing.T, s *suite) {
	var last uint64
	next := func(how string, tok uint64) {
		t.Helper()
		if tok <= last {
			t.Fatalf("%s: token %d is not above the previous %d", how, tok, last)
		}
		last = tok
	}
	for i := range 5 {
		l := s.lock("x")
		s.mustAcquire(t, l)
		next("acquire after release", l.Token())
		if i == 0 {
			if err := l.Extend(s.ctx, time.Minute); err != nil || l.Token() != last {
				t.Fatalf("Extend = %v and token %d; want nil and the same token %d", err, l.Token(), last)
			}
		}
		if err := l.Release(s.ctx); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	short := s.lock("x", shylock.WithTTL(500*time.Millisecond)) // an attempt slower than that fails
	s.mustAcquire(t, short)
	next("acquire", short.Token())
	if !closedWithin(short.Lost(), 5*time.Second) {
		t.Fatal("a 500ms lease without renewal was not reported lost within 5s")
	}
	waiter := s.lock("x")
	if err := waiter.Acquire(s.ctx); err != nil {
		t.Fatalf("Acquire after expiry: %v", err)
	}
	next("takeover after expiry", waiter.Token())
	if _, err := s.b.ForceRelease(s.ctx, waiter.Name()); err != nil {
		t.Fatalf("ForceRelease: %v", err)
	}
	after := s.lock("x")
	s.mustAcquire(t, after)
	next("acquire after ForceRelease", after.Token())
	if err := after.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}
