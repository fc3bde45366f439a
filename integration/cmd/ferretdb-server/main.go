// Command ferretdb-server runs an embedded FerretDB, for the container images the integration
// tests build: a static binary that a FROM scratch image can run.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/shylock-go/shylock/examples/embedded"
)

func main() {
	listen := flag.String("listen", "0.0.0.0:27017", "address to listen on")
	data := flag.String("data", "/data", "directory for the SQLite files")
	flag.Parse()
	srv, err := embedded.Start(*listen, *data)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready at", srv.URI())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
	srv.Stop()
}
