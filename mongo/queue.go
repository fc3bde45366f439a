package mongo

import (
	"context"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// A lock's queue (see shylock.Backend.Acquire) is the field queue of its record: one entry per
// waiting party, {since, seen}, keyed by queueKey(party). Both dates come from the server's
// clock ($$NOW; on the estimate path, the high end of the estimate of it), and an entry is live
// while seen is less than shylock.QueueLease ago. Keys are hashes of the parties, so that a
// party is never a field path; a map, not an array, so that a renewal or a departure is a $set
// or an $unset of its own field, which every server takes.
const queueField = "queue"

type queueEntry struct {
	Since time.Time `bson:"since"`
	Seen  time.Time `bson:"seen"`
}

func queueKey(party string) string { return ownerid.QueueKey(party) }

func entryPath(party string) string { return queueField + "." + queueKey(party) }

// The fields below live only inside one acquire's pipeline.
const (
	nowField  = "_shylockNow"  // $$NOW, which DocumentDB refuses inside $filter and $let
	liveField = "_shylockLive" // the live entries, as [{k, v}]
	mineField = "_shylockMine" // the caller's live entry, or null
)

// The pipeline of an acquire keeps the queue in four parts: queueRead and queueMine read it,
// queueAhead decides whether another party comes first, and queueWrite writes it back: without
// the caller's entry once it takes the lock, with it renewed (or added) when it is refused and
// waits, pruned of dead entries always.
func queueRead() bson.D {
	lease := shylock.QueueLease.Milliseconds()
	live := bson.D{{Key: "$filter", Value: bson.D{
		{Key: "input", Value: bson.D{{Key: "$objectToArray", Value: bson.D{{Key: "$ifNull", Value: bson.A{"$" + queueField, bson.D{}}}}}}},
		{Key: "as", Value: "e"},
		{Key: "cond", Value: bson.D{{Key: "$gt", Value: bson.A{bson.D{{Key: "$add", Value: bson.A{"$$e.v.seen", lease}}}, "$" + nowField}}}},
	}}}
	return bson.D{{Key: "$set", Value: bson.D{{Key: liveField, Value: live}}}}
}

func queueMine(party string) bson.D {
	mine := bson.D{{Key: "$first", Value: bson.D{{Key: "$filter", Value: bson.D{
		{Key: "input", Value: "$" + liveField},
		{Key: "as", Value: "e"},
		{Key: "cond", Value: bson.D{{Key: "$eq", Value: bson.A{"$$e.k", queueKey(party)}}}},
	}}}}}
	return bson.D{{Key: "$set", Value: bson.D{{Key: mineField, Value: bson.D{{Key: "$ifNull", Value: bson.A{mine, nil}}}}}}}
}

// queueAhead is true when a live entry of another party joined before the caller's (or exists
// at all, when the caller has none).
func queueAhead(party string) bson.D {
	return bson.D{{Key: "$gt", Value: bson.A{bson.D{{Key: "$size", Value: bson.D{{Key: "$filter", Value: bson.D{
		{Key: "input", Value: "$" + liveField},
		{Key: "as", Value: "e"},
		{Key: "cond", Value: bson.D{{Key: "$and", Value: bson.A{
			bson.D{{Key: "$ne", Value: bson.A{"$$e.k", queueKey(party)}}},
			bson.D{{Key: "$or", Value: bson.A{
				bson.D{{Key: "$eq", Value: bson.A{"$" + mineField, nil}}},
				bson.D{{Key: "$lt", Value: bson.A{"$$e.v.since", "$" + mineField + ".v.since"}}},
			}}},
		}}}},
	}}}}}, 0}}}
}

// queueWrite is the new value of the queue: took says the attempt takes the lock, joins that
// it was refused and waits. An empty queue is removed.
func queueWrite(party string, took, joins any) bson.D {
	others := bson.D{{Key: "$filter", Value: bson.D{
		{Key: "input", Value: "$" + liveField},
		{Key: "as", Value: "e"},
		{Key: "cond", Value: bson.D{{Key: "$ne", Value: bson.A{"$$e.k", queueKey(party)}}}},
	}}}
	since := bson.D{{Key: "$ifNull", Value: bson.A{"$" + mineField + ".v.since", "$" + nowField}}}
	withMine := bson.D{{Key: "$concatArrays", Value: bson.A{others, bson.A{bson.D{
		{Key: "k", Value: queueKey(party)},
		{Key: "v", Value: bson.D{{Key: "since", Value: since}, {Key: "seen", Value: "$" + nowField}}},
	}}}}}
	entries := bson.D{{Key: "$switch", Value: bson.D{
		{Key: "branches", Value: bson.A{
			bson.D{{Key: "case", Value: took}, {Key: "then", Value: others}},
			bson.D{{Key: "case", Value: joins}, {Key: "then", Value: withMine}},
		}},
		{Key: "default", Value: "$" + liveField},
	}}}
	return bson.D{{Key: "$let", Value: bson.D{
		{Key: "vars", Value: bson.D{{Key: "q", Value: entries}}},
		{Key: "in", Value: bson.D{{Key: "$cond", Value: bson.A{
			bson.D{{Key: "$eq", Value: bson.A{bson.D{{Key: "$size", Value: "$$q"}}, 0}}},
			"$$REMOVE",
			bson.D{{Key: "$arrayToObject", Value: "$$q"}},
		}}}},
	}}}
}

// renewQueue renews party's entries in the queues of names: one command for all of them.
func (b *Backend) renewQueue(ctx context.Context, party string, names []string) error {
	if b.serverNow {
		filter := bson.D{{Key: "name", Value: bson.D{{Key: "$in", Value: names}}}, {Key: entryPath(party), Value: bson.D{{Key: "$exists", Value: true}}}}
		k := queueKey(party)
		_, err := b.coll.UpdateMany(ctx, filter, mongo.Pipeline{
			{{Key: "$set", Value: bson.D{{Key: nowField, Value: "$$NOW"}}}},
			{{Key: "$set", Value: bson.D{{Key: queueField, Value: bson.D{{Key: "$mergeObjects", Value: bson.A{
				"$" + queueField,
				bson.D{{Key: k, Value: bson.D{{Key: "$mergeObjects", Value: bson.A{"$" + queueField + "." + k, bson.D{{Key: "seen", Value: "$" + nowField}}}}}}},
			}}}}}}},
			{{Key: "$unset", Value: nowField}},
		})
		return err
	}
	_, hi, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return err
	}
	entries := make([]string, len(names))
	for i, n := range names {
		entries[i] = entryName(n, party)
	}
	_, err = b.coll.UpdateMany(ctx, bson.D{{Key: "name", Value: bson.D{{Key: "$in", Value: entries}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "seen", Value: hi}, {Key: "expiresAt", Value: hi.Add(shylock.QueueLease)}}}})
	return err
}

