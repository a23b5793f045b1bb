// Package provider is a small, real OAuth2 authorization server for the
// end-to-end tests, built on github.com/ory/fosite with an in-memory store.
//
// It behaves like the providers the plugin targets (Mindbaz SSO, Keycloak):
//
//   - POST /oauth2/token accepts grant_type=password (resource owner password
//     credentials) and grant_type=refresh_token;
//   - every refresh rotates the refresh token: the presented one dies, and
//     presenting a used refresh token again is treated as theft: fosite
//     revokes the whole token family and answers invalid_grant; an access
//     token stays valid until it expires, as the JWTs of Keycloak and
//     Mindbaz do, unless its family is revoked;
//   - the main client is public (client_id in the form body, no secret), an
//     optional confidential client authenticates with client_secret in the
//     body or with HTTP Basic;
//   - an optional client authenticates with private_key_jwt (RFC 7523: a
//     client assertion signed with its private key, each jti accepted once,
//     the audience the token endpoint URL) and may use grant_type=
//     client_credentials (which issues no refresh token) and refresh_token;
//   - POST /oauth2/introspect (RFC 7662) and POST /oauth2/revoke (RFC 7009).
//
// Every request is counted by grant type and outcome (see Counts), and the
// raw form bodies and issued tokens are recorded, so tests can assert exact
// provider traffic and search logs for leaked secrets. Every refresh token
// presented is remembered (see PresentedTwice), and refresh grants can be held
// unanswered on demand (see HoldRefreshes), to crash a client while its refresh
// is in flight. A test can start a session of its own (see SeedSession) and end
// one (see Revoke).
package provider

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v3"
	"github.com/ory/fosite"
	"github.com/ory/fosite/compose"
	"github.com/ory/fosite/storage"
)

// Endpoint paths, relative to URL().
const (
	TokenPath      = "/oauth2/token"
	IntrospectPath = "/oauth2/introspect"
	RevokePath     = "/oauth2/revoke"
)

// introspectorID is the confidential client the Introspect helper uses; it
// may only introspect (no grant types).
const introspectorID = "e2e-introspector"

// Config configures a Provider. Zero values get the defaults in brackets.
type Config struct {
	// Addr is the listen address [127.0.0.1:0].
	Addr string
	// ClientID is the public client: client_id in the form, no secret [demo].
	ClientID string
	// ConfidentialClientID and ConfidentialClientSecret, when both set, add
	// a confidential client accepted with client_secret in the form body or
	// with HTTP Basic authentication.
	ConfidentialClientID     string
	ConfidentialClientSecret string
	// JWTClients are confidential clients that authenticate with
	// private_key_jwt (RFC 7523).
	JWTClients []JWTClient
	// Username and Password are the only resource owner [demo, demo-password].
	Username string
	Password string
	// Scopes the clients may request; a password grant gets what it asks for
	// [read write offline].
	Scopes []string
	// AccessTokenTTL and RefreshTokenTTL are the token lifespans [20m, 168h].
	// A negative RefreshTokenTTL means refresh tokens never expire.
	AccessTokenTTL  time.Duration
	RefreshTokenTTL time.Duration
	// Logf, when set, receives one line per request: endpoint, grant type,
	// client and outcome. It never receives a password, secret or token.
	Logf func(format string, args ...any)
}

// JWTClient is a confidential client that authenticates with
// private_key_jwt (RFC 7523): client_id in the form, and a client assertion
// signed by the private half of Key, with the token endpoint URL as its
// audience and a jti never used before. It may use the client_credentials
// and refresh_token grants.
type JWTClient struct {
	ID string
	// Key is an *rsa.PublicKey (the client signs with RS256) or a P-256
	// *ecdsa.PublicKey (ES256), registered under key ID KeyID (none if empty).
	Key   crypto.PublicKey
	KeyID string
}

// Counts is a snapshot of the requests a Provider has answered.
type Counts struct {
	PasswordOK          int // password grants that issued tokens
	PasswordFailed      int // password grants refused (any error)
	RefreshOK           int // refresh grants that issued tokens
	RefreshInvalidGrant int // refresh grants answered invalid_grant (reuse, unknown, expired)
	RefreshFailed       int // refresh grants refused with another error
	// client_credentials grants that issued a token, and that were refused
	// (any error, a rejected client authentication included)
	ClientCredentialsOK     int
	ClientCredentialsFailed int
	OtherGrant              int // token requests with another or no grant_type
	// SeedSessions are the password grants of SeedSession, the test's own
	// (any outcome): never in PasswordOK or PasswordFailed.
	SeedSessions   int
	Introspections int // introspection requests (any outcome)
	Revocations    int // revocation requests (any outcome)
}

