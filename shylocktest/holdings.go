package shylocktest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// RunHoldings checks a backend's shylock.Holdings: a holding is found by its owner and listed
// while held, and Amend changes exactly the holding it names, never takes a lock, and never
// brings back a holding that a concurrent release ended.
func RunHoldings(t *testing.T, newBackend NewBackend) {
	t.Helper()
	prefix := "shylocktest/" + randomID() + "/"
	for _, tc := range []test{
		{"FindAndList", testHoldingsFind},
		{"AmendChangesOnlyTheHolding", testAmend},
		{"AmendNeverTakesALock", testAmendNeverTakes},
		{"AmendRacingRelease", testAmendRacingRelease},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBackend(t)
			if _, ok := b.(shylock.Holdings); !ok {
				t.Fatalf("%T does not implement shylock.Holdings", b)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			t.Cleanup(cancel)
			tc.fn(t, &suite{b: b, ctx: ctx, prefix: prefix + tc.name + "/", log: testLogger(t)})
		})
	}
}

// ownerID returns an owner id no other test uses, as Lock makes them.
func ownerID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// hold acquires name for a new owner and returns the request.
func (s *suite) hold(t *testing.T, name, label string, ttl time.Duration) (shylock.AcquireRequest, shylock.Lease) {
	t.Helper()
	req := shylock.AcquireRequest{Name: s.name(name), Owner: ownerID(), Label: label, TTL: ttl}
	lease, err := s.b.Acquire(s.ctx, req)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", req.Name, err)
	}
	return req, lease
}

// held returns the held locks of this subtest.
func (s *suite) held(t *testing.T) []shylock.Info {
	t.Helper()
	all, err := s.b.(shylock.Holdings).Held(s.ctx)
	if err != nil {
		t.Fatalf("Held: %v", err)
	}
	var out []shylock.Info
	for _, in := range all {
		if !in.Held {
			t.Fatalf("Held returned a lock that is not held: %+v", in)
		}
		if strings.HasPrefix(in.Name, s.prefix) {
			out = append(out, in)
		}
	}
	return out
}

func testHoldingsFind(t *testing.T, s *suite) {
	h := s.b.(shylock.Holdings)
	a, leaseA := s.hold(t, "a", "label a", time.Minute)
	b, _ := s.hold(t, "b", "label b", time.Minute)
	c, _ := s.hold(t, "c", "label c", 50*time.Millisecond)
	in, err := h.Holding(s.ctx, a.Owner)
	if err != nil || in.Name != a.Name || in.Owner != a.Owner || in.Label != "label a" || in.Token != leaseA.Token || !in.Held ||
		in.Remaining <= 0 || in.Remaining > time.Minute+time.Second {
		t.Fatalf("Holding(a's owner) = %+v, %v; want a's holding, held for about a minute", in, err)
	}
	for what, owner := range map[string]string{"an unknown owner": ownerID(), "an empty owner": ""} {
		_, err := h.Holding(s.ctx, owner)
		wantErr(t, "Holding of "+what, err, shylock.ErrNotHeld)
	}

	time.Sleep(300 * time.Millisecond) // c's lease ends
	if err := s.b.Release(s.ctx, b.Name, b.Owner, 0); err != nil {
		t.Fatalf("Release: %v", err)
	}
	_, err = h.Holding(s.ctx, b.Owner)
	wantErr(t, "Holding of a released holding's owner", err, shylock.ErrNotHeld)
	if in, err := h.Holding(s.ctx, c.Owner); err == nil && in.Held || err != nil && !errors.Is(err, shylock.ErrNotHeld) {
		t.Fatalf("Holding of an expired holding's owner = %+v, %v; want it not held", in, err)
	}
	if held := s.held(t); len(held) != 1 || held[0].Name != a.Name || held[0].Token != leaseA.Token || held[0].Label != "label a" {
		t.Fatalf("Held = %+v; want only %q (the others were released or expired)", held, a.Name)
	}
}

