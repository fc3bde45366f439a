package integration

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
	"github.com/shylock-go/shylock/shylocktest"
)

// switchProxy relays TCP to the server until told to fail, then fails every connection as
// one way of losing a server does.
type switchProxy struct {
	*tcpProxy
	mode atomic.Int32
}

const (
	relayAll    = iota
	blackHole   // bytes go nowhere and nothing comes back, on open and new connections
	refuse      // open connections are cut and new ones reset at once, as after the server died
	dropReplies // commands reach the server and are applied; no reply comes back
)

func startSwitchProxy(t testing.TB, target string) *switchProxy {
	t.Helper()
	p := &switchProxy{}
	p.tcpProxy = startProxy(t, target, func(c, s net.Conn) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.copy(s, c, true)
		}()
		p.copy(c, s, false)
		<-done
	}, func() bool { return p.mode.Load() == refuse })
	return p
}

func (p *switchProxy) set(mode int32) {
	p.mode.Store(mode)
	if mode == refuse {
		p.cut()
	}
}

// copy passes bytes from src to dst (the server, if toServer) while the proxy relays; in a
// black hole it reads and drops them, and so it does with replies while they are dropped.
func (p *switchProxy) copy(dst, src net.Conn, toServer bool) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if mode := p.mode.Load(); n > 0 && (mode == relayAll || mode == dropReplies && toServer) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// lateness measures how long after its context's deadline each call returns while the server is
// lost in each way, and checks what the errors say of locks left behind.
type lateness struct {
	mu    sync.Mutex
	byOp  map[string][]time.Duration
	calls int
}

func (l *lateness) add(op string, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byOp == nil {
		l.byOp = map[string][]time.Duration{}
	}
	l.byOp[op] = append(l.byOp[op], d)
	l.calls++
}

func (l *lateness) all() []time.Duration {
	var all []time.Duration
	for _, ds := range l.byOp {
		all = append(all, ds...)
	}
	slices.Sort(all)
	return all
}

// faultProxied returns a backend that reaches the server through a switchProxy, and the proxy.
func faultProxied(t testing.TB, coll *mdb.Collection) (*mongo.Backend, *switchProxy) {
	p := startSwitchProxy(t, mongoURIHost(t))
	// Short driver timeouts would hide the library's own bounds: keep the defaults.
	c, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + p.ln.Addr().String() + "/").SetRetryWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name())), p
}

// deadlineRound makes one call of each kind with a deadline of d while the proxy is in mode, and
// records how late each returned.
func deadlineRound(t testing.TB, mode int32, d time.Duration, lat *lateness) {
	coll := collection(t)
	b, p := faultProxied(t, coll)
	ctx := context.Background()
	held := shylock.New("deadline/held", shylock.WithBackend(b), shylock.WithTTL(time.Minute))
	if ok, err := held.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire before the fault = %v, %v", ok, err)
	}
	p.set(mode)
	if mode == refuse {
		// A command sent on a connection the server cut may have been applied, as far as the
		// client can tell: let the driver find its pool dead first, as the first command after
		// a crash would.
		ictx, cancel := context.WithTimeout(ctx, d)
		_, _ = b.Inspect(ictx, "deadline/held")
		cancel()
	}
	timed := func(op string, call func(ctx context.Context) error) error {
		cctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		deadline, _ := cctx.Deadline()
		err := call(cctx)
		lat.add(op, max(time.Since(deadline), 0))
		return err
	}
	var errs []error
	errs = append(errs,
		timed("Acquire", func(ctx context.Context) error {
			return shylock.New("deadline/free", shylock.WithBackend(b)).Acquire(ctx)
		}),
		timed("TryAcquire", func(ctx context.Context) error {
			_, err := shylock.New("deadline/try", shylock.WithBackend(b)).TryAcquire(ctx)
			return err
		}),
		timed("Extend", func(ctx context.Context) error { return held.Extend(ctx, time.Minute) }),
		timed("Release", func(ctx context.Context) error { return held.Release(ctx) }),
		timed("Do", func(ctx context.Context) error {
			return shylock.Do(ctx, "deadline/do", func(context.Context) error { return nil }, shylock.WithBackend(b))
		}),
	)
	for _, err := range errs {
		if err == nil {
			t.Fatalf("a call succeeded although the server was lost (mode %d)", mode)
		}
		if mode == refuse && strings.Contains(err.Error(), "may stay taken") {
			t.Errorf("with the connection refused, nothing left the process, but the error says a lock may remain: %v", err)
		}
	}
}

