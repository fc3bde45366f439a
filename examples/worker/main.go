// Command worker shows several processes sharing scheduled jobs so that each job runs once per
// tick, in exactly one process, however many processes there are and however their tickers drift.
// Run it once and it starts the processes itself (-processes); run more copies by hand with
// SHYLOCK_MONGO_URI pointing at the same server and they join in.
//
// A lock alone prevents overlap, not repetition: a process whose tick fires after another's run
// of the same tick has ended finds the job's lock free and would run the job again. So each run
// claims its tick: a lock named for the job and the tick, taken and never released, so the first
// process to claim a tick runs the job for it and every later one finds it taken. The claim must
// outlive every attempt to claim its tick: a process that falls more than lateTicks behind (a
// loaded machine, a long pause) skips the tick rather than claim it after its claim expired.
// Ticks are slots of wall-clock time, so the processes' clocks must agree to well within a tick
// (NTP does, for ticks of a second or more); the job's own lock keeps a run that outlasts its
// tick from overlapping the next one.
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
	"github.com/shylock-go/shylock/examples/backend"
)

var jobs = []string{"jobs/nightly-report", "jobs/expire-sessions", "jobs/reindex"}

// A tick is claimed at most lateTicks after it began, and its claim lasts twice as long.
const lateTicks = 5

func main() {
	processes := flag.Int("processes", 3, "worker processes to start (0: be one worker)")
	ticks := flag.Int("ticks", 5, "schedule ticks to run, 0 for ever")
	every := flag.Duration("every", 500*time.Millisecond, "time between ticks")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	locks, embeddedURI, closeBackend, err := backend.Open(ctx) // examples/backend: one file to copy
	if err != nil {
		log.Fatal(err)
	}
	defer closeBackend()
	if *processes > 0 {
		spawn(ctx, *processes, *ticks, *every, embeddedURI)
		return
	}
	shylock.Configure(locks, shylock.WithOwner("worker pid "+strconv.Itoa(os.Getpid())), shylock.WithTTL(5*time.Second))
	work(ctx, *ticks, *every)
}

// work runs the schedule in this process.
func work(ctx context.Context, ticks int, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for tick := 1; ticks == 0 || tick <= ticks; tick++ {
		slot := time.Now().Truncate(every)
		for _, job := range jobs {
			run(ctx, job, slot, every)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// run runs job for the tick that started at slot, unless another process has already claimed
// that tick.
func run(ctx context.Context, job string, slot time.Time, every time.Duration) {
	if late := time.Since(slot); late > lateTicks*every {
		log.Printf("pid %d: %s: skipping the tick at slot %d, %v late: its claim may be gone", os.Getpid(), job, slot.UnixMilli(), late.Round(time.Millisecond))
		return
	}
	claim := shylock.New(fmt.Sprintf("%s@%d", job, slot.UnixMilli()), shylock.WithTTL(2*lateTicks*every))
	ok, err := claim.TryAcquire(ctx)
	switch {
	case err != nil:
		log.Printf("pid %d: %s: %v", os.Getpid(), job, err)
		return
	case !ok:
		return // another process runs this tick's job
	}
	// The claim is never released: it must outlive the tick. The job's lock keeps this run from
	// overlapping a slow run of the previous tick.
	err = shylock.Do(ctx, job, func(ctx context.Context) error {
		token, _ := shylock.TokenFrom(ctx)
		fmt.Printf("slot %d: pid %d runs %-22s fencing token %d\n", slot.UnixMilli(), os.Getpid(), job, token)
		time.Sleep(every / 2) // the job's work, shorter than a tick
		return nil
	})
	if err != nil {
		log.Printf("pid %d: %s: %v", os.Getpid(), job, err)
	}
}

// spawn starts n worker processes of this program on the same server (the embedded one this
// process started, if it did) and waits for them.
func spawn(ctx context.Context, n, ticks int, every time.Duration, embeddedURI string) {
	exe, err := os.Executable()
	if err != nil {
		log.Fatal(err)
	}
	var wg sync.WaitGroup
	for range n {
		cmd := exec.CommandContext(ctx, exe, "-processes=0", "-ticks="+strconv.Itoa(ticks), "-every="+every.String())
		cmd.Env = os.Environ()
		if embeddedURI != "" {
			cmd.Env = append(cmd.Env, "SHYLOCK_MONGO_URI="+embeddedURI)
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
	fmt.Printf("started %d worker processes; at each tick every job runs once, in whichever process claims the tick first\n", n)
	wg.Wait()
}
