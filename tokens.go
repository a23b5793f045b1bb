package bearer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The renewal of a role's tokens. docs/renewal.md is the design: the states, the
// decision table and, for each step, what is written and why a crash between two
// writes is safe. decide below is that table; renewal carries one renewal out.

const (
	// retryInterval is the retry window after a first failed attempt; it doubles with
	// each further failure up to maxRetryInterval.
	retryInterval    = 5 * time.Second
	maxRetryInterval = 5 * time.Minute
	// rejectionBackoff is the first pause after the provider rejects the credentials;
	// it doubles with each further rejection up to maxRejectionBackoff.
	rejectionBackoff    = 15 * time.Minute
	maxRejectionBackoff = 4 * time.Hour
)

// step is what a renewal does next.
type step int

const (
	// stepServe: the current access token is good enough.
	stepServe step = iota
	// stepWaitRetry: a recent attempt failed and its retry window has not passed.
	stepWaitRetry
	// stepRefresh: present the refresh token.
	stepRefresh
	// stepWaitRejection: the credentials were rejected and the backoff has not passed.
	stepWaitRejection
	// stepLogin: log in with the password.
	stepLogin
)

func (s step) String() string {
	return [...]string{"serve", "wait retry", "refresh", "wait rejection", "log in"}[s]
}

// situation is what decide looks at.
type situation struct {
	now    time.Time
	force  bool // renew even if the token is good enough
	minTTL time.Duration
	tokens sessionTokens
	// failure and the connection's revision: a config write lifts a retry window.
	failure      failureRecord
	connRevision uint64
	// rejection is the connection's record, if any, and conn the connection as it is.
	rejection *rejection
	conn      *connEntry
}

// decide picks a renewal's next step (docs/renewal.md, "Deciding").
func decide(s situation) step {
	switch {
	case !s.force && s.tokens.usable(s.now, s.minTTL):
		return stepServe
	case s.failure.ConnRevision == s.connRevision && s.now.Before(s.failure.NextAttemptAt):
		return stepWaitRetry
	case s.tokens.refreshable(s.now) && !(s.rejection != nil && s.rejection.Client && s.rejection.holdsBack(s.conn, s.now)):
		// A refresh authenticates the client: a rejected client waits like a login.
		return stepRefresh
	case s.rejection.holdsBack(s.conn, s.now):
		return stepWaitRejection
	}
	return stepLogin
}

// tokenResult is what a creds request returns.
type tokenResult struct {
	tokens *sessionTokens
	creds  *credsView // nil: build it from tokens
	minTTL time.Duration
	// now is the clock the answer is computed with: read after the provider answered.
	now      time.Time
	warnings []string
	// how is how the read was answered, for the metrics: cached, renewed, stale.
	how string
	// attempted: the result comes from a renewal attempt, not from a token someone
	// else renewed.
	attempted bool
	// forward: this node cannot write and this is its first read of the token, which
	// goes to the active node.
	forward bool
	// rs is the role's state, for the read's metrics.
	rs *roleState
}

// getToken returns a token of role name with at least minTTL left (0: the role's
// min_ttl), renewing it when needed; force renews it in any case.
func (b *backend) getToken(ctx context.Context, s logical.Storage, name string, minTTL time.Duration, force bool) (tokenResult, error) {
	rs, err := b.knownRoleState(ctx, s, name)
	if err != nil {
		return tokenResult{}, err
	}
	if !force {
		// The fast path: no lock, no storage, no provider.
		if v := rs.view.Load(); v != nil && !v.unsaved && v.creds != nil {
			want := max(v.role.MinTTL, minTTL)
			now := b.now()
			if t := &v.session.Tokens; t.usable(now, want) {
				if !v.served.Load() && !b.firstServe(rs, v) {
					// A standby sends the first read of each token to the active node,
					// so that it knows the token is in use and renews it in time.
					return tokenResult{}, logical.ErrReadOnly
				}
				return tokenResult{tokens: t, creds: v.creds, minTTL: want, now: now, how: answeredCached, rs: rs}, nil
			}
		}
	}
	return b.renewFor(ctx, s, rs, renewOptions{minTTL: minTTL, force: force})
}

// firstServe marks a view's token as served and reports whether this node may answer
// with it: on the active node the token becomes due at its renewal point; a node that
// cannot write answers the first read of each token with ErrReadOnly instead.
func (b *backend) firstServe(rs *roleState, v *roleView) bool {
	if !v.served.CompareAndSwap(false, true) {
		return true
	}
	if !b.canWrite() {
		return false
	}
	b.bg.schedule(rs.name, dueTime(rs.name, v.role, v.session, true))
	return true
}

