package integration

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// pushedWithin reports whether a release by holder reaches a waiter on waiting within d, for a
// waiter whose own polls are a minute apart and a holder whose lease lasts a minute: only a
// notification from the release can wake it that soon.
func pushedWithin(t *testing.T, holder, waiting *mongo.Backend, name string, d time.Duration) bool {
	t.Helper()
	ctx := context.Background()
	h := shylock.New(name, shylock.WithBackend(holder), shylock.WithTTL(time.Minute))
	if err := h.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	w := shylock.New(name, shylock.WithBackend(waiting), shylock.WithRetry(time.Minute, time.Minute))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := w.AcquireAsync(wctx)
	time.Sleep(200 * time.Millisecond) // it is waiting, its first probe done
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-got:
	case <-time.After(d):
		cancel()
		if err := <-got; err == nil { // it won after all, just now
			_ = w.Release(ctx)
		}
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Release(ctx); err != nil {
		t.Fatal(err)
	}
	return true
}

// eventsServer skips t where b does not use release events: the server has change streams,
// which wake waiters instead, or keeps no tailable cursor open (FerretDB 2.x).
func eventsServer(t *testing.T, b *mongo.Backend) {
	t.Helper()
	if !b.ReleaseEvents() && os.Getenv("SHYLOCK_MONGO_URI") == "" {
		t.Fatal("the embedded FerretDB keeps tailable cursors open, yet the backend does not use release events")
	}
	if !b.ReleaseEvents() {
		t.Skipf("%s does not use release events (it has change streams, or no tailable cursors)", mongoServer)
	}
}

// TestMongoReleaseEventsAfterDeadConnection: the reply to the events cursor's getMore never
// comes, on a connection that stays open, as when a peer vanishes without a reset. The cursor
// is given up after its stall limit and opened again, and releases wake the waiters of another
// process again (without that, not for as long as TCP takes to notice: an hour or more).
func TestMongoReleaseEventsAfterDeadConnection(t *testing.T) {
	checkLibraryLeaks(t)
	p := startReplyDropper(t, mongoURIHost(t))
	coll := collection(t)
	holder := newClientBackend(t, coll, nil)
	c, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + p.ln.Addr().String() + "/"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	waiting := newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name()))
	eventsServer(t, waiting)
	if !pushedWithin(t, holder, waiting, "before", 2*time.Second) {
		t.Fatal("a release did not wake the waiter of another process before the fault")
	}
	p.silence.Store(1)
	pushedWithin(t, holder, waiting, "lost", time.Second) // its event answers the getMore whose reply is dropped
	if p.silenced.Load() != 1 {
		t.Fatalf("%d getMore replies dropped; want 1", p.silenced.Load())
	}
	start := time.Now()
	if !pushedWithin(t, holder, waiting, "after", 45*time.Second) { // the waiter's own polls are a minute apart
		t.Fatal("after a getMore whose reply never came, releases did not wake the waiter of another process within 45s")
	}
	t.Logf("waiters were woken again %v after the lost reply", time.Since(start).Round(100*time.Millisecond))
}

// TestMongoReleaseEvents: a release in one process wakes a waiter in another at once where
// the server has no change streams, and not without the events (the control).
func TestMongoReleaseEvents(t *testing.T) {
	checkLibraryLeaks(t)
	coll := collection(t)
	holder, waiting := newClientBackend(t, coll, nil), newClientBackend(t, coll, nil)
	eventsServer(t, waiting)
	if !pushedWithin(t, holder, waiting, "pushed", 2*time.Second) {
		t.Fatal("a release in another process did not wake the waiter within 2s")
	}
	other := collection(t)
	quietHolder := newClientBackend(t, other, nil, mongo.WithReleaseEvents(false))
	quietWaiter := newClientBackend(t, other, nil, mongo.WithReleaseEvents(false))
	if pushedWithin(t, quietHolder, quietWaiter, "polled", time.Second) {
		t.Fatal("without release events the waiter still woke at once: the test cannot tell events from polls")
	}
}

