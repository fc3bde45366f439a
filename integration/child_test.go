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

// The multi-process test re-executes this test binary; these variables tell a copy that it is a
// worker, and where to work.
const (
	envChild      = "SHYLOCK_CHILD"
	envURI        = "SHYLOCK_CHILD_MONGO_URI"
	envDatabase   = "SHYLOCK_CHILD_DATABASE"
	envCollection = "SHYLOCK_CHILD_COLLECTION"
)

const (
	childProcesses  = 4
	childGoroutines = 8
	childRounds     = 4
)

// isChild reports whether this process is a worker of the multi-process test.
func isChild() bool { return os.Getenv(envChild) != "" }

// section is one critical section as a worker saw it.
type section struct {
	Token uint64    `bson:"token"`
	PID   int       `bson:"pid"`
	Start time.Time `bson:"start"`
	End   time.Time `bson:"end"`
}

// childMain contends for one lock from several goroutines and records every critical section.
func childMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := mdb.Connect(options.Client().ApplyURI(os.Getenv(envURI)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	defer func() { _ = c.Disconnect(context.Background()) }()
	db := c.Database(os.Getenv(envDatabase))
	backend, err := mongo.New(ctx, db.Collection(os.Getenv(envCollection)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker:", err)
		return 1
	}
	defer backend.Close()
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
	t.Cleanup(func() { _ = journal.Drop(context.Background()) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg   sync.WaitGroup
		errs = make([]error, childProcesses)
		outs = make([][]byte, childProcesses)
	)
	for i := range childProcesses {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), envChild+"=1", envURI+"="+mongoURI,
			envDatabase+"="+coll.Database().Name(), envCollection+"="+coll.Name())
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
