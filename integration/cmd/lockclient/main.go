// Command lockclient holds one lock with auto-renewal and reports what happens to it, for the
// container tests: "held TOKEN" once acquired, then "lost UNIXNANO" when it learns it lost the
// lock, and "release ERR" after trying to release it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

func main() {
	uri := flag.String("uri", "mongodb://db:27017/", "server")
	name := flag.String("name", "partitioned", "lock name")
	ttl := flag.Duration("ttl", 2*time.Second, "lease length")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	c, err := mdb.Connect(options.Client().ApplyURI(*uri).SetServerSelectionTimeout(time.Second))
	if err != nil {
		log.Fatal(err)
	}
	b, err := mongo.New(ctx, c.Database("containers").Collection("locks"))
	if err != nil {
		log.Fatal(err)
	}
	l := shylock.New(*name, shylock.WithBackend(b), shylock.WithTTL(*ttl), shylock.WithAutoRenew(true))
	if err := l.Acquire(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("held", l.Token())
	select {
	case <-l.Lost():
		fmt.Println("lost", time.Now().UnixNano())
	case <-ctx.Done():
	}
	rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	fmt.Println("release", l.Release(rctx))
}
