package integration

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock/examples/embedded"
)

// The servers every test in this package uses: a real MongoDB when SHYLOCK_MONGO_URI is set,
// otherwise an embedded FerretDB started here.
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
	mongoURI = os.Getenv("SHYLOCK_MONGO_URI")
	if mongoURI == "" {
		srv, err := embedded.Start("127.0.0.1:0", "")
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting embedded FerretDB:", err)
			return 1
		}
		defer srv.Stop()
		mongoURI = srv.URI()
	} else {
		mongoServer = "MongoDB at SHYLOCK_MONGO_URI"
	}
	var err error
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
