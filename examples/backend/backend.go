// Package backend is how the examples connect, in one file to copy. A service passes its own
// database handle to mongo.New or arango.New; the embedded FerretDB is there only so that the
// examples run anywhere.
package backend

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/connection"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	shylockarango "github.com/shylock-go/shylock/arango"
	"github.com/shylock-go/shylock/examples/embedded"
	shylockmongo "github.com/shylock-go/shylock/mongo"
)

// Open connects to the server the environment names: SHYLOCK_MONGO_URI (database
// SHYLOCK_MONGO_DATABASE, default shylock) or SHYLOCK_ARANGO_URL (database
// SHYLOCK_ARANGO_DATABASE, default _system), the locks in the collection SHYLOCK_COLLECTION
// (default locks). With neither set it starts an embedded FerretDB and returns its URI too.
// closeAll closes the backend and its client, and stops the embedded server.
func Open(ctx context.Context) (b shylock.Backend, embeddedURI string, closeAll func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second) // for connecting and creating indexes
	defer cancel()
	uri, stop := os.Getenv("SHYLOCK_MONGO_URI"), func() {}
	if arangoURL := os.Getenv("SHYLOCK_ARANGO_URL"); uri == "" && arangoURL != "" {
		b, err := openArango(ctx, arangoURL)
		if err != nil {
			return nil, "", nil, err
		}
		return b, "", b.Close, nil
	}
	if uri == "" { // for the demo only: no server named, so start one in this process
		srv, err := embedded.Start("127.0.0.1:0", "")
		if err != nil {
			return nil, "", nil, err
		}
		uri, embeddedURI, stop = srv.URI(), srv.URI(), srv.Stop
		fmt.Printf("no SHYLOCK_MONGO_URI or SHYLOCK_ARANGO_URL set: started an embedded FerretDB; "+
			"another process joins these locks with SHYLOCK_MONGO_URI=%s\n", uri)
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		stop()
		return nil, "", nil, err
	}
	coll := client.Database(envOr("SHYLOCK_MONGO_DATABASE", "shylock")).Collection(envOr("SHYLOCK_COLLECTION", "locks"))
	mb, err := shylockmongo.New(ctx, coll) // creates its indexes
	if err != nil {
		_ = client.Disconnect(context.Background())
		stop()
		return nil, "", nil, err
	}
	return mb, embeddedURI, func() { mb.Close(); _ = client.Disconnect(context.Background()); stop() }, nil
}

// openArango connects to the ArangoDB at rawURL, http(s)://[user:password@]host:port.
func openArango(ctx context.Context, rawURL string) (*shylockarango.Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("SHYLOCK_ARANGO_URL: want http(s)://[user:password@]host:port")
	}
	cfg := connection.DefaultHTTPConfigurationWrapper(connection.NewRoundRobinEndpoints([]string{u.Scheme + "://" + u.Host}), false)
	if u.User != nil {
		password, _ := u.User.Password()
		cfg.Authentication = connection.NewBasicAuth(u.User.Username(), password)
	}
	db, err := arangodb.NewClient(connection.NewHttpConnection(cfg)).GetDatabase(ctx, envOr("SHYLOCK_ARANGO_DATABASE", "_system"), nil)
	if err != nil {
		return nil, err
	}
	return shylockarango.New(ctx, db, envOr("SHYLOCK_COLLECTION", "locks")) // creates the collection and its indexes
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
