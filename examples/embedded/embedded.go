// Package embedded runs a FerretDB server inside the current process: a real MongoDB
// wire-protocol server with SQLite storage, for tests and examples that have no MongoDB to hand.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// Server is a running embedded FerretDB.
type Server struct {
	uri    string
	dir    string
	ownDir bool
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs a server listening on addr ("127.0.0.1:0" for a free port) that keeps its data in
// dir, or in a fresh temporary directory when dir is empty.
func Start(addr, dir string) (*Server, error) {
	s := &Server{dir: dir}
	if dir == "" {
		d, err := os.MkdirTemp("", "shylock-ferretdb-")
		if err != nil {
			return nil, fmt.Errorf("embedded FerretDB: %w", err)
		}
		s.dir, s.ownDir = d, true
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: addr},
		Handler:   "sqlite",
		SQLiteURL: "file:" + s.dir + "/",
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		s.cleanup()
		return nil, fmt.Errorf("embedded FerretDB: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go func() {
		defer close(s.done)
		_ = f.Run(ctx)
	}()
	// MongoDBURI blocks until the listener is up.
	uriCh := make(chan string, 1)
	go func() { uriCh <- f.MongoDBURI() }()
	select {
	case s.uri = <-uriCh:
	case <-time.After(30 * time.Second):
		s.Stop()
		return nil, fmt.Errorf("embedded FerretDB: not listening on %s after 30s", addr)
	}
	return s, nil
}

// URI is the server's MongoDB connection string.
func (s *Server) URI() string { return s.uri }

// Dir is where the server keeps its data.
func (s *Server) Dir() string { return s.dir }

// Stop shuts the server down, closing every connection, and removes its data if Start made the
// directory.
func (s *Server) Stop() {
	s.cancel()
	<-s.done
	s.cleanup()
}

func (s *Server) cleanup() {
	if s.ownDir {
		_ = os.RemoveAll(s.dir)
	}
}
