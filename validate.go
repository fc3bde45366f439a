package shylock

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shylock-go/shylock/internal/quote"
)

// Limits on names and TTLs, enforced before any I/O so bad input changes nothing.
const (
	// MaxNameLen is the longest lock name in bytes. It keeps every name within the index key
	// limits of MongoDB and ArangoDB.
	MaxNameLen = 512

	// MinTTL is the shortest lease. Servers keep time in milliseconds, and a lease shorter than a
	// few round trips would be lost before it could be used.
	MinTTL = 10 * time.Millisecond

	// MaxTTL is the longest lease. A longer one is almost always a unit mistake; hold a lock for
	// longer with auto-renewal instead, which stops when the holder dies.
	MaxTTL = 7 * 24 * time.Hour
)

// ValidateName reports whether name can be a lock name. Backends call it on every name they
// receive; names are stored as values, so "$where", "a.b" or "{}" are ordinary names.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: the name is empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: the name is %d bytes, longer than the limit of %d", ErrInvalidName, len(name), MaxNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidName, quote.Name(name))
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidName, quote.Name(name))
	}
	return nil
}

// human writes a duration the way people say it: "7 days" rather than "168h0m0s".
func human(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}

// ValidatePrefix reports whether prefix can begin lock names, for List: the empty prefix (every
// lock), or valid UTF-8 without a NUL byte and no longer than MaxNameLen.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateName(prefix); err != nil {
		return fmt.Errorf("%w (as a prefix)", err)
	}
	return nil
}

// ValidateTTL reports whether ttl can be a lease length.
func ValidateTTL(ttl time.Duration) error {
	if ttl < MinTTL || ttl > MaxTTL {
		return fmt.Errorf("%w: %v; a TTL must be at least %v and at most %s", ErrInvalidTTL, ttl, MinTTL, human(MaxTTL))
	}
	return nil
}
