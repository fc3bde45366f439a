package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/shylock-go/shylock"
)

// The lock service (shylock serve) end to end: a real server process, real HTTP and WebSocket
// clients, on the memory backend and on the test server's MongoDB-wire collection.

const serveKey = "test-key-7f3a"

// served is a running shylock serve.
type served struct {
	url    string
	key    string
	cmd    interface{ Wait() error }
	signal func(os.Signal) error
	stderr *syncBuffer
}

// startServe runs shylock serve with args and the test key, and returns it once it listens.
func startServe(t testing.TB, bin string, env []string, args ...string) *served {
	t.Helper()
	cmd := boundedCmd(t, bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--api-key", serveKey}, args...)...)
	cmd.Env = env
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &served{key: serveKey, cmd: cmd, signal: func(sig os.Signal) error { return cmd.Process.Signal(sig) }, stderr: &syncBuffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "listening on "); ok {
			s.url = rest
			break
		}
	}
	if s.url == "" {
		t.Fatalf("shylock serve never said where it listens:\n%s", s.stderr.String())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return s
}

// call sends an API request with the key and decodes the JSON answer into out (if not nil).
func (s *served) call(t testing.TB, method, path, body string, out any) int {
	t.Helper()
	return s.callKey(t, s.key, method, path, body, out)
}

func (s *served) callKey(t testing.TB, key, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-api-Key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s answered %d with %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// relukkoLock is a lock as Relukko's clients read it.
type relukkoLock struct {
	ID        string `json:"id"`
	LockName  string `json:"lock_name"`
	Creator   string `json:"creator"`
	IP        string `json:"ip"`
	ExpiresAt string `json:"expires_at"`
	CreatedAt string `json:"created_at"`
	UpdatedAt string `json:"updated_at"`
	Token     uint64 `json:"token"`
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

type relukkoError struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

func serveBackends(t *testing.T) map[string][]string {
	return map[string][]string{"memory": {"--memory"}, mongoServer: {"--collection", collection(t).Name()}}
}

func serveEnv() []string {
	return append(os.Environ(), "SHYLOCK_MONGO_URI="+mongoURI, "SHYLOCK_MONGO_DATABASE=shylock_test", "SHYLOCK_ARANGO_URL=", "SHYLOCK_API_KEYS=")
}

// TestServeAPI walks Relukko's v1 API on both backends: the shapes its clients parse, every
// endpoint, and the errors they expect.
func TestServeAPI(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	for what, args := range serveBackends(t) {
		t.Run(what, func(t *testing.T) {
			s := startServe(t, bin, serveEnv(), args...)
			var l relukkoLock
			if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "dev/printer", "creator": "ci job 7"}`, &l); code != 201 {
				t.Fatalf("POST answered %d", code)
			}
			checkDTO(t, l, "dev/printer", "ci job 7", 9*time.Minute, 10*time.Minute)

			var conflict relukkoError
			if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "dev/printer", "creator": "ci job 8"}`, &conflict); code != 409 || conflict.Status != 409 || conflict.Message == "" {
				t.Fatalf("a second POST answered %d %+v; want 409 with status and message", code, conflict)
			}
			var all []relukkoLock
			if code := s.call(t, "GET", "/v1/locks/", "", &all); code != 200 || len(all) != 1 || all[0].ID != l.ID {
				t.Fatalf("GET /v1/locks/ = %d %+v", code, all)
			}
			var got relukkoLock
			if code := s.call(t, "GET", "/v1/locks/"+l.ID, "", &got); code != 200 || got != l {
				t.Fatalf("GET by id = %d %+v; want the lock as POST answered it, %+v", code, got, l) // pyrelukko's tests compare them
			}

			if code := s.call(t, "GET", "/v1/locks/"+l.ID+"/keep_alive", "", &got); code != 200 {
				t.Fatalf("keep_alive answered %d", code)
			}
			checkDTO(t, got, "dev/printer", "ci job 7", 4*time.Minute, 5*time.Minute)
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID+"/keep_alive", `{"seconds": 120}`, &got); code != 200 {
				t.Fatalf("keep_alive PUT answered %d", code)
			}
			checkDTO(t, got, "dev/printer", "ci job 7", 110*time.Second, 120*time.Second)
			if code := s.call(t, "GET", "/v1/locks/"+l.ID+"/add_to_expire_at", "", &got); code != 200 {
				t.Fatalf("add_to_expire_at answered %d", code)
			}
			checkDTO(t, got, "dev/printer", "ci job 7", 410*time.Second, 420*time.Second)
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID+"/add_to_expire_at", `{"seconds": 60}`, &got); code != 200 {
				t.Fatalf("add_to_expire_at PUT answered %d", code)
			}
			checkDTO(t, got, "dev/printer", "ci job 7", 470*time.Second, 480*time.Second)

			far := time.Now().Add(5 * time.Hour).UTC().Format("2006-01-02T15:04:05.999999") // Python's isoformat of a naive UTC time
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID, fmt.Sprintf(`{"creator": "renamed", "expires_at": %q}`, far), &got); code != 200 {
				t.Fatalf("PUT creator and expires_at answered %d", code)
			}
			checkDTO(t, got, "dev/printer", "renamed", 5*time.Hour-time.Minute, 5*time.Hour)
			if got.Token != l.Token || got.CreatedAt != l.CreatedAt {
				t.Fatalf("a new creator changed the holding: token %d, created %s; want %d, %s", got.Token, got.CreatedAt, l.Token, l.CreatedAt)
			}
			// The expiry asked for is the one stored, to the millisecond.
			want := time.Now().Add(3 * time.Hour).Truncate(time.Millisecond).UTC()
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID, fmt.Sprintf(`{"expires_at": %q}`, want.Format(time.RFC3339Nano)), &got); code != 200 {
				t.Fatalf("PUT expires_at answered %d", code)
			}
			if exp, err := time.Parse(time.RFC3339Nano, got.ExpiresAt); err != nil || !exp.Equal(want) {
				t.Fatalf("asked for expires_at %s, got %s", want.Format(time.RFC3339Nano), got.ExpiresAt)
			}
			var e relukkoError
			tooFar := time.Now().AddDate(300, 0, 0).UTC().Format(time.RFC3339)
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID, fmt.Sprintf(`{"creator": "nope", "expires_at": %q}`, tooFar), &e); code != 400 {
				t.Fatalf("an expiry 300 years ahead answered %d %+v; want 400", code, e)
			}
			if s.call(t, "GET", "/v1/locks/"+l.ID, "", &got); got.Creator != "renamed" {
				t.Fatalf("the refused PUT changed the lock: %+v", got)
			}

			var deleted relukkoLock
			s.call(t, "GET", "/v1/locks/"+l.ID, "", &got)
			if code := s.call(t, "DELETE", "/v1/locks/"+l.ID, "", &deleted); code != 200 || deleted != got {
				t.Fatalf("DELETE = %d %+v; want the lock as it was, %+v", code, deleted, got)
			}
			for _, c := range []struct{ method, path, body string }{
				{"GET", "/v1/locks/" + l.ID, ""}, {"DELETE", "/v1/locks/" + l.ID, ""},
				{"GET", "/v1/locks/" + l.ID + "/keep_alive", ""}, {"PUT", "/v1/locks/" + l.ID, `{"creator": "x"}`},
			} {
				if code := s.call(t, c.method, c.path, c.body, &e); code != 422 || e.Status != 422 {
					t.Errorf("%s %s of a lock that no longer exists: %d %+v; want 422", c.method, c.path, code, e)
				}
			}

			// An expiry in the past ends the lock at once. (Without the slash, as older clients send it.)
			if code := s.call(t, "POST", "/v1/locks", `{"lock_name": "dev/scope", "creator": "me"}`, &l); code != 201 {
				t.Fatalf("POST answered %d", code)
			}
			if code := s.call(t, "PUT", "/v1/locks/"+l.ID, `{"expires_at": "2020-01-01T00:00:00Z"}`, &got); code != 200 {
				t.Fatalf("PUT of a past expiry answered %d", code)
			}
			if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "dev/scope", "creator": "next"}`, &l); code != 201 {
				t.Fatalf("the lock set to expire in the past was still held: %d", code)
			}
		})
	}
}

// checkDTO fails unless l is a lock of name and creator that expires between lo and hi from now,
// in the formats Relukko's Python client parses, with a version-4 UUID (RFC 4122) for its id, as
// Relukko's are.
func checkDTO(t *testing.T, l relukkoLock, name, creator string, lo, hi time.Duration) {
	t.Helper()
	if !uuidV4.MatchString(l.ID) || l.LockName != name || l.Creator != creator || l.IP == "" || l.Token == 0 {
		t.Fatalf("lock %+v: want a version-4 UUID, %q by %q, an address and a token", l, name, creator)
	}
	for _, ts := range []string{l.ExpiresAt, l.CreatedAt, l.UpdatedAt} {
		frac := ""
		if i := strings.IndexByte(ts, '.'); i >= 0 {
			frac = strings.TrimSuffix(ts[i+1:], "Z")
		}
		if !strings.HasSuffix(ts, "Z") || len(frac) > 6 {
			t.Fatalf("time %q: want RFC 3339 in UTC with at most microseconds", ts)
		}
	}
	exp, err := time.Parse(time.RFC3339Nano, l.ExpiresAt)
	if left := time.Until(exp); err != nil || left < lo-5*time.Second || left > hi+5*time.Second {
		t.Fatalf("expires_at %s is %v away; want between %v and %v", l.ExpiresAt, time.Until(exp), lo, hi)
	}
}

// TestServeRefusesBadInput: every mistake answers 4xx with a JSON message and changes nothing.
func TestServeRefusesBadInput(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	s := startServe(t, bin, serveEnv(), "--memory")
	big := `{"lock_name": "` + strings.Repeat("x", 70<<10) + `"}`
	for _, c := range []struct {
		method, path, body string
		code               int
	}{
		{"POST", "/v1/locks/", `{"lock_name": "x"`, 400},
		{"POST", "/v1/locks/", `{"lock_name": "x", "extra": 1}`, 400},
		{"POST", "/v1/locks/", `{"creator": "no name"}`, 400},
		{"POST", "/v1/locks/", `{"lock_name": ""}`, 400},
		{"POST", "/v1/locks/", `{"lock_name": "a\u0000b"}`, 400},
		{"POST", "/v1/locks/", `{"lock_name": "x"} {"lock_name": "y"}`, 400},
		{"POST", "/v1/locks/?wait=forever", `{"lock_name": "x"}`, 400},
		{"POST", "/v1/locks/", big, 413},
		{"GET", "/v1/locks/not-a-uuid", "", 400},
		{"DELETE", "/v1/locks/00000000-0000-0000-0000-00000000000g", "", 400},
		{"PUT", "/v1/locks/00000000-0000-0000-0000-000000000000/keep_alive", `{"seconds": -5}`, 400},
		{"GET", "/v1/nothing", "", 404},
		// The id's calls take no POST: one must not take a lock named by its body.
		{"POST", "/v1/locks/00000000-0000-0000-0000-000000000000/keep_alive", `{"lock_name": "x"}`, 404},
		{"POST", "/v1/locks/00000000-0000-0000-0000-000000000000", `{"lock_name": "x"}`, 404},
		{"GET", "/v1/locks/00000000-0000-0000-0000-000000000000/other", "", 404},
	} {
		var e relukkoError
		if code := s.call(t, c.method, c.path, c.body, &e); code != c.code || e.Status != c.code || e.Message == "" {
			t.Errorf("%s %s %.40q: %d %+v; want %d with a JSON message", c.method, c.path, c.body, code, e, c.code)
		}
	}
	var all []relukkoLock
	if s.call(t, "GET", "/v1/locks/", "", &all); len(all) != 0 {
		t.Fatalf("bad requests left locks behind: %+v", all)
	}
}

// TestServeKeys: without a valid key, nothing (API or broadcast); keys come from flags, a file
// and the environment; none of them ever reaches the log.
func TestServeKeys(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	file := t.TempDir() + "/keys"
	if err := os.WriteFile(file, []byte("# operators\nfile-key-1\n\nfile-key-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(serveEnv(), "SHYLOCK_API_KEYS=env-key-1, env-key-2")
	s := startServe(t, bin, env, "--memory", "--api-key-file", file)
	for _, key := range []string{serveKey, "file-key-2", "env-key-2"} {
		if code := s.callKey(t, key, "GET", "/v1/locks/", "", nil); code != 200 {
			t.Errorf("key %q: %d", key, code)
		}
	}
	for _, key := range []string{"", "wrong", serveKey + "x", "# operators"} {
		var e relukkoError
		if code := s.callKey(t, key, "POST", "/v1/locks/", `{"lock_name": "x"}`, &e); code != 401 || e.Status != 401 {
			t.Errorf("key %q: %d %+v; want 401", key, code, e)
		}
	}
	hdr := http.Header{"X-api-Key": {"wrong"}}
	if _, resp, err := websocket.Dial(context.Background(), strings.Replace(s.url, "http", "ws", 1)+"/ws/broadcast", &websocket.DialOptions{HTTPHeader: hdr}); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Errorf("the broadcast let a wrong key in: %v", err)
	}
	for _, secret := range []string{serveKey, "file-key-1", "env-key-1", "wrong"} {
		if strings.Contains(s.stderr.String(), secret) {
			t.Errorf("the log shows the key %q:\n%s", secret, s.stderr.String())
		}
	}
	var list []relukkoLock
	if s.call(t, "GET", "/v1/locks/", "", &list); len(list) != 0 {
		t.Fatalf("refused requests took locks: %+v", list)
	}
}

// broadcastClient listens on /ws/broadcast as Relukko's clients do.
func broadcastClient(t testing.TB, s *served) <-chan map[string]any {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	hdr := http.Header{"X-API-KEY": {s.key}}
	c, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/ws/broadcast", &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan map[string]any, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m map[string]any
			if json.Unmarshal(data, &m) == nil {
				msgs <- m
			}
		}
	}()
	t.Cleanup(func() { cancel(); _ = c.CloseNow(); <-done })
	return msgs
}

// deletedWithin waits for a broadcast that says name was deleted.
func deletedWithin(msgs <-chan map[string]any, name string, d time.Duration) bool {
	timeout := time.After(d)
	for {
		select {
		case m := <-msgs:
			if del, ok := m["deleted"].(map[string]any); ok && del["lock_name"] == name {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// TestServeReplicas: two replicas on one database serve the same locks; a release through one,
// or by a library user, or an expiry reaches the other's broadcast.
func TestServeReplicas(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	coll := collection(t)
	args := []string{"--collection", coll.Name(), "--poll", "100ms"}
	a, b := startServe(t, bin, serveEnv(), args...), startServe(t, bin, serveEnv(), args...)
	msgs := broadcastClient(t, a)

	var l relukkoLock
	if code := a.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/1", "creator": "a"}`, &l); code != 201 {
		t.Fatalf("POST on replica a: %d", code)
	}
	if code := b.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/1", "creator": "b"}`, nil); code != 409 {
		t.Fatalf("POST of the same lock on replica b: %d; want 409", code)
	}
	if code := b.call(t, "DELETE", "/v1/locks/"+l.ID, "", nil); code != 200 {
		t.Fatalf("DELETE on replica b of a's lock: %d", code)
	}
	if !deletedWithin(msgs, "rig/1", 3*time.Second) {
		t.Fatal("a release through replica b did not reach replica a's broadcast")
	}

	// An expiry is a deletion too, at the expiry.
	if code := b.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/2", "creator": "b"}`, &l); code != 201 {
		t.Fatalf("POST: %d", code)
	}
	if code := b.call(t, "PUT", "/v1/locks/"+l.ID+"/keep_alive", `{"seconds": 1}`, nil); code != 200 {
		t.Fatalf("keep_alive: %d", code)
	}
	if !deletedWithin(msgs, "rig/2", 4*time.Second) {
		t.Fatal("an expiry did not reach the broadcast")
	}

	// A library user's release, with no replica involved.
	holder := shylock.New("rig/3", shylock.WithBackend(newMongo(t, coll)))
	if ok, err := holder.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatal(ok, err)
	}
	time.Sleep(300 * time.Millisecond) // both replicas have seen it held
	if err := holder.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !deletedWithin(msgs, "rig/3", 3*time.Second) {
		t.Fatal("a library user's release did not reach the broadcast")
	}
}

