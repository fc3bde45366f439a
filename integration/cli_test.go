package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// cmdTimeout bounds every run of a program of the project: one that hangs fails its test
// instead of outliving it.
const cmdTimeout = 2 * time.Minute

// boundedCmd returns a command that gets SIGTERM when t ends or cmdTimeout passes (shylock run
// passes it on to its command's process group, so nothing it started is left behind), and is
// killed if it still runs 10 s later.
func boundedCmd(t *testing.T, bin string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// build compiles a program of the project into a temporary directory.
func build(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// cli runs the shylock command against the test server and returns its output and exit code.
type cli struct {
	t         *testing.T
	bin, coll string
}

func (c cli) cmd(args ...string) *exec.Cmd {
	cmd := boundedCmd(c.t, c.bin, args...)
	cmd.Env = append(os.Environ(), "SHYLOCK_MONGO_URI="+mongoURI, "SHYLOCK_MONGO_DATABASE=shylock_test",
		"SHYLOCK_COLLECTION="+c.coll, "SHYLOCK_ARANGO_URL=")
	return cmd
}

func (c cli) run(args ...string) (string, int) {
	c.t.Helper()
	out, err := c.cmd(args...).CombinedOutput()
	return string(out), exitCode(c.t, err)
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("running: %v", err)
	return -1
}

func newCLI(t *testing.T) cli {
	coll := collection(t)
	return cli{t: t, bin: build(t, "github.com/shylock-go/shylock/cmd/shylock"), coll: coll.Name()}
}

func TestCLIHelpAndUsage(t *testing.T) {
	c := newCLI(t)
	for _, sub := range []string{"list", "inspect", "release", "watch", "run"} {
		out, code := c.run(sub, "--help")
		if code != 0 || !strings.Contains(out, "Usage: shylock "+sub) || !strings.Contains(out, "-mongo-uri") {
			t.Errorf("shylock %s --help exited %d:\n%s", sub, code, out)
		}
	}
	if out, code := c.run(); code != 2 || !strings.Contains(out, "Commands:") {
		t.Errorf("shylock with no command exited %d:\n%s", code, out)
	}
	if out, code := c.run("frobnicate"); code != 2 || !strings.Contains(out, `unknown command "frobnicate"`) {
		t.Errorf("unknown command exited %d:\n%s", code, out)
	}
	if out, code := c.run("release", "x"); code != 2 || !strings.Contains(out, "--force") {
		t.Errorf("release without --force exited %d:\n%s", code, out)
	}
	cmd := boundedCmd(t, c.bin, "list")
	cmd.Env = append(os.Environ(), "SHYLOCK_MONGO_URI=", "SHYLOCK_ARANGO_URL=")
	out, err := cmd.CombinedOutput()
	if code := exitCode(t, err); code != 1 || !strings.Contains(string(out), "SHYLOCK_MONGO_URI") {
		t.Errorf("list with no server exited %d:\n%s", code, out)
	}
}

func TestCLIRunListInspectRelease(t *testing.T) {
	c := newCLI(t)
	if out, code := c.run("list"); code != 0 || !strings.HasPrefix(out, "NAME") {
		t.Fatalf("list on an empty collection exited %d:\n%s", code, out)
	}
	if out, code := c.run("run", "jobs/x", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("run of a command that exits 7 exited %d:\n%s", code, out)
	}

	// A long run holds the lock while the other subcommands look at it.
	holder := c.cmd("run", "--ttl", "2s", "--owner", "nightly cron", "jobs/x", "--", "sh", "-c", `echo "token=$SHYLOCK_TOKEN"; sleep 30`)
	var stdout bytes.Buffer
	holder.Stdout, holder.Stderr = &stdout, &stdout
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { out, _ := c.run("inspect", "jobs/x"); return strings.Contains(out, "held") })

	out, code := c.run("inspect", "jobs/x")
	if code != 0 || !strings.Contains(out, "nightly cron") || !strings.Contains(out, "token") {
		t.Fatalf("inspect exited %d:\n%s", code, out)
	}
	out, code = c.run("list", "--prefix", "jobs/", "--json")
	var infos []shylock.Info
	if code != 0 || json.Unmarshal([]byte(out), &infos) != nil || len(infos) != 1 || !infos[0].Held || infos[0].Label != "nightly cron" {
		t.Fatalf("list --json exited %d:\n%s", code, out)
	}
	if out, code := c.run("run", "--no-wait", "jobs/x", "--", "true"); code != 75 || !strings.Contains(out, "nightly cron") {
		t.Fatalf("run --no-wait on a held lock exited %d, want 75:\n%s", code, out)
	}
	if out, code := c.run("run", "--wait", "300ms", "jobs/x", "--", "true"); code != 75 {
		t.Fatalf("run --wait on a held lock exited %d, want 75:\n%s", code, out)
	}
	out, code = c.run("watch", "--prefix", "jobs/", "--interval", "100ms", "--for", "500ms")
	if code != 0 || !strings.Contains(out, "jobs/x") || !strings.Contains(out, "held") {
		t.Fatalf("watch exited %d:\n%s", code, out)
	}

	// Force-releasing it makes the holder's renewal fail: the command is stopped, run exits 76.
	if out, code := c.run("release", "--force", "jobs/x"); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("release --force exited %d:\n%s", code, out)
	}
	done := make(chan error, 1)
	go func() { done <- holder.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(t, err); code != 76 {
			t.Fatalf("run whose lock was force-released exited %d, want 76:\n%s", code, stdout.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("run went on 20s after its lock was force-released:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "token=") || !strings.Contains(stdout.String(), "lost the lock") {
		t.Fatalf("run output:\n%s", stdout.String())
	}
	if out, code := c.run("release", "--force", "jobs/x"); code != 3 {
		t.Fatalf("release --force of a free lock exited %d, want 3:\n%s", code, out)
	}
}

// TestCLIConcurrentRunsDoNotOverlap starts two runs of one lock at once; the commands log when
// they start and end, and the intervals must not overlap.
func TestCLIConcurrentRunsDoNotOverlap(t *testing.T) {
	c := newCLI(t)
	logFile := filepath.Join(t.TempDir(), "log")
	script := fmt.Sprintf(`echo "start $(date +%%s%%N) $SHYLOCK_TOKEN" >> %s; sleep 0.3; echo "end $(date +%%s%%N)" >> %s`, logFile, logFile)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, code := c.run("run", "--ttl", "5s", "shared", "--", "sh", "-c", script); code != 0 {
				t.Errorf("run exited %d:\n%s", code, out)
			}
		}()
	}
	wg.Wait()
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type span struct {
		start, end int64
		token      uint64
	}
	var spans []span
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		n, _ := strconv.ParseInt(fields[1], 10, 64)
		if fields[0] == "start" {
			tok, _ := strconv.ParseUint(fields[2], 10, 64)
			spans = append(spans, span{start: n, token: tok})
		} else {
			spans[len(spans)-1].end = n // runs are exclusive, so an end follows its own start
		}
	}
	if len(spans) != 3 {
		t.Fatalf("%d runs logged, want 3", len(spans))
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
	for i := 1; i < len(spans); i++ {
		if spans[i].start < spans[i-1].end {
			t.Fatalf("runs overlap: %+v", spans)
		}
		if spans[i].token <= spans[i-1].token {
			t.Fatalf("tokens do not increase: %+v", spans)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met within 20s")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
