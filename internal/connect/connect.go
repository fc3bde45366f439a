// Package connect opens a backend on the server that flags or environment variables name, for
// the shylock command and the examples.
package connect

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

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

// DefaultTimeout bounds connecting, when Config.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Config names a lock collection on one server.
type Config struct {
	MongoURI, MongoDatabase   string
	ArangoURL, ArangoDatabase string
	Collection                string
	Timeout                   time.Duration // how long connecting may take; DefaultTimeout if zero
	ReadOnly                  bool          // open the backend read-only: nothing is created
}

func (c Config) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
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
// Connecting, and New with it, may take Config.Timeout; a server that cannot be reached in that
// time is named in a one-line error.
func (c Config) Open(ctx context.Context) (shylock.Backend, func(), error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	switch {
	case c.MongoURI != "":
		opts := options.Client().ApplyURI(c.MongoURI).SetServerSelectionTimeout(c.timeout()).SetConnectTimeout(c.timeout())
		client, err := mdb.Connect(opts)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to %s: %w", c.Where(), err)
		}
		var mopts []mongo.Option
		if c.ReadOnly {
			mopts = append(mopts, mongo.WithReadOnly())
		}
		b, err := mongo.New(ctx, client.Database(c.MongoDatabase).Collection(c.Collection), mopts...)
		if err != nil {
			_ = client.Disconnect(context.WithoutCancel(ctx))
			if unreachable(err) {
				return nil, nil, fmt.Errorf("cannot reach MongoDB at %s within %v: is it running, and is the address right?",
					strings.Join(opts.Hosts, ","), c.timeout())
			}
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
			if unreachable(err) {
				return nil, nil, fmt.Errorf("cannot reach ArangoDB at %s within %v: is it running, and is the address right?",
					redact(c.ArangoURL), c.timeout())
			}
			return nil, nil, fmt.Errorf("connecting to %s: %w", c.Where(), err)
		}
		var aopts []arango.Option
		if c.ReadOnly {
			aopts = append(aopts, arango.WithReadOnly())
		}
		b, err := arango.New(ctx, db, c.Collection, aopts...)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", c.Where(), err)
		}
		return b, b.Close, nil
	}
	return nil, nil, ErrNoServer
}

// unreachable reports whether err says the server could not be reached in time, which the
// drivers report with a dump of their state nobody needs.
func unreachable(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "server selection error") ||
		strings.Contains(err.Error(), "connection refused")
}
