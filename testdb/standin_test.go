package testdb_test

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/shylock-go/shylock/testdb"
)

// standIn is a testdb.TB for code that runs outside a test function: the examples, which are
// given no *testing.T, and the tests of how the helpers skip. Fatalf and Skipf end the calling
// goroutine, as testing's do, so bodies run on goroutines of their own (see run).
type standIn struct {
	mu       sync.Mutex
	cleanups []func()
	skipped  string
	failed   string
}

var _ testdb.TB = (*standIn)(nil)

func (s *standIn) Helper() {}

func (s *standIn) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

func (s *standIn) Logf(string, ...any) {}

func (s *standIn) Fatalf(format string, args ...any) {
	s.mu.Lock()
	s.failed = fmt.Sprintf(format, args...)
	s.mu.Unlock()
	runtime.Goexit()
}

func (s *standIn) Skipf(format string, args ...any) {
	s.mu.Lock()
	s.skipped = fmt.Sprintf(format, args...)
	s.mu.Unlock()
	runtime.Goexit()
}

// run runs body as a test function runs, then the cleanups it registered, last first.
func (s *standIn) run(body func(t testdb.TB)) {
	onGoroutine(func() { body(s) })
	onGoroutine(func() {
		for i := len(s.cleanups) - 1; i >= 0; i-- {
			s.cleanups[i]()
		}
	})
}

func onGoroutine(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// asTest runs body as the body of a test function, with a stand-in for the test's *testing.T,
// and says if it failed or was skipped.
func asTest(body func(t testdb.TB)) {
	s := &standIn{}
	s.run(body)
	if s.failed != "" {
		fmt.Println("FAIL:", s.failed)
	}
	if s.skipped != "" {
		fmt.Println("SKIP:", s.skipped)
	}
}
