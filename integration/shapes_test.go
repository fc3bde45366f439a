package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/readconcern"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
)

// TestMongoCommandShapes guards what CI cannot run: it drives both paths of the mongo backend
// (the server-clock path forced even where the server lacks it, as on FerretDB 1.x), records
// every command they send with a command monitor, and fails on shapes real MongoDB 4.4-8.x
// refuses or that would break a guarantee. See checkCommand for the rules.
func TestMongoCommandShapes(t *testing.T) {
	coll, rec := recordedCollection(t)
	detected := newMongo(t, coll) // New's own probe is the server-clock acquire
	for _, serverClock := range []bool{true, false} {
		t.Run(fmt.Sprintf("ServerClock=%v", serverClock), func(t *testing.T) {
			b := newMongo(t, coll, mongo.WithServerClock(serverClock))
			exercise(t, b, serverClock && !detected.ServerClock())
		})
	}

	var serverClockAcquires int
	for _, cmd := range rec.commands() {
		if isServerClockAcquire(cmd) {
			serverClockAcquires++
		}
		for _, problem := range checkCommand(coll.Name(), cmd) {
			t.Errorf("%s\n  command: %s", problem, cmd)
		}
	}
	if serverClockAcquires < 2 {
		t.Fatalf("saw %d server-clock acquires; the guard did not see the path it guards", serverClockAcquires)
	}
	t.Logf("%d commands checked, %d of them server-clock acquires", len(rec.commands()), serverClockAcquires)
}

// exercise sends every operation of the backend, with names and labels that look like operators.
// refused says the server lacks the path: every acquire must then fail at once with ErrRefused.
func exercise(t *testing.T, b *mongo.Backend, refused bool) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{"$where", "a.b", "$$NOW"} {
		l := shylock.New(name, shylock.WithBackend(b), shylock.WithOwner("$$ROOT"), shylock.WithLogger(slog.New(slog.DiscardHandler)))
		start := time.Now()
		err := l.Acquire(ctx) // blocking: a refusal must still end it
		if refused {
			if !errors.Is(err, shylock.ErrRefused) || time.Since(start) > 10*time.Second {
				t.Fatalf("Acquire(%q) on a server without the path = %v after %v; want ErrRefused at once", name, err, time.Since(start))
			}
			continue
		}
		if err != nil {
			t.Fatalf("Acquire(%q): %v", name, err)
		}
		if ok, err := shylock.New(name, shylock.WithBackend(b)).TryAcquire(ctx); ok || err != nil {
			t.Fatalf("second TryAcquire(%q) = %v, %v; want false, nil", name, ok, err)
		}
		if err := l.Extend(ctx, time.Minute); err != nil {
			t.Fatalf("Extend(%q): %v", name, err)
		}
		if _, err := b.Inspect(ctx, name); err != nil {
			t.Fatalf("Inspect(%q): %v", name, err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatalf("Release(%q): %v", name, err)
		}
		w := shylock.New(name, shylock.WithBackend(b), shylock.WithTTL(time.Second))
		if err := w.Acquire(ctx); err != nil {
			t.Fatalf("Acquire(%q) again: %v", name, err)
		}
		if _, err := b.ForceRelease(ctx, name); err != nil {
			t.Fatalf("ForceRelease(%q): %v", name, err)
		}
	}
	if _, err := b.List(ctx, "$"); err != nil {
		t.Fatalf("List: %v", err)
	}
	// A waiter subscribes, which opens the change stream where the server has one.
	h := shylock.New("waited", shylock.WithBackend(b), shylock.WithTTL(time.Second), shylock.WithLogger(slog.New(slog.DiscardHandler)))
	if ok, err := h.TryAcquire(ctx); refused || !ok || err != nil {
		if !refused {
			t.Fatalf("TryAcquire(waited) = %v, %v", ok, err)
		}
		return
	}
	time.AfterFunc(100*time.Millisecond, func() { _ = h.Release(ctx) })
	w := shylock.New("waited", shylock.WithBackend(b))
	if err := w.Acquire(ctx); err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if err := w.Release(ctx); err != nil {
		t.Fatalf("waiter's Release: %v", err)
	}
}

