package mongo

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

// On the estimate path every attempt begins with one find of its record, its queue entries and
// its claims, and the servers that take that path (FerretDB 1.x) answer any find but one by _id
// with a scan of the whole collection. The reads that attempts ask for while such a find is
// under way therefore go out together in the next one: a process whose thousand waiters start
// at once costs the server a few scans, not a thousand. A read is always sent after its caller
// asked for it, so it sees the state of its own moment, as a read of its own would.

// readBatch is the most names one find asks about.
const readBatch = 256

// readSpanAbove is how many names a find asks about one by one at most; a larger batch reads
// the span from its least name to its greatest. FerretDB 1.24 compares every document it scans
// with each range of an $or, which costs more, from about five names on, than sending the
// documents between the names: with a thousand locks, one name's ranges took 65 ms, 64 names'
// 740 ms, and the whole collection 96 ms.
const readSpanAbove = 4

// reads coalesces the estimate path's attempt reads. One goroutine at a time sends them, while
// any are asked for; Close ends it.
type reads struct {
	coll *mongo.Collection
	ctx  context.Context // ends at Close
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	queue   []*readCall // the first is sent next; the last takes new names until full
	running bool
}

// readCall is one find for several names, and what it found.
type readCall struct {
	names map[string]*found
	done  chan struct{} // closed once names hold the reply, or err is set
	err   error
}

type found struct {
	rec    record
	exists bool // rec is the lock's record, not only its queue and claims
}

func newReads(coll *mongo.Collection) *reads {
	ctx, stop := context.WithCancel(context.Background())
	return &reads{coll: coll, ctx: ctx, stop: stop}
}

// read returns name's record, with its queue in rec.Queue and the claim of the highest token
// (the last change of holder begun) in rec.claim; mongo.ErrNoDocuments when it has no record,
// its claims still read. A takeover replaces the record (a delete, then an insert), so an
// attempt that finds no record must see whether one is under way.
func (r *reads) read(ctx context.Context, name string) (record, error) {
	r.mu.Lock()
	if r.ctx.Err() != nil {
		r.mu.Unlock()
		return record{}, errClosed
	}
	var c *readCall
	if n := len(r.queue); n > 0 && len(r.queue[n-1].names) < readBatch {
		c = r.queue[n-1]
	} else {
		c = &readCall{names: map[string]*found{}, done: make(chan struct{})}
		r.queue = append(r.queue, c)
	}
	f := c.names[name]
	if f == nil {
		f = &found{}
		c.names[name] = f
	}
	if !r.running {
		r.running = true
		r.wg.Add(1)
		go r.run()
	}
	r.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		return record{}, ctx.Err()
	}
	switch {
	case c.err != nil:
		return record{}, c.err
	case !f.exists:
		return f.rec, mongo.ErrNoDocuments
	}
	return f.rec, nil
}

func (r *reads) run() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.running = false
			r.mu.Unlock()
			return
		}
		c := r.queue[0]
		r.queue = r.queue[1:]
		r.mu.Unlock()
		// Bounded as an attempt is: its callers wait for it no longer than their own contexts.
		ctx, cancel := context.WithTimeout(r.ctx, shylock.AttemptTimeout)
		c.err = c.find(ctx, r.coll)
		cancel()
		close(c.done)
	}
}

// close ends the goroutine that sends the reads; reads asked for later fail with errClosed.
func (r *reads) close() {
	r.mu.Lock()
	r.stop()
	r.mu.Unlock()
	r.wg.Wait()
}

// find reads the records, queue entries and claims of c's names in one find. A name's range
// [name, name+"\x00r") holds its record and its entries and nothing else, and its claims are
// named "\x00<name>\x00<token>": no lock name holds a NUL.
func (c *readCall) find(ctx context.Context, coll *mongo.Collection) error {
	names := slices.Sorted(maps.Keys(c.names))
	var ranges bson.A
	if first, last := names[0], names[len(names)-1]; len(names) > readSpanAbove {
		ranges = bson.A{
			bson.D{{Key: "name", Value: bson.D{{Key: "$gte", Value: first}, {Key: "$lt", Value: last + "\x00r"}}}},
			bson.D{{Key: "name", Value: bson.D{{Key: "$gt", Value: "\x00" + first + "\x00"}, {Key: "$lt", Value: "\x00" + last + "\x01"}}}},
		}
	} else {
		for _, n := range names {
			ranges = append(ranges, withEntries(n), bson.D{{Key: "name", Value: claimRange(n)}})
		}
	}
	filter := ranges[0]
	if len(ranges) > 1 {
		filter = bson.D{{Key: "$or", Value: ranges}}
	}
	opts := options.Find()
	if len(names) > readSpanAbove {
		// A span may hold hundreds of documents: all in the first reply, as a probe's. FerretDB
		// 1.24 holds one of its 100 SQLite connections for each open cursor, for as long as the
		// client connection lives, and a find that outlived its caller's deadline left one open
		// that nothing would ever read: a hundred such stalled that server. Not for a few names,
		// whose documents fit the first batch anyway: it spends time in proportion to the batch
		// size asked for.
		opts.SetBatchSize(probeBatch)
	}
	cur, err := coll.Find(ctx, filter, opts)
	if err != nil {
		return err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		n, _ := cur.Current.Lookup("name").StringValueOK()
		var err error
		switch i := strings.IndexByte(n, 0); {
		case i == 0: // a claim
			f := c.names[n[1:max(1, strings.LastIndexByte(n, 0))]]
			if f == nil {
				continue
			}
			var cl record
			if err = cur.Decode(&cl); err == nil && (f.rec.claim == nil || cl.Token > f.rec.claim.Token) {
				f.rec.claim = &cl
			}
		case i > 0: // a queue entry
			f := c.names[n[:i]]
			if f == nil {
				continue
			}
			var e entryDoc
			if err = cur.Decode(&e); err == nil {
				if f.rec.Queue == nil {
					f.rec.Queue = map[string]queueEntry{}
				}
				f.rec.Queue[n[i+2:]] = queueEntry{Since: e.Since, Seen: e.Seen}
			}
		default:
			f := c.names[n]
			if f == nil {
				continue
			}
			q, cl := f.rec.Queue, f.rec.claim
			if err = cur.Decode(&f.rec); err == nil {
				f.rec.Queue, f.rec.claim, f.exists = q, cl, true
			}
		}
		if err != nil {
			return err
		}
	}
	return cur.Err()
}
