package serve

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shylock-go/shylock"
)

// metrics are what /metrics shows, as this replica sees them.
type metrics struct {
	reg                           *prometheus.Registry
	held                          prometheus.Gauge
	sockets                       prometheus.Gauge
	acquires, conflicts, releases prometheus.Counter
	gone                          prometheus.Counter
	latency                       *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "shylock_locks_held",
			Help: "Locks held at the last read of the lock store."}),
		sockets: prometheus.NewGauge(prometheus.GaugeOpts{Name: "shylock_websockets",
			Help: "WebSocket clients connected to this replica."}),
		acquires: prometheus.NewCounter(prometheus.CounterOpts{Name: "shylock_acquires_total",
			Help: "Locks taken through this replica."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: "shylock_conflicts_total",
			Help: "Acquires through this replica refused because another holder had the lock."}),
		releases: prometheus.NewCounter(prometheus.CounterOpts{Name: "shylock_releases_total",
			Help: "Locks released through this replica."}),
		gone: prometheus.NewCounter(prometheus.CounterOpts{Name: "shylock_expiries_total",
			Help: "Locks this replica saw end without a release through it: expired, or released elsewhere."}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "shylock_request_duration_seconds",
			Help: "API request latency.", Buckets: prometheus.DefBuckets}, []string{"route", "code"}),
	}
	m.reg.MustRegister(m.held, m.sockets, m.acquires, m.conflicts, m.releases, m.gone, m.latency,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// hook counts what happens to locks from the library's events (shylock.Hook), the events the
// library's own locks report, so that the service and a program's hooks count alike.
func (m *metrics) hook(_ context.Context, e shylock.Event) {
	switch {
	case e.Kind == shylock.EventAttempt && e.Err == nil:
		m.acquires.Inc()
	case e.Kind == shylock.EventAttempt && errors.Is(e.Err, shylock.ErrLocked):
		m.conflicts.Inc()
	case e.Kind == shylock.EventReleased && e.Err == nil:
		m.releases.Inc()
	}
}

func (m *metrics) handler() http.Handler { return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}) }

// timed records how long the requests of a route take, by status.
func (m *metrics) timed(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()
		h.ServeHTTP(rec, r)
		m.latency.WithLabelValues(route, strconv.Itoa(rec.status)).Observe(time.Since(start).Seconds())
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}