// recordedCollection returns a fresh collection on a client of its own that records every
// command it sends.
func recordedCollection(t *testing.T) (*mdb.Collection, *recorder) {
	rec := &recorder{}
	c, err := mdb.Connect(options.Client().ApplyURI(mongoURI).SetMonitor(&event.CommandMonitor{Started: rec.started}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	plain := collection(t)
	return c.Database(plain.Database().Name()).Collection(plain.Name()), rec
}

type recorder struct {
	mu   sync.Mutex
	cmds []bson.Raw
}

func (r *recorder) started(_ context.Context, e *event.CommandStartedEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, bson.Raw(bytes.Clone(e.Command)))
}

func (r *recorder) commands() []bson.Raw {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bson.Raw(nil), r.cmds...)
}

func isServerClockAcquire(cmd bson.Raw) bool {
	_, isFAM := cmd.Lookup("findAndModify").StringValueOK()
	upsert, _ := cmd.Lookup("upsert").BooleanOK()
	_, pipeline := cmd.Lookup("update").ArrayOK()
	return isFAM && upsert && pipeline
}

// Fields of a lock record, the only field paths a pipeline may name.
var recordFields = map[string]bool{"$name": true, "$owner": true, "$label": true, "$token": true, "$acquiredAt": true,
	"$renewedAt": true, "$expiresAt": true, "$createdAt": true, "$_shylockState": true, "$party": true, "$queue": true,
	"$_shylockNow": true, "$_shylockLive": true, "$_shylockMine": true}

// pipelineVariables are the variables the lock's pipelines bind themselves ($filter's "e",
// $let's "q"), besides the system's $$NOW and $$REMOVE.
var pipelineVariables = map[string]bool{"$$NOW": true, "$$REMOVE": true, "$$e": true, "$$q": true}

// entryPaths are the fields whose parts the pipelines read by dotted path: the queue's entries,
// and the caller's entry among them. No other dotted path is the library's.
var entryPaths = []string{"$queue.", "$_shylockMine.", "$$e."}

