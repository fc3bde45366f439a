package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// settleLimit bounds how long BenchmarkMongoWaitedNames waits for all its waiters to queue.
const settleLimit = 3 * time.Minute

// BenchmarkMongoWaitedNames counts the commands per second that one process's waiting sends the
// server while it waits on 1, 10, 100 or 1,000 different names, each held elsewhere for longer
// than the window, with and without pushed releases; and times another client's find of one
// record (p50 and p99) during that window against the same find with nobody waiting, measured in
// the same run. The process's pollers share one batched probe, so the cost should hardly grow
// with the names. The window opens once every waiter has been refused once; all-waiting-s is how
// long that took from the start of the n Acquires.
func BenchmarkMongoWaitedNames(b *testing.B) {
	for _, events := range []bool{true, false} {
		for _, n := range []int{1, 10, 100, 1000} {
			b.Run(fmt.Sprintf("events=%v/names=%d", events, n), func(b *testing.B) {
				ctx := context.Background()
				coll := collection(b)
				holder := newClientBackend(b, coll, nil, mongo.WithReleaseEvents(events))
				var commands atomic.Int64
				waiting := newClientBackend(b, coll, &commands, mongo.WithReleaseEvents(events))
				other := coll // the tests' own client: neither the holder's nor the waiter's
				// Held as another process would hold them (a party of its own), so that the
				// waiters queue and renew their entries as they do across processes.
				var held []shylock.AcquireRequest
				for i := range n {
					req := shylock.AcquireRequest{Name: fmt.Sprintf("held/%d", i), Owner: fmt.Sprint("holder-", i),
						TTL: 5 * time.Minute, Queue: "another process"}
					if _, err := holder.Acquire(ctx, req); err != nil {
						b.Fatal(err)
					}
					held = append(held, req)
				}
				quiet := otherClientFinds(b, other, 200)

				wctx, cancel := context.WithCancel(ctx)
				var wg sync.WaitGroup
				var refused atomic.Int64 // waiters refused once: in their queues
				began := time.Now()
				for i := range n {
					wg.Add(1)
					var once sync.Once
					firstRefusal := shylock.WithHook(func(_ context.Context, e shylock.Event) {
						if e.Kind == shylock.EventAttempt && errors.Is(e.Err, shylock.ErrLocked) {
							once.Do(func() { refused.Add(1) })
						}
					})
					go func() {
						defer wg.Done()
						_ = shylock.New(fmt.Sprintf("held/%d", i), shylock.WithBackend(waiting), firstRefusal).Acquire(wctx)
					}()
				}
				stop := func() {
					cancel()
					wg.Wait()
				}

				// The window opens once every waiter has been refused once. Each first attempt
				// reads its record: where the server finds by scanning (FerretDB 1.x), that is
				// n scans of n records and their entries.
				for refused.Load() < int64(n) {
					if time.Since(began) > settleLimit {
						stop() // the collection is this benchmark's alone: its records expire by their TTL
						b.Skipf("after %v, %d of %d waiters had been refused once: the server cannot answer "+
							"the first attempts of so many at once (it scans every record for each)", settleLimit, refused.Load(), n)
					}
					time.Sleep(10 * time.Millisecond)
				}
				settled := time.Since(began)
				time.Sleep(2 * time.Second) // polls backed off
				before, start := commands.Load(), time.Now()
				var busy []time.Duration
				for b.Loop() {
					busy = append(busy, otherClientFinds(b, other, 4)...)
				}
				b.ReportMetric(float64(commands.Load()-before)/time.Since(start).Seconds(), "server-cmds/s")
				b.ReportMetric(float64(median(busy).Microseconds())/1000, "other-p50-ms")
				b.ReportMetric(float64(percentile(busy, 99).Microseconds())/1000, "other-p99-ms")
				quiet = append(quiet, otherClientFinds(b, other, 200)...) // before and after: the machine's load drifts
				b.ReportMetric(float64(median(busy))/float64(median(quiet)), "other-p50-ratio")
				b.ReportMetric(settled.Seconds(), "all-waiting-s")
				b.ReportMetric(0, "ns/op")
				stop()
				for _, h := range held {
					_ = holder.Release(ctx, h.Name, h.Owner, 0)
				}
			})
		}
	}
}

