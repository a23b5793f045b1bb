package bearer

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathHealth(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "health",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "health",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathHealthRead,
					Summary:  "Whether every role can serve a token, and what needs an operator.",
					Responses: map[int][]framework.Response{
						http.StatusOK:                 {{Description: "Every role can serve a token."}},
						http.StatusServiceUnavailable: {{Description: "Some role cannot serve a token; errors says which and why."}},
					},
				},
			},
			HelpSynopsis:    pathHealthHelpSyn,
			HelpDescription: pathHealthHelpDesc,
		},
	}
}

// Role states in a health answer.
const (
	healthReady       = "ready"               // holds a valid access token
	healthNoToken     = "no token yet"        // never read, nothing wrong
	healthRenewOnRead = "renews at next read" // token expired or none; the last attempt succeeded
	healthDegraded    = "degraded"            // serves, but something needs an operator
	healthFailing     = "failing"             // cannot serve a token
)

// healthSituation is what judgeRole looks at for one role.
type healthSituation struct {
	now  time.Time
	name string
	role *roleEntry
	// conn is nil when the role's connection does not exist.
	conn *connEntry
	// sess is the role's session, nil when it has none (of the connection's account).
	sess      *sessionEntry
	rejection *rejection
}

// roleHealth is health's verdict on one role.
type roleHealth struct {
	healthy bool
	state   string
	// problem says what needs an operator; "" when nothing does.
	problem string
}

// judgeRole decides whether a role can serve a token. It can when its connection
// exists and the provider has not rejected the connection's current credentials, and
// either it holds a valid access token, or its last attempt succeeded (the next read
// renews it), or it was never read and has no failure.
func judgeRole(s healthSituation) roleHealth {
	if s.conn == nil {
		return roleHealth{state: healthFailing, problem: msgUnknownConnection(s.name, s.role.Config)}
	}
	if s.rejection.appliesTo(s.conn) {
		// Rejected credentials need an operator, whether or not the role still serves
		// its current session.
		return roleHealth{state: healthFailing, problem: fmt.Sprintf("role %q: the credentials of its connection %q were rejected", s.name, s.role.Config)}
	}
	if s.conn.grantType() == grantRefresh {
		var t *sessionTokens
		if s.sess != nil {
			t = &s.sess.Tokens
		}
		if t == nil || (!t.valid(s.now) && !t.refreshable(s.now)) {
			cause := ""
			if s.sess != nil {
				cause = s.sess.Failure.LastError
			}
			return roleHealth{state: healthFailing, problem: msgSessionEnded(s.name, s.role.Config, cause)}
		}
	}
	if s.sess == nil {
		return roleHealth{healthy: true, state: healthNoToken}
	}
	t, f := &s.sess.Tokens, &s.sess.Failure
	switch {
	case f.Failures > 0 && t.valid(s.now):
		return roleHealth{healthy: true, state: healthDegraded, problem: fmt.Sprintf("role %q: serving its current token until %s, but renewing it failed %d times in a row: %s",
			s.name, formatTime(t.ExpiresAt), f.Failures, f.Message)}
	case f.Failures > 0:
		next := fmt.Sprintf("the next read of <mount>/creds/%s tries again", s.name)
		if f.ConnRevision == s.conn.Revision && s.now.Before(f.NextAttemptAt) {
			next = "the next attempt is allowed at " + formatTime(f.NextAttemptAt)
		}
		return roleHealth{state: healthFailing, problem: fmt.Sprintf("role %q has no valid token: its last attempt, at %s, failed (%d in a row): %s; %s",
			s.name, formatTime(f.LastErrorAt), f.Failures, f.Message, next)}
	case f.LastError != "":
		// A success that needed a password login: the refresh grant was refused.
		return roleHealth{healthy: true, state: healthDegraded, problem: fmt.Sprintf("role %q: the refresh grant was refused at %s: %s", s.name, formatTime(f.LastErrorAt), f.LastError)}
	case t.valid(s.now):
		return roleHealth{healthy: true, state: healthReady}
	case t.AccessToken == "" && t.RefreshToken == "":
		return roleHealth{healthy: true, state: healthNoToken}
	}
	return roleHealth{healthy: true, state: healthRenewOnRead}
}

