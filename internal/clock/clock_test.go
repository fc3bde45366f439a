package clock

import (
	"context"
	"testing"
	"time"
)

// fakeServer's clock runs offset from the real one and answers after a delay.
type fakeServer struct {
	offset time.Duration
	delay  time.Duration
	reads  int
}

func (s *fakeServer) read(context.Context) (time.Time, error) {
	s.reads++
	time.Sleep(s.delay / 2)
	t := time.Now().Add(s.offset).Truncate(time.Millisecond)
	time.Sleep(s.delay / 2)
	return t, nil
}

func TestBoundsContainServerTimeWhateverTheClientSkew(t *testing.T) {
	for _, skew := range []time.Duration{-time.Hour, 0, time.Hour} {
		srv := &fakeServer{offset: 3 * time.Minute, delay: 4 * time.Millisecond}
		client := func() time.Time { return time.Now().Add(skew).Round(0) } // wall clock only
		e := New(client, srv.read)
		var first int
		for i := range 20 {
			lo, hi, err := e.Bounds(context.Background())
			truth := time.Now().Add(srv.offset)
			if err != nil {
				t.Fatal(err)
			}
			if truth.Before(lo) || truth.After(hi) {
				t.Fatalf("skew %v: server time %v outside [%v, %v]", skew, truth, lo, hi)
			}
			if w := hi.Sub(lo); w > 20*time.Millisecond {
				t.Fatalf("skew %v: interval %v wide for a 4ms round trip", skew, w)
			}
			if i == 0 {
				first = srv.reads
			}
			time.Sleep(time.Millisecond)
		}
		if first > 3 || srv.reads != first {
			t.Fatalf("skew %v: %d samples for the first estimate and %d more within MaxAge; want at most 3, then none", skew, first, srv.reads-first)
		}
	}
}

func TestResamplesWhenOld(t *testing.T) {
	srv := &fakeServer{}
	now := time.Now()
	e := New(func() time.Time { return now }, srv.read)
	_, _, _ = e.Bounds(context.Background())
	n := srv.reads
	now = now.Add(MaxAge + time.Second)
	_, _, _ = e.Bounds(context.Background())
	if srv.reads == n {
		t.Fatal("no new sample after MaxAge")
	}
	n = srv.reads
	now = now.Add(-time.Hour) // the client clock stepped back
	_, _, _ = e.Bounds(context.Background())
	if srv.reads == n {
		t.Fatal("no new sample after the client clock stepped back")
	}
}