// ours reports whether s, a string starting with "$" in a pipeline, is a field or variable of
// the library's own.
func ours(s string) bool {
	for _, p := range entryPaths {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return recordFields[s] || pipelineVariables[s]
}

// Stages MongoDB allows in an update pipeline, and the expression operators of MongoDB 4.4 that a
// lock command may use. An operator outside this list may be newer than 4.4 (such as $getField,
// 5.0) or a typo: both fail on the oldest server the library supports.
var (
	updateStages = map[string]bool{"$addFields": true, "$set": true, "$project": true, "$unset": true,
		"$replaceRoot": true, "$replaceWith": true}
	operators44 = map[string]bool{"$literal": true, "$cond": true, "$switch": true, "$eq": true, "$ne": true,
		"$gt": true, "$gte": true, "$lt": true, "$lte": true, "$and": true, "$or": true, "$not": true, "$add": true,
		"$subtract": true, "$multiply": true, "$max": true, "$min": true, "$ifNull": true, "$toLong": true,
		"$toDate": true, "$in": true, "$let": true, "$mergeObjects": true, "$filter": true, "$objectToArray": true,
		"$arrayToObject": true, "$first": true, "$size": true, "$concatArrays": true}
	// Query operators a filter may use; $expr only where the command never inserts.
	queryOperators = map[string]bool{"$gt": true, "$gte": true, "$lt": true, "$lte": true, "$ne": true, "$eq": true,
		"$in": true, "$exists": true, "$regex": true, "$expr": true, "$or": true, "$and": true}
)

// checkCommand returns what is wrong with one command sent to the lock collection coll.
func checkCommand(coll string, cmd bson.Raw) []string {
	elems, err := cmd.Elements()
	if err != nil || len(elems) == 0 {
		return []string{"unreadable command"}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	op := elems[0].Key()
	if target, _ := elems[0].Value().StringValueOK(); target != coll {
		return nil // another collection, or a command on the database
	}
	write := op == "insert" || op == "update" || op == "delete" || op == "findAndModify"
	if write && !majorityJournaled(cmd.Lookup("writeConcern")) {
		bad("%s without write concern {w: majority, j: true}: an acknowledged lock could be lost in a failover", op)
	}
	switch op {
	case "findAndModify":
		q, _ := cmd.Lookup("query").DocumentOK()
		upsert, _ := cmd.Lookup("upsert").BooleanOK()
		problems = append(problems, checkFilter(q, upsert, true)...)
		if arr, ok := cmd.Lookup("update").ArrayOK(); ok {
			problems = append(problems, checkPipeline(bson.Raw(arr))...)
		}
		for _, k := range []string{"let", "hint"} {
			if _, err := cmd.LookupErr(k); err == nil {
				bad("findAndModify with %q: MongoDB 4.4 has no let, and FerretDB refuses hint", k)
			}
		}
	case "update":
		for _, u := range statements(cmd, "updates") {
			q, _ := u.Lookup("q").DocumentOK()
			upsert, _ := u.Lookup("upsert").BooleanOK()
			multi, _ := u.Lookup("multi").BooleanOK()
			problems = append(problems, checkFilter(q, upsert, !multi)...)
			if arr, ok := u.Lookup("u").ArrayOK(); ok {
				problems = append(problems, checkPipeline(bson.Raw(arr))...)
			}
		}
	case "delete":
		for _, d := range statements(cmd, "deletes") {
			q, _ := d.Lookup("q").DocumentOK()
			limit, _ := d.Lookup("limit").AsInt64OK()
			problems = append(problems, checkFilter(q, false, limit == 1)...)
		}
	case "find":
		if !majority(cmd.Lookup("readConcern")) {
			bad("find without read concern majority: it may show a lock a failover rolls back")
		}
	case "aggregate":
		pipeline, _ := cmd.Lookup("pipeline").ArrayOK()
		first, _ := pipeline.Index(0).DocumentOK()
		if _, err := first.LookupErr("$changeStream"); err == nil {
			if rc, err := cmd.LookupErr("readConcern"); err == nil && !majority(rc) {
				bad("change stream with read concern %s: anything but majority fails with InvalidOptions (72)", rc)
			}
		}
	}
	return problems
}

// statements returns the documents in the array key of a write command (updates, deletes).
func statements(cmd bson.Raw, key string) []bson.Raw {
	arr, _ := cmd.Lookup(key).ArrayOK()
	vals, _ := arr.Values()
	docs := make([]bson.Raw, 0, len(vals))
	for _, v := range vals {
		if d, ok := v.DocumentOK(); ok {
			docs = append(docs, d)
		}
	}
	return docs
}

// checkFilter checks a write's filter. An upsert's filter must not hold $expr (MongoDB: 224,
// QueryFeatureNotAllowed), and a single-document write must name its record by name or _id:
// on a collection sharded on name, MongoDB before 7.1 refuses it otherwise (ShardKeyNotFound).
func checkFilter(q bson.Raw, upsert, single bool) []string {
	var problems []string
	elems, _ := q.Elements()
	targeted := false
	for _, e := range elems {
		switch k := e.Key(); {
		case k == "name" || k == "_id":
			if _, isDoc := e.Value().DocumentOK(); !isDoc {
				targeted = true
			}
		case strings.HasPrefix(k, "$") && !queryOperators[k]:
			problems = append(problems, fmt.Sprintf("filter uses %s", k))
		}
	}
	walk(q, func(key string, _ bson.RawValue) {
		if upsert && (key == "$expr" || key == "$where" || key == "$text") {
			problems = append(problems, fmt.Sprintf("%s in the filter of an upsert: MongoDB refuses it (224, QueryFeatureNotAllowed)", key))
		}
	})
	if single && !targeted {
		problems = append(problems, "a single-document write whose filter has no equality on name or _id: refused on a sharded collection")
	}
	return problems
}

// checkPipeline checks an update pipeline: its stages, its operators, and that every string
// starting with "$" is a variable or a record field. A caller's value must be inside $literal,
// or "$owner" as a label would copy the owner field.
func checkPipeline(stages bson.Raw) []string {
	var problems []string
	vals, _ := stages.Values()
	for _, v := range vals {
		stage, _ := v.DocumentOK()
		elems, _ := stage.Elements()
		for _, e := range elems {
			if !updateStages[e.Key()] {
				problems = append(problems, fmt.Sprintf("stage %s is not allowed in an update pipeline", e.Key()))
			}
		}
		walkExpr(stage, false, func(key string, s string, literal bool) {
			switch {
			case key != "" && strings.HasPrefix(key, "$") && !updateStages[key] && !operators44[key]:
				problems = append(problems, fmt.Sprintf("operator %s is not one of MongoDB 4.4's", key))
			case s != "" && !literal && strings.HasPrefix(s, "$$") && !ours(s):
				problems = append(problems, fmt.Sprintf("variable %q in a pipeline", s))
			case s != "" && !literal && strings.HasPrefix(s, "$") && !strings.HasPrefix(s, "$$") && !ours(s):
				problems = append(problems, fmt.Sprintf("%q would be read as a field path: a caller's value outside $literal?", s))
			}
		})
	}
	return problems
}

// walk calls fn for every key of doc and of the documents and arrays inside it.
func walk(doc bson.Raw, fn func(key string, v bson.RawValue)) {
	elems, _ := doc.Elements()
	for _, e := range elems {
		fn(e.Key(), e.Value())
		if d, ok := e.Value().DocumentOK(); ok {
			walk(d, fn)
		}
		if a, ok := e.Value().ArrayOK(); ok {
			walk(bson.Raw(a), fn)
		}
	}
}

// walkExpr calls fn for every key and string value of an expression, saying whether it lies
// inside $literal.
func walkExpr(doc bson.Raw, literal bool, fn func(key, s string, literal bool)) {
	elems, _ := doc.Elements()
	for _, e := range elems {
		inLit := literal || e.Key() == "$literal"
		fn(e.Key(), "", literal)
		visitValue(e.Value(), inLit, fn)
	}
}

func visitValue(v bson.RawValue, literal bool, fn func(key, s string, literal bool)) {
	if s, ok := v.StringValueOK(); ok {
		fn("", s, literal)
	}
	if d, ok := v.DocumentOK(); ok {
		walkExpr(d, literal, fn)
	}
	if a, ok := v.ArrayOK(); ok {
		vals, _ := a.Values()
		for _, x := range vals {
			visitValue(x, literal, fn)
		}
	}
}

func majorityJournaled(v bson.RawValue) bool {
	d, ok := v.DocumentOK()
	if !ok {
		return false
	}
	w, _ := d.Lookup("w").StringValueOK()
	j, _ := d.Lookup("j").BooleanOK()
	return w == "majority" && j
}

func majority(v bson.RawValue) bool {
	d, ok := v.DocumentOK()
	if !ok {
		return false
	}
	level, _ := d.Lookup("level").StringValueOK()
	return level == "majority"
}

// TestCommandCheckerCatches: the guard is only as good as its rules; each of these shapes has
// failed on a real server, and the checker must say so.
func TestCommandCheckerCatches(t *testing.T) {
	wc := bson.D{{Key: "w", Value: "majority"}, {Key: "j", Value: true}}
	for _, c := range []struct {
		what string
		cmd  bson.D
		want string
	}{
		{"$expr in an upsert's filter", bson.D{{Key: "findAndModify", Value: "c"},
			{Key: "query", Value: bson.D{{Key: "name", Value: "x"}, {Key: "$expr", Value: bson.D{{Key: "$lte", Value: bson.A{"$expiresAt", "$$NOW"}}}}}},
			{Key: "update", Value: bson.A{bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: bson.D{{Key: "$literal", Value: "o"}}}}}}}},
			{Key: "upsert", Value: true}, {Key: "writeConcern", Value: wc}}, "QueryFeatureNotAllowed"},
		{"a caller's label outside $literal", bson.D{{Key: "findAndModify", Value: "c"}, {Key: "query", Value: bson.D{{Key: "name", Value: "x"}}},
			{Key: "update", Value: bson.A{bson.D{{Key: "$set", Value: bson.D{{Key: "label", Value: "$owner.x"}}}}}},
			{Key: "writeConcern", Value: wc}}, "field path"},
		{"an operator newer than 4.4", bson.D{{Key: "findAndModify", Value: "c"}, {Key: "query", Value: bson.D{{Key: "name", Value: "x"}}},
			{Key: "update", Value: bson.A{bson.D{{Key: "$set", Value: bson.D{{Key: "t", Value: bson.D{{Key: "$dateAdd", Value: bson.D{}}}}}}}}},
			{Key: "writeConcern", Value: wc}}, "$dateAdd"},
		{"an update by owner alone", bson.D{{Key: "update", Value: "c"}, {Key: "updates", Value: bson.A{bson.D{
			{Key: "q", Value: bson.D{{Key: "owner", Value: "o"}}}, {Key: "u", Value: bson.D{{Key: "$set", Value: bson.D{{Key: "owner", Value: ""}}}}}}}},
			{Key: "writeConcern", Value: wc}}, "sharded"},
		{"a write without majority", bson.D{{Key: "delete", Value: "c"}, {Key: "deletes", Value: bson.A{bson.D{
			{Key: "q", Value: bson.D{{Key: "name", Value: "x"}}}, {Key: "limit", Value: 1}}}}}, "write concern"},
		{"a change stream at local", bson.D{{Key: "aggregate", Value: "c"},
			{Key: "pipeline", Value: bson.A{bson.D{{Key: "$changeStream", Value: bson.D{}}}}},
			{Key: "readConcern", Value: bson.D{{Key: "level", Value: "local"}}}}, "InvalidOptions"},
	} {
		raw, err := bson.Marshal(c.cmd)
		if err != nil {
			t.Fatal(err)
		}
		problems := strings.Join(checkCommand("c", raw), "\n")
		if !strings.Contains(problems, c.want) {
			t.Errorf("%s: the checker said %q; want a problem mentioning %q", c.what, problems, c.want)
		}
	}
}

