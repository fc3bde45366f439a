package quote

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestName(t *testing.T) {
	if got := Name("orders/42"); got != `"orders/42"` {
		t.Errorf("Name(short) = %s", got)
	}
	long := strings.Repeat("é", 300) // 600 bytes of two-byte characters
	got := Name(long)
	if len(got) > 90 || !strings.Contains(got, "(600 bytes)") || !utf8.ValidString(got) || strings.Contains(got, `\x`) {
		t.Errorf("Name(600 bytes) = %s; want at most 90 bytes, cut at a character, with the length", got)
	}
}
