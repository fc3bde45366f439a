// Package clock estimates a server's clock from the client's, for servers whose updates cannot
// read their own clock. The estimate is an interval certain to contain the server's time, so a
// caller can be conservative in either direction: judge a lease expired only when it is expired
// at the interval's low end, and trust its own lease only up to the high end.
package clock

import (
	"context"
	"sync"
	"time"
)

const (
	// Drift is how fast two clocks may run apart: 100 parts per million, far above what NTP
	// keeps and above the worst quartz crystal, so resampling every MaxAge stays safe.
	Drift = 1e-4
	// MaxAge is how old a sample may grow before the next estimate takes a new one.
	MaxAge = 30 * time.Second
	// Wide is an uncertainty worth improving on: a sample taken during a slow round trip (a
	// burst of load) is replaced after a second by a narrower one.
	Wide = 10 * time.Millisecond
	// Resolution is the precision of the server's reply (BSON dates hold milliseconds).
	Resolution = time.Millisecond
)

// Estimator keeps one sample of the server's clock and extrapolates from it with the client's
// clock. Only differences of client times are used, so a client clock that is off by any
// constant amount gives the same estimate.
type Estimator struct {
	now  func() time.Time
	read func(ctx context.Context) (time.Time, error)

	mu       sync.Mutex
	server   time.Time // what the server said
	sent, at time.Time // client times just before the request and just after the reply
	tried    time.Time // when a sample was last taken, kept or not
}

// New returns an Estimator that samples the server with read and the client with now.
func New(now func() time.Time, read func(ctx context.Context) (time.Time, error)) *Estimator {
	return &Estimator{now: now, read: read}
}

// Bounds returns an interval that contains the server's time now. It samples the server first
// if the last sample is older than MaxAge.
func (e *Estimator) Bounds(ctx context.Context) (lo, hi time.Time, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t := e.now()
	stale := e.at.IsZero() || t.Sub(e.at) > MaxAge || t.Before(e.at)
	if stale || (t.Sub(e.tried) > time.Second && e.at.Sub(e.sent) > Wide) {
		// A fresh estimate takes the narrowest of a few samples: one slow round trip would
		// otherwise widen every estimate for MaxAge.
		for i := range 3 {
			sent := e.now()
			server, err := e.read(ctx)
			if err != nil {
				if stale && i == 0 {
					return time.Time{}, time.Time{}, err
				}
				break
			}
			at := e.now()
			if stale || at.Sub(sent) < e.at.Sub(e.sent) {
				e.server, e.sent, e.at, stale = server, sent, at, false
			}
			if at.Sub(sent) <= Wide/2 {
				break
			}
		}
		t = e.now()
		e.tried = t
	}
	return e.bounds(t)
}

// bounds extrapolates the sample to client time t: the server read its clock somewhere between
// sent and at.
func (e *Estimator) bounds(t time.Time) (lo, hi time.Time, err error) {
	if t.Before(e.at) {
		t = e.at
	}
	margin := time.Millisecond + time.Duration(float64(t.Sub(e.sent))*Drift)
	lo = e.server.Add(t.Sub(e.at) - margin)
	hi = e.server.Add(Resolution + t.Sub(e.sent) + margin)
	return lo, hi, nil
}
