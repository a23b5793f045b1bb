package bearer

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

const (
	clientAuthBody  = "body"
	clientAuthBasic = "basic"
	clientAuthJWT   = "private_key_jwt"

	grantClientCredentials = "client_credentials"

	providerGeneric  = "generic"
	providerMindbaz  = "mindbaz"
	providerKeycloak = "keycloak"
	providerApiax    = "apiax"

	defaultRequestTimeout        = 10 * time.Second
	defaultMaxConcurrentRequests = 4
	// maxMaxConcurrentRequests bounds max_concurrent_requests.
	maxMaxConcurrentRequests = 64
)

// connEntry is a connection as stored at config/<name>.
type connEntry struct {
	Provider        string            `json:"provider"`
	Issuer          string            `json:"issuer,omitempty"`
	TokenURL        string            `json:"token_url"`
	RevocationURL   string            `json:"revocation_url,omitempty"`
	ClientID        string            `json:"client_id,omitempty"`
	ClientSecret    string            `json:"client_secret,omitempty"`
	ClientAuth      string            `json:"client_auth"`
	Username        string            `json:"username"`
	Password        string            `json:"password"`
	PasswordParams  map[string]string `json:"password_params,omitempty"`
	RefreshParams   map[string]string `json:"refresh_params,omitempty"`
	CACert          string            `json:"ca_cert,omitempty"`
	RequestTimeout  time.Duration     `json:"request_timeout"`
	RefreshTokenTTL time.Duration     `json:"refresh_token_ttl,omitempty"`
	// MaxConcurrentRequests bounds the token requests in flight to the provider.
	MaxConcurrentRequests int `json:"max_concurrent_requests,omitempty"`
	// GrantType is how a session starts: password (the default), client_credentials,
	// or refresh_token (no login: a session is seeded through creds/<role>).
	GrantType string `json:"grant_type,omitempty"`
	// ClientPrivateKey (PEM) signs the client assertions of client_auth=private_key_jwt;
	// ClientPrivateKeyID is their kid, ClientAssertionAudience their aud (default: the
	// token URL).
	ClientPrivateKey        string `json:"client_private_key,omitempty"`
	ClientPrivateKeyID      string `json:"client_private_key_id,omitempty"`
	ClientAssertionAudience string `json:"client_assertion_audience,omitempty"`
	// OfflineAccess asks a Keycloak realm for offline sessions (scope offline_access).
	OfflineAccess bool `json:"offline_access,omitempty"`

	// CredentialsVersion changes whenever the password or the client (id, secret or
	// authentication) does, which lifts a "credentials rejected" state recorded against
	// an older version.
	CredentialsVersion uint64 `json:"credentials_version"`
	// AccountVersion changes whenever the token URL, client or username does: tokens
	// obtained for an older version belong to another account and are discarded.
	AccountVersion uint64 `json:"account_version"`
	// Revision counts the writes of the connection: a write lifts the retry windows of
	// its roles.
	Revision uint64 `json:"revision"`

	// name is the connection's name (not stored).
	name string
}

// preset holds the defaults a provider name fills in.
type preset struct {
	issuer          string
	tokenURL        string
	clientID        string
	refreshParams   map[string]string
	refreshTokenTTL time.Duration
	keycloak        bool // token and revocation URLs derive from the issuer
}

var presets = map[string]preset{
	providerGeneric: {},
	providerMindbaz: {
		tokenURL:        "https://sso.mindbaz.com/oauth2/token",
		clientID:        "100",
		refreshTokenTTL: 7 * 24 * time.Hour,
	},
	providerKeycloak: {keycloak: true},
	providerApiax: {
		keycloak: true,
		issuer:   "https://auth.apiax.io/auth/realms/apiax",
		clientID: "integration-api",
		refreshParams: map[string]string{
			"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
		},
		refreshTokenTTL: 14 * 24 * time.Hour,
	},
}

