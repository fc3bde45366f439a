package integration

import (
	"context"
	"testing"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/mongo"
	"github.com/shylock-go/shylock/shylocktest"
)

// The backends' side of the lock service: shylock.Holdings on real servers.

func TestServeHoldingsMongo(t *testing.T) {
	coll := collection(t)
	b := newMongo(t, coll, suiteOffset)
	t.Logf("running against %s (server clock in updates: %v)", mongoServer, b.ServerClock())
	shylocktest.RunHoldings(t, func(t *testing.T) shylock.Backend { return b })

	specs, err := coll.Indexes().ListSpecifications(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		if s.Name == mongo.OwnerIndex {
			return
		}
	}
	t.Fatalf("indexes %+v: no %q, which finds holdings without reading released records", specs, mongo.OwnerIndex)
}

func TestServeHoldingsArango(t *testing.T) {
	db := arangoDatabase(t)
	shylocktest.RunHoldings(t, func(t *testing.T) shylock.Backend { return suiteArango(t, db) })
}
