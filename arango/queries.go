package arango

import (
	"time"

	"github.com/shylock-go/shylock"
	"github.com/shylock-go/shylock/internal/ownerid"
)

// Every operation is one AQL query. Query text is constant: names, owners, labels, tokens and
// TTLs travel only as bind parameters, so no value can change what a query does. All times
// come from DATE_NOW(), the server's clock in milliseconds. Times are stored as numeric
// seconds, which the TTL index reads; tokens start from the server's clock in microseconds
// (of millisecond precision; exact in a double until the year 2255) and count up.

// query is an AQL query and its bind parameters.
type query struct {
	text string
	bind map[string]any
}

// acquireAQL takes the lock if it is free, expired by more than the clock offset (@offset, in
// milliseconds), or the caller's own (which keeps its token and acquisition time: no other
// holding came between), and the queue (see shylock.Backend.Acquire) has no live entry of
// another party before @party's. The record's queue is an object of entries {since, seen}
// (server seconds) keyed by party; an entry whose seen is @lease milliseconds old is dead. The
// holder's party is stored beside its owner: a refusal by a holding of the caller's own party
// does not join the queue (that party's turn goes on). The query returns one row: its state ("late", "mine", "take", "queued" or "held"), the record as
// read, and the lease it wrote when it took the lock.
//
// It writes when it takes the lock, or when it is refused and @wait (the caller's party joins
// the queue, or renews its entry), in one UPSERT: AQL modifies a collection once per query. The
// UPSERT's lookup reads the same snapshot as the subquery before it, so it finds the record just
// read (by name and revision) and takes the UPDATE branch; an attempt that reaches the server
// after its deadline (@deadline, server milliseconds) writes nothing, so that its clean-up can
// rely on it; a change another client commits after that snapshot makes the write fail with a
// write-write conflict (1200), and two clients inserting a name that had no record collide on
// the unique index (1210). Either way at most one takes the lock, and the caller reads the
// record again to learn who. The queue is written whole (mergeObjects false), so that an entry
// can go. waitForSync makes an acknowledged acquire durable.
const acquireAQL = `LET now = DATE_NOW()
LET cur = FIRST(FOR d IN @@coll FILTER d.name == @name LIMIT 1 RETURN d)
LET liveKeys = (FOR k IN ATTRIBUTES(cur.queue || {}) FILTER cur.queue[k].seen * 1000 + @lease > now RETURN k)
LET live = ZIP(liveKeys, (FOR k IN liveKeys RETURN cur.queue[k]))
LET mine = live[@party]
LET ahead = LENGTH(FOR k IN ATTRIBUTES(live) FILTER k != @party && (mine == null || live[k].since < mine.since) RETURN k) > 0
LET free = cur == null || cur.owner == "" || cur.expiresAt * 1000 + @offset < now
LET state = now > @deadline ? "late" : cur != null && cur.owner == @owner ? "mine" : free && !ahead ? "take" : free ? "queued" : "held"
LET taking = state IN ["mine", "take"]
LET written = (
  FOR x IN taking || (@wait && (state == "queued" || (state == "held" && cur.party != @party))) ? [1] : []
  UPSERT { name: @name, _rev: cur._rev }
  INSERT { name: @name, owner: @owner, label: @label, party: @party, token: now * 1000,
    acquiredAt: now / 1000, renewedAt: now / 1000, expiresAt: (now + @ttl) / 1000 }
  UPDATE taking ? { owner: @owner, label: @label, party: @party,
      token: OLD.owner == @owner ? OLD.token : MAX([OLD.token + 1, now * 1000]),
      acquiredAt: OLD.owner == @owner ? OLD.acquiredAt : now / 1000,
      renewedAt: now / 1000, expiresAt: (now + @ttl) / 1000, queue: UNSET(live, @party) }
    : { queue: MERGE(live, { [@party]: { since: mine == null ? now / 1000 : mine.since, seen: now / 1000 } }) }
  IN @@coll OPTIONS { waitForSync: true, mergeObjects: false }
  RETURN { token: NEW.token, expiresAt: NEW.expiresAt })
RETURN { state: state, doc: cur, lease: taking ? FIRST(written) : null }`

