package testdb_test

import (
	"context"
	"fmt"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/testdb"
)

// In a test function, t is the test's *testing.T: asTest stands in for the test here. The
// backend, its collection and the server are gone when the test ends.
func ExampleEmbedded() {
	asTest(func(t testdb.TB) {
		backend := testdb.Embedded(t) // FerretDB in the test process: no Docker needed

		ctx := context.Background()
		err := shylock.Do(ctx, "invoices/2024-06", func(ctx context.Context) error {
			return nil // the code under test, holding the lock
		}, shylock.WithBackend(backend))
		fmt.Println(err)
	})
	// Output: <nil>
}

// Two backends on one collection stand for two instances of a service. Mongo takes any
// MongoDB-wire server: here an embedded one, in CI perhaps the one in SHYLOCK_MONGO_URI.
func ExampleMongo() {
	asTest(func(t testdb.TB) {
		uri := testdb.EmbeddedURI(t)
		one := testdb.Mongo(t, uri, testdb.WithCollection("locks"))
		two := testdb.Mongo(t, uri, testdb.WithCollection("locks"))

		ctx := context.Background()
		first := shylock.New("reports/nightly", shylock.WithBackend(one))
		second := shylock.New("reports/nightly", shylock.WithBackend(two))
		ok1, _ := first.TryAcquire(ctx)
		ok2, _ := second.TryAcquire(ctx)
		fmt.Println(ok1, ok2)

		token := first.Token()
		_ = first.Release(ctx)
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		fmt.Println(second.Acquire(ctx), second.Token() > token)
	})
	// Output:
	// true false
	// <nil> true
}

// A MongoDB replica set of one member in a container, so that change streams wake waiters.
// Run with SHYLOCK_MONGO_IMAGE=mongo:8 (or pass testdb.WithImage); without an image or a
// Docker engine the test is skipped.
func ExampleMongoContainer() {
	asTest(func(t testdb.TB) {
		backend := testdb.MongoContainer(t)

		lock := shylock.New("orders/42", shylock.WithBackend(backend), shylock.WithTTL(10*time.Second))
		ok, err := lock.TryAcquire(context.Background())
		if err != nil || !ok {
			t.Fatalf("TryAcquire: %v, %v", ok, err)
		}
	})
}

// Without a registry, build FerretDB into an image of your own and run it as a container of
// any MongoDB-wire server.
func ExampleFerretDBImage() {
	asTest(func(t testdb.TB) {
		image := testdb.FerretDBImage(t)
		backend := testdb.MongoContainer(t, testdb.WithWireImage(image))

		lock := shylock.New("orders/42", shylock.WithBackend(backend))
		if err := lock.Acquire(context.Background()); err != nil {
			t.Fatalf("Acquire: %v", err)
		}
	})
}

// An ArangoDB server in a container: run with SHYLOCK_ARANGO_IMAGE=arangodb:3.12 (or pass
// testdb.WithImage); without an image or a Docker engine the test is skipped.
func ExampleArangoContainer() {
	asTest(func(t testdb.TB) {
		backend := testdb.ArangoContainer(t)

		ctx := context.Background()
		holder := shylock.New("reports/nightly", shylock.WithBackend(backend))
		if err := holder.Acquire(ctx); err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		ok, err := shylock.New("reports/nightly", shylock.WithBackend(backend)).TryAcquire(ctx)
		fmt.Println(ok, err) // false <nil>: held by the first handle
	})
}
