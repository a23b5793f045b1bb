package bearer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/sdk/helper/locksutil"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	// retryInterval is the least time between two provider attempts for a failing role.
	retryInterval = 5 * time.Second
	// rejectionBackoff is the first pause after the provider rejects the password; it
	// doubles with each further rejection up to maxRejectionBackoff.
	rejectionBackoff    = 15 * time.Minute
	maxRejectionBackoff = 4 * time.Hour
)

// tokenEntry is a role's session as stored at tokens/<role>: its tokens and the record
// of its failures. An entry without an access token holds failure state only.
type tokenEntry struct {
	// Config and AccountVersion name the account the tokens belong to.
	Config         string `json:"config"`
	AccountVersion uint64 `json:"account_version"`

	AccessToken      string    `json:"access_token,omitempty"`
	TokenType        string    `json:"token_type,omitempty"`
	Scope            string    `json:"scope,omitempty"`
	ExpiresAt        time.Time `json:"expires_at"`
	ObtainedAt       time.Time `json:"obtained_at"`
	RefreshToken     string    `json:"refresh_token,omitempty"`
	RefreshExpiresAt time.Time `json:"refresh_expires_at"`
	LastGrant        string    `json:"last_grant,omitempty"`

	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at"`
	ConsecutiveFailures int       `json:"consecutive_failures,omitempty"`

	// CredentialsRejectedAt is when the provider last rejected the password grant,
	// for the connection's credentials at RejectedCredentialsVersion; Rejections
	// counts consecutive rejections and sets the backoff.
	CredentialsRejectedAt      time.Time `json:"credentials_rejected_at"`
	RejectedCredentialsVersion uint64    `json:"rejected_credentials_version,omitempty"`
	Rejections                 int       `json:"rejections,omitempty"`
}

// lifetime is the token's full validity.
func (t *tokenEntry) lifetime() time.Duration {
	return t.ExpiresAt.Sub(t.ObtainedAt)
}

// effectiveMinTTL caps a requested minimum validity at half the token's lifetime, so
// that a short-lived token is not renewed on every read.
func (t *tokenEntry) effectiveMinTTL(minTTL time.Duration) time.Duration {
	return min(minTTL, t.lifetime()/2)
}

// usable reports whether the access token has at least minTTL (capped) left.
func (t *tokenEntry) usable(now time.Time, minTTL time.Duration) bool {
	return t != nil && t.AccessToken != "" && t.ExpiresAt.Sub(now) >= t.effectiveMinTTL(minTTL)
}

// valid reports whether the access token has not expired.
func (t *tokenEntry) valid(now time.Time) bool {
	return t != nil && t.AccessToken != "" && now.Before(t.ExpiresAt)
}

// refreshable reports whether a refresh token is held and not known to be expired.
func (t *tokenEntry) refreshable(now time.Time) bool {
	return t.RefreshToken != "" && (t.RefreshExpiresAt.IsZero() || now.Before(t.RefreshExpiresAt))
}

// rejectedFor reports whether a recorded rejection applies to the connection's
// current credentials.
func (t *tokenEntry) rejectedFor(conn *connEntry) bool {
	return conn != nil && !t.CredentialsRejectedAt.IsZero() && t.RejectedCredentialsVersion == conn.CredentialsVersion
}

// loginAllowedAt is when a password login may next be tried; zero means now.
func (t *tokenEntry) loginAllowedAt(conn *connEntry) time.Time {
	if !t.rejectedFor(conn) {
		return time.Time{}
	}
	backoff := rejectionBackoff
	for i := 1; i < t.Rejections && backoff < maxRejectionBackoff; i++ {
		backoff *= 2
	}
	return t.CredentialsRejectedAt.Add(min(backoff, maxRejectionBackoff))
}

// roleCache is what the fast path reads without a lock: a role and its session. It is
// replaced, never changed, except for served.
type roleCache struct {
	role  *roleEntry
	token *tokenEntry // nil: no session
	// view is the token's part of a creds answer that no read changes, built once.
	view *credsView
	// unsaved marks a session that could not be persisted yet: reads take the slow
	// path until it is.
	unsaved bool
	// served records that the current access token was handed out, which makes it
	// worth renewing in the background.
	served atomic.Bool
}

