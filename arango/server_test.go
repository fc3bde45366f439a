package arango_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/shylock-go/shylock/arango"
	"github.com/shylock-go/shylock/internal/connect"
)

// TestListQueryUsesTheIndex asks a real ArangoDB how it runs the list query: through the unique
// index on name, not by scanning the collection. It needs SHYLOCK_ARANGO_URL (the integration
// module runs the rest of the server tests, also against a container).
func TestListQueryUsesTheIndex(t *testing.T) {
	raw := os.Getenv("SHYLOCK_ARANGO_URL")
	if raw == "" {
		t.Skip("no ArangoDB: set SHYLOCK_ARANGO_URL (for example http://root:pw@127.0.0.1:8529) to ask a server for the list query's plan")
	}
	client, err := connect.ArangoClient(raw)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := client.GetDatabase(ctx, "_system", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := arango.New(ctx, db, "shylock_list_plan")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	text, bind := arango.ListQuery(b, "jobs/")
	plan, err := db.ExplainQuery(ctx, text, bind, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range plan.Plan.NodesRaw {
		if n["type"] == "IndexNode" {
			return
		}
	}
	t.Fatalf("the list query scans the collection: %+v", plan.Plan.NodesRaw)
}
