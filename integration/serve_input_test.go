package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestServeRangeChecksNumbers: every number a client sends, and every flag, is range-checked as
// the number it is before it becomes a duration; out of range is 400 (or exit status 2) and
// changes nothing. {"seconds": 1e10} once overflowed into a 10 ms lease.
func TestServeRangeChecksNumbers(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	c := cli{t: t, bin: bin, coll: "unused"}
	for _, flags := range [][]string{
		{"--max-lease", "-1h"}, {"--max-lease", "1ms"}, {"--max-lease", "2000000h"}, // 228 years
		{"--max-lease", "3000000000h"}, {"--poll", "0s"}, {"--max-conns", "0"}, {"--max-conns", "99999999999999999999"},
	} {
		if out, code := c.run(append([]string{"serve", "--memory", "--addr", "127.0.0.1:0"}, flags...)...); code != 2 {
			t.Errorf("serve %s: exit %d; want 2 (usage)\n%s", strings.Join(flags, " "), code, out)
		}
	}

	for _, maxLease := range []string{"default", "1h"} {
		args := []string{"--memory"}
		if maxLease != "default" {
			args = append(args, "--max-lease", maxLease)
		}
		s := startServe(t, bin, serveEnv(), args...)
		var l relukkoLock
		if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "n", "creator": "c"}`, &l); code != 201 {
			t.Fatalf("POST: %d", code)
		}
		calls := []struct{ method, path, body string }{
			{"PUT", "/keep_alive", `{"seconds": 1e10}`},
			{"PUT", "/keep_alive", `{"seconds": 1e400}`},
			{"PUT", "/keep_alive", `{"seconds": -1}`},
			{"PUT", "/add_to_expire_at", `{"seconds": 1e10}`},
			{"PUT", "", `{"expires_at": "9999-12-31T23:59:59Z"}`},
			{"PUT", "?token=99999999999999999999", `{"creator": "x"}`},
		}
		if maxLease == "1h" {
			calls = append(calls,
				struct{ method, path, body string }{"PUT", "/keep_alive", `{"seconds": 3601}`},
				struct{ method, path, body string }{"PUT", "", fmt.Sprintf(`{"expires_at": %q}`, time.Now().Add(2*time.Hour).UTC().Format(time.RFC3339))})
		}
		for _, c := range calls {
			var e relukkoError
			if code := s.call(t, c.method, "/v1/locks/"+l.ID+c.path, c.body, &e); code != 400 || e.Message == "" {
				t.Errorf("--max-lease %s: %s …%s %s: %d %+v; want 400", maxLease, c.method, c.path, c.body, code, e)
			}
		}
		time.Sleep(100 * time.Millisecond) // a lease cut to 10 ms would be gone
		var now relukkoLock
		if code := s.call(t, "GET", "/v1/locks/"+l.ID, "", &now); code != 200 || now != l {
			t.Fatalf("--max-lease %s: after the refused calls the lock is %d %+v; want it unchanged, %+v", maxLease, code, now, l)
		}
		for _, wait := range []string{"9999999999h", "-1s", "11m"} {
			if code := s.call(t, "POST", "/v1/locks/?wait="+wait, `{"lock_name": "w"}`, nil); code != 400 {
				t.Errorf("POST ?wait=%s: %d; want 400", wait, code)
			}
		}
	}
}
