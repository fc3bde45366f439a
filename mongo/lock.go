package mongo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

// record is the stored document.
type record struct {
	ID         bson.ObjectID `bson:"_id,omitempty"`
	Name       string        `bson:"name"`
	Owner      string        `bson:"owner"`
	Label      string        `bson:"label"`
	Token      int64         `bson:"token"`
	AcquiredAt time.Time     `bson:"acquiredAt"`
	RenewedAt  time.Time     `bson:"renewedAt"`
	ExpiresAt  time.Time     `bson:"expiresAt"`
}

// released is the expiry a released record gets: long past on every clock, so any acquire's
// filter matches it, and the TTL monitor removes it on its next pass.
var released = time.Unix(0, 0).UTC()

// A record's first token is the server's time in microseconds when it was created; later
// holdings add one. An old record's tokens could only catch up with a new record's first one
// if the name had been acquired more than once per microsecond of its life.
func firstToken(serverTime time.Time) int64 { return serverTime.UnixMicro() }

var after = options.FindOneAndUpdate().SetReturnDocument(options.After)

func lit(v any) bson.D { return bson.D{{Key: "$literal", Value: v}} }

func validate(name string, ttl time.Duration) error {
	if err := shylock.ValidateName(name); err != nil {
		return err
	}
	return shylock.ValidateTTL(ttl)
}

// Acquire implements shylock.Backend.
func (b *Backend) Acquire(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	if err := validate(req.Name, req.TTL); err != nil {
		return shylock.Lease{}, err
	}
	if req.Owner == "" {
		return shylock.Lease{}, fmt.Errorf("mongo: acquire %q: empty owner id", req.Name)
	}
	if b.serverNow {
		return b.acquireServerNow(ctx, req)
	}
	return b.acquireEstimated(ctx, req)
}

// acquireServerNow takes a free, expired or own lock in one upsert whose filter and update read
// the server's clock. A live lock of another owner fails the filter, the upsert then collides
// with it on the unique index, and E11000 means held.
func (b *Backend) acquireServerNow(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	filter := bson.D{
		{Key: "name", Value: req.Name},
		{Key: "$expr", Value: bson.D{{Key: "$or", Value: bson.A{
			bson.D{{Key: "$lte", Value: bson.A{"$expiresAt", "$$NOW"}}},
			bson.D{{Key: "$eq", Value: bson.A{"$owner", lit(req.Owner)}}},
		}}}},
	}
	update := mdb.Pipeline{{{Key: "$set", Value: bson.D{
		{Key: "owner", Value: lit(req.Owner)},
		{Key: "label", Value: lit(req.Label)},
		{Key: "token", Value: bson.D{{Key: "$max", Value: bson.A{
			bson.D{{Key: "$add", Value: bson.A{bson.D{{Key: "$ifNull", Value: bson.A{"$token", 0}}}, 1}}},
			bson.D{{Key: "$multiply", Value: bson.A{bson.D{{Key: "$toLong", Value: "$$NOW"}}, 1000}}},
		}}}},
		{Key: "acquiredAt", Value: "$$NOW"},
		{Key: "renewedAt", Value: "$$NOW"},
		{Key: "expiresAt", Value: bson.D{{Key: "$add", Value: bson.A{"$$NOW", req.TTL.Milliseconds()}}}},
	}}}}
	var rec record
	err := b.coll.FindOneAndUpdate(ctx, filter, update, options.FindOneAndUpdate().
		SetUpsert(true).SetReturnDocument(options.After)).Decode(&rec)
	if err != nil {
		return shylock.Lease{}, b.acquireError(req.Name, err)
	}
	// The server stamped expiresAt after this request was sent, so the lease lasts at least
	// TTL from the caller's send time.
	return shylock.Lease{Token: uint64(rec.Token), ExpiresAt: rec.ExpiresAt, Valid: req.TTL}, nil
}

