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
//   - POST /oauth2/introspect (RFC 7662) and POST /oauth2/revoke (RFC 7009).
//
// Every request is counted by grant type and outcome (see Counts), and the
// raw form bodies and issued tokens are recorded, so tests can assert exact
// provider traffic and search logs for leaked secrets. Every refresh token
// presented is remembered (see PresentedTwice), and refresh grants can be held
// unanswered on demand (see HoldRefreshes), to crash a client while its refresh
// is in flight.
package provider

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
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

// Counts is a snapshot of the requests a Provider has answered.
type Counts struct {
	PasswordOK          int // password grants that issued tokens
	PasswordFailed      int // password grants refused (any error)
	RefreshOK           int // refresh grants that issued tokens
	RefreshInvalidGrant int // refresh grants answered invalid_grant (reuse, unknown, expired)
	RefreshFailed       int // refresh grants refused with another error
	OtherGrant          int // token requests with another or no grant_type
	Introspections      int // introspection requests (any outcome)
	Revocations         int // revocation requests (any outcome)
}

// TokenCalls is the number of token endpoint requests of any kind.
func (c Counts) TokenCalls() int {
	return c.PasswordOK + c.PasswordFailed + c.RefreshOK + c.RefreshInvalidGrant + c.RefreshFailed + c.OtherGrant
}

// Sub returns c - o, field by field: the traffic between two snapshots.
func (c Counts) Sub(o Counts) Counts {
	return Counts{
		PasswordOK:          c.PasswordOK - o.PasswordOK,
		PasswordFailed:      c.PasswordFailed - o.PasswordFailed,
		RefreshOK:           c.RefreshOK - o.RefreshOK,
		RefreshInvalidGrant: c.RefreshInvalidGrant - o.RefreshInvalidGrant,
		RefreshFailed:       c.RefreshFailed - o.RefreshFailed,
		OtherGrant:          c.OtherGrant - o.OtherGrant,
		Introspections:      c.Introspections - o.Introspections,
		Revocations:         c.Revocations - o.Revocations,
	}
}

// Event is one answered token, introspection or revocation request.
type Event struct {
	Time      time.Time
	Endpoint  string // token, introspect or revoke
	GrantType string // for the token endpoint
	ClientID  string
	Status    int
	Error     string // OAuth2 error code, empty on success
	// Held is set on a refresh grant that was processed during HoldRefreshes
	// and answered only at its release.
	Held bool

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

	// introspectorSecret authenticates the Introspect helper.
	introspectorSecret string

	// mu guards counts, events, forms, issued, refreshTokens and hold.
	mu            sync.Mutex
	counts        Counts
	events        []Event
	forms         []string
	issued        []Issued
	refreshTokens []string
	hold          *hold
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

	p := &Provider{cfg: cfg, closed: make(chan struct{}), introspectorSecret: randomHex(16)}

	fc := &fosite.Config{
		AccessTokenLifespan:  cfg.AccessTokenTTL,
		RefreshTokenLifespan: cfg.RefreshTokenTTL,
		GlobalSecret:         []byte(randomHex(16)), // HMAC key for tokens, 32 bytes
		// Issue a refresh token on every password grant, whatever the scope
		// (the default would demand the "offline" scope).
		RefreshTokenScopes: []string{},
		// Client secrets are bcrypt hashes; the minimum cost keeps tests fast.
		HashCost: 4,
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
			return nil, err
		}
	}
	if err := addConfidential(introspectorID, p.introspectorSecret, fosite.Arguments{}); err != nil {
		return nil, err
	}
	store.Users[cfg.Username] = storage.MemoryUserRelation{Username: cfg.Username, Password: cfg.Password}

	// Opaque HMAC tokens (ory_at_..., ory_rt_...), validated against the store.
	p.oauth = compose.Compose(fc, store, compose.NewOAuth2HMACStrategy(fc),
		//lint:ignore SA1019 the password grant is deprecated, and exactly what the providers under test use
		compose.OAuth2ResourceOwnerPasswordCredentialsFactory,
		compose.OAuth2RefreshTokenGrantFactory,
		compose.OAuth2TokenIntrospectionFactory,
		compose.OAuth2TokenRevocationFactory,
	)

	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TokenPath, p.handleToken)
	mux.HandleFunc("POST "+IntrospectPath, p.handleIntrospect)
	mux.HandleFunc("POST "+RevokePath, p.handleRevoke)

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	p.ln = ln
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.closed)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
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
// exchange: the password, the confidential client's secret and every refresh
// token issued so far.
func (p *Provider) Secrets() []string {
	s := []string{p.cfg.Password}
	if p.cfg.ConfidentialClientSecret != "" {
		s = append(s, p.cfg.ConfidentialClientSecret)
	}
	return append(s, p.RefreshTokens()...)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.IntrospectURL(), strings.NewReader(form.Encode()))
	if err != nil {
		return in, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(introspectorID, p.introspectorSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return in, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return in, fmt.Errorf("introspection: HTTP %d", resp.StatusCode)
	}
	return in, json.NewDecoder(resp.Body).Decode(&in)
}

// handleToken serves the token endpoint and counts the outcome. The outcome
// is counted before the answer is written, so a client that has its answer
// finds it in Counts; a held refresh grant waits between the two.
func (p *Provider) handleToken(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	form := p.recordForm(r)
	ev := Event{Endpoint: "token", GrantType: form.Get("grant_type"), ClientID: clientID(r, form)}
	if rt := form.Get("refresh_token"); ev.GrantType == "refresh_token" && rt != "" {
		ev.presented = tokenHash(rt)
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
	ev := Event{Endpoint: "revoke", ClientID: clientID(r, form), Status: http.StatusOK}
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
	default:
		c.OtherGrant++
	}
	p.mu.Unlock()

	if p.cfg.Logf != nil {
		p.cfg.Logf("%s grant_type=%q client_id=%q status=%d outcome=%s held=%t",
			ev.Endpoint, ev.GrantType, ev.ClientID, ev.Status, ev.Outcome(), ev.Held)
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
