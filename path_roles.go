package bearer

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const defaultMinTTL = 60 * time.Second

// roleEntry is a role as stored at roles/<name>.
type roleEntry struct {
	Config            string        `json:"config"`
	Scopes            []string      `json:"scopes,omitempty"`
	MinTTL            time.Duration `json:"min_ttl"`
	BackgroundRefresh bool          `json:"background_refresh"`
}

func pathRoles(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "roles/" + framework.GenericNameRegex("name"),
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "role",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeLowerCaseString,
					Description: "Name of the role.",
					Required:    true,
				},
				"config": {
					Type:        framework.TypeLowerCaseString,
					Description: "Name of the connection (config/<name>) the role gets its tokens from. Required.",
				},
				"scopes": {
					Type:        framework.TypeCommaStringSlice,
					Description: "Scopes requested with the password grant, sent as a space-separated scope parameter.",
				},
				"min_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "A returned token is valid for at least this long; a token with less left is renewed first (capped at half the token's lifetime).",
					Default:     int(defaultMinTTL.Seconds()),
				},
				"background_refresh": {
					Type:        framework.TypeBool,
					Description: "Renew tokens before reads need them, and keep idle refresh tokens alive.",
					Default:     true,
				},
			},
			ExistenceCheck:  b.roleExists,
			Operations:      itemOperations(b.pathRoleWrite, b.pathRoleRead, b.pathRoleDelete),
			HelpSynopsis:    pathRolesHelpSyn,
			HelpDescription: pathRolesHelpDesc,
		},
		{
			Pattern: "roles/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "roles",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathRoleList,
				},
			},
			HelpSynopsis:    pathRolesListHelpSyn,
			HelpDescription: pathRolesListHelpDesc,
		},
	}
}

func (b *backend) roleExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	role, err := b.role(ctx, req.Storage, d.Get("name").(string))
	return role != nil, err
}

func (b *backend) pathRoleWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	rs := b.roleState(name)
	if err := rs.acquireCtx(ctx); err != nil {
		return nil, err
	}
	defer rs.release()

	old, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	role := &roleEntry{MinTTL: defaultMinTTL, BackgroundRefresh: true}
	if old != nil {
		copied := *old
		role = &copied
	}
	if v, ok := d.GetOk("config"); ok {
		role.Config = v.(string)
	}
	if v, ok := d.GetOk("scopes"); ok {
		role.Scopes = v.([]string)
	}
	if v, ok := d.GetOk("min_ttl"); ok {
		role.MinTTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("background_refresh"); ok {
		role.BackgroundRefresh = v.(bool)
	}

	if role.Config == "" {
		return logical.ErrorResponse("role %q: config is required: name the connection to use (config/<name>)", name), nil
	}
	if role.MinTTL < 0 {
		return logical.ErrorResponse("role %q: min_ttl must not be negative", name), nil
	}
	_, conn, err := b.connection(ctx, req.Storage, role.Config)
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return logical.ErrorResponse("role %q: connection %q does not exist: write %sconfig/%s first", name, role.Config, req.MountPoint, role.Config), nil
	}

	if err := putJSON(ctx, req.Storage, rolePrefix+name, role); err != nil {
		return nil, err
	}
	// Tokens obtained for another connection or other scopes are not this role's any more.
	if old != nil && (old.Config != role.Config || !slices.Equal(old.Scopes, role.Scopes)) {
		if err := b.discardSession(ctx, req.Storage, rs, "role changed"); err != nil {
			return nil, err
		}
	}
	b.forgetRole(name)
	if w := b.minTTLWarning(ctx, req.Storage, name, role); w != "" {
		resp := &logical.Response{}
		resp.AddWarning(w)
		return resp, nil
	}
	return nil, nil
}

