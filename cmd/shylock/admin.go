package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/connect"
)

// newFlags returns a command's flag set with the server flags, their defaults from the
// environment.
func newFlags(name, args, summary string) (*flag.FlagSet, *connect.Config) {
	cfg := connect.FromEnv()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&cfg.MongoURI, "mongo-uri", cfg.MongoURI, "MongoDB connection string ($"+connect.EnvMongoURI+")")
	fs.StringVar(&cfg.MongoDatabase, "mongo-database", cfg.MongoDatabase, "MongoDB database ($"+connect.EnvMongoDatabase+")")
	fs.StringVar(&cfg.ArangoURL, "arango-url", cfg.ArangoURL, "ArangoDB endpoint, credentials as user info ($"+connect.EnvArangoURL+")")
	fs.StringVar(&cfg.ArangoDatabase, "arango-database", cfg.ArangoDatabase, "ArangoDB database ($"+connect.EnvArangoDatabase+")")
	fs.StringVar(&cfg.Collection, "collection", cfg.Collection, "lock collection ($"+connect.EnvCollection+")")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: shylock %s %s\n\n%s.\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs, &cfg
}

// open connects to the configured server, with a bound on how long that may take.
func open(ctx context.Context, e *env, cfg *connect.Config) (shylock.Backend, func(), int) {
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	b, closeBackend, err := cfg.Open(octx)
	if err != nil {
		return nil, nil, e.failf(exitError, "%v", err)
	}
	return b, closeBackend, 0
}

func runList(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("list", listArgs, "List locks, held or not, whose names start with a prefix")
	prefix := fs.String("prefix", "", "only locks whose names start with this (literally)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	if ok, code := parse(e, fs, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return e.failf(exitUsage, "list takes no arguments; use --prefix")
	}
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	infos, err := b.List(ctx, *prefix)
	if err != nil {
		return e.failf(exitError, "%v", err)
	}
	if *asJSON {
		return printJSON(e, infos)
	}
	table(e.stdout, infos, time.Now())
	return 0
}

func runInspect(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("inspect", inspectArgs, "Show one lock")
	asJSON := fs.Bool("json", false, "print JSON")
	if ok, code := parse(e, fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return e.failf(exitUsage, "inspect takes one lock name")
	}
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	info, err := b.Inspect(ctx, fs.Arg(0))
	if err != nil {
		return e.failf(exitError, "%v", err)
	}
	if *asJSON {
		return printJSON(e, info)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "name\t%s\n", info.Name)
	switch {
	case info.Held:
		fmt.Fprintf(w, "state\theld, %s left\n", info.Remaining.Round(time.Millisecond))
	case info.Token == 0:
		fmt.Fprintf(w, "state\tfree (never locked, or its record was removed)\n")
	default:
		fmt.Fprintf(w, "state\tfree\n")
	}
	if info.Token != 0 {
		fmt.Fprintf(w, "holder\t%s\n", info.Label)
		fmt.Fprintf(w, "owner id\t%s\n", dash(info.Owner))
		fmt.Fprintf(w, "token\t%d\n", info.Token)
		fmt.Fprintf(w, "acquired\t%s\n", info.AcquiredAt.Format(time.RFC3339Nano))
		fmt.Fprintf(w, "renewed\t%s\n", info.RenewedAt.Format(time.RFC3339Nano))
		if !info.ExpiresAt.IsZero() { // a released lock has none
			fmt.Fprintf(w, "expires\t%s\n", info.ExpiresAt.Format(time.RFC3339Nano))
		}
	}
	_ = w.Flush()
	return 0
}

func runRelease(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("release", releaseArgs,
		"Free a lock whoever holds it. Its holder learns at its next renewal and its Release fails; the fencing sequence goes on")
	force := fs.Bool("force", false, "required: confirms that you mean to take the lock from its holder")
	if ok, code := parse(e, fs, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return e.failf(exitUsage, "release takes one lock name")
	}
	if !*force {
		return e.failf(exitUsage, "release takes a lock from whoever holds it; add --force to confirm")
	}
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	before, err := b.ForceRelease(ctx, fs.Arg(0))
	switch {
	case errors.Is(err, shylock.ErrNotHeld):
		return e.failf(exitNotHeld, "%q is not held; nothing to release", fs.Arg(0))
	case err != nil:
		return e.failf(exitError, "%v", err)
	}
	fmt.Fprintf(e.stdout, "released %q, held by %s (token %d, %s left)\n", before.Name, before.Label, before.Token,
		before.Remaining.Round(time.Millisecond))
	return 0
}

func runWatch(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("watch", watchArgs, "Show a live table of locks, redrawn whenever they change, until interrupted")
	prefix := fs.String("prefix", "", "only locks whose names start with this (literally)")
	interval := fs.Duration("interval", time.Second, "how often to read the locks")
	stopAfter := fs.Duration("for", 0, "stop after this long (0: until interrupted)")
	if ok, code := parse(e, fs, args); !ok {
		return code
	}
	if fs.NArg() != 0 || *interval <= 0 {
		return e.failf(exitUsage, "watch takes no arguments and a positive --interval")
	}
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	if *stopAfter > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *stopAfter)
		defer cancel()
	}
	terminal := isTerminal(e.stdout)
	var last []byte
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		infos, err := b.List(ctx, *prefix)
		switch {
		case ctx.Err() != nil:
			return 0
		case err != nil:
			fmt.Fprintf(e.stderr, "shylock: %v (retrying)\n", err)
		default:
			var buf bytes.Buffer
			table(&buf, infos, time.Time{}) // without times, so only real changes redraw
			if !bytes.Equal(buf.Bytes(), last) {
				last = buf.Bytes()
				if terminal {
					fmt.Fprint(e.stdout, "\033[H\033[2J")
				}
				fmt.Fprintf(e.stdout, "%s  %d locks  (Ctrl-C to stop)\n", time.Now().Format(time.TimeOnly), len(infos))
				table(e.stdout, infos, time.Now())
				fmt.Fprintln(e.stdout)
			}
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return 0
		}
	}
}

// table prints infos; with a zero now it leaves out everything that changes with time alone.
func table(out io.Writer, infos []shylock.Info, now time.Time) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tSTATE\tHOLDER\tTOKEN\tEXPIRES IN")
	for _, in := range infos {
		state, left := "free", "-"
		if in.Held {
			state = "held"
			if !now.IsZero() {
				left = in.Remaining.Round(time.Millisecond).String()
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\n", in.Name, state, dash(in.Label), in.Token, left)
	}
	_ = w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(e *env, v any) int {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return e.failf(exitError, "%v", err)
	}
	return 0
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
