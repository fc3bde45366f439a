// Command shylock administers shylock locks and runs commands under them.
//
//	shylock list [--prefix P] [--json]
//	shylock inspect [--json] NAME
//	shylock release --force NAME
//	shylock watch [--prefix P] [--interval D]
//	shylock run [--ttl D] [--no-wait] [--wait D] NAME -- COMMAND [ARGS...]
//
// The server comes from flags or the environment: SHYLOCK_MONGO_URI (with
// SHYLOCK_MONGO_DATABASE) or SHYLOCK_ARANGO_URL (with SHYLOCK_ARANGO_DATABASE), and
// SHYLOCK_COLLECTION. Run "shylock COMMAND --help" for each command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes besides a command's own under run.
const (
	exitError    = 1  // the server failed or refused
	exitUsage    = 2  // bad flags or arguments
	exitNotHeld  = 3  // release --force of a lock nobody holds
	exitBusy     = 75 // run --no-wait (or --wait) found the lock held (EX_TEMPFAIL)
	exitLockLost = 76 // run lost the lock and stopped the command
)

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, env *env, args []string) int
}

// Each command's arguments, for the overview and its own --help.
const (
	listArgs    = "[--prefix P] [--json]"
	inspectArgs = "[--json] NAME"
	releaseArgs = "--force NAME"
	watchArgs   = "[--prefix P] [--interval D]"
	runArgs     = "[flags] NAME -- COMMAND [ARGS...]"
)

var commands = []command{
	{"list", listArgs, "list locks, held or not, whose names start with P", runList},
	{"inspect", inspectArgs, "show one lock", runInspect},
	{"release", releaseArgs, "free a lock whoever holds it (its holder finds out at its next renewal)", runRelease},
	{"watch", watchArgs, "a live table of locks, redrawn as they change", runWatch},
	{"run", runArgs, "run COMMAND while holding NAME, renewing it; exit like flock(1)", runRun},
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what a command runs with.
type env struct {
	stdout, stderr io.Writer
}

func (e *env) failf(code int, format string, args ...any) int {
	fmt.Fprintf(e.stderr, "shylock: "+format+"\n", args...)
	return code
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	usage(stderr)
	return e.failf(exitUsage, "unknown command %q", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: shylock COMMAND [flags] [arguments]")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n           %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nThe lock server comes from flags or the environment:")
	fmt.Fprintln(w, "  --mongo-uri / SHYLOCK_MONGO_URI, --mongo-database / SHYLOCK_MONGO_DATABASE (default shylock)")
	fmt.Fprintln(w, "  --arango-url / SHYLOCK_ARANGO_URL, --arango-database / SHYLOCK_ARANGO_DATABASE (default _system)")
	fmt.Fprintln(w, "  --collection / SHYLOCK_COLLECTION (default locks)")
	fmt.Fprintln(w, "\nRun 'shylock COMMAND --help' for a command's flags.")
}

// parse parses a command's flags; it returns false and the exit code when the command should
// stop (help asked for, or bad flags).
func parse(e *env, fs *flag.FlagSet, args []string) (bool, int) {
	fs.SetOutput(e.stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return false, 0
		}
		return false, exitUsage
	}
	return true, 0
}