// renewOptions says what a renewal is for.
type renewOptions struct {
	minTTL time.Duration
	force  bool
	// background: the periodic renewal, which renews only what is due.
	background bool
	// seed, when set, replaces the role's session by one of this refresh token, renewed
	// at once (vault write creds/<role> refresh_token=-).
	seed string
}

// renewFor runs a renewal of a role, or waits for the one in flight and takes its
// result: readers never queue one attempt behind another.
func (b *backend) renewFor(ctx context.Context, s logical.Storage, rs *roleState, opts renewOptions) (tokenResult, error) {
	for {
		rs.mu.Lock()
		if f := rs.flight; f != nil {
			rs.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return tokenResult{}, ctx.Err()
			}
			if opts.force || opts.background {
				continue // wants its own attempt
			}
			if res, ok := f.resultFor(b.now(), opts.minTTL); ok {
				return res, f.err
			}
			continue
		}
		f := &flight{done: make(chan struct{})}
		rs.flight = f
		rs.mu.Unlock()

		// From here on a reader that goes away must not cut a renewal short: the
		// provider may already have rotated the refresh token, and the new one must
		// reach storage. request_timeout bounds how long this takes.
		f.res, f.err = b.renew(context.WithoutCancel(ctx), s, rs, opts)

		rs.mu.Lock()
		rs.flight = nil
		rs.mu.Unlock()
		close(f.done)
		return f.res, f.err
	}
}

// resultFor is a finished flight's result for a reader that waited for it and asks for
// minTTL; false when that reader should start its own renewal (the flight served a
// token that is not good enough for it, or ended without an answer for readers).
func (f *flight) resultFor(now time.Time, minTTL time.Duration) (tokenResult, bool) {
	if f.err != nil {
		var perr *providerError
		var uerr *userError
		return tokenResult{}, errors.As(f.err, &perr) || errors.As(f.err, &uerr)
	}
	res := f.res
	if res.tokens == nil || !res.tokens.valid(now) {
		return tokenResult{}, false
	}
	want := max(res.minTTL, minTTL)
	if !res.attempted && !res.tokens.usable(now, want) {
		return tokenResult{}, false
	}
	res.minTTL, res.now = want, now
	return res, true
}

// renew holds the role's lock and carries out one renewal.
func (b *backend) renew(ctx context.Context, s logical.Storage, rs *roleState, opts renewOptions) (tokenResult, error) {
	rs.acquire()
	defer rs.release()
	r, err := b.loadRenewal(ctx, s, rs)
	if err != nil {
		return tokenResult{}, err
	}
	r.minTTL = max(r.role.MinTTL, opts.minTTL)
	r.force, r.background = opts.force, opts.background
	if opts.seed != "" {
		if err := r.plant(opts.seed); err != nil {
			return tokenResult{}, err
		}
	}
	if opts.background {
		if !r.due() {
			return tokenResult{}, nil
		}
		r.force = true
	}
	return r.run()
}

// renewal is one renewal of a role's session, under the role's lock.
type renewal struct {
	b   *backend
	ctx context.Context
	s   logical.Storage
	rs  *roleState
	cs  *connState

	role   *roleEntry
	conn   *connEntry
	client *tokenClient
	// stored is the entry as in storage (nil: none): the base of the next write.
	stored *sessionEntry
	// sess is the session as this renewal changes it.
	sess sessionEntry
	// old is the access token before the renewal, served after a failed one while valid.
	old sessionTokens

	// epoch is the role's when the renewal loaded it: after an invalidation (another
	// node, or a change of the connection's account) its view is not installed.
	epoch uint64
	// deadline ends the provider's part of the attempt (providerCtx).
	deadline time.Time

	minTTL     time.Duration
	force      bool
	background bool
	// refused is the refresh grant's refusal for a reason of configuration, surfaced
	// when the password login that replaced it succeeds; spent is why the refresh token
	// turned out dead or spent.
	refused  string
	spent    string
	warnings []string
}