func testAmend(t *testing.T, s *suite) {
	h := s.b.(shylock.Holdings)
	req, lease := s.hold(t, "x", "before", time.Minute)
	before := s.inspect(t, req.Name)
	label := "after"
	in, err := h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{Label: &label})
	if err != nil {
		t.Fatalf("Amend of the label: %v", err)
	}
	after := s.inspect(t, req.Name)
	if in.Label != label || after.Label != label || after.Token != before.Token || after.Owner != req.Owner ||
		!after.AcquiredAt.Equal(before.AcquiredAt) || !after.ExpiresAt.Equal(before.ExpiresAt) {
		t.Fatalf("after a new label: %+v (answered %+v); before: %+v; want only the label changed", after, in, before)
	}

	const far = 30 * 365 * 24 * time.Hour // beyond MaxTTL: a resource pinned for decades
	in, err = h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{TTL: far})
	if err != nil {
		t.Fatalf("Amend of the expiry to 30 years: %v", err)
	}
	after = s.inspect(t, req.Name)
	if !after.Held || after.Token != before.Token || after.Label != label || after.Remaining < far-time.Minute ||
		!in.ExpiresAt.Equal(after.ExpiresAt) || after.ExpiresAt.Sub(time.Now()) < far-time.Minute {
		t.Fatalf("after a 30-year amendment: %+v (answered %+v)", after, in)
	}
	pinned := time.Date(2099, 12, 31, 12, 34, 56, 789e6, time.UTC) // as Relukko's clients pin a resource
	if in, err = h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{ExpiresAt: pinned}); err != nil {
		t.Fatalf("Amend of the expiry to %v: %v", pinned, err)
	}
	if after = s.inspect(t, req.Name); !after.Held || !after.ExpiresAt.Equal(pinned) || !in.ExpiresAt.Equal(pinned) || after.Token != before.Token {
		t.Fatalf("after an amendment to expire at %v: %+v (answered %+v)", pinned, after, in)
	}
	short := 5 * time.Second
	if _, err := h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{TTL: short, Label: &req.Label}); err != nil {
		t.Fatalf("Amend of both: %v", err)
	}
	if after = s.inspect(t, req.Name); !after.Held || after.Remaining > short+time.Second || after.Label != req.Label {
		t.Fatalf("after amending to 5s and the first label: %+v", after)
	}

	for what, a := range map[string]shylock.Amendment{
		"a TTL beyond MaxAmendTTL": {TTL: shylock.MaxAmendTTL + time.Hour},
		"a negative TTL":           {TTL: -time.Second},
		"nothing to change":        {},
		"a TTL and an expiry":      {TTL: time.Minute, ExpiresAt: time.Now().Add(time.Hour)},
		"an expiry in 300 years":   {ExpiresAt: time.Now().AddDate(300, 0, 0)},
	} {
		_, err := h.Amend(s.ctx, req.Name, req.Owner, lease.Token, a)
		if err == nil || errors.Is(err, shylock.ErrNotHeld) {
			t.Errorf("Amend with %s: %v; want a refusal", what, err)
		}
	}
	_, err = h.Amend(s.ctx, "", req.Owner, lease.Token, shylock.Amendment{Label: &label})
	wantErr(t, "Amend of an invalid name", err, shylock.ErrInvalidName)

	// An expiry that has passed ends the lease, as an expiry does.
	if _, err := h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{ExpiresAt: time.Now().Add(-time.Hour)}); err != nil {
		t.Fatalf("Amend of the expiry to an hour ago: %v", err)
	}
	if after = s.inspect(t, req.Name); after.Held {
		t.Fatalf("after an amendment to expire an hour ago the lock is held: %+v", after)
	}
}

// testAmendNeverTakesALock: an amendment of a holding that was released, expired, or taken over
// fails and changes nothing, whatever it asks.
func testAmendNeverTakes(t *testing.T, s *suite) {
	h := s.b.(shylock.Holdings)
	label := "late"
	amend := shylock.Amendment{Label: &label, TTL: time.Hour}

	released, lr := s.hold(t, "released", "r", time.Minute)
	if err := s.b.Release(s.ctx, released.Name, released.Owner, lr.Token); err != nil {
		t.Fatalf("Release: %v", err)
	}
	_, err := h.Amend(s.ctx, released.Name, released.Owner, lr.Token, amend)
	wantErr(t, "Amend of a released holding", err, shylock.ErrNotHeld)
	if in := s.inspect(t, released.Name); in.Held {
		t.Fatalf("Amend of a released holding took the lock: %+v", in)
	}

	expired, le := s.hold(t, "expired", "e", 50*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	_, err = h.Amend(s.ctx, expired.Name, expired.Owner, le.Token, amend)
	wantErr(t, "Amend of an expired holding", err, shylock.ErrNotHeld)
	if in := s.inspect(t, expired.Name); in.Held {
		t.Fatalf("Amend of an expired holding revived it: %+v", in)
	}

	// The old holder's amendment after a takeover, and the new holder's with the old token.
	next, ln := s.hold(t, "expired", "next", time.Minute)
	_, err = h.Amend(s.ctx, expired.Name, expired.Owner, le.Token, amend)
	wantErr(t, "Amend by the holder before a takeover", err, shylock.ErrNotHeld)
	_, err = h.Amend(s.ctx, next.Name, next.Owner, le.Token, amend)
	wantErr(t, "Amend with another holding's token", err, shylock.ErrNotHeld)
	if in := s.inspect(t, next.Name); !in.Held || in.Owner != next.Owner || in.Label != "next" || in.Token != ln.Token || in.Remaining > time.Minute {
		t.Fatalf("refused amendments changed the new holding: %+v", in)
	}
}

// testAmendRacingRelease races an amendment with the release of its holding, round after round:
// whichever comes first, the lock is free once both have answered.
func testAmendRacingRelease(t *testing.T, s *suite) {
	h := s.b.(shylock.Holdings)
	label := "renamed"
	refused := map[string]int{}
	for round := range 100 {
		req, lease := s.hold(t, "x", "holder", time.Minute)
		var wg sync.WaitGroup
		var amendErr, releaseErr error
		wg.Go(func() {
			_, amendErr = h.Amend(s.ctx, req.Name, req.Owner, lease.Token, shylock.Amendment{Label: &label, TTL: time.Minute})
		})
		wg.Go(func() { releaseErr = s.b.Release(s.ctx, req.Name, req.Owner, lease.Token) })
		wg.Wait()
		if amendErr != nil && !errors.Is(amendErr, shylock.ErrNotHeld) {
			t.Fatalf("round %d: Amend: %v", round, amendErr)
		}
		if amendErr != nil {
			refused["Amend"]++
		}
		if releaseErr != nil {
			refused["Release"]++
		}
		if in := s.inspect(t, req.Name); in.Held {
			t.Fatalf("round %d: after an amendment (%v) and a release (%v) raced, the lock is held: %+v", round, amendErr, releaseErr, in)
		}
	}
	t.Logf("of 100 rounds, refused: %v", refused)
}
