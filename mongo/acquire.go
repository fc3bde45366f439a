package mongo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/janitor"
)

// record is the stored document.
type record struct {
	ID         any                   `bson:"_id,omitempty"` // an ObjectID; a queue entry's is its name
	Name       string                `bson:"name"`
	Owner      string                `bson:"owner"`
	Label      string                `bson:"label"`
	Token      int64                 `bson:"token"`
	AcquiredAt time.Time             `bson:"acquiredAt"`
	RenewedAt  time.Time             `bson:"renewedAt"`
	ExpiresAt  time.Time             `bson:"expiresAt"`
	CreatedAt  time.Time             `bson:"createdAt"`
	State      string                `bson:"_shylockState,omitempty"` // "late" or "queued" from the last attempt that did not take it
	Queue      map[string]queueEntry `bson:"queue,omitempty"`
	Party      string                `bson:"party,omitempty"` // queueKey of the holder's party
	Take       bool                  `bson:"take,omitempty"`  // a claim of a takeover's, not of a release's or an extend's

	// On the estimate path, read with the record: the claim of the highest token of its name.
	claim *record
}

// A record's first token is the server's time in microseconds when it was created; later
// holdings add one. An old record's tokens could only catch up with a new record's first one
// if the name had been acquired more than once per microsecond of its life.
func firstToken(serverTime time.Time) int64 { return serverTime.UnixMicro() }

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
	if b.readOnly {
		return shylock.Lease{}, b.refuseWrite("acquire", req.Name)
	}
	if b.closed.Load() {
		return shylock.Lease{}, errClosed
	}
	if req.TTL <= b.offset {
		return shylock.Lease{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers, so no holder could trust it; "+
			"use a longer TTL or set mongo.WithMaxClockOffset", shylock.ErrInvalidTTL, req.TTL, b.offset)
	}
	if b.serverNow {
		return b.acquireServerNow(ctx, req)
	}
	return b.acquireEstimated(ctx, req)
}

func held(name string, rec record) error {
	return &shylock.HeldError{Name: name, Label: rec.Label, Token: uint64(rec.Token), ExpiresAt: rec.ExpiresAt}
}

// acquireServerNow takes a free, expired or own lock in one findAndModify whose pipeline reads
// the server's clock, and reads who holds it from the document it returns.
func (b *Backend) acquireServerNow(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	deadline, err := b.attemptDeadline(ctx, req.Owner)
	if err != nil {
		return shylock.Lease{}, unapplied("acquire", req.Name, err)
	}
	rec, err := b.upsert(ctx, req, deadline)
	switch {
	case err != nil:
		return shylock.Lease{}, err
	case rec.State == stateLate:
		return shylock.Lease{}, fmt.Errorf("mongo: acquire %q: %w: the attempt reached the server after its deadline (%s), and the server refused it",
			req.Name, shylock.ErrUnavailable, deadline.UTC().Format(time.RFC3339Nano))
	case rec.Owner != req.Owner:
		if _, ok := rec.Queue[queueKey(req.Queue)]; ok && req.Wait {
			b.hub.Joined(req.Name, req.Queue)
		}
		if rec.State == stateQueued {
			return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Queued: true}
		}
		return shylock.Lease{}, held(req.Name, rec)
	}
	b.hub.Took(req.Name, req.Queue)
	// The server stamped expiresAt after this request was sent, so the lease lasts at least
	// TTL from the caller's send time, by that server's clock.
	return shylock.Lease{Token: uint64(rec.Token), ExpiresAt: rec.ExpiresAt, Valid: req.TTL - b.offset}, nil
}

// attemptDeadline is the server time after which an acquire attempt sent now must not take
// effect: its context's deadline, at most shylock.AttemptTimeout away, by the high end of the
// estimate of the server's clock, plus the clock offset, so that no server judges an attempt
// late that reached it in time. Abandon waits for the latest deadline of an owner before its
// last release.
func (b *Backend) attemptDeadline(ctx context.Context, owner string) (time.Time, error) {
	_, hi, err := b.server.clock.Bounds(ctx)
	if err != nil {
		return time.Time{}, err
	}
	deadline := janitor.AttemptDeadline(ctx, hi, shylock.AttemptTimeout, b.offset)
	b.inflight.Note(owner, deadline)
	return deadline, nil
}