// attemptState rate-limits a failing role's provider attempts. Only used under the
// role's lock.
type attemptState struct {
	next               time.Time
	err                error
	credentialsVersion uint64
}

// connRejection records, in memory, that a connection's credentials were rejected, so
// that every role using the connection holds back its logins: the provider counts
// failed logins per account, not per role.
type connRejection struct {
	conn       *connEntry // the connection as it was; a change of its credentials lifts the record
	at         time.Time
	rejections int
	allowed    time.Time
	cause      string
}

// connectionRejection returns the rejection recorded for a connection's current
// credentials, or nil.
func (b *backend) connectionRejection(name string, conn *connEntry) *connRejection {
	v, ok := b.rejections.Load(name)
	if !ok {
		return nil
	}
	if r := v.(*connRejection); r.conn.CredentialsVersion == conn.CredentialsVersion {
		return r
	}
	return nil
}

// tokenResult is what a creds request returns.
type tokenResult struct {
	token    *tokenEntry
	view     *credsView // nil: build it from token
	minTTL   time.Duration
	warnings []string
}

// userError is a mistake of the caller's (an unknown role or connection): it becomes
// a 400 response.
type userError struct{ msg string }

func (e *userError) Error() string { return e.msg }

// getToken returns a token of role name with at least minTTL left (0: the role's
// min_ttl), renewing it when needed; force renews it in any case.
func (b *backend) getToken(ctx context.Context, s logical.Storage, name string, minTTL time.Duration, force bool) (tokenResult, error) {
	if !force {
		if v, ok := b.cache.Load(name); ok {
			rc := v.(*roleCache)
			want := max(rc.role.MinTTL, minTTL)
			if !rc.unsaved && rc.token.usable(b.now(), want) {
				b.markServed(name, rc)
				return tokenResult{token: rc.token, view: rc.view, minTTL: want}, nil
			}
		}
	}

	lock := locksutil.LockForKey(b.roleLocks, name)
	lock.Lock()
	defer lock.Unlock()

	rc, err := b.loadState(ctx, s, name)
	if err != nil {
		return tokenResult{}, err
	}
	if rc == nil {
		return tokenResult{}, &userError{fmt.Sprintf("role %q does not exist: create it with vault write <mount>/roles/%s config=<connection>", name, name)}
	}
	want := max(rc.role.MinTTL, minTTL)
	res := tokenResult{minTTL: want}
	// From here on a reader that goes away must not cut a renewal short: the provider
	// may already have rotated the refresh token, and the new one must reach storage.
	// request_timeout bounds how long this takes.
	ctx = context.WithoutCancel(ctx)
	if rc.unsaved {
		if err := b.persist(ctx, s, name, rc.role, rc.token); err != nil {
			res.warnings = append(res.warnings, "the role's newest tokens could not be saved to storage yet: "+err.Error())
		} else if latest, ok := b.cacheLoaded(name); ok {
			rc = latest
		}
	}
	if !force && rc.token.usable(b.now(), want) {
		b.markServed(name, rc)
		res.token, res.view = rc.token, rc.view
		return res, nil
	}
	if !b.canWrite() {
		// Let Vault run the request on the active node, before any provider call.
		return tokenResult{}, logical.ErrReadOnly
	}
	tok, warning, err := b.renew(ctx, s, name, rc)
	if err != nil {
		return tokenResult{}, err
	}
	if warning != "" {
		res.warnings = append(res.warnings, warning)
	}
	if latest, ok := b.cacheLoaded(name); ok && latest.token == tok {
		b.markServed(name, latest)
		res.view = latest.view
	}
	res.token = tok
	return res, nil
}

// cacheLoaded returns the cached state of a role.
func (b *backend) cacheLoaded(name string) (*roleCache, bool) {
	v, ok := b.cache.Load(name)
	if !ok {
		return nil, false
	}
	return v.(*roleCache), true
}

