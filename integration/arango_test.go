package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/connection"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/arango"
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
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("SHYLOCK_ARANGO_URL: %v", err)
	}
	cfg := connection.DefaultHTTPConfigurationWrapper(connection.NewRoundRobinEndpoints([]string{u.Scheme + "://" + u.Host}), true)
	if u.User != nil {
		pw, _ := u.User.Password()
		cfg.Authentication = connection.NewBasicAuth(u.User.Username(), pw)
	}
	client := arangodb.NewClient(connection.NewHttpConnection(cfg))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "shylock_test_" + hex.EncodeToString(b[:])
	db, err := client.CreateDatabase(ctx, name, nil)
	if err != nil {
		t.Fatalf("creating database %s on %s: %v", name, u.Host, err)
	}
	t.Cleanup(func() { _ = db.Remove(context.Background()) })
	return db
}

// startArangoContainer runs image with the local Docker engine and returns its URL.
func startArangoContainer(t *testing.T, image string) string {
	t.Helper()
	out, err := exec.Command("docker", "run", "-d", "--rm", "-e", "ARANGO_NO_AUTH=1", "-p", "127.0.0.1::8529", image).CombinedOutput()
	if err != nil {
		t.Skipf("SHYLOCK_ARANGO_IMAGE=%s but no container could be started (is a Docker engine running?): %v: %s", image, err, out)
	}
	id := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", id).Run() })
	out, err = exec.Command("docker", "port", id, "8529/tcp").Output()
	if err != nil {
		t.Fatalf("docker port: %v", err)
	}
	addr := strings.TrimSpace(strings.Split(string(out), "\n")[0])
	base := "http://" + addr
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if resp, err := http.Get(base + "/_api/version"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base
			}
		}
	}
	t.Fatalf("ArangoDB container %s did not answer at %s within 2 minutes", image, base)
	return ""
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
