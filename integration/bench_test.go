package integration

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// BenchmarkMongoAcquireRelease compares one uncontended holding with the physical floor of a
// lock on the same server: inserting a document and deleting it, as durably as the backend
// writes (majority, journaled). It also times the floor of a lock that keeps its record (which
// fencing tokens need): a plain findAndModify upsert and an update of one record. The three
// alternate in every iteration, so that a server that slows down as it runs (PostgreSQL's dead
// tuples under FerretDB) weighs on all alike; it reports the median of each, the ratios, and the
// commands each sends. Where the backend publishes release events, a fourth alternate, the lock
// without them, says what the event costs.
func BenchmarkMongoAcquireRelease(b *testing.B) {
	ctx := context.Background()
	monitored, commands := monitoredClient(b)
	coll := collection(b)
	coll = monitored.Database(coll.Database().Name()).Collection(coll.Name())
	backend := newMongo(b, coll)
	quiet := newMongo(b, coll, mongo.WithReleaseEvents(false))
	wc := writeconcern.Majority()
	wc.Journal = new(bool)
	*wc.Journal = true
	raw := coll.Clone(options.Collection().SetWriteConcern(wc))
	var (
		rawTimes, keepTimes, lockTimes, quietTimes []time.Duration
		rawCmds, lockCmds                          int64
	)
	pair := func(backend *mongo.Backend, name string) time.Duration {
		start := time.Now()
		l := shylock.New(name, shylock.WithBackend(backend))
		if ok, err := l.TryAcquire(ctx); !ok || err != nil {
			b.Fatal(ok, err)
		}
		if err := l.Release(ctx); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	for b.Loop() {
		c0, t0 := commands.Load(), time.Now()
		if _, err := raw.InsertOne(ctx, bson.D{{Key: "name", Value: "raw"}}); err != nil {
			b.Fatal(err)
		}
		if _, err := raw.DeleteOne(ctx, bson.D{{Key: "name", Value: "raw"}}); err != nil {
			b.Fatal(err)
		}
		c1, t1 := commands.Load(), time.Now()
		if err := raw.FindOneAndUpdate(ctx, bson.D{{Key: "name", Value: "kept"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: "o"}}}},
			options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Err(); err != nil {
			b.Fatal(err)
		}
		if _, err := raw.UpdateOne(ctx, bson.D{{Key: "name", Value: "kept"}, {Key: "owner", Value: "o"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}}}}); err != nil {
			b.Fatal(err)
		}
		ck, tk := commands.Load(), time.Now()
		lock := pair(backend, "bench")
		c2 := commands.Load()
		if backend.ReleaseEvents() {
			quietTimes = append(quietTimes, pair(quiet, "bench-quiet"))
		}
		rawTimes, keepTimes, lockTimes = append(rawTimes, t1.Sub(t0)), append(keepTimes, tk.Sub(t1)), append(lockTimes, lock)
		rawCmds, lockCmds = rawCmds+c1-c0, lockCmds+c2-ck
	}
	rawMedian, keepMedian, lockMedian := median(rawTimes), median(keepTimes), median(lockTimes)
	n := float64(len(rawTimes))
	b.ReportMetric(float64(rawMedian.Microseconds()), "raw-µs")
	b.ReportMetric(float64(keepMedian.Microseconds()), "kept-record-µs")
	b.ReportMetric(float64(lockMedian.Microseconds()), "shylock-µs")
	b.ReportMetric(float64(lockMedian)/float64(rawMedian), "shylock/raw")
	b.ReportMetric(float64(lockMedian)/float64(keepMedian), "shylock/kept")
	if len(quietTimes) > 0 {
		b.ReportMetric(float64(median(quietTimes).Microseconds()), "shylock-no-events-µs")
	}
	b.ReportMetric(float64(rawCmds)/n, "raw-cmds")
	b.ReportMetric(float64(lockCmds)/n, "shylock-cmds")
	b.ReportMetric(0, "ns/op") // the pair, not one operation, is what is measured
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// monitoredClient connects to the test server with a counter of the commands it sends.
func monitoredClient(b *testing.B) (*mdb.Client, *atomic.Int64) {
	var commands atomic.Int64
	c, err := mdb.Connect(options.Client().ApplyURI(mongoURI).SetMonitor(&event.CommandMonitor{
		Started: func(context.Context, *event.CommandStartedEvent) { commands.Add(1) },
	}))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c, &commands
}

