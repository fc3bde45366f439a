package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// Multi-process tests re-execute this test binary; these variables tell a copy that it is a
// worker, what to do (one of workers' keys), and where.
const (
	envChild      = "SHYLOCK_CHILD"
	envURI        = "SHYLOCK_CHILD_MONGO_URI"
	envDatabase   = "SHYLOCK_CHILD_DATABASE"
	envCollection = "SHYLOCK_CHILD_COLLECTION"
)

var workers = map[string]func() int{
	"contend": contendMain,
	"hold":    holdMain,
	"history": historyMain,
	"waiter":  waiterMain,
}

const (
	childProcesses  = 4
	childGoroutines = 8
	childRounds     = 4
)

// isChild reports whether this process is a worker of a multi-process test.
func isChild() bool { return os.Getenv(envChild) != "" }

func childMain() int {
	run, ok := workers[os.Getenv(envChild)]
	if !ok {
		fmt.Fprintf(os.Stderr, "worker: unknown kind %q\n", os.Getenv(envChild))
		return 2
	}
	return run()
}

// childBackend connects a worker to the collection its parent named.
func childBackend(ctx context.Context) (*mongo.Backend, *mdb.Database, func(), error) {
	c, err := mdb.Connect(options.Client().ApplyURI(os.Getenv(envURI)))
	if err != nil {
		return nil, nil, nil, err
	}
	db := c.Database(os.Getenv(envDatabase))
	b, err := mongo.New(ctx, db.Collection(os.Getenv(envCollection)))
	if err != nil {
		_ = c.Disconnect(context.Background())
		return nil, nil, nil, err
	}
	return b, db, func() { b.Close(); _ = c.Disconnect(context.Background()) }, nil
}

// child returns a command that runs this test binary as a worker of the given kind on coll (if
// any), reached through uri.
func child(kind, uri string, coll *mdb.Collection, env ...string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		panic(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+kind, envURI+"="+uri)
	if coll != nil {
		cmd.Env = append(cmd.Env, envDatabase+"="+coll.Database().Name(), envCollection+"="+coll.Name())
	}
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

// section is one critical section as a worker saw it.
type section struct {
	Token uint64    `bson:"token"`
	PID   int       `bson:"pid"`
	Start time.Time `bson:"start"`
	End   time.Time `bson:"end"`
}

// contendMain contends for one lock from several goroutines and records every critical section.
func contendMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	backend, db, done, err := childBackend(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	defer done()
	journal := db.Collection(os.Getenv(envCollection) + "_journal")
	var (
		wg     sync.WaitGroup
		failed atomic.Bool
	)
	for range childGoroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range childRounds {
				l := shylock.New("multi", shylock.WithBackend(backend), shylock.WithTTL(20*time.Second),
					shylock.WithRetry(5*time.Millisecond, 50*time.Millisecond))
				if err := l.Acquire(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "worker: acquire:", err)
					failed.Store(true)
					return
				}
				s := section{Token: l.Token(), PID: os.Getpid(), Start: time.Now()}
				time.Sleep(2 * time.Millisecond)
				s.End = time.Now()
				if _, err := journal.InsertOne(ctx, s); err != nil {
					fmt.Fprintln(os.Stderr, "worker: journal:", err)
					failed.Store(true)
				}
				if err := l.Release(ctx); err != nil {
					fmt.Fprintln(os.Stderr, "worker: release:", err)
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() {
		return 1
	}
	return 0
}

// TestMongoMultiProcess runs 4 processes of 8 goroutines each against one lock and fails on any
// overlap of critical sections or any token that does not increase from one to the next.
func TestMongoMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 4 processes")
	}
	coll := collection(t)
	journal := coll.Database().Collection(coll.Name() + "_journal")
	dropAfter(t, journal)
	var (
		wg   sync.WaitGroup
		errs = make([]error, childProcesses)
		outs = make([][]byte, childProcesses)
	)
	for i := range childProcesses {
		cmd := child("contend", mongoURI, coll)
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = cmd.CombinedOutput()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v\n%s", i, err, outs[i])
		}
	}
	cur, err := journal.Find(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var sections []section
	if err := cur.All(context.Background(), &sections); err != nil {
		t.Fatal(err)
	}
	if want := childProcesses * childGoroutines * childRounds; len(sections) != want {
		t.Fatalf("%d critical sections recorded, want %d", len(sections), want)
	}
	sort.Slice(sections, func(i, j int) bool { return sections[i].Start.Before(sections[j].Start) })
	pids := map[int]bool{}
	for i, s := range sections {
		pids[s.PID] = true
		if i == 0 {
			continue
		}
		p := sections[i-1]
		if s.Start.Before(p.End) {
			t.Fatalf("critical sections overlap: pid %d token %d [%v, %v] and pid %d token %d [%v, %v]",
				p.PID, p.Token, p.Start, p.End, s.PID, s.Token, s.Start, s.End)
		}
		if s.Token <= p.Token {
			t.Fatalf("token %d (pid %d) follows token %d (pid %d); tokens must increase", s.Token, s.PID, p.Token, p.PID)
		}
	}
	if len(pids) != childProcesses {
		t.Fatalf("only %d of %d processes held the lock", len(pids), childProcesses)
	}
	t.Logf("%d critical sections from %d processes, no overlap, tokens increasing (%s)", len(sections), len(pids), mongoServer)
}