// loadState reads a role and its session from storage (or the unsaved session kept in
// memory) and caches them. The caller holds the role's lock. It returns nil for an
// unknown role.
func (b *backend) loadState(ctx context.Context, s logical.Storage, name string) (*roleCache, error) {
	gen := b.generation.Load()
	role := new(roleEntry)
	found, err := getJSON(ctx, s, rolePrefix+name, role)
	if err != nil || !found {
		return nil, err
	}
	rc := &roleCache{role: role}
	if v, ok := b.pending.Load(name); ok {
		rc.token, rc.unsaved = v.(*tokenEntry), true
	} else {
		tok := new(tokenEntry)
		found, err := getJSON(ctx, s, tokenPrefix+name, tok)
		if err != nil {
			return nil, err
		}
		if found {
			rc.token = tok
		}
	}
	if rc.token != nil {
		conn, err := b.connection(ctx, s, role.Config)
		if err != nil {
			return nil, err
		}
		if conn == nil || rc.token.Config != role.Config || rc.token.AccountVersion != conn.AccountVersion {
			// The session belongs to another account: it is of no use to this role,
			// saved or not.
			rc.token, rc.unsaved = nil, false
			b.pending.Delete(name)
		}
	}
	if rc.token != nil {
		rc.view = newCredsView(rc.token)
	}
	if old, ok := b.cacheLoaded(name); ok && old.token != nil && rc.token != nil && old.token.AccessToken == rc.token.AccessToken && old.served.Load() {
		rc.served.Store(true)
	}
	b.cacheIfCurrent(&b.cache, name, rc, gen)
	return rc, nil
}

// renew gets a new token for a role: with the refresh token while it lives, else with
// the password. The caller holds the role's lock and has checked that this node may
// write. It returns the token to hand out and, when that token is an older one served
// after a failed renewal, a warning.
func (b *backend) renew(ctx context.Context, s logical.Storage, name string, rc *roleCache) (*tokenEntry, string, error) {
	role := rc.role
	conn, err := b.connection(ctx, s, role.Config)
	if err != nil {
		return nil, "", err
	}
	if conn == nil {
		return nil, "", &userError{fmt.Sprintf("role %q uses connection %q, which does not exist: write <mount>/config/%s or point the role to another connection", name, role.Config, role.Config)}
	}
	now := b.now()
	st := &tokenEntry{Config: role.Config, AccountVersion: conn.AccountVersion}
	if rc.token != nil {
		copied := *rc.token
		st = &copied
	}
	old := rc.token

	if v, ok := b.attempts.Load(name); ok {
		att := v.(*attemptState)
		if att.credentialsVersion == conn.CredentialsVersion && now.Before(att.next) {
			err := fmt.Errorf("%w; the next attempt is allowed at %s", att.err, formatTime(att.next))
			return b.serveStale(old, now, err)
		}
	}
	client, err := b.client(role.Config, conn)
	if err != nil {
		return nil, "", fmt.Errorf("connection %q: %w", role.Config, err)
	}
	secrets := []string{conn.Password, conn.ClientSecret, st.RefreshToken}

	if st.refreshable(now) {
		tok, err := client.refreshGrant(ctx, st.RefreshToken)
		if err == nil {
			return b.succeeded(ctx, s, name, role, conn, st, tok, grantRefresh, now)
		}
		var gerr *grantError
		if !errors.As(err, &gerr) || gerr.kind == failTransient || gerr.kind == failInvalid {
			return b.failed(ctx, s, name, role, conn, st, old, now, err, secrets, false)
		}
		// The refresh token is dead, or may have been used by a request whose answer
		// was lost: it is never presented again.
		b.Logger().Info("refresh token not usable, logging in with the password", "role", name, "connection", role.Config, "reason", redact(err.Error(), secrets...))
		st.RefreshToken, st.RefreshExpiresAt = "", time.Time{}
	}

	rejectedAt, cause, allowed := st.CredentialsRejectedAt, st.LastError, st.loginAllowedAt(conn)
	if r := b.connectionRejection(role.Config, conn); r != nil && r.allowed.After(allowed) {
		// Another role's login with these credentials was rejected: the account is
		// the same, so is the backoff.
		rejectedAt, cause, allowed = r.at, r.cause, r.allowed
	}
	if !allowed.IsZero() && now.Before(allowed) {
		err := fmt.Errorf("connection %q rejected the credentials of user %q at %s (%s); to protect the account from lockout no login is tried before %s: update the credentials with vault write <mount>/config/%s password=<new password> (or client_secret=<new secret>)",
			role.Config, conn.Username, formatTime(rejectedAt), cause, formatTime(allowed), role.Config)
		if st.RefreshToken == "" && rc.token != nil && rc.token.RefreshToken != "" {
			// The refresh token was just given up: record that before answering.
			if perr := b.persist(ctx, s, name, role, st); perr != nil {
				return nil, "", perr
			}
		}
		return b.serveStale(old, now, err)
	}
	tok, err := client.passwordGrant(ctx, role.Scopes)
	if err == nil {
		return b.succeeded(ctx, s, name, role, conn, st, tok, grantPassword, now)
	}
	var gerr *grantError
	rejected := errors.As(err, &gerr) && gerr.credentialsRejected()
	if rejected {
		if st.RejectedCredentialsVersion != conn.CredentialsVersion {
			st.Rejections = 0
		}
		if r := b.connectionRejection(role.Config, conn); r != nil {
			st.Rejections = max(st.Rejections, r.rejections)
		}
		st.CredentialsRejectedAt = now
		st.RejectedCredentialsVersion = conn.CredentialsVersion
		st.Rejections++
		b.rejections.Store(role.Config, &connRejection{
			conn: conn, at: now, rejections: st.Rejections, allowed: st.loginAllowedAt(conn), cause: redact(err.Error(), secrets...),
		})
		b.Logger().Warn("provider rejected the password login", "role", name, "connection", role.Config, "username", conn.Username, "next_login_at", formatTime(st.loginAllowedAt(conn)))
	}
	return b.failed(ctx, s, name, role, conn, st, old, now, err, secrets, rejected)
}

