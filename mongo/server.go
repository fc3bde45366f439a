package mongo

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/shylock-go/shylock/internal/clock"
)

// server asks the server about itself with hello, or with isMaster before MongoDB 4.4.2.
type server struct {
	db       *mongo.Database
	isMaster atomic.Bool // hello is unknown to the server
	clock    *clock.Estimator
}

func newServer(db *mongo.Database, now func() time.Time) *server {
	s := &server{db: db}
	s.clock = clock.New(now, func(ctx context.Context) (time.Time, error) {
		r, err := s.hello(ctx)
		if err == nil && r.LocalTime.IsZero() {
			err = errors.New("its hello reply has no localTime")
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("mongo: reading the server's clock: %w", err)
		}
		return r.LocalTime, nil
	})
	return s
}

// helloReply holds the fields of hello (and isMaster) that the backend reads.
type helloReply struct {
	LocalTime time.Time `bson:"localTime"`
	SetName   string    `bson:"setName"` // a replica set's name
	Msg       string    `bson:"msg"`     // "isdbgrid" from a mongos
}

func (s *server) hello(ctx context.Context) (helloReply, error) {
	var r helloReply
	if !s.isMaster.Load() {
		err := s.db.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&r)
		if c, ok := code(err); !ok || c != codeCommandNotFound {
			return r, wrapHello(err)
		}
		s.isMaster.Store(true)
	}
	return r, wrapHello(s.db.RunCommand(ctx, bson.D{{Key: "isMaster", Value: 1}}).Decode(&r))
}

func wrapHello(err error) error {
	if err != nil {
		return fmt.Errorf("asking the server about itself (hello): %w", err)
	}
	return nil
}

// topology tells whether one server stamps every lock time, or several.
type topology struct{ several bool }

func (s *server) topology(ctx context.Context) (topology, error) {
	r, err := s.hello(ctx)
	return topology{several: r.SetName != "" || r.Msg == "isdbgrid"}, err
}

func (t topology) defaultOffset() time.Duration {
	if t.several {
		return DefaultMaxClockOffset
	}
	return 0
}
