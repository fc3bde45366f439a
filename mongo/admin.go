package mongo

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

// info describes rec as of lo, the low end of the estimate of the server's clock: a lock that
// may still be live counts as held, and Remaining is an upper bound. A released record has no
// expiry (its expiresAt says when it was freed, for the TTL index).
func (rec *record) info(lo time.Time) shylock.Info {
	in := shylock.Info{Name: rec.Name, Owner: rec.Owner, Label: rec.Label, Token: uint64(rec.Token),
		AcquiredAt: rec.AcquiredAt, RenewedAt: rec.RenewedAt}
	if rec.Owner != "" {
		in.ExpiresAt = rec.ExpiresAt
	}
	if rec.Owner != "" && rec.ExpiresAt.After(lo) {
		in.Held, in.Remaining = true, rec.ExpiresAt.Sub(lo)
	}
	return in
}

// probe tells the waiters of names which of them may be taken now, and for each that may not,
// how long at most until its lease ends and the clock offset has passed. One find asks about
// all of them, in one reply: by name where the server finds names through the unique index, and
// as all held records on the estimate path once there are more than probeScanAbove names. The
// servers that take the estimate path (FerretDB 1.x) find by name with a scan of every record and
// compare each with every name of an $in, while the held records cost one comparison each.
func (b *Backend) probe(ctx context.Context, names []string) (map[string]time.Duration, error) {
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	filter := bson.D{{Key: "name", Value: bson.D{{Key: "$in", Value: names}}}}
	opts := options.Find().SetProjection(bson.D{{Key: "name", Value: 1}, {Key: "owner", Value: 1}, {Key: "expiresAt", Value: 1}})
	if !b.serverNow && len(names) > probeScanAbove {
		filter = bson.D{{Key: "owner", Value: bson.D{{Key: "$gt", Value: ""}}}}
		// Most in the first reply. Not more: FerretDB 1.24 spends time and memory in proportion
		// to the batch size asked for (20 ms for a find of 20 records with the largest one,
		// against 1.5 ms; and its memory grew by gigabytes a second under a poller's probes).
		opts.SetBatchSize(probeBatch)
	} else {
		opts.SetLimit(int64(len(names))).SetBatchSize(int32(len(names) + 1))
	}
	cur, err := b.coll.Find(ctx, filter, opts)
	if err != nil {
		return nil, err
	}
	defer cur.Close(context.WithoutCancel(ctx))
	waited := make(map[string]bool, len(names))
	for _, n := range names {
		waited[n] = true
	}
	held := map[string]time.Duration{}
	for cur.Next(ctx) {
		var rec record
		if err := cur.Decode(&rec); err != nil {
			return nil, err
		}
		if end := rec.ExpiresAt.Add(b.offset); waited[rec.Name] && rec.Owner != "" && end.After(lo) {
			held[rec.Name] = end.Sub(lo)
		}
	}
	return held, cur.Err()
}

// probeScanAbove is how many names a probe on the estimate path asks about by name at most.
const probeScanAbove = 8

// probeBatch is the batch size of a probe that reads every held record.
const probeBatch = 10000

// Inspect implements shylock.Backend.
func (b *Backend) Inspect(ctx context.Context, name string) (shylock.Info, error) {
	if err := shylock.ValidateName(name); err != nil {
		return shylock.Info{}, err
	}
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return shylock.Info{}, err
	}
	var rec record
	err = b.coll.FindOne(ctx, byName(name)).Decode(&rec)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return shylock.Info{Name: name}, nil
	case err != nil:
		return shylock.Info{}, opError("inspect", name, err, false)
	}
	return rec.info(lo), nil
}

// List implements shylock.Backend. The prefix is matched literally through an anchored,
// escaped regular expression, which the unique index on name serves as a range scan.
func (b *Backend) List(ctx context.Context, prefix string) ([]shylock.Info, error) {
	if err := shylock.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	filter := bson.D{{Key: "name", Value: bson.D{{Key: "$gt", Value: "\x00\uffff"}}}} // claims start with NUL
	if prefix != "" {
		filter = bson.D{{Key: "name", Value: bson.D{{Key: "$regex", Value: "^" + regexp.QuoteMeta(prefix)}}}}
	}
	cur, err := b.coll.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "name", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongo: list %q: %w", prefix, err)
	}
	var recs []record
	if err := cur.All(ctx, &recs); err != nil {
		return nil, fmt.Errorf("mongo: list %q: %w", prefix, err)
	}
	out := make([]shylock.Info, 0, len(recs))
	for i := range recs {
		if strings.HasPrefix(recs[i].Name, prefix) && isLock(recs[i].Name) {
			out = append(out, recs[i].info(lo))
		}
	}
	return out, nil
}

// ForceRelease implements shylock.Backend. Like Release it keeps the record, so tokens go on.
func (b *Backend) ForceRelease(ctx context.Context, name string) (shylock.Info, error) {
	if err := shylock.ValidateName(name); err != nil {
		return shylock.Info{}, err
	}
	if b.readOnly {
		return shylock.Info{}, b.refuseWrite("force-release", name)
	}
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return shylock.Info{}, err
	}
	var rec record
	err = b.coll.FindOneAndUpdate(ctx,
		bson.D{{Key: "name", Value: name}, {Key: "owner", Value: bson.D{{Key: "$ne", Value: ""}}}},
		freeUpdate).Decode(&rec)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return shylock.Info{Name: name}, fmt.Errorf("%w: nobody holds %q", shylock.ErrNotHeld, name)
	case err != nil:
		return shylock.Info{}, opError("force-release", name, err, false)
	}
	b.hub.Notify(name)
	b.publish(ctx, name)
	in := rec.info(lo)
	if !in.Held {
		return in, fmt.Errorf("%w: nobody holds %q (its last holder's lease had expired)", shylock.ErrNotHeld, name)
	}
	return in, nil
}
