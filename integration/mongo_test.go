package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

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
