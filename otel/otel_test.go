package shylockotel_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	shylockotel "github.com/shylock-go/shylock/otel"
)

func setUp(t *testing.T, opts ...shylockotel.Option) (shylock.Hook, *sdkmetric.ManualReader, *tracetest.SpanRecorder) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	spans := tracetest.NewSpanRecorder()
	hook, err := shylockotel.Hook(append([]shylockotel.Option{
		shylockotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))),
		shylockotel.WithTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return hook, reader, spans
}

// sums returns every data point of the counters and histograms read, as "metric attrs" -> value
// (a histogram's count).
func sums(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	key := func(name string, set attribute.Set) string {
		s := name
		for _, kv := range set.ToSlice() {
			s += " " + string(kv.Key) + "=" + kv.Value.Emit()
		}
		return s
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] += p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] += int64(p.Count)
				}
			}
		}
	}
	return out
}

// TestMetricsAndSpans: a lock's life shows up as counts, durations and spans, without the lock's
// name as a metric attribute.
func TestMetricsAndSpans(t *testing.T) {
	hook, reader, spans := setUp(t)
	b := memory.New()
	defer b.Close()
	ctx := context.Background()
	h := shylock.New("orders/42", shylock.WithBackend(b), shylock.WithHook(hook))
	if ok, _ := h.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	w := shylock.New("orders/42", shylock.WithBackend(b), shylock.WithHook(hook))
	if ok, _ := w.TryAcquire(ctx); ok {
		t.Fatal("TryAcquire of a held lock succeeded")
	}
	if err := h.Extend(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l := shylock.New("orders/43", shylock.WithBackend(b), shylock.WithHook(hook), shylock.WithTTL(20*time.Millisecond))
	if ok, _ := l.TryAcquire(ctx); !ok {
		t.Fatal("TryAcquire failed")
	}
	<-l.Lost()

	got := sums(t, reader)
	for k, want := range map[string]int64{
		"shylock.acquire.attempts outcome=acquired": 2,
		"shylock.acquire.attempts outcome=locked":   1,
		"shylock.acquire.duration outcome=acquired": 2,
		"shylock.acquire.duration outcome=gave_up":  1,
		"shylock.renewals outcome=renewed":          1,
		"shylock.hold.duration end=released":        1,
		"shylock.hold.duration end=lost":            1,
		"shylock.losses":                            1,
	} {
		if got[k] != want {
			t.Errorf("%s = %d, want %d (all: %v)", k, got[k], want, got)
		}
	}
	for k := range got {
		if len(k) > 0 && (contains(k, "orders/42") || contains(k, "shylock.lock.name")) {
			t.Errorf("a metric carries the lock's name: %s", k)
		}
	}
	var names []string
	for _, s := range spans.Ended() {
		names = append(names, s.Name())
		if s.EndTime().Sub(s.StartTime()) < 0 {
			t.Errorf("span %s ends before it starts", s.Name())
		}
	}
	if want := []string{"shylock.acquire", "shylock.acquire", "shylock.hold", "shylock.acquire", "shylock.hold"}; !equal(names, want) {
		t.Fatalf("spans %v, want %v", names, want)
	}
	if hold := spans.Ended()[2]; hold.EndTime().Sub(hold.StartTime()) <= 0 {
		t.Fatal("the hold span has no duration")
	}
}

// TestLockNamesOnRequest: WithLockNames adds the name to metrics.
func TestLockNamesOnRequest(t *testing.T) {
	hook, reader, _ := setUp(t, shylockotel.WithLockNames(true))
	b := memory.New()
	defer b.Close()
	if ok, _ := shylock.New("jobs/nightly", shylock.WithBackend(b), shylock.WithHook(hook)).TryAcquire(context.Background()); !ok {
		t.Fatal("TryAcquire failed")
	}
	if got := sums(t, reader); got["shylock.acquire.attempts outcome=acquired shylock.lock.name=jobs/nightly"] != 1 {
		t.Fatalf("metrics %v; want the attempt counted under the lock's name", got)
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