// acquireEstimated serves servers without pipeline updates, judging expiry at the low end of
// the estimate of the server's clock, so it never takes a lock that may still be live.
//
// Such servers (FerretDB among them) may apply an update without re-checking its filter, so two
// clients could both take one free record. Only inserts under the unique index are atomic
// there, so a takeover first inserts a claim record for the next token, named
// "\x00<name>\x00<token>" (no lock name contains NUL): one client wins it, and only that one
// updates the lock's record. The record itself is never deleted here, so tokens simply count on;
// only a new name (or one whose record was deleted behind the library's back) starts from the
// server's clock in microseconds.
func (b *Backend) acquireEstimated(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	for range 3 {
		var cur record
		err := b.coll.FindOne(ctx, bson.D{{Key: "name", Value: req.Name}}).Decode(&cur)
		lo, hi, berr := b.server.Bounds(ctx)
		if berr != nil {
			return shylock.Lease{}, berr
		}
		exp := lo.Add(req.TTL).Truncate(time.Millisecond) // BSON dates hold milliseconds
		valid := exp.Sub(hi)                              // ends before the earliest moment others see it expired
		now := lo.Add(hi.Sub(lo) / 2)
		switch {
		case valid <= 0:
			return shylock.Lease{}, fmt.Errorf("mongo: acquire %q: the server clock is uncertain by %v, more than the TTL %v; use a longer TTL",
				req.Name, hi.Sub(lo), req.TTL)
		case errors.Is(err, mdb.ErrNoDocuments):
			tok := firstToken(hi)
			_, err := b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: req.Name}, {Key: "owner", Value: req.Owner},
				{Key: "label", Value: req.Label}, {Key: "token", Value: tok}, {Key: "acquiredAt", Value: now},
				{Key: "renewedAt", Value: now}, {Key: "expiresAt", Value: exp}})
			if mdb.IsDuplicateKeyError(err) {
				continue // another client created it first; look again
			}
			if err != nil {
				return shylock.Lease{}, b.acquireError(req.Name, err)
			}
			return shylock.Lease{Token: uint64(tok), ExpiresAt: exp, Valid: valid}, nil
		case err != nil:
			return shylock.Lease{}, b.acquireError(req.Name, err)
		case cur.Owner == req.Owner && cur.ExpiresAt.After(hi):
			// An earlier attempt of this owner was applied; its reply was lost.
			return shylock.Lease{Token: uint64(cur.Token), ExpiresAt: cur.ExpiresAt, Valid: cur.ExpiresAt.Sub(hi)}, nil
		case cur.Owner != "" && cur.ExpiresAt.After(lo):
			return shylock.Lease{}, fmt.Errorf("%w: %q is held by %q", shylock.ErrLocked, req.Name, cur.Label)
		}
		next := cur.Token + 1
		won, err := b.claim(ctx, req, next, lo, exp)
		if err != nil {
			return shylock.Lease{}, err
		}
		if !won {
			return shylock.Lease{}, fmt.Errorf("%w: %q is being taken over by another client", shylock.ErrLocked, req.Name)
		}
		res, err := b.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: cur.ID}, {Key: "token", Value: cur.Token}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: req.Owner}, {Key: "label", Value: req.Label},
				{Key: "token", Value: next}, {Key: "acquiredAt", Value: now}, {Key: "renewedAt", Value: now},
				{Key: "expiresAt", Value: exp}}}})
		if err != nil {
			return shylock.Lease{}, b.acquireError(req.Name, err)
		}
		if res.MatchedCount == 0 {
			continue // deleted behind our back; look again
		}
		if next%sweepEvery == 0 {
			// Claims below the record's token have served: nobody can use one any more.
			_, _ = b.coll.DeleteMany(ctx, bson.D{{Key: "name", Value: claimRange(req.Name)}, {Key: "token", Value: bson.D{{Key: "$lt", Value: next}}}})
		}
		return shylock.Lease{Token: uint64(next), ExpiresAt: exp, Valid: valid}, nil
	}
	return shylock.Lease{}, fmt.Errorf("%w: %q (it changed hands during the attempt)", shylock.ErrLocked, req.Name)
}

func claimName(name string, token int64) string {
	return "\x00" + name + "\x00" + strconv.FormatInt(token, 10)
}

// claimRange matches the names of every claim of the lock name.
func claimRange(name string) bson.D {
	return bson.D{{Key: "$gt", Value: "\x00" + name + "\x00"}, {Key: "$lt", Value: "\x00" + name + "\x01"}}
}

// sweepEvery is how many takeovers of a name pass between deletions of its spent claims: one
// DeleteMany now and then costs less than a DeleteOne per takeover.
const sweepEvery = 16