// succeeded records new tokens, persists them and returns the access token.
func (b *backend) succeeded(ctx context.Context, s logical.Storage, name string, role *roleEntry, conn *connEntry, st *tokenEntry, tok *tokenResponse, grant string, now time.Time) (*tokenEntry, string, error) {
	// The tokens belong to the account they were obtained from.
	st.Config, st.AccountVersion = role.Config, conn.AccountVersion
	st.AccessToken = tok.AccessToken
	st.TokenType = tok.TokenType
	st.Scope = tok.Scope
	st.ObtainedAt = now
	st.ExpiresAt = tok.ExpiresAt
	if !st.ExpiresAt.After(now) {
		// A token that is already expired by our clock: count it as one second long
		// rather than never valid, and let the next read renew it.
		st.ExpiresAt = now.Add(time.Second)
	}
	if tok.RefreshToken != "" {
		st.RefreshToken = tok.RefreshToken
		st.RefreshExpiresAt = tok.RefreshExpiresAt
		if st.RefreshExpiresAt.IsZero() && conn.RefreshTokenTTL > 0 {
			st.RefreshExpiresAt = now.Add(conn.RefreshTokenTTL)
		}
	} else if !tok.RefreshExpiresAt.IsZero() {
		st.RefreshExpiresAt = tok.RefreshExpiresAt
	}
	st.LastGrant = grant
	st.ConsecutiveFailures = 0
	st.CredentialsRejectedAt, st.RejectedCredentialsVersion, st.Rejections = time.Time{}, 0, 0
	b.attempts.Delete(name)
	b.Logger().Debug("obtained a token", "role", name, "connection", role.Config, "grant", grant, "expires_at", formatTime(st.ExpiresAt))
	if err := b.persist(ctx, s, name, role, st); err != nil {
		return nil, "", fmt.Errorf("role %q: a new token was obtained but could not be saved; it is kept in memory and saved at the next chance: %w", name, err)
	}
	return st, "", nil
}

