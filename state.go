package bearer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The engine's memory: one roleState per role, one connState per connection. This file
// owns their life: creation, locking, what invalidation drops.

// roleState is what the engine keeps in memory about one role.
type roleState struct {
	name string
	// lock serialises renewals and changes of the role. A channel, so that a write can
	// give up when its request ends (a renewal waits: each holder is bounded by
	// request_timeout).
	lock chan struct{}

	// view is what the fast path reads: replaced, never changed (but for served).
	view atomic.Pointer[roleView]

	// mu guards epoch and flight, and makes "check the epoch, then install a view"
	// atomic against invalidation.
	mu sync.Mutex
	// epoch counts invalidations: a view loaded before one is not installed.
	epoch uint64
	// flight is the renewal in progress, whose result the readers arriving meanwhile get.
	flight *flight

	// unsaved is the role's session when it could not be written yet; changed only
	// under lock.
	unsaved atomic.Pointer[unsavedSession]
	// reads are the role's read counters, resolved on its first read (metrics.readOf).
	reads atomic.Pointer[roleReads]
}

// unsavedSession is a session kept in memory because its write failed.
type unsavedSession struct {
	sess *sessionEntry
	// base is the revision of the stored entry it follows: it is written over that
	// entry, and dropped if storage moved on.
	base uint64
}

// roleView is a role with its session as the fast path reads it.
type roleView struct {
	role *roleEntry
	// session is nil when the role has none.
	session *sessionEntry
	// creds is the part of a creds answer that no read changes, built once; nil when
	// there is no access token.
	creds *credsView
	// unsaved marks a session kept in memory only: reads take the slow path, which
	// tries to write it.
	unsaved bool
	// served records that the access token was handed out (on a standby: that one read
	// was sent to the active node), which makes it worth renewing in the background.
	served atomic.Bool
}

// tokens returns the view's tokens; nil when there is no session.
func (v *roleView) tokens() *sessionTokens {
	if v == nil || v.session == nil {
		return nil
	}
	return &v.session.Tokens
}

// flight is one renewal of a role, with its result for the readers that waited for it.
type flight struct {
	done chan struct{}
	res  tokenResult
	err  error
}

// connState is what the engine keeps in memory about one connection.
type connState struct {
	name string
	// writeMu serialises config writes and deletes of the connection, so that two
	// partial updates cannot undo each other.
	writeMu sync.Mutex
	// accountMu serialises changes of the account record (accounts/<name>).
	accountMu sync.Mutex

	// mu guards the fields below.
	mu    sync.Mutex
	epoch uint64 // counts invalidations of config/<name>
	entry *connEntry
	// client is the HTTP client built for entry.
	client *tokenClient
	// slots bounds the token requests in flight to the provider (max_concurrent_requests).
	slots chan struct{}
	// accountEpoch counts invalidations of accounts/<name>.
	accountEpoch uint64
	account      *accountEntry // nil: not loaded
	// accountUnsaved marks an account record that could not be written yet.
	accountUnsaved bool
	// localRejection is the last rejection this node saw, kept in memory whether or not
	// storage took it: it holds back logins even when the record cannot be read.
	localRejection *rejection

	gate loginGate
}

// loginGate lets one password login go alone while a connection's credentials are
// unproven; the others wait for its outcome and share it if it failed.
type loginGate struct {
	mu sync.Mutex
	// proven is the credentials version a login last succeeded with (0: none since
	// this process started, or since a rejection).
	proven uint64
	// leader is the login of unproven credentials in progress.
	leader *gateFlight
}

type gateFlight struct {
	version uint64
	done    chan struct{}
	err     error // the outcome, set before done is closed
}

