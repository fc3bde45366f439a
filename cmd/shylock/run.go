package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/quote"
)

func runRun(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("run", runArgs,
		"Run COMMAND while holding the lock NAME, renewing it every TTL/3. If the lock is lost, COMMAND gets\n"+
			"--signal and shylock exits 76. With --no-wait a held lock exits 75 at once (like flock -n); else\n"+
			"shylock waits, up to --wait if given, then exits 75. Otherwise the exit status is COMMAND's.\n"+
			"COMMAND finds the lock's name in $SHYLOCK_LOCK and its fencing token in $SHYLOCK_TOKEN")
	host, _ := os.Hostname()
	ttl := fs.Duration("ttl", 30*time.Second, "lease length; a crashed holder blocks others this long")
	noWait := fs.Bool("no-wait", false, "fail at once (exit 75) if the lock is held")
	wait := fs.Duration("wait", 0, "give up waiting after this long (exit 75); 0 waits for ever")
	owner := fs.String("owner", fmt.Sprintf("shylock run on %s/%d", host, os.Getpid()), "holder description shown by list and inspect")
	sigName := fs.String("signal", "TERM", "signal for COMMAND when the lock is lost: TERM, INT, KILL or HUP")
	rest, argv, ok, code := parse(e, fs, args)
	switch {
	case !ok:
		return code
	case len(rest) != 1 || len(argv) == 0:
		return e.failf(exitUsage, "run needs a lock name and a command: shylock run [flags] NAME -- COMMAND [ARGS...]")
	case *noWait && *wait != 0:
		return e.failf(exitUsage, "--no-wait and --wait contradict each other; give one")
	case *wait < 0:
		return e.failf(exitUsage, "--wait %v: give a positive duration, or leave it out to wait for as long as it takes", *wait)
	}
	if err := shylock.ValidateTTL(*ttl); err != nil {
		return e.fail(exitUsage, fmt.Errorf("--ttl: %w", err))
	}
	sig, ok := map[string]syscall.Signal{"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "HUP": syscall.SIGHUP}[*sigName]
	if !ok {
		return e.failf(exitUsage, "--signal %q: use TERM, INT, KILL or HUP", *sigName)
	}
	name, code := lockName(e, rest[0])
	if code != 0 {
		return code
	}
	// Find the command before taking the lock, as a shell would tell: 127 not found, 126 not
	// executable.
	if _, err := exec.LookPath(argv[0]); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return e.failf(exitNotFound, "%s: command not found", argv[0])
		}
		return e.failf(exitNoExec, "%s: %v", argv[0], err)
	}

	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	l := shylock.New(name, shylock.WithBackend(b), shylock.WithTTL(*ttl), shylock.WithAutoRenew(true), shylock.WithOwner(*owner))
	if code, ok := acquire(ctx, e, b, l, *noWait, *wait); !ok {
		return code
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := l.Release(rctx); err != nil && !errors.Is(err, shylock.ErrLost) {
			e.fail(0, err)
		}
	}()

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	cmd.Env = append(os.Environ(), "SHYLOCK_TOKEN="+strconv.FormatUint(l.Token(), 10), "SHYLOCK_LOCK="+name)
	ownGroup(cmd)
	if err := cmd.Start(); err != nil {
		return e.failf(exitNoExec, "starting %s: %v", argv[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return exitStatus(err)
	case <-ctx.Done(): // interrupted: pass it on and wait for the command
		signalGroup(cmd, syscall.SIGTERM)
		return exitStatus(<-exited)
	case <-l.Lost():
		fmt.Fprintf(e.stderr, "shylock: lost the lock %s; stopping %s with SIG%s\n", quote.Name(name), argv[0], *sigName)
		signalGroup(cmd, sig)
		<-exited
		return exitLockLost
	}
}

// acquire takes the lock as run's flags say; it reports false with the exit code on failure.
func acquire(ctx context.Context, e *env, b shylock.Backend, l *shylock.Lock, noWait bool, wait time.Duration) (int, bool) {
	busy := func() (int, bool) {
		if h, ok := l.Holder(); ok && h.Label != "" && !h.ExpiresAt.IsZero() {
			return e.failf(exitBusy, "%s is held by %s until %s", quote.Name(l.Name()), h.Label, h.ExpiresAt.UTC().Format(time.RFC3339)), false
		}
		return e.failf(exitBusy, "%s is held", quote.Name(l.Name())), false
	}
	if noWait {
		ok, err := l.TryAcquire(ctx)
		switch {
		case err != nil:
			return e.fail(exitError, err), false
		case !ok:
			return busy()
		}
		return 0, true
	}
	actx := ctx
	if wait > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	err := l.Acquire(actx)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, context.DeadlineExceeded) && errors.Is(err, shylock.ErrLocked):
		return busy()
	}
	return e.fail(exitError, err), false
}

// exitStatus returns a command's exit status, 128+n for death by signal n as a shell does.
func exitStatus(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return exit.ExitCode()
	}
	if err != nil {
		return exitError
	}
	return 0
}