// loadRenewal reads a role, its session and its connection, installs the role's view,
// and writes an unsaved session if storage still holds the entry it follows.
func (b *backend) loadRenewal(ctx context.Context, s logical.Storage, rs *roleState) (*renewal, error) {
	epoch := rs.snapshot()
	role, err := b.role(ctx, s, rs.name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		rs.drop()
		return nil, &userError{msg: msgUnknownRole(rs.name), unknownRole: true}
	}
	cs, conn, err := b.connection(ctx, s, role.Config)
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return nil, &userError{msg: msgUnknownConnection(rs.name, role.Config)}
	}
	// A rejection v0.1.0 recorded in the session is the connection's: migrateAccount
	// adopted it when the connection's record was first built.
	stored, _, err := readSession(ctx, s, rs.name)
	if err != nil {
		return nil, err
	}
	r := &renewal{b: b, ctx: ctx, s: s, rs: rs, cs: cs, role: role, conn: conn, stored: stored, epoch: epoch}

	var base uint64
	if stored != nil {
		r.sess, base = *stored, stored.Revision
	}
	if u := rs.unsaved.Load(); u != nil {
		if u.base == base {
			r.sess = *u.sess
		} else {
			// Storage moved on (another node renewed): it wins.
			b.Logger().Info("dropped a session that storage has overtaken", "role", rs.name)
			rs.unsaved.Store(nil)
		}
	}
	if r.sess.Account != (sessionAccount{Config: role.Config, AccountVersion: conn.AccountVersion}) {
		// The session belongs to another account (or there is none): of no use here.
		r.sess = sessionEntry{Revision: r.sess.Revision, Account: sessionAccount{Config: role.Config, AccountVersion: conn.AccountVersion}}
		rs.unsaved.Store(nil)
	}
	r.old = r.sess.Tokens
	rs.install(r.view(), r.epoch)
	if rs.unsaved.Load() != nil {
		if err := r.save(); err != nil {
			r.warnings = append(r.warnings, msgUnsavedWarning(err))
		}
	}
	return r, nil
}

// view is the role's view of the renewal's session.
func (r *renewal) view() *roleView {
	v := &roleView{role: r.role, unsaved: r.rs.unsaved.Load() != nil}
	if r.sess.Tokens.AccessToken != "" || r.sess.Tokens.RefreshToken != "" || r.sess.Failure.Failures > 0 {
		sess := r.sess
		v.session = &sess
		if sess.Tokens.AccessToken != "" {
			v.creds = newCredsView(&v.session.Tokens)
		}
	}
	return v
}

// due reports whether the background should renew now: a token being read at its
// renewal point, an idle session at its keep-alive point.
func (r *renewal) due() bool {
	served := false
	if v := r.rs.view.Load(); v != nil {
		served = v.served.Load()
	}
	at := dueTime(r.rs.name, r.role, &r.sess, served)
	if at.IsZero() || r.b.now().Before(at) {
		r.b.bg.schedule(r.rs.name, at)
		return false
	}
	return true
}

func (r *renewal) now() time.Time { return r.b.now() }

// providerCtx bounds the provider's part of the attempt: its requests, their retries,
// a refresh and the login that may follow it, and the wait for another role's login,
// all within one request_timeout from the start of the attempt; readers that wait for
// the attempt get its answer by then. Storage writes are not bounded by it: what the
// provider answered must reach storage.
func (r *renewal) providerCtx() (context.Context, context.CancelFunc) {
	if r.deadline.IsZero() {
		r.deadline = time.Now().Add(r.conn.RequestTimeout)
	}
	return context.WithDeadline(r.ctx, r.deadline)
}

// situation is what decide looks at now; err says the connection's rejection record
// could not be read (the rejection is then only what this node saw).
func (r *renewal) situation() (situation, error) {
	rej, err := r.b.rejectionOf(r.ctx, r.s, r.cs)
	return situation{
		now: r.now(), force: r.force, minTTL: r.minTTL, tokens: r.sess.Tokens,
		failure: r.sess.Failure, connRevision: r.conn.Revision, rejection: rej, conn: r.conn,
	}, err
}

