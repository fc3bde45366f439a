package arango_test

import (
	"context"
	"log"
	"time"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/connection"

	"github.com/shylock-go/shylock"
	shylockarango "github.com/shylock-go/shylock/arango"
)

// Open the database as the service already does, make the backend once (it creates the
// collection, sharded by name, and its indexes), and make it the default.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn := connection.NewHttpConnection(connection.DefaultHTTPConfigurationWrapper(
		connection.NewRoundRobinEndpoints([]string{"http://localhost:8529"}), false))
	db, err := arangodb.NewClient(conn).GetDatabase(ctx, "_system", nil)
	if err != nil {
		log.Fatal(err)
	}

	backend, err := shylockarango.New(ctx, db, "locks")
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	shylock.Configure(backend)

	ok, err := shylock.New("reports/nightly").TryAcquire(ctx)
	log.Print(ok, err)
}
