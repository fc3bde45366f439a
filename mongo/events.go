package mongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"

	"github.com/shylock-go/shylock/internal/backoff"
)

// Release events carry releases to the waiters of other processes where the server has no change
// streams (a standalone mongod, FerretDB): every release inserts {name} into a capped collection
// beside the locks, and each backend with waiters reads it through one tailable awaitData cursor,
// waking the waiters of the names it sees. The events are hints: a lost one only slows a waiter
// down to its own polls and the holder's expiry.
//
// What a tailing cursor costs FerretDB 1.x (SQLite) grows with what the collection holds, unless
// that is kept small. Its getMore (handler.awaitData, internal/handler/msg_getmore.go) runs the
// cursor's whole query again every 10ms, and cursor.Reset (internal/clientconn/cursor/cursor.go)
// reads that query's documents from the first until the last one the cursor returned: every
// document in the collection, decoded, 100 times a second, for each backend that tails it. No
// filter helps: the SQLite backend (sqlite.collection.Query) pushes down only
// {_id: <string or ObjectID>}, and the handler (makeFindQueryParams) passes a limit on only when
// there is no filter. Nor does the cap: only FerretDB's own program trims capped collections,
// once a minute and down to their cap (handler.runCappedCleanup, off where
// CappedCleanupInterval is 0, as in the embedded ferretdb package), so on the embedded server the
// collection never stops growing; and Reset fails, which ends the cursor, when the document it
// looks for is gone.
//
// So each tailing backend deletes the events it has received, all but the newest (see trimmer):
// at rest the collection holds one document, and while releases happen few more. Besides, the
// getMores of the events cursor wait eventsAwait, not awaitTime: awaitData adds the iterators of
// each re-run to one closer, which it closes whole at each re-run, so that a re-run costs more
// the longer its getMore has waited (at 10s, about half of what an idle cursor costs). A waiting
// backend then costs FerretDB what it costs on a new collection, whatever number of releases
// came before (BenchmarkMongoEventsHistory in the integration tests).
const (
	eventsSuffix = ".events"
	eventsSize   = 1 << 20 // bytes; the server also caps it at eventsMax documents
	eventsMax    = 1000
	eventsBatch  = 1000

	eventsAwait     = time.Second     // how long a getMore of the events cursor waits for news
	eventsTrimAge   = 2 * time.Second // events received this long ago are deleted,
	eventsKeep      = 32              // and those eventsKeep/2 newer ones came after, at the latest
	eventsTrimDelay = eventsAwait / 2 // after the getMore that scheduled the deletion ended
	eventsTrimBatch = 1000            // events deleted by one command at most
	eventsTrimLimit = 5 * time.Second // the deletion's own deadline
)

// ensureEvents makes sure the capped events collection exists, is capped, and holds a document
// (a tailable cursor on an empty collection comes back closed). A collection of that name that
// is not capped was re-created by an insert after a drop, and holds nothing worth keeping: it is
// replaced.
func (b *Backend) ensureEvents(ctx context.Context) error {
	db := b.events.Database()
	specs, err := db.ListCollectionSpecifications(ctx, bson.D{{Key: "name", Value: b.events.Name()}})
	if err != nil {
		return fmt.Errorf("reading the options of %s: %w", b.events.Name(), err)
	}
	if len(specs) == 1 && !isCapped(specs[0].Options) {
		if err := b.events.Drop(ctx); err != nil {
			return fmt.Errorf("dropping %s, which is not capped: %w", b.events.Name(), err)
		}
		specs = nil
	}
	if len(specs) == 0 {
		err := db.CreateCollection(ctx, b.events.Name(),
			options.CreateCollection().SetCapped(true).SetSizeInBytes(eventsSize).SetMaxDocuments(eventsMax))
		if err != nil && !isNamespaceExists(err) {
			return fmt.Errorf("creating the capped collection %s: %w", b.events.Name(), err)
		}
	}
	n, err := b.events.EstimatedDocumentCount(ctx)
	if err == nil && n == 0 {
		_, err = b.events.InsertOne(ctx, bson.D{{Key: "name", Value: ""}})
	}
	if err != nil {
		return fmt.Errorf("preparing %s: %w", b.events.Name(), err)
	}
	return nil
}

func isCapped(opts bson.Raw) bool {
	capped, _ := opts.Lookup("capped").BooleanOK()
	return capped
}

func isNamespaceExists(err error) bool {
	c, ok := code(err)
	return ok && c == codeNamespaceExists
}

