// Command shylock administers shylock locks and runs commands under them.
//
//	shylock list [--prefix P] [--json]
//	shylock inspect [--json] NAME
//	shylock release --force NAME
//	shylock watch [--prefix P] [--interval D] [--for D]
//	shylock run [--ttl D] [--no-wait | --wait D] NAME -- COMMAND [ARGS...]
//	shylock serve [--addr HOST:PORT] [--api-key KEY]... [--max-lease D] [--memory]
//	shylock version
//
// Flags may come before or after a command's arguments; after "--" everything is an argument.
// The server comes from flags or the environment: SHYLOCK_MONGO_URI (with
// SHYLOCK_MONGO_DATABASE) or SHYLOCK_ARANGO_URL (with SHYLOCK_ARANGO_DATABASE), and
// SHYLOCK_COLLECTION. list, inspect and watch write nothing. Run "shylock COMMAND --help" for a
// command's flags.
//
// Exit status: 0 success, 1 the server failed or refused, 2 usage (bad flags, names or
// durations), 3 release --force of a lock nobody holds, 75 run found the lock held, 76 run lost
// the lock and stopped its command, 126/127 run could not execute or find its command; otherwise
// run exits with its command's status.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
)

// Exit codes besides a command's own under run.
const (
	exitError    = 1   // the server failed or refused
	exitUsage    = 2   // bad flags or arguments
	exitNotHeld  = 3   // release --force of a lock nobody holds
	exitBusy     = 75  // run --no-wait (or --wait) found the lock held (EX_TEMPFAIL)
	exitLockLost = 76  // run lost the lock and stopped the command
	exitNoExec   = 126 // run's command exists but cannot be executed, as a shell says
	exitNotFound = 127 // run's command was not found, as a shell says
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
	watchArgs   = "[--prefix P] [--interval D] [--for D]"
	runArgs     = "[flags] NAME -- COMMAND [ARGS...]"
)

var commands = []command{
	{"list", listArgs, "list locks, held or not, whose names start with P", runList},
	{"inspect", inspectArgs, "show one lock", runInspect},
	{"release", releaseArgs, "free a lock whoever holds it (its holder finds out at its next renewal)", runRelease},
	{"watch", watchArgs, "a live table of locks, redrawn as they change", runWatch},
	{"run", runArgs, "run COMMAND while holding NAME, renewing it; exit like flock(1)", runRun},
	{"serve", serveArgs, "serve the locks over HTTP (Relukko's v1 API), with a live web page", runServe},
	{"version", "", "print the version of this command", runVersion},
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

// fail reports err on one line, naming the package once (its errors name it too).
func (e *env) fail(code int, err error) int {
	return e.failf(code, "%s", strings.ReplaceAll(err.Error(), "shylock: ", ""))
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
	return e.failf(exitUsage, "unknown command %q (see 'shylock --help')", args[0])
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "Usage: shylock COMMAND [flags] [arguments]")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n           %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w, "\nFlags may follow the arguments; after -- everything is an argument.")
	fmt.Fprintln(w, "\nThe lock server comes from flags or the environment:")
	fmt.Fprintln(w, "  --mongo-uri / SHYLOCK_MONGO_URI, --mongo-database / SHYLOCK_MONGO_DATABASE (default shylock)")
	fmt.Fprintln(w, "  --arango-url / SHYLOCK_ARANGO_URL, --arango-database / SHYLOCK_ARANGO_DATABASE (default _system)")
	fmt.Fprintln(w, "  --collection / SHYLOCK_COLLECTION (default locks)")
	fmt.Fprintln(w, "  --timeout (default 5s): how long connecting may take")
	fmt.Fprintln(w, "\nRun 'shylock COMMAND --help' for a command's flags.")
}

// parse parses a command's flags, which may come before or after its arguments; what follows
// "--" is taken as arguments as it is. It returns the arguments before "--" and those after it,
// or false and the exit code when the command should stop (help asked for, or bad flags: one
// line and a hint, not the whole usage).
func parse(e *env, fs *flag.FlagSet, args []string) (before, after []string, ok bool, code int) {
	if i := slices.Index(args, "--"); i >= 0 {
		args, after = args[:i], args[i+1:]
	}
	fs.SetOutput(io.Discard)
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(e.stdout)
				fs.Usage()
				return nil, nil, false, 0
			}
			return nil, nil, false, e.failf(exitUsage, "%s: %v (see 'shylock %s --help')", fs.Name(), err, fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			return before, after, true, 0
		}
		before, args = append(before, args[0]), args[1:]
	}
}

func runVersion(_ context.Context, e *env, args []string) int {
	if len(args) != 0 {
		return e.failf(exitUsage, "version takes no arguments")
	}
	version := "(unknown)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
	}
	fmt.Fprintf(e.stdout, "shylock %s (%s)\n", version, runtime.Version())
	return 0
}
