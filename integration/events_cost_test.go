package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
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

// BenchmarkMongoEventsHistory measures what release events cost as releases pile up, on an
// embedded FerretDB of its own (its process's CPU is what is measured, with no other test's
// load in it): after 0 and 10,000 releases, the server CPU one idle waiting backend costs (a lock
// held by another backend, one waiter on it, measured for 5s from 4s after the releases;
// idle-cores is the server with no waiter, for reference), and then the p50/p99 of the handoff
// to a waiter in another OS process (b.N rounds). The releases happen before any backend tails the
// events (tailed=false) or while the waiter does (tailed=true). The events collection's size at
// the end is reported too. SHYLOCK_EVENTS_HISTORY replaces the 10,000 with another number.
// floor measures the same for a bare tailing cursor, side by side in the run (benchTailFloor).
//
//	go test -run '^$' -bench EventsHistory -benchtime 100x .
func BenchmarkMongoEventsHistory(b *testing.B) {
	if os.Getenv("SHYLOCK_MONGO_URI") != "" {
		b.Skip("measures the CPU of the embedded FerretDB's process")
	}
	srv := &serverProcess{addr: "127.0.0.1:0", dir: filepath.Join(b.TempDir(), "data")}
	if err := os.Mkdir(srv.dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := srv.launch(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.kill)
	c, err := mdb.Connect(options.Client().ApplyURI(srv.uri))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	pid := srv.cmd.Process.Pid
	histories := []int{0, 10_000}
	if v, err := strconv.Atoi(os.Getenv("SHYLOCK_EVENTS_HISTORY")); err == nil {
		histories = []int{0, v}
	}
	type cost struct{ idle, waiter float64 }
	costs := map[string]cost{} // measured once per case, not again for each b.N
	for _, history := range histories {
		for _, tailed := range []bool{false, true} {
			if history == 0 && tailed {
				continue
			}
			name := fmt.Sprintf("releases=%d", history)
			if history > 0 {
				name += fmt.Sprintf("/tailed=%v", tailed)
			}
			b.Run(name, func(b *testing.B) {
				ctx := context.Background()
				coll := c.Database("shylock_events").Collection(fmt.Sprintf("locks_%d_%d", history, time.Now().UnixNano()))
				events := coll.Database().Collection(coll.Name() + ".events")
				b.Cleanup(func() {
					_ = coll.Drop(context.Background())
					_ = events.Drop(context.Background())
				})
				holder := newBackendAt(b, srv.uri, coll)
				if !holder.ReleaseEvents() {
					b.Fatal("the embedded FerretDB keeps tailable cursors open, yet the backend does not use release events")
				}
				_, measured := costs[name]
				var idle float64
				if !measured {
					time.Sleep(time.Second)
					idle = serverCores(b, pid, 3*time.Second) // the server's own cost
				}

				// One backend waits on a lock held by another, from before the releases
				// (tailed: it reads their events as they come) or from after them.
				h := shylock.New("held", shylock.WithBackend(holder), shylock.WithTTL(5*time.Minute))
				if ok, err := h.TryAcquire(ctx); !ok || err != nil {
					b.Fatal(ok, err)
				}
				wctx, cancel := context.WithCancel(ctx)
				done := make(chan struct{})
				wait := func() {
					waiting := newBackendAt(b, srv.uri, coll)
					go func() {
						defer close(done)
						_ = shylock.New("held", shylock.WithBackend(waiting)).Acquire(wctx)
					}()
				}
				if tailed {
					wait()
					time.Sleep(time.Second)
				}
				// What the releases leave behind, written directly: releasing 10,000 locks on
				// a busy FerretDB takes minutes. Batches of 100, to a tailing backend 100
				// releases at once.
				for i := 0; i < history; i += 100 {
					docs := make([]any, 0, 100)
					for j := i; j < min(history, i+100); j++ {
						docs = append(docs, bson.D{{Key: "name", Value: "history/" + strconv.Itoa(j)}})
					}
					if _, err := events.InsertMany(ctx, docs); err != nil {
						b.Fatal(err)
					}
				}
				if !tailed {
					wait()
				}
				time.Sleep(4 * time.Second) // its cursor open and caught up, its polls backed off
				if !measured {
					costs[name] = cost{idle, serverCores(b, pid, 5*time.Second) - idle}
				}
				cancel()
				<-done
				if err := h.Release(ctx); err != nil {
					b.Fatal(err)
				}

				p := startProcessWaiterAt(b, srv.uri, coll)
				b.ResetTimer()
				lat := handoffs(b, holder, p, b.N, handoffHold)
				b.StopTimer()
				n, err := events.CountDocuments(ctx, bson.D{})
				if err != nil {
					b.Fatal(err)
				}
				reportLatencies(b, lat)
				b.ReportMetric(costs[name].idle, "idle-cores")
				b.ReportMetric(costs[name].waiter, "waiter-cores")
				b.ReportMetric(float64(n), "events")
			})
		}
	}
	b.Run("floor", func(b *testing.B) { benchTailFloor(b, c, pid) })
}

// benchTailFloor measures the server's own floor for the figures above, with no lock library:
// a bare tailable awaitData cursor, waiting as long per getMore as the backend's events cursor,
// on a capped collection that holds one document (as the trimmed events collection does at
// rest). waiter-cores is what that cursor costs the server; p50/p99 is how long an insert
// takes to reach it (FerretDB 1.x re-runs the cursor's query every 10ms and, once a re-run
// finds a document, sleeps 10ms more before it answers).
func benchTailFloor(b *testing.B, c *mdb.Client, pid int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := c.Database("shylock_events")
	name := fmt.Sprintf("floor_%d", time.Now().UnixNano())
	if err := db.CreateCollection(ctx, name, options.CreateCollection().SetCapped(true).
		SetSizeInBytes(1<<20).SetMaxDocuments(1000)); err != nil {
		b.Fatal(err)
	}
	coll := db.Collection(name)
	b.Cleanup(func() { _ = coll.Drop(context.Background()) })
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "name", Value: "first"}}); err != nil {
		b.Fatal(err)
	}
	time.Sleep(time.Second)
	idle := serverCores(b, pid, 3*time.Second)
	// Opened as the backend opens its own: a first batch that does not read the collection to
	// its end, which FerretDB would take for the cursor's end.
	cur, err := coll.Find(ctx, bson.D{}, options.Find().SetCursorType(options.TailableAwait).
		SetBatchSize(1).SetMaxAwaitTime(time.Second).SetShowRecordID(true))
	if err != nil {
		b.Fatal(err)
	}
	cur.SetBatchSize(1000)
	got := make(chan time.Time)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for cur.Next(ctx) {
			select {
			case got <- time.Now():
			case <-ctx.Done():
			}
		}
	}()
	defer func() {
		cancel()
		<-done
		_ = cur.Close(context.Background())
	}()
	<-got // the document that was there
	time.Sleep(4 * time.Second)
	cores := serverCores(b, pid, 5*time.Second) - idle
	b.ResetTimer()
	lat := make([]time.Duration, 0, b.N)
	for i := range b.N {
		// At no fixed phase to the server's 10ms re-runs.
		time.Sleep(20*time.Millisecond + rand.N(30*time.Millisecond))
		sent := time.Now()
		if _, err := coll.InsertOne(ctx, bson.D{{Key: "name", Value: strconv.Itoa(i)}}); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			lat = append(lat, at.Sub(sent))
		case <-time.After(10 * time.Second):
			b.Fatal("an insert did not reach the tailing cursor within 10s")
		}
	}
	b.StopTimer()
	reportLatencies(b, lat)
	b.ReportMetric(idle, "idle-cores")
	b.ReportMetric(cores, "waiter-cores")
}

