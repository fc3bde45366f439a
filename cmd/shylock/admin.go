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
	"github.com/shylock-go/shylock/internal/quote"
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
	fs.DurationVar(&cfg.Timeout, "timeout", connect.DefaultTimeout, "how long connecting to the server may take")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: shylock %s %s\n\n%s.\n\nFlags:\n", name, args, summary)
		fs.PrintDefaults()
	}
	return fs, &cfg
}

// open connects to the configured server within --timeout.
func open(ctx context.Context, e *env, cfg *connect.Config) (shylock.Backend, func(), int) {
	b, closeBackend, err := cfg.Open(ctx)
	if err != nil {
		return nil, nil, e.fail(exitError, err)
	}
	return b, closeBackend, 0
}

// lockName checks a lock name given as an argument: a bad one is a usage error.
func lockName(e *env, name string) (string, int) {
	if err := shylock.ValidateName(name); err != nil {
		return "", e.fail(exitUsage, err)
	}
	return name, 0
}

func runList(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("list", listArgs, "List locks, held or not, whose names start with a prefix")
	prefix := fs.String("prefix", "", "only locks whose names start with this (literally)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table (the fields of inspect --json)")
	rest, after, ok, code := parse(e, fs, args)
	if !ok {
		return code
	}
	if len(rest)+len(after) != 0 {
		return e.failf(exitUsage, "list takes no arguments; use --prefix")
	}
	cfg.ReadOnly = true
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	infos, err := b.List(ctx, *prefix)
	if err != nil {
		return e.fail(exitError, err)
	}
	if *asJSON {
		return printJSON(e, infos) // shylock.Info's own JSON shape
	}
	table(e.stdout, infos, time.Now())
	return 0
}

func runInspect(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("inspect", inspectArgs, "Show one lock")
	asJSON := fs.Bool("json", false, "print JSON: name, state, holder, owner_id, token, acquired_at, renewed_at, expires_at, remaining_seconds")
	rest, after, ok, code := parse(e, fs, args)
	if !ok {
		return code
	}
	if rest = append(rest, after...); len(rest) != 1 {
		return e.failf(exitUsage, "inspect takes one lock name")
	}
	name, code := lockName(e, rest[0])
	if code != 0 {
		return code
	}
	cfg.ReadOnly = true
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	info, err := b.Inspect(ctx, name)
	if err != nil {
		return e.fail(exitError, err)
	}
	if *asJSON {
		return printJSON(e, info) // shylock.Info's own JSON shape
	}
	w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "name\t%s\n", info.Name)
	fmt.Fprintf(w, "state\t%s\n", map[bool]string{true: "held", false: "free"}[info.Held])
	if info.Token != 0 {
		fmt.Fprintf(w, "holder\t%s\n", dash(info.Label))
		fmt.Fprintf(w, "owner_id\t%s\n", dash(info.Owner))
		fmt.Fprintf(w, "token\t%d\n", info.Token)
		expires := info.ExpiresAt
		if !info.Held {
			expires = time.Time{} // a free lock has no expiry
		}
		for _, t := range []struct {
			key string
			at  time.Time
		}{{"acquired_at", info.AcquiredAt}, {"renewed_at", info.RenewedAt}, {"expires_at", expires}} {
			if !t.at.IsZero() {
				fmt.Fprintf(w, "%s\t%s\n", t.key, t.at.UTC().Format(time.RFC3339Nano))
			}
		}
	}
	if info.Held {
		fmt.Fprintf(w, "remaining_seconds\t%.3f\n", info.Remaining.Seconds())
	}
	_ = w.Flush()
	return 0
}

func runRelease(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("release", releaseArgs,
		"Free a lock whoever holds it. Its holder learns at its next renewal and its Release fails; the fencing sequence goes on")
	force := fs.Bool("force", false, "required: confirms that you mean to take the lock from its holder")
	rest, after, ok, code := parse(e, fs, args)
	if !ok {
		return code
	}
	if rest = append(rest, after...); len(rest) != 1 {
		return e.failf(exitUsage, "release takes one lock name")
	}
	if !*force {
		return e.failf(exitUsage, "release takes a lock from whoever holds it; add --force to confirm")
	}
	name, code := lockName(e, rest[0])
	if code != 0 {
		return code
	}
	b, closeBackend, code := open(ctx, e, cfg)
	if b == nil {
		return code
	}
	defer closeBackend()
	before, err := b.ForceRelease(ctx, name)
	switch {
	case errors.Is(err, shylock.ErrNotHeld):
		return e.failf(exitNotHeld, "%s is not held; nothing to release", quote.Name(name))
	case err != nil:
		return e.fail(exitError, err)
	}
	fmt.Fprintf(e.stdout, "released %s, held by %s (token %d, %s left)\n", quote.Name(before.Name), before.Label, before.Token,
		before.Remaining.Round(time.Millisecond))
	return 0
}

func runWatch(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("watch", watchArgs, "Show a live table of locks, redrawn whenever they change, until interrupted")
	prefix := fs.String("prefix", "", "only locks whose names start with this (literally)")
	interval := fs.Duration("interval", time.Second, "how often to read the locks")
	stopAfter := fs.Duration("for", 0, "stop after this long (0: until interrupted)")
	rest, after, ok, code := parse(e, fs, args)
	if !ok {
		return code
	}
	if len(rest)+len(after) != 0 || *interval <= 0 || *stopAfter < 0 {
		return e.failf(exitUsage, "watch takes no arguments, a positive --interval and a --for that is not negative")
	}
	cfg.ReadOnly = true
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
			e.fail(0, fmt.Errorf("%w (retrying)", err))
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
		return e.fail(exitError, err)
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
