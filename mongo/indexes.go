package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Index names this package creates.
const (
	NameIndex  = "shylock_name_unique"
	TTLIndex   = "shylock_expiresAt_ttl"
	OwnerIndex = "shylock_owner" // finds a holding by its owner, and the held records (see shylock.Holdings)
)

// index is one entry of listIndexes, read raw so that no option the driver's specification type
// leaves out (hidden) goes unseen.
type index struct {
	Name      string   `bson:"name"`
	Key       bson.Raw `bson:"key"`
	Unique    bool     `bson:"unique"`
	Partial   bson.Raw `bson:"partialFilterExpression"`
	Collation struct {
		Locale string `bson:"locale"`
	} `bson:"collation"`
	Hidden      bool          `bson:"hidden"`
	ExpireAfter bson.RawValue `bson:"expireAfterSeconds"` // int32, long or double, as the server kept it
}

// indexState is what the collection's indexes provide.
type indexState struct {
	unique  bool // a unique index on name that protects every record
	owner   bool // an index on owner
	ttl     bool // a TTL index on expiresAt with the backend's grace period
	ttlName string
	ttlWant int64 // seconds the TTL index should have
	ttlHave int64 // seconds it has
}

// checkIndexes reads the collection's indexes and refuses those that would break a guarantee:
// an index on name that does not make every name unique (not unique, partial, collated, hidden)
// would let two records hold one name; a TTL index of another expiry would delete live locks or
// keep records too briefly for their tokens.
func (b *Backend) checkIndexes(ctx context.Context) (indexState, error) {
	st := indexState{ttlWant: int64(b.grace / time.Second)}
	cur, err := b.coll.Indexes().List(ctx)
	if err != nil {
		return st, fmt.Errorf("mongo: listing the indexes of %s: %w", b.coll.Name(), err)
	}
	var all []index
	if err := cur.All(ctx, &all); err != nil {
		return st, fmt.Errorf("mongo: listing the indexes of %s: %w", b.coll.Name(), err)
	}
	for _, ix := range all {
		if err := st.add(ix); err != nil {
			return st, fmt.Errorf("mongo: collection %s has index %q %w; drop it or use another collection", b.coll.Name(), ix.Name, err)
		}
	}
	return st, nil
}

// add takes in one index, or says why it cannot stay.
func (st *indexState) add(ix index) error {
	key := keyOf(ix.Key)
	switch {
	case key == "name" && !ix.Unique:
		return errors.New("on name that is not unique (if it is the shard key's index, shard the collection with unique: true, " +
			"or make it unique with collMod, MongoDB 6.0 and later)")
	case key == "name" && ix.Partial != nil:
		return errors.New("on name that is partial, so it lets two records of one name in")
	case key == "name" && ix.Collation.Locale != "" && ix.Collation.Locale != "simple":
		return errors.New("on name with a collation, which lock queries do not use")
	case key == "name" && ix.Hidden:
		return errors.New("on name that is hidden (unhide it with collMod, or drop it)")
	case key == "name":
		st.unique = true
	case ix.Name == NameIndex:
		return errors.New("on other keys than name")
	case key == "owner":
		st.owner = true
	case key == "expiresAt" && ix.ExpireAfter.Type != 0:
		secs, ok := ix.ExpireAfter.AsInt64OK()
		if d, isDouble := ix.ExpireAfter.DoubleOK(); isDouble && d != float64(secs) {
			ok = false
		}
		if !ok {
			return fmt.Errorf("on expiresAt with expireAfterSeconds %s", ix.ExpireAfter)
		}
		st.ttlName, st.ttlHave = ix.Name, secs
		st.ttl = st.ttlHave == st.ttlWant
	case ix.Name == TTLIndex:
		return errors.New("that is not a TTL index on expiresAt")
	}
	return nil
}

