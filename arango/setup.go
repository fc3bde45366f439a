package arango

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/arangodb/shared"
)

// clustered reports whether the database lives in a cluster: only there does the server report
// a database's replication factor, write concern and sharding.
func clustered(info arangodb.DatabaseInfo) bool {
	return info.ReplicationFactor != 0 || info.WriteConcern != 0 || info.Sharding != ""
}

// setUp makes the collection ready: created if missing (sharded by name), sharded as it must be,
// with its indexes. Right after a concurrent creator's 1207 a coordinator can answer 404 for a
// moment, for the collection or its indexes, while that collection is still being built, so the
// set-up is retried on 404 for ten seconds.
func (b *Backend) setUp(ctx context.Context, s settings) error {
	if err := b.createCollection(ctx, s); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		c, err := b.db.GetCollection(ctx, b.coll, nil)
		if err != nil {
			err = fmt.Errorf("arango: opening collection %s: %w", b.coll, err)
		} else if err = b.checkSharding(ctx, c); err == nil {
			err = b.ensureIndexes(ctx, c, s.grace.Round(time.Second))
		}
		if err == nil || !shared.IsNotFound(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return fmt.Errorf("arango: setting up collection %s: %w", b.coll, ctx.Err())
		}
	}
}

// createCollection creates the collection, sharded by name, unless it exists; a concurrent
// creator (1207) is fine.
func (b *Backend) createCollection(ctx context.Context, s settings) error {
	exists, err := b.db.CollectionExists(ctx, b.coll)
	if err != nil || exists {
		if err != nil {
			return fmt.Errorf("arango: looking up collection %s: %w", b.coll, err)
		}
		return nil
	}
	props := &arangodb.CreateCollectionPropertiesV2{ShardKeys: &[]string{"name"}}
	if s.replicationFactor > 0 {
		rf := arangodb.ReplicationFactor(s.replicationFactor)
		props.ReplicationFactor = &rf
	}
	if s.writeConcern > 0 {
		props.WriteConcern = &s.writeConcern
	}
	_, err = b.db.CreateCollectionV2(ctx, b.coll, props)
	switch {
	case shared.IsArangoErrorWithErrorNum(err, errDuplicateName):
	case err != nil:
		return fmt.Errorf("arango: creating collection %s: %w", b.coll, err)
	default:
		b.log.Debug("shylock/arango: created the lock collection, sharded by name", "collection", b.coll)
	}
	return nil
}

// checkSharding refuses a cluster collection of several shards sharded otherwise than by name:
// ArangoDB can only enforce a unique index that contains the shard key. (A single server reports
// no shard keys, and one shard enforces any unique index.)
func (b *Backend) checkSharding(ctx context.Context, c arangodb.Collection) error {
	props, err := c.Properties(ctx)
	if err != nil {
		return fmt.Errorf("arango: reading the properties of collection %s: %w", b.coll, err)
	}
	return shardingProblem(b.coll, props.ShardKeys, props.NumberOfShards)
}

func shardingProblem(coll string, shardKeys []string, shards int) error {
	if len(shardKeys) == 0 || shards == 1 || slices.Equal(shardKeys, []string{"name"}) {
		return nil
	}
	return fmt.Errorf("arango: collection %s is sharded by %v, but a unique index on name needs it sharded by name: "+
		"use another collection (New creates it sharded by name), or re-create it with shardKeys [\"name\"]", coll, shardKeys)
}

// ensureIndexes creates the unique index on name, the index on owner (see Holding) and the TTL
// index on expiresAt that deletes records a grace period after their expiry. ArangoDB allows
// one TTL index per collection and cannot change one: New replaces its own TTL index if its
// grace period differs, and refuses a TTL index of anyone else's.
func (b *Backend) ensureIndexes(ctx context.Context, c arangodb.Collection, grace time.Duration) error {
	unique := true
	if _, _, err := c.EnsurePersistentIndex(ctx, []string{"name"}, &arangodb.CreatePersistentIndexOptions{
		Name: NameIndex, Unique: &unique}); err != nil {
		return fmt.Errorf("arango: creating the unique index on name in %s (in a cluster the collection must be sharded by name): %w",
			b.coll, err)
	}
	if _, _, err := c.EnsurePersistentIndex(ctx, []string{"owner"}, &arangodb.CreatePersistentIndexOptions{Name: OwnerIndex}); err != nil {
		return fmt.Errorf("arango: creating the index on owner in %s: %w", b.coll, err)
	}
	indexes, err := c.Indexes(ctx)
	if err != nil {
		return fmt.Errorf("arango: listing the indexes of %s: %w", b.coll, err)
	}
	want := int(grace / time.Second)
	for _, ix := range indexes {
		if ix.Type != arangodb.TTLIndexType {
			continue
		}
		switch have := ttlOf(ix); {
		case ix.Name != TTLIndex:
			return fmt.Errorf("arango: collection %s has the TTL index %q (expireAfter %d), and ArangoDB allows one TTL index per collection: "+
				"drop it, or use another collection", b.coll, ix.Name, have)
		case have == want:
			return nil
		default:
			if err := c.DeleteIndex(ctx, ix.Name); err != nil && !shared.IsNotFound(err) {
				return fmt.Errorf("arango: replacing the TTL index %q of %s (expireAfter %d, the grace period needs %d): %w",
					ix.Name, b.coll, have, want, err)
			}
		}
	}
	if _, _, err := c.EnsureTTLIndex(ctx, []string{"expiresAt"}, want, &arangodb.CreateTTLIndexOptions{Name: TTLIndex}); err != nil {
		return fmt.Errorf("arango: creating the TTL index on expiresAt in %s: %w", b.coll, err)
	}
	return nil
}

func ttlOf(ix arangodb.IndexResponse) int {
	if ix.RegularIndex == nil || ix.RegularIndex.ExpireAfter == nil {
		return 0
	}
	return *ix.RegularIndex.ExpireAfter
}
