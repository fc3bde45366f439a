package mongo

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/backoff"
)

// Subscribe implements shylock.Notifier. The first subscription starts one change stream for
// the whole collection, which wakes the waiters of any name when another process releases it;
// without change streams (a standalone server, FerretDB), waiters share one poller per name.
func (b *Backend) Subscribe(name string, minPoll, maxPoll time.Duration) shylock.Subscription {
	b.streamOnce.Do(func() {
		if b.noStreams {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.streamStop, b.streamDone = cancel, make(chan struct{})
		go b.watch(ctx)
	})
	return b.hub.Subscribe(name, minPoll, maxPoll)
}

// releases matches the events after which a lock may be free: an update that cleared the owner
// (Release, ForceRelease) or a deletion (the TTL monitor, an operator).
var releases = mdb.Pipeline{{{Key: "$match", Value: bson.D{{Key: "$or", Value: bson.A{
	bson.D{{Key: "operationType", Value: "delete"}},
	bson.D{{Key: "operationType", Value: "update"}, {Key: "updateDescription.updatedFields.owner", Value: ""}},
}}}}}}

// noChangeStreams reports whether err says the server cannot open change streams at all: not
// implemented (FerretDB), only on replica sets (a standalone mongod), or an unknown stage.
func noChangeStreams(err error) bool {
	var cmd mdb.CommandError
	if !errors.As(err, &cmd) {
		return false
	}
	switch cmd.Code {
	case 238, 40573, 115, 40324:
		return true
	}
	return false
}

type event struct {
	OperationType string `bson:"operationType"`
	FullDocument  struct {
		Name string `bson:"name"`
	} `bson:"fullDocument"`
}

// watch runs the change stream until ctx ends, reopening it after errors from where it left off.
func (b *Backend) watch(ctx context.Context) {
	defer close(b.streamDone)
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	var resume bson.Raw
	for opened := false; ; {
		opts := options.ChangeStream().SetFullDocument(options.UpdateLookup)
		if resume != nil {
			opts.SetResumeAfter(resume)
		}
		cs, err := b.coll.Watch(ctx, releases, opts)
		switch {
		case ctx.Err() != nil:
			if err == nil {
				_ = cs.Close(context.WithoutCancel(ctx))
			}
			return
		case err != nil && !opened && noChangeStreams(err):
			b.log.Debug("shylock/mongo: the server has no change streams; waiters poll",
				"collection", b.coll.Name(), "err", err)
			return
		case err != nil:
			b.log.Warn("shylock/mongo: change stream failed; waiters poll until it reopens",
				"collection", b.coll.Name(), "err", err)
			t := time.NewTimer(bo.Next())
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		opened = true
		bo.Reset()
		b.hub.SetPushed(true)
		b.hub.NotifyAll() // releases may have been missed while no stream was open
		for cs.Next(ctx) {
			var ev event
			if err := cs.Decode(&ev); err != nil || ev.OperationType == "delete" || ev.FullDocument.Name == "" {
				b.hub.NotifyAll()
				continue
			}
			b.hub.Notify(ev.FullDocument.Name)
		}
		resume = cs.ResumeToken()
		err = cs.Err()
		_ = cs.Close(context.WithoutCancel(ctx))
		b.hub.SetPushed(false)
		if ctx.Err() != nil {
			return
		}
		b.log.Warn("shylock/mongo: change stream ended; reopening", "collection", b.coll.Name(), "err", err)
	}
}