// upsert sends the server-clock acquire and returns the record as it left it.
func (b *Backend) upsert(ctx context.Context, req shylock.AcquireRequest, deadline time.Time) (record, error) {
	var (
		rec record
		err error
	)
	for range 3 {
		rec = record{}
		err = b.coll.FindOneAndUpdate(ctx, byName(req.Name), acquireUpdate(req, b.offset, deadline),
			options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Decode(&rec)
		if err == nil {
			break
		}
		if !upsertRace(err) {
			return rec, opError("acquire", req.Name, err, false)
		}
		// Another client inserted the record first, and nothing was applied. Read it before
		// contending again: where such races cost a deadlock timeout (FerretDB over
		// PostgreSQL), a loser learns at once that the lock is held.
		if cur, live, rerr := b.readLive(ctx, req.Name); rerr != nil {
			return rec, unapplied("acquire", req.Name, fmt.Errorf("a concurrent acquire got in the way (%w), and reading the record failed: %w", err, rerr))
		} else if live && cur.Owner != req.Owner {
			return cur, nil
		}
	}
	if err != nil {
		return rec, unapplied("acquire", req.Name, fmt.Errorf("concurrent acquires kept getting in the way: %w", err))
	}
	if rec.Owner == req.Owner && rec.CreatedAt.Equal(rec.AcquiredAt) {
		// This holding may have created the record, and maybe the collection with it: make
		// sure the unique index is there, or nothing stops a second record of this name.
		if err := b.ensureUnique(ctx); err != nil {
			return rec, b.undoCreation(ctx, req, err)
		}
	}
	return rec, nil
}

// readLive reads name's record and reports whether it is held by a lease that has not expired
// by the server's clock, whichever server judges it.
func (b *Backend) readLive(ctx context.Context, name string) (record, bool, error) {
	var rec record
	err := b.coll.FindOne(ctx, byName(name)).Decode(&rec)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return rec, false, nil
	}
	if err != nil {
		return rec, false, err
	}
	_, hi, err := b.server.clock.Bounds(ctx)
	rec.State = "" // a late attempt's mark says nothing about this read
	return rec, err == nil && rec.Owner != "" && rec.ExpiresAt.Add(b.offset).After(hi), err
}

// undoCreation removes a record that an acquire created when the unique index on name could
// not be ensured (it fails to build while two records of one name exist), and says why.
func (b *Backend) undoCreation(ctx context.Context, req shylock.AcquireRequest, why error) error {
	if _, err := b.coll.DeleteOne(ctx, bson.D{{Key: "name", Value: req.Name}, {Key: "owner", Value: req.Owner}}); err != nil {
		return fmt.Errorf("mongo: acquire %q: the unique index on name is missing and could not be created (%w), "+
			"and the record this acquire created could not be removed: %w", req.Name, why, err)
	}
	return fmt.Errorf("mongo: acquire %q: the unique index on name is missing and could not be created: %w", req.Name, why)
}

