package testdb

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/connection"
	"github.com/testcontainers/testcontainers-go"

	"github.com/shylock-go/shylock/arango"
)

const (
	arangoPort            = "8529/tcp"
	defaultArangoDatabase = "_system"
)

// Arango returns a backend on a fresh collection of the ArangoDB server at rawURL,
// http(s)://[user:password@]host:port (one of ArangoContainerURL's, a CI service,
// SHYLOCK_ARANGO_URL), in the database WithDatabase names (default _system), made with
// arango.New and the options of WithArangoOptions. When the test ends the backend is closed
// and the collection it was given removed (unless it was named with WithCollection).
func Arango(t TB, rawURL string, opts ...Option) *arango.Backend {
	t.Helper()
	c := newConfig(opts)
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		t.Fatalf("testdb: ArangoDB URL %q: want http(s)://[user:password@]host:port", redact(rawURL))
	}
	cfg := connection.DefaultHTTPConfigurationWrapper(connection.NewRoundRobinEndpoints([]string{u.Scheme + "://" + u.Host}), false)
	if u.User != nil {
		pw, _ := u.User.Password()
		cfg.Authentication = connection.NewBasicAuth(u.User.Username(), pw)
	}
	if tr, ok := cfg.Transport.(interface{ CloseIdleConnections() }); ok {
		t.Cleanup(tr.CloseIdleConnections)
	}
	client := arangodb.NewClient(connection.NewHttpConnection(cfg))

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	database := c.database
	if database == "" {
		database = defaultArangoDatabase
	}
	db, err := client.GetDatabase(ctx, database, nil)
	if err != nil {
		t.Fatalf("testdb: opening database %s on %s: %v", database, redact(rawURL), err)
	}
	name, own := c.collectionName()
	if own {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), cleanupDeadline)
			defer cancel()
			if coll, err := db.GetCollection(ctx, name, nil); err == nil {
				_ = coll.Remove(ctx)
			}
		})
	}
	b, err := arango.New(ctx, db, name, c.arangoOpts...)
	if err != nil {
		t.Fatalf("testdb: making an arango backend on %s, collection %s/%s: %v", redact(rawURL), database, name, err)
	}
	t.Cleanup(b.Close)
	return b
}

// ArangoContainer starts an ArangoDB container (see ArangoContainerURL) and returns a backend
// on a fresh collection of it (see Arango). Where no image, Docker engine or registry is at
// hand, the test is skipped with a message that names SHYLOCK_ARANGO_IMAGE or the option that
// named the image.
func ArangoContainer(t TB, opts ...Option) *arango.Backend {
	t.Helper()
	return Arango(t, ArangoContainerURL(t, opts...), opts...)
}

// ArangoContainerURL starts a container with testcontainers-go and returns the URL of the
// ArangoDB server in it, http://host:port, once the server says it is available. The
// container is removed when the test ends.
//
// The image is the one WithImage names, else the one in SHYLOCK_ARANGO_IMAGE (for example
// arangodb:3.12); it runs a single server without authentication (ARANGO_NO_AUTH=1). The test
// is skipped, with a message that says which and names where the image came from, when no
// image is named, no Docker engine answers, or the image is not on the engine and cannot be
// pulled.
func ArangoContainerURL(t TB, opts ...Option) string {
	t.Helper()
	c := newConfig(opts)
	image, from := c.image, c.imageFrom
	if image == "" {
		image, from = os.Getenv(EnvArangoImage), EnvArangoImage
	}
	if image == "" {
		t.Skipf("testdb: no ArangoDB image to run: set %s to an ArangoDB image (for example arangodb:3.12) "+
			"that the Docker engine has or can pull, or pass testdb.WithImage", EnvArangoImage)
	}
	endpoint := run(t, c, image, from, arangoPort,
		testcontainers.WithEnv(map[string]string{"ARANGO_NO_AUTH": "1"}))
	base := "http://" + endpoint

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	// 200 once the server is ready for any operation; 503 while it starts.
	err := poll(ctx, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/_admin/server/availability", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", req.URL.Path, resp.Status)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testdb: %s is not available on %s after %v: %v", image, base, c.timeout, err)
	}
	return base
}
