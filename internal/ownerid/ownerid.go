// Package ownerid makes the random ids that tell one holding of a lock from every other.
package ownerid

import (
	"crypto/rand"
	"encoding/hex"
)

// New returns 128 random bits as 32 hex digits. Ids are never reused, so a release or renewal
// that arrives late can only ever match its own holding.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (it panics instead) since Go 1.24
	return hex.EncodeToString(b[:])
}