// TokenCalls is the number of token endpoint requests of any kind, the
// test's own SeedSession logins included.
func (c Counts) TokenCalls() int {
	return c.PasswordOK + c.PasswordFailed + c.RefreshOK + c.RefreshInvalidGrant + c.RefreshFailed +
		c.ClientCredentialsOK + c.ClientCredentialsFailed + c.OtherGrant + c.SeedSessions
}

// Sub returns c - o, field by field: the traffic between two snapshots.
func (c Counts) Sub(o Counts) Counts {
	return Counts{
		PasswordOK:              c.PasswordOK - o.PasswordOK,
		PasswordFailed:          c.PasswordFailed - o.PasswordFailed,
		RefreshOK:               c.RefreshOK - o.RefreshOK,
		RefreshInvalidGrant:     c.RefreshInvalidGrant - o.RefreshInvalidGrant,
		RefreshFailed:           c.RefreshFailed - o.RefreshFailed,
		ClientCredentialsOK:     c.ClientCredentialsOK - o.ClientCredentialsOK,
		ClientCredentialsFailed: c.ClientCredentialsFailed - o.ClientCredentialsFailed,
		OtherGrant:              c.OtherGrant - o.OtherGrant,
		SeedSessions:            c.SeedSessions - o.SeedSessions,
		Introspections:          c.Introspections - o.Introspections,
		Revocations:             c.Revocations - o.Revocations,
	}
}

// Event is one answered token, introspection or revocation request.
type Event struct {
	Time      time.Time
	Endpoint  string // token, introspect or revoke
	GrantType string // for the token endpoint
	ClientID  string
	// ClientAuth is how the request authenticated its client: basic (HTTP
	// Basic), client_secret_post (client_secret in the form),
	// private_key_jwt (a client assertion), or none (client_id alone).
	ClientAuth string
	// Assertion is the client assertion of a private_key_jwt request, as sent
	// (read without verification: Error says whether fosite accepted it).
	Assertion *Assertion
	Status    int
	Error     string // OAuth2 error code, empty on success
	// Held is set on a refresh grant that was processed during HoldRefreshes
	// and answered only at its release.
	Held bool
	// Seed is set on the password grant of a SeedSession.
	Seed bool

	// presented is the hash of the refresh token a refresh grant presented.
	presented string
}

// Outcome is the OAuth2 error code, or ok.
func (ev Event) Outcome() string {
	if ev.Error != "" {
		return ev.Error
	}
	return "ok"
}

// Provider is a running OAuth2 server. All methods are safe for concurrent use.
type Provider struct {
	cfg    Config
	oauth  fosite.OAuth2Provider
	srv    *http.Server
	ln     net.Listener
	url    string
	closed chan struct{}

	// introspectorSecret authenticates the Introspect helper; seedMark, sent
	// in the seedHeader, marks the password grants of SeedSession.
	introspectorSecret string
	seedMark           string

	// mu guards counts, events, forms, issued, refreshTokens, assertions and hold.
	mu            sync.Mutex
	counts        Counts
	events        []Event
	forms         []string
	issued        []Issued
	refreshTokens []string
	assertions    []string
	hold          *hold
}

// seedHeader carries Provider.seedMark on the requests of SeedSession.
const seedHeader = "X-E2e-Seed"

// Assertion is what a client assertion (RFC 7523) says, read without
// verifying its signature.
type Assertion struct {
	Alg, Kid, Typ   string // JOSE header
	Issuer, Subject string
	Audience        []string
	ID              string // jti
	IssuedAt        time.Time
	NotBefore       time.Time
	Expiry          time.Time
}

// hold is one HoldRefreshes: the refresh grants processed while it is active
// wait for release before they are answered.
type hold struct {
	arrived  chan Event
	release  chan struct{}
	answered sync.WaitGroup // the held requests not yet answered
	once     sync.Once
}

// Issued is one successful token response.
type Issued struct {
	GrantType    string
	ClientID     string
	AccessToken  string
	RefreshToken string // empty if none was issued
	IssuedAt     time.Time
	ExpiresAt    time.Time // of the access token, from expires_in
}

