package serve

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

// The API against the memory backend, in process; the integration tests run the command against
// real servers.

// fakeClock is the memory backend's clock, moved by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testServer is a Server behind httptest, running its broadcast.
type testServer struct {
	t   *testing.T
	url string
	s   *Server
}

func start(t *testing.T, c Config) *testServer {
	t.Helper()
	if c.Poll == 0 {
		c.Poll = 50 * time.Millisecond
	}
	c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(ctx) })
	t.Cleanup(func() { s.CloseSockets(); hs.Close(); cancel(); wg.Wait() })
	return &testServer{t: t, url: hs.URL, s: s}
}

// call sends an API request and decodes the JSON answer into out (if not nil).
func (ts *testServer) call(method, path, body string, out any) int {
	ts.t.Helper()
	req, err := http.NewRequest(method, ts.url+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			ts.t.Fatalf("%s %s answered %d with %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

func (ts *testServer) post(name, creator string) lockDTO {
	ts.t.Helper()
	var l lockDTO
	if code := ts.call("POST", "/v1/locks/", `{"lock_name": "`+name+`", "creator": "`+creator+`"}`, &l); code != 201 {
		ts.t.Fatalf("POST %s: %d", name, code)
	}
	return l
}

func TestIDsAreVersion4UUIDs(t *testing.T) {
	ts := start(t, Config{Backend: memory.New()})
	for i := range 64 {
		l := ts.post("n"+strings.Repeat("x", i), "c")
		if len(l.ID) != 36 || l.ID[14] != '4' || !strings.ContainsRune("89ab", rune(l.ID[19])) {
			t.Fatalf("id %s is not a version-4 UUID (RFC 4122)", l.ID)
		}
	}
}

// TestIDCallsNeverTakeALock: every call on the id of a holding that expired and was taken over,
// or was released, answers 422 and leaves the lock as it is.
func TestIDCallsNeverTakeALock(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	m := memory.New(memory.WithClock(clock.Now))
	ts := start(t, Config{Backend: m})
	a := ts.post("rig", "a")
	clock.add(11 * time.Minute) // a's lease has run out
	b := ts.post("rig", "b")
	if code := ts.call("DELETE", "/v1/locks/"+b.ID, "", nil); code != 200 {
		t.Fatalf("b's DELETE: %d", code)
	}
	c := ts.post("released", "c")
	if code := ts.call("DELETE", "/v1/locks/"+c.ID, "", nil); code != 200 {
		t.Fatalf("c's DELETE: %d", code)
	}
	far := `{"creator": "x", "expires_at": "2099-12-31T12:34:56.789Z"}`
	for _, l := range []lockDTO{a, c} {
		for _, call := range []struct{ method, path, body string }{
			{"PUT", "/v1/locks/" + l.ID, `{"creator": "renamed"}`},
			{"PUT", "/v1/locks/" + l.ID + "?token=1", `{"creator": "renamed"}`},
			{"PUT", "/v1/locks/" + l.ID, far},
			{"GET", "/v1/locks/" + l.ID + "/keep_alive", ""},
			{"PUT", "/v1/locks/" + l.ID + "/keep_alive", `{"seconds": 60}`},
			{"GET", "/v1/locks/" + l.ID + "/add_to_expire_at", ""},
			{"PUT", "/v1/locks/" + l.ID + "/add_to_expire_at", `{"seconds": 60}`},
			{"DELETE", "/v1/locks/" + l.ID, ""},
			{"GET", "/v1/locks/" + l.ID, ""},
		} {
			var e errorBody
			if code := ts.call(call.method, call.path, call.body, &e); code != 422 || e.Status != 422 {
				t.Errorf("%s %s %s of a holding that ended: %d %+v; want 422", call.method, call.path, call.body, code, e)
			}
		}
		if in, _ := m.Inspect(context.Background(), l.LockName); in.Held {
			t.Fatalf("calls on the id of an ended holding took %q: %+v", l.LockName, in)
		}
	}
}

// interleaved is a memory backend that runs a hook once, right after a call has found a holding
// by its owner: what another client does between a call's read and its write.
type interleaved struct {
	*memory.Backend
	between func()
}

func (b *interleaved) Holding(ctx context.Context, owner string) (shylock.Info, error) {
	in, err := b.Backend.Holding(ctx, owner)
	if f := b.between; f != nil {
		b.between = nil
		f()
	}
	return in, err
}

// TestIDCallsChangeOnlyTheHoldingTheyRead forces the interleaving that once let a relabel take
// a lock: holder A's PUT reads A's holding; then A's lease runs out, B takes the lock and
// releases it; then the PUT writes. It must answer 422 and take nothing, whatever it asks.
func TestIDCallsChangeOnlyTheHoldingTheyRead(t *testing.T) {
	for _, call := range []struct{ method, path, body string }{
		{"PUT", "?token=1", `{"creator": "a again"}`},
		{"PUT", "", `{"expires_at": "2099-12-31T12:34:56.789Z"}`},
		{"PUT", "/keep_alive", `{"seconds": 600}`},
		{"GET", "/add_to_expire_at", ""},
		{"DELETE", "", ""},
	} {
		clock := &fakeClock{now: time.Now()}
		b := &interleaved{Backend: memory.New(memory.WithClock(clock.Now))}
		ts := start(t, Config{Backend: b})
		a := ts.post("rig", "a")
		b.between = func() {
			clock.add(11 * time.Minute)
			req := shylock.AcquireRequest{Name: "rig", Owner: "b", Label: "b", TTL: time.Minute}
			lease, err := b.Acquire(context.Background(), req)
			if err != nil || b.Release(context.Background(), "rig", "b", lease.Token) != nil {
				t.Errorf("b's holding: %v", err)
			}
		}
		var e errorBody
		if code := ts.call(call.method, "/v1/locks/"+a.ID+call.path, call.body, &e); code != 422 {
			t.Errorf("%s …%s %s across another holding: %d %+v; want 422", call.method, call.path, call.body, code, e)
		}
		if in, _ := b.Inspect(context.Background(), "rig"); in.Held {
			t.Errorf("%s …%s %s across another holding took the lock: %+v", call.method, call.path, call.body, in)
		}
	}
}

// TestNumbersAreCheckedBeforeUse: every number a client sends is range-checked as the number it
// is; one out of range answers 400 and changes nothing.
func TestNumbersAreCheckedBeforeUse(t *testing.T) {
	for _, c := range []struct {
		maxLease time.Duration
		calls    []struct{ method, path, body string }
	}{
		{0, []struct{ method, path, body string }{
			{"PUT", "/keep_alive", `{"seconds": 1e10}`}, // 317 years: once overflowed into 10 ms
			{"PUT", "/keep_alive", `{"seconds": 1e300}`},
			{"PUT", "/keep_alive", `{"seconds": 1e400}`},
			{"PUT", "/keep_alive", `{"seconds": -5}`},
			{"PUT", "/keep_alive", `{"seconds": 0}`},
			{"PUT", "/keep_alive", `{"seconds": "60"}`},
			{"PUT", "/add_to_expire_at", `{"seconds": 1e10}`},
			{"PUT", "/add_to_expire_at", `{"seconds": 6307200000}`}, // 200 years, on top of 10 minutes
			{"PUT", "", `{"expires_at": "9999-12-31T23:59:59Z"}`},
			{"PUT", "", `{"expires_at": "+10000-01-01T00:00:00Z"}`},
			{"PUT", "?token=18446744073709551616", `{"creator": "x"}`},
			{"PUT", "?token=-1", `{"creator": "x"}`},
		}},
		{time.Hour, []struct{ method, path, body string }{
			{"PUT", "/keep_alive", `{"seconds": 3601}`},
			{"PUT", "/add_to_expire_at", `{"seconds": 3060}`}, // 51 minutes on top of 10
			{"PUT", "", `{"expires_at": "` + time.Now().Add(2*time.Hour).UTC().Format(time.RFC3339) + `"}`},
		}},
	} {
		ts := start(t, Config{Backend: memory.New(), MaxLease: c.maxLease})
		l := ts.post("n", "c")
		for _, call := range c.calls {
			var e errorBody
			if code := ts.call(call.method, "/v1/locks/"+l.ID+call.path, call.body, &e); code != 400 || e.Message == "" {
				t.Errorf("--max-lease %v: %s …%s %s: %d %+v; want 400", c.maxLease, call.method, call.path, call.body, code, e)
			}
			var now lockDTO
			if code := ts.call("GET", "/v1/locks/"+l.ID, "", &now); code != 200 || now != l {
				t.Fatalf("after %s …%s %s the lock is %d %+v; want it unchanged, %+v", call.method, call.path, call.body, code, now, l)
			}
		}
		for _, wait := range []string{"9999999999h", "-1s", "11m", "1e3s"} {
			if code := ts.call("POST", "/v1/locks/?wait="+wait, `{"lock_name": "w"}`, nil); code != 400 {
				t.Errorf("POST ?wait=%s: %d; want 400", wait, code)
			}
		}
	}
}

// TestFarExpiry: a lock can be pinned until a date decades ahead, as Relukko's users pin one,
// with the default limits, and it stays held by the backend's clock until then.
func TestFarExpiry(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	ts := start(t, Config{Backend: memory.New(memory.WithClock(clock.Now))})
	l := ts.post("scope", "me")
	var got lockDTO
	// pyrelukko sends both fields, null for the one it leaves alone, and Python's isoformat.
	if code := ts.call("PUT", "/v1/locks/"+l.ID, `{"creator": null, "expires_at": "2099-12-31T12:34:56.789000+00:00"}`, &got); code != 200 {
		t.Fatalf("PUT expires_at 2099: %d", code)
	}
	if got.ExpiresAt != "2099-12-31T12:34:56.789Z" || got.ID != l.ID || got.Token != l.Token || got.Creator != "me" {
		t.Fatalf("PUT expires_at 2099 answered %+v", got)
	}
	clock.add(30 * 24 * time.Hour)
	if code := ts.call("GET", "/v1/locks/"+l.ID, "", &got); code != 200 || got.ExpiresAt != "2099-12-31T12:34:56.789Z" {
		t.Fatalf("a month later the lock is %d %+v", code, got)
	}
	if code := ts.call("PUT", "/v1/locks/"+l.ID+"/keep_alive", `{"seconds": 3e9}`, &got); code != 200 { // 95 years
		t.Fatalf("keep_alive for 95 years: %d", code)
	}
	if exp, _ := time.Parse(time.RFC3339Nano, got.ExpiresAt); exp.Sub(clock.Now()) < 94*365*24*time.Hour {
		t.Fatalf("keep_alive for 95 years set the expiry to %s", got.ExpiresAt)
	}
}

// counting is a memory backend that counts the reads of every record.
type counting struct {
	*memory.Backend
	lists atomic.Int64
}

func (c *counting) List(ctx context.Context, prefix string) ([]shylock.Info, error) {
	c.lists.Add(1)
	return c.Backend.List(ctx, prefix)
}

// TestNoCallReadsEveryRecord: the id calls and the broadcast read through shylock.Holdings,
// never the whole collection, which keeps released records for a day.
func TestNoCallReadsEveryRecord(t *testing.T) {
	b := &counting{Backend: memory.New()}
	ts := start(t, Config{Backend: b, Poll: 10 * time.Millisecond})
	l := ts.post("n", "c")
	for _, call := range []struct{ method, path, body string }{
		{"GET", "/v1/locks/" + l.ID, ""}, {"GET", "/v1/locks/", ""},
		{"PUT", "/v1/locks/" + l.ID, `{"creator": "d"}`}, {"GET", "/v1/locks/" + l.ID + "/keep_alive", ""},
		{"GET", "/v1/locks/" + l.ID + "/add_to_expire_at", ""}, {"DELETE", "/v1/locks/" + l.ID, ""},
	} {
		if code := ts.call(call.method, call.path, call.body, nil); code != 200 {
			t.Fatalf("%s %s: %d", call.method, call.path, code)
		}
	}
	time.Sleep(100 * time.Millisecond) // several polls
	if n := b.lists.Load(); n != 0 {
		t.Fatalf("the service read every record %d times", n)
	}
}

// away is a memory backend whose lock store can go away: then every call waits for its
// context, as a client of a database that no longer answers does.
type away struct {
	*memory.Backend
	down atomic.Bool
}

func (a *away) wait(ctx context.Context) error {
	if !a.down.Load() {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

func (a *away) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if err := a.wait(ctx); err != nil {
		return shylock.Lease{}, err
	}
	return a.Backend.Acquire(ctx, req)
}

func (a *away) Inspect(ctx context.Context, name string) (shylock.Info, error) {
	if err := a.wait(ctx); err != nil {
		return shylock.Info{}, err
	}
	return a.Backend.Inspect(ctx, name)
}

func (a *away) Holding(ctx context.Context, owner string) (shylock.Info, error) {
	if err := a.wait(ctx); err != nil {
		return shylock.Info{}, err
	}
	return a.Backend.Holding(ctx, owner)
}

func (a *away) Held(ctx context.Context) ([]shylock.Info, error) {
	if err := a.wait(ctx); err != nil {
		return nil, err
	}
	return a.Backend.Held(ctx)
}

// TestOutage: once the lock store stops answering, /healthchecker says so within about two
// seconds, and API calls answer 503 with the reason within callTimeout; once it is back, so is
// the service.
func TestOutage(t *testing.T) {
	b := &away{Backend: memory.New()}
	ts := start(t, Config{Backend: b, Poll: 250 * time.Millisecond})
	l := ts.post("n", "c")
	if code := ts.call("GET", "/healthchecker", "", nil); code != 200 {
		t.Fatalf("healthy: %d", code)
	}
	b.down.Store(true)
	start := time.Now()
	for ts.call("GET", "/healthchecker", "", nil) != 503 {
		if time.Since(start) > 3*time.Second {
			t.Fatal("/healthchecker still answered 200 three seconds after the lock store went away")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Fatalf("/healthchecker answered 503 %v after the lock store went away; want at most about two seconds", d)
	}
	for _, call := range []struct{ method, path, body string }{
		{"POST", "/v1/locks/", `{"lock_name": "m"}`}, {"GET", "/v1/locks/" + l.ID, ""}, {"GET", "/v1/locks/", ""},
	} {
		began := time.Now()
		var e errorBody
		code := ts.call(call.method, call.path, call.body, &e)
		if d := time.Since(began); code != 503 || !strings.Contains(e.Message, "did not answer within 3s") || d > callTimeout+time.Second {
			t.Errorf("%s %s while the lock store is away: %d %+v after %v; want 503 with the reason within %v", call.method, call.path, code, e, d, callTimeout)
		}
	}
	b.down.Store(false)
	time.Sleep(healthFresh + 100*time.Millisecond)
	if code := ts.call("GET", "/healthchecker", "", nil); code != 200 {
		t.Fatalf("/healthchecker after the lock store came back: %d", code)
	}
}

// TestPageSocketSaysWhy: the page's socket closes with the reason a key was refused, and with a
// valid one it sends the locks, or why it cannot read them.
func TestPageSocketSaysWhy(t *testing.T) {
	b := &away{Backend: memory.New()}
	ts := start(t, Config{Backend: b, Keys: [][]byte{[]byte("k")}, Poll: 20 * time.Millisecond})
	dial := func(key string) (*websocket.Conn, pageMsg, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, strings.Replace(ts.url, "http", "ws", 1)+"/ws/locks", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		if err := c.Write(ctx, websocket.MessageText, []byte(key)); err != nil {
			t.Fatal(err)
		}
		var msg pageMsg
		_, data, err := c.Read(ctx)
		if err == nil {
			err = json.Unmarshal(data, &msg)
		}
		return c, msg, err
	}
	for key, why := range map[string]string{"": pageKeyNeeded, "wrong": pageKeyRefused} {
		if _, _, err := dial(key); websocket.CloseStatus(err) != websocket.StatusPolicyViolation || !strings.Contains(err.Error(), why) {
			t.Errorf("the page's socket with key %q: %v; want closed saying %q", key, err, why)
		}
	}
	time.Sleep(100 * time.Millisecond)
	c, msg, err := dial("k")
	if err != nil || msg.Error != "" || string(msg.Locks) != "[]" {
		t.Fatalf("the page's socket with the key: %+v, %v; want the (no) locks", msg, err)
	}
	b.down.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, data, err := c.Read(ctx)
	if err != nil || json.Unmarshal(data, &msg) != nil || !strings.Contains(msg.Error, "cannot be read") {
		t.Fatalf("while the lock store is away the page got %s, %v; want why it cannot see the locks", data, err)
	}
}