func (b *backend) pathHealthRead(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	now := b.now()
	failing := 0
	needs := []string{}
	roles := make(map[string]any, len(names))
	usedBy := map[string][]string{}
	for _, name := range names {
		sit, err := b.healthSituation(ctx, req.Storage, name, now)
		if err != nil {
			return nil, err
		}
		if sit.role == nil {
			continue // deleted meanwhile
		}
		usedBy[sit.role.Config] = append(usedBy[sit.role.Config], name)
		h := judgeRole(sit)
		if !h.healthy {
			failing++
		}
		if h.problem != "" {
			needs = append(needs, withMount(h.problem, req.MountPoint))
		}
		r := map[string]any{
			"connection": sit.role.Config, "healthy": h.healthy, "state": h.state, "problem": withMount(h.problem, req.MountPoint),
			"token_expires_at": "", "consecutive_failures": 0,
		}
		if sit.sess != nil {
			r["token_expires_at"] = formatTime(sit.sess.Tokens.ExpiresAt)
			r["consecutive_failures"] = sit.sess.Failure.Failures
		}
		roles[name] = r
	}

	conns, err := b.connectionsHealth(ctx, req.Storage, usedBy)
	if err != nil {
		return nil, err
	}
	for _, c := range conns {
		if p := c["problem"].(string); p != "" {
			needs = append(needs, withMount(p, req.MountPoint))
			c["problem"] = withMount(p, req.MountPoint)
		}
	}
	sort.Strings(needs)
	data := map[string]any{
		"healthy":        failing == 0,
		"summary":        fmt.Sprintf("%d of %d roles can serve a token", len(roles)-failing, len(roles)),
		"roles":          roles,
		"connections":    conns,
		"needs_operator": needs,
	}
	if failing == 0 {
		return &logical.Response{Data: data}, nil
	}
	// Vault's error shape, so that the CLI prints the reasons, with the details beside.
	body, err := json.Marshal(map[string]any{"errors": needs, "data": data})
	if err != nil {
		return nil, fmt.Errorf("encoding the health answer: %w", err)
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPStatusCode:  http.StatusServiceUnavailable,
		logical.HTTPContentType: "application/json",
		logical.HTTPRawBody:     body,
	}}, nil
}

// healthSituation loads what judgeRole needs of a role: from memory where cached, else
// from storage; the newest session is the one kept in memory when its write failed.
func (b *backend) healthSituation(ctx context.Context, s logical.Storage, name string, now time.Time) (healthSituation, error) {
	sit := healthSituation{now: now, name: name}
	role, err := b.role(ctx, s, name)
	if err != nil || role == nil {
		return sit, err
	}
	sit.role = role
	cs, conn, err := b.connection(ctx, s, role.Config)
	if err != nil || conn == nil {
		return sit, err
	}
	sit.conn = conn
	account, err := b.accountRecord(ctx, s, cs)
	if err != nil {
		return sit, err
	}
	sit.rejection = newerRejection(account.Rejection, b.localRejection(cs))
	sess, _, err := readSession(ctx, s, name)
	if err != nil {
		return sit, err
	}
	if u := b.roleState(name).unsaved.Load(); u != nil {
		sess = u.sess
	}
	if sess != nil && sess.Account == (sessionAccount{Config: role.Config, AccountVersion: conn.AccountVersion}) {
		sit.sess = sess
	}
	return sit, nil
}

// connectionsHealth describes every connection: whether the provider rejected its
// current credentials, and the roles using it (usedBy).
func (b *backend) connectionsHealth(ctx context.Context, s logical.Storage, usedBy map[string][]string) (map[string]map[string]any, error) {
	names, err := s.List(ctx, configPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	conns := make(map[string]map[string]any, len(names))
	for _, name := range names {
		cs, conn, err := b.connection(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if conn == nil {
			continue
		}
		account, err := b.accountRecord(ctx, s, cs)
		if err != nil {
			return nil, err
		}
		roles := append([]string{}, usedBy[name]...)
		sort.Strings(roles)
		c := map[string]any{"roles": roles, "credentials_rejected": false, "credentials_rejected_at": "", "next_login_at": "", "problem": ""}
		if rej := newerRejection(account.Rejection, b.localRejection(cs)); rej.appliesTo(conn) {
			c["credentials_rejected"] = true
			c["credentials_rejected_at"] = formatTime(rej.At)
			c["next_login_at"] = formatTime(rej.NextLoginAt)
			c["problem"] = msgHeldBack(conn, rej)
		}
		conns[name] = c
	}
	return conns, nil
}

const pathHealthHelpSyn = `Whether every role can serve a token, and what needs an operator.`

const pathHealthHelpDesc = `
Read answers 200 when every role can serve a token, and 503 otherwise, with errors
naming each role and connection that needs an operator and why. Both answers carry
the details: healthy, summary, roles (per role: connection, healthy, state, problem,
token_expires_at, consecutive_failures), connections (per connection: roles,
credentials_rejected, credentials_rejected_at, next_login_at, problem) and
needs_operator (every problem).

A role can serve a token when its connection exists, the provider has not rejected
the connection's current credentials, and one of these holds:
  - it holds a valid (unexpired) access token (state "ready"; "degraded" when its
    renewal is failing meanwhile);
  - it was never read and has no failure: nothing is wrong yet ("no token yet");
  - its last attempt succeeded: the next read renews its token ("renews at next
    read").
It cannot ("failing") when its connection is missing, when the connection's
credentials were rejected (update the password or client secret), or when its last
attempt failed and no valid access token is left.

A role that serves but needs an operator is "degraded" and listed in needs_operator
without failing the check: its renewal is failing while the current token is still
valid, or the provider refused the refresh grant for a reason of configuration and
every renewal logs in with the password instead (check refresh_params and the client
settings).

Health reads the roles, their sessions and the connections from storage; it is not
forwarded, and any node answers.
`
