package integration

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// relay is a TCP proxy in front of the server that reads every request far enough to tell one
// command from another, so that a test can pick a single command and:
//
//   - delay it in flight, as TCP retransmission or a queue inside the server would, while the
//     other connections carry on (the driver sends one command at a time on a pooled
//     connection, so delaying a connection's bytes delays only that command);
//   - hold it until the test lets it go, to reorder it behind other commands (a release behind a
//     later acquire's write, say);
//   - forward it and lose its reply, closing the connection: the write applies and the client
//     never learns that it did.
//
// A delayed or held command reaches the server even if its client gave up meanwhile, as bytes
// already sent do.
type relay struct {
	*tcpProxy

	mu     sync.Mutex
	faults []*fault // armed, oldest first
}

// fault is what the relay does to the first command that matches it; a fault is used once.
type fault struct {
	match   func(wireCommand) bool
	delay   time.Duration
	hold    chan struct{} // non-nil: forward the command only once closed
	drop    bool          // lose the reply
	Cmd     wireCommand   // the command it caught; read it after Arrived
	Arrived chan struct{} // closed when a command matched
	Applied chan struct{} // closed when the server answered it
	once    sync.Once
}

// Release lets a held command go on to the server.
func (f *fault) Release() {
	if f.hold != nil {
		f.once.Do(func() { close(f.hold) })
	}
}

func startRelay(t testing.TB, target string) *relay {
	t.Helper()
	r := &relay{}
	r.tcpProxy = startProxy(t, target, r.pipe, nil)
	return r
}