// TestServeWakeupUnseenHolder: a holder takes a lock through one replica and gives it up
// through it between two reads of the other replica, where a client got 409 meanwhile. The
// client's replica never saw the lock held, yet the release must reach its broadcast.
func TestServeWakeupUnseenHolder(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	args := []string{"--collection", collection(t).Name(), "--poll", "2s"}
	a, b := startServe(t, bin, serveEnv(), args...), startServe(t, bin, serveEnv(), args...)
	msgs := broadcastClient(t, a)
	for i := range 3 {
		if !refusedThenReleased(t, b, a, msgs, fmt.Sprintf("rig/%d", i)) {
			t.Fatalf("round %d: the release of a holder replica a never saw did not reach its broadcast", i)
		}
	}
}

// refusedThenReleased has a holder take name through replica b, a waiter be refused it through
// replica a, and the holder release it through b. It reports whether the release reached msgs,
// a's broadcast, within 5 s.
func refusedThenReleased(t *testing.T, b, a *served, msgs <-chan map[string]any, name string) bool {
	t.Helper()
	var held relukkoLock
	if code := b.call(t, "POST", "/v1/locks/", `{"lock_name": "`+name+`", "creator": "holder"}`, &held); code != 201 {
		t.Fatalf("holder's POST on b: %d", code)
	}
	if code := a.call(t, "POST", "/v1/locks/", `{"lock_name": "`+name+`", "creator": "waiter"}`, nil); code != 409 {
		t.Fatalf("waiter's POST on a: %d; want 409", code)
	}
	if code := b.call(t, "DELETE", "/v1/locks/"+held.ID, "", nil); code != 200 {
		t.Fatalf("holder's DELETE on b: %d", code)
	}
	return deletedWithin(msgs, name, 5*time.Second)
}