// enter returns when a login with credentials version may be sent: at once when they
// are proven (lead is nil, nothing to report), or when this caller leads the login
// (lead is set: it must call leave with it), or with the error of the login it waited
// for. A waiter gives up with its context.
func (g *loginGate) enter(ctx context.Context, version uint64) (lead *gateFlight, err error) {
	for {
		g.mu.Lock()
		if g.proven == version {
			g.mu.Unlock()
			return nil, nil
		}
		if f := g.leader; f != nil && f.version == version {
			g.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if f.err != nil {
				return nil, f.err
			}
			continue // proven now
		}
		// No login of this version in progress (one of another version may be: its
		// leader releases its own waiters).
		f := &gateFlight{version: version, done: make(chan struct{})}
		g.leader = f
		g.mu.Unlock()
		return f, nil
	}
}

// leave ends a login led through enter with its outcome, releasing its waiters.
func (g *loginGate) leave(f *gateFlight, err error) {
	if f == nil {
		return
	}
	g.mu.Lock()
	if err == nil && f.version >= g.proven {
		g.proven = f.version
	}
	if g.leader == f {
		g.leader = nil
	}
	g.mu.Unlock()
	f.err = err
	close(f.done)
}

// unprove makes credentials version unproven again (the provider rejected them); a
// zero version makes any unproven.
func (g *loginGate) unprove(version uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if version == 0 || g.proven == version {
		g.proven = 0
	}
}

// prove records a successful login with credentials version outside the gate (the
// verify login of a config write).
func (g *loginGate) prove(version uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if version >= g.proven {
		g.proven = version
	}
}

// roleState returns the state of a role, creating it. States live until Clean: a state
// dropped while a renewal holds it would let a second renewal of the same role start.
func (b *backend) roleState(name string) *roleState {
	if v, ok := b.roles.Load(name); ok {
		return v.(*roleState)
	}
	rs := &roleState{name: name, lock: make(chan struct{}, 1)}
	v, _ := b.roles.LoadOrStore(name, rs)
	return v.(*roleState)
}

// knownRoleState returns the state of a role, creating it only for a role that exists:
// reads of names nobody created leave nothing behind.
func (b *backend) knownRoleState(ctx context.Context, s logical.Storage, name string) (*roleState, error) {
	if v, ok := b.roles.Load(name); ok {
		return v.(*roleState), nil
	}
	role, err := b.role(ctx, s, name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return nil, &userError{msg: msgUnknownRole(name), unknownRole: true}
	}
	return b.roleState(name), nil
}

// connState returns the state of a connection, creating it.
func (b *backend) connState(name string) *connState {
	if v, ok := b.conns.Load(name); ok {
		return v.(*connState)
	}
	cs := &connState{name: name}
	v, _ := b.conns.LoadOrStore(name, cs)
	return v.(*connState)
}

// acquire takes a role's lock.
func (rs *roleState) acquire() { rs.lock <- struct{}{} }

// acquireCtx takes a role's lock, or gives up when ctx ends.
func (rs *roleState) acquireCtx(ctx context.Context) error {
	select {
	case rs.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("role %q is busy (a renewal is in progress): try again", rs.name)
	}
}

func (rs *roleState) release() { <-rs.lock }

// snapshot returns the role's epoch, to pass to install after loading from storage.
func (rs *roleState) snapshot() uint64 {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return rs.epoch
}

// install makes v the role's view unless an invalidation came after epoch was read:
// storage may then hold something newer than v. The served mark carries over to a view
// of the same access token.
func (rs *roleState) install(v *roleView, epoch uint64) bool {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.epoch != epoch {
		return false
	}
	if old := rs.view.Load(); old != nil && v != nil && old.served.Load() &&
		old.tokens() != nil && v.tokens() != nil && old.tokens().AccessToken == v.tokens().AccessToken {
		v.served.Store(true)
	}
	rs.view.Store(v)
	return true
}

// drop forgets the role's view; the next read loads it from storage. An unsaved session
// stays: it is written only over the stored revision it follows, so storage that moved
// on wins.
func (rs *roleState) drop() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.epoch++
	rs.view.Store(nil)
}

// cached returns the connection's entry if loaded.
func (cs *connState) cached() *connEntry {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.entry
}

