package testdb

import (
	"os"

	"github.com/shylock-go/shylock/mongo"
	"github.com/shylock-go/shylock/testdb/internal/ferret"
)

// Embedded starts FerretDB inside the test process and returns a mongo backend on a fresh
// collection of it. It needs no Docker and never skips. When the test ends, the backend is
// closed and the server stopped, its files removed.
//
// FerretDB 1.x serves the MongoDB wire protocol without change streams, TTL indexes or
// aggregation-pipeline updates: the backend judges expiry with an estimate of the server's
// clock, and waiters are woken through release events on a capped collection. Test against
// MongoContainer too where the server-clock and change-stream paths matter.
func Embedded(t TB, opts ...Option) *mongo.Backend {
	t.Helper()
	return Mongo(t, EmbeddedURI(t, opts...), opts...)
}

// EmbeddedURI starts FerretDB inside the test process, listening on a free port of 127.0.0.1,
// and returns its MongoDB connection string. The server is stopped, and its files removed, when
// the test ends. Each call starts a server of its own; it starts in milliseconds.
func EmbeddedURI(t TB, opts ...Option) string {
	t.Helper()
	c := newConfig(opts)
	dir, err := os.MkdirTemp("", "shylock-testdb-")
	if err != nil {
		t.Fatalf("testdb: embedded FerretDB: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	srv, err := ferret.Start("127.0.0.1:0", dir, c.timeout, nil)
	if err != nil {
		t.Fatalf("testdb: embedded %v", err)
	}
	t.Cleanup(srv.Stop)
	return srv.URI()
}
