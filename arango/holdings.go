package arango

import (
	"context"
	"fmt"
	"sort"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/arangodb/shared"

	"github.com/shylock-go/shylock"
)

// OwnerIndex is the persistent index on owner that finds a holding by its owner, and the held
// records without the released ones (see Holdings).
const OwnerIndex = "shylock_owner"

// holdingAQL reads the records of one owner, through the index on owner.
const holdingAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.owner == @owner
  RETURN { doc: d, now: now }`

// heldAQL reads the records whose leases run. "" is the least string, so the range on owner,
// which the index on owner serves, leaves out the released records (owner "") unread.
const heldAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.owner > "" && d.expiresAt * 1000 > now
  RETURN { doc: d, now: now }`

// amendAQL changes a live holding: its label if @relabel, its expiry to @ttl milliseconds from
// now unless @ttl is 0, or else to @until (epoch milliseconds) unless that is 0. Like extendAQL
// it updates the document as read, with ignoreRevs false, so a change of holder meanwhile makes
// it fail with a conflict, not undo that change.
const amendAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name == @name && d.owner == @owner && d.token == @token && d.expiresAt * 1000 > now
  UPDATE d WITH { label: @relabel ? @label : d.label,
    renewedAt: (@ttl > 0 || @until > 0) ? now / 1000 : d.renewedAt,
    expiresAt: @ttl > 0 ? (now + @ttl) / 1000 : (@until > 0 ? @until / 1000 : d.expiresAt) }
  IN @@coll OPTIONS { ignoreRevs: false, waitForSync: true }
  RETURN { doc: NEW, now: now }`

func (b *Backend) holdingQuery(owner string) query {
	return query{holdingAQL, map[string]any{"@coll": b.coll, "owner": owner}}
}

func (b *Backend) heldQuery() query {
	return query{heldAQL, map[string]any{"@coll": b.coll}}
}

func (b *Backend) amendQuery(name, owner string, token uint64, a shylock.Amendment) query {
	label, until := "", int64(0)
	if a.Label != nil {
		label = *a.Label
	}
	if !a.ExpiresAt.IsZero() {
		until = a.ExpiresAt.UnixMilli()
	}
	return query{amendAQL, map[string]any{"@coll": b.coll, "name": name, "owner": owner, "token": token,
		"relabel": a.Label != nil, "label": label, "ttl": a.TTL.Milliseconds(), "until": until}}
}

// rows runs q and returns the records it reads as Infos, sorted by name.
func (b *Backend) rows(ctx context.Context, q query) ([]shylock.Info, error) {
	var out []shylock.Info
	err := b.run(ctx, q, func(c arangodb.Cursor) error {
		var row withNow
		if _, err := c.ReadDocument(ctx, &row); err != nil {
			return err
		}
		if row.Doc != nil {
			out = append(out, row.info(row.Doc.Name))
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, err
}

// Holding implements shylock.Holdings.
func (b *Backend) Holding(ctx context.Context, owner string) (shylock.Info, error) {
	if owner == "" {
		return shylock.Info{}, fmt.Errorf("%w: no lock is held by an empty owner id", shylock.ErrNotHeld)
	}
	infos, err := b.rows(ctx, b.holdingQuery(owner))
	switch {
	case err != nil:
		return shylock.Info{}, fmt.Errorf("arango: finding the holding of owner %q: %w", owner, err)
	case len(infos) == 0:
		return shylock.Info{}, fmt.Errorf("%w: no lock is held by owner %q (released, expired or taken over)", shylock.ErrNotHeld, owner)
	}
	return infos[0], nil
}

// Held implements shylock.Holdings.
func (b *Backend) Held(ctx context.Context) ([]shylock.Info, error) {
	infos, err := b.rows(ctx, b.heldQuery())
	if err != nil {
		return nil, fmt.Errorf("arango: reading the held locks: %w", err)
	}
	return infos, nil
}

// Amend implements shylock.Holdings.
func (b *Backend) Amend(ctx context.Context, name, owner string, token uint64, a shylock.Amendment) (shylock.Info, error) {
	if err := validateName(name); err != nil {
		return shylock.Info{}, err
	}
	if err := a.Validate(); err != nil {
		return shylock.Info{}, err
	}
	if owner == "" {
		return shylock.Info{}, notHeld(name)
	}
	if b.readOnly {
		return shylock.Info{}, refuseWrite("amend", name)
	}
	if a.TTL != 0 && a.TTL <= b.offset {
		return shylock.Info{}, fmt.Errorf("%w: %v is not longer than the maximum clock offset %v between the servers", shylock.ErrInvalidTTL, a.TTL, b.offset)
	}
	var (
		infos []shylock.Info
		err   error
	)
	for range 2 {
		// A write-write conflict means the record changed since the query's snapshot (a
		// release, a renewal): the second try finds the holding gone, or amends it.
		if infos, err = b.rows(ctx, b.amendQuery(name, owner, token, a)); !shared.IsArangoErrorWithErrorNum(err, errConflict) {
			break
		}
	}
	switch {
	case err != nil:
		return shylock.Info{}, fmt.Errorf("arango: amend %q: %w", name, err)
	case len(infos) == 0:
		return shylock.Info{}, notHeld(name)
	}
	return infos[0], nil
}

var _ shylock.Holdings = (*Backend)(nil)
