package mongo

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/shylock-go/shylock"
)

// Tests against a server live in the integration module; these need none.

func TestKeyOf(t *testing.T) {
	for _, c := range []struct {
		keys bson.D
		want string
	}{
		{bson.D{{Key: "name", Value: 1}}, "name"},
		{bson.D{{Key: "name", Value: int64(1)}}, "name"},
		{bson.D{{Key: "name", Value: 1.0}}, "name"},
		{bson.D{{Key: "name", Value: -1}}, ""},
		{bson.D{{Key: "name", Value: "hashed"}}, ""},
		{bson.D{{Key: "name", Value: 1}, {Key: "owner", Value: 1}}, ""},
	} {
		raw, err := bson.Marshal(c.keys)
		if err != nil {
			t.Fatal(err)
		}
		if got := keyOf(raw); got != c.want {
			t.Errorf("keyOf(%v) = %q, want %q", c.keys, got, c.want)
		}
	}
}

func TestInfoIsConservative(t *testing.T) {
	lo := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := record{Name: "n", Owner: "o", Token: 7, ExpiresAt: lo.Add(1500 * time.Millisecond)}
	if in := rec.info(lo); !in.Held || in.Remaining != 1500*time.Millisecond || in.Token != 7 {
		t.Fatalf("info = %+v; want held with 1.5s left, as an upper bound from the estimate's low end", in)
	}
	if in := rec.info(rec.ExpiresAt); in.Held {
		t.Fatalf("a lease ending at the low end of the estimate is held: %+v", in)
	}
	rec.Owner = ""
	if in := rec.info(lo); in.Held {
		t.Fatalf("a released record is held: %+v", in)
	}
}

func TestClaimNamesCannotBeLockNames(t *testing.T) {
	c := claimName("orders/42", 17)
	if c != "\x00orders/42\x0017" {
		t.Fatalf("claimName = %q", c)
	}
	if err := shylock.ValidateName(c); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("a claim's name %q is a valid lock name; claims could clash with locks", c)
	}
}

func TestFirstTokenIsMicroseconds(t *testing.T) {
	at := time.Date(2030, 1, 1, 0, 0, 0, 1000, time.UTC)
	if got, want := firstToken(at), at.UnixMicro(); got != want {
		t.Fatalf("firstToken = %d, want %d", got, want)
	}
	if firstToken(at.Add(time.Microsecond)) <= firstToken(at) {
		t.Fatal("a later record does not start higher")
	}
}

// TestRefusesBadInputBeforeIO: a Backend with no collection would panic on any I/O.
func TestRefusesBadInputBeforeIO(t *testing.T) {
	b := &Backend{}
	ctx := t.Context()
	long := strings.Repeat("n", shylock.MaxNameLen+1)
	if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: long, Owner: "o", TTL: time.Second}); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Acquire with a long name: %v", err)
	}
	if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: "n", Owner: "o", TTL: shylock.MaxTTL + 1}); !errors.Is(err, shylock.ErrInvalidTTL) {
		t.Fatalf("Acquire with a huge TTL: %v", err)
	}
	if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: "n", TTL: time.Second}); err == nil {
		t.Fatal("Acquire with no owner id succeeded")
	}
	if _, err := b.Extend(ctx, "n", "o", 1, 0); !errors.Is(err, shylock.ErrInvalidTTL) {
		t.Fatalf("Extend with TTL 0: %v", err)
	}
	if err := b.Release(ctx, "n\x00", "o", 1); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Release with NUL: %v", err)
	}
	if err := b.Release(ctx, "n", "", 0); !errors.Is(err, shylock.ErrNotHeld) {
		t.Fatalf("Release with no owner: %v", err)
	}
	if _, err := b.Inspect(ctx, ""); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Inspect of an empty name: %v", err)
	}
	if _, err := b.ForceRelease(ctx, "\xff"); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("ForceRelease of invalid UTF-8: %v", err)
	}
}