// installEntry caches a connection entry loaded when the epoch was epoch.
func (cs *connState) installEntry(e *connEntry, epoch uint64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.epoch == epoch {
		cs.setEntryLocked(e)
	}
}

// setEntryLocked replaces the entry; the client built for the old one is dropped and
// its idle connections closed. The caller holds mu.
func (cs *connState) setEntryLocked(e *connEntry) {
	cs.entry = e
	if cs.client != nil && cs.client.conn != e {
		cs.client.http.CloseIdleConnections()
		cs.client = nil
	}
}

// dropEntry forgets the connection's entry (invalidated or deleted).
func (cs *connState) dropEntry() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.epoch++
	cs.setEntryLocked(nil)
}

// tokenClient returns the HTTP token client for entry, building it on first use.
func (b *backend) tokenClient(cs *connState, entry *connEntry) (*tokenClient, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.client != nil && cs.client.conn == entry {
		return cs.client, nil
	}
	c, err := b.newTokenClient(entry)
	if err != nil {
		return nil, err
	}
	c.slots = cs.slotsLocked(entry)
	c.observe = b.metrics.observer(cs.name, entry)
	if cs.entry == entry {
		if cs.client != nil {
			cs.client.http.CloseIdleConnections()
		}
		cs.client = c
	} else {
		// For an entry replaced meanwhile: used by this one renewal, kept by nobody, so
		// its requests leave no idle connection behind.
		c.http.CloseIdleConnections()
	}
	return c, nil
}

// slotsLocked returns the connection's request slots, sized for entry. The caller holds
// mu.
func (cs *connState) slotsLocked(entry *connEntry) chan struct{} {
	if limit := max(entry.MaxConcurrentRequests, 1); cap(cs.slots) != limit {
		cs.slots = make(chan struct{}, limit)
	}
	return cs.slots
}

