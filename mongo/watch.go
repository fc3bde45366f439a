package mongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/backoff"
)

// Subscribe implements shylock.Notifier. The first subscription starts one change stream for
// the whole collection (or, without change streams, one cursor on the release events), which
// wakes the waiters of any name when another process releases it; besides, the waiters of one
// name share one poller.
func (b *Backend) Subscribe(name string, minPoll, maxPoll time.Duration) shylock.Subscription {
	b.streamOnce.Do(func() {
		if b.noStreams && b.events == nil {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.streamStop, b.streamDone = cancel, make(chan struct{})
		go func() {
			defer close(b.streamDone)
			if (b.noStreams || !b.watch(ctx)) && b.events != nil {
				b.tail(ctx)
			}
		}()
	})
	return b.hub.Subscribe(name, minPoll, maxPoll)
}

// awaitTime is how long one getMore of the change stream or of the events cursor waits for
// news: what an idle cursor costs. A getMore still unanswered stallAfter after it was sent went
// to a connection that died without a reset (a peer gone, a NAT entry dropped), which TCP may
// not report for an hour: the cursor is given up and opened again, and meanwhile waiters poll.
const (
	awaitTime  = 10 * time.Second
	stallAfter = awaitTime + 10*time.Second
)

// cursor is what next needs of a change stream or a tailable cursor.
type cursor interface {
	TryNext(context.Context) bool
	Err() error
	ID() int64
}

// next waits for c's next document one getMore at a time, each bounded by stallAfter. It
// reports false when c ends: an error (a stalled getMore among them), the server closing it, or
// ctx ending.
func next(ctx context.Context, c cursor) bool {
	for {
		gctx, cancel := context.WithTimeout(ctx, stallAfter)
		ok := c.TryNext(gctx)
		cancel()
		if ok {
			return true
		}
		if c.Err() != nil || c.ID() == 0 || ctx.Err() != nil {
			return false
		}
	}
}

// cursorErr says why a cursor ended, naming a stalled getMore as such.
func cursorErr(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("no answer to a getMore within %v, the connection may be dead: %w", stallAfter, err)
	}
	return err
}

// releases matches the events after which a lock may be free: an update that cleared the owner
// (Release, ForceRelease), the deletion of a record whose name the event carries (on a
// collection sharded on name), and the end of the collection. The TTL monitor deletes only
// records nobody has held for the grace period, and a deletion event without a pre-image does
// not say which name it was, so other deletions wake nobody.
var releases = mongo.Pipeline{{{Key: "$match", Value: bson.D{{Key: "$or", Value: bson.A{
	bson.D{{Key: "operationType", Value: "update"}, {Key: "updateDescription.updatedFields.owner", Value: ""}},
	bson.D{{Key: "operationType", Value: "delete"}, {Key: "documentKey.name", Value: bson.D{{Key: "$exists", Value: true}}}},
	bson.D{{Key: "operationType", Value: bson.D{{Key: "$in", Value: bson.A{"drop", "rename", "dropDatabase", "invalidate"}}}}},
}}}}}}

type event struct {
	OperationType string `bson:"operationType"`
	FullDocument  struct {
		Name string `bson:"name"`
	} `bson:"fullDocument"`
	DocumentKey struct {
		Name string `bson:"name"`
	} `bson:"documentKey"`
}

// noChangeStreams reports whether err says the server cannot open change streams at all: not
// implemented (FerretDB), only on replica sets (a standalone mongod), or an unknown stage.
func noChangeStreams(err error) bool {
	c, ok := code(err)
	return ok && (c == codeReplicaSetOnly || lacksFeature(err))
}

// restartable reports whether err ends a stream that cannot be resumed from its last event:
// the history it would resume from is gone, the server says the stream cannot go on, or the
// token no longer fits (a collection dropped and re-created since).
func restartable(err error) bool {
	c, ok := code(err)
	return ok && (c == codeChangeStreamHistoryLost || c == codeChangeStreamFatal || c == codeInvalidResumeToken)
}

// watch runs the change stream until ctx ends, and reports false if the server has none. It
// resumes after an error from the last event it saw; after an invalidation (the collection was
// dropped or renamed) or an error that makes resuming impossible, it starts afresh. It always
// waits before opening a stream again.
func (b *Backend) watch(ctx context.Context) bool {
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	var resume bson.Raw
	sleep := func() bool {
		t := time.NewTimer(bo.Next())
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
	down := outage{log: b.log}
	for opened := false; ; {
		opts := options.ChangeStream().SetFullDocument(options.UpdateLookup).SetMaxAwaitTime(awaitTime)
		if resume != nil {
			opts.SetResumeAfter(resume)
		}
		cs, err := b.streams.Watch(ctx, releases, opts)
		switch {
		case ctx.Err() != nil:
			if err == nil {
				_ = cs.Close(context.WithoutCancel(ctx))
			}
			return true
		case err != nil && !opened && noChangeStreams(err):
			b.log.Debug("shylock/mongo: the server has no change streams; waiters of other processes are woken by release events if it has tailable cursors, else they poll",
				"collection", b.coll.Name(), "err", err)
			return false
		case errors.Is(err, mongo.ErrClientDisconnected):
			down.failed("shylock/mongo: the database client was disconnected; the change stream stops", "collection", b.coll.Name())
			return true
		case err != nil:
			if restartable(err) {
				resume = nil
			}
			down.failed("shylock/mongo: change stream failed; waiters poll until it reopens", "collection", b.coll.Name(), "err", err)
			if !sleep() {
				return true
			}
			continue
		}
		opened = true
		down.recovered("shylock/mongo: change stream open again", "collection", b.coll.Name())
		b.hub.SetPushed(true)
		b.hub.NotifyAll() // releases may have been missed while no stream was open
		ended := b.follow(ctx, cs)
		resume = cs.ResumeToken()
		err = cursorErr(ctx, cs.Err())
		_ = cs.Close(context.WithoutCancel(ctx))
		b.hub.SetPushed(false)
		if ended || restartable(err) {
			resume = nil
		}
		if ctx.Err() != nil {
			return true
		}
		down.failed("shylock/mongo: change stream ended; reopening", "collection", b.coll.Name(), "err", err, "afresh", resume == nil)
		if !sleep() {
			return true
		}
	}
}

// outage logs a notification channel's failures once per outage, at warning level, and its
// recovery; the failures in between, while it keeps retrying, only at debug level.
type outage struct {
	log  *slog.Logger
	down bool
}

func (o *outage) failed(msg string, args ...any) {
	if o.down {
		o.log.Debug(msg, args...)
		return
	}
	o.down = true
	o.log.Warn(msg, args...)
}

func (o *outage) recovered(msg string, args ...any) {
	if o.down {
		o.down = false
		o.log.Info(msg, args...)
	}
}

// follow passes the events of cs to the waiters until the stream fails or is invalidated (then
// it reports true: the collection is gone, and a stream must start afresh).
func (b *Backend) follow(ctx context.Context, cs *mongo.ChangeStream) (invalidated bool) {
	for next(ctx, cs) {
		var ev event
		if err := cs.Decode(&ev); err != nil {
			b.hub.NotifyAll()
			continue
		}
		switch ev.OperationType {
		case "update":
			if ev.FullDocument.Name == "" { // deleted before the lookup
				continue
			}
			b.hub.Notify(ev.FullDocument.Name)
		case "delete":
			b.hub.Notify(ev.DocumentKey.Name)
		case "invalidate":
			return true
		default: // drop, rename, dropDatabase: every lock is gone
			b.hub.NotifyAll()
		}
	}
	return false
}
