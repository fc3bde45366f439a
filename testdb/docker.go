package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

// logger passes testcontainers' messages to the test's log.
type logger struct{ t TB }

func (l logger) Printf(format string, args ...any) { l.t.Logf(format, args...) }

// dockerEngine returns a provider on the Docker engine testcontainers is configured for, or
// skips t with a message that says what needed it (why).
func dockerEngine(t TB, why string) *testcontainers.DockerProvider {
	t.Helper()
	p, err := testcontainers.NewDockerProvider(testcontainers.WithLogger(logger{t}))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if _, err = p.Client().Ping(ctx, client.PingOptions{}); err != nil {
			_ = p.Close()
		}
	}
	if err != nil {
		t.Skipf("testdb: no Docker engine %s: %v", why, err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// requireImage makes sure the engine has image, pulling it if it can; otherwise it skips t,
// naming where the image came from (from).
func requireImage(t TB, p *testcontainers.DockerProvider, image, from string, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if _, err := p.Client().ImageInspect(ctx, image); err == nil {
		return
	}
	if err := p.PullImage(ctx, image); err != nil {
		t.Skipf("testdb: image %s (from %s) is not on the Docker engine and cannot be pulled: %v", image, from, err)
	}
}

// run starts a container of image, exposing port, after the checks that skip t, and removes it
// when the test ends. It returns the host:port at which the port is published.
func run(t TB, c *config, image, from, port string, opts ...testcontainers.ContainerCustomizer) string {
	t.Helper()
	p := dockerEngine(t, "to run "+image+" (from "+from+") on")
	requireImage(t, p, image, from, c.timeout)
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	opts = append([]testcontainers.ContainerCustomizer{
		testcontainers.WithLogger(logger{t}),
		testcontainers.WithExposedPorts(port),
		// The helpers wait for the server with its own client; FROM scratch images have no
		// shell for testcontainers' port check inside the container.
		testcontainers.WithWaitStrategy(wait.ForMappedPort(port).WithStartupTimeout(c.timeout)),
	}, opts...)
	ctr, err := testcontainers.Run(ctx, image, append(opts, c.customizers...)...)
	t.Cleanup(func() {
		if err := testcontainers.TerminateContainer(ctr); err != nil {
			t.Logf("testdb: removing the %s container: %v", image, err)
		}
	})
	if err != nil {
		t.Fatalf("testdb: starting %s (from %s): %v", image, from, err)
	}
	endpoint, err := ctr.PortEndpoint(ctx, port, "")
	if err != nil {
		t.Fatalf("testdb: %s: %v", image, err)
	}
	return endpoint
}

// ferretServer is the package of the program FerretDBImage puts in its image.
const ferretServer = "github.com/shylock-go/shylock/testdb/cmd/ferretdb-server"

// FerretDBImage builds a container image that runs FerretDB 1.x (MongoDB wire protocol, SQLite
// storage) on port 27017, and returns its reference, for MongoContainer with WithWireImage. The
// image is FROM scratch and holds one static program, built from this module's source with the
// go command: nothing is pulled from a registry. It is removed when the test ends.
//
// It skips the test when no Docker engine answers or the go command is not on PATH. Building
// takes about as long as linking a test binary; build once in a parent test when several tests
// need the image.
func FerretDBImage(t TB, opts ...Option) string {
	t.Helper()
	c := newConfig(opts)
	p := dockerEngine(t, "to build the FerretDB image with")
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("testdb: FerretDBImage builds its server with the go command: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	info, err := p.Client().Info(ctx, client.InfoOptions{})
	if err != nil {
		t.Fatalf("testdb: asking the Docker engine for its platform: %v", err)
	}
	dir, err := os.MkdirTemp("", "shylock-testdb-image-")
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	defer func() { _ = os.RemoveAll(dir) }()

	build := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", filepath.Join(dir, "ferretdb-server"), ferretServer)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goArch(info.Info.Architecture))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("testdb: building the FerretDB server for the image: %v\n%s", err, out)
	}
	dockerfile := "FROM scratch\nCOPY ferretdb-server /\nEXPOSE 27017\nENTRYPOINT [\"/ferretdb-server\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatalf("testdb: %v", err)
	}
	ref, err := p.BuildImage(ctx, &testcontainers.ContainerRequest{FromDockerfile: testcontainers.FromDockerfile{
		Context: dir, Repo: "shylock-testdb-ferretdb", Tag: randomHex(6),
	}})
	if err != nil {
		t.Fatalf("testdb: building the FerretDB image: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, err := p.Client().ImageRemove(ctx, ref, client.ImageRemoveOptions{Force: true, PruneChildren: true})
		if err != nil {
			t.Logf("testdb: removing the image %s: %v", ref, err)
		}
	})
	return ref
}

// goArch returns the GOARCH of a Docker engine's architecture (uname -m), or the test's own.
func goArch(machine string) string {
	switch machine {
	case "x86_64", "amd64":
		return "amd64"
	case "aarch64", "arm64":
		return "arm64"
	case "armv7l", "armhf", "arm":
		return "arm"
	case "s390x", "ppc64le", "riscv64":
		return machine
	}
	return runtime.GOARCH
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var errNotYet = errors.New("not ready yet")

// poll calls try, each time for at most five seconds, until it succeeds or ctx ends; it then
// returns the last error.
func poll(ctx context.Context, try func(context.Context) error) error {
	for {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := try(tctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