// TestMongoReleaseEventsRecover: the events cursor is an optimisation. Killed, or with its
// collection dropped, it comes back by itself. (Meanwhile waiters poll at their own pace:
// TestPollsAgainWhenPushingStops in internal/waiter.)
//
// It drops a collection under a tailing cursor, which on FerretDB 1.24 (SQLite) has been seen to
// leave the server answering "no such table" for other collections afterwards: on the embedded
// server it runs against a server of its own.
func TestMongoReleaseEventsRecover(t *testing.T) {
	checkLibraryLeaks(t)
	uri := isolatedURI(t)
	connect := func(monitor *event.CommandMonitor) *mdb.Collection {
		c, err := mdb.Connect(options.Client().ApplyURI(uri).SetMonitor(monitor))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
		return c.Database("shylock_test").Collection("recover")
	}
	cursors := &cursorIDs{}
	waiting := newMongo(t, connect(&event.CommandMonitor{Succeeded: cursors.succeeded}))
	coll := connect(nil)
	dropAfter(t, coll, coll.Database().Collection("recover.events"))
	holder := newMongo(t, coll)
	eventsServer(t, waiting)
	if !pushedWithin(t, holder, waiting, "before", 2*time.Second) {
		t.Fatal("release events did not work to begin with")
	}
	ctx := context.Background()
	events := coll.Database().Collection(coll.Name() + ".events")

	// Kill the cursor: the server answers its next getMore with CursorNotFound.
	err := coll.Database().RunCommand(ctx, bson.D{{Key: "killCursors", Value: events.Name()}, {Key: "cursors", Value: bson.A{cursors.last()}}}).Err()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return pushedWithin(t, holder, waiting, "after-kill", time.Second) })

	// Drop the collection: the next publish re-creates it uncapped; the cursor's reopening
	// replaces it with a capped one.
	if err := events.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return pushedWithin(t, holder, waiting, "after-drop", time.Second) })
	opts, err := coll.Database().ListCollectionSpecifications(ctx, bson.D{{Key: "name", Value: events.Name()}})
	if err != nil || len(opts) != 1 {
		t.Fatalf("events collection after the drop: %v, %v", opts, err)
	}
	if capped, _ := opts[0].Options.Lookup("capped").BooleanOK(); !capped {
		t.Fatalf("the events collection came back uncapped: %s", opts[0].Options)
	}
}

// cursorIDs remembers the id of the last tailable cursor opened on a release-events collection.
type cursorIDs struct {
	mu sync.Mutex
	id int64
}

func (c *cursorIDs) succeeded(_ context.Context, e *event.CommandSucceededEvent) {
	if e.CommandName != "find" {
		return
	}
	ns, _ := e.Reply.Lookup("cursor", "ns").StringValueOK()
	id, _ := e.Reply.Lookup("cursor", "id").AsInt64OK()
	if len(ns) > len(".events") && ns[len(ns)-len(".events"):] == ".events" && id != 0 {
		c.mu.Lock()
		c.id = id
		c.mu.Unlock()
	}
}

func (c *cursorIDs) last() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// TestFaultServerRestartedUnderEvents: the server restarts while a waiter's events cursor is
// open; waiters fall back to polling, and the cursor comes back by itself.
func TestFaultServerRestartedUnderEvents(t *testing.T) {
	checkLibraryLeaks(t)
	srv := &serverProcess{addr: freeAddr(t), dir: t.TempDir()}
	srv.start(t)
	t.Cleanup(srv.kill)
	connect := func() *mdb.Collection {
		c, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + srv.addr + "/").SetServerSelectionTimeout(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
		return c.Database("faults").Collection("events")
	}
	holder, waiting := newMongo(t, connect()), newMongo(t, connect())
	if !pushedWithin(t, holder, waiting, "before", 2*time.Second) {
		t.Fatal("release events did not work to begin with")
	}
	srv.kill()
	time.Sleep(time.Second)
	srv.start(t)
	waitFor(t, func() bool { return pushedWithin(t, holder, waiting, "after-restart", time.Second) })
}