// failed records a failure, persists the record and serves the old token while it is
// still valid.
func (b *backend) failed(ctx context.Context, s logical.Storage, name string, role *roleEntry, conn *connEntry, st, old *tokenEntry, now time.Time, cause error, secrets []string, rejected bool) (*tokenEntry, string, error) {
	msg := redact(cause.Error(), secrets...)
	st.LastError = msg
	st.LastErrorAt = now
	st.ConsecutiveFailures++
	next := now.Add(retryInterval)
	var gerr *grantError
	if errors.As(cause, &gerr) && gerr.retryAfter > retryInterval {
		next = now.Add(gerr.retryAfter)
	}
	b.Logger().Warn("token request failed", "role", name, "connection", role.Config, "error", msg, "consecutive_failures", st.ConsecutiveFailures)

	var err error
	if rejected {
		err = fmt.Errorf("connection %q rejected the credentials of user %q: %s; to protect the account from lockout no login is tried before %s: update the credentials with vault write <mount>/config/%s password=<new password> (or client_secret=<new secret>)",
			role.Config, conn.Username, msg, formatTime(st.loginAllowedAt(conn)), role.Config)
		// The rejection's own backoff gates the next login and says when it is.
		b.attempts.Delete(name)
	} else {
		err = fmt.Errorf("could not get a token from connection %q (%s): %s", role.Config, conn.TokenURL, msg)
		if gerr != nil && gerr.advice() != "" {
			err = fmt.Errorf("%w; %s", err, gerr.advice())
		}
		b.attempts.Store(name, &attemptState{next: next, err: err, credentialsVersion: conn.CredentialsVersion})
	}
	if perr := b.persist(ctx, s, name, role, st); perr != nil {
		b.Logger().Warn("could not save the failure record", "role", name, "error", perr)
	}
	return b.serveStale(old, now, err)
}

// serveStale returns the old token with a warning while it is still valid, else the error.
func (b *backend) serveStale(old *tokenEntry, now time.Time, err error) (*tokenEntry, string, error) {
	if old.valid(now) {
		return old, fmt.Sprintf("served the current token, valid until %s, because renewing it failed: %s", formatTime(old.ExpiresAt), err), nil
	}
	return nil, "", &providerError{err}
}

// persist writes a session and updates the cache and the schedule. When the write
// fails the session is kept in memory, marked unsaved, and written at the next chance.
func (b *backend) persist(ctx context.Context, s logical.Storage, name string, role *roleEntry, st *tokenEntry) error {
	err := putJSON(ctx, s, tokenPrefix+name, st)
	rc := &roleCache{role: role, token: st, view: newCredsView(st), unsaved: err != nil}
	b.invalidateMu.Lock()
	if conn, ok := b.conns.Load(role.Config); ok && conn.(*connEntry).AccountVersion == st.AccountVersion {
		b.cache.Store(name, rc)
	} else {
		// The connection changed (or was dropped) while the session was renewed: the
		// next read loads it from storage and checks which account it belongs to.
		b.cache.Delete(name)
	}
	b.invalidateMu.Unlock()
	if err != nil {
		b.pending.Store(name, st)
		b.sched.set(name, b.now().Add(time.Minute))
		return err
	}
	b.pending.Delete(name)
	b.sched.set(name, dueTime(role, st, b.now()))
	return nil
}