// acquireEstimated serves servers without pipeline updates, judging expiry at the low end of
// the estimate of the server's clock, so it never takes a lock that may still be live.
//
// Such servers (FerretDB among them) may apply an update without re-checking its filter, so two
// clients could both take one free record. Only inserts under the unique index are atomic
// there, so a takeover first inserts a claim record for the next token, named
// "\x00<name>\x00<token>" (no lock name contains NUL): one client wins it, and only that one
// replaces the lock's record with its own (a delete and an insert), so tokens simply count on;
// only a new name (or one whose record was deleted otherwise, or taken by a new record between
// a takeover's delete and its insert) starts from the server's clock in microseconds.
func (b *Backend) acquireEstimated(ctx context.Context, req shylock.AcquireRequest) (shylock.Lease, error) {
	claimed := false // a claim of this attempt's may be on the server: it changed something
	unread := func(err error) error {
		if claimed {
			return opError("acquire", req.Name, err, true)
		}
		return unapplied("acquire", req.Name, err)
	}
	for range 3 {
		cur, err := b.reads.read(ctx, req.Name)
		lo, hi, berr := b.server.clock.Bounds(ctx)
		if berr != nil {
			return shylock.Lease{}, unread(berr)
		}
		exp := lo.Add(req.TTL).Truncate(time.Millisecond) // BSON dates hold milliseconds
		valid := exp.Sub(hi) - b.offset                   // ends before the earliest moment others may see it expired
		now := exp.Add(-req.TTL)                          // the lease starts TTL before it ends, as on the server-clock path
		switch {
		case valid <= 0:
			return shylock.Lease{}, fmt.Errorf("mongo: acquire %q: the server clock is uncertain by %v, more than the TTL %v less the clock offset %v; use a longer TTL",
				req.Name, hi.Sub(lo), req.TTL, b.offset)
		case errors.Is(err, mongo.ErrNoDocuments) && cur.claim != nil && cur.claim.Take && cur.claim.Owner != req.Owner && cur.claim.ExpiresAt.Add(b.offset).After(lo):
			// The last change of holder is a takeover, between its delete of the old record and
			// its insert of its own: the turn is its taker's, who holds the lock the moment its
			// insert lands. (A record deleted behind the library's back while a taker's lease
			// runs is refused as well, until that lease's end.)
			return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Token: uint64(cur.claim.Token), ExpiresAt: cur.claim.ExpiresAt}
		case errors.Is(err, mongo.ErrNoDocuments):
			tok := firstToken(hi)
			_, err := b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: req.Name}, {Key: "owner", Value: req.Owner},
				{Key: "label", Value: req.Label}, {Key: "party", Value: queueKey(req.Queue)}, {Key: "token", Value: tok}, {Key: "acquiredAt", Value: now},
				{Key: "renewedAt", Value: now}, {Key: "expiresAt", Value: exp}, {Key: "createdAt", Value: now}})
			if mongo.IsDuplicateKeyError(err) {
				continue // another client created it first; look again
			}
			if err != nil {
				return shylock.Lease{}, opError("acquire", req.Name, err, claimed)
			}
			if err := b.ensureUnique(ctx); err != nil { // see upsert
				return shylock.Lease{}, b.undoCreation(ctx, req, err)
			}
			b.hub.Took(req.Name, req.Queue)
			return shylock.Lease{Token: uint64(tok), ExpiresAt: exp, Valid: valid}, nil
		case err != nil:
			return shylock.Lease{}, unread(err)
		case cur.Owner == req.Owner && cur.ExpiresAt.After(hi):
			// An earlier attempt of this owner was applied (its reply was lost), or the holder
			// takes its lock again to change its label.
			if cur.Label != req.Label {
				_, err := b.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: cur.ID}, {Key: "owner", Value: req.Owner}, {Key: "token", Value: cur.Token}},
					bson.D{{Key: "$set", Value: bson.D{{Key: "label", Value: req.Label}}}})
				if err != nil {
					return shylock.Lease{}, opError("acquire", req.Name, err, true)
				}
			}
			return shylock.Lease{Token: uint64(cur.Token), ExpiresAt: cur.ExpiresAt, Valid: cur.ExpiresAt.Sub(hi) - b.offset}, nil
		case cur.Owner != "" && cur.ExpiresAt.Add(b.offset).After(lo):
			if cur.Party != queueKey(req.Queue) {
				b.joinEstimated(ctx, req, cur, lo, hi)
			}
			return shylock.Lease{}, held(req.Name, cur)
		}
		ahead, _, dead := queued(cur, req.Queue, lo)
		if ahead {
			b.joinEstimated(ctx, req, cur, lo, hi)
			return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Queued: true}
		}
		next := cur.Token + 1
		won, err := b.claim(ctx, req, next, lo, exp, claimed)
		if err != nil {
			return shylock.Lease{}, err
		}
		if !won {
			return shylock.Lease{}, &shylock.HeldError{Name: req.Name, Token: uint64(next), ExpiresAt: exp} // being taken over by another client
		}
		claimed = true
		// The new holding is a new document, not an update of the old one: these servers
		// write an update back by the _id they read, so a release or an extend of the old
		// holding that reached the server late would rewrite this holding (free it, or give
		// it back), whereas against a new _id it changes nothing.
		res, err := b.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: cur.ID}, {Key: "name", Value: req.Name}, {Key: "token", Value: cur.Token}})
		if err != nil {
			return shylock.Lease{}, opError("acquire", req.Name, err, true)
		}
		if res.DeletedCount == 0 {
			continue // changed or deleted behind our back; look again
		}
		_, err = b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: req.Name}, {Key: "owner", Value: req.Owner},
			{Key: "label", Value: req.Label}, {Key: "party", Value: queueKey(req.Queue)}, {Key: "token", Value: next},
			{Key: "acquiredAt", Value: now}, {Key: "renewedAt", Value: now}, {Key: "expiresAt", Value: exp}, {Key: "createdAt", Value: cur.CreatedAt}})
		if mongo.IsDuplicateKeyError(err) {
			continue // a new record of the name came in between; look again
		}
		if err != nil {
			return shylock.Lease{}, opError("acquire", req.Name, err, true)
		}
		if next/sweepEvery != (cur.Token-1)/sweepEvery { // the release before may have taken a token too
			// Claims below the record's token have served: nobody can use one any more.
			_, _ = b.coll.DeleteMany(ctx, bson.D{{Key: "name", Value: claimRange(req.Name)}, {Key: "token", Value: bson.D{{Key: "$lt", Value: next}}}})
		}
		// The taker's entry goes, so that its process's next waiter joins at the end.
		b.leaveEstimated(ctx, req, cur, dead)
		b.hub.Took(req.Name, req.Queue)
		return shylock.Lease{Token: uint64(next), ExpiresAt: exp, Valid: valid}, nil
	}
	return shylock.Lease{}, &shylock.HeldError{Name: req.Name} // it changed hands during the attempt
}