// TestServeFollowsReleasesElsewhere: where the backend pushes releases, a replica follows the
// names it refused: a release through another replica reaches its broadcast though it reads the
// locks only once an hour.
func TestServeFollowsReleasesElsewhere(t *testing.T) {
	coll := collection(t)
	if !newMongo(t, coll).ReleaseEvents() {
		t.Skipf("%s pushes no releases to follow (no release events; change streams would be followed the same way, but no server here has them)", mongoServer)
	}
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	args := []string{"--collection", coll.Name(), "--poll", "1h"}
	a, b := startServe(t, bin, serveEnv(), args...), startServe(t, bin, serveEnv(), args...)
	if !refusedThenReleased(t, b, a, broadcastClient(t, a), "rig/9") {
		t.Fatal("a release through replica b did not reach replica a, which follows the name it refused")
	}
}

// TestServeWakeup: a client waits as Relukko's clients do (POST, 409, wait for a deletion on the
// broadcast, POST again) while another holds the lock; the release wakes it at once, whether it
// goes through the waiter's replica or another. BenchmarkServeWakeup measures the same.
func TestServeWakeup(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	for what, args := range wakeupCases(t) {
		t.Run(what, func(t *testing.T) {
			waiter, releaser := startWakeup(t, bin, what, args)
			wakeups(t, waiter, releaser, broadcastClient(t, waiter), 5)
		})
	}
}

