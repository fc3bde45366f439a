// Command webapi is a JSON web service that charges orders, each under its own lock, so two
// requests (to any number of replicas) never charge one order at once.
//
//	POST /orders/{id}/charge           waits for the lock within the request's context
//	POST /orders/{id}/charge?wait=false  answers 409 at once, naming the holder, if it is busy
//	GET  /locks                        lists the order locks
//
// Stop it with Ctrl-C (killing "go run" with kill leaves the server running).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/examples/backend"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to listen on")
	chargeTime := flag.Duration("charge-time", 2*time.Second, "how long a (simulated) charge takes")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	locks, embeddedURI, closeBackend, err := backend.Open(ctx) // examples/backend: one file to copy
	if err != nil {
		log.Fatal(err)
	}
	defer closeBackend()
	host, _ := os.Hostname()
	// Once, at start-up: every lock of this process uses this backend and these defaults.
	shylock.Configure(locks, shylock.WithOwner(fmt.Sprintf("webapi %s/%d", host, os.Getpid())), shylock.WithTTL(10*time.Second))

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: routes(*chargeTime), ReadHeaderTimeout: 5 * time.Second}
	fmt.Printf("listening on http://%s\n", ln.Addr())
	fmt.Printf("try two charges of one order at once; the second waits for the first:\n")
	fmt.Printf("  curl -X POST http://%s/orders/42/charge & curl -X POST http://%s/orders/42/charge\n", ln.Addr(), ln.Addr())
	fmt.Printf("or refuse instead of waiting:\n")
	fmt.Printf("  curl -X POST http://%s/orders/42/charge & sleep 0.2; curl -X POST 'http://%s/orders/42/charge?wait=false'\n", ln.Addr(), ln.Addr())
	fmt.Printf("see the order locks: curl http://%s/locks", ln.Addr())
	if embeddedURI != "" {
		fmt.Printf(", or: SHYLOCK_MONGO_URI=%s go run ./cmd/shylock list", embeddedURI)
	}
	fmt.Printf("\nstop with Ctrl-C\n")
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

func routes(chargeTime time.Duration) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders/{id}/charge", func(w http.ResponseWriter, r *http.Request) {
		charge(w, r, chargeTime)
	})
	mux.HandleFunc("GET /locks", func(w http.ResponseWriter, r *http.Request) {
		infos, err := shylock.Default().List(r.Context(), "orders/")
		if err != nil {
			reply(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
			return
		}
		reply(w, http.StatusOK, infos)
	})
	return mux
}

func charge(w http.ResponseWriter, r *http.Request, chargeTime time.Duration) {
	order := r.PathValue("id")
	name := "orders/" + order
	wait := true
	if v := r.URL.Query().Get("wait"); v != "" {
		var err error
		if wait, err = strconv.ParseBool(v); err != nil {
			reply(w, http.StatusBadRequest, map[string]any{"error": "wait must be true or false, not " + strconv.Quote(v)})
			return
		}
	}

	if !wait {
		// Refuse at once when someone is already charging this order.
		l := shylock.New(name)
		ok, err := l.TryAcquire(r.Context())
		if err != nil {
			failed(w, err)
			return
		}
		if !ok {
			holder, _ := l.Holder() // what the refused attempt saw: no second, racy read
			reply(w, http.StatusConflict, map[string]any{
				"error": "order " + order + " is being charged", "holder": holder.Label, "expiresAt": holder.ExpiresAt})
			return
		}
		// We hold it: release it when done, even if the client went away.
		defer func() { _ = l.Release(context.WithoutCancel(r.Context())) }()
		token := l.Token()
		if err := doCharge(r.Context(), order, token, chargeTime, l.Lost()); err != nil {
			failed(w, err)
			return
		}
		reply(w, http.StatusOK, map[string]any{"order": order, "charged": true, "token": token})
		return
	}

	// Wait for the lock as long as the request lives. Do renews it while charging, cancels
	// ctx if it is lost, and always releases it.
	var token uint64
	err := shylock.Do(r.Context(), name, func(ctx context.Context) error {
		token, _ = shylock.TokenFrom(ctx)
		return doCharge(ctx, order, token, chargeTime, nil)
	})
	if err != nil {
		failed(w, err)
		return
	}
	reply(w, http.StatusOK, map[string]any{"order": order, "charged": true, "token": token})
}

// doCharge stands for the call to the payment provider. It passes the fencing token along, so
// a provider that remembers the highest token per order refuses a stale holder, and it stops
// the moment the lock is lost (ctx cancelled by Do, or lost closed).
func doCharge(ctx context.Context, order string, token uint64, d time.Duration, lost <-chan struct{}) error {
	log.Printf("charging order %s with fencing token %d", order, token)
	select {
	case <-time.After(d):
		return nil
	case <-lost:
		return fmt.Errorf("charging order %s: %w", order, shylock.ErrLost)
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// failed maps errors to statuses. A charge that finished although the lock was lost while it
// ran is not to be retried: it happened, perhaps beside another (the provider's fencing check
// decides which one counts). One that stopped because the lock was lost may be retried; a
// request that ended while waiting needs no answer; a bad order id is the client's mistake.
func failed(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, shylock.ErrWorkDone):
		reply(w, http.StatusOK, map[string]any{"charged": true, "warning": "the order lock was lost while charging, " +
			"so another charge may have run beside this one; check the order before charging it again"})
	case errors.Is(err, shylock.ErrLost):
		reply(w, http.StatusServiceUnavailable, map[string]any{
			"error": "the order lock was lost, so the charge was stopped before completing; retry the request"})
	case errors.Is(err, shylock.ErrInvalidName):
		reply(w, http.StatusBadRequest, map[string]any{"error": "not a usable order id: " + err.Error()})
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		reply(w, http.StatusRequestTimeout, map[string]any{"error": "gave up waiting for the order lock"})
	default:
		reply(w, http.StatusServiceUnavailable, map[string]any{"error": err.Error()})
	}
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
