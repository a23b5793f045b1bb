package bearer

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The records the renewal keeps in storage; docs/renewal.md says when each is written.

// sessionFormat is the shape of sessionEntry written by this version; v0.1.0 wrote one
// flat object, read as format 1.
const sessionFormat = 2

// sessionEntry is a role's session as stored at tokens/<role>.
type sessionEntry struct {
	Format int `json:"format"`
	// Revision counts the writes of this entry, so that a session kept in memory after a
	// failed write is written later only over the entry it follows.
	Revision uint64         `json:"revision"`
	Account  sessionAccount `json:"account"`
	Tokens   sessionTokens  `json:"tokens"`
	Failure  failureRecord  `json:"failure"`
}

// sessionAccount names the account a session's tokens belong to.
type sessionAccount struct {
	Config         string `json:"config"`
	AccountVersion uint64 `json:"account_version"`
}

// sessionTokens are a session's tokens.
type sessionTokens struct {
	AccessToken      string    `json:"access_token,omitempty"`
	TokenType        string    `json:"token_type,omitempty"`
	Scope            string    `json:"scope,omitempty"`
	ExpiresAt        time.Time `json:"expires_at"`
	ObtainedAt       time.Time `json:"obtained_at"`
	RefreshToken     string    `json:"refresh_token,omitempty"`
	RefreshExpiresAt time.Time `json:"refresh_expires_at"`
	// Grant is how the access token was obtained: password or refresh_token.
	Grant string `json:"grant,omitempty"`
	// RefreshSentAt, when set, is the write-ahead mark: RefreshToken was (perhaps)
	// presented then and no outcome was recorded, so it is spent.
	RefreshSentAt time.Time `json:"refresh_sent_at"`
}

// failureRecord is what a role remembers of its failed attempts.
type failureRecord struct {
	// LastError is the cause of the last failure, or the problem a degraded success
	// worked around (a refresh refused by configuration); no secrets.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at"`
	// Message is the whole error of the last failed attempt, as readers get it.
	Message string `json:"message,omitempty"`
	// Failures counts consecutive failed attempts; it sets the retry window.
	Failures int `json:"consecutive_failures,omitempty"`
	// NextAttemptAt ends the retry window of the connection at ConnRevision: a config
	// write lifts it.
	NextAttemptAt time.Time `json:"next_attempt_at"`
	ConnRevision  uint64    `json:"conn_revision,omitempty"`
}

// accountEntry is a connection's safety state, stored at accounts/<name>: what all roles
// of the connection share because they log in to one account.
type accountEntry struct {
	Rejection *rejection `json:"rejection,omitempty"`
	// Spare is the session of the verify login of the last config write, kept for the
	// first role that needs a login.
	Spare *spareSession `json:"spare,omitempty"`
}

// rejection records that the provider rejected a connection's credentials.
type rejection struct {
	CredentialsVersion uint64    `json:"credentials_version"`
	At                 time.Time `json:"at"`
	// Count is the number of consecutive rejections; it doubles the backoff.
	Count int `json:"count"`
	// Cause is the provider's answer, without secrets.
	Cause string `json:"cause"`
	// Client marks a rejected client (invalid_client, unauthorized_client) rather than
	// a rejected password.
	Client      bool      `json:"client,omitempty"`
	NextLoginAt time.Time `json:"next_login_at"`
}

// spareSession is a session no role uses yet.
type spareSession struct {
	AccountVersion uint64        `json:"account_version"`
	Tokens         sessionTokens `json:"tokens"`
}

// legacySession is tokens/<role> as v0.1.0 wrote it.
type legacySession struct {
	Config                     string    `json:"config"`
	AccountVersion             uint64    `json:"account_version"`
	AccessToken                string    `json:"access_token"`
	TokenType                  string    `json:"token_type"`
	Scope                      string    `json:"scope"`
	ExpiresAt                  time.Time `json:"expires_at"`
	ObtainedAt                 time.Time `json:"obtained_at"`
	RefreshToken               string    `json:"refresh_token"`
	RefreshExpiresAt           time.Time `json:"refresh_expires_at"`
	LastGrant                  string    `json:"last_grant"`
	LastError                  string    `json:"last_error"`
	LastErrorAt                time.Time `json:"last_error_at"`
	ConsecutiveFailures        int       `json:"consecutive_failures"`
	CredentialsRejectedAt      time.Time `json:"credentials_rejected_at"`
	RejectedCredentialsVersion uint64    `json:"rejected_credentials_version"`
	Rejections                 int       `json:"rejections"`
}