// run decides and acts until the renewal has an answer.
func (r *renewal) run() (tokenResult, error) {
	for {
		sit, recordErr := r.situation()
		next := decide(sit)
		if next != stepServe && !r.b.canWrite() {
			// Let Vault run the request on a node that can write, before any provider call.
			return tokenResult{}, logical.ErrReadOnly
		}
		if next == stepLogin && recordErr != nil {
			// Whether the provider rejected these credentials is not known: no login.
			return r.stale(sit.now, fmt.Errorf("connection %q: no login is tried while its state cannot be read: %w", r.role.Config, recordErr))
		}
		switch next {
		case stepServe:
			res := r.answer(&r.sess.Tokens, sit.now, answeredCached, false)
			if res.forward {
				// As on the fast path: a node that cannot write sends the first read of
				// each token to the active node.
				return tokenResult{}, logical.ErrReadOnly
			}
			return res, nil
		case stepWaitRetry:
			r.b.bg.schedule(r.rs.name, r.sess.Failure.NextAttemptAt)
			return r.stale(sit.now, &providerError{errors.New(msgRetryLater(r.sess.Failure.Message, r.sess.Failure.NextAttemptAt))})
		case stepWaitRejection:
			if r.background {
				r.b.bg.schedule(r.rs.name, sit.rejection.NextLoginAt)
			}
			return r.stale(sit.now, &providerError{errors.New(msgHeldBack(r.conn, sit.rejection))})
		case stepRefresh:
			if res, err, done := r.refresh(); done {
				return res, err
			}
			// The refresh token is spent: decide again, which logs in.
		case stepLogin:
			taken, err := r.takeSpare()
			if err != nil {
				return tokenResult{}, err
			}
			if taken {
				continue // serve it, or refresh with it
			}
			return r.login()
		}
	}
}

// requests is how many requests the attempt may send for one grant: one where a valid
// token can be served instead or the background will try again, else a few.
func (r *renewal) requests() int {
	if r.background || r.old.valid(r.now()) {
		return 1
	}
	return maxAttemptRequests
}

// refresh presents the refresh token (R1 to R4 in docs/renewal.md). done is false when
// the refresh token turned out spent and the renewal goes on with a login.
func (r *renewal) refresh() (tokenResult, error, bool) {
	client, err := r.clientFor()
	if err != nil {
		res, err := r.failed(err)
		return res, err, true
	}
	rt := r.sess.Tokens.RefreshToken
	// R1: the write-ahead mark, before anything is sent.
	if err := r.mark(); err != nil && r.storageHoldsUnmarked(rt) {
		// Storage could not record that this refresh token is being presented, and
		// others may present it: it is not sent.
		r.sess.Tokens.RefreshSentAt = time.Time{}
		res, err := r.stale(r.now(), msgMarkNotSaved(r.rs.name, err))
		return res, err, true
	}
	ctx, cancel := r.providerCtx()
	tok, gerr := client.refreshGrant(ctx, rt, r.requests())
	cancel()
	if gerr == nil {
		res, err := r.succeeded(tok, grantRefresh)
		return res, err, true
	}
	var ge *grantError
	errors.As(gerr, &ge)
	switch {
	case ge != nil && ge.kind == failRejected && ge.refreshRefusedByConfiguration():
		if r.conn.grantType() == grantRefresh {
			// Refused before the provider looked at the token, and no login can replace
			// it: the seeded session stays, for the connection to be fixed (R3).
			r.sess.Tokens.RefreshSentAt = time.Time{}
			res, err := r.failed(gerr)
			return res, err, true
		}
		r.refused = r.redact(ge.Error())
		r.spent = r.refused
		r.b.Logger().Warn("the provider refused the refresh grant for a reason of configuration; logging in with the password", "role", r.rs.name, "connection", r.role.Config, "reason", r.refused)
	case ge != nil && (ge.kind == failRejected || ge.kind == failAmbiguous):
		r.spent = r.redact(ge.Error())
		r.b.Logger().Info("refresh token not usable", "role", r.rs.name, "connection", r.role.Config, "reason", r.spent)
	default:
		// R3: not sent, or not processed: the refresh token is still good.
		r.sess.Tokens.RefreshSentAt = time.Time{}
		res, err := r.failed(gerr)
		return res, err, true
	}
	// R4: spent. Storage already says so (the mark); this session forgets it.
	r.sess.Tokens.RefreshToken, r.sess.Tokens.RefreshExpiresAt, r.sess.Tokens.RefreshSentAt = "", time.Time{}, time.Time{}
	return tokenResult{}, nil, false
}

// storageHoldsUnmarked reports whether storage holds refresh token rt without the
// write-ahead mark, so that another node or a restart could present it.
func (r *renewal) storageHoldsUnmarked(rt string) bool {
	return r.stored != nil && r.stored.Tokens.RefreshToken == rt && r.stored.Tokens.RefreshSentAt.IsZero()
}

