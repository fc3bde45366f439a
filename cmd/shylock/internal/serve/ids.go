package serve

import (
	"encoding/hex"
	"net/http"
	"strings"
)

// A lock's id is the owner id of its holding written as a UUID, so any replica finds the holding
// from the id alone: the database is the only state.

// uuid writes a 128-bit owner id (32 hex digits) the way Relukko writes lock ids. Owner ids
// (internal/ownerid) are version-4 UUIDs, whether the lock was taken through the API or the
// library.
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
