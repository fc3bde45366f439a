package memory_test

import (
	"testing"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
	"github.com/shylock-go/shylock/shylocktest"
)

func TestHoldings(t *testing.T) {
	shylocktest.RunHoldings(t, func(t *testing.T) shylock.Backend {
		b := memory.New()
		t.Cleanup(b.Close)
		return b
	})
}
