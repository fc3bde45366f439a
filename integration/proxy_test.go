package integration

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
)

// tcpProxy is what the tests' proxies share: a listener in front of the server, a connection to
// the server for each client, and a close that cuts every connection and waits for the relays.
type tcpProxy struct {
	ln     net.Listener
	target string
	closed chan struct{} // closed by close
	wg     sync.WaitGroup

	connsMu sync.Mutex
	conns   []net.Conn
}

// startProxy listens in front of target and runs relay on each client connection and its own
// connection to the server; both are closed when relay returns. A client that arrives while
// refuse reports true is closed at once.
func startProxy(t testing.TB, target string, relay func(client, server net.Conn), refuse func() bool) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, closed: make(chan struct{})}
	p.wg.Add(1)
	go p.serve(relay, refuse)
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) serve(relay func(client, server net.Conn), refuse func() bool) {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if refuse != nil && refuse() {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.connsMu.Lock()
		p.conns = append(p.conns, client, server)
		p.connsMu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer client.Close()
			defer server.Close()
			relay(client, server)
		}()
	}
}

// cut closes every open connection, as a server that died would.
func (p *tcpProxy) cut() {
	p.connsMu.Lock()
	defer p.connsMu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *tcpProxy) close() {
	close(p.closed)
	_ = p.ln.Close()
	p.cut()
	p.wg.Wait()
}

// replyDropper is a TCP proxy in front of the server that, when armed, lets a write command
// through and then drops the server's reply and the connection: the write is applied but the
// client cannot know it, an ambiguous write. Armed for a getMore, it drops the reply and keeps
// the connection, as a connection does that died without a reset.
type replyDropper struct {
	*tcpProxy
	drop         atomic.Int32 // write replies still to drop
	dropped      atomic.Int32
	silence      atomic.Int32 // getMore replies still to drop
	silenced     atomic.Int32
	noHello      atomic.Bool  // answer hello outside the admin database as a server before 4.4.2 does
	helloRefused atomic.Int32 // hellos so answered
}

func startReplyDropper(t *testing.T, target string) *replyDropper {
	t.Helper()
	p := &replyDropper{}
	p.tcpProxy = startProxy(t, target, p.relay, nil)
	return p
}

// relay passes request and reply messages in turn: the driver's connections here wait for each
// reply before sending again.
func (p *replyDropper) relay(client, server net.Conn) {
	for {
		req, err := readMessage(client)
		if err != nil {
			return
		}
		if p.noHello.Load() && isUserHello(req) {
			p.helloRefused.Add(1)
			if _, err := client.Write(commandNotFound(req)); err != nil {
				return
			}
			continue
		}
		if _, err := server.Write(req); err != nil {
			return
		}
		reply, err := readMessage(server)
		if err != nil {
			return
		}
		if isWrite(req) && p.drop.Add(-1) >= 0 {
			p.dropped.Add(1)
			return // the server applied it; the client never hears
		}
		if isCommand(req, "getMore") && p.silence.Add(-1) >= 0 {
			p.silenced.Add(1)
			continue // the client waits for a reply that never comes
		}
		if _, err := client.Write(reply); err != nil {
			return
		}
	}
}

func readMessage(r io.Reader) ([]byte, error) {
	var header [16]byte
	if _, err := io.ReadFull(r, header[:]); err != nil {
		return nil, err
	}
	n := int(binary.LittleEndian.Uint32(header[:4]))
	if n < 16 || n > 48<<20 {
		return nil, errors.New("bad message length")
	}
	msg := make([]byte, n)
	copy(msg, header[:])
	_, err := io.ReadFull(r, msg[16:])
	return msg, err
}

const opMsg = 2013

// opMsgCommand returns the command document of an OP_MSG, or nil.
func opMsgCommand(msg []byte) bson.Raw {
	if len(msg) < 25 || binary.LittleEndian.Uint32(msg[12:16]) != opMsg || msg[20] != 0 {
		return nil
	}
	n := int(binary.LittleEndian.Uint32(msg[21:25]))
	if 21+n > len(msg) {
		return nil
	}
	return bson.Raw(msg[21 : 21+n])
}

// isWrite reports whether msg is an OP_MSG whose command writes.
func isWrite(msg []byte) bool {
	return isCommand(msg, "insert", "update", "delete", "findAndModify")
}

// isCommand reports whether msg is one of the commands names.
func isCommand(msg []byte, names ...string) bool {
	elems, err := opMsgCommand(msg).Elements()
	return err == nil && len(elems) > 0 && slices.Contains(names, elems[0].Key())
}

// isUserHello reports whether msg is a hello sent to a database other than admin: the library's,
// not the driver's own monitoring.
func isUserHello(msg []byte) bool {
	cmd := opMsgCommand(msg)
	elems, err := cmd.Elements()
	db, _ := cmd.Lookup("$db").StringValueOK()
	return err == nil && len(elems) > 0 && elems[0].Key() == "hello" && db != "admin"
}