// TestMongoChangeStreamReadsAtMajority: WithReadConcern relaxes reads, but a change stream
// accepts nothing but majority (InvalidOptions, 72, retried forever), so the stream must ignore it.
func TestMongoChangeStreamReadsAtMajority(t *testing.T) {
	coll, rec := recordedCollection(t)
	b := newMongo(t, coll, mongo.WithReadConcern(readconcern.Local()))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	holder := shylock.New("held", shylock.WithBackend(b))
	if ok, err := holder.TryAcquire(ctx); !ok || err != nil {
		t.Fatalf("TryAcquire = %v, %v", ok, err)
	}
	_ = shylock.New("held", shylock.WithBackend(b)).Acquire(ctx) // waits, which opens the stream
	streams := 0
	for _, cmd := range rec.commands() {
		pipeline, _ := cmd.Lookup("pipeline").ArrayOK()
		stage, err := pipeline.IndexErr(0)
		if err != nil {
			continue
		}
		first, _ := stage.DocumentOK()
		if _, err := first.LookupErr("$changeStream"); err != nil {
			continue
		}
		streams++
		if rc, err := cmd.LookupErr("readConcern"); err == nil && !majority(rc) {
			t.Fatalf("change stream opened with read concern %s, from WithReadConcern(local): %s", rc, cmd)
		}
	}
	if streams == 0 {
		t.Fatal("no change stream was opened; the test saw nothing")
	}
}
