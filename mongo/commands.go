package mongo

import (
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/shylock-go/shylock"
)

// The command documents of the server-clock path. MongoDB refuses $expr in the filter of an
// upsert (QueryFeatureNotAllowed, 224), so an acquire filters on the name alone and decides in
// its update pipeline, where $$NOW is the server's clock; the document it returns says who
// holds the lock. Every value that comes from a caller is wrapped in $literal: in a pipeline a
// string starting with "$" would otherwise be read as a field path or variable.

func lit(v any) bson.D { return bson.D{{Key: "$literal", Value: v}} }

// state is a field that lives only inside one acquire's pipeline: "late" when the attempt reached
// the server after its deadline, "mine" when the record already belongs to the requesting owner
// (an earlier attempt whose reply was lost), "take" when it is free or expired by more than the
// clock offset, "held" otherwise. Only "late" is stored, so that the reply can say so; the next
// acquire removes it.
const state = "_shylockState"

const (
	stateLate   = "late"
	stateQueued = "queued" // free or expired, but another party's waiter came first
)

func byName(name string) bson.D { return bson.D{{Key: "name", Value: name}} }

// acquireUpdate is the pipeline of an acquire by owner for ttl that must not take effect after
// deadline by the server's clock. A new record arrives as {_id, name} and is taken; its token
// starts from the server's time in microseconds, and each later holding takes the greater of
// that and the last token plus one. createdAt, set once, equals acquiredAt only in the holding
// that created the record. A late attempt changes no field of a lock; one that created the record
// leaves it free, expiring now, for the TTL index. The queue (see queue.go) decides between
// "take" and "queued"; wait says that a refusal joins it.
func acquireUpdate(req shylock.AcquireRequest, offset time.Duration, deadline time.Time) mongo.Pipeline {
	owner, label, ttl := req.Owner, req.Label, req.TTL
	is := func(s string) bson.D { return bson.D{{Key: "$eq", Value: bson.A{"$" + state, s}}} }
	acting := bson.D{{Key: "$in", Value: bson.A{"$" + state, bson.A{"mine", "take"}}}}
	ifActing := func(v, otherwise any) bson.D { return bson.D{{Key: "$cond", Value: bson.A{acting, v, otherwise}}} }
	ifNull := func(field string, v any) bson.D { return bson.D{{Key: "$ifNull", Value: bson.A{"$" + field, v}}} }
	free := bson.D{{Key: "$eq", Value: bson.A{ifNull("owner", ""), ""}}}
	expired := bson.D{{Key: "$lt", Value: bson.A{
		bson.D{{Key: "$add", Value: bson.A{"$expiresAt", offset.Milliseconds()}}}, "$$NOW"}}}
	nextToken := bson.D{{Key: "$max", Value: bson.A{
		bson.D{{Key: "$add", Value: bson.A{ifNull("token", int64(0)), int64(1)}}},
		bson.D{{Key: "$multiply", Value: bson.A{bson.D{{Key: "$toLong", Value: "$$NOW"}}, int64(1000)}}},
	}}}
	joins := any(false)
	if req.Wait { // refused by the queue, or by a holding of another party
		joins = bson.D{{Key: "$or", Value: bson.A{is(stateQueued), bson.D{{Key: "$and", Value: bson.A{
			is("held"), bson.D{{Key: "$ne", Value: bson.A{"$party", queueKey(req.Queue)}}}}}}}}}
	}
	return mongo.Pipeline{
		{{Key: "$set", Value: bson.D{{Key: nowField, Value: "$$NOW"}}}},
		queueRead(),
		queueMine(req.Queue),
		{{Key: "$set", Value: bson.D{{Key: state, Value: bson.D{{Key: "$switch", Value: bson.D{
			{Key: "branches", Value: bson.A{
				bson.D{{Key: "case", Value: bson.D{{Key: "$gt", Value: bson.A{"$$NOW", lit(deadline)}}}}, {Key: "then", Value: stateLate}},
				bson.D{{Key: "case", Value: bson.D{{Key: "$eq", Value: bson.A{"$owner", lit(owner)}}}}, {Key: "then", Value: "mine"}},
				bson.D{{Key: "case", Value: bson.D{{Key: "$and", Value: bson.A{bson.D{{Key: "$or", Value: bson.A{free, expired}}}, queueAhead(req.Queue)}}}}, {Key: "then", Value: stateQueued}},
				bson.D{{Key: "case", Value: bson.D{{Key: "$or", Value: bson.A{free, expired}}}}, {Key: "then", Value: "take"}},
			}},
			{Key: "default", Value: "held"},
		}}}}}}},
		{{Key: "$set", Value: bson.D{
			{Key: "owner", Value: ifActing(lit(owner), ifNull("owner", ""))},
			{Key: "label", Value: ifActing(lit(label), "$label")},
			{Key: "party", Value: ifActing(queueKey(req.Queue), "$party")},
			{Key: "token", Value: bson.D{{Key: "$cond", Value: bson.A{is("take"), nextToken, "$token"}}}},
			{Key: "acquiredAt", Value: bson.D{{Key: "$cond", Value: bson.A{is("take"), "$$NOW", "$acquiredAt"}}}},
			{Key: "renewedAt", Value: ifActing("$$NOW", "$renewedAt")},
			{Key: "expiresAt", Value: ifActing(bson.D{{Key: "$add", Value: bson.A{"$$NOW", ttl.Milliseconds()}}}, ifNull("expiresAt", "$$NOW"))},
			{Key: "createdAt", Value: ifNull("createdAt", "$$NOW")},
			{Key: queueField, Value: queueWrite(req.Queue, acting, joins)},
		}}},
		{{Key: "$set", Value: bson.D{
			{Key: state, Value: bson.D{{Key: "$cond", Value: bson.A{bson.D{{Key: "$in", Value: bson.A{"$" + state, bson.A{stateLate, stateQueued}}}}, "$" + state, "$$REMOVE"}}}},
			{Key: nowField, Value: "$$REMOVE"},
			{Key: liveField, Value: "$$REMOVE"},
			{Key: mineField, Value: "$$REMOVE"},
		}}},
	}
}

// extendFilter matches the holding (name, owner, token) while its lease runs by the server's
// clock. $expr is allowed here: this update never inserts.
func extendFilter(name, owner string, token uint64) bson.D {
	return bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}, {Key: "token", Value: int64(token)},
		{Key: "$expr", Value: bson.D{{Key: "$gt", Value: bson.A{"$expiresAt", "$$NOW"}}}}}
}

func extendUpdate(ttl time.Duration) mongo.Pipeline {
	return mongo.Pipeline{{{Key: "$set", Value: bson.D{
		{Key: "renewedAt", Value: "$$NOW"},
		{Key: "expiresAt", Value: bson.D{{Key: "$add", Value: bson.A{"$$NOW", ttl.Milliseconds()}}}},
	}}}}
}

// releaseFilter matches the holding of owner; token 0 matches any of its holdings.
func releaseFilter(name, owner string, token uint64) bson.D {
	f := bson.D{{Key: "name", Value: name}, {Key: "owner", Value: owner}}
	if token != 0 {
		f = append(f, bson.E{Key: "token", Value: int64(token)})
	}
	return f
}

// freeUpdate frees a record. Its expiresAt stays as the server stamped it, so the TTL index
// deletes the record a grace period after its last lease ended, and until then its token carries
// the name's sequence on. Every server takes this shape, so both paths and ForceRelease use it.
var freeUpdate = bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}}}}
