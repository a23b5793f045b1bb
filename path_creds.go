package bearer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func pathCreds(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "creds/" + framework.GenericNameRegex("name"),
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "credentials",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeLowerCaseString,
					Description: "Name of the role.",
					Required:    true,
				},
				"min_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Ask for a token valid for at least this long, when more than the role's min_ttl (capped at half the token's lifetime).",
					Query:       true,
				},
				"refresh_token": {
					Type:         framework.TypeString,
					Description:  "On write: seed the role's session with this refresh token (the old session ends), renewed at once; for connections with grant_type=refresh_token, which cannot log in. Never returned or logged.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				// The read is not forwarded: a cached token is served by any node, and a
				// read that needs the provider answers ErrReadOnly on a node that cannot
				// write, so Vault runs it on the active node.
				logical.ReadOperation: &framework.PathOperation{
					Callback: b.pathCredsRead,
					Summary:  "Get a valid access token.",
					Responses: map[int][]framework.Response{
						200: {{Description: "OK", Fields: credsResponseFields}},
					},
				},
				logical.UpdateOperation: &framework.PathOperation{
					Callback:                    b.pathCredsRenew,
					Summary:                     "Get a new access token now.",
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
					DisplayAttrs:                &framework.DisplayAttributes{OperationVerb: "renew"},
					Responses: map[int][]framework.Response{
						200: {{Description: "OK", Fields: credsResponseFields}},
					},
				},
				logical.DeleteOperation: &framework.PathOperation{
					Callback:                    b.pathCredsDelete,
					Summary:                     "Forget the role's tokens; the next read logs in with the password.",
					ForwardPerformanceStandby:   true,
					ForwardPerformanceSecondary: true,
				},
			},
			HelpSynopsis:    pathCredsHelpSyn,
			HelpDescription: pathCredsHelpDesc,
		},
	}
}

var credsResponseFields = map[string]*framework.FieldSchema{
	"access_token":        {Type: framework.TypeString, Description: "The bearer access token."},
	"token_type":          {Type: framework.TypeString, Description: "Always Bearer."},
	"expires_at":          {Type: framework.TypeString, Description: "When the access token expires (RFC 3339, UTC)."},
	"expires_in":          {Type: framework.TypeInt64, Description: "Whole seconds until the access token expires."},
	"scope":               {Type: framework.TypeString, Description: "The token's scope, if the provider returned one."},
	"ttl":                 {Type: framework.TypeInt64, Description: "Whole seconds until the engine hands out a newer token (at least 1)."},
	"rotation_period":     {Type: framework.TypeInt64, Description: "The token's full lifetime in seconds."},
	"last_vault_rotation": {Type: framework.TypeString, Description: "When the current access token was obtained (RFC 3339, UTC)."},
}

func (b *backend) pathCredsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.creds(ctx, req, d, false)
}

func (b *backend) pathCredsRenew(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	return b.creds(ctx, req, d, true)
}

// creds answers a creds read, or with force a renewal (or the seeding of a session).
func (b *backend) creds(ctx context.Context, req *logical.Request, d *framework.FieldData, force bool) (*logical.Response, error) {
	minTTL := time.Duration(d.Get("min_ttl").(int)) * time.Second
	name := d.Get("name").(string)
	var res tokenResult
	var err error
	if v, ok := seedOf(d, force); ok {
		seed, _ := trimLineEnd(v)
		if seed == "" {
			return logical.ErrorResponse("role %q: refresh_token is empty", name), nil
		}
		var rs *roleState
		if rs, err = b.knownRoleState(ctx, req.Storage, name); err == nil {
			res, err = b.renewFor(ctx, req.Storage, rs, renewOptions{minTTL: minTTL, force: true, seed: seed})
		}
	} else {
		res, err = b.getToken(ctx, req.Storage, name, minTTL, force)
	}
	if err != nil {
		if !isReadOnlyErr(err) && !isUnknownRole(err) {
			b.metrics.read(name, answeredFailed)
		}
		return responseError(req, err)
	}
	b.metrics.readOf(res.rs, res.how)
	return credsResponse(&res, req.MountPoint), nil
}

