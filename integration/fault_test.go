package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

// Settings of the fault workers.
const (
	envName = "SHYLOCK_CHILD_NAME" // the lock a holder takes
	envTTL  = "SHYLOCK_CHILD_TTL"
)

// errStale is a fenced write refused because a newer holder wrote first.
var errStale = errors.New("stale fencing token")

// fencedWrite stands for a resource that remembers the highest token it has seen and refuses
// writes with lower ones.
func fencedWrite(ctx context.Context, resource *mdb.Collection, token uint64) error {
	res, err := resource.UpdateOne(ctx, bson.D{{Key: "_id", Value: "resource"}, {Key: "token", Value: bson.D{{Key: "$lt", Value: int64(token)}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "token", Value: int64(token)}}}})
	if err != nil {
		return err
	}
	if res.MatchedCount == 1 {
		return nil
	}
	if _, err := resource.InsertOne(ctx, bson.D{{Key: "_id", Value: "resource"}, {Key: "token", Value: int64(token)}}); mdb.IsDuplicateKeyError(err) {
		return errStale
	} else if err != nil {
		return err
	}
	return nil
}

// holdReport is what a holder worker says after it was resumed.
type holdReport struct {
	Lost           bool   `json:"lost"`
	WriteRejected  bool   `json:"writeRejected"`
	ReleaseNotHeld bool   `json:"releaseNotHeld"`
	Release        string `json:"release"`
}

// holdMain takes a lock with auto-renewal and says "held TOKEN". On the line "check" it reports
// whether it learnt of losing the lock, whether a fenced write with its token was refused, and
// what Release said.
func holdMain() int {
	ctx := context.Background()
	b, db, done, err := childBackend(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	defer done()
	ttl, _ := time.ParseDuration(os.Getenv(envTTL))
	l := shylock.New(os.Getenv(envName), shylock.WithBackend(b), shylock.WithTTL(ttl), shylock.WithAutoRenew(true))
	if err := l.Acquire(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "holder:", err)
		return 1
	}
	fmt.Printf("held %d\n", l.Token())
	if !bufio.NewScanner(os.Stdin).Scan() {
		return 0
	}
	var r holdReport
	select {
	case <-l.Lost():
		r.Lost = true
	case <-time.After(10 * time.Second):
	}
	r.WriteRejected = errors.Is(fencedWrite(ctx, db.Collection(os.Getenv(envCollection)+"_resource"), l.Token()), errStale)
	err = l.Release(ctx)
	r.ReleaseNotHeld = errors.Is(err, shylock.ErrNotHeld) && errors.Is(err, shylock.ErrLost)
	r.Release = fmt.Sprint(err)
	_ = json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// holder is a running holder worker.
type holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
	token uint64
}

