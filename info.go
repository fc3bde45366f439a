package shylock

import (
	"encoding/json"
	"time"
)

// infoJSON is the one JSON shape of a lock that the library, the shylock command and its lock
// service share: snake_case keys, RFC 3339 times in UTC, durations in seconds; a free lock has
// no expiry and no time remaining.
type infoJSON struct {
	Name             string     `json:"name"`
	State            string     `json:"state"` // "held" or "free"
	Holder           string     `json:"holder,omitempty"`
	OwnerID          string     `json:"owner_id,omitempty"`
	Token            uint64     `json:"token"` // of the current or last holding; 0 if never locked
	AcquiredAt       *time.Time `json:"acquired_at,omitempty"`
	RenewedAt        *time.Time `json:"renewed_at,omitempty"`
	ExpiresAt        *time.Time `json:"expires_at,omitempty"`
	RemainingSeconds *float64   `json:"remaining_seconds,omitempty"`
}

// MarshalJSON writes in as {name, state ("held" or "free"), holder (the label), owner_id,
// token, acquired_at, renewed_at, expires_at, remaining_seconds}: snake_case keys, RFC 3339
// times in UTC, the time remaining in seconds; a free lock has no expiry and no time remaining,
// and a time never set is left out. The shylock command's --json output has the same shape.
func (in Info) MarshalJSON() ([]byte, error) {
	at := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		u := t.UTC()
		return &u
	}
	j := infoJSON{Name: in.Name, State: "free", Holder: in.Label, OwnerID: in.Owner, Token: in.Token,
		AcquiredAt: at(in.AcquiredAt), RenewedAt: at(in.RenewedAt)}
	if in.Held {
		secs := in.Remaining.Seconds()
		j.State, j.ExpiresAt, j.RemainingSeconds = "held", at(in.ExpiresAt), &secs
	}
	return json.Marshal(j)
}