// client connects to the server through the relay. Retries are off: a test that loses a reply
// wants the library, not the driver, to deal with it.
func (r *relay) client(t testing.TB) *mdb.Client {
	t.Helper()
	c, err := mdb.Connect(options.Client().ApplyURI("mongodb://" + r.ln.Addr().String() + "/").
		SetRetryWrites(false).SetRetryReads(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

// collection is coll reached through the relay by a client of its own.
func (r *relay) collection(t testing.TB, coll *mdb.Collection) *mdb.Collection {
	return r.client(t).Database(coll.Database().Name()).Collection(coll.Name())
}

// Delay holds the next command that matches for d before forwarding it.
func (r *relay) Delay(match func(wireCommand) bool, d time.Duration) *fault {
	return r.arm(&fault{match: match, delay: d})
}

// Hold holds the next command that matches until the fault's Release.
func (r *relay) Hold(match func(wireCommand) bool) *fault {
	return r.arm(&fault{match: match, hold: make(chan struct{})})
}

// DropReply forwards the next command that matches, then loses its reply and closes the
// client's connection.
func (r *relay) DropReply(match func(wireCommand) bool) *fault {
	return r.arm(&fault{match: match, drop: true})
}

func (r *relay) arm(f *fault) *fault {
	f.Arrived, f.Applied = make(chan struct{}), make(chan struct{})
	r.mu.Lock()
	r.faults = append(r.faults, f)
	r.mu.Unlock()
	return f
}

// Disarm withdraws f if no command has matched it yet, and reports whether it did.
func (r *relay) Disarm(f *fault) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.Index(r.faults, f)
	if i >= 0 {
		r.faults = slices.Delete(r.faults, i, i+1)
	}
	return i >= 0
}

// take returns the first armed fault that cmd matches, and disarms it.
func (r *relay) take(cmd wireCommand) *fault {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, f := range r.faults {
		if f.match(cmd) {
			r.faults = slices.Delete(r.faults, i, i+1)
			f.Cmd = cmd
			close(f.Arrived)
			return f
		}
	}
	return nil
}

// pipe relays one connection: a request, then its replies (several for an exhaust cursor or a
// streaming hello), then the next request. Waiting for the reply before reading on means that a
// client that gave up on a delayed command still has it delivered and answered.
func (r *relay) pipe(client, server net.Conn) {
	for {
		req, err := readMessage(client)
		if err != nil {
			return
		}
		f := r.take(parseCommand(req))
		if f != nil {
			select {
			case <-time.After(f.delay):
			case <-r.closed:
				return
			}
			if f.hold != nil {
				select {
				case <-f.hold:
				case <-r.closed:
					return
				}
			}
		}
		if _, err := server.Write(req); err != nil {
			return
		}
		if msgFlags(req)&moreToCome != 0 {
			continue // no reply is due
		}
		for more := true; more; {
			reply, err := readMessage(server)
			if err != nil {
				return
			}
			if f != nil {
				close(f.Applied)
				if f.drop {
					return // applied, and the client never hears
				}
				f = nil
			}
			if _, err := client.Write(reply); err != nil {
				return // the client left; the server has answered
			}
			more = msgFlags(reply)&moreToCome != 0
		}
	}
}

// moreToCome is the OP_MSG flag bit that says another message follows without a request.
const moreToCome = 1 << 1

func msgFlags(msg []byte) uint32 {
	if len(msg) < 20 || binary.LittleEndian.Uint32(msg[12:16]) != opMsg {
		return 0
	}
	return binary.LittleEndian.Uint32(msg[16:20])
}

// wireCommand is what the relay reads of a request: enough to pick one command.
type wireCommand struct {
	Name       string   // insert, update, delete, findAndModify, find, hello, ...
	Collection string   // the collection it acts on, if any
	Filter     bson.Raw // of a find or findAndModify, or of the first update or delete statement
	Set        bson.Raw // the $set of an update document (nil for an update pipeline)
	Pipeline   bool     // the update is an aggregation pipeline
	Doc        bson.Raw // the first document of an insert
}

// Lock returns the lock name that the command selects, or that the document it inserts has.
func (c wireCommand) Lock() string {
	if s := str(c.Filter, "name"); s != "" {
		return s
	}
	return str(c.Doc, "name")
}

// str returns the string field key of doc, or "".
func str(doc bson.Raw, key string) string {
	if doc == nil {
		return ""
	}
	s, _ := doc.Lookup(key).StringValueOK()
	return s
}

// parseCommand reads an OP_MSG request: its command document (section kind 0) and the
// document sequences (kind 1) in which the driver sends the documents of insert, update and
// delete. Anything else gives the zero wireCommand.
func parseCommand(msg []byte) wireCommand {
	var c wireCommand
	if len(msg) < 21 || binary.LittleEndian.Uint32(msg[12:16]) != opMsg {
		return c
	}
	end := len(msg)
	if msgFlags(msg)&1 != 0 {
		end -= 4 // a checksum follows the sections
	}
	var (
		body bson.Raw
		seqs = map[string][]bson.Raw{}
	)
	for p := 20; p+5 <= end; {
		kind := msg[p]
		n := int(binary.LittleEndian.Uint32(msg[p+1 : p+5]))
		if n < 5 || p+1+n > end {
			return c
		}
		sec := msg[p+1 : p+1+n]
		p += 1 + n
		switch kind {
		case 0:
			body = bson.Raw(sec)
		case 1: // int32 size, cstring identifier, then documents
			i := slices.Index(sec[4:], 0)
			if i < 0 {
				return c
			}
			id, docs := string(sec[4:4+i]), sec[4+i+1:]
			for len(docs) >= 4 {
				m := int(binary.LittleEndian.Uint32(docs))
				if m < 5 || m > len(docs) {
					break
				}
				seqs[id] = append(seqs[id], bson.Raw(docs[:m]))
				docs = docs[m:]
			}
		}
	}
	elems, err := body.Elements()
	if err != nil || len(elems) == 0 {
		return c
	}
	c.Name = elems[0].Key()
	c.Collection, _ = elems[0].Value().StringValueOK()
	// first returns the first document of the array field key, sent in the body or as a sequence.
	first := func(key string) bson.Raw {
		if s := seqs[key]; len(s) > 0 {
			return s[0]
		}
		a, ok := body.Lookup(key).ArrayOK()
		if !ok {
			return nil
		}
		v, err := a.IndexErr(0)
		if err != nil {
			return nil
		}
		d, _ := v.DocumentOK()
		return d
	}
	update := func(u bson.RawValue) {
		if _, ok := u.ArrayOK(); ok {
			c.Pipeline = true
		} else if d, ok := u.DocumentOK(); ok {
			c.Set, _ = d.Lookup("$set").DocumentOK()
		}
	}
	switch c.Name {
	case "find":
		c.Filter, _ = body.Lookup("filter").DocumentOK()
	case "findAndModify":
		c.Filter, _ = body.Lookup("query").DocumentOK()
		update(body.Lookup("update"))
	case "insert":
		c.Doc = first("documents")
	case "update":
		if s := first("updates"); s != nil {
			c.Filter, _ = s.Lookup("q").DocumentOK()
			update(s.Lookup("u"))
		}
	case "delete":
		if s := first("deletes"); s != nil {
			c.Filter, _ = s.Lookup("q").DocumentOK()
		}
	}
	return c
}

// TestRelayReadsCommands checks the relay's reading of the commands a test picks by, and each of
// its faults, on the test server.
func TestRelayReadsCommands(t *testing.T) {
	ctx := context.Background()
	r := startRelay(t, mongoURIHost(t))
	coll := collection(t)
	via := r.collection(t, coll)

	ins := r.Delay(func(c wireCommand) bool { return c.Name == "insert" && c.Lock() == "a" }, 300*time.Millisecond)
	start := time.Now()
	if _, err := via.InsertOne(ctx, bson.D{{Key: "name", Value: "a"}, {Key: "owner", Value: "o"}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("a command delayed by 300ms took %v", d)
	}
	if ins.Cmd.Collection != coll.Name() || str(ins.Cmd.Doc, "owner") != "o" {
		t.Fatalf("read the insert as %+v", ins.Cmd)
	}

	upd := r.Hold(func(c wireCommand) bool { return c.Name == "update" && str(c.Set, "owner") == "" })
	done := make(chan error, 1)
	go func() {
		_, err := via.UpdateOne(ctx, bson.D{{Key: "name", Value: "a"}, {Key: "owner", Value: "o"}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}}}})
		done <- err
	}()
	<-upd.Arrived
	if c := upd.Cmd; c.Lock() != "a" || str(c.Filter, "owner") != "o" || c.Set == nil {
		t.Fatalf("read the update as %+v", c)
	}
	// Meanwhile other commands go through.
	if n, err := via.CountDocuments(ctx, bson.D{{Key: "owner", Value: "o"}}); err != nil || n != 1 {
		t.Fatalf("count while an update is held = %d, %v", n, err)
	}
	upd.Release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	lost := r.DropReply(func(c wireCommand) bool { return c.Name == "findAndModify" && c.Lock() == "a" })
	err := via.FindOneAndUpdate(ctx, bson.D{{Key: "name", Value: "a"}}, bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: "p"}}}}).Err()
	if err == nil {
		t.Fatal("a findAndModify whose reply was lost succeeded")
	}
	<-lost.Applied
	var doc struct{ Owner string }
	if err := coll.FindOne(ctx, bson.D{{Key: "name", Value: "a"}}).Decode(&doc); err != nil || doc.Owner != "p" {
		t.Fatalf("the write whose reply was lost left %+v, %v; want it applied", doc, err)
	}
	if r.Disarm(lost) {
		t.Fatal("a fault that caught its command was still armed")
	}
}
