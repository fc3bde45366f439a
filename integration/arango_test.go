package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
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

func TestArangoConformance(t *testing.T) {
	checkLibraryLeaks(t)
	db := arangoDatabase(t)
	shylocktest.Run(t, func(t *testing.T) shylock.Backend {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := arango.New(ctx, db, "locks")
		if err != nil {
			t.Fatalf("arango.New: %v", err)
		}
		t.Cleanup(b.Close)
		return b
	})
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
