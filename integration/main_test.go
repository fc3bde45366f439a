package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The servers every test in this package uses: a real MongoDB when SHYLOCK_MONGO_URI is set,
// otherwise the embedded FerretDB, run here as a program of its own (see serverProcess).
var (
	mongoURI    string
	mongoServer = "embedded FerretDB"
	client      *mdb.Client
)

func TestMain(m *testing.M) {
	if isChild() {
		os.Exit(childMain())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shylock-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	programs = dir
	mongoURI = os.Getenv("SHYLOCK_MONGO_URI")
	if mongoURI == "" {
		srv := &serverProcess{addr: "127.0.0.1:0", dir: filepath.Join(dir, "data")}
		if err := os.Mkdir(srv.dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := srv.launch(); err != nil {
			fmt.Fprintln(os.Stderr, "starting the embedded FerretDB:", err)
			return 1
		}
		defer srv.kill()
		mongoURI = srv.uri
	} else {
		mongoServer = "MongoDB at SHYLOCK_MONGO_URI"
	}
	client, err = mdb.Connect(options.Client().ApplyURI(mongoURI))
	if err != nil {
		fmt.Fprintln(os.Stderr, "connecting to", mongoServer+":", err)
		return 1
	}
	// An unreachable server fails the run at once rather than every test after its own timeout.
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = client.Ping(pctx, nil)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot reach the %s (%s) within 10s: is it running? %v\n", mongoServer, mongoURI, err)
		return 1
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = client.Disconnect(ctx)
	}()
	defer removeTestImage()
	return m.Run()
}

// connstringHost returns the only host of a mongodb:// URI.
func connstringHost(uri string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return "", err
	}
	if u.Scheme != "mongodb" || u.Host == "" || strings.Contains(u.Host, ",") {
		return "", fmt.Errorf("%q is not a mongodb:// URI with one host", uri)
	}
	return u.Host, nil
}
