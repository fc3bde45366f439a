package mongo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver"
	drivertopology "go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/shylocktest"
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
	if in := rec.info(lo); in.Held || !in.ExpiresAt.IsZero() {
		t.Fatalf("a released record is held, or has an expiry: %+v", in)
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

func TestErrorClassification(t *testing.T) {
	cmd := func(code int32, msg string) error { return mongo.CommandError{Code: code, Message: msg} }
	write := func(code int) error {
		return mongo.WriteException{WriteErrors: mongo.WriteErrors{{Code: code, Message: "write error"}}}
	}
	wcOnly := mongo.WriteException{WriteConcernError: &mongo.WriteConcernError{Code: 100, Message: "unsatisfiable"}}
	for _, c := range []struct {
		what                     string
		err                      error
		refused, lacks, race, cs bool // cs: as the answer to opening a change stream
	}{
		{"$expr in an upsert", cmd(224, "$expr is not allowed in the query predicate for an upsert"), true, false, false, false},
		{"unauthorized", cmd(13, "not authorized"), true, false, false, false},
		{"authentication failed (a mongos without its config servers)", cmd(18, "auth failed"), false, false, false, false},
		{"FerretDB without pipelines", cmd(238, "not implemented"), true, true, false, true},
		{"MongoDB 4.0 without $$NOW", cmd(17276, "Use of undefined variable: NOW"), true, true, false, true},
		{"an array update before 4.2", cmd(14, "update must be an object"), true, true, false, true},
		{"standalone mongod", cmd(40573, "only supported on replica sets"), false, false, false, true},
		{"no $changeStream stage", cmd(115, "Stage $changeStream is not supported yet"), true, true, false, true},
		{"not writable primary", cmd(10107, "not primary"), false, false, false, false},
		{"interrupted at shutdown", cmd(11600, "interrupted"), false, false, false, false},
		{"network", errors.New("connection reset by peer"), false, false, false, false},
		{"a write error", write(13), true, false, false, false},
		{"write concern error only (may have applied)", wcOnly, false, false, false, false},
		{"E11000", write(11000), false, false, true, false},
		{"DocumentDB's exclusion constraint", cmd(1, `conflicting key value violates exclusion constraint "documents_rum_index_214"`), false, false, true, false},
		{"PostgreSQL deadlock", cmd(1, "deadlock detected"), false, false, true, false},
	} {
		if got := refusal(c.err); got != c.refused {
			t.Errorf("%s: refusal = %v, want %v", c.what, got, c.refused)
		}
		if got := lacksFeature(c.err); got != c.lacks {
			t.Errorf("%s: lacksFeature = %v, want %v", c.what, got, c.lacks)
		}
		if got := upsertRace(c.err); got != c.race {
			t.Errorf("%s: upsertRace = %v, want %v", c.what, got, c.race)
		}
		if got := noChangeStreams(c.err); got != c.cs {
			t.Errorf("%s: noChangeStreams = %v, want %v", c.what, got, c.cs)
		}
		if got := errors.Is(opError("acquire", "n", c.err, false), shylock.ErrRefused); got != c.refused {
			t.Errorf("%s: opError matches ErrRefused = %v, want %v", c.what, got, c.refused)
		}
	}
	for _, c := range []int32{260, 280, 286} {
		if !restartable(cmd(c, "")) {
			t.Errorf("change stream error %d: must start afresh", c)
		}
	}
	if restartable(cmd(10107, "")) {
		t.Error("a stepdown must resume the change stream, not start it afresh")
	}
}

// TestNotSentErrors: only errors that prove a command never left the process make it
// ErrUnavailable, and only when nothing sent before it could have changed anything; a
// disconnected client is ErrClosed, which no retry cures.
func TestNotSentErrors(t *testing.T) {
	for _, c := range []struct {
		what    string
		err     error
		notSent bool
	}{
		{"server selection", drivertopology.ServerSelectionError{Wrapped: context.DeadlineExceeded}, true},
		{"wait queue", drivertopology.WaitQueueTimeoutError{Wrapped: context.DeadlineExceeded}, true},
		{"pool closed", drivertopology.ErrPoolClosed, true},
		{"deadline too close", fmt.Errorf("x: %w", driver.ErrDeadlineWouldBeExceeded), true},
		{"reply lost", drivertopology.ConnectionError{ConnectionID: "c", Wrapped: io.EOF}, false},
		{"timed out reading", context.DeadlineExceeded, false},
		{"command error", mongo.CommandError{Code: 11600, Message: "interrupted"}, false},
	} {
		if got := notSent(c.err); got != c.notSent {
			t.Errorf("%s: notSent = %v, want %v", c.what, got, c.notSent)
		}
		if got := errors.Is(opError("acquire", "n", c.err, false), shylock.ErrUnavailable); got != c.notSent {
			t.Errorf("%s: opError matches ErrUnavailable = %v, want %v", c.what, got, c.notSent)
		}
		if errors.Is(opError("acquire", "n", c.err, true), shylock.ErrUnavailable) {
			t.Errorf("%s: matches ErrUnavailable although an earlier write of the operation may have applied", c.what)
		}
	}
	if err := opError("acquire", "n", mongo.ErrClientDisconnected, false); !errors.Is(err, shylock.ErrClosed) || errors.Is(err, shylock.ErrUnavailable) {
		t.Errorf("a disconnected client gives %v; want ErrClosed alone", err)
	}
}

// TestAcquireShape: the acquire's filter names the record alone (MongoDB refuses $expr in the
// filter of an upsert), and a caller's strings reach its pipeline only inside $literal.
func TestAcquireShape(t *testing.T) {
	if f := byName("$where"); len(f) != 1 || f[0].Key != "name" || f[0].Value != "$where" {
		t.Fatalf("acquire filter %v; want {name: ...} alone", f)
	}
	raw, err := bson.Marshal(bson.D{{Key: "u", Value: acquireUpdate(shylock.AcquireRequest{Owner: "OWNER", Label: "$$LABEL", TTL: time.Second, Queue: "$$PARTY", Wait: true}, 0, time.Now())}})
	if err != nil {
		t.Fatal(err)
	}
	var literals, bare int
	var visit func(v bson.RawValue, inLiteral bool)
	visit = func(v bson.RawValue, inLiteral bool) {
		if s, ok := v.StringValueOK(); ok && (s == "OWNER" || s == "$$LABEL") {
			if inLiteral {
				literals++
			} else {
				bare++
			}
		}
		var elems []bson.RawElement
		if d, ok := v.DocumentOK(); ok {
			elems, _ = d.Elements()
		} else if a, ok := v.ArrayOK(); ok {
			elems, _ = bson.Raw(a).Elements()
		}
		for _, e := range elems {
			visit(e.Value(), inLiteral || e.Key() == "$literal")
		}
	}
	visit(bson.Raw(raw).Lookup("u"), false)
	if bare != 0 || literals != 3 {
		t.Fatalf("owner and label appear %d times inside $literal and %d times outside; want 3 and 0", literals, bare)
	}
}

// TestReleaseEvents: a change stream wakes waiters for releases and for deletions that name
// their record, not for every deletion the TTL monitor makes.
func TestReleaseEvents(t *testing.T) {
	raw, err := bson.Marshal(releases[0][0])
	if err != nil {
		t.Fatal(err)
	}
	s := bson.Raw(raw).String()
	for _, want := range []string{`"updateDescription.updatedFields.owner": ""`, `"documentKey.name": {"$exists": true}`, `"invalidate"`} {
		if !strings.Contains(s, want) {
			t.Errorf("the change stream's $match %s lacks %s", s, want)
		}
	}
	if strings.Contains(s, `{"operationType": "delete"}`) {
		t.Errorf("the change stream's $match %s wakes waiters on every deletion", s)
	}
}

func TestIndexChecks(t *testing.T) {
	key := func(d bson.D) bson.Raw { r, _ := bson.Marshal(d); return r }
	name, expires := key(bson.D{{Key: "name", Value: 1}}), key(bson.D{{Key: "expiresAt", Value: 1}})
	day := int64(86400)
	seconds := func(v any) bson.RawValue {
		typ, data, err := bson.MarshalValue(v)
		if err != nil {
			t.Fatal(err)
		}
		return bson.RawValue{Type: typ, Value: data}
	}
	for _, c := range []struct {
		what string
		ix   index
		want string // in the refusal; "" for accepted
	}{
		{"unique", index{Name: "name_1", Key: name, Unique: true}, ""},
		{"not unique", index{Name: "name_1", Key: name}, "not unique"},
		{"partial", index{Name: "name_1", Key: name, Unique: true, Partial: key(bson.D{{Key: "owner", Value: bson.D{{Key: "$exists", Value: true}}}})}, "partial"},
		{"collated", index{Name: "name_1", Key: name, Unique: true, Collation: struct {
			Locale string `bson:"locale"`
		}{"en"}}, "collation"},
		{"hidden", index{Name: "name_1", Key: name, Unique: true, Hidden: true}, "hidden"},
		{"our name elsewhere", index{Name: NameIndex, Key: expires}, "other keys"},
		{"our TTL name, no TTL", index{Name: TTLIndex, Key: expires}, "not a TTL index"},
		{"a TTL index", index{Name: "x", Key: expires, ExpireAfter: seconds(int32(day))}, ""},
		{"a TTL index kept as a double", index{Name: "x", Key: expires, ExpireAfter: seconds(86400.0)}, ""},
		{"a fractional TTL", index{Name: "x", Key: expires, ExpireAfter: seconds(0.5)}, "expireAfterSeconds"},
	} {
		st := indexState{ttlWant: day}
		err := st.add(c.ix)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.what, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v; want a refusal saying %q", c.what, err, c.want)
		}
	}
	st := indexState{ttlWant: day}
	_ = st.add(index{Name: "u", Key: name, Unique: true})
	_ = st.add(index{Name: "t", Key: expires, ExpireAfter: seconds(day)})
	if !st.unique || !st.ttl {
		t.Fatalf("state %+v: want both indexes found", st)
	}
}

