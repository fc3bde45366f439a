package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dockerclient "github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"
	"github.com/testcontainers/testcontainers-go/wait"
	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/shylocktest"
)

// requireDocker skips t on a machine without a Docker engine. No image is ever pulled: the
// tests build their own FROM scratch image, or use the one named in SHYLOCK_*_IMAGE.
func requireDocker(t *testing.T) {
	t.Helper()
	if os.Getenv("TESTCONTAINERS_RYUK_DISABLED") == "" {
		t.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true") // the reaper's image cannot be pulled
	}
	// Inside a container testcontainers looks for published ports on the default gateway; when
	// the engine runs in this very network namespace (its bridge is here), they are on loopback.
	if _, err := net.InterfaceByName("docker0"); err == nil && os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") == "" {
		t.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err == nil {
		defer c.Close()
		_, err = c.Ping(ctx, dockerclient.PingOptions{})
	}
	if err != nil {
		t.Skipf("no Docker engine (%v): the container tests skip; the process-level fault tests still run", err)
	}
}

var (
	imageOnce sync.Once
	imageDir  string
	imageErr  error
	// imageTag is this run's own, so that concurrent runs never share an image and each run
	// removes the one it built (removeTestImage).
	imageTag = "run-" + randomSuffix()
)

const imageRepo = "shylock-test"

// removeTestImage removes the image and the build directory the container tests made, if they
// made them: a test run leaves nothing behind. TestMain calls it after the tests.
func removeTestImage() {
	if imageDir == "" {
		return
	}
	_ = os.RemoveAll(imageDir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := c.ImageRemove(ctx, imageRepo+":"+imageTag, dockerclient.ImageRemoveOptions{Force: true, PruneChildren: true}); err != nil &&
		!strings.Contains(err.Error(), "No such image") {
		fmt.Fprintln(os.Stderr, "removing the test image:", err)
	}
}

// imageContext builds, once, the static programs the test image holds and a Dockerfile FROM
// scratch that runs them.
func imageContext(t *testing.T) string {
	t.Helper()
	imageOnce.Do(func() {
		imageDir, imageErr = os.MkdirTemp("", "shylock-image-")
		if imageErr != nil {
			return
		}
		for prog, pkg := range map[string]string{
			"ferretdb-server": "github.com/shylock-go/shylock/testdb/cmd/ferretdb-server",
			"lockclient":      "./cmd/lockclient",
		} {
			cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(imageDir, prog), pkg)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				imageErr = fmt.Errorf("building %s: %v\n%s", prog, err, out)
				return
			}
		}
		imageErr = os.WriteFile(filepath.Join(imageDir, "Dockerfile"), []byte(
			"FROM scratch\nCOPY ferretdb-server lockclient /\nENTRYPOINT [\"/ferretdb-server\"]\n"), 0o644)
	})
	if imageErr != nil {
		t.Fatal(imageErr)
	}
	return imageDir
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// startFerretContainer runs FerretDB in a container of the test image, its data on a volume.
func startFerretContainer(t *testing.T, opts ...testcontainers.ContainerCustomizer) *testcontainers.DockerContainer {
	t.Helper()
	ctx := context.Background()
	opts = append([]testcontainers.ContainerCustomizer{
		testcontainers.WithDockerfile(testcontainers.FromDockerfile{Context: imageContext(t), Repo: imageRepo, Tag: imageTag, KeepImage: true}),
		testcontainers.WithExposedPorts("27017/tcp"),
		testcontainers.WithMounts(testcontainers.VolumeMount("shylock-data-"+randomSuffix(), "/data")),
		testcontainers.WithWaitStrategy(wait.ForLog("ready at").WithStartupTimeout(time.Minute)),
	}, opts...)
	c, err := testcontainers.Run(ctx, "", opts...)
	testcontainers.CleanupContainer(t, c, testcontainers.RemoveVolumes())
	if err != nil {
		t.Fatalf("starting the FerretDB container: %v", err)
	}
	return c
}

