package mongo_test

import (
	"context"
	"log"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	shylockmongo "github.com/shylock-go/shylock/mongo"
)

// Connect as the service already does, make the backend once (it ensures the indexes), and
// make it the default for every lock of the process.
func ExampleNew() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := mdb.Connect(options.Client().ApplyURI("mongodb://localhost:27017/?replicaSet=rs0"))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()

	backend, err := shylockmongo.New(ctx, client.Database("shylock").Collection("locks"))
	if err != nil {
		log.Fatal(err) // for example an existing index on name that is not unique
	}
	defer backend.Close()
	shylock.Configure(backend)

	err = shylock.Do(ctx, "tenants/7/migrate", func(ctx context.Context) error {
		return nil // migrate tenant 7; ctx ends if the lock is lost
	})
	if err != nil {
		log.Print(err)
	}
}