// BenchmarkServeWakeup reports the p50 and p99 of the time from a release to the successful
// POST of a client that waited on the broadcast, on each backend and across two replicas.
func BenchmarkServeWakeup(b *testing.B) {
	bin := build(b, "github.com/shylock-go/shylock/cmd/shylock")
	for _, what := range []string{"memory", mongoServer, "two replicas of " + mongoServer} {
		b.Run(what, func(b *testing.B) {
			waiter, releaser := startWakeup(b, bin, what, wakeupCases(b)[what])
			reportLatencies(b, wakeups(b, waiter, releaser, broadcastClient(b, waiter), b.N))
		})
	}
}

func wakeupCases(tb testing.TB) map[string][]string {
	cases := map[string][]string{"memory": {"--memory"}, mongoServer: {"--collection", collection(tb).Name()}}
	cases["two replicas of "+mongoServer] = cases[mongoServer]
	return cases
}

// startWakeup starts the waiter's replica and the one the holder releases through: the same,
// or a second replica on the same collection.
func startWakeup(tb testing.TB, bin, what string, args []string) (waiter, releaser *served) {
	waiter = startServe(tb, bin, serveEnv(), args...)
	if strings.HasPrefix(what, "two replicas") {
		return waiter, startServe(tb, bin, serveEnv(), args...)
	}
	return waiter, waiter
}

