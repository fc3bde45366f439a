package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// A handoff across processes: the holder releases while a waiter in another process (another
// backend with its own client, or another OS process) waits; the time from the release to the
// waiter holding the lock is what a user of a busy lock waits for. Each round the waiter is told
// to wait, the holder keeps it waiting for hold to 2 × hold, then releases.

// waiterSide is where the waiter runs: told to wait, it answers when it holds the lock and when it
// has released it again.
type waiterSide interface {
	wait() error                  // start waiting for the lock
	acquired() (time.Time, error) // when the waiter got it
	released() error              // the waiter has released it
}

// handoffs runs n rounds between holder and w and returns the latencies.
func handoffs(tb testing.TB, holder *mongo.Backend, w waiterSide, n int, hold time.Duration) []time.Duration {
	ctx := context.Background()
	lat := make([]time.Duration, 0, n)
	for range n {
		l := shylock.New("handoff", shylock.WithBackend(holder))
		if err := l.Acquire(ctx); err != nil {
			tb.Fatal(err)
		}
		if err := w.wait(); err != nil {
			tb.Fatal(err)
		}
		time.Sleep(hold + rand.N(hold))
		t0 := time.Now()
		if err := l.Release(ctx); err != nil {
			tb.Fatal(err)
		}
		at, err := w.acquired()
		if err != nil {
			tb.Fatal(err)
		}
		lat = append(lat, at.Sub(t0))
		if err := w.released(); err != nil {
			tb.Fatal(err)
		}
	}
	return lat
}

// localWaiter waits in this process, on a backend of its own.
type localWaiter struct {
	b    *mongo.Backend
	opts []shylock.Option
	got  chan time.Time
	errs chan error
	done chan struct{}
}

func newLocalWaiter(b *mongo.Backend, opts ...shylock.Option) *localWaiter {
	return &localWaiter{b: b, opts: opts, got: make(chan time.Time, 1), errs: make(chan error, 1), done: make(chan struct{}, 1)}
}

func (w *localWaiter) wait() error {
	go func() {
		l := shylock.New("handoff", append([]shylock.Option{shylock.WithBackend(w.b)}, w.opts...)...)
		if err := l.Acquire(context.Background()); err != nil {
			w.errs <- err
			return
		}
		w.got <- time.Now()
		if err := l.Release(context.Background()); err != nil {
			w.errs <- err
			return
		}
		w.done <- struct{}{}
	}()
	return nil
}

func (w *localWaiter) acquired() (time.Time, error) {
	select {
	case at := <-w.got:
		return at, nil
	case err := <-w.errs:
		return time.Time{}, err
	}
}

func (w *localWaiter) released() error {
	select {
	case <-w.done:
		return nil
	case err := <-w.errs:
		return err
	}
}

// processWaiter waits in another OS process: a worker that acquires when told "wait" on stdin and
// prints "acquired UNIXNANO" and then "released".
type processWaiter struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startProcessWaiter(tb testing.TB, coll *mdb.Collection, env ...string) *processWaiter {
	return startProcessWaiterAt(tb, mongoURI, coll, env...)
}

// startProcessWaiterAt is startProcessWaiter on the server at uri.
func startProcessWaiterAt(tb testing.TB, uri string, coll *mdb.Collection, env ...string) *processWaiter {
	cmd := child("waiter", uri, coll, env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = in.Close(); _ = cmd.Wait() })
	p := &processWaiter{in: in, out: bufio.NewScanner(out)}
	if line, err := p.line(); err != nil || line != "ready" {
		tb.Fatalf("waiter process said %q, %v", line, err)
	}
	return p
}

func (p *processWaiter) line() (string, error) {
	if !p.out.Scan() {
		return "", fmt.Errorf("the waiter process ended: %v", p.out.Err())
	}
	return p.out.Text(), nil
}

func (p *processWaiter) wait() error {
	_, err := io.WriteString(p.in, "wait\n")
	return err
}

func (p *processWaiter) acquired() (time.Time, error) {
	line, err := p.line()
	if err != nil {
		return time.Time{}, err
	}
	ns, err := strconv.ParseInt(strings.TrimPrefix(line, "acquired "), 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("the waiter process said %q", line)
	}
	return time.Unix(0, ns), nil
}

func (p *processWaiter) released() error {
	if line, err := p.line(); err != nil || line != "released" {
		return fmt.Errorf("the waiter process said %q, %v", line, err)
	}
	return nil
}

// envNoEvents turns release events off in a waiter process.
const envNoEvents = "SHYLOCK_CHILD_NO_EVENTS"

// waiterMain is the worker of processWaiter.
func waiterMain() int {
	ctx := context.Background()
	c, err := mdb.Connect(options.Client().ApplyURI(os.Getenv(envURI)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "waiter:", err)
		return 1
	}
	defer func() { _ = c.Disconnect(ctx) }()
	b, err := mongo.New(ctx, c.Database(os.Getenv(envDatabase)).Collection(os.Getenv(envCollection)),
		mongo.WithReleaseEvents(os.Getenv(envNoEvents) == ""))
	if err != nil {
		fmt.Fprintln(os.Stderr, "waiter:", err)
		return 1
	}
	defer b.Close()
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		l := shylock.New("handoff", shylock.WithBackend(b))
		if err := l.Acquire(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "waiter:", err)
			return 1
		}
		fmt.Println("acquired", time.Now().UnixNano())
		if err := l.Release(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "waiter:", err)
			return 1
		}
		fmt.Println("released")
	}
	return 0
}

