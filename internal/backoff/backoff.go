// Package backoff computes exponential delays with jitter, so that many processes retrying the
// same lock do not retry in step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff yields delays that double from Min towards Max. Each delay is drawn uniformly from the
// upper half of the current step and never leaves [Min, Max]. It is not safe for concurrent use;
// give each retry loop its own.
type Backoff struct {
	min, max, cur time.Duration
}

// New returns a Backoff between min and max. It requires 0 < min <= max.
func New(min, max time.Duration) *Backoff {
	return &Backoff{min: min, max: max, cur: min}
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	d := b.cur
	if half := d / 2; half > 0 {
		d = half + rand.N(d-half+1)
	}
	d = max(d, b.min)
	b.cur = min(b.cur*2, b.max)
	return d
}

// Reset starts again from the shortest delay.
func (b *Backoff) Reset() { b.cur = b.min }