// leaveQueue takes party's entry out of name's queue.
func (b *Backend) leaveQueue(ctx context.Context, party, name string) error {
	if !b.serverNow {
		_, err := b.coll.DeleteOne(ctx, byID(entryName(name, party)))
		return err
	}
	_, err := b.coll.UpdateOne(ctx,
		bson.D{{Key: "name", Value: name}, {Key: entryPath(party), Value: bson.D{{Key: "$exists", Value: true}}}},
		bson.D{{Key: "$unset", Value: bson.D{{Key: entryPath(party), Value: ""}}}})
	return err
}

// On the estimate path the queue cannot live in the record: the servers that take it (FerretDB
// 1.x) apply an update by reading the document and writing it back whole, so a waiter's entry
// written beside a release or a takeover could undo it. Each entry is a document of its own
// instead, written by its party's process alone: {_id and name: entryName, since, seen,
// expiresAt}.
// The attempt's one find reads the record and its entries together.

// An entry's name is the lock's name, a NUL (which no lock name holds) and the party's key, so
// that one range on name matches the record and its entries and nothing else: the cheapest
// filter for a server that finds by scanning, as FerretDB 1.x does.
func entryName(name, party string) string { return name + "\x00q" + queueKey(party) }

// isLock reports whether a record's name is a lock's: claims, queue entries and the probe's
// record have a NUL in theirs, which no lock name has.
func isLock(name string) bool { return !strings.Contains(name, "\x00") }

