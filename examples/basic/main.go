// Command basic is the shortest correct use of shylock, backend included: connect to MongoDB,
// configure the backend once, then run work under a named lock with Do.
//
// With SHYLOCK_MONGO_URI unset it starts an embedded FerretDB (a MongoDB wire-protocol server on
// SQLite) in the process, so that it runs anywhere; that part is marked, and the rest is what a
// service writes.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/examples/embedded"
	shylockmongo "github.com/shylock-go/shylock/mongo"
)

func main() {
	ctx := context.Background()
	uri := os.Getenv("SHYLOCK_MONGO_URI")
	if uri == "" { // for the demo only: no server named, so start one in this process
		srv, err := embedded.Start("127.0.0.1:0", "")
		if err != nil {
			log.Fatal(err)
		}
		defer srv.Stop()
		uri = srv.URI()
		fmt.Printf("no SHYLOCK_MONGO_URI set: started an embedded FerretDB; another process joins these locks with SHYLOCK_MONGO_URI=%s\n", uri)
	}

	// Once, at start-up.
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	backend, err := shylockmongo.New(ctx, client.Database("shylock").Collection("locks")) // creates its indexes
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()
	shylock.Configure(backend, shylock.WithOwner("basic-example"))

	// Anywhere: three workers want to charge the same order; the lock lets one in at a time,
	// and each holding gets a larger fencing token to pass on to what it writes.
	var wg sync.WaitGroup
	for w := 1; w <= 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := shylock.Do(ctx, "orders/42", func(ctx context.Context) error {
				token, _ := shylock.TokenFrom(ctx)
				fmt.Printf("worker %d holds orders/42 with fencing token %d\n", w, token)
				time.Sleep(100 * time.Millisecond)
				return nil
			})
			if err != nil {
				log.Printf("worker %d: %v", w, err)
			}
		}()
	}
	wg.Wait()
	fmt.Println("done: each worker held the lock alone, one after another")
}
