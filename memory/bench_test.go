package memory_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

// BenchmarkAcquireRelease is one uncontended holding: TryAcquire then Release.
func BenchmarkAcquireRelease(b *testing.B) {
	backend := memory.New()
	defer backend.Close()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l := shylock.New("bench", shylock.WithBackend(backend))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			b.Fatal(ok, err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandoff has n goroutines pass one lock around with blocking Acquire; an op is one
// holding, so ns/op is the time from one release to the next holder.
func BenchmarkHandoff(b *testing.B) {
	for _, n := range []int{2, 8, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", n), func(b *testing.B) {
			backend := memory.New()
			defer backend.Close()
			ctx := context.Background()
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 {
						l := shylock.New("bench", shylock.WithBackend(backend))
						if err := l.Acquire(ctx); err != nil {
							b.Error(err)
							return
						}
						if err := l.Release(ctx); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}