func pathConfig(b *backend) []*framework.Path {
	return []*framework.Path{
		{
			Pattern: "config/" + framework.GenericNameRegex("name"),
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "connection",
			},
			Fields: map[string]*framework.FieldSchema{
				"name": {
					Type:        framework.TypeLowerCaseString,
					Description: "Name of the connection.",
					Required:    true,
				},
				"provider": {
					Type:          framework.TypeString,
					Description:   "Preset that fills defaults: generic, mindbaz, keycloak (needs issuer) or apiax.",
					Default:       providerGeneric,
					AllowedValues: []any{providerGeneric, providerMindbaz, providerKeycloak, providerApiax},
				},
				"issuer": {
					Type:        framework.TypeString,
					Description: "Keycloak realm URL (https://host/realms/<realm>), for provider=keycloak: token_url and revocation_url derive from it.",
				},
				"token_url": {
					Type:        framework.TypeString,
					Description: "Token endpoint. Must be https://; http:// is allowed only for loopback hosts. Defaults from the preset.",
				},
				"revocation_url": {
					Type:        framework.TypeString,
					Description: "Optional RFC 7009 revocation endpoint, used to end a session that is discarded.",
				},
				"client_id": {
					Type:        framework.TypeString,
					Description: "OAuth2 client ID. Defaults from the preset.",
				},
				"client_secret": {
					Type:         framework.TypeString,
					Description:  "Optional OAuth2 client secret. Never returned.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
				"client_auth": {
					Type:          framework.TypeString,
					Description:   "How the client authenticates: client_id and client_secret in the form body (body), HTTP Basic (basic), or a client assertion signed with client_private_key (private_key_jwt, RFC 7523).",
					Default:       clientAuthBody,
					AllowedValues: []any{clientAuthBody, clientAuthBasic, clientAuthJWT},
				},
				"grant_type": {
					Type:          framework.TypeString,
					Description:   "How a session starts: password (username and password), client_credentials (the client alone), or refresh_token (no login: seed each role's session with vault write <mount>/creds/<role> refresh_token=-).",
					Default:       grantPassword,
					AllowedValues: []any{grantPassword, grantClientCredentials, grantRefresh},
				},
				"client_private_key": {
					Type:         framework.TypeString,
					Description:  "PEM private key (RSA of 2048 bits or more for RS256, or P-256 EC for ES256) that signs the client assertions of client_auth=private_key_jwt. Never returned.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
				"client_private_key_id": {
					Type:        framework.TypeString,
					Description: "Key ID (kid) put in the client assertions' header, as registered at the provider.",
				},
				"client_assertion_audience": {
					Type:        framework.TypeString,
					Description: "Audience (aud) of the client assertions; default: the token URL. Some providers want their issuer URL.",
				},
				"offline_access": {
					Type:        framework.TypeBool,
					Description: "Ask for an offline session (scope offline_access; Keycloak): its refresh token survives the realm's SSO session limits and is kept alive by the background at least daily.",
				},
				"username": {
					Type:        framework.TypeString,
					Description: "Account username for the password grant. Required with grant_type=password.",
				},
				"password": {
					Type:         framework.TypeString,
					Description:  "Account password for the password grant. Required with grant_type=password; never returned and never logged.",
					DisplayAttrs: &framework.DisplayAttributes{Sensitive: true},
				},
				"password_params": {
					Type:        framework.TypeKVPairs,
					Description: "Extra form fields sent with the password grant (replaces the preset's).",
				},
				"refresh_params": {
					Type:        framework.TypeKVPairs,
					Description: "Extra form fields sent with the refresh grant (replaces the preset's).",
				},
				"ca_cert": {
					Type:        framework.TypeString,
					Description: "PEM CA certificates: if set, the only roots trusted for this connection's TLS.",
				},
				"request_timeout": {
					Type:        framework.TypeDurationSecond,
					Description: "Time allowed for each token request to the provider, retries included; one renewal attempt (a refresh, the login that may follow it, the wait for another role's login) gets no more in all, so readers are answered within it.",
					Default:     int(defaultRequestTimeout.Seconds()),
				},
				"refresh_token_ttl": {
					Type:        framework.TypeDurationSecond,
					Description: "Refresh token lifetime to assume when the provider does not say (mindbaz preset: 168h). 0: unknown.",
				},
				"max_concurrent_requests": {
					Type:        framework.TypeInt,
					Description: "Token requests in flight to this provider at once, reads and background renewals together.",
					Default:     defaultMaxConcurrentRequests,
				},
				"verify": {
					Type:        framework.TypeBool,
					Description: "On write, perform one password login and refuse to save the connection if it fails; skipped while the provider's rejection of these very credentials holds back logins. Not stored.",
					Default:     true,
				},
			},
			ExistenceCheck:  b.connectionExists,
			Operations:      itemOperations(b.pathConfigWrite, b.pathConfigRead, b.pathConfigDelete),
			HelpSynopsis:    pathConfigHelpSyn,
			HelpDescription: pathConfigHelpDesc,
		},
		{
			Pattern: "config/?$",
			DisplayAttrs: &framework.DisplayAttributes{
				OperationPrefix: operationPrefix,
				OperationSuffix: "connections",
			},
			Operations: map[logical.Operation]framework.OperationHandler{
				logical.ListOperation: &framework.PathOperation{
					Callback: b.pathConfigList,
				},
			},
			HelpSynopsis:    pathConfigListHelpSyn,
			HelpDescription: pathConfigListHelpDesc,
		},
	}
}

func (b *backend) connectionExists(ctx context.Context, req *logical.Request, d *framework.FieldData) (bool, error) {
	_, entry, err := b.connection(ctx, req.Storage, d.Get("name").(string))
	return entry != nil, err
}

func (b *backend) pathConfigWrite(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	cs := b.connState(name)
	// Writes of one connection are serialised, so that two partial updates cannot
	// undo each other (a password rotation racing a Terraform apply).
	cs.writeMu.Lock()
	defer cs.writeMu.Unlock()
	_, old, err := b.connection(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	entry, warnings, err := mergeConnection(old, d)
	if err != nil {
		return logical.ErrorResponse("connection %q: %s", name, err), nil
	}
	entry.name = name
	account := &accountEntry{} // a new connection: nothing recorded yet
	if old != nil {
		if account, err = b.accountRecord(ctx, req.Storage, cs); err != nil {
			return nil, err
		}
	}
	rej := newerRejection(account.Rejection, nil)
	if local, _ := b.rejectionOf(ctx, req.Storage, cs); old != nil {
		rej = newerRejection(rej, local)
	}

	resp := &logical.Response{}
	for _, w := range warnings {
		resp.AddWarning(w)
	}
	var verified *tokenResponse
	switch {
	case !d.Get("verify").(bool):
	case rej.holdsBack(entry, b.now()):
		// The provider rejected these very credentials: logging in again would only
		// bring the account closer to a lockout.
		resp.AddWarning(fmt.Sprintf("verification login skipped: the provider rejected these credentials at %s and no login is tried before %s; update %s to lift that",
			formatTime(rej.At), formatTime(rej.NextLoginAt), credentialFields(rej)))
	case entry.grantType() == grantRefresh:
		// No login to verify with: sessions are seeded through creds/<role>.
	default:
		verified, err = b.verifyLogin(ctx, cs, entry)
		if err != nil {
			b.verifyFailed(ctx, req.Storage, cs, old, entry, err)
			return logical.ErrorResponse("connection %q not saved: verification login as %s failed: %s; check the credentials and endpoint, or write with verify=false to save anyway",
				name, loginIdentity(entry), newRedactor(entry.Password, entry.ClientSecret).redact(err.Error())), nil
		}
	}

	if err := putJSON(ctx, req.Storage, configPrefix+name, entry); err != nil {
		return nil, err
	}
	if old == nil {
		// Written now, so that no later load looks for rejections of v0.1.0 sessions.
		if err := b.updateAccount(ctx, req.Storage, cs, func(*accountEntry) bool { return true }); err != nil {
			b.Logger().Warn("could not write the connection's state", "connection", name, "error", err)
		}
	}
	accountChanged := old != nil && old.AccountVersion != entry.AccountVersion
	cs.mu.Lock()
	cs.epoch++
	cs.setEntryLocked(entry)
	cs.mu.Unlock()
	if accountChanged {
		// Tokens of the old account are of no use: no read serves them from now on,
		// and their sessions end at the old provider.
		b.forgetRolesOf(name)
		b.endSessionsOf(b.storage, old, account.Spare)
	}
	if verified != nil {
		// The login just proved these credentials.
		cs.gate.prove(entry.CredentialsVersion)
		b.liftRejection(ctx, req.Storage, cs, entry.CredentialsVersion)
		b.keepSpare(ctx, req.Storage, cs, entry, verified, old == nil || accountChanged)
	}
	b.Logger().Info("connection saved", "connection", name, "provider", entry.Provider, "grant_type", entry.grantType(), "as", loginIdentity(entry))
	if len(resp.Warnings) == 0 {
		return nil, nil
	}
	return resp, nil
}

// trimLineEnd drops one trailing "\n" or "\r\n".
func trimLineEnd(s string) (string, bool) {
	if t, ok := strings.CutSuffix(s, "\r\n"); ok {
		return t, true
	}
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		return t, true
	}
	return s, false
}

// credentialFields names what must change to lift a rejection.
func credentialFields(rej *rejection) string {
	if rej.Client {
		return "client_id, client_secret, client_auth or client_private_key"
	}
	return "password or client_secret"
}

// verifyFailed records a verify login the provider rejected when the write kept the
// stored credentials: they are the connection's, and the account counts the failure.
func (b *backend) verifyFailed(ctx context.Context, s logical.Storage, cs *connState, old, entry *connEntry, err error) {
	var ge *grantError
	if old == nil || old.CredentialsVersion != entry.CredentialsVersion || !errors.As(err, &ge) || !ge.credentialsRejected() {
		return
	}
	b.recordRejection(ctx, s, cs, old, ge, newRedactor(entry.Password, entry.ClientSecret).redact(ge.Error()))
}

// keepSpare keeps the verify login's session for the first role of the connection that
// needs a login (a new connection, or one whose account changed: every role will), or
// ends it at the revocation endpoint. A spare it replaces is ended.
func (b *backend) keepSpare(ctx context.Context, s logical.Storage, cs *connState, entry *connEntry, tok *tokenResponse, wanted bool) {
	var replaced *spareSession
	var kept bool
	err := b.updateAccount(ctx, s, cs, func(a *accountEntry) bool {
		replaced = a.Spare
		a.Spare = nil
		if wanted {
			a.Spare = &spareSession{AccountVersion: entry.AccountVersion, Tokens: tokensFrom(tok, entry.grantType(), entry, b.now())}
			kept = true
		}
		return replaced != nil || kept
	})
	if err != nil {
		kept = false
		b.Logger().Warn("could not keep the verification session", "connection", cs.name, "error", err)
	}
	if !kept {
		b.revokeWith(ctx, cs, entry, tok.RefreshToken, "")
	}
	if replaced != nil && replaced.AccountVersion == entry.AccountVersion {
		b.revokeWith(ctx, cs, entry, replaced.Tokens.RefreshToken, "")
	}
}

// endSessionsOf ends, in the background, the sessions of the roles of a connection's
// old account at that account's revocation endpoint (best effort): after an account
// change the engine forgets them, the provider should too.
func (b *backend) endSessionsOf(s logical.Storage, old *connEntry, spare *spareSession) {
	if old.RevocationURL == "" {
		return
	}
	cs := &connState{name: old.name, slots: make(chan struct{}, max(old.MaxConcurrentRequests, 1))}
	client, err := b.newTokenClient(old)
	if err != nil {
		return
	}
	client.slots = cs.slots
	b.bg.goTracked(func(ctx context.Context) {
		defer client.http.CloseIdleConnections()
		if spare != nil && spare.AccountVersion == old.AccountVersion {
			_ = client.revoke(ctx, spare.Tokens.RefreshToken)
		}
		names, err := s.List(ctx, rolePrefix)
		if err != nil {
			return
		}
		for _, name := range names {
			sess, _, err := readSession(ctx, s, name)
			if err != nil || sess == nil || sess.Account != (sessionAccount{Config: old.name, AccountVersion: old.AccountVersion}) {
				continue
			}
			if err := client.revoke(ctx, sess.Tokens.RefreshToken); err != nil {
				b.Logger().Info("could not revoke the session of an old account", "role", name, "connection", old.name,
					"error", newRedactor(sess.Tokens.RefreshToken, old.Password, old.ClientSecret).redact(err.Error()))
			}
		}
	})
}

// mergeConnection applies a partial update to old (nil on create) and validates the
// result; the warnings say what it changed of what was written.
func mergeConnection(old *connEntry, d *framework.FieldData) (*connEntry, []string, error) {
	var warnings []string
	entry := &connEntry{
		Provider: providerGeneric, GrantType: grantPassword, ClientAuth: clientAuthBody,
		RequestTimeout: defaultRequestTimeout, MaxConcurrentRequests: defaultMaxConcurrentRequests,
	}
	if old != nil {
		copied := *old
		entry = &copied
	}

	providerChanged := old == nil
	if v, ok := d.GetOk("provider"); ok && v.(string) != entry.Provider {
		entry.Provider = v.(string)
		providerChanged = true
	}
	p, ok := presets[entry.Provider]
	if !ok {
		return nil, nil, fmt.Errorf("unknown provider %q: use generic, mindbaz, keycloak or apiax", entry.Provider)
	}
	if providerChanged {
		// Fields the preset fills take the preset's values; the request's own fields
		// are applied after this.
		entry.Issuer = p.issuer
		entry.TokenURL, entry.RevocationURL = p.tokenURL, ""
		entry.ClientID = p.clientID
		entry.PasswordParams = nil
		entry.RefreshParams = maps.Clone(p.refreshParams)
		entry.RefreshTokenTTL = p.refreshTokenTTL
	}
	issuerChanged := false
	if v, ok := d.GetOk("issuer"); ok && strings.TrimSpace(v.(string)) != entry.Issuer {
		entry.Issuer = strings.TrimSpace(v.(string))
		issuerChanged = true
	}
	if (providerChanged || issuerChanged) && p.keycloak && entry.Issuer != "" {
		base := strings.TrimRight(entry.Issuer, "/")
		entry.TokenURL = base + "/protocol/openid-connect/token"
		entry.RevocationURL = base + "/protocol/openid-connect/revoke"
	}

	strField := func(field string, dst *string) {
		if v, ok := d.GetOk(field); ok {
			*dst = strings.TrimSpace(v.(string))
		}
	}
	strField("token_url", &entry.TokenURL)
	strField("revocation_url", &entry.RevocationURL)
	strField("client_id", &entry.ClientID)
	strField("client_auth", &entry.ClientAuth)
	strField("username", &entry.Username)
	strField("ca_cert", &entry.CACert)
	strField("grant_type", &entry.GrantType)
	strField("client_private_key_id", &entry.ClientPrivateKeyID)
	strField("client_assertion_audience", &entry.ClientAssertionAudience)
	if v, ok := d.GetOk("client_private_key"); ok {
		entry.ClientPrivateKey = strings.TrimSpace(v.(string))
	}
	if v, ok := d.GetOk("offline_access"); ok {
		entry.OfflineAccess = v.(bool)
	}
	// A secret written with field=- from echo or a typed line ends in a newline that is
	// not part of it.
	secretField := func(field string, dst *string) {
		if v, ok := d.GetOk(field); ok {
			s, trimmed := trimLineEnd(v.(string))
			*dst = s
			if trimmed {
				warnings = append(warnings, fmt.Sprintf("%s ended with a line break, which was dropped (a value read from stdin with %s=- often does); write it with printf '%%s' if the line break is part of it", field, field))
			}
		}
	}
	secretField("password", &entry.Password)
	secretField("client_secret", &entry.ClientSecret)
	if v, ok := d.GetOk("password_params"); ok {
		entry.PasswordParams = v.(map[string]string)
	}
	if v, ok := d.GetOk("refresh_params"); ok {
		entry.RefreshParams = v.(map[string]string)
	}
	if v, ok := d.GetOk("request_timeout"); ok {
		entry.RequestTimeout = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("refresh_token_ttl"); ok {
		entry.RefreshTokenTTL = time.Duration(v.(int)) * time.Second
	}
	if v, ok := d.GetOk("max_concurrent_requests"); ok {
		entry.MaxConcurrentRequests = v.(int)
	}

	if err := validateConnection(entry); err != nil {
		return nil, nil, err
	}
	if old == nil {
		// Versions of a new connection start where no state left by an older one of
		// the same name (a rejection, a session) can match them.
		entry.AccountVersion = uint64(time.Now().UnixNano())
		entry.CredentialsVersion = entry.AccountVersion
	}
	if old == nil || old.Password != entry.Password || old.ClientSecret != entry.ClientSecret || old.ClientAuth != entry.ClientAuth ||
		old.ClientPrivateKey != entry.ClientPrivateKey || old.ClientPrivateKeyID != entry.ClientPrivateKeyID ||
		old.ClientAssertionAudience != entry.ClientAssertionAudience {
		entry.CredentialsVersion++
	}
	if old == nil || old.TokenURL != entry.TokenURL || old.ClientID != entry.ClientID || old.Username != entry.Username || old.grantType() != entry.grantType() {
		entry.AccountVersion++
		entry.CredentialsVersion++
	}
	entry.Revision++
	return entry, warnings, nil
}

func validateConnection(entry *connEntry) error {
	p := presets[entry.Provider]
	switch {
	case p.keycloak && entry.Issuer == "" && entry.TokenURL == "":
		return errors.New("provider=keycloak needs issuer (the realm URL, e.g. https://sso.example.com/realms/myrealm)")
	case entry.TokenURL == "":
		return errors.New("token_url is required for provider=generic")
	case entry.grantType() != grantPassword && entry.grantType() != grantClientCredentials && entry.grantType() != grantRefresh:
		return fmt.Errorf("grant_type must be password, client_credentials or refresh_token, not %q", entry.GrantType)
	case entry.grantType() == grantPassword && entry.Username == "":
		return errors.New("username is required with grant_type=password")
	case entry.grantType() == grantPassword && entry.Password == "":
		return errors.New("password is required with grant_type=password")
	case entry.grantType() == grantClientCredentials && entry.ClientID == "":
		return errors.New("grant_type=client_credentials needs client_id")
	case entry.grantType() == grantClientCredentials && entry.ClientSecret == "" && entry.ClientAuth != clientAuthJWT:
		return errors.New("grant_type=client_credentials needs the client to authenticate: client_secret, or client_auth=private_key_jwt with client_private_key")
	case entry.ClientAuth != clientAuthBody && entry.ClientAuth != clientAuthBasic && entry.ClientAuth != clientAuthJWT:
		return fmt.Errorf("client_auth must be body, basic or private_key_jwt, not %q", entry.ClientAuth)
	case entry.ClientAuth == clientAuthBasic && entry.ClientID == "":
		return errors.New("client_auth=basic needs client_id")
	case entry.ClientAuth == clientAuthJWT && entry.ClientID == "":
		return errors.New("client_auth=private_key_jwt needs client_id")
	case entry.ClientAuth == clientAuthJWT && entry.ClientPrivateKey == "":
		return errors.New("client_auth=private_key_jwt needs client_private_key (PEM)")
	case entry.RequestTimeout <= 0:
		return errors.New("request_timeout must be positive")
	case entry.RefreshTokenTTL < 0:
		return errors.New("refresh_token_ttl must not be negative")
	case entry.MaxConcurrentRequests < 1 || entry.MaxConcurrentRequests > maxMaxConcurrentRequests:
		return fmt.Errorf("max_concurrent_requests must be between 1 and %d", maxMaxConcurrentRequests)
	}
	if entry.Issuer != "" {
		if err := checkEndpoint("issuer", entry.Issuer); err != nil {
			return err
		}
	}
	if err := checkEndpoint("token_url", entry.TokenURL); err != nil {
		return err
	}
	if entry.RevocationURL != "" {
		if err := checkEndpoint("revocation_url", entry.RevocationURL); err != nil {
			return err
		}
	}
	if entry.CACert != "" {
		if err := checkPEM(entry.CACert); err != nil {
			return err
		}
	}
	if entry.ClientPrivateKey != "" {
		if _, _, err := parsePrivateKey(entry.ClientPrivateKey); err != nil {
			return err
		}
	}
	if entry.ClientAssertionAudience != "" {
		if _, err := url.Parse(entry.ClientAssertionAudience); err != nil {
			return errors.New("client_assertion_audience is not a URL")
		}
	}
	return nil
}

// grantType is the connection's grant_type; password for entries of v0.1.0.
func (c *connEntry) grantType() string {
	if c == nil || c.GrantType == "" {
		return grantPassword
	}
	return c.GrantType
}

func checkPEM(s string) error {
	rest := []byte(s)
	found := false
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("ca_cert holds an unreadable certificate: %s", err)
		}
		found = true
	}
	if !found {
		return errors.New("ca_cert holds no PEM certificate")
	}
	return nil
}

