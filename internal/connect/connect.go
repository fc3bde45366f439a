// Package connect opens a backend on the server that flags or environment variables name, for
// the shylock command and the examples.
package connect

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/arangodb/go-driver/v2/arangodb"
	"github.com/arangodb/go-driver/v2/connection"
	mdb "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/arango"
	"github.com/shylock-go/shylock/mongo"
)

// Environment variables, each the default of the matching Config field.
const (
	EnvMongoURI         = "SHYLOCK_MONGO_URI"
	EnvMongoDatabase    = "SHYLOCK_MONGO_DATABASE"
	EnvArangoURL        = "SHYLOCK_ARANGO_URL"
	EnvArangoDatabase   = "SHYLOCK_ARANGO_DATABASE"
	EnvCollection       = "SHYLOCK_COLLECTION"
	defaultDatabase     = "shylock"
	defaultCollection   = "locks"
	defaultArangoServer = "_system"
)

// ErrNoServer means neither a MongoDB URI nor an ArangoDB URL was given.
var ErrNoServer = errors.New("no lock server given: set " + EnvMongoURI + " or " + EnvArangoURL + " (or the matching flag)")

// Config names a lock collection on one server.
type Config struct {
	MongoURI, MongoDatabase   string
	ArangoURL, ArangoDatabase string
	Collection                string
}

// FromEnv returns the Config the environment describes.
func FromEnv() Config {
	return Config{
		MongoURI:       os.Getenv(EnvMongoURI),
		MongoDatabase:  envOr(EnvMongoDatabase, defaultDatabase),
		ArangoURL:      os.Getenv(EnvArangoURL),
		ArangoDatabase: envOr(EnvArangoDatabase, defaultArangoServer),
		Collection:     envOr(EnvCollection, defaultCollection),
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// Where describes the server for messages.
func (c Config) Where() string {
	switch {
	case c.MongoURI != "":
		return fmt.Sprintf("MongoDB %s, collection %s.%s", redact(c.MongoURI), c.MongoDatabase, c.Collection)
	case c.ArangoURL != "":
		return fmt.Sprintf("ArangoDB %s, collection %s/%s", redact(c.ArangoURL), c.ArangoDatabase, c.Collection)
	}
	return "no server"
}

// redact hides a password in a URL.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// ArangoClient returns a client for the ArangoDB endpoint in rawURL, with basic authentication
// from the URL's user info.
func ArangoClient(rawURL string) (arangodb.Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("ArangoDB URL %q: want http(s)://[user:password@]host:port", redact(rawURL))
	}
	cfg := connection.DefaultHTTPConfigurationWrapper(connection.NewRoundRobinEndpoints([]string{u.Scheme + "://" + u.Host}), false)
	if u.User != nil {
		pw, _ := u.User.Password()
		cfg.Authentication = connection.NewBasicAuth(u.User.Username(), pw)
	}
	return arangodb.NewClient(connection.NewHttpConnection(cfg)), nil
}

// Open connects and returns the backend and a function that closes it and its connection.
func (c Config) Open(ctx context.Context) (shylock.Backend, func(), error) {
	switch {
	case c.MongoURI != "":
		client, err := mdb.Connect(options.Client().ApplyURI(c.MongoURI))
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to %s: %w", c.Where(), err)
		}
		b, err := mongo.New(ctx, client.Database(c.MongoDatabase).Collection(c.Collection))
		if err != nil {
			_ = client.Disconnect(context.WithoutCancel(ctx))
			return nil, nil, fmt.Errorf("%s: %w", c.Where(), err)
		}
		return b, func() { b.Close(); _ = client.Disconnect(context.WithoutCancel(ctx)) }, nil
	case c.ArangoURL != "":
		client, err := ArangoClient(c.ArangoURL)
		if err != nil {
			return nil, nil, err
		}
		db, err := client.GetDatabase(ctx, c.ArangoDatabase, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to %s: %w", c.Where(), err)
		}
		b, err := arango.New(ctx, db, c.Collection)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", c.Where(), err)
		}
		return b, b.Close, nil
	}
	return nil, nil, ErrNoServer
}
