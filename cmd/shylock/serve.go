package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/cmd/shylock/internal/serve"
	"github.com/shylock-go/shylock/memory"
)

// EnvAPIKeys holds API keys for serve, comma-separated.
const EnvAPIKeys = "SHYLOCK_API_KEYS"

const serveArgs = "[--addr HOST:PORT] [--api-key KEY]... [--api-key-file FILE] [--tls-cert FILE --tls-key FILE] [--max-lease D] [--memory]"

// keyList collects repeated --api-key flags.
type keyList []string

func (k *keyList) String() string     { return fmt.Sprintf("%d keys", len(*k)) }
func (k *keyList) Set(v string) error { *k = append(*k, v); return nil }

func runServe(ctx context.Context, e *env, args []string) int {
	fs, cfg := newFlags("serve", serveArgs,
		"Serve the locks over HTTP: Relukko's v1 API (so its clients work unchanged), a WebSocket broadcast\n"+
			"of releases, a live web page at /, Prometheus metrics at /metrics and a health check at\n"+
			"/healthchecker (neither needs a key). Several replicas may serve one database; it is their only\n"+
			"state. API keys come from --api-key, --api-key-file (one per line) and $"+EnvAPIKeys+"\n"+
			"(comma-separated); every API call must carry one in the X-api-Key header")
	addr := fs.String("addr", "127.0.0.1:8090", "address to listen on")
	var keys keyList
	fs.Var(&keys, "api-key", "an API key clients may use (repeatable)")
	keyFile := fs.String("api-key-file", "", "a file of API keys, one per line")
	certFile := fs.String("tls-cert", "", "serve HTTPS with this certificate (PEM) ...")
	keyPEM := fs.String("tls-key", "", "... and this private key (PEM)")
	maxLease := fs.Duration("max-lease", 0, "the longest lease a client may set (keep_alive, add_to_expire_at, expires_at); 0: up to 200 years, "+
		"as Relukko's users pin a resource")
	useMemory := fs.Bool("memory", false, "serve from process memory: one replica, nothing kept (demos and tests)")
	poll := fs.Duration("poll", 250*time.Millisecond, "how often to read the locks for the broadcast and the page (releases and expiries elsewhere)")
	maxConns := fs.Int("max-conns", 1024, "the most connections served at once, WebSockets included; more wait")
	rest, after, ok, code := parse(e, fs, args)
	switch {
	case !ok:
		return code
	case len(rest)+len(after) != 0:
		return e.failf(exitUsage, "serve takes no arguments")
	case (*certFile == "") != (*keyPEM == ""):
		return e.failf(exitUsage, "--tls-cert and --tls-key go together")
	case *maxLease != 0 && (*maxLease < shylock.MinTTL || *maxLease > shylock.MaxAmendTTL):
		return e.failf(exitUsage, "--max-lease %v: give 0 (up to 200 years) or a duration between %v and 1752000h (200 years)", *maxLease, shylock.MinTTL)
	case *poll <= 0 || *maxConns <= 0:
		return e.failf(exitUsage, "--poll and --max-conns must be positive")
	}
	apiKeys, err := collectKeys(keys, *keyFile, os.Getenv(EnvAPIKeys))
	if err != nil {
		return e.fail(exitUsage, err)
	}

	var (
		b            shylock.Backend
		closeBackend func()
	)
	if *useMemory {
		m := memory.New()
		b, closeBackend = m, m.Close
	} else if b, closeBackend, code = open(ctx, e, cfg); b == nil {
		return code
	}
	defer closeBackend()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return e.fail(exitError, err)
	}
	scheme := "http"
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyPEM)
		if err != nil {
			_ = ln.Close()
			return e.fail(exitUsage, fmt.Errorf("--tls-cert/--tls-key: %w", err))
		}
		ln, scheme = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}), "https"
	}
	ln = netutil.LimitListener(ln, *maxConns)

	log := slog.New(slog.NewTextHandler(e.stderr, nil))
	s, err := serve.New(serve.Config{Backend: b, Keys: apiKeys, MaxLease: *maxLease, Poll: *poll, Log: log})
	if err != nil {
		_ = ln.Close()
		return e.fail(exitError, err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() { s.Run(sctx) })

	fmt.Fprintf(e.stdout, "listening on %s://%s\n", scheme, ln.Addr())
	if len(apiKeys) == 0 {
		fmt.Fprintf(e.stderr, "shylock: no API keys given: every request is accepted (give --api-key for anything but a demo)\n")
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err = <-served:
	case <-ctx.Done(): // SIGINT or SIGTERM: finish what is in flight
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err = srv.Shutdown(dctx)
		cancel()
		<-served
	}
	stop()
	s.CloseSockets()
	wg.Wait()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return e.fail(exitError, err)
	}
	return 0
}

// collectKeys gathers the API keys of the flags, the key file and the environment.
func collectKeys(flags []string, file, env string) ([][]byte, error) {
	var keys [][]byte
	add := func(k string) {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, []byte(k))
		}
	}
	for _, k := range flags {
		add(k)
	}
	for _, k := range strings.Split(env, ",") {
		add(k)
	}
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--api-key-file: %w", err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "#") {
				add(line)
			}
		}
	}
	return keys, nil
}