// TestMongoCallsReturnByDeadline: with the server refusing connections (as after it was killed),
// cut off by a black hole, or applying commands whose replies never come, every call returns by its context's deadline (here within a generous
// bound for a busy machine; BenchmarkMongoDeadlines measures the lateness), and errors say that a
// lock may remain only when a command may have been applied.
func TestMongoCallsReturnByDeadline(t *testing.T) {
	checkLibraryLeaks(t)
	for _, c := range []struct {
		name string
		mode int32
	}{{"refused", refuse}, {"black hole", blackHole}, {"replies dropped", dropReplies}} {
		t.Run(c.name, func(t *testing.T) {
			var lat lateness
			deadlineRound(t, c.mode, 300*time.Millisecond, &lat)
			for op, ds := range lat.byOp {
				if ds[0] > 2*time.Second {
					t.Errorf("%s returned %v after its deadline", op, ds[0])
				}
			}
		})
	}
	t.Run("TryAcquire without a deadline", func(t *testing.T) {
		b, p := faultProxied(t, collection(t))
		p.set(blackHole)
		start := time.Now()
		ok, err := shylock.New("deadline/none", shylock.WithBackend(b)).TryAcquire(context.Background())
		if d := time.Since(start); ok || err == nil || d > shylock.AttemptTimeout+2*time.Second {
			t.Fatalf("TryAcquire without a deadline against a black hole = %v, %v after %v; want an error within AttemptTimeout (%v)",
				ok, err, d, shylock.AttemptTimeout)
		}
	})
	t.Run("closed client", func(t *testing.T) {
		coll := collection(t)
		c, err := mdb.Connect(options.Client().ApplyURI(mongoURI))
		if err != nil {
			t.Fatal(err)
		}
		b := newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name()))
		_ = c.Disconnect(context.Background())
		actx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		start := time.Now()
		err = shylock.New("deadline/closed", shylock.WithBackend(b)).Acquire(actx)
		if !errors.Is(err, shylock.ErrClosed) || time.Since(start) > 5*time.Second || strings.Contains(err.Error(), "may stay taken") {
			t.Fatalf("Acquire on a disconnected client = %v after %v; want ErrClosed at once, and no word of a leftover", err, time.Since(start))
		}
	})
}

// TestMongoClose: after Close, waiting and later acquires end at once with ErrClosed.
func TestMongoClose(t *testing.T) {
	coll := collection(t)
	shylocktest.RunClose(t, func(t *testing.T) (shylock.Backend, func()) {
		b := newMongo(t, coll)
		return b, b.Close
	})
}

// BenchmarkMongoDeadlines reports how late calls return after their context's deadline while
// the server is lost (refused connections, black hole, replies dropped), over b.N rounds of every
// call.
func BenchmarkMongoDeadlines(b *testing.B) {
	for _, c := range []struct {
		name string
		mode int32
	}{{"refused", refuse}, {"black-hole", blackHole}, {"replies-dropped", dropReplies}} {
		b.Run(c.name, func(b *testing.B) {
			var lat lateness
			for range b.N {
				deadlineRound(b, c.mode, 300*time.Millisecond, &lat)
			}
			all := lat.all()
			b.ReportMetric(float64(percentile(all, 50).Microseconds())/1000, "p50-late-ms")
			b.ReportMetric(float64(percentile(all, 99).Microseconds())/1000, "p99-late-ms")
			b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-late-ms")
			b.Logf("%s: %d calls, lateness p50 %v, p99 %v, max %v", c.name, lat.calls, percentile(all, 50), percentile(all, 99), all[len(all)-1])
		})
	}
}
