package mongo

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/janitor"
)

// Holding implements shylock.Holdings. The index on owner (OwnerIndex) finds the record; claims,
// which carry their claimant's owner id, are not locks.
func (b *Backend) Holding(ctx context.Context, owner string) (shylock.Info, error) {
	if owner == "" {
		return shylock.Info{}, fmt.Errorf("%w: no lock is held by an empty owner id", shylock.ErrNotHeld)
	}
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return shylock.Info{}, err
	}
	recs, err := b.findLocks(ctx, bson.D{{Key: "owner", Value: owner}})
	if err != nil {
		return shylock.Info{}, fmt.Errorf("mongo: finding the holding of owner %q: %w", owner, err)
	}
	if len(recs) == 0 {
		return shylock.Info{}, fmt.Errorf("%w: no lock is held by owner %q (released, expired or taken over)", shylock.ErrNotHeld, owner)
	}
	return recs[0].info(lo), nil
}

// Held implements shylock.Holdings: the index on owner skips the released records, whose owner
// is empty. Records whose holders let them expire are read and left out here, until they are
// taken again or the grace period has passed: a filter on expiresAt as well would let the server
// choose the TTL index, which holds every record released before its lease ran out.
func (b *Backend) Held(ctx context.Context) ([]shylock.Info, error) {
	lo, _, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return nil, err
	}
	recs, err := b.findLocks(ctx, bson.D{{Key: "owner", Value: bson.D{{Key: "$gt", Value: ""}}}})
	if err != nil {
		return nil, fmt.Errorf("mongo: reading the held locks: %w", err)
	}
	out := make([]shylock.Info, 0, len(recs))
	for i := range recs {
		if in := recs[i].info(lo); in.Held {
			out = append(out, in)
		}
	}
	return out, nil
}

// findLocks returns the lock records that match filter, sorted by name. They are sorted here:
// asked to sort, the server could choose to walk the index on name, through every record.
func (b *Backend) findLocks(ctx context.Context, filter bson.D) ([]record, error) {
	cur, err := b.coll.Find(ctx, filter)
	if err != nil {
		return nil, err
	}
	var recs []record
	if err := cur.All(ctx, &recs); err != nil {
		return nil, err
	}
	out := recs[:0]
	for _, rec := range recs {
		if isLock(rec.Name) {
			out = append(out, rec)
		}
	}
	slices.SortFunc(out, func(a, b record) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Amend implements shylock.Holdings.
func (b *Backend) Amend(ctx context.Context, name, owner string, token uint64, a shylock.Amendment) (shylock.Info, error) {
	if err := shylock.ValidateName(name); err != nil {
		return shylock.Info{}, err
	}
	if err := a.Validate(); err != nil {
		return shylock.Info{}, err
	}
	if owner == "" {
		return shylock.Info{}, notHeld(name)
	}
	if b.readOnly {
		return shylock.Info{}, b.refuseWrite("amend", name)
	}
	if a.TTL != 0 && a.TTL <= b.offset { // as for Extend: no holder could trust such a lease
		return shylock.Info{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers", shylock.ErrInvalidTTL, a.TTL, b.offset)
	}
	lo, hi, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return shylock.Info{}, unapplied("amend", name, err)
	}
	var rec record
	if b.serverNow {
		set := bson.D{}
		if a.Label != nil {
			set = append(set, bson.E{Key: "label", Value: lit(*a.Label)})
		}
		switch {
		case a.TTL != 0:
			set = append(set, bson.E{Key: "renewedAt", Value: "$$NOW"},
				bson.E{Key: "expiresAt", Value: bson.D{{Key: "$add", Value: bson.A{"$$NOW", a.TTL.Milliseconds()}}}})
		case !a.ExpiresAt.IsZero():
			set = append(set, bson.E{Key: "renewedAt", Value: "$$NOW"}, bson.E{Key: "expiresAt", Value: lit(a.ExpiresAt)})
		}
		err = b.coll.FindOneAndUpdate(ctx, extendFilter(name, owner, token), mongo.Pipeline{{{Key: "$set", Value: set}}}, after).Decode(&rec)
	} else {
		set := bson.D{}
		if a.Label != nil {
			set = append(set, bson.E{Key: "label", Value: *a.Label})
		}
		switch {
		case a.TTL != 0:
			exp := lo.Add(a.TTL).Truncate(time.Millisecond)
			set = append(set, bson.E{Key: "renewedAt", Value: exp.Add(-a.TTL)}, bson.E{Key: "expiresAt", Value: exp})
		case !a.ExpiresAt.IsZero():
			set = append(set, bson.E{Key: "renewedAt", Value: lo.Truncate(time.Millisecond)}, bson.E{Key: "expiresAt", Value: a.ExpiresAt})
		}
		// A change of holder already under way ends the holding: amending it first would only
		// have to be undone.
		if changing, cerr := b.changing(ctx, name, int64(token)); cerr != nil || changing {
			if cerr != nil {
				return shylock.Info{}, unapplied("amend", name, cerr)
			}
			return shylock.Info{}, fmt.Errorf("%w: %q is being released or taken over", shylock.ErrNotHeld, name)
		}
		err = b.coll.FindOneAndUpdate(ctx,
			bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}, {Key: "token", Value: int64(token)},
				{Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: hi}}}},
			bson.D{{Key: "$set", Value: set}}, after).Decode(&rec)
		if err == nil {
			var undone bool
			if undone, err = b.undoneChange(ctx, name, rec); err != nil {
				return shylock.Info{}, opError("amend", name, err, true)
			} else if undone {
				return shylock.Info{}, fmt.Errorf("%w: %q was being released or taken over", shylock.ErrNotHeld, name)
			}
		}
	}
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return shylock.Info{}, notHeld(name)
	case err != nil:
		return shylock.Info{}, opError("amend", name, err, false)
	}
	return rec.info(lo), nil
}