// seedOf is the refresh token a creds write seeds the role's session with; reads,
// the hot path, do not look.
func seedOf(d *framework.FieldData, force bool) (string, bool) {
	if !force {
		return "", false
	}
	v, ok := d.GetOk("refresh_token")
	if !ok {
		return "", false
	}
	return v.(string), true
}

// isUnknownRole reports whether err says that the role read does not exist. Such reads
// are not counted: the name is the caller's, and any name would make a new series.
func isUnknownRole(err error) bool {
	var uerr *userError
	return errors.As(err, &uerr) && uerr.unknownRole
}

func (b *backend) pathCredsDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	rs, err := b.knownRoleState(ctx, req.Storage, name)
	if err != nil {
		return responseError(req, err)
	}
	if err := rs.acquireCtx(ctx); err != nil {
		return nil, err
	}
	defer rs.release()
	role, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return logical.ErrorResponse("role %q does not exist", name), nil
	}
	if err := b.discardSession(ctx, req.Storage, rs, "creds deleted"); err != nil {
		return nil, fmt.Errorf("discarding the tokens of role %q: %w", name, err)
	}
	b.forgetRole(name)
	return nil, nil
}

// credsResponse is the data of a creds read: the access token and its timing, never
// the refresh token. There is no lease: the token's life is the provider's. ttl and
// rotation_period make Vault Agent re-read when a newer token is available, and with
// last_vault_rotation the Vault Secrets Operator re-syncs.
func credsResponse(res *tokenResult, mount string) *logical.Response {
	t := res.tokens
	left := t.ExpiresAt.Sub(res.now)
	ttl := max(int64((left-t.effectiveMinTTL(res.minTTL))/time.Second), 1)
	v := res.creds
	if v == nil {
		v = newCredsView(t)
	}
	data := map[string]any{
		"access_token":        v.accessToken,
		"token_type":          "Bearer",
		"expires_at":          v.expiresAt,
		"expires_in":          max(int64(left/time.Second), 0),
		"ttl":                 ttl,
		"rotation_period":     v.rotationPeriod,
		"last_vault_rotation": v.obtainedAt,
	}
	if v.scope != nil {
		data["scope"] = v.scope
	}
	resp := &logical.Response{Data: data}
	for _, w := range res.warnings {
		resp.AddWarning(withMount(w, mount))
	}
	if res.minTTL > t.lifetime()/2 {
		resp.AddWarning(msgMinTTLCapped("min_ttl", res.minTTL, t.lifetime()))
	}
	return resp
}

// credsView holds the values of a creds answer that are the same on every read of one
// token, converted once: a cached read then allocates only what changes with time.
type credsView struct {
	accessToken, expiresAt, rotationPeriod, obtainedAt, scope any // scope: nil when empty
}

func newCredsView(t *sessionTokens) *credsView {
	v := &credsView{
		accessToken:    t.AccessToken,
		expiresAt:      formatTime(t.ExpiresAt),
		rotationPeriod: int64(t.lifetime() / time.Second),
		obtainedAt:     formatTime(t.ObtainedAt),
	}
	if t.Scope != "" {
		v.scope = t.Scope
	}
	return v
}

const pathCredsHelpSyn = `Get a valid bearer access token for a role.`

const pathCredsHelpDesc = `
Read returns an access token valid for at least the role's min_ttl (the min_ttl query
parameter may ask for more; both are capped at half the token's lifetime, with a
warning): the cached token while it is valid enough, otherwise a new one from the
stored refresh token, otherwise from a new login with the connection's grant_type
(password or client_credentials; a refresh_token connection cannot log in). The response holds
access_token, token_type (Bearer), expires_at, expires_in, scope (if any), ttl
(seconds until a newer token is handed out, at least 1), rotation_period (the token's
full lifetime) and last_vault_rotation (when it was obtained). There is no lease, and
never the refresh token or the password. When the token is served after a failed
renewal, the response carries a warning. A provider failure is answered with HTTP 502
and one message saying what failed and what to do.

Write (vault write -f) gets a new token now: refresh grant, falling back to a login.
Write with refresh_token=- seeds the role's session with a refresh token read from
stdin (never returned or logged) and renews it at once. Delete forgets the stored
tokens (ending the session at the connection's revocation_url when set); the next read
logs in.

Apps need only the read capability on this path.
`
