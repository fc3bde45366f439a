package integration

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
)

// BenchmarkServeHistory: what the id calls and the broadcast's periodic read cost with no
// released records and with 100,000 of them, a busy day's history (released records stay for
// the grace period). They are inserted directly, as releases leave them. Reported: the median
// of GET /v1/locks/{id}, of GET …/keep_alive, and of GET /v1/locks/, which is the broadcast's
// read of the held locks, each with 10 locks held.
//
//	go test ./integration/ -run '^$' -bench ServeHistory -benchtime 200x
func BenchmarkServeHistory(b *testing.B) {
	bin := build(b, "github.com/shylock-go/shylock/cmd/shylock")
	for _, history := range []int{0, 100_000} {
		b.Run(fmt.Sprintf("released=%d", history), func(b *testing.B) {
			if history > 0 && os.Getenv("SHYLOCK_MONGO_URI") == "" {
				b.Skip("FerretDB 1.x reads every record for every query but a lookup by _id, so no index keeps its costs flat " +
					"(10,000 released records: half a second a call); set SHYLOCK_MONGO_URI to a MongoDB or FerretDB 2")
			}
			coll := collection(b)
			newMongo(b, coll) // the indexes first, as the history accumulates under them
			insertHistory(b, coll, history)
			s := startServe(b, bin, serveEnv(), "--collection", coll.Name(), "--poll", "1h")
			var ids []string
			for i := range 10 {
				var l relukkoLock
				if code := s.call(b, "POST", "/v1/locks/", fmt.Sprintf(`{"lock_name": "held/%d", "creator": "bench"}`, i), &l); code != 201 {
					b.Fatalf("POST: %d", code)
				}
				ids = append(ids, l.ID)
			}
			var get, keep, list []time.Duration
			timed := func(into *[]time.Duration, path string) {
				start := time.Now()
				if code := s.call(b, "GET", path, "", nil); code != 200 {
					b.Fatalf("GET %s: %d", path, code)
				}
				*into = append(*into, time.Since(start))
			}
			b.ResetTimer()
			for i := range b.N {
				id := ids[i%len(ids)]
				timed(&get, "/v1/locks/"+id)
				timed(&keep, "/v1/locks/"+id+"/keep_alive")
				timed(&list, "/v1/locks/")
			}
			b.ReportMetric(float64(median(get).Microseconds())/1000, "get-ms")
			b.ReportMetric(float64(median(keep).Microseconds())/1000, "keep_alive-ms")
			b.ReportMetric(float64(median(list).Microseconds())/1000, "held-read-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// insertHistory adds n released records to coll, shaped as releases leave them: no owner, the
// last holding's token, label and times.
func insertHistory(tb testing.TB, coll *mdb.Collection, n int) {
	tb.Helper()
	ctx := context.Background()
	now := time.Now().Truncate(time.Millisecond)
	for start := 0; start < n; start += 5000 {
		docs := make([]any, 0, 5000)
		for i := start; i < min(n, start+5000); i++ {
			at := now.Add(-time.Duration(i) * 500 * time.Millisecond)
			docs = append(docs, bson.D{{Key: "name", Value: fmt.Sprintf("history/%06d", i)}, {Key: "owner", Value: ""},
				{Key: "label", Value: "nightly job @ 10.0.0.5"}, {Key: "token", Value: at.UnixMicro()},
				{Key: "acquiredAt", Value: at.Add(-time.Minute)}, {Key: "renewedAt", Value: at.Add(-time.Minute)},
				{Key: "expiresAt", Value: at.Add(9 * time.Minute)}, {Key: "createdAt", Value: at.Add(-time.Minute)}})
		}
		if _, err := coll.InsertMany(ctx, docs); err != nil {
			tb.Fatalf("inserting the history: %v", err)
		}
	}
}
