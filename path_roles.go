package bearer

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/helper/locksutil"
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
	lock := locksutil.LockForKey(b.roleLocks, name)
	lock.Lock()
	defer lock.Unlock()

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
	conn, err := b.connection(ctx, req.Storage, role.Config)
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
		if err := b.discardTokens(ctx, req.Storage, name, "role changed"); err != nil {
			return nil, err
		}
	}
	b.forget(name)
	return nil, nil
}

func (b *backend) pathRoleRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	lock := locksutil.LockForKey(b.roleLocks, name)
	lock.RLock()
	defer lock.RUnlock()

	st, err := b.loadState(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, nil
	}
	role, tok := st.role, st.token
	data := map[string]any{
		"config":                   role.Config,
		"scopes":                   nonNilSlice(role.Scopes),
		"min_ttl":                  int64(role.MinTTL.Seconds()),
		"background_refresh":       role.BackgroundRefresh,
		"token_expires_at":         "",
		"token_obtained_at":        "",
		"refresh_token_expires_at": "",
		"last_grant":               "",
		"last_error":               "",
		"last_error_at":            "",
		"consecutive_failures":     0,
		"credentials_rejected_at":  "",
	}
	if tok != nil {
		if tok.AccessToken != "" {
			data["token_expires_at"] = formatTime(tok.ExpiresAt)
			data["token_obtained_at"] = formatTime(tok.ObtainedAt)
		}
		if tok.RefreshToken != "" {
			data["refresh_token_expires_at"] = formatTime(tok.RefreshExpiresAt)
		}
		data["last_grant"] = tok.LastGrant
		data["last_error"] = tok.LastError
		data["last_error_at"] = formatTime(tok.LastErrorAt)
		data["consecutive_failures"] = tok.ConsecutiveFailures
		conn, err := b.connection(ctx, req.Storage, role.Config)
		if err != nil {
			return nil, err
		}
		if tok.rejectedFor(conn) {
			data["credentials_rejected_at"] = formatTime(tok.CredentialsRejectedAt)
		}
	}
	return &logical.Response{Data: data}, nil
}

func (b *backend) pathRoleDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	lock := locksutil.LockForKey(b.roleLocks, name)
	lock.Lock()
	defer lock.Unlock()

	if err := b.discardTokens(ctx, req.Storage, name, "role deleted"); err != nil {
		return nil, err
	}
	if err := req.Storage.Delete(ctx, tokenPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting tokens of role %q: %w", name, err)
	}
	if err := req.Storage.Delete(ctx, rolePrefix+name); err != nil {
		return nil, fmt.Errorf("deleting role %q: %w", name, err)
	}
	b.forget(name)
	return nil, nil
}

func (b *backend) pathRoleList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	return logical.ListResponse(names), nil
}

// role returns a role's definition, from the cache when present.
func (b *backend) role(ctx context.Context, s logical.Storage, name string) (*roleEntry, error) {
	if v, ok := b.cache.Load(name); ok {
		return v.(*roleCache).role, nil
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
(password or refresh_token), last_error, last_error_at, consecutive_failures and
credentials_rejected_at (set while the provider's rejection of the password blocks
new logins). Deleting a role deletes its stored tokens.
`

const pathRolesListHelpSyn = `List the roles.`

const pathRolesListHelpDesc = `Lists the names of the configured roles.`