func claimName(name string, token int64) string {
	return "\x00" + name + "\x00" + strconv.FormatInt(token, 10)
}

// claimRange matches the names of every claim of the lock name.
func claimRange(name string) bson.D {
	return bson.D{{Key: "$gt", Value: "\x00" + name + "\x00"}, {Key: "$lt", Value: "\x00" + name + "\x01"}}
}

// sweepEvery is how many tokens of a name pass between deletions of its spent claims: one
// DeleteMany now and then costs less than a DeleteOne per takeover.
const sweepEvery = 16

// claim inserts the claim for token next of req.Name and reports whether this client won it. A
// claim left by a client that died before using it expires with the lease it was for.
// claimedBefore says whether an earlier claim of the attempt may be on the server.
func (b *Backend) claim(ctx context.Context, req shylock.AcquireRequest, next int64, lo, exp time.Time, claimedBefore bool) (bool, error) {
	name := claimName(req.Name, next)
	for range 2 {
		_, err := b.coll.InsertOne(ctx, bson.D{{Key: "name", Value: name}, {Key: "owner", Value: req.Owner},
			{Key: "token", Value: next}, {Key: "expiresAt", Value: exp}, {Key: "take", Value: true}})
		if err == nil {
			return true, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return false, opError("acquire", req.Name, err, claimedBefore)
		}
		var c record
		if err := b.coll.FindOne(ctx, byName(name)).Decode(&c); err != nil {
			continue // gone already: try again
		}
		if c.Owner == req.Owner {
			return true, nil // our own earlier attempt
		}
		if c.ExpiresAt.Add(b.offset).After(lo) {
			return false, nil // another client is taking over
		}
		_, _ = b.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: c.ID}, {Key: "owner", Value: c.Owner}})
	}
	return false, nil
}
