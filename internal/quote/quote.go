// Package quote writes lock names into messages: quoted, and shortened when they are long, so
// that a 500-byte name does not fill a log line.
package quote

import (
	"fmt"
	"strconv"
	"unicode/utf8"
)

// keep is how many bytes of a long name a message shows.
const keep = 60

// Name quotes name, cut to its first 60 bytes (at a character boundary) when it is longer, with
// its length in bytes.
func Name(name string) string {
	if len(name) <= keep+4 {
		return strconv.Quote(name)
	}
	cut := keep
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(name[:cut]), len(name))
}
