package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
	"github.com/shylock-go/shylock/shylocktest"
)

// collection returns a fresh collection in the test database, dropped when t ends.
func collection(t testing.TB) *mdb.Collection {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	coll := client.Database("shylock_test").Collection("locks_" + hex.EncodeToString(b[:]))
	dropAfter(t, coll)
	return coll
}

// dropAfter drops colls when t ends, on a server that outlives the run. The embedded server's
// data goes with the run, and dropping collections while other tests work has been seen to leave
// FerretDB 1.24 (SQLite) answering "no such table" for collections that exist.
func dropAfter(t testing.TB, colls ...*mdb.Collection) {
	if os.Getenv("SHYLOCK_MONGO_URI") == "" {
		return
	}
	t.Cleanup(func() {
		for _, c := range colls {
			_ = c.Drop(context.Background())
		}
	})
}

// isolatedURI is the URI of a server for a test that drops collections while it works: on the
// embedded server, a FerretDB of its own (see dropAfter); else the tests' server.
func isolatedURI(t *testing.T) string {
	if os.Getenv("SHYLOCK_MONGO_URI") != "" {
		return mongoURI
	}
	srv := &serverProcess{addr: freeAddr(t), dir: t.TempDir()}
	srv.start(t)
	t.Cleanup(srv.kill)
	return srv.uri
}

func newMongo(t testing.TB, coll *mdb.Collection, opts ...mongo.Option) *mongo.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := mongo.New(ctx, coll, opts...)
	if err != nil {
		t.Fatalf("mongo.New on %s: %v", mongoServer, err)
	}
	t.Cleanup(b.Close)
	return b
}

// suiteOffset is the clock offset the conformance suite runs with: its leases are as short as
// 50 ms, which the default offset on a replica set (500 ms) refuses. TestMongoMaxClockOffset and
// TestMongoServerClockPath cover the offset and its default.
var suiteOffset = mongo.WithMaxClockOffset(10 * time.Millisecond)

func TestMongoConformance(t *testing.T) {
	checkLibraryLeaks(t)
	coll := collection(t)
	t.Logf("running against %s", mongoServer)
	shylocktest.Run(t, func(t *testing.T) shylock.Backend { return newMongo(t, coll, suiteOffset) })
}

// TestMongoClientClockSkew runs two clients whose clocks are an hour ahead and an hour behind:
// neither may steal the other's live lock, and both must see it free once it expires.
func TestMongoClientClockSkew(t *testing.T) {
	checkLibraryLeaks(t)
	ctx := context.Background()
	coll := collection(t)
	ahead := newMongo(t, coll, mongo.WithClock(func() time.Time { return time.Now().Add(time.Hour).Round(0) }))
	behind := newMongo(t, coll, mongo.WithClock(func() time.Time { return time.Now().Add(-time.Hour).Round(0) }))
	for _, c := range []struct {
		name          string
		holder, thief *mongo.Backend
	}{{"behind holds", behind, ahead}, {"ahead holds", ahead, behind}} {
		name := "skew/" + c.name
		holder := shylock.New(name, shylock.WithBackend(c.holder), shylock.WithTTL(time.Second))
		if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("%s: TryAcquire = %v, %v", c.name, ok, err)
		}
		thief := shylock.New(name, shylock.WithBackend(c.thief))
		if ok, err := thief.TryAcquire(ctx); ok || err != nil {
			t.Fatalf("%s: a client with a skewed clock took a live lock: %v, %v", c.name, ok, err)
		}
		if info, _ := c.thief.Inspect(ctx, name); !info.Held || info.Remaining > 2*time.Second {
			t.Fatalf("%s: the skewed client sees %+v; want held with about a second left", c.name, info)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := thief.Acquire(wctx); err != nil {
			t.Fatalf("%s: the lock was not free for the skewed client after it expired: %v", c.name, err)
		}
		cancel()
		if holder.Held() {
			t.Fatalf("%s: the skewed holder still believes it holds an expired lock", c.name)
		}
		if thief.Token() <= holder.Token() {
			t.Fatalf("%s: takeover token %d not above %d", c.name, thief.Token(), holder.Token())
		}
		_ = thief.Release(ctx)
	}
}

