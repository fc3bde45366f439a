package arango

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/arangodb/shared"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/ownerid"
	"github.com/shylock-go/shylock/shylocktest"
)

// hostile names try to break out of a query; they must travel only as bind parameters.
var hostile = []string{`orders/42`, `" RETURN 1 //`, "x` FOR d IN c REMOVE d IN c //", `@@coll`, `{"$gt": ""}`, "名前"}

func TestQueriesTakeValuesOnlyAsBindParameters(t *testing.T) {
	b := &Backend{coll: "locks"}
	builders := map[string]func(name string) query{
		"acquire": func(n string) query {
			return b.acquireQuery(shylock.AcquireRequest{Name: n, Owner: "owner-1", Label: "label-1", TTL: 30 * time.Second, Queue: n, Wait: true}, time.Now())
		},
		"leaveQueue":   func(n string) query { return b.leaveQueueQuery(n, n) },
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
		if !strings.Contains(first.text, "DATE_NOW()") && op != "release" && op != "leaveQueue" {
			t.Errorf("%s: the query does not read the server's clock", op)
		}
	}
}

func TestQueriesCarryTheirValues(t *testing.T) {
	b := &Backend{coll: "locks"}
	deadline := time.UnixMilli(1795489158314)
	q := b.acquireQuery(shylock.AcquireRequest{Name: "n", Owner: "o", Label: "l", TTL: 1500 * time.Millisecond}, deadline)
	if q.bind["ttl"] != int64(1500) || q.bind["owner"] != "o" || q.bind["label"] != "l" || q.bind["deadline"] != int64(1795489158314) {
		t.Fatalf("acquire binds %v", q.bind)
	}
	if !strings.Contains(acquireAQL, `LET state = now > @deadline ? "late"`) || !strings.Contains(acquireAQL, "FOR x IN taking || (@wait && (state == \"queued\" || (state == \"held\" && cur.party != @party)))") {
		t.Error("acquire does not refuse an attempt that reaches the server after its deadline")
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
	if !strings.Contains(acquireAQL, "cur.expiresAt * 1000 + @offset < now") {
		t.Error("acquire does not judge expiry with the server's clock and the clock offset")
	}
	if b.acquireQuery(shylock.AcquireRequest{Name: "n", Owner: "o", Label: "l", TTL: time.Second}, deadline).bind["offset"] != int64(0) {
		t.Error("acquire does not bind the clock offset")
	}
	for _, q := range []string{releaseAQL, forceReleaseAQL} {
		if strings.Contains(q, "expiresAt: 0") {
			t.Errorf("a release sets the expiry to 1970, so the TTL index deletes the record (and its tokens) at once:\n%s", q)
		}
	}
	if q := b.listQuery("jobs/"); !strings.Contains(q.text, "LEFT(d.name, LENGTH(@prefix)) == @prefix") || strings.Contains(q.text, "d.name <") {
		t.Errorf("list must match the prefix literally, not by a collation range: %s", q.text)
	}
}

func TestCollisions(t *testing.T) {
	arango := func(num int) error {
		return fmt.Errorf("query: %w", shared.ArangoError{HasError: true, Code: 409, ErrorNum: num, ErrorMessage: "test"})
	}
	for _, c := range []struct {
		err      error
		collided bool
	}{
		{arango(errUniqueConstraint), true},
		{arango(errConflict), true},
		{arango(1203), false}, // collection not found
		{errors.New("connection refused"), false},
	} {
		if got := collided(c.err); got != c.collided {
			t.Errorf("collided(%v) = %v, want %v", c.err, got, c.collided)
		}
	}
}

// TestAfterCollision: a collision (1200, 1210) says nothing about who holds the lock; the record
// read again does. Only another owner's live lease is ErrLocked.
func TestAfterCollision(t *testing.T) {
	now := float64(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli())
	b := &Backend{offset: 200 * time.Millisecond}
	req := shylock.AcquireRequest{Name: "n", Owner: "me", TTL: time.Minute}
	cause := errors.New("write-write conflict (test)")
	row := func(owner string, expiresIn time.Duration) withNow {
		return withNow{Now: now, Doc: &record{Name: "n", Owner: owner, Label: owner, Token: 7, ExpiresAt: (now + float64(expiresIn.Milliseconds())) / 1000}}
	}
	for _, c := range []struct {
		what   string
		row    withNow
		mine   bool
		locked bool
	}{
		{"our own earlier attempt", row("me", time.Minute), true, false},
		{"another owner's live lease", row("other", time.Minute), false, true},
		{"another's lease expired less than the offset ago", row("other", -100*time.Millisecond), false, true},
		{"another's lease expired longer ago", row("other", -time.Second), false, false},
		{"a released record (the TTL thread was busy with it)", row("", time.Minute), false, false},
		{"no record", withNow{Now: now}, false, false},
	} {
		lease, err := b.afterCollision(req, c.row, cause)
		switch {
		case c.mine && (err != nil || lease.Token != 7 || lease.Valid <= 0 || lease.Valid > time.Minute-b.offset):
			t.Errorf("%s: %+v, %v; want our lease, trusted for less than TTL - offset", c.what, lease, err)
		case c.locked && !errors.Is(err, shylock.ErrLocked):
			t.Errorf("%s: %v; want ErrLocked", c.what, err)
		case !c.mine && !c.locked && (err == nil || errors.Is(err, shylock.ErrLocked) || !errors.Is(err, cause)):
			t.Errorf("%s: %v; want a transient error carrying the collision, not ErrLocked", c.what, err)
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
	if in := row.info("n"); in.Held || !in.ExpiresAt.IsZero() {
		t.Fatalf("a released record is held, or shows an expiry: %+v", in)
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

func TestClusterDetection(t *testing.T) {
	if clustered(arangodb.DatabaseInfo{Name: "_system", IsSystem: true}) {
		t.Error("a single server's database info reads as a cluster")
	}
	if !clustered(arangodb.DatabaseInfo{Name: "app", ReplicationFactor: 2, WriteConcern: 1}) {
		t.Error("a cluster's database info reads as a single server")
	}
}

func TestShardingCheck(t *testing.T) {
	for _, keys := range [][]string{nil, {"name"}} {
		if err := shardingProblem("locks", keys, 3); err != nil {
			t.Errorf("shard keys %v refused: %v", keys, err)
		}
	}
	if err := shardingProblem("locks", []string{"_key"}, 1); err != nil {
		t.Errorf("one shard enforces any unique index, but was refused: %v", err)
	}
	for _, keys := range [][]string{{"_key"}, {"name", "owner"}} {
		if err := shardingProblem("locks", keys, 3); err == nil || !strings.Contains(err.Error(), "sharded by name") {
			t.Errorf("shard keys %v: %v; want a refusal with advice", keys, err)
		}
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []Option{WithMaxClockOffset(-time.Second), WithGracePeriod(time.Millisecond), WithLogger(nil),
		WithReplicationFactor(0), WithWriteConcern(0)} {
		var s settings
		o(&s)
		if s.err == nil || !strings.HasPrefix(s.err.Error(), "arango: With") {
			t.Errorf("an invalid option: %v; want it named", s.err)
		}
	}
}

func TestListRefusesBadPrefixBeforeIO(t *testing.T) {
	b := &Backend{coll: "locks"} // no database: any I/O would panic
	if _, err := b.List(t.Context(), "bad-\xff"); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("List with an invalid UTF-8 prefix: %v", err)
	}
}

// TestNamesMustBeNFC: ArangoDB's index holds canonically equivalent names equal; the backend
// refuses the decomposed spelling before any I/O rather than let two names be one lock.
func TestNamesMustBeNFC(t *testing.T) {
	b := &Backend{coll: "locks"} // no database: any I/O would panic
	decomposed := "cafe\u0301"
	if _, err := b.Acquire(t.Context(), shylock.AcquireRequest{Name: decomposed, Owner: "o", TTL: time.Second}); !errors.Is(err, shylock.ErrInvalidName) {
		t.Fatalf("Acquire of a name not in NFC: %v; want ErrInvalidName", err)
	}
	if err := validateName("caf\u00e9"); err != nil {
		t.Fatalf("the composed spelling is refused: %v", err)
	}
}

// TestProbeAsksAboutAllNamesInOneQuery: the waiters' poll is one query for every waited name,
// whatever the names hold, bound as a list.
func TestProbeAsksAboutAllNamesInOneQuery(t *testing.T) {
	b := &Backend{coll: "locks"}
	q := b.probeQuery(hostile)
	if q.text != probeAQL || q.text != b.probeQuery([]string{"x"}).text {
		t.Fatalf("the probe's text changes with the names: %s", q.text)
	}
	names, ok := q.bind["names"].([]string)
	if !ok || !slices.Equal(names, hostile) || q.bind["@coll"] != "locks" || len(q.bind) != 2 {
		t.Fatalf("probe binds %v", q.bind)
	}
	for _, want := range []string{"FILTER d.name IN @names", "DATE_NOW()"} {
		if !strings.Contains(q.text, want) {
			t.Errorf("the probe query lacks %q:\n%s", want, q.text)
		}
	}
}

// TestQueueQueries: the queue of a lock is kept in the acquire's one query, by the server's
// clock: dead entries (seen @lease ago) count for nothing and are dropped, a party whose live
// entry is not first does not take a free lock, a taker's entry goes and a refused waiter's is
// written, whole (mergeObjects false), so that entries can go; a renewal asks about every name
// at once and keeps each entry's since. Parties travel hashed, as bind parameters.
func TestQueueQueries(t *testing.T) {
	b := &Backend{coll: "locks"}
	q := b.acquireQuery(shylock.AcquireRequest{Name: "n", Owner: "o", TTL: time.Second, Queue: "a.b$c", Wait: true}, time.Now())
	if q.bind["party"] != ownerid.QueueKey("a.b$c") || q.bind["wait"] != true || q.bind["lease"] != shylock.QueueLease.Milliseconds() {
		t.Fatalf("acquire binds %v", q.bind)
	}
	for _, want := range []string{
		"FILTER cur.queue[k].seen * 1000 + @lease > now",
		"FILTER k != @party && (mine == null || live[k].since < mine.since)",
		`free && !ahead ? "take" : free ? "queued" : "held"`,
		"queue: UNSET(live, @party)",
		"queue: MERGE(live, { [@party]: { since: mine == null ? now / 1000 : mine.since, seen: now / 1000 } })",
		"mergeObjects: false",
	} {
		if !strings.Contains(acquireAQL, want) {
			t.Errorf("the acquire query lacks %q", want)
		}
	}
	r := b.renewQueueQuery("p", []string{"x", "y"})
	if !slices.Equal(r.bind["names"].([]string), []string{"x", "y"}) || r.bind["party"] != ownerid.QueueKey("p") {
		t.Fatalf("renewal binds %v", r.bind)
	}
	if !strings.Contains(renewQueueAQL, "FILTER d.name IN @names && HAS(d.queue, @party)") || strings.Contains(renewQueueAQL, "mergeObjects: false") {
		t.Errorf("the renewal must ask about all names at once and merge, keeping since:\n%s", renewQueueAQL)
	}
	if !strings.Contains(leaveQueueAQL, "UNSET(d.queue, @party)") || !strings.Contains(leaveQueueAQL, "ignoreRevs: false, mergeObjects: false") {
		t.Errorf("leaving must remove the entry, and not undo another party's:\n%s", leaveQueueAQL)
	}
}