// newTokenClient builds a client for a connection entry, with the backend's clock.
func (b *backend) newTokenClient(entry *connEntry) (*tokenClient, error) {
	hc, err := newHTTPClient(entry)
	if err != nil {
		return nil, err
	}
	c := &tokenClient{conn: entry, http: hc, now: b.now, sleep: b.sleep}
	if entry.ClientAuth == clientAuthJWT {
		if c.assertions, err = newAssertionSigner(entry); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// invalidate drops what is cached of the storage key another node changed.
func (b *backend) invalidate(_ context.Context, key string) {
	switch {
	case strings.HasPrefix(key, rolePrefix), strings.HasPrefix(key, tokenPrefix):
		name := strings.TrimPrefix(strings.TrimPrefix(key, rolePrefix), tokenPrefix)
		b.forgetRole(name)
	case strings.HasPrefix(key, configPrefix):
		b.forgetConnection(strings.TrimPrefix(key, configPrefix))
	case strings.HasPrefix(key, accountPrefix):
		cs := b.connState(strings.TrimPrefix(key, accountPrefix))
		cs.mu.Lock()
		cs.accountEpoch++
		cs.account, cs.accountUnsaved = nil, false
		// Another node wrote the record (or it was deleted): it is the truth now.
		cs.localRejection = nil
		cs.mu.Unlock()
		// Another node may have recorded a rejection: the next login goes alone.
		cs.gate.unprove(0)
	}
}

// forgetRole drops a role's view and makes it due, so that the background reads it
// again.
func (b *backend) forgetRole(name string) {
	rs := b.roleState(name)
	rs.drop()
	b.bg.touch(name)
}

// forgetConnection drops a connection's entry and the views of the roles using it.
func (b *backend) forgetConnection(name string) {
	b.connState(name).dropEntry()
	b.forgetRolesOf(name)
}

// forgetRolesOf drops the views of the roles using a connection, and bumps the epoch of
// those with no view (a load in progress may be of this connection).
func (b *backend) forgetRolesOf(name string) {
	b.roles.Range(func(_, v any) bool {
		rs := v.(*roleState)
		if view := rs.view.Load(); view == nil || view.role.Config == name {
			rs.drop()
		}
		return true
	})
}

// clean stops background work and drops every cache when Vault unmounts or reloads
// the backend; no provider connection stays open.
func (b *backend) clean(context.Context) {
	b.bg.stop()
	b.conns.Range(func(_, v any) bool {
		cs := v.(*connState)
		cs.mu.Lock()
		if cs.client != nil {
			cs.client.http.CloseIdleConnections()
			cs.client = nil
		}
		cs.mu.Unlock()
		return true
	})
	b.roles.Clear()
	b.conns.Clear()
}

// accountRecord returns a connection's account record, loading it on first use.
func (b *backend) accountRecord(ctx context.Context, s logical.Storage, cs *connState) (*accountEntry, error) {
	cs.mu.Lock()
	if a := cs.account; a != nil {
		cs.mu.Unlock()
		return a, nil
	}
	epoch := cs.accountEpoch
	cs.mu.Unlock()
	a := new(accountEntry)
	found, err := getJSON(ctx, s, accountPrefix+cs.name, a)
	if err != nil {
		return nil, err
	}
	if !found {
		// A connection of v0.1.0 kept its rejections in its roles' sessions.
		if a, err = b.migrateAccount(ctx, s, cs); err != nil {
			return nil, err
		}
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.accountEpoch == epoch && cs.account == nil {
		cs.account = a
	}
	if cs.account != nil {
		return cs.account, nil
	}
	return a, nil
}

// migrateAccount builds the account record of a connection that has none (written by
// v0.1.0): the newest rejection its roles' sessions recorded. It is written when this
// node may write, so that this happens once.
func (b *backend) migrateAccount(ctx context.Context, s logical.Storage, cs *connState) (*accountEntry, error) {
	a := new(accountEntry)
	names, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	for _, name := range names {
		role, err := b.role(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if role == nil || role.Config != cs.name {
			continue
		}
		_, rej, err := readSession(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if rej != nil && (a.Rejection == nil || rej.At.After(a.Rejection.At)) {
			a.Rejection = rej
		}
	}
	if b.canWrite() {
		if err := putJSON(ctx, s, accountPrefix+cs.name, a); err != nil {
			b.Logger().Warn("could not write the connection's state", "connection", cs.name, "error", err)
		}
	}
	return a, nil
}

// rejectionOf is the connection's rejection: the newer of the stored record's and the
// one this node last saw. With an error the record could not be read: the rejection
// returned is then only what this node saw.
func (b *backend) rejectionOf(ctx context.Context, s logical.Storage, cs *connState) (*rejection, error) {
	cs.mu.Lock()
	local := cs.localRejection
	cs.mu.Unlock()
	a, err := b.accountRecord(ctx, s, cs)
	if err != nil {
		return local, err
	}
	return newerRejection(a.Rejection, local), nil
}

// localRejection is the last rejection this node saw for a connection.
func (b *backend) localRejection(cs *connState) *rejection {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.localRejection
}

// newerRejection is the later of two rejections (nil when both are).
func newerRejection(a, b *rejection) *rejection {
	switch {
	case a == nil:
		return b
	case b == nil || !b.At.After(a.At):
		return a
	}
	return b
}

// recordRejection records that the provider rejected conn's credentials (or client),
// for every role of the connection: in this node's memory at once, then in storage,
// never replacing a rejection of newer credentials nor counting twice one that already
// holds back logins. The credentials are unproven again: after the backoff one login
// goes alone. It returns the rejection that now applies.
func (b *backend) recordRejection(ctx context.Context, s logical.Storage, cs *connState, conn *connEntry, ge *grantError, cause string) rejection {
	now := b.now()
	next := func(prev *rejection) (rejection, bool) {
		switch {
		case prev != nil && prev.CredentialsVersion > conn.CredentialsVersion:
			// A rejection of newer credentials (conn is older): it stays.
			return *prev, false
		case prev.holdsBack(conn, now):
			// A concurrent login already recorded this rejection.
			return *prev, false
		}
		rec := rejection{CredentialsVersion: conn.CredentialsVersion, At: now, Count: 1, Cause: cause, Client: ge.clientRejected()}
		if prev.appliesTo(conn) {
			rec.Count = prev.Count + 1
		}
		rec.NextLoginAt = now.Add(rejectionBackoffFor(rec.Count))
		return rec, true
	}
	known, _ := b.rejectionOf(ctx, s, cs)
	rec, _ := next(known)
	cs.mu.Lock()
	cs.localRejection = newerRejection(cs.localRejection, &rec)
	cs.mu.Unlock()
	err := b.updateAccount(ctx, s, cs, func(a *accountEntry) bool {
		stored, changed := next(a.Rejection)
		if !changed {
			return false
		}
		if stored.At.Before(rec.At) {
			stored = rec
		}
		a.Rejection = &stored
		return true
	})
	if err != nil {
		b.Logger().Warn("could not save the connection's rejection record; it is kept in memory", "connection", cs.name, "error", err)
	} else {
		// Stored (and cached): the record speaks for it from now on.
		cs.mu.Lock()
		if l := cs.localRejection; l != nil && !l.At.After(rec.At) {
			cs.localRejection = nil
		}
		cs.mu.Unlock()
	}
	cs.gate.unprove(conn.CredentialsVersion)
	return rec
}

// liftRejection forgets a rejection of credentials version or older (a login with them
// just succeeded), in memory and in storage; a rejection of newer credentials stays.
func (b *backend) liftRejection(ctx context.Context, s logical.Storage, cs *connState, version uint64) {
	cs.mu.Lock()
	if l := cs.localRejection; l != nil && l.CredentialsVersion <= version {
		cs.localRejection = nil
	}
	cs.mu.Unlock()
	if err := b.updateAccount(ctx, s, cs, func(a *accountEntry) bool {
		if a.Rejection == nil || a.Rejection.CredentialsVersion > version {
			return false
		}
		a.Rejection = nil
		return true
	}); err != nil {
		b.Logger().Warn("could not clear the connection's rejection record", "connection", cs.name, "error", err)
	}
}

// updateAccount changes a connection's account record with change (which returns false
// when there is nothing to change) and writes it. When the write fails the change is
// kept in memory, and written with the next change or the next call of flushAccount.
func (b *backend) updateAccount(ctx context.Context, s logical.Storage, cs *connState, change func(a *accountEntry) bool) error {
	cs.accountMu.Lock()
	defer cs.accountMu.Unlock()
	cur, err := b.accountRecord(ctx, s, cs)
	if err != nil {
		return err
	}
	next := cur.clone()
	if !change(next) {
		return b.flushAccountLocked(ctx, s, cs)
	}
	err = putJSON(ctx, s, accountPrefix+cs.name, next)
	cs.mu.Lock()
	cs.account, cs.accountUnsaved = next, err != nil
	cs.mu.Unlock()
	return err
}

// flushAccountLocked writes an account record that an earlier write failed to save.
// The caller holds accountMu.
func (b *backend) flushAccountLocked(ctx context.Context, s logical.Storage, cs *connState) error {
	cs.mu.Lock()
	a, unsaved := cs.account, cs.accountUnsaved
	cs.mu.Unlock()
	if !unsaved || a == nil {
		return nil
	}
	if err := putJSON(ctx, s, accountPrefix+cs.name, a); err != nil {
		return err
	}
	cs.mu.Lock()
	if cs.account == a {
		cs.accountUnsaved = false
	}
	cs.mu.Unlock()
	return nil
}

func (a *accountEntry) clone() *accountEntry {
	next := &accountEntry{}
	if a == nil {
		return next
	}
	if a.Rejection != nil {
		r := *a.Rejection
		next.Rejection = &r
	}
	if a.Spare != nil {
		sp := *a.Spare
		next.Spare = &sp
	}
	return next
}

// sleepContext waits d or until ctx ends.
func sleepContext(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
