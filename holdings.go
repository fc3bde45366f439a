package shylock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Holdings is implemented by backends that serve a lock service, which names each holding by its
// owner id and changes holdings on its clients' behalf (shylock serve): it finds a holding by its
// owner and reads the held locks through an index on the owner, so that neither costs more as
// released records pile up (they stay for the grace period), and it changes one holding without
// ever taking a lock. It is optional; the mongo, arango and memory backends implement it.
type Holdings interface {
	// Holding reads the record of owner's holding, as Inspect does: Held says whether its lease
	// still runs. It returns an error wrapping ErrNotHeld when no record has owner as its holder
	// (released, taken over, or never acquired). An owner id stands for one holding; if a caller
	// gave one owner several names, Holding returns the first of them by name.
	Holding(ctx context.Context, owner string) (Info, error)

	// Held returns the locks held now by the backend's clock, sorted by name. It reads only
	// records that have a holder.
	Held(ctx context.Context) ([]Info, error)

	// Amend applies a to the holding (name, owner, token) while its lease runs, and returns the
	// record as it left it. It changes nothing else and never takes a lock: a holding that has
	// expired, was released or was taken over gives an error wrapping ErrNotHeld, and nothing
	// changes.
	Amend(ctx context.Context, name, owner string, token uint64, a Amendment) (Info, error)
}

// Amendment is a change to a holding.
type Amendment struct {
	// Label, unless nil, replaces the holding's label.
	Label *string
	// TTL, unless 0, sets the expiry to TTL from now by the backend's clock. It may exceed
	// MaxTTL, up to MaxAmendTTL: a lock service's clients pin a resource until a date years
	// ahead, as Relukko's do.
	TTL time.Duration
	// ExpiresAt, unless zero, sets the expiry to that instant instead (a database keeps it to
	// the millisecond). It is judged by the backend's clock like any expiry: one that has passed
	// ends the lease, as an expiry does (Release frees the lock at once).
	ExpiresAt time.Time
}

// MaxAmendTTL is the longest lease Amend sets: two centuries, short of where time arithmetic
// overflows (a time.Duration spans 292 years).
const MaxAmendTTL = 200 * 365 * 24 * time.Hour

// Validate checks an amendment before any I/O: it changes something; its TTL is 0 or within
// [MinTTL, MaxAmendTTL]; it sets a TTL or an ExpiresAt, not both, and an ExpiresAt no further
// than MaxAmendTTL ahead by the caller's clock (at that distance, a clock's error is nothing).
func (a Amendment) Validate() error {
	switch {
	case a.Label == nil && a.TTL == 0 && a.ExpiresAt.IsZero():
		return errors.New("shylock: the amendment changes nothing: give a Label, a TTL or an ExpiresAt")
	case a.TTL != 0 && !a.ExpiresAt.IsZero():
		return fmt.Errorf("%w: an amendment sets a TTL or an ExpiresAt, not both", ErrInvalidTTL)
	case a.TTL != 0 && (a.TTL < MinTTL || a.TTL > MaxAmendTTL):
		return fmt.Errorf("%w: %v; an amended lease must be at least %v and at most 200 years", ErrInvalidTTL, a.TTL, MinTTL)
	case time.Until(a.ExpiresAt) > MaxAmendTTL:
		return fmt.Errorf("%w: an expiry at %s is more than 200 years ahead", ErrInvalidTTL, a.ExpiresAt.UTC().Format(time.RFC3339))
	}
	return nil
}
