// Package shylockotel reports shylock's lock events to OpenTelemetry, as metrics and spans. It is
// a module of its own, so that the library's go.mod stays the two database drivers.
//
//	hook, err := shylockotel.Hook() // the global meter and tracer providers
//	shylock.Configure(backend, shylock.WithHook(hook))
//
// Metrics (lock names are unbounded, so they are no attribute unless WithLockNames is given):
//
//   - shylock.acquire.attempts (counter): attempts answered by the backend, by outcome
//     (acquired, locked, failed);
//   - shylock.acquire.duration (histogram, s): how long Acquire and TryAcquire took, by outcome
//     (acquired, gave_up);
//   - shylock.hold.duration (histogram, s): how long holdings lasted, by how they ended
//     (released, lost);
//   - shylock.renewals (counter): renewals and Extends, by outcome (renewed, failed);
//   - shylock.losses (counter): holdings lost.
//
// Spans: "shylock.acquire" for each Acquire or TryAcquire and "shylock.hold" for each holding,
// under the span of the caller's context, with the lock's name and token as attributes (a span
// is one event, not a time series, so the name is no cardinality risk there).
package shylockotel

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/shylock-go/shylock"
)

// Scope is the instrumentation scope of the meter and tracer.
const Scope = "github.com/shylock-go/shylock/otel"

// Option configures Hook.
type Option func(*settings)

type settings struct {
	meters  metric.MeterProvider
	tracers trace.TracerProvider
	names   bool
}

// WithMeterProvider sets where metrics go (default: otel.GetMeterProvider()).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(s *settings) { s.meters = mp } }

// WithTracerProvider sets where spans go (default: otel.GetTracerProvider()).
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(s *settings) { s.tracers = tp }
}

// WithLockNames adds the lock's name as the attribute shylock.lock.name to every metric. Only
// for a small, fixed set of names: each name makes a time series of its own.
func WithLockNames(on bool) Option { return func(s *settings) { s.names = on } }

type instruments struct {
	names    bool
	tracer   trace.Tracer
	attempts metric.Int64Counter
	acquire  metric.Float64Histogram
	hold     metric.Float64Histogram
	renewals metric.Int64Counter
	losses   metric.Int64Counter
}

// Hook returns a shylock.Hook that records metrics and spans. It fails only if a meter refuses
// to create an instrument.
func Hook(opts ...Option) (shylock.Hook, error) {
	s := settings{meters: otel.GetMeterProvider(), tracers: otel.GetTracerProvider()}
	for _, o := range opts {
		o(&s)
	}
	m := s.meters.Meter(Scope)
	in := &instruments{names: s.names, tracer: s.tracers.Tracer(Scope)}
	var err, e error
	in.attempts, e = m.Int64Counter("shylock.acquire.attempts", metric.WithDescription("Acquire attempts answered by the backend, by outcome"))
	err = errors.Join(err, e)
	in.acquire, e = m.Float64Histogram("shylock.acquire.duration", metric.WithUnit("s"),
		metric.WithDescription("How long Acquire and TryAcquire took, by outcome"))
	err = errors.Join(err, e)
	in.hold, e = m.Float64Histogram("shylock.hold.duration", metric.WithUnit("s"),
		metric.WithDescription("How long holdings lasted, by how they ended"))
	err = errors.Join(err, e)
	in.renewals, e = m.Int64Counter("shylock.renewals", metric.WithDescription("Renewals and Extends, by outcome"))
	err = errors.Join(err, e)
	in.losses, e = m.Int64Counter("shylock.losses", metric.WithDescription("Holdings lost"))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	return in.record, nil
}

func (in *instruments) attrs(e shylock.Event, kv ...attribute.KeyValue) metric.MeasurementOption {
	if in.names {
		kv = append(kv, attribute.String("shylock.lock.name", e.Name))
	}
	return metric.WithAttributes(kv...)
}

func (in *instruments) record(ctx context.Context, e shylock.Event) {
	outcome := func(v string) attribute.KeyValue { return attribute.String("outcome", v) }
	switch e.Kind {
	case shylock.EventAttempt:
		o := "acquired"
		switch {
		case errors.Is(e.Err, shylock.ErrLocked):
			o = "locked"
		case e.Err != nil:
			o = "failed"
		}
		in.attempts.Add(ctx, 1, in.attrs(e, outcome(o)))
	case shylock.EventAcquired, shylock.EventGaveUp:
		o := map[bool]string{true: "acquired", false: "gave_up"}[e.Kind == shylock.EventAcquired]
		in.acquire.Record(ctx, e.Waited.Seconds(), in.attrs(e, outcome(o)))
		in.span(ctx, "shylock.acquire", e, e.Waited, e.Kind == shylock.EventGaveUp && !errors.Is(e.Err, shylock.ErrLocked))
	case shylock.EventRenewed, shylock.EventRenewFailed:
		o := map[bool]string{true: "renewed", false: "failed"}[e.Kind == shylock.EventRenewed]
		in.renewals.Add(ctx, 1, in.attrs(e, outcome(o)))
	case shylock.EventLost, shylock.EventReleased:
		end := map[bool]string{true: "lost", false: "released"}[e.Kind == shylock.EventLost]
		in.hold.Record(ctx, e.Held.Seconds(), in.attrs(e, attribute.String("end", end)))
		if e.Kind == shylock.EventLost {
			in.losses.Add(ctx, 1, in.attrs(e))
		}
		in.span(ctx, "shylock.hold", e, e.Held, e.Kind == shylock.EventLost)
	}
}

// span records a span that ended now and lasted d, under ctx's span.
func (in *instruments) span(ctx context.Context, name string, e shylock.Event, d time.Duration, failed bool) {
	end := time.Now()
	_, s := in.tracer.Start(ctx, name, trace.WithTimestamp(end.Add(-d)), trace.WithAttributes(
		attribute.String("shylock.lock.name", e.Name), attribute.Int64("shylock.token", int64(e.Token))))
	if e.Err != nil {
		s.RecordError(e.Err)
	}
	if failed && e.Err != nil {
		s.SetStatus(codes.Error, e.Err.Error())
	}
	s.End(trace.WithTimestamp(end))
}
