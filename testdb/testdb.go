// Package testdb starts databases for the integration tests of services that use shylock, and
// returns backends ready to lock with. Everything it starts or creates is removed when the test
// ends (through t.Cleanup).
//
//   - Embedded runs FerretDB (MongoDB wire protocol, SQLite storage) inside the test process: no
//     Docker, no server to install, ready in milliseconds. FerretDB 1.x has no change streams,
//     TTL indexes or pipeline updates; the mongo backend falls back to what it has (a tailable
//     cursor wakes waiters), so locking behaves as on MongoDB, only more slowly.
//   - MongoContainer runs a MongoDB image with testcontainers-go as a single-node replica set,
//     so that change streams, the TTL monitor and server-clock updates are what the test meets.
//     The image comes from WithImage or the SHYLOCK_MONGO_IMAGE environment variable (for
//     example mongo:8); with neither, or without a Docker engine, or when the image is neither
//     on the engine nor can be pulled, the test is skipped with a message that says so.
//     WithWireImage runs any other image that serves the MongoDB wire protocol on port 27017
//     instead, such as the one FerretDBImage builds without a registry.
//   - ArangoContainer runs an ArangoDB image (WithImage or SHYLOCK_ARANGO_IMAGE, for example
//     arangodb:3.12) without authentication, and skips in the same way.
//   - Mongo and Arango make a backend on a fresh collection of a server the test already has
//     (SHYLOCK_MONGO_URI in CI, say), and EmbeddedURI, MongoContainerURI and ArangoContainerURL
//     start a server and return its address, for services that connect by themselves.
//
// Each call starts a server of its own. To share one among tests, start it in a parent test and
// run the others as its subtests, each with a backend of its own from Mongo or Arango.
//
// Containers are started with testcontainers-go, which reads its usual configuration
// (DOCKER_HOST, TESTCONTAINERS_HOST_OVERRIDE, ~/.testcontainers.properties). Its reaper
// (Ryuk) removes containers that a crashed test run leaves behind; where its image cannot be
// pulled either, set TESTCONTAINERS_RYUK_DISABLED=true: the containers are still removed when
// each test ends.
//
// testdb lives in a module of its own, so that testcontainers-go and FerretDB never enter the
// go.mod of a service that only imports shylock.
package testdb

import (
	"net/url"
	"time"

	"github.com/testcontainers/testcontainers-go"

	"github.com/shylock-go/shylock/arango"
	"github.com/shylock-go/shylock/mongo"
)

// Environment variables that name the images MongoContainer and ArangoContainer run when no
// WithImage option is given.
const (
	EnvMongoImage  = "SHYLOCK_MONGO_IMAGE"
	EnvArangoImage = "SHYLOCK_ARANGO_IMAGE"
)

// DefaultTimeout bounds starting a server and connecting to it, unless WithTimeout says
// otherwise.
const DefaultTimeout = 2 * time.Minute

// TB is the part of testing.TB that the helpers use: *testing.T, *testing.B and *testing.F
// satisfy it. A failure to start or connect calls Fatalf; a missing Docker engine or image
// calls Skipf. Both must end the calling goroutine, as testing.TB's do.
type TB interface {
	Helper()
	Cleanup(func())
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// Option configures a helper. An option that does not apply to a helper (WithArangoOptions
// given to Embedded, say) is ignored.
type Option func(*config)

type config struct {
	image       string
	imageFrom   string // where image came from, for messages: an option's or a variable's name
	wire        bool   // image is not mongod: run it as it is, with no replica set
	database    string
	collection  string
	timeout     time.Duration
	mongoOpts   []mongo.Option
	arangoOpts  []arango.Option
	customizers []testcontainers.ContainerCustomizer
}

func newConfig(opts []Option) *config {
	c := &config{timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// WithImage names the image MongoContainer or ArangoContainer runs, instead of the one in
// SHYLOCK_MONGO_IMAGE or SHYLOCK_ARANGO_IMAGE. For MongoContainer it must be a MongoDB (mongod)
// image: it is started as a replica set.
func WithImage(ref string) Option {
	return func(c *config) { c.image, c.imageFrom, c.wire = ref, "testdb.WithImage", false }
}

// WithWireImage makes MongoContainer run ref, an image of any server that speaks the MongoDB
// wire protocol on port 27017 (FerretDB, for one; see FerretDBImage), with its own entrypoint
// and command. No replica set is set up: the backend uses what the server has.
func WithWireImage(ref string) Option {
	return func(c *config) { c.image, c.imageFrom, c.wire = ref, "testdb.WithWireImage", true }
}

// WithDatabase names the database of the lock collection. MongoDB's is created on first use
// (default "shylock_test"); ArangoDB's must exist (default "_system").
func WithDatabase(name string) Option { return func(c *config) { c.database = name } }

// WithCollection names the lock collection. By default each backend gets a fresh collection,
// "locks_" and a random suffix, which is dropped when the test ends; a collection named with
// WithCollection is left as it is (the server it is on may still be removed).
func WithCollection(name string) Option { return func(c *config) { c.collection = name } }

// WithTimeout bounds how long starting a server, waiting for it to be ready and making the
// backend may take before the test fails (default DefaultTimeout). Pulling a missing image is
// part of starting.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithMongoOptions passes options to mongo.New.
func WithMongoOptions(opts ...mongo.Option) Option {
	return func(c *config) { c.mongoOpts = append(c.mongoOpts, opts...) }
}

// WithArangoOptions passes options to arango.New.
func WithArangoOptions(opts ...arango.Option) Option {
	return func(c *config) { c.arangoOpts = append(c.arangoOpts, opts...) }
}

// WithContainerOptions passes customizers to testcontainers.Run after the helper's own, for
// example to set environment variables, join a network or change the wait strategy.
func WithContainerOptions(opts ...testcontainers.ContainerCustomizer) Option {
	return func(c *config) { c.customizers = append(c.customizers, opts...) }
}

// collectionName returns the collection to use, and whether testdb chose it (and so drops it).
func (c *config) collectionName() (string, bool) {
	if c.collection != "" {
		return c.collection, false
	}
	return "locks_" + randomHex(6), true
}

// redact hides a password in a URL, for messages.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}