// verifyLogin performs one password login with a candidate connection, within the
// connection's request slots, and returns its tokens.
func (b *backend) verifyLogin(ctx context.Context, cs *connState, entry *connEntry) (*tokenResponse, error) {
	c, err := b.newTokenClient(entry)
	if err != nil {
		return nil, err
	}
	defer c.http.CloseIdleConnections()
	c.slots = b.requestSlots(cs, nil)
	c.observe = b.metrics.observer(cs.name, entry)
	return c.login(ctx, nil, maxAttemptRequests, nil)
}

// pathConfigRead returns the connection without its secrets: password and client_secret
// are never returned, only whether they are set. The connection's state comes with it.
func (b *backend) pathConfigRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	cs, entry, err := b.connection(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if entry == nil {
		return nil, nil
	}
	account, err := b.accountRecord(ctx, req.Storage, cs)
	if err != nil {
		return nil, err
	}
	data := map[string]any{
		"provider":                  entry.Provider,
		"issuer":                    entry.Issuer,
		"token_url":                 entry.TokenURL,
		"revocation_url":            entry.RevocationURL,
		"client_id":                 entry.ClientID,
		"client_auth":               entry.ClientAuth,
		"client_secret_set":         entry.ClientSecret != "",
		"username":                  entry.Username,
		"password_set":              entry.Password != "",
		"password_params":           nonNilMap(entry.PasswordParams),
		"refresh_params":            nonNilMap(entry.RefreshParams),
		"ca_cert":                   entry.CACert,
		"request_timeout":           int64(entry.RequestTimeout.Seconds()),
		"refresh_token_ttl":         int64(entry.RefreshTokenTTL.Seconds()),
		"max_concurrent_requests":   entry.MaxConcurrentRequests,
		"grant_type":                entry.grantType(),
		"client_private_key_set":    entry.ClientPrivateKey != "",
		"client_private_key_id":     entry.ClientPrivateKeyID,
		"client_assertion_audience": entry.ClientAssertionAudience,
		"offline_access":            entry.OfflineAccess,
		"credentials_rejected_at":   "",
		"next_login_at":             "",
		"last_error":                "",
	}
	if rej := newerRejection(account.Rejection, b.localRejection(cs)); rej.appliesTo(entry) {
		data["credentials_rejected_at"] = formatTime(rej.At)
		data["next_login_at"] = formatTime(rej.NextLoginAt)
		data["last_error"] = rej.Cause
	}
	return &logical.Response{Data: data}, nil
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func (b *backend) pathConfigDelete(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	name := d.Get("name").(string)
	cs := b.connState(name)
	cs.writeMu.Lock()
	defer cs.writeMu.Unlock()
	users, err := b.rolesUsing(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if len(users) > 0 {
		return logical.ErrorResponse("connection %q is used by roles %s: delete them or point them to another connection first", name, strings.Join(users, ", ")), nil
	}
	_, entry, err := b.connection(ctx, req.Storage, name)
	if err != nil {
		return nil, err
	}
	if entry != nil {
		if account, err := b.accountRecord(ctx, req.Storage, cs); err == nil && account.Spare != nil && account.Spare.AccountVersion == entry.AccountVersion {
			b.revokeWith(ctx, cs, entry, account.Spare.Tokens.RefreshToken, "")
		}
	}
	if err := req.Storage.Delete(ctx, configPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting connection %q: %w", name, err)
	}
	if err := req.Storage.Delete(ctx, accountPrefix+name); err != nil {
		return nil, fmt.Errorf("deleting the state of connection %q: %w", name, err)
	}
	b.forgetConnection(name)
	b.invalidate(ctx, accountPrefix+name)
	return nil, nil
}

func (b *backend) pathConfigList(ctx context.Context, req *logical.Request, _ *framework.FieldData) (*logical.Response, error) {
	names, err := req.Storage.List(ctx, configPrefix)
	if err != nil {
		return nil, fmt.Errorf("listing connections: %w", err)
	}
	return logical.ListResponse(names), nil
}

// connection returns a connection's state and its entry, loading the entry from
// storage on a miss; the entry is nil when the connection does not exist.
func (b *backend) connection(ctx context.Context, s logical.Storage, name string) (*connState, *connEntry, error) {
	cs := b.connState(name)
	cs.mu.Lock()
	entry, epoch := cs.entry, cs.epoch
	cs.mu.Unlock()
	if entry != nil {
		return cs, entry, nil
	}
	entry = new(connEntry)
	found, err := getJSON(ctx, s, configPrefix+name, entry)
	if err != nil || !found {
		return cs, nil, err
	}
	entry.name = name
	if entry.MaxConcurrentRequests == 0 {
		entry.MaxConcurrentRequests = defaultMaxConcurrentRequests // written by v0.1.0
	}
	cs.installEntry(entry, epoch)
	return cs, entry, nil
}

// requestSlots returns the connection's request slots, sized for entry; with a nil
// entry (a candidate not saved yet) the current ones, sized for the stored entry.
func (b *backend) requestSlots(cs *connState, entry *connEntry) chan struct{} {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if entry == nil {
		if entry = cs.entry; entry == nil {
			entry = &connEntry{MaxConcurrentRequests: defaultMaxConcurrentRequests}
		}
	}
	return cs.slotsLocked(entry)
}

// rolesUsing lists the roles that use a connection, sorted.
func (b *backend) rolesUsing(ctx context.Context, s logical.Storage, conn string) ([]string, error) {
	names, err := s.List(ctx, rolePrefix)
	if err != nil {
		return nil, fmt.Errorf("listing roles: %w", err)
	}
	var users []string
	for _, name := range names {
		role, err := b.role(ctx, s, name)
		if err != nil {
			return nil, err
		}
		if role != nil && role.Config == conn {
			users = append(users, name)
		}
	}
	sort.Strings(users)
	return users, nil
}

const pathConfigHelpSyn = `Manage a connection: a provider's token endpoint and the account to log in with.`

const pathConfigHelpDesc = `
A connection holds what the engine needs to obtain tokens: the token endpoint
(directly, or from a preset: mindbaz, keycloak with issuer, apiax), the OAuth2 client
(client_id, and client_secret or client_private_key with client_auth=private_key_jwt)
and how sessions start (grant_type): with the account's username and password
(password, the default), with the client alone (client_credentials), or not at all
(refresh_token: each role's session is seeded with vault write <mount>/creds/<role>
refresh_token=-). offline_access asks a Keycloak realm for offline sessions.

Writes are partial updates: a field left out keeps its stored value. Changing
provider resets the preset-derived fields (issuer, token_url, revocation_url,
client_id, password_params, refresh_params, refresh_token_ttl) that the write does not
set; with a Keycloak preset, changing issuer derives token_url and revocation_url
again. A password or client secret loses one trailing line break (with a warning).

By default a write performs one login (verify=true) and is refused if it fails; the
session of that login serves the first role that needs one. While the provider's
rejection of the stored credentials holds back logins, a write that keeps those
credentials skips the login and says so in a warning.

Reads never return password, client_secret or client_private_key: password_set,
client_secret_set and client_private_key_set say whether they are set. Reads also show
the connection's state: credentials_rejected_at, next_login_at and last_error while the
provider's rejection of its credentials holds back logins of all its roles. Changing
the password or the client settings lifts that state and keeps valid tokens; changing
token_url, client_id, username or grant_type discards the roles' tokens (their
sessions end at the old revocation_url). A connection still used by roles cannot be
deleted.
`

const pathConfigListHelpSyn = `List the connections.`

const pathConfigListHelpDesc = `Lists the names of the configured connections.`
