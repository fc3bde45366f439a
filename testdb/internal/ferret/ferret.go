// Package ferret runs a FerretDB 1.x server (MongoDB wire protocol, SQLite storage) inside the
// current process. testdb.EmbeddedURI uses it directly, and the image that testdb.FerretDBImage
// builds runs it as its only program.
package ferret

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// Server is a running FerretDB.
type Server struct {
	uri    string
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs a server listening on addr ("127.0.0.1:0" for a free port) that keeps its SQLite
// files in dir, which must exist. It returns once the server accepts connections, or fails
// after timeout. The server logs errors, and nothing else, to log (nil for standard error).
func Start(addr, dir string, timeout time.Duration, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: addr},
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
		Logger:    log,
	})
	if err != nil {
		return nil, fmt.Errorf("FerretDB: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = f.Run(ctx)
	}()
	// MongoDBURI waits for the listener that Run starts; Run returns at once if it cannot.
	uri := make(chan string, 1)
	go func() { uri <- f.MongoDBURI() }()
	select {
	case s.uri = <-uri:
		return s, nil
	case <-s.done:
		cancel()
		return nil, fmt.Errorf("FerretDB: stopped before listening on %s", addr)
	case <-time.After(timeout):
		s.Stop()
		return nil, fmt.Errorf("FerretDB: not listening on %s after %v", addr, timeout)
	}
}

// URI is the server's MongoDB connection string, mongodb://HOST:PORT/.
func (s *Server) URI() string { return s.uri }

// Stop shuts the server down and closes every connection.
func (s *Server) Stop() {
	s.cancel()
	<-s.done
}