// wakeups has a holder take and release one lock n times while a client waits for it as
// Relukko's clients do, and returns the times from each release to the waiter's successful POST.
func wakeups(tb testing.TB, s, releaser *served, msgs <-chan map[string]any, n int) []time.Duration {
	tb.Helper()
	lat := make([]time.Duration, 0, n)
	for range n {
		var held relukkoLock
		if code := s.call(tb, "POST", "/v1/locks/", `{"lock_name": "gpu/0", "creator": "holder"}`, &held); code != 201 {
			tb.Fatalf("holder's POST: %d", code)
		}
		if code := s.call(tb, "POST", "/v1/locks/", `{"lock_name": "gpu/0", "creator": "waiter"}`, nil); code != 409 {
			tb.Fatalf("waiter's first POST: %d; want 409", code)
		}
		for len(msgs) > 0 {
			<-msgs
		}
		start := time.Now()
		if code := releaser.call(tb, "DELETE", "/v1/locks/"+held.ID, "", nil); code != 200 {
			tb.Fatalf("DELETE: %d", code)
		}
		if !deletedWithin(msgs, "gpu/0", 5*time.Second) {
			tb.Fatal("the release was not broadcast")
		}
		var got relukkoLock
		if code := s.call(tb, "POST", "/v1/locks/", `{"lock_name": "gpu/0", "creator": "waiter"}`, &got); code != 201 {
			tb.Fatalf("waiter's POST after the broadcast: %d", code)
		}
		lat = append(lat, time.Since(start))
		if code := s.call(tb, "DELETE", "/v1/locks/"+got.ID, "", nil); code != 200 {
			tb.Fatalf("waiter's DELETE: %d", code)
		}
	}
	return lat
}

