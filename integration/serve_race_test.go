package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// No call on a lock's id takes a lock: the service changes only the holding an id names, or
// answers 422, however its calls interleave with the end of that holding.

// try sends an API request from any goroutine and returns its status.
func (s *served) try(method, path, body string) (int, error) {
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-api-Key", s.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestServeRelabelRacingRelease races a DELETE and a PUT with a new creator on one id, round
// after round. Whichever comes first, both answer as they should and the lock is free once they
// have: the PUT never takes it back. (Run with SHYLOCK_MONGO_URI for another server: a
// pipeline-capable one is where the race used to leave the lock held in half the rounds.)
func TestServeRelabelRacingRelease(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	for what, args := range serveBackends(t) {
		t.Run(what, func(t *testing.T) {
			s := startServe(t, bin, serveEnv(), args...)
			const rounds = 200
			answers := map[string]int{}
			for round := range rounds {
				var l relukkoLock
				if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/race", "creator": "holder"}`, &l); code != 201 {
					t.Fatalf("round %d: POST: %d; the lock is still held after the last round", round, code)
				}
				var (
					wg             sync.WaitGroup
					del, put       int
					delErr, putErr error
					ready          = make(chan struct{})
					path           = "/v1/locks/" + l.ID
				)
				wg.Go(func() { <-ready; del, delErr = s.try("DELETE", path, "") })
				wg.Go(func() { <-ready; put, putErr = s.try("PUT", path, `{"creator": "renamed"}`) })
				close(ready)
				wg.Wait()
				if delErr != nil || putErr != nil || del != 200 || put != 200 && put != 422 {
					t.Fatalf("round %d: DELETE %d (%v), PUT %d (%v); want DELETE 200 and PUT 200 or 422", round, del, delErr, put, putErr)
				}
				answers[fmt.Sprintf("PUT %d", put)]++
				if code := s.call(t, "GET", path, "", nil); code != 422 {
					t.Fatalf("round %d: after a DELETE and a PUT (%d) raced, the lock answers %d; want 422", round, put, code)
				}
			}
			t.Logf("%s, %d rounds: %v", what, rounds, answers)
		})
	}
}

// TestServeIDCallsAfterTakeover forces the interleaving: holder A's lease runs out, B takes the
// lock and releases it, and then every call on A's id, with A's token or without, answers 422
// and takes nothing.
func TestServeIDCallsAfterTakeover(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	for what, args := range serveBackends(t) {
		t.Run(what, func(t *testing.T) {
			s := startServe(t, bin, serveEnv(), args...)
			var a, b relukkoLock
			if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/a", "creator": "a"}`, &a); code != 201 {
				t.Fatalf("a's POST: %d", code)
			}
			if code := s.call(t, "PUT", "/v1/locks/"+a.ID+"/keep_alive", `{"seconds": 0.2}`, nil); code != 200 {
				t.Fatalf("a's keep_alive: %d", code)
			}
			waitFor(t, func() bool {
				return s.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/a", "creator": "b"}`, &b) == 201
			})
			if code := s.call(t, "DELETE", "/v1/locks/"+b.ID, "", nil); code != 200 {
				t.Fatalf("b's DELETE: %d", code)
			}
			token := fmt.Sprintf("?token=%d", a.Token)
			for _, c := range []struct{ method, path, body string }{
				{"PUT", a.ID + token, `{"creator": "a again"}`},
				{"PUT", a.ID, `{"creator": "a again"}`},
				{"PUT", a.ID, `{"expires_at": "2099-12-31T12:34:56.789Z"}`},
				{"PUT", a.ID + "/keep_alive" + token, `{"seconds": 600}`},
				{"GET", a.ID + "/add_to_expire_at", ""},
				{"DELETE", a.ID, ""},
			} {
				var e relukkoError
				if code := s.call(t, c.method, "/v1/locks/"+c.path, c.body, &e); code != 422 {
					t.Errorf("%s %s %s after the holding ended: %d %+v; want 422", c.method, c.path, c.body, code, e)
				}
			}
			var all []relukkoLock
			if s.call(t, "GET", "/v1/locks/", "", &all); len(all) != 0 {
				t.Fatalf("calls on an ended holding's id left locks held: %+v", all)
			}
			start := time.Now()
			if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "rig/a", "creator": "c"}`, nil); code != 201 {
				t.Fatalf("the lock was not free after calls on an ended holding's id: %d (%v)", code, time.Since(start))
			}
		})
	}
}