// decodeSession reads tokens/<role> in any format. A v0.1.0 entry may carry a rejection
// of the connection's credentials, returned so that the connection adopts it.
func decodeSession(raw []byte) (*sessionEntry, *rejection, error) {
	var probe struct {
		Format int `json:"format"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, nil, err
	}
	if probe.Format >= sessionFormat {
		s := new(sessionEntry)
		if err := json.Unmarshal(raw, s); err != nil {
			return nil, nil, err
		}
		return s, nil, nil
	}
	var old legacySession
	if err := json.Unmarshal(raw, &old); err != nil {
		return nil, nil, err
	}
	s := &sessionEntry{
		Format:  sessionFormat,
		Account: sessionAccount{Config: old.Config, AccountVersion: old.AccountVersion},
		Tokens: sessionTokens{
			AccessToken: old.AccessToken, TokenType: old.TokenType, Scope: old.Scope,
			ExpiresAt: old.ExpiresAt, ObtainedAt: old.ObtainedAt,
			RefreshToken: old.RefreshToken, RefreshExpiresAt: old.RefreshExpiresAt,
			Grant: old.LastGrant,
		},
		Failure: failureRecord{LastError: old.LastError, LastErrorAt: old.LastErrorAt, Failures: old.ConsecutiveFailures},
	}
	var rej *rejection
	if !old.CredentialsRejectedAt.IsZero() {
		rej = &rejection{
			CredentialsVersion: old.RejectedCredentialsVersion, At: old.CredentialsRejectedAt,
			Count: max(old.Rejections, 1), Cause: old.LastError,
		}
		rej.NextLoginAt = rej.At.Add(rejectionBackoffFor(rej.Count))
	}
	return s, rej, nil
}

// lifetime is the access token's full validity.
func (t *sessionTokens) lifetime() time.Duration {
	return t.ExpiresAt.Sub(t.ObtainedAt)
}

// effectiveMinTTL caps a requested minimum validity at half the token's lifetime, so
// that a short-lived token is not renewed on every read.
func (t *sessionTokens) effectiveMinTTL(minTTL time.Duration) time.Duration {
	return min(minTTL, t.lifetime()/2)
}

// readableUntil is when reads asking for minTTL stop accepting the access token.
func (t *sessionTokens) readableUntil(minTTL time.Duration) time.Time {
	return t.ExpiresAt.Add(-t.effectiveMinTTL(minTTL))
}

// usable reports whether the access token has at least minTTL (capped) left, and has
// not expired.
func (t *sessionTokens) usable(now time.Time, minTTL time.Duration) bool {
	return t.valid(now) && !now.After(t.readableUntil(minTTL))
}

// valid reports whether the access token has not expired.
func (t *sessionTokens) valid(now time.Time) bool {
	return t.AccessToken != "" && now.Before(t.ExpiresAt)
}

// refreshable reports whether the refresh token may be presented: held, not known to
// be expired, and not spent by an earlier attempt whose outcome was not recorded.
func (t *sessionTokens) refreshable(now time.Time) bool {
	return t.RefreshToken != "" && t.RefreshSentAt.IsZero() &&
		(t.RefreshExpiresAt.IsZero() || now.Before(t.RefreshExpiresAt))
}

// appliesTo reports whether a rejection concerns a connection's current credentials.
func (r *rejection) appliesTo(conn *connEntry) bool {
	return r != nil && conn != nil && r.CredentialsVersion == conn.CredentialsVersion
}

// holdsBack reports whether a rejection still forbids logins of conn at now.
func (r *rejection) holdsBack(conn *connEntry, now time.Time) bool {
	return r.appliesTo(conn) && now.Before(r.NextLoginAt)
}

// rejectionBackoffFor is the pause after the count-th consecutive rejection: 15 minutes,
// doubling up to 4 hours.
func rejectionBackoffFor(count int) time.Duration {
	backoff := rejectionBackoff
	for i := 1; i < count && backoff < maxRejectionBackoff; i++ {
		backoff *= 2
	}
	return min(backoff, maxRejectionBackoff)
}

// retryWindow is the pause after the failures-th consecutive failed attempt: 5 seconds,
// doubling up to about 5 minutes.
func retryWindow(failures int) time.Duration {
	d := retryInterval
	for i := 1; i < failures && d < maxRetryInterval; i++ {
		d *= 2
	}
	return min(d, maxRetryInterval)
}

// usable reports whether a spare session can serve a role of conn at now.
func (s *spareSession) usable(conn *connEntry, now time.Time) bool {
	return s != nil && conn != nil && s.AccountVersion == conn.AccountVersion &&
		(s.Tokens.valid(now) || s.Tokens.refreshable(now))
}

func readSession(ctx context.Context, s logical.Storage, name string) (*sessionEntry, *rejection, error) {
	entry, err := s.Get(ctx, tokenPrefix+name)
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s%s: %w", tokenPrefix, name, err)
	}
	if entry == nil {
		return nil, nil, nil
	}
	sess, rej, err := decodeSession(entry.Value)
	if err != nil {
		return nil, nil, fmt.Errorf("decoding %s%s: %w", tokenPrefix, name, err)
	}
	return sess, rej, nil
}