// tailEvents opens the tailable cursor on the events collection. It reads from the collection's
// start: old events only wake waiters that then find the lock still held.
func (b *Backend) tailEvents(ctx context.Context) (*mongo.Cursor, error) {
	if err := b.ensureEvents(ctx); err != nil {
		return nil, err
	}
	// The first batch is one event: FerretDB closes a tailable cursor whose first batch comes
	// back short of its size. Later batches take what has piled up: on FerretDB each batch
	// after the first costs a read of the whole collection (see trimmer). Each event comes with
	// its $recordId, which increases in the collection's natural order.
	cur, err := b.events.Find(ctx, bson.D{}, options.Find().SetCursorType(options.TailableAwait).
		SetBatchSize(1).SetMaxAwaitTime(eventsAwait).SetShowRecordID(true))
	if err != nil {
		return nil, err
	}
	if cur.ID() == 0 {
		_ = cur.Close(context.WithoutCancel(ctx))
		return nil, errNotTailable
	}
	cur.SetBatchSize(eventsBatch)
	return cur, nil
}

var errNotTailable = errors.New("the server closed a tailable cursor on a capped collection at once: it has no tailable cursors")

// detectEvents reports whether the server keeps a tailable cursor open, by opening one.
func (b *Backend) detectEvents(ctx context.Context) (bool, error) {
	cur, err := b.tailEvents(ctx)
	switch {
	case errors.Is(err, errNotTailable) || lacksFeature(err):
		b.log.Debug("shylock/mongo: the server has no tailable cursors either; waiters in other processes notice releases by polling",
			"collection", b.coll.Name(), "err", err)
		return false, nil
	case err != nil:
		return false, fmt.Errorf("mongo: New: %w", err)
	}
	return true, cur.Close(ctx)
}

// publish tells the waiters of other processes that name was released. It waits for the
// server's acknowledgement, though an event is only a hint: FerretDB answers unacknowledged
// writes too, and the answer nobody reads would be taken for the reply to the connection's next
// command. An event lost with the caller's deadline only slows those waiters down to their polls.
func (b *Backend) publish(ctx context.Context, name string) {
	if b.events != nil {
		// Within the caller's deadline: a hint must not hold a release up.
		_, _ = b.events.InsertOne(ctx, bson.D{{Key: "name", Value: name}})
	}
}