// TestServeHealth: /healthchecker answers without a key, 200 while the lock store can be read and
// 503 while it cannot (here: the network to it is cut), and 200 again once it is back.
func TestServeHealth(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	n := startFaultyNetwork(t, mongoURIHost(t))
	env := append(serveEnv(), "SHYLOCK_MONGO_URI="+n.uri())
	s := startServe(t, bin, env, "--collection", collection(t).Name(), "--poll", "100ms")
	health := func() int { return s.callKey(t, "", "GET", "/healthchecker", "", nil) }
	if code := health(); code != 200 {
		t.Fatalf("healthy: %d", code)
	}
	n.proxy.Stop()
	waitFor(t, func() bool { return health() == 503 })
	if err := n.proxy.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return health() == 200 })
}

// TestServeConnectionLimit: with --max-conns 2 and two WebSockets open, a third connection waits
// until one of them closes.
func TestServeConnectionLimit(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	s := startServe(t, bin, serveEnv(), "--memory", "--max-conns", "2")
	ctx := context.Background()
	var socks []*websocket.Conn
	for range 2 {
		c, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/ws/broadcast",
			&websocket.DialOptions{HTTPHeader: http.Header{"X-api-Key": {s.key}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		socks = append(socks, c)
	}
	get := func(timeout time.Duration) error {
		req, _ := http.NewRequest("GET", s.url+"/v1/locks/", nil)
		req.Header.Set("X-api-Key", s.key)
		resp, err := (&http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(500 * time.Millisecond); err == nil {
		t.Fatal("a third connection was served while two were open under --max-conns 2")
	}
	_ = socks[0].Close(websocket.StatusNormalClosure, "")
	if err := get(10 * time.Second); err != nil {
		t.Fatalf("after a WebSocket closed, a request still failed: %v", err)
	}
}

// TestServeBlockingAcquire: POST ?wait=D waits for the holder's release instead of answering 409.
func TestServeBlockingAcquire(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	s := startServe(t, bin, serveEnv(), "--memory")
	var held relukkoLock
	if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "q", "creator": "holder"}`, &held); code != 201 {
		t.Fatalf("POST: %d", code)
	}
	if code := s.call(t, "POST", "/v1/locks/?wait=200ms", `{"lock_name": "q", "creator": "waiter"}`, nil); code != 409 {
		t.Fatalf("a wait that runs out: %d; want 409", code)
	}
	time.AfterFunc(300*time.Millisecond, func() { s.call(t, "DELETE", "/v1/locks/"+held.ID, "", nil) })
	start := time.Now()
	var got relukkoLock
	if code := s.call(t, "POST", "/v1/locks/?wait=10s", `{"lock_name": "q", "creator": "waiter"}`, &got); code != 201 || got.Creator != "waiter" {
		t.Fatalf("a blocking POST: %d %+v", code, got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the blocking POST took %v after a release 300ms in", d)
	}
	var e relukkoError
	if code := s.call(t, "DELETE", "/v1/locks/"+got.ID+fmt.Sprintf("?token=%d", got.Token+1), "", &e); code != 422 {
		t.Fatalf("a release checked against another token: %d %+v; want 422", code, e)
	}
	if code := s.call(t, "DELETE", "/v1/locks/"+got.ID+fmt.Sprintf("?token=%d", got.Token), "", nil); code != 200 {
		t.Fatalf("a release checked against its own token: %d", code)
	}
}

// TestServeMetricsAndShutdown: /metrics counts what happened; SIGTERM ends the server at once,
// closing its WebSockets with "going away" and leaving the names it follows.
func TestServeMetricsAndShutdown(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	s := startServe(t, bin, serveEnv(), "--memory")
	var l relukkoLock
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "m", "creator": "c"}`, &l)
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "m", "creator": "c"}`, nil)
	s.call(t, "DELETE", "/v1/locks/"+l.ID, "", nil)
	// A held lock someone was refused for is followed until shutdown.
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "m2", "creator": "c"}`, nil)
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "m2", "creator": "d"}`, nil)
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"shylock_acquires_total 2", "shylock_conflicts_total 2", "shylock_releases_total 1",
		"shylock_locks_held", "shylock_request_duration_seconds_bucket"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, strings.Replace(s.url, "http", "ws", 1)+"/ws/broadcast",
		&websocket.DialOptions{HTTPHeader: http.Header{"X-api-Key": {s.key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	start := time.Now()
	if err := s.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("the WebSocket ended with %v; want going away", err)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("shylock serve after SIGTERM: %v\n%s", err, s.stderr.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutting down took %v", d)
	}
}

// TestServeTLS: with a certificate and key the server speaks HTTPS, and the broadcast WSS.
func TestServeTLS(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	certFile, keyFile, pool := selfSigned(t)
	s := startServe(t, bin, serveEnv(), "--memory", "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("the server says it listens on %s; want https", s.url)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest("GET", s.url+"/v1/locks/", nil)
	req.Header.Set("X-api-Key", s.key)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET over HTTPS: %d", resp.StatusCode)
	}
	c, _, err := websocket.Dial(context.Background(), strings.Replace(s.url, "https", "wss", 1)+"/ws/broadcast",
		&websocket.DialOptions{HTTPClient: client, HTTPHeader: http.Header{"X-api-Key": {s.key}}})
	if err != nil {
		t.Fatalf("the broadcast over WSS: %v", err)
	}
	_ = c.CloseNow()
	if _, err := http.Get(s.url + "/v1/locks/"); err == nil {
		t.Fatal("a client that does not trust the certificate got an answer")
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "shylock test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = dir+"/cert.pem", dir+"/key.pem"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, pool
}
