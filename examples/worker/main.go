// Command worker shows several processes competing for scheduled jobs: at every tick each
// process tries each job's lock, and only the one that gets it runs the job. Run it once and it
// starts the processes itself (-processes); run more copies by hand with SHYLOCK_MONGO_URI
// pointing at the same server and they join in.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/examples/internal/demo"
	"github.com/shylock-go/shylock/internal/connect"
)

var jobs = []string{"jobs/nightly-report", "jobs/expire-sessions", "jobs/reindex"}

func main() {
	processes := flag.Int("processes", 3, "worker processes to start (0: be one worker)")
	ticks := flag.Int("ticks", 5, "schedule ticks to run, 0 for ever")
	every := flag.Duration("every", 500*time.Millisecond, "time between ticks")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	backend, closeBackend, err := demo.Backend(ctx, os.Stdout)
	if err != nil {
		log.Fatal(err)
	}
	defer closeBackend()
	if *processes > 0 {
		spawn(ctx, *processes, *ticks, *every)
		return
	}
	shylock.Configure(backend, shylock.WithOwner("worker pid "+strconv.Itoa(os.Getpid())), shylock.WithTTL(5*time.Second))
	work(ctx, *ticks, *every)
}

// work runs the schedule in this process.
func work(ctx context.Context, ticks int, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for tick := 1; ticks == 0 || tick <= ticks; tick++ {
		for _, job := range jobs {
			l := shylock.New(job)
			ok, err := l.TryAcquire(ctx)
			switch {
			case err != nil:
				log.Printf("pid %d: %s: %v", os.Getpid(), job, err)
			case ok:
				fmt.Printf("tick %d: pid %d runs %-22s fencing token %d\n", tick, os.Getpid(), job, l.Token())
				time.Sleep(every / 2) // the job's work, shorter than a tick
				_ = l.Release(ctx)
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// spawn starts n worker processes of this program on the same server and waits for them.
func spawn(ctx context.Context, n, ticks int, every time.Duration) {
	cfg := connect.FromEnv()
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	for range n {
		cmd := exec.CommandContext(ctx, exe, "-processes=0", "-ticks="+strconv.Itoa(ticks), "-every="+every.String())
		cmd.Env = os.Environ()
		if cfg.MongoURI == "" && cfg.ArangoURL == "" {
			cmd.Env = append(cmd.Env, connect.EnvMongoURI+"="+demo.EmbeddedURI())
		}
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			log.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = cmd.Wait()
		}()
	}
	fmt.Printf("started %d worker processes; at each tick every job runs in whichever one process holds its lock\n", n)
	wg.Wait()
}
