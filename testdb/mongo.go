package testdb

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"go.mongodb.org/mongo-driver/v2/bson"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock/mongo"
)

const (
	mongoPort       = "27017/tcp"
	replicaSet      = "rs0"
	defaultMongoDB  = "shylock_test"
	eventsSuffix    = ".events" // the capped collection of release events the mongo backend adds
	cleanupDeadline = 30 * time.Second
)

// Mongo returns a backend on a fresh collection of the MongoDB-wire server at uri (any server:
// one of the helpers' below, a CI service, SHYLOCK_MONGO_URI), made with mongo.New and the
// options of WithMongoOptions. When the test ends the backend is closed, the collection it was
// given dropped (unless it was named with WithCollection) and the client disconnected.
func Mongo(t TB, uri string, opts ...Option) *mongo.Backend {
	t.Helper()
	c := newConfig(opts)
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	client, err := mdb.Connect(options.Client().ApplyURI(uri).SetServerSelectionTimeout(c.timeout))
	if err != nil {
		t.Fatalf("testdb: connecting to %s: %v", redact(uri), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupDeadline)
		defer cancel()
		_ = client.Disconnect(ctx)
	})
	database := c.database
	if database == "" {
		database = defaultMongoDB
	}
	name, own := c.collectionName()
	coll := client.Database(database).Collection(name)
	if own {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), cleanupDeadline)
			defer cancel()
			_ = coll.Drop(ctx)
			_ = coll.Database().Collection(name + eventsSuffix).Drop(ctx)
		})
	}
	b, err := mongo.New(ctx, coll, c.mongoOpts...)
	if err != nil {
		t.Fatalf("testdb: making a mongo backend on %s, collection %s.%s: %v", redact(uri), database, name, err)
	}
	t.Cleanup(b.Close)
	return b
}

// MongoContainer starts a MongoDB container (see MongoContainerURI) and returns a backend on a
// fresh collection of it (see Mongo). Where no image, Docker engine or registry is at hand, the
// test is skipped with a message that names SHYLOCK_MONGO_IMAGE or the option that named the
// image.
func MongoContainer(t TB, opts ...Option) *mongo.Backend {
	t.Helper()
	return Mongo(t, MongoContainerURI(t, opts...), opts...)
}

// MongoContainerURI starts a container with testcontainers-go and returns a MongoDB
// connection string for it (with directConnection=true). The container is removed when the
// test ends.
//
// The image is the one WithImage names, else the one in SHYLOCK_MONGO_IMAGE (for example
// mongo:8). It runs as a replica set of one member, so that change streams work: mongod is
// started with --replSet rs0 --bind_ip_all and the set initiated; the URI is returned once the
// member is primary. WithWireImage runs an image that is not mongod instead, as it is.
//
// The test is skipped, with a message that says which and names where the image came from,
// when no image is named, no Docker engine answers, or the image is not on the engine and
// cannot be pulled. It fails if the container starts but the server is not ready in time
// (WithTimeout).
func MongoContainerURI(t TB, opts ...Option) string {
	t.Helper()
	c := newConfig(opts)
	image, from := c.image, c.imageFrom
	if image == "" {
		image, from = os.Getenv(EnvMongoImage), EnvMongoImage
	}
	if image == "" {
		t.Skipf("testdb: no MongoDB image to run: set %s to a MongoDB image (for example mongo:8) "+
			"that the Docker engine has or can pull, or pass testdb.WithImage", EnvMongoImage)
	}
	var args []testcontainers.ContainerCustomizer
	if !c.wire {
		args = append(args, testcontainers.WithCmd("--replSet", replicaSet, "--bind_ip_all"))
	}
	uri := "mongodb://" + run(t, c, image, from, mongoPort, args...) + "/?directConnection=true"

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	client, err := mdb.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatalf("testdb: connecting to %s: %v", image, err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	admin := client.Database("admin")
	err = poll(ctx, func(ctx context.Context) error { return client.Ping(ctx, nil) })
	if err != nil {
		t.Fatalf("testdb: %s did not answer on %s in %v: %v", image, uri, c.timeout, err)
	}
	if c.wire {
		return uri
	}
	// Inside the container the member is at localhost:27017; clients reach it directly.
	err = admin.RunCommand(ctx, bson.D{{Key: "replSetInitiate", Value: bson.D{
		{Key: "_id", Value: replicaSet},
		{Key: "members", Value: bson.A{bson.D{{Key: "_id", Value: 0}, {Key: "host", Value: "localhost:27017"}}}},
	}}}).Err()
	if err != nil && !strings.Contains(err.Error(), "already initialized") {
		t.Fatalf("testdb: initiating the replica set on %s: %v", image, err)
	}
	err = poll(ctx, func(ctx context.Context) error {
		var hello struct {
			IsWritablePrimary bool `bson:"isWritablePrimary"`
		}
		if err := admin.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&hello); err != nil {
			return err
		}
		if !hello.IsWritablePrimary {
			return errNotYet
		}
		return nil
	})
	if err != nil {
		t.Fatalf("testdb: the replica set on %s has no primary after %v: %v", image, c.timeout, err)
	}
	return uri
}