// renewQueueAQL renews @party's entries in the queues of @names. Merging keeps each entry's since.
const renewQueueAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name IN @names && HAS(d.queue, @party)
  UPDATE d WITH { queue: { [@party]: { seen: now / 1000 } } } IN @@coll`

// leaveQueueAQL takes @party's entry out of @name's queue. With ignoreRevs false, an entry
// another party wrote meanwhile makes it fail (1200) rather than vanish: the caller's entry
// then dies with its lease.
const leaveQueueAQL = `FOR d IN @@coll
  FILTER d.name == @name && HAS(d.queue, @party)
  UPDATE d WITH { queue: UNSET(d.queue, @party) } IN @@coll OPTIONS { ignoreRevs: false, mergeObjects: false }`

// extendAQL pushes out the expiry of a live holding. Updating the document as read, with
// ignoreRevs false, fails with a conflict if a takeover changed it meanwhile.
const extendAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name == @name && d.owner == @owner && d.token == @token && d.expiresAt * 1000 > now
  UPDATE d WITH { renewedAt: now / 1000, expiresAt: (now + @ttl) / 1000 } IN @@coll OPTIONS { ignoreRevs: false, waitForSync: true }
  RETURN { token: NEW.token, expiresAt: NEW.expiresAt }`

// releaseAQL marks the owner's record free (token 0 matches any of the owner's holdings). The
// record keeps the expiry of its last lease, so the TTL index deletes it a grace period after
// that, and until then the next token continues from it.
const releaseAQL = `FOR d IN @@coll
  FILTER d.name == @name && d.owner == @owner && (@token == 0 || d.token == @token)
  UPDATE d WITH { owner: "" } IN @@coll OPTIONS { ignoreRevs: false, waitForSync: true }
  RETURN true`

// forceReleaseAQL frees a record whoever owns it, returning it as it was.
const forceReleaseAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name == @name && d.owner != ""
  UPDATE d WITH { owner: "" } IN @@coll OPTIONS { ignoreRevs: false, waitForSync: true }
  RETURN { doc: OLD, now: now }`

// inspectAQL reads one record with the server's time.
const inspectAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name == @name
  LIMIT 1
  RETURN { doc: d, now: now }`

// probeAQL reads the records of the names a process waits on, with the server's time. The
// persistent index on name serves the IN.
const probeAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER d.name IN @names
  RETURN { doc: d, now: now }`

// listAQL reads the records whose names start with @prefix. LEFT and LENGTH both count
// characters, so the comparison is literal; sorting happens in Go, by bytes. It reads the whole
// collection: a range on the index would follow the server's ICU collation, in which a tailored
// language (Danish "aa", Czech "ch") can sort a name starting with the prefix outside any range
// the prefix gives, and List is for operators, not for the path of a lock.
const listAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER IS_STRING(d.name) && LEFT(d.name, LENGTH(@prefix)) == @prefix
  RETURN { doc: d, now: now }`

func (b *Backend) acquireQuery(req shylock.AcquireRequest, deadline time.Time) query {
	return query{acquireAQL, map[string]any{"@coll": b.coll, "name": req.Name, "owner": req.Owner,
		"label": req.Label, "ttl": req.TTL.Milliseconds(), "offset": b.offset.Milliseconds(), "deadline": deadline.UnixMilli(),
		"party": ownerid.QueueKey(req.Queue), "wait": req.Wait, "lease": shylock.QueueLease.Milliseconds()}}
}

func (b *Backend) renewQueueQuery(party string, names []string) query {
	return query{renewQueueAQL, map[string]any{"@coll": b.coll, "names": names, "party": ownerid.QueueKey(party)}}
}

func (b *Backend) leaveQueueQuery(party, name string) query {
	return query{leaveQueueAQL, map[string]any{"@coll": b.coll, "name": name, "party": ownerid.QueueKey(party)}}
}

func (b *Backend) extendQuery(name, owner string, token uint64, ttl time.Duration) query {
	return query{extendAQL, map[string]any{"@coll": b.coll, "name": name, "owner": owner,
		"token": token, "ttl": ttl.Milliseconds()}}
}

func (b *Backend) releaseQuery(name, owner string, token uint64) query {
	return query{releaseAQL, map[string]any{"@coll": b.coll, "name": name, "owner": owner, "token": token}}
}

func (b *Backend) forceReleaseQuery(name string) query {
	return query{forceReleaseAQL, map[string]any{"@coll": b.coll, "name": name}}
}

func (b *Backend) inspectQuery(name string) query {
	return query{inspectAQL, map[string]any{"@coll": b.coll, "name": name}}
}

func (b *Backend) probeQuery(names []string) query {
	return query{probeAQL, map[string]any{"@coll": b.coll, "names": names}}
}

func (b *Backend) listQuery(prefix string) query {
	return query{listAQL, map[string]any{"@coll": b.coll, "prefix": prefix}}
}