// TestMongoTokensSurviveDeletion deletes lock records behind the library's back, as the TTL
// monitor or an operator would, and checks that tokens still increase.
func TestMongoTokensSurviveDeletion(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	b := newMongo(t, coll)
	var last uint64
	for i := range 5 {
		l := shylock.New("deleted", shylock.WithBackend(b))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("round %d: TryAcquire = %v, %v", i, ok, err)
		}
		if l.Token() <= last {
			t.Fatalf("round %d: token %d after %d", i, l.Token(), last)
		}
		last = l.Token()
		if i%2 == 0 {
			_ = l.Release(ctx)
		}
		if _, err := coll.DeleteMany(ctx, bson.D{{Key: "name", Value: "deleted"}}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			err := l.Extend(ctx, time.Minute)
			if !errors.Is(err, shylock.ErrNotHeld) || !errors.Is(err, shylock.ErrLost) {
				t.Fatalf("round %d: Extend after the record was deleted: %v, want ErrNotHeld and ErrLost", i, err)
			}
		}
	}
}

// TestMongoRefusesConflictingIndexes: an index on name that is not unique would let two holders
// in, so New must refuse it rather than reuse it.
func TestMongoRefusesConflictingIndexes(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	if _, err := coll.Indexes().CreateOne(ctx, mdb.IndexModel{Keys: bson.D{{Key: "name", Value: 1}}}); err != nil {
		t.Fatal(err)
	}
	_, err := mongo.New(ctx, coll)
	if err == nil || !strings.Contains(err.Error(), "not unique") {
		t.Fatalf("New on a collection with a non-unique index on name: %v; want a clear refusal", err)
	}

	coll = collection(t)
	b := newMongo(t, coll)
	again := newMongo(t, coll) // a second New on the same collection reuses its indexes
	_ = again
	specs, err := coll.Indexes().ListSpecifications(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unique := 0
	for _, s := range specs {
		if s.Name == mongo.NameIndex && s.Unique != nil && *s.Unique {
			unique++
		}
	}
	if unique != 1 {
		t.Fatalf("indexes %+v: want one unique index %q", specs, mongo.NameIndex)
	}
	t.Logf("%s: server clock in updates: %v", mongoServer, b.ServerClock())
}

// TestMongoNamesAreStoredAsValues: names and labels that look like operators or field paths
// are stored verbatim, never interpreted.
func TestMongoNamesAreStoredAsValues(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	b := newMongo(t, coll)
	for _, name := range []string{"$where", "a.b", `{"$gt": ""}`, "$$NOW"} {
		l := shylock.New(name, shylock.WithBackend(b), shylock.WithOwner("$literal"))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("TryAcquire(%q) = %v, %v", name, ok, err)
		}
		var doc struct {
			Name  string `bson:"name"`
			Label string `bson:"label"`
		}
		if err := coll.FindOne(ctx, bson.D{{Key: "name", Value: name}}).Decode(&doc); err != nil || doc.Name != name || doc.Label != "$literal" {
			t.Fatalf("stored %+v, %v; want name %q and label stored verbatim", doc, err, name)
		}
	}
}

