package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/arango"
	"github.com/shylock-go/shylock/internal/connect"
	"github.com/shylock-go/shylock/shylocktest"
)

// arangoDatabase returns a database on a real ArangoDB: the server at SHYLOCK_ARANGO_URL
// (credentials in the URL's user info), or a container started from SHYLOCK_ARANGO_IMAGE. With
// neither, the test is skipped: no ArangoDB server can be embedded in process.
func arangoDatabase(t *testing.T) arangodb.Database {
	t.Helper()
	raw := os.Getenv("SHYLOCK_ARANGO_URL")
	if raw == "" {
		image := os.Getenv("SHYLOCK_ARANGO_IMAGE")
		if image == "" {
			t.Skip("no ArangoDB: set SHYLOCK_ARANGO_URL (for example http://root:pw@127.0.0.1:8529) " +
				"or SHYLOCK_ARANGO_IMAGE (an arangodb image for a local Docker engine) to run the ArangoDB tests")
		}
		raw = startArangoContainer(t, image)
	}
	client, err := connect.ArangoClient(raw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "shylock_test_" + hex.EncodeToString(b[:])
	db, err := client.CreateDatabase(ctx, name, nil)
	if err != nil {
		t.Fatalf("creating database %s: %v", name, err)
	}
	t.Cleanup(func() { _ = db.Remove(context.Background()) })
	return db
}

// startArangoContainer runs image with testcontainers and returns its URL.
func startArangoContainer(t *testing.T, image string) string {
	t.Helper()
	requireDocker(t)
	ctx := context.Background()
	c, err := testcontainers.Run(ctx, image,
		testcontainers.WithExposedPorts("8529/tcp"),
		testcontainers.WithEnv(map[string]string{"ARANGO_NO_AUTH": "1"}),
		testcontainers.WithWaitStrategy(wait.ForHTTP("/_api/version").WithPort("8529/tcp").WithStartupTimeout(2*time.Minute)))
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("starting %s: %v", image, err)
	}
	endpoint, err := c.PortEndpoint(ctx, "8529/tcp", "http")
	if err != nil {
		t.Fatal(err)
	}
	return endpoint
}

