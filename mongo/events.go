package mongo

import (
	"context"
	"errors"
	"fmt"
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
const (
	eventsSuffix = ".events"
	eventsSize   = 1 << 20 // bytes; the server also caps it at eventsMax documents
	eventsMax    = 1000
	eventsBatch  = 100
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
	// back short of its size. Later batches take what has piled up.
	cur, err := b.events.Find(ctx, bson.D{}, options.Find().SetCursorType(options.TailableAwait).
		SetBatchSize(1).SetMaxAwaitTime(awaitTime))
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
			for next(ctx, cur) {
				if name, _ := cur.Current.Lookup("name").StringValueOK(); name != "" {
					b.hub.Notify(name)
				}
			}
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

// eventsCollection returns the handle the backend publishes and tails events with: written and
// read at the lowest levels that are acknowledged, since an event is a hint that only the
// server it was written to needs to see.
func eventsCollection(coll *mongo.Collection) *mongo.Collection {
	return coll.Database().Collection(coll.Name()+eventsSuffix, options.Collection().
		SetWriteConcern(writeconcern.W1()).SetReadConcern(readconcern.Local()))
}