// New starts a Provider listening on cfg.Addr. Stop it with Close.
func New(cfg Config) (*Provider, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "demo"
	}
	if cfg.Username == "" {
		cfg.Username = "demo"
	}
	if cfg.Password == "" {
		cfg.Password = "demo-password"
	}
	if cfg.Scopes == nil {
		cfg.Scopes = []string{"read", "write", "offline"}
	}
	if cfg.AccessTokenTTL == 0 {
		cfg.AccessTokenTTL = 20 * time.Minute
	}
	if cfg.RefreshTokenTTL == 0 {
		cfg.RefreshTokenTTL = 7 * 24 * time.Hour
	}

	p := &Provider{cfg: cfg, closed: make(chan struct{}), introspectorSecret: randomHex(16), seedMark: randomHex(16)}
	// Listen first: the token endpoint's URL is the audience of client assertions.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	p.ln = ln
	p.url = "http://" + ln.Addr().String()
	if err := p.compose(); err != nil {
		ln.Close()
		return nil, err
	}

	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TokenPath, p.handleToken)
	mux.HandleFunc("POST "+IntrospectPath, p.handleIntrospect)
	mux.HandleFunc("POST "+RevokePath, p.handleRevoke)
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.closed)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// compose builds the fosite provider of p.cfg: its clients, its user and its
// grant handlers.
func (p *Provider) compose() error {
	cfg := p.cfg
	fc := &fosite.Config{
		AccessTokenLifespan:  cfg.AccessTokenTTL,
		RefreshTokenLifespan: cfg.RefreshTokenTTL,
		GlobalSecret:         []byte(randomHex(16)), // HMAC key for tokens, 32 bytes
		// Issue a refresh token on every password grant, whatever the scope
		// (the default would demand the "offline" scope).
		RefreshTokenScopes: []string{},
		// Client secrets are bcrypt hashes; the minimum cost keeps tests fast.
		HashCost: 4,
		// The only audience client assertions may name.
		TokenURL: p.TokenURL(),
	}

	store := &rotatingStore{MemoryStore: storage.NewMemoryStore()}
	grants := fosite.Arguments{"password", "refresh_token"}
	store.Clients[cfg.ClientID] = &fosite.DefaultClient{
		ID:         cfg.ClientID,
		Public:     true,
		GrantTypes: grants,
		Scopes:     cfg.Scopes,
	}
	hasher := &fosite.BCrypt{Config: fc}
	addConfidential := func(id, secret string, grants fosite.Arguments) error {
		hash, err := hasher.Hash(context.Background(), []byte(secret))
		if err != nil {
			return fmt.Errorf("hash client secret: %w", err)
		}
		store.Clients[id] = &fosite.DefaultClient{ID: id, Secret: hash, GrantTypes: grants, Scopes: cfg.Scopes}
		return nil
	}
	if cfg.ConfidentialClientID != "" && cfg.ConfidentialClientSecret != "" {
		if err := addConfidential(cfg.ConfidentialClientID, cfg.ConfidentialClientSecret, grants); err != nil {
			return err
		}
	}
	for _, jc := range cfg.JWTClients {
		client, err := jwtClient(jc, cfg.Scopes)
		if err != nil {
			return err
		}
		store.Clients[jc.ID] = client
	}
	if err := addConfidential(introspectorID, p.introspectorSecret, fosite.Arguments{}); err != nil {
		return err
	}
	store.Users[cfg.Username] = storage.MemoryUserRelation{Username: cfg.Username, Password: cfg.Password}

	// Opaque HMAC tokens (ory_at_..., ory_rt_...), validated against the store.
	p.oauth = compose.Compose(fc, store, compose.NewOAuth2HMACStrategy(fc),
		//lint:ignore SA1019 the password grant is deprecated, and exactly what the providers under test use
		compose.OAuth2ResourceOwnerPasswordCredentialsFactory,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2ClientCredentialsGrantFactory,
		compose.OAuth2TokenIntrospectionFactory,
		compose.OAuth2TokenRevocationFactory,
	)
	return nil
}