// login logs in with the password (L1 to L5 in docs/renewal.md).
func (r *renewal) login() (tokenResult, error) {
	if cur := r.cs.cached(); cur != nil && cur != r.conn {
		// The connection changed since this renewal loaded it: log in as it is now.
		if cur.AccountVersion != r.conn.AccountVersion {
			return r.stale(r.now(), &providerError{fmt.Errorf("connection %q changed account during the renewal: read again", r.role.Config)})
		}
		r.conn, r.client = cur, nil
	}
	if r.conn.grantType() == grantRefresh {
		// No login: the session was seeded, and it has ended.
		return r.ended()
	}
	client, err := r.clientFor()
	if err != nil {
		return r.failed(err)
	}
	version := r.conn.CredentialsVersion
	// L1: while the credentials are unproven one login goes alone; the wait for it is
	// part of this attempt's request_timeout.
	ctx, cancel := r.providerCtx()
	defer cancel()
	if ctx.Err() != nil {
		return r.outOfTime()
	}
	lead, shared := r.cs.gate.enter(ctx, version)
	if shared != nil {
		if errors.Is(shared, context.DeadlineExceeded) {
			shared = &grantError{kind: failTransient, grant: r.conn.grantType(), detail: "another role's login of this connection did not end within request_timeout"}
		}
		return r.failed(shared)
	}
	// A login waiting for a request slot while another role's login was rejected is
	// not sent: the account counts failed logins. A rejection is recorded (L4: the
	// account's record first) before the slot is given to the next login.
	var rejErr error
	guard := &requestGuard{
		before: func() error {
			rej, err := r.b.rejectionOf(r.ctx, r.s, r.cs)
			if rej.holdsBack(r.conn, r.now()) {
				return &rejectedError{msg: msgHeldBack(r.conn, rej)}
			}
			if err != nil {
				return fmt.Errorf("connection %q: no login is tried while its state cannot be read: %w", r.role.Config, err)
			}
			return nil
		},
		after: func(err error) {
			var ge *grantError
			if errors.As(err, &ge) && ge.credentialsRejected() {
				rejErr = r.rejected(ge)
			}
		},
	}
	tok, err := client.login(ctx, r.role.Scopes, r.requests(), guard)
	if rejErr != nil {
		err = rejErr
	}
	r.cs.gate.leave(lead, err)
	var ge *grantError
	if errors.As(err, &ge) && ge.outOfTime {
		return r.outOfTime()
	}
	if err != nil {
		return r.failed(err)
	}
	// L3: lift a rejection of these credentials, then save the session.
	r.b.liftRejection(r.ctx, r.s, r.cs, r.conn.CredentialsVersion)
	return r.succeeded(tok, r.conn.grantType())
}

// outOfTime answers an attempt whose refresh used up its request_timeout before the
// login could be sent. Nothing failed at the provider that a retry window should keep
// from it: the next read logs in at once.
func (r *renewal) outOfTime() (tokenResult, error) {
	return r.stale(r.now(), &providerError{fmt.Errorf("could not get a token from connection %q (%s): the refresh token was spent and the attempt used up request_timeout before a login: the next read logs in; if this repeats, check the provider and request_timeout",
		r.role.Config, displayURL(r.conn.TokenURL))})
}

// plant replaces the role's session by one of refresh token seed (the old session ends
// at the provider) and saves it, so that the renewal that follows presents the seed.
func (r *renewal) plant(seed string) error {
	if seed == r.sess.Tokens.RefreshToken || (r.stored != nil && seed == r.stored.Tokens.RefreshToken) {
		// Presented already, or about to be: never twice.
		return &userError{msg: fmt.Sprintf("role %q: this refresh token is already the role's session (or was presented by it): seed a new one", r.rs.name)}
	}
	if old := r.sess.Tokens.RefreshToken; old != "" {
		r.b.revokeWith(r.ctx, r.cs, r.conn, old, r.rs.name)
	}
	r.sess.Tokens = sessionTokens{RefreshToken: seed}
	if r.conn.RefreshTokenTTL > 0 {
		r.sess.Tokens.RefreshExpiresAt = r.now().Add(r.conn.RefreshTokenTTL)
	}
	r.sess.Failure = failureRecord{}
	r.old = sessionTokens{}
	r.force = true
	r.b.Logger().Info("session seeded with a refresh token", "role", r.rs.name, "connection", r.role.Config)
	if err := r.save(); err != nil {
		r.rs.unsaved.Store(nil) // not kept: the operator seeds again
		r.rs.drop()
		return fmt.Errorf("role %q: the seeded session could not be saved: %w", r.rs.name, err)
	}
	return nil
}

