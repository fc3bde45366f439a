package shylocktest

import (
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

func testAdmin(t *testing.T, s *suite) {
	never := s.name("never")
	if info := s.inspect(t, never); info != (shylock.Info{Name: never}) {
		t.Fatalf("Inspect of a never-locked name = %+v; want only its name", info)
	}
	_, err := s.b.ForceRelease(s.ctx, never)
	wantErr(t, "ForceRelease of a free lock", err, shylock.ErrNotHeld)

	a := s.lock("held", shylock.WithOwner("worker-7"), shylock.WithTTL(time.Minute))
	s.mustAcquire(t, a)
	info := s.inspect(t, a.Name())
	switch {
	case !info.Held || info.Name != a.Name() || info.Label != "worker-7" || info.Owner == "" || info.Token != a.Token():
		t.Fatalf("Inspect = %+v; want held, label worker-7, an owner id and token %d", info, a.Token())
	case info.Remaining <= 0 || info.Remaining > time.Minute+time.Second:
		t.Fatalf("Inspect: %v remaining of a 1m lease", info.Remaining)
	case !info.ExpiresAt.After(info.AcquiredAt) || info.RenewedAt.Before(info.AcquiredAt):
		t.Fatalf("Inspect: times out of order: %+v", info)
	case info.ExpiresAt.Sub(info.AcquiredAt) < time.Minute-time.Second || info.ExpiresAt.Sub(info.AcquiredAt) > time.Minute+time.Second:
		t.Fatalf("Inspect: a 1m lease expires %v after it was acquired", info.ExpiresAt.Sub(info.AcquiredAt))
	}
	if err := a.Extend(s.ctx, 2*time.Minute); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	extended := s.inspect(t, a.Name())
	if extended.Remaining <= time.Minute || extended.RenewedAt.Before(info.RenewedAt) || !extended.AcquiredAt.Equal(info.AcquiredAt) {
		t.Fatalf("after Extend(2m) Inspect = %+v (before: %+v)", extended, info)
	}

	b := s.lock("other")
	s.mustAcquire(t, b)
	list, err := s.b.List(s.ctx, s.prefix)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 2 || list[0].Name != a.Name() || list[1].Name != b.Name() ||
		list[0].Label != "worker-7" || list[0].Token != a.Token() || !list[0].Held || !list[1].Held {
		t.Fatalf("List = %+v; want %q then %q, both held, with their labels and tokens", list, a.Name(), b.Name())
	}

	before, err := s.b.ForceRelease(s.ctx, a.Name())
	if err != nil || !before.Held || before.Label != "worker-7" || before.Token != a.Token() {
		t.Fatalf("ForceRelease = %+v, %v; want the record as it was", before, err)
	}
	if info := s.inspect(t, a.Name()); info.Held {
		t.Fatalf("after ForceRelease the lock is %+v", info)
	}
	wantErr(t, "Extend after ForceRelease", a.Extend(s.ctx, time.Minute), shylock.ErrNotHeld, shylock.ErrLost)
	if !closedWithin(a.Lost(), 0) {
		t.Fatal("Lost() is not closed after Extend found the lock force-released")
	}
	wantErr(t, "Release after ForceRelease", a.Release(s.ctx), shylock.ErrNotHeld, shylock.ErrLost)
	if err := b.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}