// claim inserts the claim for token next of req.Name and reports whether this client won it. A
// claim left by a client that died before using it expires with the lease it was for.
func (b *Backend) claim(ctx context.Context, req shylock.AcquireRequest, next int64, lo, exp time.Time) (bool, error) {
	name := claimName(req.Name, next)
	for range 2 {
		_, err := b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: name}, {Key: "owner", Value: req.Owner},
			{Key: "token", Value: next}, {Key: "expiresAt", Value: exp}})
		if err == nil {
			return true, nil
		}
		if !mdb.IsDuplicateKeyError(err) {
			return false, b.acquireError(req.Name, err)
		}
		var c record
		if err := b.coll.FindOne(ctx, bson.D{{Key: "name", Value: name}}).Decode(&c); err != nil {
			continue // gone already: try again
		}
		if c.Owner == req.Owner {
			return true, nil // our own earlier attempt
		}
		if c.ExpiresAt.After(lo) {
			return false, nil // another client is taking over
		}
		_, _ = b.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: c.ID}, {Key: "owner", Value: c.Owner}})
	}
	return false, nil
}

func (b *Backend) acquireError(name string, err error) error {
	if mdb.IsDuplicateKeyError(err) {
		return fmt.Errorf("%w: %q", shylock.ErrLocked, name)
	}
	return fmt.Errorf("mongo: acquire %q: %w", name, err)
}

func notHeld(name string) error {
	return fmt.Errorf("%w: %q is not held by this owner (expired, released or taken over)", shylock.ErrNotHeld, name)
}

// Extend implements shylock.Backend.
func (b *Backend) Extend(ctx context.Context, name, owner string, token uint64, ttl time.Duration) (shylock.Lease, error) {
	if err := validate(name, ttl); err != nil {
		return shylock.Lease{}, err
	}
	if owner == "" {
		return shylock.Lease{}, notHeld(name)
	}
	var (
		rec   record
		err   error
		valid = ttl
	)
	if b.serverNow {
		err = b.coll.FindOneAndUpdate(ctx,
			bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}, {Key: "token", Value: int64(token)},
				{Key: "$expr", Value: bson.D{{Key: "$gt", Value: bson.A{"$expiresAt", "$$NOW"}}}}},
			mdb.Pipeline{{{Key: "$set", Value: bson.D{
				{Key: "renewedAt", Value: "$$NOW"},
				{Key: "expiresAt", Value: bson.D{{Key: "$add", Value: bson.A{"$$NOW", ttl.Milliseconds()}}}},
			}}}}, after).Decode(&rec)
	} else {
		lo, hi, berr := b.server.Bounds(ctx)
		if berr != nil {
			return shylock.Lease{}, berr
		}
		exp := lo.Add(ttl).Truncate(time.Millisecond)
		valid = exp.Sub(hi)
		// Extend only a lease that is surely still running, as its holder believes.
		err = b.coll.FindOneAndUpdate(ctx,
			bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}, {Key: "token", Value: int64(token)},
				{Key: "expiresAt", Value: bson.D{{Key: "$gt", Value: hi}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "renewedAt", Value: lo.Add(hi.Sub(lo) / 2)}, {Key: "expiresAt", Value: exp}}}},
			after).Decode(&rec)
		if err == nil {
			// Such servers may report an update of a record that a taker deleted meanwhile:
			// only a read after the write proves the extension.
			err = b.coll.FindOne(ctx, bson.D{{Key: "_id", Value: rec.ID}, {Key: "owner", Value: owner},
				{Key: "expiresAt", Value: exp}}).Decode(&rec)
		}
	}
	switch {
	case errors.Is(err, mdb.ErrNoDocuments):
		return shylock.Lease{}, notHeld(name)
	case err != nil:
		return shylock.Lease{}, fmt.Errorf("mongo: extend %q: %w", name, err)
	}
	return shylock.Lease{Token: token, ExpiresAt: rec.ExpiresAt, Valid: valid}, nil
}

// Release implements shylock.Backend. The record stays, marked free, so the next acquire of
// the name is one round trip and its token continues the sequence.
func (b *Backend) Release(ctx context.Context, name, owner string, token uint64) error {
	if err := shylock.ValidateName(name); err != nil {
		return err
	}
	if owner == "" {
		return notHeld(name)
	}
	filter := bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}}
	if token != 0 {
		filter = append(filter, bson.E{Key: "token", Value: int64(token)})
	}
	if token == 0 && !b.serverNow {
		// Cleaning up after an attempt of unknown outcome: it may have left a claim.
		_, err := b.coll.DeleteMany(ctx, bson.D{{Key: "owner", Value: owner}, {Key: "name", Value: claimRange(name)}})
		if err != nil {
			return fmt.Errorf("mongo: release %q: %w", name, err)
		}
	}
	res, err := b.coll.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}, {Key: "expiresAt", Value: released}}}})
	switch {
	case err != nil:
		return fmt.Errorf("mongo: release %q: %w", name, err)
	case res.MatchedCount == 0:
		return notHeld(name)
	}
	b.hub.Notify(name)
	return nil
}