// TestMongoSaysOnceWhatItFellBackFrom: on a server without TTL indexes, pipeline updates or
// change streams, the backend says so at debug level, once each, and locking works.
func TestMongoSaysOnceWhatItFellBackFrom(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()
	b := newMongo(t, collection(t), mongo.WithLogger(log))
	if b.ServerClock() {
		t.Skipf("%s has pipeline updates; nothing to fall back from", mongoServer)
	}
	for range 3 { // waiting subscribes; only the first subscription opens the change stream
		holder := shylock.New("fallback", shylock.WithBackend(b))
		if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
			t.Fatal(ok, err)
		}
		time.AfterFunc(20*time.Millisecond, func() { _ = holder.Release(ctx) })
		if err := shylock.New("fallback", shylock.WithBackend(b)).Acquire(ctx); err != nil {
			t.Fatal(err)
		}
		_, _ = b.ForceRelease(ctx, "fallback")
	}
	b.Close()
	out := buf.String()
	for _, what := range []string{"refused a TTL index", "no aggregation-pipeline updates", "no change streams"} {
		if n := strings.Count(out, what); n != 1 {
			t.Errorf("the log says %q %d times; want once:\n%s", what, n, out)
		}
	}
	if strings.Contains(out, "level=WARN") || strings.Contains(out, "level=ERROR") {
		t.Errorf("falling back is not a warning:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMongoSpentClaimsAreSwept: on servers without $$NOW every takeover inserts a claim record;
// spent ones must be deleted, or a busy lock would grow its collection without bound (and on
// FerretDB 1.x, which reads a whole collection for every query by name, every command on it
// would slow down with it). Where a release takes a token too, whether a name's sweeps happen
// can depend on the parity of its first token, which comes from the server's clock: several
// names cover both.
func TestMongoSpentClaimsAreSwept(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	b := newMongo(t, coll)
	const holdings, names = 50, 6
	for n := range names {
		name := fmt.Sprintf("swept-%d", n)
		for range holdings {
			l := shylock.New(name, shylock.WithBackend(b))
			if ok, err := l.TryAcquire(ctx); !ok || err != nil {
				t.Fatalf("TryAcquire = %v, %v", ok, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		claims, err := coll.CountDocuments(ctx, bson.D{{Key: "name", Value: bson.D{
			{Key: "$gt", Value: "\x00" + name + "\x00"}, {Key: "$lt", Value: "\x00" + name + "\x01"}}}})
		if err != nil {
			t.Fatal(err)
		}
		if claims > 16 {
			t.Fatalf("%s: %d claim records after %d holdings; spent claims are not being deleted", name, claims, holdings)
		}
		t.Logf("%s: %d claim records after %d holdings", name, claims, holdings)
	}
}

// TestMongoServerClockPath: the backend judges expiry with the server's clock wherever the
// server has pipeline updates. The embedded FerretDB has none; MongoDB 4.4 and later (and the
// pipeline-capable FerretDB over PostgreSQL) have them, so a server named by SHYLOCK_MONGO_URI
// must take the server-clock path unless SHYLOCK_MONGO_SERVER_CLOCK=0 says it lacks it.
func TestMongoServerClockPath(t *testing.T) {
	b := newMongo(t, collection(t))
	want := os.Getenv("SHYLOCK_MONGO_URI") != "" && os.Getenv("SHYLOCK_MONGO_SERVER_CLOCK") != "0"
	if b.ServerClock() != want {
		t.Fatalf("%s: ServerClock() = %v, want %v", mongoServer, b.ServerClock(), want)
	}
	var hello struct {
		SetName string `bson:"setName"`
		Msg     string `bson:"msg"`
	}
	if err := client.Database("admin").RunCommand(t.Context(), bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
		t.Fatal(err)
	}
	wantOffset := time.Duration(0)
	if hello.SetName != "" || hello.Msg == "isdbgrid" {
		wantOffset = mongo.DefaultMaxClockOffset
	}
	if b.MaxClockOffset() != wantOffset {
		t.Fatalf("%s (set %q, msg %q): MaxClockOffset() = %v, want %v", mongoServer, hello.SetName, hello.Msg, b.MaxClockOffset(), wantOffset)
	}
}

// TestMongoMaxClockOffset: where several servers stamp times, a takeover waits until the lease
// has been expired for longer than the allowed offset, and the holder trusts its lease for the
// TTL less the offset.
func TestMongoMaxClockOffset(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	const offset, ttl = 700 * time.Millisecond, time.Second
	a := newMongo(t, coll, mongo.WithMaxClockOffset(offset))
	b := newMongo(t, coll, mongo.WithMaxClockOffset(offset))
	_, err := shylock.New("short", shylock.WithBackend(a), shylock.WithTTL(offset)).TryAcquire(ctx)
	if !errors.Is(err, shylock.ErrInvalidTTL) {
		t.Fatalf("TryAcquire with a TTL no longer than the offset: %v; want ErrInvalidTTL", err)
	}
	if info, _ := a.Inspect(ctx, "short"); info.Token != 0 {
		t.Fatalf("the refused acquire wrote %+v", info)
	}

	start := time.Now()
	holder := shylock.New("x", shylock.WithBackend(a), shylock.WithTTL(ttl), shylock.WithLogger(slog.New(slog.DiscardHandler)))
	if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	time.Sleep(time.Until(start.Add(ttl - offset + 100*time.Millisecond)))
	if holder.Held() {
		t.Fatalf("the holder trusts its lease %v after acquiring it; the TTL less the offset is %v", time.Since(start), ttl-offset)
	}
	time.Sleep(time.Until(start.Add(ttl + offset/2)))
	taker := shylock.New("x", shylock.WithBackend(b), shylock.WithRetry(10*time.Millisecond, 50*time.Millisecond))
	if ok, err := taker.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("TryAcquire %v after a %v lease began = %v, %v; it expired less than the offset %v ago",
			time.Since(start), ttl, ok, err, offset)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := taker.Acquire(wctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < ttl+offset {
		t.Fatalf("taken over %v after the lease began; want no sooner than TTL + offset = %v", d, ttl+offset)
	}
	if taker.Token() <= holder.Token() {
		t.Fatalf("takeover token %d not above %d", taker.Token(), holder.Token())
	}
}

// TestMongoGracePeriod: a release keeps the record with the expiry its lease had, so that the TTL
// index deletes it only a grace period after that and its token goes on meanwhile; New sets the
// TTL index to the grace period, changing its own index in place and refusing another's.
func TestMongoGracePeriod(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	b := newMongo(t, coll)
	l := shylock.New("kept", shylock.WithBackend(b))
	if ok, err := l.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	token := l.Token()
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Owner      string    `bson:"owner"`
		Token      int64     `bson:"token"`
		AcquiredAt time.Time `bson:"acquiredAt"`
		ExpiresAt  time.Time `bson:"expiresAt"`
	}
	if err := coll.FindOne(ctx, bson.D{{Key: "name", Value: "kept"}}).Decode(&rec); err != nil {
		t.Fatalf("the released record is gone: %v", err)
	}
	if !b.ServerClock() {
		token++ // there a release takes the next token, so that no takeover can come between
	}
	if rec.Owner != "" || !rec.ExpiresAt.After(rec.AcquiredAt) || uint64(rec.Token) != token {
		t.Fatalf("released record %+v: want it free, with its lease's expiry (not one before it was taken), token %d", rec, token)
	}
	if info, _ := b.Inspect(ctx, "kept"); info.Held || !info.ExpiresAt.IsZero() || info.Token != token {
		t.Fatalf("Inspect of a released lock: %+v; want free, no expiry, token %d", info, token)
	}

	ttlSeconds := func() (int64, bool) {
		cur, err := coll.Indexes().List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var all []bson.M
		if err := cur.All(ctx, &all); err != nil {
			t.Fatal(err)
		}
		for _, ix := range all {
			if ix["name"] == mongo.TTLIndex {
				s, _ := ix["expireAfterSeconds"].(int32)
				return int64(s), true
			}
		}
		return 0, false
	}
	s, ok := ttlSeconds()
	if !ok {
		t.Skipf("%s has no TTL index (the backend said so at debug level); nothing more to check", mongoServer)
	}
	if s != int64(mongo.DefaultGracePeriod/time.Second) {
		t.Fatalf("TTL index expireAfterSeconds = %d, want the default grace period %v", s, mongo.DefaultGracePeriod)
	}
	newMongo(t, coll, mongo.WithGracePeriod(2*time.Hour))
	if s, _ := ttlSeconds(); s != 7200 {
		t.Fatalf("after New with a 2h grace period, expireAfterSeconds = %d, want 7200", s)
	}

	other := collection(t)
	if _, err := other.Indexes().CreateOne(ctx, mdb.IndexModel{Keys: bson.D{{Key: "expiresAt", Value: 1}},
		Options: options.Index().SetExpireAfterSeconds(0).SetName("theirs")}); err != nil {
		t.Fatal(err)
	}
	if _, err := mongo.New(ctx, other); err == nil || !strings.Contains(err.Error(), "theirs") {
		t.Fatalf("New on a collection whose own TTL index deletes records at expiry: %v; want a refusal naming it", err)
	}
}

// TestMongoDroppedCollection: an acquire after the collection was dropped under running
// backends re-creates it (upserts do) without indexes; the acquire that creates a record must
// restore the unique index, so that racing backends never leave two records of one name.
func TestMongoDroppedCollection(t *testing.T) {
	ctx := context.Background()
	c, err := mdb.Connect(options.Client().ApplyURI(isolatedURI(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	coll := c.Database("shylock_test").Collection("dropped")
	dropAfter(t, coll)
	backends := []*mongo.Backend{newMongo(t, coll), newMongo(t, coll)}
	if err := coll.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	var (
		wins atomic.Int32
		wg   sync.WaitGroup
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := shylock.New("after-drop", shylock.WithBackend(backends[i%2]), shylock.WithLogger(slog.New(slog.DiscardHandler)))
			if ok, err := l.TryAcquire(ctx); ok {
				wins.Add(1)
			} else if err != nil {
				t.Logf("racer %d gave up: %v", i, err) // its record met another when the index was built
			}
		}()
	}
	wg.Wait()
	n, err := coll.CountDocuments(ctx, bson.D{{Key: "name", Value: "after-drop"}})
	if err != nil {
		t.Fatal(err)
	}
	w := wins.Load()
	if w > 1 || n != int64(w) {
		t.Fatalf("%d racers acquired, %d records of the name; want at most one of each, and as many records as holders", w, n)
	}
	if w == 0 { // every racer found another's record when it built the index, and gave up
		l := shylock.New("after-drop", shylock.WithBackend(backends[0]))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("TryAcquire after the race = %v, %v", ok, err)
		}
	}
	specs, err := coll.Indexes().ListSpecifications(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unique := false
	for _, s := range specs {
		unique = unique || s.Name == mongo.NameIndex && s.Unique != nil && *s.Unique
	}
	if !unique {
		t.Fatalf("indexes after acquiring in a dropped collection: %+v; the unique index on name was not restored", specs)
	}
}

// TestMongoReadOnly: a read-only backend writes nothing: on a collection that does not exist it
// says so and leaves nothing behind; on one that does it lists and refuses writes.
func TestMongoReadOnly(t *testing.T) {
	ctx := context.Background()
	missing := collection(t)
	if _, err := mongo.New(ctx, missing, mongo.WithReadOnly()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("read-only New on a missing collection: %v; want it to say the collection does not exist", err)
	}
	names, err := missing.Database().ListCollectionNames(ctx, bson.D{{Key: "name", Value: bson.D{{Key: "$regex", Value: "^" + missing.Name()}}}})
	if err != nil || len(names) != 0 {
		t.Fatalf("read-only New left %v behind (%v)", names, err)
	}

	coll := collection(t)
	w := newMongo(t, coll)
	if ok, err := shylock.New("seen", shylock.WithBackend(w)).TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	r := newMongo(t, coll, mongo.WithReadOnly())
	if infos, err := r.List(ctx, ""); err != nil || len(infos) != 1 || !infos[0].Held {
		t.Fatalf("read-only List = %+v, %v", infos, err)
	}
	shylocktest.ReadOnly(t, r)
}