// discardTokens forgets a role's session, ending it at the revocation endpoint when one
// is configured (best effort). The failure record is kept. The caller holds the lock.
func (b *backend) discardTokens(ctx context.Context, s logical.Storage, name, reason string) error {
	st := new(tokenEntry)
	if v, ok := b.pending.Load(name); ok {
		st = v.(*tokenEntry)
	} else {
		found, err := getJSON(ctx, s, tokenPrefix+name, st)
		if err != nil || !found {
			return err
		}
	}
	if st.RefreshToken != "" {
		// Only to the provider that issued it: a connection pointed elsewhere since
		// must never receive this refresh token.
		if conn, err := b.connection(ctx, s, st.Config); err == nil && conn != nil && conn.AccountVersion == st.AccountVersion {
			if client, err := b.client(st.Config, conn); err == nil {
				if err := client.revoke(ctx, st.RefreshToken); err != nil {
					b.Logger().Info("could not revoke a discarded session", "role", name, "error", redact(err.Error(), st.RefreshToken, conn.Password, conn.ClientSecret))
				}
			}
		}
	}
	kept := &tokenEntry{
		Config: st.Config, AccountVersion: st.AccountVersion,
		LastError: st.LastError, LastErrorAt: st.LastErrorAt, ConsecutiveFailures: st.ConsecutiveFailures,
		CredentialsRejectedAt: st.CredentialsRejectedAt, RejectedCredentialsVersion: st.RejectedCredentialsVersion, Rejections: st.Rejections,
	}
	if err := putJSON(ctx, s, tokenPrefix+name, kept); err != nil {
		return err
	}
	b.pending.Delete(name)
	b.Logger().Info("session discarded", "role", name, "reason", reason)
	return nil
}

// forget drops a role's cached state and makes the role due now, so that the next
// periodic run reads it again: an idle session must stay scheduled for its keep-alive.
func (b *backend) forget(name string) {
	b.invalidateMu.Lock()
	b.generation.Add(1)
	b.cache.Delete(name)
	b.invalidateMu.Unlock()
	b.sched.set(name, b.now())
}

// client returns the cached HTTP token client of a connection.
func (b *backend) client(name string, conn *connEntry) (*tokenClient, error) {
	if v, ok := b.clients.Load(name); ok {
		c := v.(*tokenClient)
		if c.conn == conn {
			return c, nil
		}
	}
	hc, err := newHTTPClient(conn)
	if err != nil {
		return nil, err
	}
	c := &tokenClient{conn: conn, http: hc, now: b.now, sleep: b.sleep}
	b.clients.Store(name, c)
	return c, nil
}

// providerError is a failure to get a token from the provider: Vault answers 502.
type providerError struct{ err error }

func (e *providerError) Error() string { return e.err.Error() }
func (e *providerError) Unwrap() error { return e.err }

// responseError turns an error into Vault's answer: a 400 for user mistakes, a 502 for
// provider failures, the error itself (500) for storage failures.
func responseError(mount string, err error) (*logical.Response, error) {
	var uerr *userError
	if errors.As(err, &uerr) {
		return logical.ErrorResponse(withMount(uerr.msg, mount)), nil
	}
	var perr *providerError
	if errors.As(err, &perr) {
		return nil, logical.CodedError(http.StatusBadGateway, withMount(perr.Error(), mount))
	}
	if isReadOnlyErr(err) {
		return nil, logical.ErrReadOnly
	}
	return nil, err
}

func withMount(msg, mount string) string {
	if mount == "" {
		mount = "bearer/"
	}
	return strings.ReplaceAll(msg, "<mount>/", mount)
}

// redact replaces every secret in s.
func redact(s string, secrets ...string) string {
	for _, secret := range secrets {
		if len(secret) >= 4 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return s
}

func getJSON(ctx context.Context, s logical.Storage, key string, v any) (bool, error) {
	entry, err := s.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", key, err)
	}
	if entry == nil {
		return false, nil
	}
	if err := json.Unmarshal(entry.Value, v); err != nil {
		return false, fmt.Errorf("decoding %s: %w", key, err)
	}
	return true, nil
}

func putJSON(ctx context.Context, s logical.Storage, key string, v any) error {
	entry, err := logical.StorageEntryJSON(key, v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.Put(ctx, entry); err != nil {
		if isReadOnlyErr(err) {
			// Bare, so that Vault sees it and runs the request on a node that can write.
			return logical.ErrReadOnly
		}
		return fmt.Errorf("writing %s: %w", key, err)
	}
	return nil
}
