package arango

import "time"

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
// holding came between). A live lock of another owner yields no row. The UPSERT's
// lookup reads the same snapshot as the subquery before it, so it finds the record just read (by
// name and revision) and takes the UPDATE branch; an attempt that reaches the server after its
// deadline (@deadline, server milliseconds) takes nothing, so that its clean-up can rely on it; a change another client commits after that
// snapshot makes the write fail with a write-write conflict (1200), and two clients inserting a
// name that had no record collide on the unique index (1210). Either way at most one takes the
// lock, and the caller reads the record again to learn who. waitForSync makes an acknowledged
// acquire durable.
const acquireAQL = `LET now = DATE_NOW()
FOR cur IN [FIRST(FOR d IN @@coll FILTER d.name == @name LIMIT 1 RETURN d)]
  FILTER now <= @deadline
  FILTER cur == null || cur.owner == "" || cur.owner == @owner || cur.expiresAt * 1000 + @offset < now
  UPSERT { name: @name, _rev: cur._rev }
  INSERT { name: @name, owner: @owner, label: @label, token: now * 1000,
    acquiredAt: now / 1000, renewedAt: now / 1000, expiresAt: (now + @ttl) / 1000 }
  UPDATE { owner: @owner, label: @label,
    token: OLD.owner == @owner ? OLD.token : MAX([OLD.token + 1, now * 1000]),
    acquiredAt: OLD.owner == @owner ? OLD.acquiredAt : now / 1000,
    renewedAt: now / 1000, expiresAt: (now + @ttl) / 1000 }
  IN @@coll OPTIONS { waitForSync: true }
  RETURN { token: NEW.token, expiresAt: NEW.expiresAt }`

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

// listAQL reads the records whose names start with @prefix. LEFT and LENGTH both count
// characters, so the comparison is literal; sorting happens in Go, by bytes. It reads the whole
// collection: a range on the index would follow the server's ICU collation, in which a tailored
// language (Danish "aa", Czech "ch") can sort a name starting with the prefix outside any range
// the prefix gives, and List is for operators, not for the path of a lock.
const listAQL = `LET now = DATE_NOW()
FOR d IN @@coll
  FILTER IS_STRING(d.name) && LEFT(d.name, LENGTH(@prefix)) == @prefix
  RETURN { doc: d, now: now }`

func (b *Backend) acquireQuery(name, owner, label string, ttl time.Duration, deadline time.Time) query {
	return query{acquireAQL, map[string]any{"@coll": b.coll, "name": name, "owner": owner,
		"label": label, "ttl": ttl.Milliseconds(), "offset": b.offset.Milliseconds(), "deadline": deadline.UnixMilli()}}
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

func (b *Backend) listQuery(prefix string) query {
	return query{listAQL, map[string]any{"@coll": b.coll, "prefix": prefix}}
}
