// Command ferretdb-server runs FerretDB (MongoDB wire protocol, SQLite storage) until it is
// sent SIGINT or SIGTERM; it prints "ready at URI" once it accepts connections. Built statically,
// it is the only program of the FROM scratch image testdb.FerretDBImage makes, and the project's
// own tests run it as a process and in their images too.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/shylock-go/shylock/testdb/internal/ferret"
)

func main() {
	listen := flag.String("listen", "0.0.0.0:27017", "address to listen on")
	data := flag.String("data", "/data", "directory for the SQLite files (created if missing)")
	flag.Parse()
	if err := os.MkdirAll(*data, 0o755); err != nil {
		log.Fatal(err)
	}
	srv, err := ferret.Start(*listen, *data, time.Minute, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready at", srv.URI())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
	srv.Stop()
}