func withEntries(name string) bson.D {
	return bson.D{{Key: "name", Value: bson.D{{Key: "$gte", Value: name}, {Key: "$lt", Value: name + "\x00r"}}}}
}

type entryDoc struct {
	Name  string    `bson:"name"`
	Since time.Time `bson:"since"`
	Seen  time.Time `bson:"seen"`
}

// queued reports, on the estimate path, whether a live entry of another party than party's came
// first in rec's queue, judged at lo, the low end of the estimate of the server's clock (an
// entry that may still be live counts). It also returns the caller's live entry, if any, and
// the keys of the dead entries.
func queued(rec record, party string, lo time.Time) (ahead bool, mine *queueEntry, dead []string) {
	me := queueKey(party)
	if e, ok := rec.Queue[me]; ok && e.Seen.Add(shylock.QueueLease).After(lo) {
		mine = &e
	}
	for k, e := range rec.Queue {
		switch {
		case !e.Seen.Add(shylock.QueueLease).After(lo):
			dead = append(dead, k)
		case k != me && (mine == nil || e.Since.Before(mine.Since)):
			ahead = true
		}
	}
	return ahead, mine, dead
}

// joinEstimated puts req's party in the queue of the lock it was refused, or renews its entry, on
// the estimate path: one more command, sent only when the entry is missing or half through its
// lease.
func (b *Backend) joinEstimated(ctx context.Context, req shylock.AcquireRequest, rec record, lo, hi time.Time) {
	if !req.Wait {
		return
	}
	_, mine, _ := queued(rec, req.Queue, lo)
	if mine != nil && mine.Seen.Add(shylock.QueueLease/2).After(lo) {
		b.hub.Joined(req.Name, req.Queue)
		return
	}
	set := bson.D{{Key: "seen", Value: hi}, {Key: "expiresAt", Value: hi.Add(shylock.QueueLease)}}
	if mine == nil {
		set = append(set, bson.E{Key: "since", Value: hi})
	}
	entry := entryName(req.Name, req.Queue)
	_, err := b.coll.UpdateOne(ctx, byID(entry), bson.D{{Key: "$set", Value: set}, {Key: "$setOnInsert", Value: byName(entry)}},
		options.UpdateOne().SetUpsert(true))
	if err == nil || mongo.IsDuplicateKeyError(err) { // another waiter of this process wrote it
		b.hub.Joined(req.Name, req.Queue)
	}
}

// byID finds a queue entry by its _id, which is its name: the one filter that servers which
// find by scanning (FerretDB 1.x) answer from an index, so that a thousand waiters joining their
// queues do not scan the collection a thousand times. Its name, under the unique index, is what
// every other query matches on.
func byID(entry string) bson.D { return bson.D{{Key: "_id", Value: entry}} }

// leaveEstimated removes the caller's entry, once it took the lock, and the dead entries it saw.
func (b *Backend) leaveEstimated(ctx context.Context, req shylock.AcquireRequest, rec record, dead []string) {
	names := make(bson.A, 0, len(dead)+1)
	for _, k := range dead {
		names = append(names, req.Name+"\x00q"+k)
	}
	if _, mine := rec.Queue[queueKey(req.Queue)]; mine && !slices.Contains(dead, queueKey(req.Queue)) {
		names = append(names, entryName(req.Name, req.Queue))
	}
	if len(names) > 0 {
		_, _ = b.coll.DeleteMany(ctx, bson.D{{Key: "name", Value: bson.D{{Key: "$in", Value: names}}}})
	}
}
