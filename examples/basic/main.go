// Command basic is the shortest correct use of shylock: configure a backend once, then run work
// under a named lock with Do.
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/examples/internal/demo"
)

func main() {
	ctx := context.Background()
	backend, closeBackend, err := demo.Backend(ctx, os.Stdout)
	if err != nil {
		log.Fatal(err)
	}
	defer closeBackend()
	shylock.Configure(backend, shylock.WithOwner("basic-example"))

	// Three workers want to charge the same order; the lock lets one in at a time, and each
	// holding gets a larger fencing token to pass on to what it writes.
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
