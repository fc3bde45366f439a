package testdb_test

import (
	"context"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/testdb"
)

func TestMain(m *testing.M) {
	// The reaper's image cannot be pulled where there is no registry; every test removes what
	// it started anyway.
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	// Inside a container testcontainers looks for published ports on the default gateway; when
	// the engine runs in this very network namespace (its bridge is here), they are on loopback.
	if _, err := net.InterfaceByName("docker0"); err == nil && os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" {
		os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
	os.Exit(m.Run())
}

// checkLocking takes a name with one backend, checks that a second backend is refused it,
// then hands it over: what a ready backend on a working server does.
func checkLocking(t *testing.T, one, two shylock.Backend) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := shylock.New("testdb/check", shylock.WithBackend(one), shylock.WithTTL(time.Minute))
	second := shylock.New("testdb/check", shylock.WithBackend(two), shylock.WithTTL(time.Minute))
	if ok, err := first.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("first TryAcquire = %v, %v; want true, nil", ok, err)
	}
	if ok, err := second.TryAcquire(ctx); ok || err != nil {
		t.Fatalf("second TryAcquire while held = %v, %v; want false, nil", ok, err)
	}
	token := first.Token()
	if err := first.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := second.Acquire(ctx); err != nil {
		t.Fatalf("Acquire after the release: %v", err)
	}
	if second.Token() <= token {
		t.Fatalf("token %d after the handover, not above %d", second.Token(), token)
	}
	if err := second.Release(ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

func TestEmbedded(t *testing.T) {
	uri := testdb.EmbeddedURI(t)
	checkLocking(t, testdb.Mongo(t, uri, testdb.WithCollection("shared")), testdb.Mongo(t, uri, testdb.WithCollection("shared")))
	b := testdb.Embedded(t)
	checkLocking(t, b, b)
}

// TestEmbeddedCleansUp checks that the collections Mongo makes are dropped, those named with
// WithCollection kept, and the server stopped, when the test ends.
func TestEmbeddedCleansUp(t *testing.T) {
	var serverURI string
	t.Run("server", func(t *testing.T) {
		serverURI = testdb.EmbeddedURI(t)
		uri := serverURI
		t.Run("backends", func(t *testing.T) {
			fresh := testdb.Mongo(t, uri)
			checkLocking(t, fresh, fresh)
			checkLocking(t, testdb.Mongo(t, uri, testdb.WithCollection("kept")), testdb.Mongo(t, uri, testdb.WithCollection("kept")))
			if got := collections(t, uri); !slices.Contains(got, "kept") || len(got) < 3 {
				t.Fatalf("collections while the backends are open: %v", got)
			}
		})
		got := collections(t, uri)
		slices.Sort(got)
		if want := []string{"kept", "kept.events"}; !slices.Equal(got, want) {
			t.Errorf("collections after the test: %v; want %v", got, want)
		}
	})
	u, err := url.Parse(serverURI)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", u.Host, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the embedded server at %s still accepts connections after its test", u.Host)
	}
}

// collections lists the collections of the default database at uri.
func collections(t *testing.T, uri string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := mdb.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Disconnect(context.Background()) }()
	names, err := cl.Database("shylock_test").ListCollectionNames(ctx, bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestSkipMessages checks that the container helpers skip, never fail, where the image they
// need cannot be had, and that the message names the variable that would name one.
func TestSkipMessages(t *testing.T) {
	for _, tc := range []struct {
		env   string
		start func(testdb.TB)
	}{
		{testdb.EnvMongoImage, func(t testdb.TB) { testdb.MongoContainer(t) }},
		{testdb.EnvArangoImage, func(t testdb.TB) { testdb.ArangoContainer(t) }},
	} {
		for _, image := range []string{"", "shylock-testdb-absent:none"} {
			t.Run(tc.env+"="+image, func(t *testing.T) {
				t.Setenv(tc.env, image)
				s := &standIn{}
				s.run(tc.start)
				if s.failed != "" || s.skipped == "" {
					t.Fatalf("failed %q, skipped %q; want a skip", s.failed, s.skipped)
				}
				if !strings.Contains(s.skipped, tc.env) {
					t.Errorf("the skip message does not name %s: %s", tc.env, s.skipped)
				}
				t.Log(s.skipped)
			})
		}
	}
}

// TestMongoContainerImage runs the MongoDB image in SHYLOCK_MONGO_IMAGE as a replica set: the
// backend must find pipeline updates with $$NOW there, and lock across two backends.
func TestMongoContainerImage(t *testing.T) {
	uri := testdb.MongoContainerURI(t)
	b := testdb.Mongo(t, uri, testdb.WithCollection("locks"))
	if !b.ServerClock() {
		t.Errorf("the backend judges expiry by an estimate of the server's clock: not a MongoDB 4.4+ replica set?")
	}
	checkLocking(t, b, testdb.Mongo(t, uri, testdb.WithCollection("locks")))
}

// TestArangoContainerImage runs the ArangoDB image in SHYLOCK_ARANGO_IMAGE.
func TestArangoContainerImage(t *testing.T) {
	url := testdb.ArangoContainerURL(t)
	checkLocking(t, testdb.Arango(t, url, testdb.WithCollection("locks")), testdb.Arango(t, url, testdb.WithCollection("locks")))
}

// TestFerretDBContainer builds the FerretDB image, runs it with MongoContainer, locks on it,
// and checks that the container and the image are gone after the test.
func TestFerretDBContainer(t *testing.T) {
	var image string
	var containers []string
	t.Run("run", func(t *testing.T) {
		image = testdb.FerretDBImage(t)
		uri := testdb.MongoContainerURI(t, testdb.WithWireImage(image))
		checkLocking(t, testdb.Mongo(t, uri, testdb.WithCollection("locks")), testdb.Mongo(t, uri, testdb.WithCollection("locks")))
		dc := dockerClient(t)
		list, err := dc.ContainerList(context.Background(), client.ContainerListOptions{
			Filters: make(client.Filters).Add("ancestor", image),
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range list.Items {
			containers = append(containers, c.ID)
		}
		if len(containers) != 1 {
			t.Fatalf("%d containers of %s running; want 1", len(containers), image)
		}
	})
	if image == "" {
		t.Skip("skipped: see the subtest's message")
	}
	dc := dockerClient(t)
	ctx := context.Background()
	for _, id := range containers {
		if _, err := dc.ContainerInspect(ctx, id, client.ContainerInspectOptions{}); err == nil {
			t.Errorf("container %.12s of %s is still there after its test", id, image)
		}
	}
	if _, err := dc.ImageInspect(ctx, image); err == nil {
		t.Errorf("image %s is still there after its test", image)
	}
}

func dockerClient(t *testing.T) *testcontainers.DockerClient {
	t.Helper()
	dc, err := testcontainers.NewDockerClientWithOpts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.Close() })
	return dc
}