// ended answers for a role of a grant_type=refresh_token connection whose session has
// ended (or was never seeded): only an operator can seed a new one.
func (r *renewal) ended() (tokenResult, error) {
	now := r.now()
	f := &r.sess.Failure
	cause := r.spent
	if cause == "" {
		cause = f.LastError
	}
	msg := msgSessionEnded(r.rs.name, r.role.Config, cause)
	if r.spent != "" {
		r.b.Logger().Warn("the seeded session ended: a new refresh token must be seeded", "role", r.rs.name, "connection", r.role.Config, "reason", r.spent)
	}
	if f.Message != msg {
		f.Message, f.LastErrorAt = msg, now
		f.Failures = max(f.Failures, 1)
		if f.LastError == "" {
			f.LastError = cmp.Or(cause, "no session was seeded")
		}
		f.NextAttemptAt, f.ConnRevision = time.Time{}, 0
		if err := r.save(); err != nil {
			r.b.Logger().Warn("could not save the failure record", "role", r.rs.name, "error", err)
		}
	}
	return r.stale(now, &providerError{errors.New(msg)})
}

// rejected records that the provider rejected the connection's credentials, for every
// role of the connection, and returns the error readers get.
func (r *renewal) rejected(ge *grantError) error {
	rec := r.b.recordRejection(r.ctx, r.s, r.cs, r.conn, ge, r.redact(ge.Error()))
	r.b.Logger().Warn("provider rejected the login", "role", r.rs.name, "connection", r.role.Config, "as", loginIdentity(r.conn),
		"client_rejected", rec.Client, "next_login_at", formatTime(rec.NextLoginAt))
	if rec.CredentialsVersion != r.conn.CredentialsVersion {
		return &rejectedError{msg: msgHeldBack(r.conn, &rec)}
	}
	return &rejectedError{msg: msgRejected(r.conn, &rec)}
}

// rejectedError is a login the provider rejected.
type rejectedError struct{ msg string }

func (e *rejectedError) Error() string { return e.msg }

// takeSpare gives the role the connection's spare session (L2), if there is one that
// still serves; a spare that no longer does is dropped (and ended at the provider).
func (r *renewal) takeSpare() (bool, error) {
	a, err := r.b.accountRecord(r.ctx, r.s, r.cs)
	if err != nil || a.Spare == nil || len(r.role.Scopes) > 0 {
		return false, nil
	}
	now := r.now()
	var taken, stale *spareSession
	err = r.b.updateAccount(r.ctx, r.s, r.cs, func(a *accountEntry) bool {
		switch {
		case a.Spare == nil, a.Spare.AccountVersion > r.conn.AccountVersion:
			// None, or the spare of a newer account than this renewal's.
			return false
		case a.Spare.usable(r.conn, now):
			taken = a.Spare
		default:
			stale = a.Spare
		}
		a.Spare = nil
		return true
	})
	if err != nil {
		// Not taken for sure: the spare stays where it is.
		return false, nil
	}
	if stale != nil && stale.AccountVersion == r.conn.AccountVersion {
		r.b.revokeWith(r.ctx, r.cs, r.conn, stale.Tokens.RefreshToken, r.rs.name)
	}
	if taken == nil {
		return false, nil
	}
	r.sess.Tokens = taken.Tokens
	r.sess.Failure = failureRecord{}
	r.b.Logger().Debug("took the connection's spare session", "role", r.rs.name, "connection", r.role.Config)
	if err := r.save(); err != nil {
		return true, msgNotSaved(r.rs.name, err)
	}
	return true, nil
}

// succeeded records new tokens, saves them and answers with them.
func (r *renewal) succeeded(tok *tokenResponse, grant string) (tokenResult, error) {
	now := r.now()
	t := &r.sess.Tokens
	next := tokensFrom(tok, grant, r.conn, now)
	if grant == grantRefresh && next.RefreshToken == "" {
		// A refresh answer without a refresh token keeps the one presented.
		next.RefreshToken, next.RefreshExpiresAt = t.RefreshToken, cmp.Or(tok.RefreshExpiresAt, t.RefreshExpiresAt)
	}
	*t = next
	r.sess.Failure = failureRecord{}
	if r.refused != "" {
		r.sess.Failure.LastError, r.sess.Failure.LastErrorAt = msgRefreshRefused(r.role.Config, r.refused), now
		r.warnings = append(r.warnings, msgRefreshRefusedWarning(r.role.Config, r.refused))
	}
	r.b.Logger().Debug("obtained a token", "role", r.rs.name, "connection", r.role.Config, "grant", grant, "expires_at", formatTime(t.ExpiresAt))
	if err := r.save(); err != nil {
		return tokenResult{}, msgNotSaved(r.rs.name, err)
	}
	return r.answer(t, now, answeredRenewed, true), nil
}

