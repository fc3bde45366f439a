// Command basic is the shortest correct use of shylock: configure a backend once, then run work
// under a named lock with Do.
package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/memory"
)

func main() {
	backend := memory.New()
	defer backend.Close()
	shylock.Configure(backend, shylock.WithOwner("basic-example"))

	// Three workers want to charge the same order; the lock lets one in at a time.
	var wg sync.WaitGroup
	for w := 1; w <= 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := shylock.Do(context.Background(), "orders/42", func(ctx context.Context) error {
				fmt.Printf("worker %d holds orders/42\n", w)
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