// otherClientFinds times count finds of one record by another client, 5ms apart.
func otherClientFinds(b *testing.B, coll *mdb.Collection, count int) []time.Duration {
	var out []time.Duration
	for range count {
		start := time.Now()
		if err := coll.FindOne(context.Background(), bson.D{{Key: "name", Value: "held/0"}}).Err(); err != nil {
			b.Fatalf("another client's find, after %v: %v", time.Since(start), err)
		}
		out = append(out, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	return out
}

// TestUncontendedAcquireCostsWhatTryAcquireCosts: a blocking Acquire that meets no holder sends
// the commands of a TryAcquire and nothing more: no subscription, and no probe of a poller,
// before an attempt has failed.
func TestUncontendedAcquireCostsWhatTryAcquireCosts(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	var commands atomic.Int64
	backend := newClientBackend(t, coll, &commands)
	count := func(blocking bool) int64 {
		before := commands.Load()
		for i := range 20 {
			l := shylock.New(fmt.Sprintf("%v/%d", blocking, i), shylock.WithBackend(backend))
			if blocking {
				if err := l.Acquire(ctx); err != nil {
					t.Fatal(err)
				}
			} else if ok, err := l.TryAcquire(ctx); !ok || err != nil {
				t.Fatal(ok, err)
			}
			if err := l.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return commands.Load() - before
	}
	try, acquire := count(false), count(true)
	// A clock sample (hello) may fall into either run.
	if acquire > try+1 {
		t.Fatalf("20 uncontended Acquire+Release sent %d commands, 20 TryAcquire+Release %d", acquire, try)
	}
	t.Logf("20 uncontended Acquire+Release: %d commands; TryAcquire+Release: %d", acquire, try)
}

// TestBurstOfAttemptsSharesReads: on the estimate path, where the server answers every find but
// one by _id with a scan of the collection (FerretDB 1.x), attempts that begin together share
// their reads, and each still learns who holds its own lock; the queue entries they write are
// found by _id, which such a server looks up without a scan.
func TestBurstOfAttemptsSharesReads(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	holder := newMongo(t, coll, mongo.WithServerClock(false), mongo.WithReleaseEvents(false))
	const n = 200
	for i := range n {
		req := shylock.AcquireRequest{Name: fmt.Sprint("burst/", i), Owner: fmt.Sprint("holder-", i), Label: fmt.Sprint("label-", i),
			TTL: time.Minute, Queue: "the holders' process"}
		if _, err := holder.Acquire(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	var finds atomic.Int64
	o := options.Client().ApplyURI(mongoURI).SetMonitor(&event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if e.CommandName == "find" {
			finds.Add(1)
		}
	}})
	c, err := mdb.Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	waiting := newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name()), mongo.WithServerClock(false), mongo.WithReleaseEvents(false))

	before := finds.Load()
	start := make(chan struct{})
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			_, errs[i] = waiting.Acquire(ctx, shylock.AcquireRequest{Name: fmt.Sprint("burst/", i), Owner: fmt.Sprint("waiter-", i),
				TTL: time.Minute, Wait: true, Queue: "the waiters' process"})
		})
	}
	close(start)
	wg.Wait()
	sent := finds.Load() - before
	for i, err := range errs {
		var h *shylock.HeldError
		if !errors.As(err, &h) || h.Label != fmt.Sprint("label-", i) {
			t.Fatalf("attempt on burst/%d: %v, want it refused as held by label-%d", i, err, i)
		}
	}
	if sent >= n/2 {
		t.Fatalf("%d attempts begun together on different names sent %d finds: their reads were not shared", n, sent)
	}
	t.Logf("%d attempts begun together on different names: %d finds", n, sent)

	var docs, entries []bson.M
	cur, err := coll.Find(ctx, bson.D{})
	if err == nil {
		err = cur.All(ctx, &docs)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range docs {
		if name, _ := d["name"].(string); strings.Contains(name, "\x00q") { // servers refuse a NUL in a $regex
			entries = append(entries, d)
		}
	}
	if len(entries) != n {
		t.Fatalf("%d queue entries after %d refused waiters, want %d", len(entries), n, n)
	}
	for _, e := range entries {
		if e["_id"] != e["name"] {
			t.Fatalf("queue entry %q has _id %v: a server that finds by scanning must scan for it", e["name"], e["_id"])
		}
	}
}
