package integration

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// pyrelukko 0.11's backend tests (tests/test_pyrelukko.py, those that take the relukko_backend
// fixture), emulated: pyrelukko cannot be installed here. The client below sends what
// RelukkoClient sends (both fields of an update, null for the one left alone; datetimes as
// Python's isoformat writes them) and reads answers as it does (RelukkoDTO: seven fields, the id
// through uuid.UUID, times through datetime.fromisoformat; 409 is None, 422 a dict).

// pyDTO is a RelukkoDTO.
type pyDTO struct {
	ID                              [16]byte
	LockName, Creator, IP           string
	ExpiresAt, CreatedAt, UpdatedAt time.Time
}

func (a pyDTO) equal(b pyDTO) bool {
	return a.ID == b.ID && a.LockName == b.LockName && a.Creator == b.Creator && a.IP == b.IP &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// pyClient is a RelukkoClient on a served shylock.
type pyClient struct {
	t *testing.T
	s *served
}

// request is RelukkoClient._make_request with _check_response, without the retries: a DTO (or a
// list of them) for 200 and 201, the error dict for 404 and 422, nothing for 409.
func (c pyClient) request(method, path string, payload any) (status int, dto pyDTO, list []pyDTO, errDict map[string]any) {
	c.t.Helper()
	var body io.Reader
	if payload != nil {
		data, _ := json.Marshal(payload)
		body = strings.NewReader(string(data))
	}
	req, _ := http.NewRequest(method, c.s.url+path, body)
	req.Header.Set("X-api-Key", c.s.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	switch resp.StatusCode {
	case 200, 201:
		if strings.HasPrefix(strings.TrimSpace(string(data)), "[") {
			var raw []map[string]any
			c.decode(data, &raw)
			for _, r := range raw {
				list = append(list, c.fromDict(r))
			}
		} else {
			var raw map[string]any
			c.decode(data, &raw)
			dto = c.fromDict(raw)
		}
	case 404, 422:
		c.decode(data, &errDict)
	case 409:
	default:
		c.t.Fatalf("%s %s answered %d %s; pyrelukko would raise", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, dto, list, errDict
}

func (c pyClient) decode(data []byte, v any) {
	c.t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		c.t.Fatalf("response.json() fails on %q: %v", data, err)
	}
}

// fromDict is RelukkoDTO.from_dict: every field must be there, the id a UUID, the times ISO 8601.
func (c pyClient) fromDict(r map[string]any) pyDTO {
	c.t.Helper()
	str := func(k string) string {
		v, ok := r[k].(string)
		if !ok {
			c.t.Fatalf("RelukkoDTO.from_dict: %q is %v, not a str, in %v", k, r[k], r)
		}
		return v
	}
	at := func(k string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, str(k))
		if err != nil {
			c.t.Fatalf("datetime.fromisoformat(%q): %v", str(k), err)
		}
		return v
	}
	var d pyDTO
	id, err := hex.DecodeString(strings.ReplaceAll(str("id"), "-", ""))
	if err != nil || len(id) != 16 {
		c.t.Fatalf("UUID(%q) fails", str("id"))
	}
	copy(d.ID[:], id)
	d.LockName, d.Creator, d.IP = str("lock_name"), str("creator"), str("ip")
	d.ExpiresAt, d.CreatedAt, d.UpdatedAt = at("expires_at"), at("created_at"), at("updated_at")
	return d
}

func (d pyDTO) id() string {
	h := hex.EncodeToString(d.ID[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// acquire is RelukkoClient.acquire_relukko: POST, and after a 409 wait up to 2 s for a deletion
// on the broadcast, POSTing again when one came (or every 100th round), until maxRunTime.
func (c pyClient) acquire(name, creator string, maxRunTime time.Duration) (pyDTO, bool) {
	c.t.Helper()
	msgs := broadcastClient(c.t, c.s)
	start := time.Now()
	gotMessage := false
	for loop := 0; time.Since(start) <= maxRunTime; loop++ {
		if gotMessage || loop%100 == 0 {
			if code, d, _, _ := c.request("POST", "/v1/locks/", map[string]any{"lock_name": name, "creator": creator}); code == 201 {
				return d, true
			}
		}
		select {
		case <-msgs:
			gotMessage = true
		case <-time.After(2 * time.Second):
			gotMessage = false
		}
	}
	return pyDTO{}, false
}

func (c pyClient) update(id string, creator, expiresAt any) pyDTO {
	c.t.Helper()
	code, d, _, e := c.request("PUT", "/v1/locks/"+id, map[string]any{"creator": creator, "expires_at": expiresAt})
	if code != 200 {
		c.t.Fatalf("update_relukko: %d %v", code, e)
	}
	return d
}

func (c pyClient) call(method, path string, payload any) pyDTO {
	c.t.Helper()
	code, d, _, e := c.request(method, path, payload)
	if code != 200 {
		c.t.Fatalf("%s %s: %d %v", method, path, code, e)
	}
	return d
}

func (c pyClient) locks() []pyDTO {
	c.t.Helper()
	_, _, list, _ := c.request("GET", "/v1/locks/", nil)
	return list
}

func contains(list []pyDTO, d pyDTO) bool {
	for _, x := range list {
		if x.equal(d) {
			return true
		}
	}
	return false
}

// isoformat is Python's datetime.isoformat of an aware UTC datetime.
func isoformat(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000-07:00") }

// TestServePyrelukkoBackendTests runs pyrelukko's backend tests against shylock serve with the
// default flags, one served instance for all, as pyrelukko's session fixture does. Deviations,
// each for a reason of time only: test_acquire_relukko waits 3 s where pyrelukko waits 30; and
// test_acquire_relukko_with_del asserts the acquire after an expiry in the past took at least
// 14 s, Relukko's interval of deleting expired locks, where shylock serve releases such a lock
// at once: here it must take less than 14 s.
func TestServePyrelukkoBackendTests(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	for what, args := range serveBackends(t) {
		t.Run(what, func(t *testing.T) {
			relukko := pyClient{t: t, s: startServe(t, bin, serveEnv(), args...)}

			t.Run("test_acquire_relukko", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				if _, ok := c.acquire("pylock", "pytest", 10*time.Second); !ok {
					t.Fatal("lock is None")
				}
				start := time.Now()
				if _, ok := c.acquire("pylock", "pytest", 3*time.Second); ok {
					t.Fatal("a second acquire of a held lock got it")
				}
				if d := time.Since(start); d < 3*time.Second || d > 6*time.Second {
					t.Fatalf("the acquire gave up after %v; want about 3 s", d)
				}
			})

			t.Run("test_acquire_relukko_with_del", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("Pylock", "pytest", 10*time.Second)
				upd := c.update(lock.id(), nil, isoformat(time.Now().Add(-(2*time.Minute + 45*time.Second))))
				if upd.ID != lock.ID {
					t.Fatalf("id == upd_lock['id'] fails: %x, %x", lock.ID, upd.ID)
				}
				start := time.Now()
				next, ok := c.acquire("Pylock", "pytest", 60*time.Second)
				if !ok || next.ID == upd.ID || time.Since(start) >= 14*time.Second {
					t.Fatalf("the acquire after an expiry in the past: %v, %+v after %v", ok, next, time.Since(start))
				}
			})

			t.Run("test_delete_relukko", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("del_lock", "pytest", 10*time.Second)
				if del := c.call("DELETE", "/v1/locks/"+lock.id(), nil); !lock.equal(del) {
					t.Fatalf("lock == del_lock fails: %+v, %+v", lock, del)
				}
				if code, _, _, e := c.request("GET", "/v1/locks/"+lock.id(), nil); code != 422 || e["status"] != float64(422) {
					t.Fatalf("get_lock(id)['status'] == 422 fails: %d %v", code, e)
				}
				if contains(c.locks(), lock) {
					t.Fatal("lock not in locks fails")
				}
			})

			t.Run("test_get_relukko", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("get_lock", "pytest", 10*time.Second)
				if got := c.call("GET", "/v1/locks/"+lock.id(), nil); !got.equal(lock) {
					t.Fatalf("get_lock == lock fails: %+v, %+v", got, lock)
				}
				if !contains(c.locks(), lock) {
					t.Fatal("lock in locks fails")
				}
			})

			t.Run("test_update_relukko_creator", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("update_lock", "pytest", 10*time.Second)
				if upd := c.update(lock.id(), "tsetyp", nil); upd.Creator != "tsetyp" {
					t.Fatalf("upd_lock['creator'] == 'tsetyp' fails: %+v", upd)
				}
				if got := c.call("GET", "/v1/locks/"+lock.id(), nil); got.Creator != "tsetyp" {
					t.Fatalf("get_lock['creator'] == 'tsetyp' fails: %+v", got)
				}
			})

			t.Run("test_update_relukko_expires_at", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("update_lock_exp", "pytest", 10*time.Second)
				want := time.Date(2099, 12, 31, 12, 34, 56, 789e6, time.UTC) // datetime.fromisoformat("2099-12-31T12:34:56.789Z")
				if upd := c.update(lock.id(), nil, isoformat(want)); !upd.ExpiresAt.Equal(want) {
					t.Fatalf("upd_lock['expires_at'] == expires_at fails: %v, want %v", upd.ExpiresAt, want)
				}
			})

			t.Run("test_keep_relukko_alive", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("keep_me", "pytest", 10*time.Second)
				start := time.Now()
				keep := c.call("GET", "/v1/locks/"+lock.id()+"/keep_alive", nil)
				if d := keep.ExpiresAt.Sub(start); d <= 295*time.Second || d >= 305*time.Second {
					t.Fatalf("295 < expires_diff.seconds < 305 fails: %v", d)
				}
			})

			t.Run("test_keep_relukko_alive_put", func(t *testing.T) {
				c := pyClient{t, relukko.s}
				lock, _ := c.acquire("keep_me_more", "pytest", 10*time.Second)
				start := time.Now()
				keep := c.call("PUT", "/v1/locks/"+lock.id()+"/keep_alive", map[string]any{"seconds": 3600})
				if d := keep.ExpiresAt.Sub(start); d <= 3595*time.Second || d >= 3605*time.Second {
					t.Fatalf("3595 < expires_diff.seconds < 3605 fails: %v", d)
				}
			})

			for path, payload := range map[string]any{"test_add_to_expires_at_time": nil, "test_add_to_expires_at_time_put": map[string]any{"seconds": 3600}} {
				t.Run(path, func(t *testing.T) {
					c := pyClient{t, relukko.s}
					lock, _ := c.acquire("add_me_up"+strings.TrimPrefix(path, "test_add_to_expires_at_time"), "pytest", 10*time.Second)
					method, want := "GET", 300*time.Second
					if payload != nil {
						method, want = "PUT", 3600*time.Second
					}
					add := c.call(method, "/v1/locks/"+lock.id()+"/add_to_expire_at", payload)
					// timedelta.seconds: the whole seconds of the difference.
					if d := add.ExpiresAt.Sub(lock.ExpiresAt); d.Truncate(time.Second) != want {
						t.Fatalf("expires_diff.seconds == %v fails: the difference is %v", want.Seconds(), d)
					}
				})
			}
		})
	}
}

