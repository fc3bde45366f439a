package shylocktest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// testInvalidNames checks that every way to spell a bad name is refused, typed, by the Lock API
// and by each Backend method, and that nothing was written.
func testInvalidNames(t *testing.T, s *suite) {
	bad := map[string]string{
		"empty":        "",
		"too long":     s.name(strings.Repeat("n", shylock.MaxNameLen)),
		"invalid UTF8": s.name("bad-\xff\xfe"),
		"NUL":          s.name("nul\x00byte"),
	}
	for what, name := range bad {
		_, err := shylock.New(name, s.with()...).TryAcquire(s.ctx)
		wantErr(t, what+": TryAcquire", err, shylock.ErrInvalidName)
		err = shylock.Do(s.ctx, name, func(context.Context) error {
			t.Errorf("%s: Do ran fn", what)
			return nil
		}, s.with()...)
		wantErr(t, what+": Do", err, shylock.ErrInvalidName)
		_, err = s.b.Acquire(s.ctx, shylock.AcquireRequest{Name: name, Owner: "o", TTL: time.Minute})
		wantErr(t, what+": Backend.Acquire", err, shylock.ErrInvalidName)
		_, err = s.b.Extend(s.ctx, name, "o", 1, time.Minute)
		wantErr(t, what+": Backend.Extend", err, shylock.ErrInvalidName)
		wantErr(t, what+": Backend.Release", s.b.Release(s.ctx, name, "o", 0), shylock.ErrInvalidName)
		_, err = s.b.Inspect(s.ctx, name)
		wantErr(t, what+": Backend.Inspect", err, shylock.ErrInvalidName)
		_, err = s.b.ForceRelease(s.ctx, name)
		wantErr(t, what+": Backend.ForceRelease", err, shylock.ErrInvalidName)
		if name != "" { // the empty prefix lists every lock
			_, err = s.b.List(s.ctx, name)
			wantErr(t, what+": Backend.List", err, shylock.ErrInvalidName)
		}
	}
	s.wantNoRecord(t, s.prefix)
}

func testInvalidTTLs(t *testing.T, s *suite) {
	for _, ttl := range []time.Duration{0, -time.Second, shylock.MinTTL - 1, shylock.MaxTTL + 1, 1 << 62} {
		l := s.lock("x", shylock.WithTTL(ttl))
		_, err := l.TryAcquire(s.ctx)
		wantErr(t, "TryAcquire with TTL "+ttl.String(), err, shylock.ErrInvalidTTL)
		_, err = s.b.Acquire(s.ctx, shylock.AcquireRequest{Name: l.Name(), Owner: "o", TTL: ttl})
		wantErr(t, "Backend.Acquire with TTL "+ttl.String(), err, shylock.ErrInvalidTTL)
	}
	s.wantNoRecord(t, s.name("x"))

	l := s.lock("y")
	s.mustAcquire(t, l)
	for _, ttl := range []time.Duration{0, -time.Minute, shylock.MaxTTL + 1} {
		wantErr(t, "Extend with TTL "+ttl.String(), l.Extend(s.ctx, ttl), shylock.ErrInvalidTTL)
		_, err := s.b.Extend(s.ctx, l.Name(), "o", l.Token(), ttl)
		wantErr(t, "Backend.Extend with TTL "+ttl.String(), err, shylock.ErrInvalidTTL)
	}
	if !l.Held() {
		t.Fatal("a refused Extend lost the lock")
	}
	if err := l.Release(s.ctx); err != nil {
		t.Fatalf("Release: %v", err)
	}

	for _, o := range []shylock.Option{shylock.WithRetry(0, time.Second), shylock.WithRetry(time.Second, time.Millisecond),
		shylock.WithMaxHold(-time.Second), shylock.WithLogger(nil)} {
		_, err := s.lock("z", o).TryAcquire(s.ctx)
		wantErr(t, "TryAcquire with an invalid option", err, shylock.ErrInvalidOption)
	}
	s.wantNoRecord(t, s.name("z"))
}

// testNamesAreValues checks that names which look like query syntax or paths are ordinary,
// independent names that round-trip exactly, and that List's prefix is literal.
func testNamesAreValues(t *testing.T, s *suite) {
	odd := []string{"$gt", "$where", "a.b", "axb", "a.", ".", "$", `{"$ne": null}`, "'; DROP --", "名前/ünïcødé",
		"with space", "slash/and\\backslash", "%", "_", ".*", "[", "FOR d IN c RETURN d", "@value"}
	var locks []*shylock.Lock
	for _, n := range odd {
		l := s.lock(n)
		s.mustAcquire(t, l)
		locks = append(locks, l)
	}
	infos, err := s.b.List(s.ctx, s.prefix)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var got, want []string
	for _, in := range infos {
		if !in.Held {
			t.Errorf("List: %q is not held", in.Name)
		}
		got = append(got, in.Name)
	}
	for _, n := range odd {
		want = append(want, s.name(n))
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("List returned\n%q\nwant, sorted,\n%q", got, want)
	}
	for _, lit := range []struct{ prefix, only string }{{"a.", "a."}, {".*", ".*"}, {"$w", "$where"}, {"[", "["}, {"%", "%"}, {"_", "_"}} {
		infos, err := s.b.List(s.ctx, s.name(lit.prefix))
		if err != nil {
			t.Fatalf("List(%q): %v", lit.prefix, err)
		}
		var names []string
		for _, in := range infos {
			names = append(names, strings.TrimPrefix(in.Name, s.prefix))
		}
		wantNames := []string{lit.only}
		if lit.prefix == "a." {
			wantNames = []string{"a.", "a.b"}
		}
		if !slices.Equal(names, wantNames) {
			t.Fatalf("List(prefix+%q) = %q; want %q (the prefix must be literal)", lit.prefix, names, wantNames)
		}
	}
	for _, l := range locks {
		if err := l.Release(s.ctx); err != nil {
			t.Fatalf("Release(%q): %v", l.Name(), err)
		}
	}
}

// wantNoRecord fails if any record's name starts with prefix.
func (s *suite) wantNoRecord(t *testing.T, prefix string) {
	t.Helper()
	infos, err := s.b.List(s.ctx, prefix)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(infos) != 0 {
		t.Fatalf("refused input wrote %d records, first %+v", len(infos), infos[0])
	}
}
