package serve

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
)

// A lock's id is the owner id of its holding written as a UUID, so any replica finds the holding
// from the id alone: the database is the only state.

// newOwner returns the owner id of a lock taken through the API: 122 random bits laid out as a
// version-4 UUID (RFC 4122), as Relukko's ids are, so that clients that check ids accept them.
func newOwner() string {
	var b [16]byte
	_, _ = rand.Read(b[:])  // crypto/rand.Read never fails (it panics instead) since Go 1.24
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // variant 10
	return hex.EncodeToString(b[:])
}

// uuid writes a 128-bit owner id (32 hex digits) the way Relukko writes lock ids. The owner ids
// of locks taken through the library are random throughout, so theirs are UUIDs of no version.
func uuid(owner string) string {
	if len(owner) != 32 {
		return owner
	}
	return owner[:8] + "-" + owner[8:12] + "-" + owner[12:16] + "-" + owner[16:20] + "-" + owner[20:]
}

// ownerOf reads a lock id back into the owner id it stands for.
func ownerOf(id string) (string, error) {
	h := strings.ToLower(strings.ReplaceAll(id, "-", ""))
	if len(h) != 32 || strings.Count(id, "-") > 4 {
		return "", apiError(http.StatusBadRequest, "%q is not a lock id (a UUID)", id)
	}
	if _, err := hex.DecodeString(h); err != nil {
		return "", apiError(http.StatusBadRequest, "%q is not a lock id (a UUID)", id)
	}
	return h, nil
}