// suiteArango is a backend on db's collection "locks" for a suite whose leases are as short as
// 50 ms, which a cluster's default offset (500 ms) refuses; TestArangoMaxClockOffset covers the
// offset.
func suiteArango(t *testing.T, db arangodb.Database) shylock.Backend {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := arango.New(ctx, db, "locks", arango.WithMaxClockOffset(10*time.Millisecond))
	if err != nil {
		t.Fatalf("arango.New: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

func TestArangoConformance(t *testing.T) {
	checkLibraryLeaks(t)
	db := arangoDatabase(t)
	shylocktest.Run(t, func(t *testing.T) shylock.Backend { return suiteArango(t, db) })
}

// TestArangoConcurrentSetup: many processes start at once and all create the collection.
func TestArangoConcurrentSetup(t *testing.T) {
	db := arangoDatabase(t)
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			b, err := arango.New(context.Background(), db, "setup")
			if err == nil {
				b.Close()
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent arango.New: %v", err)
		}
	}
}

func newArango(t *testing.T, db arangodb.Database, coll string, opts ...arango.Option) *arango.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := arango.New(ctx, db, coll, opts...)
	if err != nil {
		t.Fatalf("arango.New: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestArangoGracePeriod: a release keeps the record with its lease's expiry (the TTL index
// deletes it a grace period after that), a free lock shows no expiry, the TTL index has the grace
// period, and New replaces its own TTL index when the grace period changes but refuses another's.
func TestArangoGracePeriod(t *testing.T) {
	ctx := context.Background()
	db := arangoDatabase(t)
	b := newArango(t, db, "grace")
	l := shylock.New("kept", shylock.WithBackend(b))
	if ok, err := l.TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	token := l.Token()
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	info, err := b.Inspect(ctx, "kept")
	if err != nil || info.Held || info.Token != token || !info.ExpiresAt.IsZero() {
		t.Fatalf("a released lock: %+v, %v; want free, its token, no expiry", info, err)
	}
	cur, err := db.Query(ctx, "FOR d IN grace FILTER d.name == 'kept' RETURN d.expiresAt", nil)
	if err != nil {
		t.Fatal(err)
	}
	var exp float64
	if _, err := cur.ReadDocument(ctx, &exp); err != nil || exp < float64(time.Now().Add(-time.Hour).Unix()) {
		t.Fatalf("the released record's expiresAt is %v (%v): set to the past, the TTL index deletes it and its tokens at once", exp, err)
	}
	_ = cur.Close()

	ttl := func(coll string) (string, int) {
		c, err := db.GetCollection(ctx, coll, nil)
		if err != nil {
			t.Fatal(err)
		}
		ixs, err := c.Indexes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ix := range ixs {
			if ix.Type == arangodb.TTLIndexType && ix.RegularIndex != nil && ix.RegularIndex.ExpireAfter != nil {
				return ix.Name, *ix.RegularIndex.ExpireAfter
			}
		}
		return "", 0
	}
	if name, secs := ttl("grace"); name != arango.TTLIndex || secs != 86400 {
		t.Fatalf("TTL index %q expireAfter %d; want %q with a day", name, secs, arango.TTLIndex)
	}
	newArango(t, db, "grace", arango.WithGracePeriod(2*time.Hour))
	if _, secs := ttl("grace"); secs != 7200 {
		t.Fatalf("after New with a 2h grace period, expireAfter = %d", secs)
	}

	c, err := db.CreateCollectionV2(ctx, "theirs", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.EnsureTTLIndex(ctx, []string{"gone"}, 0, &arangodb.CreateTTLIndexOptions{Name: "their_ttl"}); err != nil {
		t.Fatal(err)
	}
	if _, err := arango.New(ctx, db, "theirs"); err == nil || !strings.Contains(err.Error(), "their_ttl") {
		t.Fatalf("New on a collection with another TTL index: %v; want a refusal naming it", err)
	}
}

// TestArangoMaxClockOffset: a takeover waits until the lease has been expired for longer than
// the offset, and the holder trusts its lease for the TTL less the offset; the default offset is
// 0 on a single server and 500 ms in a cluster.
func TestArangoMaxClockOffset(t *testing.T) {
	ctx := context.Background()
	db := arangoDatabase(t)
	info, err := db.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Duration(0)
	if info.ReplicationFactor != 0 || info.WriteConcern != 0 || info.Sharding != "" {
		want = arango.DefaultMaxClockOffset
	}
	if got := newArango(t, db, "offset").MaxClockOffset(); got != want {
		t.Fatalf("default offset %v, want %v (database info %+v)", got, want, info)
	}
	const offset, ttl = 700 * time.Millisecond, time.Second
	a := newArango(t, db, "offset", arango.WithMaxClockOffset(offset))
	b := newArango(t, db, "offset", arango.WithMaxClockOffset(offset))
	start := time.Now()
	holder := shylock.New("x", shylock.WithBackend(a), shylock.WithTTL(ttl), shylock.WithLogger(slog.New(slog.DiscardHandler)))
	if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	time.Sleep(time.Until(start.Add(ttl + offset/2)))
	if holder.Held() {
		t.Fatalf("the holder trusts its lease %v in", time.Since(start))
	}
	taker := shylock.New("x", shylock.WithBackend(b), shylock.WithRetry(10*time.Millisecond, 50*time.Millisecond))
	if ok, err := taker.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("TryAcquire %v into a %v lease = %v, %v; it expired less than the offset ago", time.Since(start), ttl, ok, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := taker.Acquire(wctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < ttl+offset {
		t.Fatalf("taken over %v in; want no sooner than TTL + offset = %v", d, ttl+offset)
	}
}

// TestArangoClusterSetup: in a cluster New creates the collection sharded by name with the
// replication asked for, and refuses a collection sharded otherwise.
func TestArangoClusterSetup(t *testing.T) {
	ctx := context.Background()
	db := arangoDatabase(t)
	info, err := db.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.ReplicationFactor == 0 && info.WriteConcern == 0 && info.Sharding == "" {
		t.Skip("a single server: no shards or replication to check")
	}
	newArango(t, db, "replicated", arango.WithReplicationFactor(2), arango.WithWriteConcern(2))
	c, err := db.GetCollection(ctx, "replicated", nil)
	if err != nil {
		t.Fatal(err)
	}
	props, err := c.Properties(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(props.ShardKeys) != 1 || props.ShardKeys[0] != "name" || props.ReplicationFactor != 2 || props.WriteConcern != 2 {
		t.Fatalf("collection created with shard keys %v, replication factor %v, write concern %v; want [name], 2, 2",
			props.ShardKeys, props.ReplicationFactor, props.WriteConcern)
	}
	if _, err := db.CreateCollectionV2(ctx, "by_key", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := arango.New(ctx, db, "by_key"); err == nil || !strings.Contains(err.Error(), "sharded by name") {
		t.Fatalf("New on a collection sharded by _key: %v; want a refusal with advice", err)
	}
}