// newClientBackend returns a backend on coll through a client of its own, as another process
// would have, counting the commands that client sends in commands (if not nil).
func newClientBackend(tb testing.TB, coll *mdb.Collection, commands *atomic.Int64, opts ...mongo.Option) *mongo.Backend {
	o := options.Client().ApplyURI(mongoURI)
	if commands != nil {
		o.SetMonitor(&event.CommandMonitor{Started: func(context.Context, *event.CommandStartedEvent) { commands.Add(1) }})
	}
	c, err := mdb.Connect(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return newMongo(tb, c.Database(coll.Database().Name()).Collection(coll.Name()), opts...)
}

// handoffHold is how long a holder keeps the waiter of a benchmark waiting, at the least: long
// enough for its polls to back off to their maximum.
const handoffHold = 300 * time.Millisecond

// BenchmarkMongoCrossProcessHandoff reports the p50 and p99 of the time from a release to the
// waiter of another process holding the lock, at the library's defaults: with two backends on
// one collection in this process, and with a waiter in another OS process.
func BenchmarkMongoCrossProcessHandoff(b *testing.B) {
	for _, events := range []bool{true, false} {
		b.Run(fmt.Sprintf("events=%v/backends", events), func(b *testing.B) {
			coll := collection(b)
			holder := newClientBackend(b, coll, nil, mongo.WithReleaseEvents(events))
			w := newLocalWaiter(newClientBackend(b, coll, nil, mongo.WithReleaseEvents(events)))
			reportLatencies(b, handoffs(b, holder, w, b.N, handoffHold))
		})
		b.Run(fmt.Sprintf("events=%v/processes", events), func(b *testing.B) {
			coll := collection(b)
			holder := newClientBackend(b, coll, nil, mongo.WithReleaseEvents(events))
			var env []string
			if !events {
				env = append(env, envNoEvents+"=1")
			}
			reportLatencies(b, handoffs(b, holder, startProcessWaiter(b, coll, env...), b.N, handoffHold))
		})
	}
}

func reportLatencies(b *testing.B, lat []time.Duration) {
	b.ReportMetric(float64(median(lat).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, len(s)*p/100)]
}

// BenchmarkMongoPollBounds measures what polling alone (no change stream, no release events, as on
// ArangoDB and FerretDB 2.x) gives for several WithRetry maxima: the cross-process handoff, and
// the probes one process sends per second for one name it waits on. The default bounds were
// chosen from it.
func BenchmarkMongoPollBounds(b *testing.B) {
	for _, maxPoll := range []time.Duration{25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond,
		250 * time.Millisecond, time.Second} {
		b.Run("max="+maxPoll.String(), func(b *testing.B) {
			coll := collection(b)
			var commands atomic.Int64
			holder := newClientBackend(b, coll, nil, mongo.WithReleaseEvents(false))
			waiting := newClientBackend(b, coll, &commands, mongo.WithReleaseEvents(false))
			retry := shylock.WithRetry(min(10*time.Millisecond, maxPoll), maxPoll)
			reportLatencies(b, handoffs(b, holder, newLocalWaiter(waiting, retry), b.N, 2*maxPoll))

			// The load: one waiter on a lock held for longer than the window.
			h := shylock.New("held", shylock.WithBackend(holder), shylock.WithTTL(time.Minute))
			if ok, err := h.TryAcquire(context.Background()); !ok || err != nil {
				b.Fatal(ok, err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = shylock.New("held", shylock.WithBackend(waiting), retry).Acquire(ctx)
			}()
			time.Sleep(2 * maxPoll) // past the backoff's climb
			before, start := commands.Load(), time.Now()
			time.Sleep(max(2*time.Second, 10*maxPoll))
			b.ReportMetric(float64(commands.Load()-before)/time.Since(start).Seconds(), "probes/s")
			cancel()
			<-done
			_ = h.Release(context.Background())
		})
	}
}

// BenchmarkMongoIdleWaiters counts the commands per second the server receives while 1, 8 or 64
// backends (each with a client of its own, as separate processes would have) wait on a lock held
// for longer than the window. With release events or a change stream, each backend's cost is one
// cursor waiting on the server and a safety probe per name every 10s; without, its poller probes
// at the WithRetry maximum.
func BenchmarkMongoIdleWaiters(b *testing.B) {
	for _, events := range []bool{true, false} {
		for _, n := range []int{1, 8, 64} {
			b.Run(fmt.Sprintf("events=%v/backends=%d", events, n), func(b *testing.B) {
				coll := collection(b)
				var commands atomic.Int64
				holder := newClientBackend(b, coll, nil, mongo.WithReleaseEvents(events))
				h := shylock.New("held", shylock.WithBackend(holder), shylock.WithTTL(5*time.Minute))
				if ok, err := h.TryAcquire(context.Background()); !ok || err != nil {
					b.Fatal(ok, err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for range n {
					waiting := newClientBackend(b, coll, &commands, mongo.WithReleaseEvents(events))
					wg.Add(1)
					go func() {
						defer wg.Done()
						_ = shylock.New("held", shylock.WithBackend(waiting)).Acquire(ctx)
					}()
				}
				time.Sleep(2 * time.Second) // everyone waits, polls backed off
				before, start := commands.Load(), time.Now()
				for b.Loop() {
					time.Sleep(20 * time.Millisecond)
				}
				b.ReportMetric(float64(commands.Load()-before)/time.Since(start).Seconds(), "server-cmds/s")
				b.ReportMetric(0, "ns/op")
				cancel()
				wg.Wait()
				_ = h.Release(context.Background())
			})
		}
	}
}