// tokensFrom is the session tokens of a successful token answer, obtained by grant from
// conn: a new session (a refresh answer without a refresh token keeps the old one: the
// caller's business).
func tokensFrom(tok *tokenResponse, grant string, conn *connEntry, now time.Time) sessionTokens {
	t := sessionTokens{
		AccessToken: tok.AccessToken, TokenType: tok.TokenType, Scope: tok.Scope,
		ObtainedAt: tok.Started, ExpiresAt: tok.ExpiresAt, Grant: grant,
		RefreshToken: tok.RefreshToken, RefreshExpiresAt: tok.RefreshExpiresAt,
	}
	if t.ObtainedAt.IsZero() || t.ObtainedAt.After(now) {
		t.ObtainedAt = now
	}
	if !t.ExpiresAt.After(now) {
		// A token that is already expired by our clock: count it as one second long
		// rather than never valid, and let the next read renew it.
		t.ExpiresAt = now.Add(time.Second)
	}
	if t.RefreshToken != "" && t.RefreshExpiresAt.IsZero() && conn.RefreshTokenTTL > 0 {
		t.RefreshExpiresAt = t.ObtainedAt.Add(conn.RefreshTokenTTL)
	}
	return t
}

// failed records a failed attempt, with its retry window counted from now (the end of
// the attempt), and serves the old token while it is still valid.
func (r *renewal) failed(cause error) (tokenResult, error) {
	now := r.now()
	var ge *grantError
	errors.As(cause, &ge)
	var rerr *rejectedError
	msg := r.redact(cause.Error())
	f := &r.sess.Failure
	f.Failures++
	f.LastErrorAt = now
	f.LastError = msg
	if ge != nil {
		msg = msgProviderFailure(r.role.Config, r.conn.TokenURL, msg, ge.advice())
	}
	f.Message = msg
	if errors.As(cause, &rerr) {
		// The rejection's own backoff holds back the next login, for every role.
		f.NextAttemptAt, f.ConnRevision = time.Time{}, 0
		if rej, _ := r.b.rejectionOf(r.ctx, r.s, r.cs); rej != nil {
			f.LastError = rej.Cause
		}
	} else {
		window := retryWindow(f.Failures)
		if ge != nil && ge.retryAfter > window {
			window = ge.retryAfter
		}
		f.NextAttemptAt, f.ConnRevision = now.Add(window), r.conn.Revision
	}
	r.b.Logger().Warn("token request failed", "role", r.rs.name, "connection", r.role.Config, "error", f.LastError, "consecutive_failures", f.Failures)
	if err := r.save(); err != nil {
		r.b.Logger().Warn("could not save the failure record", "role", r.rs.name, "error", err)
	}
	return r.stale(r.now(), &providerError{errors.New(msg)})
}

// stale serves the old token with a warning while it is still valid by the clock read
// now (after the provider answered), else returns err.
func (r *renewal) stale(now time.Time, err error) (tokenResult, error) {
	if r.old.valid(now) {
		r.warnings = append(r.warnings, msgStale(r.old.ExpiresAt, err))
		old := r.old
		return r.answer(&old, now, answeredStale, true), nil
	}
	return tokenResult{}, err
}

// answer is the result serving t. A reader's first read of a token marks it served.
func (r *renewal) answer(t *sessionTokens, now time.Time, how string, attempted bool) tokenResult {
	res := tokenResult{tokens: t, minTTL: r.minTTL, now: now, warnings: r.warnings, how: how, attempted: attempted, rs: r.rs}
	if v := r.rs.view.Load(); v != nil && v.creds != nil && v.tokens().AccessToken == t.AccessToken {
		res.creds = v.creds
		if !r.background && !v.served.Load() {
			res.forward = !r.b.firstServe(r.rs, v)
		}
	}
	return res
}

// clientFor returns the connection's HTTP client.
func (r *renewal) clientFor() (*tokenClient, error) {
	if r.client == nil {
		c, err := r.b.tokenClient(r.cs, r.conn)
		if err != nil {
			return nil, &providerError{errors.New(msgBadConnection(r.role.Config, err))}
		}
		r.client = c
	}
	return r.client, nil
}

