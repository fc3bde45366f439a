package arango

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// The holdings' queries are checked here without a server: ArangoDB cannot be embedded, and the
// integration tests run them where one is given.

func TestHoldingsQueries(t *testing.T) {
	b := &Backend{coll: "locks"}
	label := `" RETURN 1 //`
	queries := map[string]query{
		"holding": b.holdingQuery("owner-1"),
		"held":    b.heldQuery(),
		"amend":   b.amendQuery(hostile[1], "owner-1", 7, shylock.Amendment{Label: &label, TTL: 90 * time.Second}),
	}
	param := regexp.MustCompile(`@@?[a-z]+`)
	for op, q := range queries {
		used := map[string]bool{}
		for _, p := range param.FindAllString(q.text, -1) {
			used[strings.TrimPrefix(p, "@")] = true
		}
		if len(used) != len(q.bind) {
			t.Errorf("%s: the query uses %v and binds %v", op, used, q.bind)
		}
		for k := range used {
			if _, ok := q.bind[k]; !ok {
				t.Errorf("%s: the query uses @%s but it is not bound", op, k)
			}
		}
		if q.bind["@coll"] != "locks" || !strings.Contains(q.text, "DATE_NOW()") {
			t.Errorf("%s: binds %v; want the collection, and the query reading the server's clock", op, q.bind)
		}
	}
	// What the index on owner serves: an equality, and a range that leaves out owner "".
	if !strings.Contains(holdingAQL, "FILTER d.owner == @owner") || !strings.Contains(heldAQL, `FILTER d.owner > "" && d.expiresAt * 1000 > now`) {
		t.Error("the holdings' queries do not filter on owner as the index on owner serves")
	}
	a := queries["amend"].bind
	if a["name"] != hostile[1] || a["label"] != label || a["relabel"] != true || a["ttl"] != int64(90000) || a["token"] != uint64(7) {
		t.Errorf("amend binds %v", a)
	}
	// An amendment that keeps the label binds none; one that sets the expiry to an instant
	// binds it in milliseconds, and ttl 0.
	keep := b.amendQuery("n", "o", 7, shylock.Amendment{ExpiresAt: time.UnixMilli(4102490096789)}).bind
	if keep["relabel"] != false || keep["label"] != "" || keep["ttl"] != int64(0) || keep["until"] != int64(4102490096789) {
		t.Errorf("an amendment of the expiry to 2099-12-31T12:34:56.789Z binds %v", keep)
	}
	if a["until"] != int64(0) {
		t.Errorf("an amendment of the TTL binds until %v; want 0", a["until"])
	}
	// The amendment changes only a live holding of the owner with that token, as extend does.
	if !strings.Contains(amendAQL, "FILTER d.name == @name && d.owner == @owner && d.token == @token && d.expiresAt * 1000 > now") ||
		!strings.Contains(amendAQL, "ignoreRevs: false") || strings.Contains(amendAQL, "UPSERT") || strings.Contains(amendAQL, "INSERT") {
		t.Error("the amendment may change another holding than the one it names, or take a lock")
	}
}

func TestHoldingsRefuseBadInputBeforeIO(t *testing.T) {
	b := &Backend{coll: "locks"} // no database: any I/O would panic
	label := "x"
	for what, c := range map[string]struct {
		name   string
		a      shylock.Amendment
		target error
	}{
		"an empty name":            {"", shylock.Amendment{Label: &label}, shylock.ErrInvalidName},
		"a TTL beyond MaxAmendTTL": {"n", shylock.Amendment{TTL: shylock.MaxAmendTTL + time.Second}, shylock.ErrInvalidTTL},
		"a name not in NFC":        {"e\u0301", shylock.Amendment{Label: &label}, shylock.ErrInvalidName},
	} {
		if _, err := b.Amend(t.Context(), c.name, "o", 1, c.a); !errors.Is(err, c.target) {
			t.Errorf("Amend with %s: %v; want %v", what, err, c.target)
		}
	}
	if _, err := b.Amend(t.Context(), "n", "", 1, shylock.Amendment{Label: &label}); !errors.Is(err, shylock.ErrNotHeld) {
		t.Errorf("Amend without an owner: %v", err)
	}
	if _, err := b.Holding(t.Context(), ""); !errors.Is(err, shylock.ErrNotHeld) {
		t.Errorf("Holding of an empty owner: %v", err)
	}
	if _, err := (&Backend{readOnly: true}).Amend(t.Context(), "n", "o", 1, shylock.Amendment{Label: &label}); !errors.Is(err, shylock.ErrRefused) {
		t.Errorf("Amend on a read-only backend: %v", err)
	}
}