// newBackendAt returns a backend on coll through a client of its own connected to uri.
func newBackendAt(tb testing.TB, uri string, coll *mdb.Collection) *mongo.Backend {
	tb.Helper()
	c, err := mdb.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return newMongo(tb, c.Database(coll.Database().Name()).Collection(coll.Name()))
}

// serverCores returns the CPU the process pid used over the next window, in cores.
func serverCores(tb testing.TB, pid int, window time.Duration) float64 {
	tb.Helper()
	before, start := cpuTicks(tb, pid), time.Now()
	time.Sleep(window)
	used := cpuTicks(tb, pid) - before
	return float64(used) / clockTicks / time.Since(start).Seconds()
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every Linux ABI Go runs on.
const clockTicks = 100

// cpuTicks returns the user and system time of process pid, in clock ticks.
func cpuTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Skipf("no process CPU times here: %v", err)
	}
	// The fields after the command name (in parentheses, which may hold spaces): the 12th and
	// 13th of them are utime and stime.
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		tb.Fatalf("reading /proc/%d/stat: %q", pid, s)
	}
	return utime + stime
}

// TestMongoReleaseEventsTrimmed: the backends that tail the release events delete those they
// read, so that what a waiting backend costs the server does not grow with the releases that
// happened (on FerretDB 1.x a tailing cursor reads the whole collection every 10ms): at rest
// the collection holds one event again, the cursors of two tailing backends stay open through
// the deletions, and releases still wake waiters. So after a burst of releases, more than a
// cursor's batch.
func TestMongoReleaseEventsTrimmed(t *testing.T) {
	checkLibraryLeaks(t)
	ctx := context.Background()
	coll := collection(t)
	events := coll.Database().Collection(coll.Name() + ".events")
	dropAfter(t, events)
	holder := newClientBackend(t, coll, nil)
	var opened [2]atomic.Int64 // tailable cursors each waiting backend opened on the events
	waiting := make([]*mongo.Backend, 2)
	for i := range waiting {
		c, err := mdb.Connect(options.Client().ApplyURI(mongoURI).SetMonitor(&event.CommandMonitor{
			Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
				ns, _ := e.Reply.Lookup("cursor", "ns").StringValueOK()
				id, _ := e.Reply.Lookup("cursor", "id").AsInt64OK()
				if e.CommandName == "find" && strings.HasSuffix(ns, ".events") && id != 0 {
					opened[i].Add(1)
				}
			},
		}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
		waiting[i] = newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name()))
	}
	eventsServer(t, waiting[0])

	// Both backends tail the events: each has a waiter on a lock held throughout.
	h := shylock.New("held", shylock.WithBackend(holder), shylock.WithTTL(time.Minute))
	if ok, err := h.TryAcquire(ctx); !ok || err != nil {
		t.Fatal(ok, err)
	}
	t.Cleanup(func() { _ = h.Release(context.Background()) })
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, w := range waiting {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = shylock.New("held", shylock.WithBackend(w)).Acquire(wctx)
		}()
	}
	if !pushedWithin(t, holder, waiting[0], "before", 2*time.Second) || !pushedWithin(t, holder, waiting[1], "before", 2*time.Second) {
		t.Fatal("release events did not work to begin with")
	}
	before := [2]int64{opened[0].Load(), opened[1].Load()}

	// 400 releases over two seconds (their events written directly), then rest.
	publish := func(n, per int, every time.Duration) {
		for i := 0; i < n; i += per {
			docs := make([]any, 0, per)
			for j := i; j < min(n, i+per); j++ {
				docs = append(docs, bson.D{{Key: "name", Value: "released/" + strconv.Itoa(j)}})
			}
			if _, err := events.InsertMany(ctx, docs); err != nil {
				t.Fatal(err)
			}
			time.Sleep(every)
		}
	}
	publish(400, 4, 20*time.Millisecond)
	count := func() int64 {
		n, err := events.CountDocuments(ctx, bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, func() bool { return count() <= 1 })
	for i := range opened {
		if n := opened[i].Load() - before[i]; n != 0 {
			t.Fatalf("waiting backend %d opened its events cursor %d more times while the events it read were deleted; want 0", i, n)
		}
	}
	if !pushedWithin(t, holder, waiting[0], "after", 2*time.Second) || !pushedWithin(t, holder, waiting[1], "after", 2*time.Second) {
		t.Fatal("after the events were deleted, a release did not wake the waiters of other processes")
	}

	// A burst.
	publish(3000, 500, 0)
	waitFor(t, func() bool { return count() <= 1 })
	if !pushedWithin(t, holder, waiting[0], "after-burst", 2*time.Second) || !pushedWithin(t, holder, waiting[1], "after-burst", 2*time.Second) {
		t.Fatal("after a burst of releases, a release did not wake the waiters of other processes")
	}
	t.Logf("events cursors opened: %d and %d (%d and %d before the releases)", opened[0].Load(), opened[1].Load(), before[0], before[1])
}
