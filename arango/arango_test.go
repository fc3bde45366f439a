package arango

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb/shared"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/shylocktest"
)

// hostile names try to break out of a query; they must travel only as bind parameters.
var hostile = []string{`orders/42`, `" RETURN 1 //`, "x` FOR d IN c REMOVE d IN c //", `@@coll`, `{"$gt": ""}`, "名前"}

func TestQueriesTakeValuesOnlyAsBindParameters(t *testing.T) {
	b := &Backend{coll: "locks"}
	builders := map[string]func(name string) query{
		"acquire":      func(n string) query { return b.acquireQuery(n, "owner-1", "label-1", 30*time.Second) },
		"extend":       func(n string) query { return b.extendQuery(n, "owner-1", 7, time.Minute) },
		"release":      func(n string) query { return b.releaseQuery(n, "owner-1", 0) },
		"forceRelease": func(n string) query { return b.forceReleaseQuery(n) },
		"inspect":      func(n string) query { return b.inspectQuery(n) },
		"list":         func(n string) query { return b.listQuery(n) },
	}
	param := regexp.MustCompile(`@@?[a-z]+`)
	for op, build := range builders {
		first := build(hostile[0])
		for _, name := range hostile {
			q := build(name)
			if q.text != first.text {
				t.Fatalf("%s: the query text changes with the name %q", op, name)
			}
			if q.bind["@coll"] != "locks" {
				t.Fatalf("%s: collection bind parameter = %v", op, q.bind["@coll"])
			}
			key := "name"
			if op == "list" {
				key = "prefix"
			}
			if q.bind[key] != name {
				t.Fatalf("%s: bind parameter %s = %v, want %q", op, key, q.bind[key], name)
			}
		}
		// Every parameter the text uses is bound, and nothing else is.
		used := map[string]bool{}
		for _, p := range param.FindAllString(first.text, -1) {
			used[strings.TrimPrefix(p, "@")] = true
		}
		for k := range first.bind {
			if !used[k] {
				t.Errorf("%s: bind parameter %q is not used by the query", op, k)
			}
		}
		for k := range used {
			if _, ok := first.bind[k]; !ok {
				t.Errorf("%s: the query uses @%s but it is not bound", op, k)
			}
		}
		if !strings.Contains(first.text, "DATE_NOW()") && op != "release" {
			t.Errorf("%s: the query does not read the server's clock", op)
		}
	}
}

func TestQueriesCarryTheirValues(t *testing.T) {
	b := &Backend{coll: "locks"}
	q := b.acquireQuery("n", "o", "l", 1500*time.Millisecond)
	if q.bind["ttl"] != int64(1500) || q.bind["owner"] != "o" || q.bind["label"] != "l" {
		t.Fatalf("acquire binds %v", q.bind)
	}
	q = b.extendQuery("n", "o", 1795489158314003, time.Second)
	if q.bind["token"] != uint64(1795489158314003) || q.bind["ttl"] != int64(1000) {
		t.Fatalf("extend binds %v", q.bind)
	}
	for _, want := range []string{"ignoreRevs: false", "_rev"} {
		if !strings.Contains(acquireAQL+extendAQL, want) {
			t.Errorf("the acquire and extend queries do not guard revisions (%q)", want)
		}
	}
	if !strings.Contains(acquireAQL, "cur.expiresAt * 1000 <= now") {
		t.Error("acquire does not judge expiry with the server's clock")
	}
}

func TestAcquireErrorClassification(t *testing.T) {
	arango := func(num int) error {
		return fmt.Errorf("query: %w", shared.ArangoError{HasError: true, Code: 409, ErrorNum: num, ErrorMessage: "test"})
	}
	for _, c := range []struct {
		err    error
		locked bool
	}{
		{arango(errUniqueConstraint), true},
		{arango(errConflict), true},
		{arango(1203), false}, // collection not found
		{errors.New("connection refused"), false},
	} {
		err := acquireError("n", c.err)
		if got := errors.Is(err, shylock.ErrLocked); got != c.locked {
			t.Errorf("acquireError(%v) matches ErrLocked = %v, want %v", c.err, got, c.locked)
		}
		if !c.locked && !errors.Is(err, c.err) {
			t.Errorf("acquireError(%v) lost the driver's error: %v", c.err, err)
		}
	}
}

func TestInfoUsesTheServersClock(t *testing.T) {
	now := float64(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	row := withNow{Now: now, Doc: &record{Name: "n", Owner: "o", Label: "l", Token: 1795489158314003,
		AcquiredAt: now/1000 - 10, RenewedAt: now/1000 - 5, ExpiresAt: now/1000 + 2.5}}
	in := row.info("n")
	if !in.Held || in.Remaining != 2500*time.Millisecond || in.Token != 1795489158314003 {
		t.Fatalf("info = %+v; want held, 2.5s left, the exact token", in)
	}
	row.Doc.ExpiresAt = now / 1000
	if in := row.info("n"); in.Held {
		t.Fatalf("a lease that ends at the server's now is held: %+v", in)
	}
	row.Doc.ExpiresAt, row.Doc.Owner = now/1000+60, ""
	if in := row.info("n"); in.Held {
		t.Fatalf("a released record is held: %+v", in)
	}
	if in := (withNow{Now: now}).info("x"); in != (shylock.Info{Name: "x"}) {
		t.Fatalf("missing record gives %+v", in)
	}
}

func TestRefusesBadInputBeforeIO(t *testing.T) {
	b := &Backend{coll: "locks"} // no database: any I/O would panic
	ctx := t.Context()
	if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: "", Owner: "o", TTL: time.Second}); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Acquire with an empty name: %v", err)
	}
	if _, err := b.Acquire(ctx, shylock.AcquireRequest{Name: "n", Owner: "o", TTL: 0}); !errors.Is(err, shylock.ErrInvalidTTL) {
		t.Fatalf("Acquire with TTL 0: %v", err)
	}
	if _, err := b.Extend(ctx, "n\x00", "o", 1, time.Second); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Extend with NUL: %v", err)
	}
	if err := b.Release(ctx, "n", "", 1); !errors.Is(err, shylock.ErrNotHeld) {
		t.Fatalf("Release with no owner: %v", err)
	}
	if _, err := b.Inspect(ctx, "\xff"); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Inspect with invalid UTF-8: %v", err)
	}
	if _, err := b.ForceRelease(ctx, strings.Repeat("n", shylock.MaxNameLen+1)); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("ForceRelease with a long name: %v", err)
	}
}

// TestReadOnlyRefusesWrites: a Backend with nothing to talk to would panic on any I/O.
func TestReadOnlyRefusesWrites(t *testing.T) {
	shylocktest.ReadOnly(t, &Backend{readOnly: true})
}