// tail follows the events collection until ctx ends. Whenever the cursor ends (killed, the
// server restarted, the collection dropped) the waiters poll at their own pace until it is
// open again, and then all of them look once more, for what was missed.
func (b *Backend) tail(ctx context.Context) {
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	down := outage{log: b.log}
	tr := &trimmer{events: b.events, log: b.log}
	for {
		opened := time.Now()
		octx, cancel := context.WithTimeout(ctx, stallAfter)
		cur, err := b.tailEvents(octx)
		cancel()
		if errors.Is(err, mongo.ErrClientDisconnected) {
			down.failed("shylock/mongo: the database client was disconnected; the release-events cursor stops", "collection", b.events.Name())
			return
		}
		if err == nil {
			down.recovered("shylock/mongo: the release-events cursor is open again", "collection", b.events.Name())
			b.hub.SetPushed(true)
			b.hub.NotifyAll()
			var last int64 // the $recordId of the last event received
			for next(ctx, trimming{cur, func() { tr.schedule(ctx, 1) }}) {
				// FerretDB's awaitData cut short at its deadline while reading up to the
				// cursor's position leaves it on an older event, and the next getMore
				// returns again what came after (see trimmer).
				if id, ok := cur.Current.Lookup("$recordId").AsInt64OK(); ok {
					if id <= last {
						continue
					}
					last = id
				}
				if name, _ := cur.Current.Lookup("name").StringValueOK(); name != "" {
					b.hub.Notify(name)
				}
				tr.received(cur.Current.Lookup("_id"), time.Now())
				tr.schedule(ctx, eventsKeep)
			}
			tr.stop() // a new cursor reads the collection from its start again
			err = cursorErr(ctx, cur.Err())
			_ = cur.Close(context.WithoutCancel(ctx))
			b.hub.SetPushed(false)
		}
		if ctx.Err() != nil {
			return
		}
		if time.Since(opened) > time.Minute {
			bo.Reset() // it served a while: this is a new failure, not a server that keeps refusing
		}
		down.failed("shylock/mongo: the release-events cursor ended; waiters poll until it reopens",
			"collection", b.events.Name(), "err", err)
		t := time.NewTimer(bo.Next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// trimming is the events cursor as next sees it: after each getMore that brought nothing (at
// least every eventsAwait), it runs idle.
type trimming struct {
	*mongo.Cursor
	idle func()
}

func (t trimming) TryNext(ctx context.Context) bool {
	if t.Cursor.TryNext(ctx) {
		return true
	}
	t.idle()
	return false
}

// trimmer deletes the release events that one tailing backend received, all but the newest,
// once they are eventsTrimAge old or eventsKeep/2 newer ones came after them. A live cursor of
// another backend has passed them long before (a getMore returns an event within 10ms of its
// insert), so its position stays; one that fell that far behind ends, and opens again. It runs
// eventsTrimDelay after a getMore ended empty (the cursor was idle for eventsAwait), or after
// more than eventsKeep events came since the last deletion, in a timer's goroutine while the
// cursor waits. That is half a wait away from any getMore's deadline: FerretDB's awaitData cut
// short at its deadline inside Reset leaves the cursor on the document Reset read last, an
// older one, until the next getMore reads on from there (returning again what came after,
// which tail skips by $recordId), and deleting that document in between would end the cursor.
// And it is not after each release, whose waiters are acquiring then: on FerretDB over SQLite,
// one more writer at that moment can fail their writes ("database is locked"). Several backends
// may delete the same events: a deletion then finds them gone, after a look at the few
// documents left.
//
// FerretDB matches $in by comparing each document with each value: a deletion costs it the
// documents left times the events deleted, which stays small but for a backlog (events that
// piled up while no backend tailed the collection, or a burst of releases): more than
// eventsTrimBatch are deleted as all but those kept.
type trimmer struct {
	events *mongo.Collection
	log    *slog.Logger

	mu      sync.Mutex
	seen    []seenEvent // received by the open cursor, oldest first
	timer   *time.Timer // the deletion scheduled, if any
	refused bool        // the server does not delete from capped collections (MongoDB before 5.0)
	running sync.WaitGroup
}

type seenEvent struct {
	id bson.RawValue
	at time.Time
}

func (t *trimmer) received(id bson.RawValue, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.refused && id.Type != 0 {
		id.Value = slices.Clone(id.Value) // the cursor's batch is not ours to keep
		t.seen = append(t.seen, seenEvent{id: id, at: now})
	}
}

// schedule runs a deletion eventsTrimDelay from now if more than over events were received
// since the last one, unless one is scheduled already.
func (t *trimmer) schedule(ctx context.Context, over int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.refused || t.timer != nil || len(t.seen) <= over {
		return
	}
	t.running.Add(1)
	t.timer = time.AfterFunc(eventsTrimDelay, func() {
		defer t.running.Done()
		t.trim(ctx, time.Now())
	})
}

// stop cancels the deletion scheduled, waits for one under way, and forgets what the cursor,
// which has ended, received.
func (t *trimmer) stop() {
	t.mu.Lock()
	if t.timer != nil && t.timer.Stop() {
		t.running.Done()
	}
	t.timer = nil
	t.mu.Unlock()
	t.running.Wait()
	t.mu.Lock()
	t.seen = t.seen[:0]
	t.mu.Unlock()
}

// trim deletes the events old enough at now (see trimmer). A failed deletion is not tried again:
// those events stay until a cursor opened later (its own, or another backend's) receives them.
func (t *trimmer) trim(ctx context.Context, now time.Time) {
	t.mu.Lock()
	t.timer = nil
	n := 0
	for n < len(t.seen)-1 && (now.Sub(t.seen[n].at) >= eventsTrimAge || len(t.seen)-1-n >= eventsKeep/2) {
		n++
	}
	ids := make(bson.A, n)
	for i := range n {
		ids[i] = t.seen[i].id
	}
	t.seen = append(t.seen[:0], t.seen[n:]...)
	keep := make(bson.A, len(t.seen))
	for i, e := range t.seen {
		keep[i] = e.id
	}
	t.mu.Unlock()
	if n > eventsTrimBatch {
		// A backlog: everything but what is kept goes, in one look at each event, with the
		// events not received yet (hints lost: their waiters poll; a cursor left on one of
		// them, this backend's among them if its batch is not read to its end, ends and opens
		// again). FerretDB deletes no more than 32766 documents at once: past that, by _id.
		dctx, cancel := context.WithTimeout(ctx, eventsTrimLimit)
		_, err := t.events.DeleteMany(dctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$nin", Value: keep}}}})
		cancel()
		if err == nil || t.refuse(err) {
			return
		}
	}
	for len(ids) > 0 && ctx.Err() == nil {
		batch := ids[:min(len(ids), eventsTrimBatch)]
		ids = ids[len(batch):]
		dctx, cancel := context.WithTimeout(ctx, eventsTrimLimit)
		_, err := t.events.DeleteMany(dctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: batch}}}})
		cancel()
		if t.refuse(err) {
			return
		}
	}
}

// refuse reports whether err says that the server does not delete from capped collections, and
// stops the trimming for good if so.
func (t *trimmer) refuse(err error) bool {
	if !refusal(err) {
		return false
	}
	t.log.Debug("shylock/mongo: the server does not delete release events from their capped collection; its cap alone bounds them",
		"collection", t.events.Name(), "err", err)
	t.mu.Lock()
	t.refused, t.seen = true, nil
	t.mu.Unlock()
	return true
}

// eventsCollection returns the handle the backend publishes and tails events with: written and
// read at the lowest levels that are acknowledged, since an event is a hint that only the
// server it was written to needs to see.
func eventsCollection(coll *mongo.Collection) *mongo.Collection {
	return coll.Database().Collection(coll.Name()+eventsSuffix, options.Collection().
		SetWriteConcern(writeconcern.W1()).SetReadConcern(readconcern.Local()))
}
