package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"

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
	t.Cleanup(func() { _ = coll.Drop(context.Background()) })
	return coll
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

func TestMongoConformance(t *testing.T) {
	checkLibraryLeaks(t)
	coll := collection(t)
	t.Logf("running against %s", mongoServer)
	shylocktest.Run(t, func(t *testing.T) shylock.Backend { return newMongo(t, coll) })
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
// spent ones must be deleted, or a busy lock would grow its collection without bound.
func TestMongoSpentClaimsAreSwept(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	b := newMongo(t, coll)
	const holdings = 50
	for range holdings {
		l := shylock.New("swept", shylock.WithBackend(b))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			t.Fatalf("TryAcquire = %v, %v", ok, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
	}
	claims, err := coll.CountDocuments(ctx, bson.D{{Key: "name", Value: bson.D{
		{Key: "$gt", Value: "\x00swept\x00"}, {Key: "$lt", Value: "\x00swept\x01"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if claims > 16 {
		t.Fatalf("%d claim records after %d holdings; spent claims are not being deleted", claims, holdings)
	}
	t.Logf("%d claim records after %d holdings", claims, holdings)
}
