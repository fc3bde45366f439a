package ownerid

import "testing"

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