// minTTLWarning warns when a role's min_ttl exceeds what its tokens allow, once their
// lifetime is known: reads then get tokens with half their lifetime left.
func (b *backend) minTTLWarning(ctx context.Context, s logical.Storage, name string, role *roleEntry) string {
	sess, _, err := readSession(ctx, s, name)
	if err != nil || sess == nil || sess.Tokens.AccessToken == "" {
		return ""
	}
	if life := sess.Tokens.lifetime(); role.MinTTL > life/2 {
		return msgMinTTLCapped("min_ttl", role.MinTTL, life)
	}
	return ""
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	role, err := b.role(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if role == nil {
		return nil, nil
	}
	sess, _, err := readSession(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if u := b.roleState(name).unsaved.Load(); u != nil {
		// The newest state is in memory, not yet saved: show it.
		sess = u.sess
	}
	data := map[string]any{
		"config":                   role.Config,
		"scopes":                   nonNilSlice(role.Scopes),
		"min_ttl":                  int64(role.MinTTL.Seconds()),
		"background_refresh":       role.BackgroundRefresh,
		"token_expires_at":         "",
		"token_obtained_at":        "",
		"refresh_token_expires_at": "",
		"last_grant":               "",
		"last_success_at":          "",
		"last_error":               "",
		"last_error_at":            "",
		"consecutive_failures":     0,
		"next_attempt_at":          "",
		"credentials_rejected_at":  "",
		"next_login_at":            "",
	}
	cs, conn, err := b.connection(ctx, req.Storage, role.Config)
	if err != nil {
		return nil, err
	}
	if sess != nil && conn != nil && sess.Account == (sessionAccount{Config: role.Config, AccountVersion: conn.AccountVersion}) {
		t, f := &sess.Tokens, &sess.Failure
		if t.AccessToken != "" {
			data["token_expires_at"] = formatTime(t.ExpiresAt)
			data["token_obtained_at"] = formatTime(t.ObtainedAt)
			data["last_success_at"] = formatTime(t.ObtainedAt)
		}
		if t.RefreshToken != "" {
			data["refresh_token_expires_at"] = formatTime(t.RefreshExpiresAt)
		}
		data["last_grant"] = t.Grant
		data["last_error"] = f.LastError
		data["last_error_at"] = formatTime(f.LastErrorAt)
		data["consecutive_failures"] = f.Failures
		if f.ConnRevision == conn.Revision && f.NextAttemptAt.After(b.now()) {
			data["next_attempt_at"] = formatTime(f.NextAttemptAt)
		}
	}
	if conn != nil {
		account, err := b.accountRecord(ctx, req.Storage, cs)
		if err != nil {
			return nil, err
		}
		if rej := newerRejection(account.Rejection, b.localRejection(cs)); rej.appliesTo(conn) {
			// The connection's rejection holds back every role of it.
			data["credentials_rejected_at"] = formatTime(rej.At)
			data["next_login_at"] = formatTime(rej.NextLoginAt)
			if data["last_error"] == "" {
				data["last_error"] = rej.Cause
				data["last_error_at"] = formatTime(rej.At)
			}
		}
	}
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	rs := b.roleState(name)
	if err := rs.acquireCtx(ctx); err != nil {
		return nil, err
	}
	defer rs.release()

	if err := b.discardSession(ctx, req.Storage, rs, "role deleted"); err != nil {
		return nil, err
	}
	if err := req.Storage.Delete(ctx, tokenPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting tokens of role %q: %w", name, err)
	}
	if err := req.Storage.Delete(ctx, rolePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting role %q: %w", name, err)
	}
	b.forgetRole(name)
	b.bg.schedule(name, time.Time{})
	return nil, nil
}

func (b *backend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(names), nil
}

// role returns a role's definition, from the role's view when loaded.
func (b *backend) role(ctx context.Context, s logical.Storage, name string) (*roleEntry, error) {
	if rs, ok := b.roles.Load(name); ok {
		if v := rs.(*roleState).view.Load(); v != nil {
			return v.role, nil
		}
	}
	role := new(roleEntry)
	found, err := getJSON(ctx, s, rolePrefix+name, role)
	if err != nil || !found {
		return nil, err
	}
	return role, nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func nonNilSlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

const pathRolesHelpSyn = `Manage a role: which connection a consumer's tokens come from, and how fresh they must be.`

const pathRolesHelpDesc = `
A role names the connection (config) whose account it logs in with, the scopes to
request, the minimum remaining validity of a returned token (min_ttl, capped at half
the token's lifetime) and whether tokens are renewed in the background.
Writes are partial updates. Changing config or scopes discards the role's tokens.

Reading a role also returns its state, never a secret: token_expires_at,
token_obtained_at, refresh_token_expires_at (empty if unknown), last_grant
(password, client_credentials or refresh_token), last_success_at, last_error and last_error_at (cleared
by a clean renewal; set after a success that had to work around a problem, such as a
refresh refused by configuration), consecutive_failures, next_attempt_at (while a
failed attempt's retry window holds), and credentials_rejected_at and next_login_at
(while the provider's rejection of the connection's credentials holds back logins of
every role of the connection). Deleting a role deletes its stored tokens.
`

const pathRolesListHelpSyn = `List the roles.`

const pathRolesListHelpDesc = `Lists the names of the configured roles.`
