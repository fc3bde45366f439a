package shylocktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// ReadOnly checks a backend opened read-only (mongo.WithReadOnly, arango.WithReadOnly): every
// operation that would write fails with an error matching shylock.ErrRefused.
func ReadOnly(t *testing.T, b shylock.Backend) {
	t.Helper()
	ctx := context.Background()
	for what, err := range map[string]error{
		"Acquire": func() error {
			_, err := b.Acquire(ctx, shylock.AcquireRequest{Name: "n", Owner: "o", TTL: time.Second})
			return err
		}(),
		"Extend":       func() error { _, err := b.Extend(ctx, "n", "o", 1, time.Second); return err }(),
		"Release":      b.Release(ctx, "n", "o", 1),
		"ForceRelease": func() error { _, err := b.ForceRelease(ctx, "n"); return err }(),
	} {
		if !errors.Is(err, shylock.ErrRefused) {
			t.Errorf("%s on a read-only backend: %v; want ErrRefused", what, err)
		}
	}
}