// jwtClient is the fosite client of jc: an OpenID Connect client (fosite
// reads the authentication method and the keys of those only) whose JSON Web
// Key Set holds jc.Key for signatures, of the one algorithm the key takes.
func jwtClient(jc JWTClient, scopes []string) (*fosite.DefaultOpenIDConnectClient, error) {
	var alg string
	switch k := jc.Key.(type) {
	case *rsa.PublicKey:
		alg = "RS256"
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("provider: JWT client %q: an EC key must be on P-256 (ES256)", jc.ID)
		}
		alg = "ES256"
	default:
		return nil, fmt.Errorf("provider: JWT client %q: the key is a %T, want an *rsa.PublicKey or a P-256 *ecdsa.PublicKey", jc.ID, jc.Key)
	}
	return &fosite.DefaultOpenIDConnectClient{
		DefaultClient: &fosite.DefaultClient{
			ID:         jc.ID,
			GrantTypes: fosite.Arguments{"client_credentials", "refresh_token"},
			Scopes:     scopes,
		},
		TokenEndpointAuthMethod:           "private_key_jwt",
		TokenEndpointAuthSigningAlgorithm: alg,
		JSONWebKeys: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
			{Key: jc.Key, KeyID: jc.KeyID, Algorithm: alg, Use: "sig"},
		}},
	}, nil
}

// URL is the base URL, http://127.0.0.1:PORT.
func (p *Provider) URL() string { return p.url }

// TokenURL is the token endpoint.
func (p *Provider) TokenURL() string { return p.url + TokenPath }

// IntrospectURL is the RFC 7662 introspection endpoint.
func (p *Provider) IntrospectURL() string { return p.url + IntrospectPath }

// RevokeURL is the RFC 7009 revocation endpoint.
func (p *Provider) RevokeURL() string { return p.url + RevokePath }

// Config returns the effective configuration (defaults filled in).
func (p *Provider) Config() Config { return p.cfg }

// Close releases held refresh grants, stops the server and waits for
// in-flight requests briefly.
func (p *Provider) Close() error {
	p.mu.Lock()
	h := p.hold
	p.mu.Unlock()
	if h != nil {
		h.end(p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := p.srv.Shutdown(ctx)
	<-p.closed
	return err
}

// Counts returns a snapshot of the request counters.
func (p *Provider) Counts() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts
}

// Events returns every answered request, oldest first.
func (p *Provider) Events() []Event {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Event(nil), p.events...)
}

// Forms returns the raw form bodies of every request, oldest first.
func (p *Provider) Forms() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.forms...)
}

// Issued returns every successful token response, oldest first.
func (p *Provider) Issued() []Issued {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Issued(nil), p.issued...)
}

// Lookup finds the token response that issued accessToken.
func (p *Provider) Lookup(accessToken string) (Issued, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, is := range p.issued {
		if is.AccessToken == accessToken {
			return is, true
		}
	}
	return Issued{}, false
}

// RefreshTokens returns every refresh token issued, oldest first.
func (p *Provider) RefreshTokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.refreshTokens...)
}

// HoldRefreshes makes every refresh grant that arrives from now on wait
// before it is answered, like a provider that is slow to answer: each is
// processed by fosite first (the presented refresh token is rotated, dead from
// then on, and the new tokens are issued and counted), then sent on arrived
// and held until release is called. Calling release answers the held
// requests (to a client that may be gone: the answer goes nowhere) and waits
// until they are answered; later refresh grants are answered at once again.
// release may be called more than once; Close calls it too.
func (p *Provider) HoldRefreshes() (arrived <-chan Event, release func()) {
	h := &hold{arrived: make(chan Event, 64), release: make(chan struct{})}
	p.mu.Lock()
	if p.hold != nil {
		p.mu.Unlock()
		panic("provider: HoldRefreshes while refreshes are already held")
	}
	p.hold = h
	p.mu.Unlock()
	return h.arrived, func() { h.end(p) }
}

// end releases h once and waits until its held requests are answered.
func (h *hold) end(p *Provider) {
	h.once.Do(func() {
		p.mu.Lock()
		if p.hold == h {
			p.hold = nil
		}
		p.mu.Unlock()
		close(h.release)
	})
	h.answered.Wait()
}

