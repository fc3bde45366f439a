package shylocktest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shylock-go/shylock"
)

// RunClose checks what a backend's Close promises: an Acquire waiting for a held lock returns
// promptly with an error matching shylock.ErrClosed (it does not wait on a poller nothing will
// signal again), so does every later acquire, and Abandon afterwards returns at once. open
// returns a fresh backend and the function that closes it.
func RunClose(t *testing.T, open func(t *testing.T) (shylock.Backend, func())) {
	t.Helper()
	b, closeBackend := open(t)
	name := "shylocktest/" + randomID() + "/close"
	holder := shylock.New(name, shylock.WithBackend(b), shylock.WithTTL(2*time.Second), shylock.WithLogger(testLogger(t)))
	if ok, err := holder.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	waiting := make(chan error, 1)
	go func() {
		waiting <- shylock.New(name, shylock.WithBackend(b), shylock.WithLogger(testLogger(t))).Acquire(context.Background())
	}()
	time.Sleep(100 * time.Millisecond) // let it wait
	closeBackend()
	select {
	case err := <-waiting:
		if !errors.Is(err, shylock.ErrClosed) {
			t.Fatalf("waiting Acquire after Close = %v; want an error matching ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an Acquire waiting for a held lock did not return within 5s of the backend's Close")
	}
	ok, err := shylock.New(name+"/later", shylock.WithBackend(b)).TryAcquire(context.Background())
	if ok || !errors.Is(err, shylock.ErrClosed) {
		t.Fatalf("TryAcquire after Close = %v, %v; want an error matching ErrClosed", ok, err)
	}
	done := make(chan struct{})
	go func() {
		b.Abandon(name, "nobody", time.Minute)
		close(done)
	}()
	if !closedWithin(done, time.Second) {
		t.Fatal("Abandon after Close blocked")
	}
}