// TestServeFarExpiryByTheDatabaseClock: an expiry set through PUT is stored as given, decades
// ahead if asked, and whether it has passed is still decided by the database's clock, as every
// expiry is: a lock set to expire two seconds ahead is free once they have passed, not before.
func TestServeFarExpiryByTheDatabaseClock(t *testing.T) {
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	coll := collection(t)
	s := startServe(t, bin, serveEnv(), "--collection", coll.Name())
	var l relukkoLock
	if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "pinned", "creator": "me"}`, &l); code != 201 {
		t.Fatalf("POST: %d", code)
	}
	if code := s.call(t, "PUT", "/v1/locks/"+l.ID, `{"expires_at": "2099-12-31T12:34:56.789Z"}`, nil); code != 200 {
		t.Fatalf("PUT expires_at 2099: %d", code)
	}
	var doc struct {
		ExpiresAt time.Time `bson:"expiresAt"`
	}
	if err := coll.FindOne(context.Background(), bson.D{{Key: "name", Value: "pinned"}}).Decode(&doc); err != nil ||
		!doc.ExpiresAt.Equal(time.Date(2099, 12, 31, 12, 34, 56, 789e6, time.UTC)) {
		t.Fatalf("the stored expiry is %v (%v); want 2099-12-31T12:34:56.789Z", doc.ExpiresAt, err)
	}

	soon := time.Now().Add(2 * time.Second).UTC()
	if code := s.call(t, "PUT", "/v1/locks/"+l.ID, fmt.Sprintf(`{"expires_at": %q}`, soon.Format(time.RFC3339Nano)), nil); code != 200 {
		t.Fatalf("PUT expires_at in 2 s: %d", code)
	}
	if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "pinned", "creator": "next"}`, nil); code != 409 {
		t.Fatalf("POST before the expiry: %d; want 409", code)
	}
	time.Sleep(time.Until(soon) + 500*time.Millisecond)
	if code := s.call(t, "POST", "/v1/locks/", `{"lock_name": "pinned", "creator": "next"}`, nil); code != 201 {
		t.Fatalf("POST after the expiry: %d; want 201", code)
	}
}