// PresentedTwice describes every refresh token that was presented in more
// than one refresh grant (whatever the outcomes), oldest first, by its
// issuance number and hash, never the token itself. Empty means no refresh
// token was ever presented twice.
func (p *Provider) PresentedTwice() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var order []string
	outcomes := map[string][]string{} // token hash -> the outcome of each presentation
	for _, ev := range p.events {
		if h := ev.presented; h != "" {
			if outcomes[h] == nil {
				order = append(order, h)
			}
			outcomes[h] = append(outcomes[h], ev.Outcome())
		}
	}
	var out []string
	for _, h := range order {
		if len(outcomes[h]) < 2 {
			continue
		}
		what := "a refresh token the provider never issued"
		for i, is := range p.issued {
			if is.RefreshToken != "" && tokenHash(is.RefreshToken) == h {
				what = fmt.Sprintf("the refresh token of issuance #%d (%s grant at %s)", i+1, is.GrantType, is.IssuedAt.Format("15:04:05.000"))
				break
			}
		}
		out = append(out, fmt.Sprintf("%s, sha256 %s: presented %d times, outcomes %s",
			what, h[:12], len(outcomes[h]), strings.Join(outcomes[h], ", ")))
	}
	return out
}

// Secrets returns every value that must never show up outside the token
// exchange: the password, the confidential client's secret, every refresh
// token issued so far and every client assertion presented.
func (p *Provider) Secrets() []string {
	s := []string{p.cfg.Password}
	if p.cfg.ConfidentialClientSecret != "" {
		s = append(s, p.cfg.ConfidentialClientSecret)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	s = append(s, p.refreshTokens...)
	return append(s, p.assertions...)
}

// SeedSession starts a session outside the engine: a password grant of the
// resource owner for the public client, over HTTP like any client's, with
// scopes (none if empty). It returns the refresh token, for a test to seed
// the engine with (vault write <mount>/creds/<role> refresh_token=-). The
// grant is counted in Counts.SeedSessions, never in PasswordOK, and marked
// Seed in Events; its tokens are in Issued and RefreshTokens (and so in
// Secrets), like every other grant's.
func (p *Provider) SeedSession(ctx context.Context, scopes ...string) (string, error) {
	form := url.Values{
		"grant_type": {"password"},
		"client_id":  {p.cfg.ClientID},
		"username":   {p.cfg.Username},
		"password":   {p.cfg.Password},
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	var out struct {
		RefreshToken string `json:"refresh_token"`
	}
	if err := p.post(ctx, p.TokenURL(), form, func(req *http.Request) { req.Header.Set(seedHeader, p.seedMark) }, &out); err != nil {
		return "", fmt.Errorf("seed session: %w", err)
	}
	if out.RefreshToken == "" {
		return "", errors.New("seed session: no refresh_token in the answer")
	}
	return out.RefreshToken, nil
}

// Revoke ends a session of the public client at the revocation endpoint
// (RFC 7009), over HTTP as that client: fosite revokes the refresh token
// and the access token of token's family. token must be the family's newest
// refresh token (or access token): fosite answers 200 for a used one and
// revokes nothing. Counted in Revocations.
func (p *Provider) Revoke(ctx context.Context, token string) error {
	form := url.Values{"token": {token}, "client_id": {p.cfg.ClientID}}
	if err := p.post(ctx, p.RevokeURL(), form, nil, nil); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	return nil
}

// Introspection is the part of an RFC 7662 answer the tests look at.
type Introspection struct {
	Active    bool   `json:"active"`
	ClientID  string `json:"client_id"`
	Scope     string `json:"scope"`
	Exp       int64  `json:"exp"`
	TokenType string `json:"token_type"`
}

// Introspect asks the introspection endpoint, over HTTP and authenticated as
// a resource server, whether token is an active access token.
func (p *Provider) Introspect(ctx context.Context, token string) (Introspection, error) {
	var in Introspection
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	err := p.post(ctx, p.IntrospectURL(), form, func(req *http.Request) { req.SetBasicAuth(introspectorID, p.introspectorSecret) }, &in)
	if err != nil {
		return in, fmt.Errorf("introspection: %w", err)
	}
	return in, nil
}

// post sends form to one of p's endpoints, with edit's changes to the
// request (if any), and decodes the JSON answer into out (if not nil). An
// answer other than 200 is an error naming its status and OAuth2 error code.
func (p *Provider) post(ctx context.Context, endpoint string, form url.Values, edit func(*http.Request), out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if edit != nil {
		edit(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return fmt.Errorf("HTTP %d %s", resp.StatusCode, e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// handleToken serves the token endpoint and counts the outcome. The outcome
// is counted before the answer is written, so a client that has its answer
// finds it in Counts; a held refresh grant waits between the two.
func (p *Provider) handleToken(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	form := p.recordForm(r)
	ev := Event{
		Endpoint: "token", GrantType: form.Get("grant_type"), ClientID: clientID(r, form),
		ClientAuth: clientAuth(r, form), Seed: r.Header.Get(seedHeader) == p.seedMark,
	}
	if rt := form.Get("refresh_token"); ev.GrantType == "refresh_token" && rt != "" {
		ev.presented = tokenHash(rt)
	}
	if a := form.Get("client_assertion"); a != "" {
		ev.Assertion = parseAssertion(a)
		p.mu.Lock()
		p.assertions = append(p.assertions, a)
		p.mu.Unlock()
	}

	ar, err := p.oauth.NewAccessRequest(ctx, r, &fosite.DefaultSession{})
	var resp fosite.AccessResponder
	if err == nil {
		if ev.GrantType == "password" {
			// The password grant gets every scope it asked for (the client's
			// allowed scopes were checked by fosite); a refresh keeps the
			// scopes of the original grant.
			for _, s := range ar.GetRequestedScopes() {
				ar.GrantScope(s)
			}
		}
		resp, err = p.oauth.NewAccessResponse(ctx, ar)
	}
	if err == nil {
		now := time.Now()
		expiresIn, _ := resp.GetExtra("expires_in").(int64)
		is := Issued{
			GrantType:   ev.GrantType,
			ClientID:    ev.ClientID,
			AccessToken: resp.GetAccessToken(),
			IssuedAt:    now,
			ExpiresAt:   now.Add(time.Duration(expiresIn) * time.Second),
		}
		is.RefreshToken, _ = resp.GetExtra("refresh_token").(string)
		p.mu.Lock()
		p.issued = append(p.issued, is)
		if is.RefreshToken != "" {
			p.refreshTokens = append(p.refreshTokens, is.RefreshToken)
		}
		p.mu.Unlock()
		ev.Status = http.StatusOK
	} else {
		rfc := fosite.ErrorToRFC6749Error(err)
		ev.Status, ev.Error = rfc.StatusCode(), rfc.ErrorField
	}

	h := p.holdFor(&ev)
	p.record(ev)
	if h != nil {
		select {
		case h.arrived <- ev:
		default: // nobody is reading: the hold still holds
		}
		<-h.release
		defer h.answered.Done()
	}
	if err == nil {
		p.oauth.WriteAccessResponse(ctx, w, ar, resp)
	} else {
		p.oauth.WriteAccessError(ctx, w, ar, err)
	}
}

// holdFor returns the active hold if ev is a refresh grant, marked Held and
// counted among the hold's unanswered requests; nil otherwise.
func (p *Provider) holdFor(ev *Event) *hold {
	if ev.GrantType != "refresh_token" {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.hold
	if h == nil {
		return nil
	}
	h.answered.Add(1)
	ev.Held = true
	return h
}

// handleIntrospect serves RFC 7662 token introspection.
func (p *Provider) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	p.recordForm(r)
	ev := Event{Endpoint: "introspect", Status: http.StatusOK}
	if id, _, ok := r.BasicAuth(); ok {
		ev.ClientID = id
	}
	ir, err := p.oauth.NewIntrospectionRequest(ctx, r, &fosite.DefaultSession{})
	if err != nil {
		rfc := fosite.ErrorToRFC6749Error(err)
		ev.Error = rfc.ErrorField
		if !errors.Is(err, fosite.ErrInactiveToken) {
			ev.Status = rfc.StatusCode()
		}
		p.oauth.WriteIntrospectionError(ctx, w, err)
	} else {
		p.oauth.WriteIntrospectionResponse(ctx, w, ir)
	}
	p.record(ev)
}

// handleRevoke serves RFC 7009 token revocation.
func (p *Provider) handleRevoke(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	form := p.recordForm(r)
	ev := Event{Endpoint: "revoke", ClientID: clientID(r, form), ClientAuth: clientAuth(r, form), Status: http.StatusOK}
	err := p.oauth.NewRevocationRequest(ctx, r)
	if err != nil {
		rfc := fosite.ErrorToRFC6749Error(err)
		ev.Status, ev.Error = rfc.StatusCode(), rfc.ErrorField
	}
	p.oauth.WriteRevocationResponse(ctx, w, err)
	p.record(ev)
}

// recordForm keeps a copy of the raw request body, puts it back for fosite
// and returns it parsed. Bodies above 1 MiB are cut (fosite rejects them).
func (p *Provider) recordForm(r *http.Request) url.Values {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	p.mu.Lock()
	p.forms = append(p.forms, string(body))
	p.mu.Unlock()
	form, _ := url.ParseQuery(string(body))
	return form
}

// record counts ev and logs it without any secret.
func (p *Provider) record(ev Event) {
	ev.Time = time.Now()
	p.mu.Lock()
	p.events = append(p.events, ev)
	c := &p.counts
	switch {
	case ev.Endpoint == "introspect":
		c.Introspections++
	case ev.Endpoint == "revoke":
		c.Revocations++
	case ev.Seed:
		c.SeedSessions++
	case ev.GrantType == "password" && ev.Error == "":
		c.PasswordOK++
	case ev.GrantType == "password":
		c.PasswordFailed++
	case ev.GrantType == "refresh_token" && ev.Error == "":
		c.RefreshOK++
	case ev.GrantType == "refresh_token" && ev.Error == "invalid_grant":
		c.RefreshInvalidGrant++
	case ev.GrantType == "refresh_token":
		c.RefreshFailed++
	case ev.GrantType == "client_credentials" && ev.Error == "":
		c.ClientCredentialsOK++
	case ev.GrantType == "client_credentials":
		c.ClientCredentialsFailed++
	default:
		c.OtherGrant++
	}
	p.mu.Unlock()

	if p.cfg.Logf != nil {
		p.cfg.Logf("%s grant_type=%q client_id=%q client_auth=%s status=%d outcome=%s held=%t seed=%t",
			ev.Endpoint, ev.GrantType, ev.ClientID, ev.ClientAuth, ev.Status, ev.Outcome(), ev.Held, ev.Seed)
	}
}

// clientID names the client of a request, from HTTP Basic or the form.
func clientID(r *http.Request, form url.Values) string {
	if id, _, ok := r.BasicAuth(); ok {
		if u, err := url.QueryUnescape(id); err == nil {
			return u
		}
	}
	return form.Get("client_id")
}

// clientAuth names how a request authenticates its client (Event.ClientAuth).
func clientAuth(r *http.Request, form url.Values) string {
	switch _, _, basic := r.BasicAuth(); {
	case form.Get("client_assertion_type") != "" || form.Get("client_assertion") != "":
		return "private_key_jwt"
	case basic:
		return "basic"
	case form.Get("client_secret") != "":
		return "client_secret_post"
	}
	return "none"
}

// parseAssertion reads a client assertion's header and claims without
// verifying it (fosite does that); what it cannot read stays empty.
func parseAssertion(raw string) *Assertion {
	a := &Assertion{}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return a
	}
	var header struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}
	var claims struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"` // a string or a list of strings
		Jti string          `json:"jti"`
		Iat int64           `json:"iat"`
		Nbf int64           `json:"nbf"`
		Exp int64           `json:"exp"`
	}
	if b, err := base64.RawURLEncoding.DecodeString(parts[0]); err == nil && json.Unmarshal(b, &header) == nil {
		a.Alg, a.Kid, a.Typ = header.Alg, header.Kid, header.Typ
	}
	if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil && json.Unmarshal(b, &claims) == nil {
		a.Issuer, a.Subject, a.ID = claims.Iss, claims.Sub, claims.Jti
		var one string
		if json.Unmarshal(claims.Aud, &one) == nil {
			a.Audience = []string{one}
		} else {
			_ = json.Unmarshal(claims.Aud, &a.Audience)
		}
		unix := func(s int64) time.Time {
			if s == 0 {
				return time.Time{}
			}
			return time.Unix(s, 0)
		}
		a.IssuedAt, a.NotBefore, a.Expiry = unix(claims.Iat), unix(claims.Nbf), unix(claims.Exp)
	}
	return a
}

// tokenHash is how a refresh token is remembered once presented: hex sha256.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// rotatingStore changes one thing in fosite's memory store: a refresh
// retires the presented refresh token but leaves the previous access token
// valid until it expires (fosite's example store also deletes it). Reuse
// detection still revokes the whole family, access token included.
type rotatingStore struct {
	*storage.MemoryStore
}

func (s *rotatingStore) RotateRefreshToken(ctx context.Context, requestID, _ string) error {
	return s.RevokeRefreshToken(ctx, requestID)
}
