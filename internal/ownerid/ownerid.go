// Package ownerid makes the random ids that tell one holding of a lock from every other.
package ownerid

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
)

// New returns 122 random bits laid out as a version-4 UUID (RFC 4122), as 32 hex digits. Ids
// are never reused, so a release or renewal that arrives late can only ever match its own
// holding; as UUIDs they serve the lock service as lock ids, which clients may check.
func New() string {
	var b [16]byte
	_, _ = rand.Read(b[:])  // crypto/rand.Read never fails (it panics instead) since Go 1.24
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10
	return hex.EncodeToString(b[:])
}

// QueueKey is the key of a party's entry in a lock's queue (see shylock.AcquireRequest.Queue): a
// hash of the party, so that whatever string a caller chose, the key is a plain field name.
func QueueKey(party string) string {
	h := sha256.Sum256([]byte(party))
	return "p" + hex.EncodeToString(h[:12])
}
