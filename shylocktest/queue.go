package shylocktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// attempt makes one acquire attempt of party for name, waiting (see AcquireRequest.Wait) or not,
// and returns its request and the error.
func (s *suite) attempt(t *testing.T, name, party string, wait bool) (shylock.AcquireRequest, error) {
	t.Helper()
	req := shylock.AcquireRequest{Name: s.name(name), Owner: ownerID(), Label: party, TTL: time.Minute, Queue: party, Wait: wait}
	_, err := s.b.Acquire(s.ctx, req)
	if err != nil && !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("party %q: Acquire(%q): %v", party, req.Name, err)
	}
	return req, err
}

// wantTurn fails unless party's attempt takes name.
func (s *suite) wantTurn(t *testing.T, name, party string) shylock.AcquireRequest {
	t.Helper()
	req, err := s.attempt(t, name, party, true)
	if err != nil {
		t.Fatalf("party %q should have had the turn: %v", party, err)
	}
	return req
}

// wantQueued fails unless party's attempt is refused because another party's turn comes first.
func (s *suite) wantQueued(t *testing.T, name, party string, wait bool) {
	t.Helper()
	_, err := s.attempt(t, name, party, wait)
	var h *shylock.HeldError
	if !errors.As(err, &h) || !h.Queued {
		t.Fatalf("party %q, on a free lock whose queue has another party first: got %v, want a HeldError with Queued", party, err)
	}
}

func (s *suite) release(t *testing.T, req shylock.AcquireRequest) {
	t.Helper()
	if err := s.b.Release(s.ctx, req.Name, req.Owner, 0); err != nil {
		t.Fatalf("Release(%q): %v", req.Name, err)
	}
}

// testQueueTurns: parties that were refused while waiting get the lock in the order they came,
// whoever asks first once it is free; a party's turn ends its entry, so its next waiter joins at
// the end; attempts without a place (TryAcquire of another process, or no party) get no turn
// while anyone waits.
func testQueueTurns(t *testing.T, s *suite) {
	a := s.wantTurn(t, "q", "A")
	for _, p := range []string{"B", "C"} {
		if _, err := s.attempt(t, "q", p, true); !errors.Is(err, shylock.ErrLocked) {
			t.Fatalf("party %s on a held lock: %v, want ErrLocked", p, err)
		}
	}
	// Operators see the locks, never the queue's entries.
	if all, err := s.b.List(s.ctx, s.prefix); err != nil || len(all) != 1 || all[0].Name != s.name("q") {
		t.Fatalf("List with parties waiting: %v, %v; want the one lock", all, err)
	}
	s.release(t, a)
	s.wantQueued(t, "q", "A", true) // A joins after C
	s.wantQueued(t, "q", "C", true)
	s.wantQueued(t, "q", "D", false)
	s.wantQueued(t, "q", "", false)
	b := s.wantTurn(t, "q", "B")
	s.release(t, b)
	s.wantQueued(t, "q", "B", true) // after A
	s.wantQueued(t, "q", "A", true)
	c := s.wantTurn(t, "q", "C")
	s.release(t, c)
	s.wantQueued(t, "q", "B", true)
	a = s.wantTurn(t, "q", "A")
	s.release(t, a)
	b = s.wantTurn(t, "q", "B")
	s.release(t, b)
	// Nobody waits now: anyone takes it.
	if req, err := s.attempt(t, "q", "", false); err != nil {
		t.Fatalf("an attempt with no party, nobody waiting: %v", err)
	} else {
		s.release(t, req)
	}
}

// testQueueEntryExpires: a party that stopped waiting without leaving (its process died) blocks
// the lock for no longer than its entry's lease.
func testQueueEntryExpires(t *testing.T, s *suite) {
	a := s.wantTurn(t, "q", "holder")
	if _, err := s.attempt(t, "q", "dead", true); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("on a held lock: %v, want ErrLocked", err)
	}
	s.release(t, a)
	s.wantQueued(t, "q", "alive", true)
	joined := time.Now()
	for {
		_, err := s.attempt(t, "q", "alive", true)
		if err == nil {
			break
		}
		if time.Since(joined) > shylock.QueueLease+5*time.Second {
			t.Fatalf("a dead party's entry still blocks the lock %v after its last renewal, more than its lease %v: %v",
				time.Since(joined).Round(time.Millisecond), shylock.QueueLease, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testCancelledWaiterLeaves: a waiting Acquire that gives up takes its process's entry out of
// the queue, so that a party that joined after it is not held up once the lock is free.
func testCancelledWaiterLeaves(t *testing.T, s *suite) {
	a := s.wantTurn(t, "q", "holder")
	ctx, cancel := context.WithTimeout(s.ctx, time.Second)
	defer cancel()
	if err := s.lock("q").Acquire(ctx); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("Acquire of a held lock until a deadline: %v, want ErrLocked", err)
	}
	if _, err := s.attempt(t, "q", "later", true); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("on a held lock: %v, want ErrLocked", err)
	}
	s.release(t, a)
	deadline := time.Now().Add(2 * time.Second) // the entry leaves in the background
	for {
		_, err := s.attempt(t, "q", "later", true)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the entry of an Acquire that gave up still blocks the lock: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testWaitersGetTurns: a process's waiters, a Lock's Acquire, get their turn after a party of
// another process that waited longer, and before one that came later.
func testWaitersGetTurns(t *testing.T, s *suite) {
	a := s.wantTurn(t, "q", "holder")
	if _, err := s.attempt(t, "q", "first", true); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("on a held lock: %v, want ErrLocked", err)
	}
	l := s.lock("q", shylock.WithRetry(5*time.Millisecond, 20*time.Millisecond))
	done := l.AcquireAsync(s.ctx)
	time.Sleep(200 * time.Millisecond) // the Lock's first attempt is refused: it joins
	if _, err := s.attempt(t, "q", "last", true); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("on a held lock: %v, want ErrLocked", err)
	}
	s.release(t, a)
	select {
	case err := <-done:
		t.Fatalf("the Lock got the lock (%v) before the party that waited longer", err)
	case <-time.After(300 * time.Millisecond):
	}
	s.wantQueued(t, "q", "last", true)
	first := s.wantTurn(t, "q", "first")
	s.release(t, first)
	if err := <-done; err != nil {
		t.Fatalf("the Lock, next in line: %v", err)
	}
	if err := l.Release(s.ctx); err != nil {
		t.Fatal(err)
	}
	s.release(t, s.wantTurn(t, "q", "last"))
}

// testWaiterKeepsItsPlace: a process's entry is renewed while its waiters wait, so it keeps its
// place however long the lock stays held.
func testWaiterKeepsItsPlace(t *testing.T, s *suite) {
	a := s.wantTurn(t, "q", "holder")
	l := s.lock("q", shylock.WithRetry(5*time.Millisecond, 20*time.Millisecond))
	done := l.AcquireAsync(s.ctx)
	time.Sleep(shylock.QueueLease + 2*time.Second) // longer than an entry lasts unrenewed
	if _, err := s.attempt(t, "q", "later", true); !errors.Is(err, shylock.ErrLocked) {
		t.Fatalf("on a held lock: %v, want ErrLocked", err)
	}
	s.release(t, a)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the Lock that waited longest: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the Lock that waited longest did not get the lock: its entry was not renewed, and it lost its place")
	}
	if err := l.Release(s.ctx); err != nil {
		t.Fatal(err)
	}
	s.release(t, s.wantTurn(t, "q", "later"))
}