// redact takes the connection's secrets and the session's refresh tokens out of text.
func (r *renewal) redact(s string) string {
	return newRedactor(r.conn.Password, r.conn.ClientSecret, r.old.RefreshToken, r.sess.Tokens.RefreshToken).redact(s)
}

// write puts the renewal's session over the stored entry it follows, as the next
// revision, and returns what it wrote and the revision it followed.
func (r *renewal) write() (*sessionEntry, uint64, error) {
	next := r.sess
	next.Format = sessionFormat
	var base uint64
	if r.stored != nil {
		base = r.stored.Revision
	}
	next.Revision = base + 1
	r.sess.Revision = next.Revision
	if err := putJSON(r.ctx, r.s, tokenPrefix+r.rs.name, &next); err != nil {
		return &next, base, err
	}
	r.stored = &next
	r.rs.unsaved.Store(nil)
	return &next, base, nil
}

// mark writes the session with the write-ahead mark on its refresh token (R1). When
// the write fails nothing else changes: the session in memory (saved or not) is as it
// was, but for the mark.
func (r *renewal) mark() error {
	r.sess.Tokens.RefreshSentAt = r.now()
	if _, _, err := r.write(); err != nil {
		return err
	}
	r.rs.install(r.view(), r.epoch)
	return nil
}

// save writes the renewal's session over the stored entry it follows. When the write
// fails the session is kept in memory, served, and written at the next chance.
func (r *renewal) save() error {
	next, base, err := r.write()
	if err != nil {
		r.rs.unsaved.Store(&unsavedSession{sess: next, base: base})
	}
	v := r.view()
	r.rs.install(v, r.epoch)
	if err != nil {
		r.b.bg.schedule(r.rs.name, r.now().Add(time.Minute))
		return err
	}
	r.b.bg.schedule(r.rs.name, dueTime(r.rs.name, r.role, next, v.served.Load()))
	return nil
}

// discardSession forgets a role's session, ending it at the revocation endpoint of the
// account that issued it (best effort). The failure record is kept. The caller holds
// the role's lock.
func (b *backend) discardSession(ctx context.Context, s logical.Storage, rs *roleState, reason string) error {
	stored, _, err := readSession(ctx, s, rs.name)
	if err != nil {
		return err
	}
	sess := stored
	if u := rs.unsaved.Load(); u != nil {
		sess = u.sess
	}
	if sess == nil {
		return nil
	}
	b.revokeSession(ctx, s, sess.Account, sess.Tokens.RefreshToken, rs.name)
	if stored != nil && stored.Tokens.RefreshToken != sess.Tokens.RefreshToken {
		b.revokeSession(ctx, s, stored.Account, stored.Tokens.RefreshToken, rs.name)
	}
	kept := &sessionEntry{Format: sessionFormat, Account: sess.Account, Failure: sess.Failure}
	if stored != nil {
		kept.Revision = stored.Revision + 1
	}
	if err := putJSON(ctx, s, tokenPrefix+rs.name, kept); err != nil {
		return err
	}
	rs.unsaved.Store(nil)
	b.Logger().Info("session discarded", "role", rs.name, "reason", reason)
	return nil
}

// revokeSession ends a refresh token's session at the revocation endpoint of the
// account that issued it, and only there: a connection pointed elsewhere since must
// never receive it.
func (b *backend) revokeSession(ctx context.Context, s logical.Storage, account sessionAccount, refreshToken, role string) {
	if refreshToken == "" {
		return
	}
	cs, conn, err := b.connection(ctx, s, account.Config)
	if err != nil || conn == nil || conn.AccountVersion != account.AccountVersion {
		return
	}
	b.revokeWith(ctx, cs, conn, refreshToken, role)
}

// revokeWith ends a refresh token's session at conn's revocation endpoint.
func (b *backend) revokeWith(ctx context.Context, cs *connState, conn *connEntry, refreshToken, role string) {
	if conn.RevocationURL == "" || refreshToken == "" {
		return
	}
	client, err := b.tokenClient(cs, conn)
	if err != nil {
		return
	}
	if err := client.revoke(ctx, refreshToken); err != nil {
		b.Logger().Info("could not revoke a discarded session", "role", role, "connection", cs.name,
			"error", newRedactor(refreshToken, conn.Password, conn.ClientSecret).redact(err.Error()))
	}
}