func startHolder(t *testing.T, coll *mdb.Collection, name string, ttl time.Duration) *holder {
	t.Helper()
	cmd := child("hold", mongoURI, coll, envName+"="+name, envTTL+"="+ttl.String())
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	h := &holder{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := h.out.ReadString('\n')
	if _, serr := fmt.Sscanf(line, "held %d", &h.token); err != nil || serr != nil {
		t.Fatalf("holder said %q: %v", line, err)
	}
	return h
}

// TestFaultPausedHolder stops a holder past its TTL: another takes over with a higher token;
// resumed, the old holder sees Lost, its fenced write is refused and its Release fails.
func TestFaultPausedHolder(t *testing.T) {
	ctx := context.Background()
	coll := collection(t)
	dropAfter(t, coll.Database().Collection(coll.Name()+"_resource"))
	const ttl = time.Second
	h := startHolder(t, coll, "paused", ttl)
	if err := h.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := newMongo(t, coll)
	l := shylock.New("paused", shylock.WithBackend(b))
	actx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := l.Acquire(actx); err != nil {
		t.Fatalf("taking over from a paused holder: %v", err)
	}
	if l.Token() <= h.token {
		t.Fatalf("takeover token %d is not above the paused holder's %d", l.Token(), h.token)
	}
	if err := fencedWrite(ctx, coll.Database().Collection(coll.Name()+"_resource"), l.Token()); err != nil {
		t.Fatalf("the new holder's fenced write: %v", err)
	}
	if err := h.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(h.stdin, "check\n"); err != nil {
		t.Fatal(err)
	}
	var r holdReport
	line, err := h.out.ReadString('\n')
	if err != nil || json.Unmarshal([]byte(line), &r) != nil {
		t.Fatalf("resumed holder said %q: %v", line, err)
	}
	if !r.Lost || !r.WriteRejected || !r.ReleaseNotHeld {
		t.Fatalf("the resumed holder: %+v; want Lost closed, its write refused, Release ErrNotHeld and ErrLost", r)
	}
	if info, _ := b.Inspect(ctx, "paused"); !info.Held || info.Token != l.Token() {
		t.Fatalf("after the old holder's Release the lock is %+v; want the new holder's", info)
	}
}

// TestFaultKilledHolder kills a holder hard: a waiter takes over within the TTL plus one poll
// interval (and some slack for a loaded machine).
func TestFaultKilledHolder(t *testing.T) {
	coll := collection(t)
	const ttl, maxPoll = time.Second, 200 * time.Millisecond
	h := startHolder(t, coll, "killed", ttl)
	b := newMongo(t, coll)
	l := shylock.New("killed", shylock.WithBackend(b), shylock.WithRetry(10*time.Millisecond, maxPoll))
	if ok, _ := l.TryAcquire(context.Background()); ok {
		t.Fatal("the lock was free while its holder lived")
	}
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	if limit := ttl + maxPoll + time.Second; took > limit {
		t.Fatalf("took over %v after the holder died; want within TTL + poll interval (+1s slack) = %v", took, limit)
	}
	if l.Token() <= h.token {
		t.Fatalf("takeover token %d not above %d", l.Token(), h.token)
	}
	t.Logf("took over %v after the holder was killed (TTL %v)", took.Round(time.Millisecond), ttl)
}

// serverProcess is the embedded FerretDB in a process of its own (testdb/cmd/ferretdb-server,
// built without the race detector by TestMain): it can be killed hard, and it spends a fraction
// of the CPU that FerretDB's SQLite costs inside a race-instrumented test binary, which on a busy
// machine is the difference between a server that answers in milliseconds and in seconds.
type serverProcess struct {
	addr, dir string // addr may end in :0; launch sets uri
	uri       string
	cmd       *exec.Cmd
}

// programs is a directory for the programs the tests build, removed when the run ends.
var programs string

// ferretdbProgram builds testdb/cmd/ferretdb-server once per run.
var ferretdbProgram = sync.OnceValues(func() (string, error) {
	return goBuild(programs, "github.com/shylock-go/shylock/testdb/cmd/ferretdb-server")
})

// launch starts the server and waits until it listens.
func (s *serverProcess) launch() error {
	bin, err := ferretdbProgram()
	if err != nil {
		return fmt.Errorf("building the embedded FerretDB: %w", err)
	}
	s.cmd = exec.Command(bin, "-listen", s.addr, "-data", s.dir)
	s.cmd.Stderr = os.Stderr
	out, err := s.cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	uri, ok := strings.CutPrefix(strings.TrimSpace(line), "ready at ")
	if err != nil || !ok {
		s.kill()
		return fmt.Errorf("the FerretDB server said %q: %v", line, err)
	}
	s.uri = uri
	return nil
}

func (s *serverProcess) start(t *testing.T) {
	t.Helper()
	if err := s.launch(); err != nil {
		t.Fatal(err)
	}
}

func (s *serverProcess) kill() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// faultLoad runs holders that contend for one lock through b while faults happen, and checks
// that there are never two at once. It returns how many critical sections completed before and
// after the moment mark() was called.
type faultLoad struct {
	inside, overlaps, before, after, lost, failed atomic.Int32
	marked                                        atomic.Bool
	errs                                          errorCounter // errors the library logged and retried
}

// errorCounter is a slog handler that counts the records carrying an error.
type errorCounter struct{ n atomic.Int32 }

func (c *errorCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *errorCounter) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *errorCounter) WithGroup(string) slog.Handler            { return c }
func (c *errorCounter) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			c.n.Add(1)
			return false
		}
		return true
	})
	return nil
}

func (f *faultLoad) run(ctx context.Context, b shylock.Backend, workers int, ttl time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				err := shylock.Do(ctx, "faulty", func(ctx context.Context) error {
					if f.inside.Add(1) != 1 {
						f.overlaps.Add(1)
					}
					time.Sleep(20 * time.Millisecond)
					f.inside.Add(-1)
					return nil
				}, shylock.WithBackend(b), shylock.WithTTL(ttl), shylock.WithRetry(10*time.Millisecond, 200*time.Millisecond),
					shylock.WithLogger(slog.New(&f.errs)))
				switch {
				case err == nil && f.marked.Load():
					f.after.Add(1)
				case err == nil:
					f.before.Add(1)
				case errors.Is(err, shylock.ErrLost):
					f.lost.Add(1)
				case ctx.Err() != nil:
				default:
					f.failed.Add(1)
					time.Sleep(50 * time.Millisecond)
				}
			}
		}()
	}
	return &wg
}

func (f *faultLoad) check(t *testing.T) {
	t.Helper()
	t.Logf("critical sections: %d before the fault, %d after; %d lost; %d errors retried inside the library, %d returned",
		f.before.Load(), f.after.Load(), f.lost.Load(), f.errs.n.Load(), f.failed.Load())
	if f.errs.n.Load()+f.failed.Load()+f.lost.Load() == 0 {
		t.Fatal("the fault never reached the holders; the test tested nothing")
	}
	if n := f.overlaps.Load(); n != 0 {
		t.Fatalf("%d times two holders at once", n)
	}
	if f.before.Load() == 0 || f.after.Load() == 0 {
		t.Fatal("the holders did not work both before and after the fault")
	}
}

// TestFaultServerKilled kills the server hard while holders and waiters run, and restarts it on
// the same data: never two holders, and work resumes.
func TestFaultServerKilled(t *testing.T) {
	checkLibraryLeaks(t)
	srv := &serverProcess{addr: freeAddr(t), dir: t.TempDir()}
	srv.start(t)
	t.Cleanup(srv.kill)
	c, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + srv.addr + "/").SetServerSelectionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	b := newMongo(t, c.Database("faults").Collection("locks"))

	ctx, cancel := context.WithCancel(context.Background())
	var load faultLoad
	wg := load.run(ctx, b, 4, 4*time.Second)
	time.Sleep(1500 * time.Millisecond)
	srv.kill()
	time.Sleep(2 * time.Second) // longer than server selection waits, so operations fail
	srv.start(t)
	load.marked.Store(true)
	time.Sleep(3 * time.Second)
	cancel()
	wg.Wait()
	load.check(t)
}