// BenchmarkMongoHandoff measures the time from a release to the next holder, with 1, 8 and 64
// goroutines waiting in the same process, and reports its median and 99th percentile.
func BenchmarkMongoHandoff(b *testing.B) {
	ctx := context.Background()
	for _, waiters := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("waiters=%d", waiters), func(b *testing.B) {
			backend := newMongo(b, collection(b))
			var (
				mu        sync.Mutex
				latencies []time.Duration
				released  atomic.Int64 // unix nanos of the last release
				left      atomic.Int64
				wg        sync.WaitGroup
			)
			left.Store(int64(b.N))
			b.ResetTimer()
			for range waiters + 1 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 {
						l := shylock.New("handoff", shylock.WithBackend(backend), shylock.WithRetry(time.Millisecond, 100*time.Millisecond))
						if err := l.Acquire(ctx); err != nil {
							b.Error(err)
							return
						}
						if r := released.Load(); r != 0 {
							mu.Lock()
							latencies = append(latencies, time.Since(time.Unix(0, r)))
							mu.Unlock()
						}
						released.Store(0)
						if err := l.Release(ctx); err != nil {
							b.Error(err)
							return
						}
						released.Store(time.Now().UnixNano())
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if len(latencies) > 0 {
				slices.Sort(latencies)
				b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "p50-µs")
				b.ReportMetric(float64(latencies[len(latencies)*99/100].Microseconds()), "p99-µs")
			}
		})
	}
}

// BenchmarkMongoWaiterLoad counts the commands the server receives per second while 1, 8 or 64
// goroutines of one process wait on a lock held elsewhere. Shared polling keeps it flat.
func BenchmarkMongoWaiterLoad(b *testing.B) {
	ctx := context.Background()
	monitored, commands := monitoredClient(b)
	for _, waiters := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("waiters=%d", waiters), func(b *testing.B) {
			coll := collection(b)
			holder := newMongo(b, coll)
			waiting := newMongo(b, monitored.Database(coll.Database().Name()).Collection(coll.Name()))
			h := shylock.New("held", shylock.WithBackend(holder), shylock.WithTTL(time.Minute))
			if ok, err := h.TryAcquire(ctx); !ok || err != nil {
				b.Fatal(ok, err)
			}
			wctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			for range waiters {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_ = shylock.New("held", shylock.WithBackend(waiting), shylock.WithRetry(10*time.Millisecond, 50*time.Millisecond)).Acquire(wctx)
				}()
			}
			time.Sleep(200 * time.Millisecond) // everyone is waiting
			start, before := time.Now(), commands.Load()
			for b.Loop() {
				time.Sleep(10 * time.Millisecond)
			}
			b.ReportMetric(float64(commands.Load()-before)/time.Since(start).Seconds(), "server-ops/s")
			cancel()
			wg.Wait()
			_ = h.Release(ctx)
		})
	}
}

// BenchmarkMongoNewNameRace has 16 racers TryAcquire one new name at once, b.N times, and
// reports how long the slowest took; every round must have exactly one winner and no error. On
// FerretDB over PostgreSQL such races cost a deadlock timeout each time a loser contends again.
func BenchmarkMongoNewNameRace(b *testing.B) {
	backend := newMongo(b, collection(b))
	const racers = 16
	var slowest []time.Duration
	for i := range b.N {
		name := fmt.Sprintf("race/%d", i)
		var (
			wg    sync.WaitGroup
			wins  atomic.Int32
			mu    sync.Mutex
			worst time.Duration
		)
		start := make(chan struct{})
		for range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				t0 := time.Now()
				ok, err := shylock.New(name, shylock.WithBackend(backend), shylock.WithTTL(time.Minute)).TryAcquire(context.Background())
				d := time.Since(t0)
				if err != nil {
					b.Errorf("%s: TryAcquire = %v; a loser must get false, nil", name, err)
				}
				if ok {
					wins.Add(1)
				}
				mu.Lock()
				worst = max(worst, d)
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
		if w := wins.Load(); w != 1 {
			b.Fatalf("%s: %d winners; want 1", name, w)
		}
		slowest = append(slowest, worst)
	}
	slices.Sort(slowest)
	b.ReportMetric(float64(percentile(slowest, 50).Microseconds())/1000, "slowest-p50-ms")
	b.ReportMetric(float64(slowest[len(slowest)-1].Microseconds())/1000, "slowest-max-ms")
}
