package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
)

// exampleEnv points an example at the test server, in a collection of the test's own.
func exampleEnv(t *testing.T) []string {
	env, _ := exampleColl(t)
	return env
}

// exampleColl is exampleEnv, and the collection.
func exampleColl(t *testing.T) ([]string, *mdb.Collection) {
	coll := collection(t)
	return append(os.Environ(), "SHYLOCK_MONGO_URI="+mongoURI, "SHYLOCK_MONGO_DATABASE=shylock_test",
		"SHYLOCK_COLLECTION="+coll.Name(), "SHYLOCK_ARANGO_URL="), coll
}

var tokenLine = regexp.MustCompile(`worker (\d) holds orders/42 with fencing token (\d+)`)

func TestExampleBasic(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/examples/basic")
	for _, embedded := range []bool{false, true} {
		cmd := boundedCmd(t, bin)
		cmd.Env = exampleEnv(t)
		if embedded { // the README's demo: no server named, so it starts its own
			cmd.Env = append(os.Environ(), "SHYLOCK_MONGO_URI=", "SHYLOCK_ARANGO_URL=")
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("basic (embedded %v): %v\n%s", embedded, err, out)
		}
		matches := tokenLine.FindAllStringSubmatch(string(out), -1)
		if len(matches) != 3 || !strings.Contains(string(out), "done") {
			t.Fatalf("basic (embedded %v) printed:\n%s", embedded, out)
		}
		var last uint64
		for _, m := range matches {
			tok, _ := strconv.ParseUint(m[2], 10, 64)
			if tok <= last {
				t.Fatalf("tokens do not increase:\n%s", out)
			}
			last = tok
		}
		if embedded && !strings.Contains(string(out), "another process joins these locks with SHYLOCK_MONGO_URI=mongodb://") {
			t.Fatalf("the embedded demo does not say how to join it:\n%s", out)
		}
	}
}

// TestExampleWorker: four processes whose ticks do not line up (one starts late) run each job
// once per tick: never twice for one tick, and at every tick.
func TestExampleWorker(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/examples/worker")
	env := exampleEnv(t)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		outs []byte
	)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 130 * time.Millisecond) // ticks out of step
			cmd := boundedCmd(t, bin, "-processes", "0", "-ticks", "6", "-every", "300ms")
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("worker %d: %v\n%s", i, err, out)
			}
			mu.Lock()
			outs = append(outs, out...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	runs := regexp.MustCompile(`slot (\d+): pid (\d+) runs (\S+)\s+fencing token (\d+)`).FindAllStringSubmatch(string(outs), -1)
	pids, seen, perJob := map[string]bool{}, map[string]bool{}, map[string]int{}
	for _, r := range runs {
		pids[r[2]] = true
		if key := r[3] + "@" + r[1]; seen[key] {
			t.Fatalf("%s ran twice in slot %s:\n%s", r[3], r[1], outs)
		} else {
			seen[key] = true
		}
		perJob[r[3]]++
	}
	// A process that falls too far behind its ticks (a loaded machine) skips a tick rather than
	// claim it after its claim may have expired, and says so: such a tick counts as covered when
	// nobody ran it, since the example promises never twice, not always.
	skips := regexp.MustCompile(`: (\S+): skipping the tick at slot (\d+), `).FindAllStringSubmatch(string(outs), -1)
	skipped := map[string]int{}
	for _, s := range skips {
		if key := s[1] + "@" + s[2]; !seen[key] {
			seen[key] = true
			skipped[s[1]]++
		}
	}
	for _, job := range []string{"jobs/nightly-report", "jobs/expire-sessions", "jobs/reindex"} {
		if n := perJob[job] + skipped[job]; n < 6 {
			t.Errorf("%s ran %d times and was skipped as late %d times in at least 6 ticks:\n%s", job, perJob[job], skipped[job], outs)
		} else if skipped[job] > 0 {
			t.Logf("%s ran %d times; %d ticks nobody ran were skipped as late", job, perJob[job], skipped[job])
		}
	}
	if len(perJob) != 3 || len(pids) < 2 {
		t.Fatalf("want every job run at every tick, by more than one process; got %d runs by %d processes:\n%s", len(runs), len(pids), outs)
	}
}

func TestExampleWebAPI(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/examples/webapi")
	cmd := boundedCmd(t, bin, "-addr", "127.0.0.1:0", "-charge-time", "700ms")
	var coll *mdb.Collection
	cmd.Env, coll = exampleColl(t)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Signal(os.Interrupt); _ = cmd.Wait() })
	base := ""
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
			base = rest
			break
		}
	}
	if base == "" {
		t.Fatal("webapi never said where it listens")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()

	post := func(path string) (int, map[string]any) {
		resp, err := http.Post(base+path, "application/json", nil)
		if err != nil {
			t.Error(err)
			return 0, nil
		}
		defer resp.Body.Close()
		var body map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		results []map[string]any
	)
	for range 2 { // two charges of one order: both succeed, one after the other
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := post("/orders/42/charge")
			if code != http.StatusOK {
				t.Errorf("charge: %d %v", code, body)
			}
			mu.Lock()
			results = append(results, body)
			mu.Unlock()
		}()
	}
	time.Sleep(200 * time.Millisecond)
	code, body := post("/orders/42/charge?wait=false")
	if holder, _ := body["holder"].(string); code != http.StatusConflict || !strings.Contains(holder, "webapi") || body["expiresAt"] == nil {
		t.Errorf("a charge that must not wait, while another runs: %d %v; want 409 naming the holder", code, body)
	}
	if code, body := post("/orders/43/charge?wait=false"); code != http.StatusOK {
		t.Errorf("another order is independent: %d %v", code, body)
	}
	wg.Wait()
	if len(results) == 2 && results[0]["token"] == results[1]["token"] {
		t.Errorf("two charges got the same fencing token: %v", results)
	}

	// The README's scenario: an operator force-releases the order during a charge. The charge
	// finishes (its renewal is not due yet) and must not be reported as one to retry.
	admin := newMongo(t, coll)
	time.AfterFunc(300*time.Millisecond, func() {
		if _, err := admin.ForceRelease(context.Background(), "orders/44"); err != nil {
			t.Error(err)
		}
	})
	if code, body := post("/orders/44/charge"); code != http.StatusOK || body["charged"] != true || body["warning"] == nil {
		t.Errorf("a charge that finished after its lock was force-released: %d %v; want 200, charged, with a warning", code, body)
	}
	if code, body := post("/orders/42/charge?wait=maybe"); code != http.StatusBadRequest {
		t.Errorf("wait=maybe: %d %v; want 400", code, body)
	}
	if code, body := post("/orders/a%00b/charge"); code != http.StatusBadRequest {
		t.Errorf("an order id with a NUL: %d %v; want 400", code, body)
	}
}