// undoneChange makes sure that an amendment on a server without pipeline updates brought back
// no holding that a release or takeover ended. Such a server rewrites the record it read without
// checking the filter again, so a change of holder written between that read and that write is
// undone. Every change of holder first inserts a claim for a token above the holding's, and
// nothing else writes one: if a claim is there after the amendment's write, the amendment may
// have come between, and it reports true (the amendment fails). It waits for the change to land;
// if the record is still the holding's after that, the change was undone (or its writer went
// away), and it frees the record with the highest token claimed, so that the next holder's
// token is above every token issued. A release is then done, as it was asked; a takeover's
// holder (possible only if the amended lease ended during the amendment) learns of its loss at
// its next renewal, as after any takeover on such a server that a late write overtook.
func (b *Backend) undoneChange(ctx context.Context, name string, rec record) (bool, error) {
	var c record
	err := b.coll.FindOne(ctx, claimsAbove(name, rec.Token), options.FindOne().SetSort(bson.D{{Key: "token", Value: -1}})).Decode(&c)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return false, nil
	case err != nil:
		return false, err
	}
	ours := bson.D{{Key: "_id", Value: rec.ID}, {Key: "owner", Value: rec.Owner}, {Key: "token", Value: rec.Token}}
	for range changeLands / (10 * time.Millisecond) {
		switch err := b.coll.FindOne(ctx, ours).Err(); {
		case errors.Is(err, mongo.ErrNoDocuments):
			return true, nil
		case err != nil:
			return true, err
		}
		if err := janitor.Sleep(ctx, 10*time.Millisecond); err != nil {
			return true, err
		}
	}
	_, err = b.coll.UpdateOne(ctx, ours, bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}, {Key: "token", Value: c.Token}}}})
	if err == nil {
		b.hub.Notify(name)
		b.publish(ctx, name)
	}
	return true, err
}

// changing reports whether a change of holder of name's holding with token has begun: a claim
// for a later token is there.
func (b *Backend) changing(ctx context.Context, name string, token int64) (bool, error) {
	err := b.coll.FindOne(ctx, claimsAbove(name, token)).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	return err == nil, err
}

func claimsAbove(name string, token int64) bson.D {
	return bson.D{{Key: "name", Value: claimRange(name)}, {Key: "token", Value: bson.D{{Key: "$gt", Value: token}}}}
}

// changeLands is how long an amendment waits for a change of holder whose claim it found: the
// change's write follows its claim by a round trip.
const changeLands = 500 * time.Millisecond

var _ shylock.Holdings = (*Backend)(nil)
