package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// faultyNetwork is a toxiproxy, in process, between clients and the test server.
type faultyNetwork struct {
	proxy *toxiproxy.Proxy
}

// startFaultyNetwork starts a proxy to upstream (host:port).
func startFaultyNetwork(t *testing.T, upstream string) *faultyNetwork {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "mongo", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return &faultyNetwork{proxy: p}
}

// uri is the server's address through the proxy.
func (n *faultyNetwork) uri() string { return "mongodb://" + n.proxy.Listen + "/" }

// toxic adds a toxic for d, then removes it.
func (n *faultyNetwork) toxic(t *testing.T, name, kind, stream, attributes string, d time.Duration) {
	t.Helper()
	spec := `{"name":"` + name + `","type":"` + kind + `","stream":"` + stream + `","attributes":` + attributes + `}`
	if _, err := n.proxy.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
		t.Fatalf("toxic %s: %v", spec, err)
	}
	time.Sleep(d)
	if err := n.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
		t.Fatalf("removing toxic %s: %v", name, err)
	}
}

// cut drops every connection and refuses new ones for d.
func (n *faultyNetwork) cut(t *testing.T, d time.Duration) {
	t.Helper()
	n.proxy.Stop()
	time.Sleep(d)
	if err := n.proxy.Start(); err != nil {
		t.Fatal(err)
	}
}

// TestFaultNetwork runs holders through a network that adds latency, resets connections,
// swallows traffic and goes away: never two holders, and work goes on afterwards.
func TestFaultNetwork(t *testing.T) {
	checkLibraryLeaks(t)
	net := startFaultyNetwork(t, mongoURIHost(t))
	c, err := mdb.Connect(options.Client().ApplyURI(net.uri()).SetServerSelectionTimeout(time.Second).SetRetryWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	coll := collection(t)
	b := newMongo(t, c.Database(coll.Database().Name()).Collection(coll.Name()))

	ctx, cancel := context.WithCancel(context.Background())
	var load faultLoad
	wg := load.run(ctx, b, 4, 2*time.Second)
	time.Sleep(time.Second)
	net.toxic(t, "slow", "latency", "downstream", `{"latency":150,"jitter":100}`, time.Second)
	net.toxic(t, "reset", "reset_peer", "upstream", `{"timeout":20}`, 500*time.Millisecond)
	net.toxic(t, "blackhole", "timeout", "downstream", `{"timeout":0}`, 700*time.Millisecond)
	net.cut(t, 700*time.Millisecond)
	load.marked.Store(true)
	time.Sleep(3 * time.Second)
	cancel()
	wg.Wait()
	load.check(t)
}
