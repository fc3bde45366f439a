package integration

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestServeOutage: the database goes away, first swallowing every packet, then refusing
// connections. Each time /healthchecker answers 503 within about two seconds, API calls answer
// 503 with a reason within their bound (3 s), and once the database is back, so is the service.
func TestServeOutage(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	n := startFaultyNetwork(t, mongoURIHost(t))
	env := append(serveEnv(), "SHYLOCK_MONGO_URI="+n.uri())
	s := startServe(t, bin, env, "--collection", collection(t).Name())
	var l relukkoLock
	if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/1", "creator": "c"}`, &l); code != 201 {
		t.Fatalf("POST: %d", code)
	}
	health := func() int { return s.callKey(t, "", "GET", "/healthchecker", "", nil) }
	for _, outage := range []struct {
		what       string
		begin, end func()
	}{
		{"swallowed", func() {
			if _, err := n.proxy.Toxics.AddToxicJson(strings.NewReader(`{"name": "blackhole", "type": "timeout", "stream": "downstream", "attributes": {"timeout": 0}}`)); err != nil {
				t.Fatal(err)
			}
		}, func() {
			if err := n.proxy.Toxics.RemoveToxic(context.Background(), "blackhole"); err != nil {
				t.Fatal(err)
			}
		}},
		{"refused", n.proxy.Stop, func() {
			if err := n.proxy.Start(); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		if code := health(); code != 200 {
			t.Fatalf("%s: healthy before: %d", outage.what, code)
		}
		outage.begin()
		start := time.Now()
		for health() != 503 {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s: /healthchecker still answered 200 five seconds into the outage", outage.what)
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("%s: /healthchecker answered 503 %v into the outage", outage.what, time.Since(start))
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("%s: /healthchecker answered 503 %v into the outage; want at most about two seconds", outage.what, d)
		}
		for _, c := range []struct{ method, path, body string }{
			{"POST", "/v1/locks/", `{"lock_name": "rig/2", "creator": "c"}`},
			{"GET", "/v1/locks/" + l.ID, ""},
			{"GET", "/v1/locks/" + l.ID + "/keep_alive", ""},
		} {
			began := time.Now()
			var e relukkoError
			code := s.call(t, c.method, c.path, c.body, &e)
			if d := time.Since(began); code != 503 || e.Message == "" || d > 4*time.Second {
				t.Errorf("%s: %s %s during the outage: %d %+v after %v; want 503 with a reason within 3 s", outage.what, c.method, c.path, code, e, d)
			}
		}
		outage.end()
		waitFor(t, func() bool { return health() == 200 && s.call(t, "GET", "/v1/locks/"+l.ID, "", nil) == 200 })
	}
}