// connectContainer returns a client for the MongoDB-wire server in c.
func connectContainer(t *testing.T, c *testcontainers.DockerContainer) *mdb.Client {
	t.Helper()
	ctx := context.Background()
	endpoint, err := c.PortEndpoint(ctx, "27017/tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	cl, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + endpoint + "/?directConnection=true"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Disconnect(context.Background()) })
	return cl
}

// TestContainerConformance runs the conformance suite against FerretDB in a container.
func TestContainerConformance(t *testing.T) {
	requireDocker(t)
	checkLibraryLeaks(t)
	cl := connectContainer(t, startFerretContainer(t))
	coll := cl.Database("conformance").Collection("locks")
	shylocktest.Run(t, func(t *testing.T) shylock.Backend { return newMongo(t, coll, suiteOffset) })
}

// TestContainerMongoImage runs the suite against the real MongoDB image named in
// SHYLOCK_MONGO_IMAGE, started as a single-node replica set so that change streams and the TTL
// monitor are part of the test.
func TestContainerMongoImage(t *testing.T) {
	image := os.Getenv("SHYLOCK_MONGO_IMAGE")
	if image == "" {
		t.Skip("set SHYLOCK_MONGO_IMAGE (for example mongo:8) to run the suite against a real MongoDB replica set in a container")
	}
	requireDocker(t)
	checkLibraryLeaks(t)
	ctx := context.Background()
	c, err := testcontainers.Run(ctx, image,
		testcontainers.WithExposedPorts("27017/tcp"),
		testcontainers.WithCmd("--replSet", "rs0", "--bind_ip_all"),
		testcontainers.WithWaitStrategy(wait.ForListeningPort("27017/tcp").WithStartupTimeout(2*time.Minute)))
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("starting %s: %v", image, err)
	}
	cl := connectContainer(t, c)
	err = cl.Database("admin").RunCommand(ctx, bson.D{{Key: "replSetInitiate", Value: bson.D{
		{Key: "_id", Value: "rs0"}, {Key: "members", Value: bson.A{bson.D{{Key: "_id", Value: 0}, {Key: "host", Value: "localhost:27017"}}}}}}}).Err()
	if err != nil && !strings.Contains(err.Error(), "already initialized") {
		t.Fatalf("replSetInitiate: %v", err)
	}
	waitFor(t, func() bool {
		var hello struct {
			IsWritablePrimary bool `bson:"isWritablePrimary"`
		}
		return cl.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello) == nil && hello.IsWritablePrimary
	})
	coll := cl.Database("conformance").Collection("locks")
	b := newMongo(t, coll)
	if !b.ServerClock() {
		t.Errorf("%s: the backend did not detect $$NOW in updates", image)
	}
	shylocktest.Run(t, func(t *testing.T) shylock.Backend { return newMongo(t, coll, suiteOffset) })
}

// report returns the value on the first line of out that starts with "key ", or "".
func report(out, key string) string {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, key+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// logs returns a container's output so far.
func logs(t *testing.T, c *testcontainers.DockerContainer) string {
	t.Helper()
	r, err := c.Logs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(r)
	return buf.String()
}

// TestContainerPartition cuts a holder in a container off the server's network: it must learn
// of the loss no later than another client can take the lock over, with a higher token.
func TestContainerPartition(t *testing.T) {
	requireDocker(t)
	ctx := context.Background()
	nw, err := network.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testcontainers.CleanupNetwork(t, nw)
	server := startFerretContainer(t, network.WithNetwork([]string{"db"}, nw))
	// The holder gives up 1% + 2ms before the server's expiry: 52ms with this TTL, enough for
	// its timer to fire on a loaded machine.
	const ttl = 5 * time.Second
	holder, err := testcontainers.Run(ctx, "",
		testcontainers.WithDockerfile(testcontainers.FromDockerfile{Context: imageContext(t), Repo: imageRepo, Tag: imageTag, KeepImage: true}),
		testcontainers.WithEntrypoint("/lockclient", "-uri", "mongodb://db:27017/", "-name", "partitioned", "-ttl", ttl.String()),
		network.WithNetwork([]string{"holder"}, nw),
		testcontainers.WithWaitStrategy(wait.ForLog("held ").WithStartupTimeout(time.Minute)))
	testcontainers.CleanupContainer(t, holder)
	if err != nil {
		t.Fatalf("starting the holder container: %v", err)
	}
	heldToken, err := strconv.ParseUint(report(logs(t, holder), "held"), 10, 64)
	if err != nil {
		t.Fatalf("holder output: %v\n%s", err, logs(t, holder))
	}

	dc, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, err := dc.NetworkDisconnect(ctx, nw.ID, dockerclient.NetworkDisconnectOptions{Container: holder.GetContainerID(), Force: true}); err != nil {
		t.Fatalf("partitioning the holder: %v", err)
	}
	cut := time.Now()

	b := newMongo(t, connectContainer(t, server).Database("containers").Collection("locks"))
	l := shylock.New("partitioned", shylock.WithBackend(b), shylock.WithRetry(10*time.Millisecond, 100*time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.Acquire(actx); err != nil {
		t.Fatalf("taking over from the partitioned holder: %v", err)
	}
	took := time.Now()
	if l.Token() <= heldToken {
		t.Fatalf("takeover token %d not above the partitioned holder's %d", l.Token(), heldToken)
	}
	waitFor(t, func() bool { return report(logs(t, holder), "release") != "" })
	out := logs(t, holder)
	lostAt, err := strconv.ParseInt(report(out, "lost"), 10, 64)
	if err != nil {
		t.Fatalf("the partitioned holder never reported the loss (%v):\n%s", err, out)
	}
	if lost := time.Unix(0, lostAt); lost.After(took) {
		t.Fatalf("the partitioned holder learnt of the loss %v after another client took over", lost.Sub(took))
	}
	if r := report(out, "release"); !strings.Contains(r, "lock not held") || !strings.Contains(r, "lock lost") {
		t.Fatalf("the partitioned holder's release did not fail as not held:\n%s", out)
	}
	t.Logf("partitioned at %v; the holder gave up %v later, another client took over %v later",
		cut.Format(time.TimeOnly), time.Unix(0, lostAt).Sub(cut).Round(time.Millisecond), took.Sub(cut).Round(time.Millisecond))
}
