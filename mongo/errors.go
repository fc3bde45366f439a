package mongo

import (
	"errors"
	"fmt"
	"strings"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver"
	drivertopology "go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/shylock-go/shylock"
)

// Server error codes the backend acts on, from MongoDB's error_codes.yml.
const (
	codeFailedToParse           = 9
	codeUnauthorized            = 13
	codeTypeMismatch            = 14
	codeNamespaceExists         = 48
	codeCommandNotFound         = 59
	codeShardKeyNotFound        = 61
	codeInvalidOptions          = 72
	codeIllegalOperation        = 20
	codeCommandNotSupported     = 115
	codeInvalidPipelineOperator = 168
	codeQueryFeatureNotAllowed  = 224
	codeNotImplemented          = 238
	codeChangeStreamFatal       = 280
	codeChangeStreamHistoryLost = 286
	codeInvalidResumeToken      = 260
	codeUndefinedVariable       = 17276
	codeUnrecognizedStage       = 40324
	codeReplicaSetOnly          = 40573
)

// code returns the error code the server gave for the command itself: a command error or the
// write error of a single write. A write concern error does not count: the write it reports
// may have been applied.
func code(err error) (int, bool) {
	var cmd mongo.CommandError
	if errors.As(err, &cmd) && cmd.Code != 0 {
		return int(cmd.Code), true
	}
	var we mongo.WriteException
	if errors.As(err, &we) && len(we.WriteErrors) > 0 {
		return we.WriteErrors[0].Code, true
	}
	return 0, false
}

// refusal reports whether err is an answer no retry changes: the server does not support the
// command or a part of it, or the credentials do not allow it. Anything else (a dropped
// connection, NotWritablePrimary during a failover, a timeout) may pass; so may a failed
// authentication, which a mongos answers while it cannot reach the config servers.
func refusal(err error) bool {
	c, ok := code(err)
	if !ok {
		return false
	}
	switch c {
	case codeUnauthorized, codeQueryFeatureNotAllowed, codeShardKeyNotFound,
		codeInvalidOptions, codeIllegalOperation:
		return true
	}
	return lacksFeature(err)
}

// lacksFeature reports whether err says that the server lacks a command or operator: pipeline
// updates, $$NOW, TTL indexes, change streams. The Go driver talks to MongoDB 4.4 or later only,
// which has them all (change streams on replica sets); these answers come from other servers of
// the wire protocol: FerretDB 1.x answers NotImplemented, others refuse an update given as an
// array (FailedToParse, TypeMismatch) or an unknown variable or stage.
func lacksFeature(err error) bool {
	c, ok := code(err)
	if !ok {
		return false
	}
	switch c {
	case codeFailedToParse, codeTypeMismatch, codeCommandNotFound, codeCommandNotSupported,
		codeInvalidPipelineOperator, codeNotImplemented, codeUndefinedVariable, codeUnrecognizedStage:
		return true
	}
	return false
}

// upsertRace reports whether err says that a concurrent upsert of the same name inserted first,
// so that trying again finds its record. MongoDB retries such upserts itself (update since 4.1.6,
// findAndModify later, both a bounded number of times), so E11000 is rare but possible; FerretDB
// over PostgreSQL (DocumentDB) answers an exclusion-constraint violation or a deadlock instead.
// None of them applied anything.
func upsertRace(err error) bool {
	if mongo.IsDuplicateKeyError(err) {
		return true
	}
	var se mongo.ServerError
	return errors.As(err, &se) && (se.HasErrorMessage("conflicting key value violates exclusion constraint") ||
		se.HasErrorMessage("deadlock detected"))
}

// notSent reports whether err says that the command never left the process: no server could be
// selected, no connection could be made or had, or the deadline was too close to send it. The
// driver returns such an error only for its first try of a command (after a retry it returns the
// first try's error), so none of them can hide a command that was sent.
func notSent(err error) bool {
	var (
		selection drivertopology.ServerSelectionError
		wait      drivertopology.WaitQueueTimeoutError
		conn      drivertopology.ConnectionError
	)
	switch {
	case errors.As(err, &selection), errors.As(err, &wait),
		errors.Is(err, drivertopology.ErrPoolClosed), errors.Is(err, drivertopology.ErrServerClosed),
		errors.Is(err, driver.ErrDeadlineWouldBeExceeded):
		return true
	case errors.As(err, &conn):
		// Dialling or the handshake failed: the connection never carried a command of ours.
		// The driver marks this only in the error's text.
		msg := conn.Error()
		return strings.Contains(msg, "error occurred during connection handshake") || strings.Contains(msg, "failed to connect to")
	}
	return false
}

// busy reports whether err is FerretDB's answer that another writer held its SQLite database for
// too long: the command was not applied, and a retry may pass.
func busy(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorMessage("database is locked")
}

// unapplied describes a failure of op on name that surely changed nothing: a read before any
// write, or a write the server refused unapplied.
func unapplied(op, name string, err error) error {
	if errors.Is(err, mongo.ErrClientDisconnected) {
		return fmt.Errorf("mongo: %s %q: %w: the database client was disconnected: %w", op, name, shylock.ErrClosed, err)
	}
	return fmt.Errorf("mongo: %s %q: %w: %w", op, name, shylock.ErrUnavailable, err)
}

var errClosed = fmt.Errorf("mongo: %w", shylock.ErrClosed)

// opError describes a failed operation on name, marking the failures no retry can cure, those
// of a closed client, and, if nothing the operation sent before could have changed anything
// (sentBefore false), a command that surely never left.
func opError(op, name string, err error, sentBefore bool) error {
	switch {
	case refusal(err):
		return fmt.Errorf("mongo: %s %q: %w: %w", op, name, shylock.ErrRefused, err)
	case errors.Is(err, mongo.ErrClientDisconnected):
		return fmt.Errorf("mongo: %s %q: %w: the database client was disconnected: %w", op, name, shylock.ErrClosed, err)
	case !sentBefore && (notSent(err) || busy(err)):
		return unapplied(op, name, err)
	}
	return fmt.Errorf("mongo: %s %q: %w", op, name, err)
}
