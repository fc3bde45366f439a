package integration

import (
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

// library matches a stack frame in the library's own packages (not its tests).
var library = regexp.MustCompile(`(?m)^github\.com/shylock-go/shylock(/mongo|/memory|/arango|/internal/[a-z]+)?\.`)

// checkLibraryLeaks fails t if a goroutine running library code outlives it. Tests against a
// server use it instead of checkLeaks: the server and the driver's connection pool start
// goroutines of their own whenever they like.
func checkLibraryLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		var leaked []string
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			buf := make([]byte, 1<<22)
			leaked = leaked[:0]
			for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
				if library.MatchString(g) && !strings.Contains(g, "testing.tRunner") {
					leaked = append(leaked, g)
				}
			}
			if len(leaked) == 0 {
				return
			}
		}
		t.Errorf("%d library goroutines outlived the test:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	})
}
