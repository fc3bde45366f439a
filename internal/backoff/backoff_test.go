package backoff

import (
	"testing"
	"time"
)

func TestStaysWithinBoundsAndGrows(t *testing.T) {
	min, max := 10*time.Millisecond, 80*time.Millisecond
	b := New(min, max)
	var last time.Duration
	for i := range 50 {
		d := b.Next()
		if d < min || d > max {
			t.Fatalf("delay %d = %v, outside [%v, %v]", i, d, min, max)
		}
		last = d
	}
	if last < max/2 {
		t.Fatalf("after 50 steps the delay is %v; it should have grown to at least %v", last, max/2)
	}
	b.Reset()
	if d := b.Next(); d != min {
		t.Fatalf("first delay after Reset = %v, want %v", d, min)
	}
}

func TestJitterSpreadsDelays(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 100 {
		b := New(time.Millisecond, time.Second)
		for range 5 {
			b.Next()
		}
		seen[b.Next()] = true
	}
	if len(seen) < 10 {
		t.Fatalf("100 backoffs at the same step gave only %d distinct delays; jitter is missing", len(seen))
	}
}
