// Package demo gives the examples a backend: the server that SHYLOCK_MONGO_URI or
// SHYLOCK_ARANGO_URL names, or else an embedded FerretDB started in this process.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/examples/embedded"
	"github.com/shylock-go/shylock/internal/connect"
)

// embeddedURI is the address of the server Backend started, if it started one.
var embeddedURI string

// EmbeddedURI returns the MongoDB URI of the embedded FerretDB that Backend started, or "".
func EmbeddedURI() string { return embeddedURI }

// Backend opens the backend and returns a function that closes it (and stops the embedded
// server). It tells w where the locks live and how another process can join.
func Backend(ctx context.Context, w io.Writer) (shylock.Backend, func(), error) {
	cfg := connect.FromEnv()
	b, closeBackend, err := cfg.Open(ctx)
	if err == nil {
		fmt.Fprintf(w, "locks live in %s\n", cfg.Where())
		return b, closeBackend, nil
	}
	if !errors.Is(err, connect.ErrNoServer) {
		return nil, nil, err
	}
	srv, err := embedded.Start("127.0.0.1:0", "")
	if err != nil {
		return nil, nil, err
	}
	cfg.MongoURI, embeddedURI = srv.URI(), srv.URI()
	b, closeBackend, err = cfg.Open(ctx)
	if err != nil {
		srv.Stop()
		return nil, nil, err
	}
	fmt.Fprintf(w, "no %s or %s set: started an embedded FerretDB at %s\n", connect.EnvMongoURI, connect.EnvArangoURL, srv.URI())
	fmt.Fprintf(w, "another process joins these locks with %s=%s\n", connect.EnvMongoURI, srv.URI())
	return b, func() { closeBackend(); srv.Stop() }, nil
}