func TestCollationOf(t *testing.T) {
	for _, c := range []struct {
		opts bson.D
		want string
	}{
		{bson.D{}, ""},
		{bson.D{{Key: "collation", Value: bson.D{{Key: "locale", Value: "simple"}}}}, ""},
		{bson.D{{Key: "collation", Value: bson.D{{Key: "locale", Value: "en"}, {Key: "strength", Value: 2}}}}, "en"},
	} {
		raw, _ := bson.Marshal(c.opts)
		if got := collationOf(raw); got != c.want {
			t.Errorf("collationOf(%v) = %q, want %q", c.opts, got, c.want)
		}
	}
}

func TestDefaultOffsetByTopology(t *testing.T) {
	if d := (topology{}).defaultOffset(); d != 0 {
		t.Errorf("a single server: offset %v, want 0 (one clock stamps and judges every lease)", d)
	}
	if d := (topology{several: true}).defaultOffset(); d != DefaultMaxClockOffset {
		t.Errorf("several servers: offset %v, want %v", d, DefaultMaxClockOffset)
	}
}

// TestInvalidOptionsBeforeIO: the client points nowhere, so any I/O would fail differently.
func TestInvalidOptionsBeforeIO(t *testing.T) {
	c, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1").SetServerSelectionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Disconnect(context.Background()) }()
	coll := c.Database("d").Collection("c")
	for _, o := range []Option{WithMaxClockOffset(-time.Second), WithGracePeriod(time.Millisecond), WithLogger(nil)} {
		if _, err := New(t.Context(), coll, o); err == nil || !strings.HasPrefix(err.Error(), "mongo: With") {
			t.Errorf("New with an invalid option: %v; want the option named", err)
		}
	}
}

// TestTTLNotAboveOffset: a lease no longer than the clock offset could not be trusted at all.
func TestTTLNotAboveOffset(t *testing.T) {
	b := &Backend{offset: time.Second}
	_, err := b.Acquire(t.Context(), shylock.AcquireRequest{Name: "n", Owner: "o", TTL: time.Second})
	if !errors.Is(err, shylock.ErrInvalidTTL) || !strings.Contains(err.Error(), "clock offset") {
		t.Fatalf("Acquire with TTL = offset: %v; want ErrInvalidTTL naming the offset", err)
	}
	if _, err := b.Extend(t.Context(), "n", "o", 1, time.Second); !errors.Is(err, shylock.ErrInvalidTTL) {
		t.Fatalf("Extend with TTL = offset: %v; want ErrInvalidTTL", err)
	}
}

// TestReadOnlyRefusesWrites: a Backend with nothing to talk to would panic on any I/O.
func TestReadOnlyRefusesWrites(t *testing.T) {
	shylocktest.ReadOnly(t, &Backend{readOnly: true})
}
