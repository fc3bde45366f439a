package shylockotel_test

import (
	"context"
	"fmt"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	shylockotel "github.com/shylock-go/shylock/otel"
)

// Configure every lock of the process with the hook; here a manual reader stands in for an
// exporter.
func ExampleHook() {
	reader := sdkmetric.NewManualReader()
	hook, err := shylockotel.Hook(shylockotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		panic(err)
	}
	backend := memory.New()
	defer backend.Close()
	shylock.Configure(backend, shylock.WithHook(hook))
	defer shylock.Configure(nil)

	_ = shylock.Do(context.Background(), "orders/42", func(context.Context) error { return nil })

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name == "shylock.acquire.attempts" {
			fmt.Println(m.Name, m.Data.(metricdata.Sum[int64]).DataPoints[0].Value)
		}
	}
	// Output: shylock.acquire.attempts 1
}
