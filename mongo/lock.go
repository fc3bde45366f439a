package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

func notHeld(name string) error {
	return fmt.Errorf("%w: %q is not held by this owner (expired, released or taken over)", shylock.ErrNotHeld, name)
}

var after = options.FindOneAndUpdate().SetReturnDocument(options.After)

// Extend implements shylock.Backend.
func (b *Backend) Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	if err := validate(name, ttl); err != nil {
		return shylock.Lease{}, err
	}
	if owner == "" {
		return shylock.Lease{}, notHeld(name)
	}
	if b.readOnly {
		return shylock.Lease{}, b.refuseWrite("extend", name)
	}
	if ttl <= b.offset {
		return shylock.Lease{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers", shylock.ErrInvalidTTL, ttl, b.offset)
	}
	var (
		rec record
		err error
	)
	if !b.serverNow {
		return b.extendEstimated(ctx, name, owner, token, ttl)
	}
	err = b.coll.FindOneAndUpdate(ctx, extendFilter(name, owner, token), extendUpdate(ttl), after).Decode(&rec)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return shylock.Lease{}, notHeld(name)
	case err != nil:
		return shylock.Lease{}, opError("extend", name, err, false)
	}
	return shylock.Lease{Token: token, ExpiresAt: rec.ExpiresAt, Valid: ttl - b.offset}, nil
}

// extendEstimated extends on servers that rewrite a matched record without checking the filter
// again. An extend there could otherwise land between a taker's read of the expired record and
// its replacement of it, and its holder would trust a lease that the taker has just taken; so,
// as a release does, it first claims the next token, which keeps takeovers off until the update
// has landed, and gives the claim up after it.
func (b *Backend) extendEstimated(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	lo, hi, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return shylock.Lease{}, unapplied("extend", name, err)
	}
	exp := lo.Add(ttl).Truncate(time.Millisecond)
	next := int64(token) + 1
	if err := b.guard(ctx, "extend", name, owner, claimName(name, next), next, hi); err != nil {
		return shylock.Lease{}, err
	}
	// Given up within the caller's deadline; one left behind expires a second after it was made.
	defer func() {
		_, _ = b.coll.DeleteOne(ctx, bson.D{{Key: "name", Value: claimName(name, next)}, {Key: "owner", Value: owner}})
	}()
	// Extend only a lease that is surely still running, as its holder believes.
	var rec record
	err = b.coll.FindOneAndUpdate(ctx,
		bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}, {Key: "token", Value: int64(token)},
			{Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: hi}}}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "renewedAt", Value: exp.Add(-ttl)}, {Key: "expiresAt", Value: exp}}}},
		after).Decode(&rec)
	if err == nil {
		// Such servers may report an update of a record that a taker deleted meanwhile:
		// only a read after the write proves the extension.
		err = b.coll.FindOne(ctx, bson.D{{Key: "_id", Value: rec.ID}, {Key: "owner", Value: owner},
			{Key: "expiresAt", Value: exp}}).Decode(&rec)
	}
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return shylock.Lease{}, notHeld(name)
	case err != nil:
		return shylock.Lease{}, opError("extend", name, err, true)
	}
	return shylock.Lease{Token: token, ExpiresAt: rec.ExpiresAt, Valid: exp.Sub(hi) - b.offset}, nil
}

// guard inserts the claim that keeps takeovers off while op of owner changes name's record. A
// claim of another owner there means the lock is being taken over: the error matches
// shylock.ErrNotHeld. Nothing has changed when it fails.
func (b *Backend) guard(ctx context.Context, op, name, owner, claim string, token int64, hi time.Time) error {
	_, err := b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: claim}, {Key: "owner", Value: owner},
		{Key: "token", Value: token}, {Key: "expiresAt", Value: hi.Add(releaseClaimFor)}})
	if !mongo.IsDuplicateKeyError(err) {
		if err != nil {
			return opError(op, name, err, false)
		}
		return nil
	}
	var c record
	switch err := b.coll.FindOne(ctx, byName(claim)).Decode(&c); {
	case err != nil && !errors.Is(err, mongo.ErrNoDocuments):
		return unapplied(op, name, err)
	case c.Owner != owner:
		return notHeld(name) // taken over, or being taken over
	}
	return nil // an earlier call of this holding's, whose reply was lost, made it
}

// Release implements shylock.Backend. The record stays, marked free, for the grace period, so
// the next acquire of the name is one round trip and its token continues the sequence.
func (b *Backend) Release(ctx context.Context, name, owner string, token uint64) error {
	if err := shylock.ValidateName(name); err != nil {
		return err
	}
	if owner == "" {
		return notHeld(name)
	}
	if b.readOnly {
		return b.refuseWrite("release", name)
	}
	var err error
	if b.serverNow {
		err = b.releaseServerNow(ctx, name, owner, token)
	} else {
		err = b.releaseEstimated(ctx, name, owner, token)
	}
	if err != nil {
		return err
	}
	b.hub.Notify(name)
	b.publish(ctx, name)
	return nil
}

func (b *Backend) releaseServerNow(ctx context.Context, name, owner string, token uint64) error {
	res, err := b.coll.UpdateOne(ctx, releaseFilter(name, owner, token), freeUpdate)
	switch {
	case err != nil:
		return opError("release", name, err, false)
	case res.MatchedCount == 0:
		return notHeld(name)
	}
	return nil
}

// releaseClaimFor is how long the claim a release or an extend makes on servers without pipeline
// updates keeps takeovers off once the lease has ended: an extend whose update reaches the server
// later than that after its claim could land inside a takeover (a late release cannot harm one:
// a takeover replaces the record, and the release rewrites the old one, which is gone). It is
// also how long one that dies between its claim and its update holds back the next holder
// beyond the lease's end.
const releaseClaimFor = time.Second

// releaseEstimated frees owner's record on servers that rewrite a matched record without
// checking the filter again. A takeover replaces the record, so a release that such a server
// applies after one rewrites a record that is gone. A release first claims the next token all
// the same, as a takeover does: no takeover starts while it is under way, a takeover already
// under way owns the claim and makes the release find nothing, and an amendment, which takes no
// claim, sees by the claim that the holding is ending (see undoneChange). It frees the record
// with that token: releasing costs a token; the sequence still only grows.
func (b *Backend) releaseEstimated(ctx context.Context, name, owner string, token uint64) error {
	if token == 0 {
		// Clean-up after an attempt of unknown outcome: it may have left a claim, and its
		// token, if it took the lock, is on the record.
		if _, err := b.coll.DeleteMany(ctx, bson.D{{Key: "owner", Value: owner}, {Key: "name", Value: claimRange(name)}}); err != nil {
			return opError("release", name, err, false)
		}
		var cur record
		switch err := b.coll.FindOne(ctx, releaseFilter(name, owner, 0)).Decode(&cur); {
		case errors.Is(err, mongo.ErrNoDocuments):
			return notHeld(name)
		case err != nil:
			return unapplied("release", name, err)
		}
		token = uint64(cur.Token)
	}
	_, hi, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return unapplied("release", name, err)
	}
	next := int64(token) + 1
	if err := b.guard(ctx, "release", name, owner, claimName(name, next), next, hi); err != nil {
		return err
	}
	res, err := b.coll.UpdateOne(ctx, releaseFilter(name, owner, token),
		bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}, {Key: "token", Value: next}}}})
	switch {
	case err != nil:
		return opError("release", name, err, true)
	case res.MatchedCount == 0:
		return notHeld(name)
	}
	return nil
}