// ensureIndexes creates what checkIndexes finds missing, each index on its own: a server that
// refuses TTL indexes must not take the unique index down with it.
func (b *Backend) ensureIndexes(ctx context.Context) error {
	b.indexMu.Lock()
	defer b.indexMu.Unlock()
	if err := b.checkCollation(ctx); err != nil {
		return err
	}
	st, err := b.ensureUniqueLocked(ctx)
	if err != nil {
		return err
	}
	if !st.owner {
		_, err := b.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "owner", Value: 1}}, Options: options.Index().SetName(OwnerIndex)})
		if err != nil {
			return fmt.Errorf("mongo: creating the index on owner of %s: %w", b.coll.Name(), err)
		}
	}
	switch {
	case st.ttl || b.noTTL:
	case st.ttlName == TTLIndex:
		// Ours, from another grace period (or an older version): change it in place.
		err := b.coll.Database().RunCommand(ctx, bson.D{{Key: "collMod", Value: b.coll.Name()},
			{Key: "index", Value: bson.D{{Key: "name", Value: TTLIndex}, {Key: "expireAfterSeconds", Value: st.ttlWant}}}}).Err()
		if err != nil {
			return fmt.Errorf("mongo: changing the TTL index %q of %s from %ds to %ds: %w", TTLIndex, b.coll.Name(), st.ttlHave, st.ttlWant, err)
		}
	case st.ttlName != "":
		return fmt.Errorf("mongo: collection %s has TTL index %q on expiresAt with expireAfterSeconds %d, but the grace period needs %d; "+
			"drop it, or pass WithGracePeriod to keep it", b.coll.Name(), st.ttlName, st.ttlHave, st.ttlWant)
	default:
		_, err := b.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
			Keys:    bson.D{{Key: "expiresAt", Value: 1}},
			Options: options.Index().SetExpireAfterSeconds(int32(st.ttlWant)).SetName(TTLIndex),
		})
		switch {
		case lacksFeature(err):
			b.noTTL = true
			b.log.Debug("shylock/mongo: the server refused a TTL index; expiry still works, but released records stay until deleted",
				"collection", b.coll.Name(), "err", err)
		case err != nil:
			return fmt.Errorf("mongo: creating the TTL index on expiresAt of %s: %w", b.coll.Name(), err)
		}
	}
	return nil
}

// checkCollation refuses a collection with a default collation other than simple: its queries
// would compare names by that collation (a case-insensitive one makes "A" and "a" one lock), and
// the indexes created in it would inherit it.
func (b *Backend) checkCollation(ctx context.Context) error {
	specs, err := b.coll.Database().ListCollectionSpecifications(ctx, bson.D{{Key: "name", Value: b.coll.Name()}})
	if err != nil {
		return fmt.Errorf("mongo: reading the options of collection %s: %w", b.coll.Name(), err)
	}
	for _, spec := range specs {
		if locale := collationOf(spec.Options); locale != "" {
			return fmt.Errorf("mongo: collection %s has the default collation %q, so names would not compare byte for byte; "+
				"use a collection without a collation", b.coll.Name(), locale)
		}
	}
	return nil
}

// collationOf returns the locale of the default collation in a collection's options, or "" for
// none or simple.
func collationOf(opts bson.Raw) string {
	locale, _ := opts.Lookup("collation", "locale").StringValueOK()
	if locale == "simple" {
		return ""
	}
	return locale
}

// ensureUnique makes sure the unique index on name is there. An acquire that created a record
// calls it: an upsert into a collection that was dropped re-creates the collection without
// indexes, and then nothing would stop a second record of the same name. If two exist already,
// building the index fails.
func (b *Backend) ensureUnique(ctx context.Context) error {
	b.indexMu.Lock()
	defer b.indexMu.Unlock()
	_, err := b.ensureUniqueLocked(ctx)
	return err
}

func (b *Backend) ensureUniqueLocked(ctx context.Context) (indexState, error) {
	st, err := b.checkIndexes(ctx)
	if err != nil || st.unique {
		return st, err
	}
	_, err = b.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "name", Value: 1}},
		Options: options.Index().SetUnique(true).SetName(NameIndex),
	})
	if err != nil {
		return st, fmt.Errorf("mongo: creating the unique index on name of %s: %w", b.coll.Name(), err)
	}
	return st, nil
}

// keyOf returns the field of a single-field ascending index key, or "".
func keyOf(keys bson.Raw) string {
	elems, err := keys.Elements()
	if err != nil || len(elems) != 1 {
		return ""
	}
	if v, ok := elems[0].Value().AsInt64OK(); !ok || v != 1 {
		if d, ok := elems[0].Value().DoubleOK(); !ok || d != 1 {
			return ""
		}
	}
	return elems[0].Key()
}