// commandNotFound is the reply of a server that does not know the command of req.
func commandNotFound(req []byte) []byte {
	body, _ := bson.Marshal(bson.D{{Key: "ok", Value: 0.0}, {Key: "errmsg", Value: "no such command: 'hello'"},
		{Key: "code", Value: int32(59)}, {Key: "codeName", Value: "CommandNotFound"}})
	msg := make([]byte, 21, 21+len(body))
	binary.LittleEndian.PutUint32(msg[0:4], uint32(21+len(body)))
	binary.LittleEndian.PutUint32(msg[4:8], 1)                                     // requestID
	binary.LittleEndian.PutUint32(msg[8:12], binary.LittleEndian.Uint32(req[4:8])) // responseTo
	binary.LittleEndian.PutUint32(msg[12:16], opMsg)
	return append(msg, body...) // flag bits 0, then a body section (kind 0)
}

// TestMongoAmbiguousWrites drops the reply to an acquire's write after the server applied it.
func TestMongoAmbiguousWrites(t *testing.T) {
	checkLibraryLeaks(t)
	ctx := context.Background()
	proxy := startReplyDropper(t, mongoURIHost(t))
	proxied, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + proxy.ln.Addr().String() + "/").
		SetRetryWrites(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxied.Disconnect(context.Background()) })
	coll := collection(t)
	direct := newMongo(t, coll)
	backend := newMongo(t, proxied.Database(coll.Database().Name()).Collection(coll.Name()))

	// The retry must recognise the lock its lost write took: with a TTL of an hour, waiting
	// for it to expire would blow the deadline.
	proxy.drop.Store(1)
	l := shylock.New("ambiguous/retry", shylock.WithBackend(backend), shylock.WithTTL(time.Hour),
		shylock.WithRetry(time.Millisecond, 20*time.Millisecond))
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := l.Acquire(actx); err != nil {
		t.Fatalf("Acquire after a lost reply: %v", err)
	}
	if proxy.dropped.Load() != 1 {
		t.Fatal("no write reply was dropped; the test did not exercise an ambiguous write")
	}
	if info, _ := direct.Inspect(ctx, l.Name()); !info.Held || info.Token != l.Token() {
		t.Fatalf("the lock is %+v; want it held with token %d", info, l.Token())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// A TryAcquire that gives up on the lost reply must remove what its write did. Each gets a
	// backend of its own: the releases an earlier one left to its backend's background must not
	// meet the proxy's next armed drop.
	for _, name := range []string{"ambiguous/fresh", "ambiguous/retry"} { // a new record, and a free one
		backend.Close()
		backend = newMongo(t, proxied.Database(coll.Database().Name()).Collection(coll.Name()))
		proxy.drop.Store(1)
		ok, err := shylock.New(name, shylock.WithBackend(backend), shylock.WithTTL(time.Hour)).TryAcquire(ctx)
		if ok || err == nil {
			t.Fatalf("%s: TryAcquire with its reply lost = %v, %v; want false and the error", name, ok, err)
		}
		proxy.drop.Store(0)
		// The backend removes it in the background; an hour's lease left behind fails here.
		other := shylock.New(name, shylock.WithBackend(direct))
		waitFor(t, func() bool { ok, err := other.TryAcquire(ctx); return ok && err == nil })
	}
}

// mongoURIHost returns host:port of the test server.
func mongoURIHost(t testing.TB) string {
	t.Helper()
	cs, err := connstringHost(mongoURI)
	if err != nil {
		t.Skipf("the ambiguous-write test needs a single host:port in the server URI: %v", err)
	}
	return cs
}

// TestMongoBeforeHello: servers before MongoDB 4.4.2 answer hello with CommandNotFound; the
// backend must ask isMaster instead, for the topology and for its estimate of the server's clock.
func TestMongoBeforeHello(t *testing.T) {
	ctx := context.Background()
	proxy := startReplyDropper(t, mongoURIHost(t))
	proxy.noHello.Store(true)
	proxied, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + proxy.ln.Addr().String() + "/"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxied.Disconnect(context.Background()) })
	coll := collection(t)
	b := newMongo(t, proxied.Database(coll.Database().Name()).Collection(coll.Name()))
	l := shylock.New("old-server", shylock.WithBackend(b))
	if ok, err := l.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	if info, err := b.Inspect(ctx, "old-server"); err != nil || !info.Held {
		t.Fatalf("Inspect = %+v, %v", info, err)
	}
	if n := proxy.helloRefused.Load(); n != 1 {
		t.Fatalf("%d hellos refused; want exactly one, after which the backend asks isMaster", n)
	}
}
