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

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/shylock-go/shylock"
)

// cmdTimeout bounds every run of a program of the project: one that hangs fails its test
// instead of outliving it.
const cmdTimeout = 2 * time.Minute

// boundedCmd returns a command that gets SIGTERM when t ends or cmdTimeout passes (shylock run
// passes it on to its command's process group, so nothing it started is left behind), and is
// killed if it still runs 10 s later.
func boundedCmd(t testing.TB, bin string, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// build compiles a program of the project into a temporary directory.
func build(t testing.TB, pkg string) string {
	t.Helper()
	bin, err := goBuild(t.TempDir(), pkg)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// goBuild builds the program pkg into dir, without the race detector whatever this test binary
// was built with, and returns its path.
func goBuild(dir, pkg string) (string, error) {
	bin := filepath.Join(dir, filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin, nil
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
	if out, code := c.run("version"); code != 0 || !strings.HasPrefix(out, "shylock ") {
		t.Errorf("version exited %d:\n%s", code, out)
	}
}

// TestCLIArgumentsAndExitCodes: flags work after the lock name, and every mistake is a usage
// error (2), found before anything is acquired, in one line.
func TestCLIArgumentsAndExitCodes(t *testing.T) {
	c := newCLI(t)
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"run", "--bogus", "x", "--", "true"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"run", "x", "--no-wait"}, 2, "run needs a lock name and a command"},
		{[]string{"run", "", "--", "true"}, 2, "invalid lock name"},
		{[]string{"run", "--ttl", "5ms", "x", "--", "true"}, 2, "at most 7 days"},
		{[]string{"run", "x", "--wait", "-1s", "--", "true"}, 2, "--wait -1s"},
		{[]string{"run", "x", "--no-wait", "--wait", "2s", "--", "true"}, 2, "contradict"},
		{[]string{"run", "x", "--", "no-such-command-here"}, 127, "command not found"},
		{[]string{"inspect", strings.Repeat("n", 600)}, 2, "600 bytes"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
	} {
		out, code := c.run(tc.args...)
		switch {
		case code != tc.code || !strings.Contains(out, tc.says):
			t.Errorf("shylock %q exited %d, want %d saying %q:\n%s", tc.args, code, tc.code, tc.says, out)
		case strings.Count(strings.TrimSpace(out), "\n") != 0 || strings.Contains(out, "Usage:"):
			t.Errorf("shylock %q said more than one line:\n%s", tc.args, out)
		case strings.Contains(out, "shylock: shylock:") || len(out) > 300:
			t.Errorf("shylock %q stutters or echoes too much:\n%s", tc.args, out)
		}
	}
	if info, err := newMongo(t, client.Database("shylock_test").Collection(c.coll)).Inspect(context.Background(), "x"); err != nil || info.Token != 0 {
		t.Fatalf("a refused run acquired the lock: %+v, %v", info, err)
	}

	// Flags after the name, as users write them.
	holder := shylock.New("after", shylock.WithBackend(newMongo(t, client.Database("shylock_test").Collection(c.coll))))
	if ok, err := holder.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if out, code := c.run("run", "after", "--no-wait", "--", "true"); code != 75 {
		t.Errorf("run NAME --no-wait on a held lock exited %d, want 75:\n%s", code, out)
	}
	if out, code := c.run("inspect", "after", "--json"); code != 0 || !strings.Contains(out, `"state": "held"`) {
		t.Errorf("inspect NAME --json exited %d:\n%s", code, out)
	}
	if out, code := c.run("release", "after", "--force"); code != 0 || !strings.Contains(out, "released") {
		t.Errorf("release NAME --force exited %d:\n%s", code, out)
	}
}

// TestCLIReadOnlyAndUnreachable: looking writes nothing, and a server that is not there is said
// in one line, quickly.
func TestCLIReadOnlyAndUnreachable(t *testing.T) {
	c := newCLI(t)
	typo := c.coll + "_typo"
	if out, code := c.run("list", "--collection", typo); code != 1 || !strings.Contains(out, "does not exist") {
		t.Errorf("list of a collection that does not exist exited %d:\n%s", code, out)
	}
	if out, code := c.run("inspect", "--collection", typo, "x"); code != 1 || !strings.Contains(out, "does not exist") {
		t.Errorf("inspect in a collection that does not exist exited %d:\n%s", code, out)
	}
	names, err := client.Database("shylock_test").ListCollectionNames(context.Background(), bson.D{{Key: "name", Value: bson.D{{Key: "$regex", Value: "^" + typo}}}})
	if err != nil || len(names) != 0 {
		t.Fatalf("read-only commands created %v (%v)", names, err)
	}

	cmd := boundedCmd(t, c.bin, "list", "--timeout", "1s")
	cmd.Env = append(os.Environ(), "SHYLOCK_MONGO_URI=mongodb://127.0.0.1:1/", "SHYLOCK_ARANGO_URL=")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if code := exitCode(t, err); code != 1 || !strings.Contains(string(out), "cannot reach MongoDB at 127.0.0.1:1 within 1s") ||
		strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("list against nothing exited %d:\n%s", code, out)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("list against nothing took %v with --timeout 1s", d)
	}
}

// TestCLIJSON: the documented schema: snake_case, RFC 3339 times, seconds, no expiry when free.
func TestCLIJSON(t *testing.T) {
	c := newCLI(t)
	b := newMongo(t, client.Database("shylock_test").Collection(c.coll))
	held := shylock.New("json/held", shylock.WithBackend(b), shylock.WithOwner("cron"), shylock.WithTTL(time.Minute))
	if ok, err := held.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	free := shylock.New("json/free", shylock.WithBackend(b))
	if ok, err := free.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	_ = free.Release(context.Background())
	out, code := c.run("list", "--prefix", "json/", "--json")
	var locks []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &locks) != nil || len(locks) != 2 {
		t.Fatalf("list --json exited %d:\n%s", code, out)
	}
	f, h := locks[0], locks[1] // sorted by name
	if f["state"] != "free" || f["expires_at"] != nil || f["remaining_seconds"] != nil {
		t.Errorf("a free lock: %v; want state free, no expiry, no time remaining", f)
	}
	secs, _ := h["remaining_seconds"].(float64)
	if h["state"] != "held" || h["holder"] != "cron" || secs <= 50 || secs > 60 {
		t.Errorf("a held lock: %v; want state held, holder cron, about 60 remaining_seconds", h)
	}
	for _, key := range []string{"acquired_at", "renewed_at", "expires_at"} {
		s, _ := h[key].(string)
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil || !strings.HasSuffix(s, "Z") {
			t.Errorf("%s = %v: want an RFC 3339 time in UTC", key, h[key])
		}
	}
	text, _ := c.run("inspect", "json/held")
	for _, key := range []string{"name", "state", "holder", "owner_id", "token", "acquired_at", "renewed_at", "expires_at", "remaining_seconds"} {
		if !strings.Contains(text, key+" ") {
			t.Errorf("inspect's text lacks the field %s:\n%s", key, text)
		}
	}
}

func TestCLIRunListInspectRelease(t *testing.T) {
	c := newCLI(t)
	if out, code := c.run("run", "jobs/x", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("run of a command that exits 7 exited %d:\n%s", code, out)
	}
	if out, code := c.run("list"); code != 0 || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "free") {
		t.Fatalf("list exited %d:\n%s", code, out)
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
	var locks []struct{ State, Holder string }
	if code != 0 || json.Unmarshal([]byte(out), &locks) != nil || len(locks) != 1 || locks[0].State != "held" || locks[0].Holder != "nightly cron" {
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
