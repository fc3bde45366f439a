package ownerid

import (
	"strings"
	"testing"
)

func TestUniqueAndHex(t *testing.T) {
	seen := map[string]bool{}
	for range 10000 {
		id := New()
		if len(id) != 32 {
			t.Fatalf("id %q has %d characters, want 32", id, len(id))
		}
		if seen[id] {
			t.Fatalf("id %q repeated", id)
		}
		seen[id] = true
	}
}

// TestVersion4UUID: ids are RFC 4122 version-4 UUIDs, as the lock service shows them to clients.
func TestVersion4UUID(t *testing.T) {
	for range 1000 {
		id := New()
		if id[12] != '4' || !strings.ContainsRune("89ab", rune(id[16])) {
			t.Fatalf("id %q is not a version-4 UUID (version nibble %c, variant nibble %c)", id, id[12], id[16])
		}
	}
}
