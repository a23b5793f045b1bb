package bearer

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/vault/sdk/logical"
)

// testClock is a clock that moves only when a test says so. Timers set on it fire as
// it passes their time, in order; after each, Add waits until the backends on this
// clock have finished the background work it started.
type testClock struct {
	mu       sync.Mutex
	now      time.Time
	timers   []*fakeTimer
	settlers []func()
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newTestClock() *testClock {
	return &testClock{now: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// AfterFunc is the backend's timer on this clock. A timer already due fires at once.
func (c *testClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	due := d <= 0
	if !due {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	if due {
		go f()
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// onSettle registers what Add waits for after firing timers.
func (c *testClock) onSettle(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settlers = append(c.settlers, f)
}

// Add moves the clock forward by d, firing the timers it passes at their own time.
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	target := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.settle()
		c.mu.Lock()
		var next *fakeTimer
		kept := c.timers[:0]
		for _, t := range c.timers {
			if t.stopped {
				continue
			}
			kept = append(kept, t)
			if !t.at.After(target) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		c.timers = kept
		if next == nil {
			c.now = target
			c.mu.Unlock()
			c.settle()
			return
		}
		next.stopped = true
		if next.at.After(c.now) {
			c.now = next.at
		}
		c.mu.Unlock()
		next.f()
	}
}

// settle waits for the background work of every backend on this clock.
func (c *testClock) settle() {
	c.mu.Lock()
	settlers := append([]func(){}, c.settlers...)
	c.mu.Unlock()
	for _, f := range settlers {
		f()
	}
}

// syncBuffer collects log output from concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// testStorage counts storage operations and fails writes on demand.
type testStorage struct {
	logical.Storage
	gets, puts, lists atomic.Int64
	failPuts          atomic.Bool
}

var errStorageDown = errors.New("storage unavailable (test)")

func (s *testStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	s.gets.Add(1)
	return s.Storage.Get(ctx, key)
}

func (s *testStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	s.puts.Add(1)
	if s.failPuts.Load() {
		return errStorageDown
	}
	return s.Storage.Put(ctx, e)
}

func (s *testStorage) List(ctx context.Context, prefix string) ([]string, error) {
	s.lists.Add(1)
	return s.Storage.List(ctx, prefix)
}

func (s *testStorage) ops() int64 { return s.gets.Load() + s.puts.Load() + s.lists.Load() }

// testEnv is a backend on test storage with a test clock and captured trace logs.
type testEnv struct {
	b       *backend
	storage *testStorage
	clock   *testClock
	logs    *syncBuffer
	sys     *logical.StaticSystemView
}

func getTestBackend(tb testing.TB) *testEnv {
	tb.Helper()
	env := &testEnv{
		storage: &testStorage{Storage: &logical.InmemStorage{}},
		clock:   newTestClock(),
		logs:    &syncBuffer{},
	}
	env.start(tb)
	return env
}

// start builds a fresh backend over the environment's storage, as a restart would.
func (e *testEnv) start(tb testing.TB) {
	tb.Helper()
	if e.b != nil {
		e.b.Cleanup(context.Background()) // the old process is gone
	}
	config := logical.TestBackendConfig()
	config.StorageView = e.storage
	config.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Trace, Output: e.logs})
	e.sys = &logical.StaticSystemView{DefaultLeaseTTLVal: time.Hour, MaxLeaseTTLVal: 24 * time.Hour}
	config.System = e.sys
	b, err := Factory(context.Background(), config)
	if err != nil {
		tb.Fatal(err)
	}
	e.b = b.(*backend)
	e.b.now = e.clock.Now
	e.b.sleep = func(ctx context.Context, _ time.Duration) error { return ctx.Err() }
	e.b.afterFunc = e.clock.AfterFunc
	e.clock.onSettle(e.b.bg.wait)
	tb.Cleanup(func() { e.b.Cleanup(context.Background()) })
}

// request runs one request against the backend.
func (e *testEnv) request(tb testing.TB, op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
	tb.Helper()
	req := &logical.Request{
		Operation:  op,
		Path:       path,
		Data:       data,
		Storage:    e.storage,
		MountPoint: "bearer/",
	}
	if op == logical.CreateOperation || op == logical.UpdateOperation {
		checkFound, exists, err := e.b.HandleExistenceCheck(context.Background(), req)
		if err == nil && checkFound && op == logical.UpdateOperation && !exists {
			req.Operation = logical.CreateOperation
		}
	}
	return e.b.HandleRequest(context.Background(), req)
}

// mustOK runs a request that must succeed.
func (e *testEnv) mustOK(tb testing.TB, op logical.Operation, path string, data map[string]any) *logical.Response {
	tb.Helper()
	resp, err := e.request(tb, op, path, data)
	if msg := errorText(resp, err); msg != "" {
		tb.Fatalf("%s %s: %s", op, path, msg)
	}
	return resp
}

// mustFail runs a request that must fail and returns its error text.
func (e *testEnv) mustFail(tb testing.TB, op logical.Operation, path string, data map[string]any) string {
	tb.Helper()
	resp, err := e.request(tb, op, path, data)
	if msg := errorText(resp, err); msg != "" {
		return msg
	}
	tb.Fatalf("%s %s: expected an error, got %#v", op, path, resp)
	return ""
}

func (e *testEnv) readCreds(tb testing.TB, role string) *logical.Response {
	tb.Helper()
	return e.mustOK(tb, logical.ReadOperation, "creds/"+role, nil)
}

// setup writes a connection "conn" to the provider and a role "app" using it.
func (e *testEnv) setup(tb testing.TB, p *fakeProvider, conn, role map[string]any) {
	tb.Helper()
	data := p.connData()
	for k, v := range conn {
		data[k] = v
	}
	e.mustOK(tb, logical.UpdateOperation, "config/conn", data)
	rdata := map[string]any{"config": "conn"}
	for k, v := range role {
		rdata[k] = v
	}
	e.mustOK(tb, logical.UpdateOperation, "roles/app", rdata)
}

const (
	testUsername = "alice@example.com"
	testPassword = "s3cret-Pa55word-XYZ"
	testSecret   = "client-s3cret-QRS"
)

// providerRequest is one request the fake provider received.
type providerRequest struct {
	path   string
	grant  string
	form   url.Values
	header http.Header
}

// fakeProvider is a TLS token endpoint that behaves like Mindbaz (style "mindbaz") or
// like Apiax's Keycloak realm (style "apiax"): single-use rotating refresh tokens, a
// used one answered with invalid_grant.
type fakeProvider struct {
	srv   *httptest.Server
	clock *testClock
	style string

	mu           sync.Mutex
	password     string
	accessTTL    time.Duration
	issued       int
	live         map[string]bool // refresh tokens that may still be used
	everIssued   []string        // every refresh token handed out
	requests     []providerRequest
	refreshDelay chan struct{} // when set, refresh requests wait for it to close
	// hook, when set, may answer a token request itself (return true).
	hook func(w http.ResponseWriter, r *http.Request, form url.Values) bool
	// failStorage, when set, is the switch of the engine's test storage a hook may
	// turn on: storage failing while a request is at the provider.
	failStorage *atomic.Bool
	// clientSecret and clientKey, when set, are what the client credentials grant and
	// client assertions are checked against; assertions records the verified claims.
	clientSecret string
	clientKey    any
	assertions   []jwt.Claims
}

const (
	mindbazPath   = "/oauth2/token"
	apiaxRealm    = "/auth/realms/apiax"
	apiaxPath     = apiaxRealm + "/protocol/openid-connect/token"
	apiaxRevoke   = apiaxRealm + "/protocol/openid-connect/revoke"
	assertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

func newFakeProvider(tb testing.TB, style string, clock *testClock) *fakeProvider {
	tb.Helper()
	p := &fakeProvider{clock: clock, style: style, password: testPassword, live: map[string]bool{}}
	p.accessTTL = 1199 * time.Second
	if style == "apiax" {
		p.accessTTL = 1800 * time.Second
	}
	p.srv = httptest.NewTLSServer(http.HandlerFunc(p.serve))
	tb.Cleanup(p.srv.Close)
	return p
}

func (p *fakeProvider) tokenURL() string {
	if p.style == "apiax" {
		return p.srv.URL + apiaxPath
	}
	return p.srv.URL + mindbazPath
}

func (p *fakeProvider) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw}))
}

// connData is a connection for this provider using its preset.
func (p *fakeProvider) connData() map[string]any {
	data := map[string]any{
		"provider": p.style,
		"username": testUsername,
		"password": testPassword,
		"ca_cert":  p.caPEM(),
	}
	if p.style == "apiax" {
		data["issuer"] = p.srv.URL + apiaxRealm
	} else {
		data["token_url"] = p.tokenURL()
	}
	return data
}

func (p *fakeProvider) setPassword(pw string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.password = pw
}

func (p *fakeProvider) setHook(h func(w http.ResponseWriter, r *http.Request, form url.Values) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hook = h
}

// calls counts the token requests of a grant type ("" for all).
func (p *fakeProvider) calls(grant string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.requests {
		if r.path != apiaxRevoke && (grant == "" || r.grant == grant) {
			n++
		}
	}
	return n
}

func (p *fakeProvider) lastRequest(tb testing.TB) providerRequest {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.requests) == 0 {
		tb.Fatal("the provider received no request")
	}
	return p.requests[len(p.requests)-1]
}

func (p *fakeProvider) refreshTokens() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.everIssued...)
}

func (p *fakeProvider) serve(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	form := r.PostForm
	p.mu.Lock()
	p.requests = append(p.requests, providerRequest{path: r.URL.Path, grant: form.Get("grant_type"), form: form, header: r.Header.Clone()})
	hook := p.hook
	delay := p.refreshDelay
	p.mu.Unlock()

	if r.URL.Path == apiaxRevoke {
		p.mu.Lock()
		delete(p.live, form.Get("token"))
		p.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		return
	}
	if hook != nil && hook(w, r, form) {
		return
	}
	if delay != nil && form.Get("grant_type") == grantRefresh {
		<-delay
	}
	wantPath, wantClient := mindbazPath, "100"
	if p.style == "apiax" {
		wantPath, wantClient = apiaxPath, "integration-api"
	}
	if r.URL.Path != wantPath {
		http.NotFound(w, r)
		return
	}
	if form.Get("client_id") != wantClient {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "unknown client")
		return
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if form.Get("client_assertion") != "" && !p.checkAssertion(w, r, form) {
		return
	}
	switch form.Get("grant_type") {
	case grantClientCredentials:
		if form.Get("client_assertion") == "" && (p.clientSecret == "" || form.Get("client_secret") != p.clientSecret) {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "Invalid client credentials")
			return
		}
		if form.Get("username") != "" || form.Get("password") != "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", "client credentials with a password")
			return
		}
		p.issued++
		writeJSON(w, http.StatusOK, map[string]any{
			"access_token": fmt.Sprintf("at-cc-%d", p.issued), "token_type": "Bearer", "expires_in": int(p.accessTTL.Seconds()),
		})
	case grantPassword:
		if form.Get("username") != testUsername || form.Get("password") != p.password {
			oauthError(w, http.StatusUnauthorized, "invalid_grant", "Invalid user credentials")
			return
		}
		p.issue(w, false)
	case grantRefresh:
		if p.style == "apiax" && form.Get("client_assertion_type") != assertionType {
			oauthError(w, http.StatusBadRequest, "invalid_request", "client_assertion_type missing")
			return
		}
		rt := form.Get("refresh_token")
		if !p.live[rt] {
			oauthError(w, http.StatusUnauthorized, "invalid_grant", "Token is not active")
			return
		}
		delete(p.live, rt) // single use
		p.issue(w, true)
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "")
	}
}

// checkAssertion verifies a client assertion against clientKey and records its claims;
// it answers invalid_client and returns false when it does not hold. The caller holds mu.
func (p *fakeProvider) checkAssertion(w http.ResponseWriter, r *http.Request, form url.Values) bool {
	var claims jwt.Claims
	tok, err := jwt.ParseSigned(form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err == nil && p.clientKey != nil {
		err = tok.Claims(p.clientKey, &claims)
	} else if err == nil {
		err = errors.New("no client key")
	}
	if err == nil {
		err = claims.ValidateWithLeeway(jwt.Expected{
			Issuer: form.Get("client_id"), Subject: form.Get("client_id"), AnyAudience: jwt.Audience{p.srv.URL + r.URL.Path}, Time: p.clock.Now(),
		}, 0)
	}
	if err != nil || form.Get("client_assertion_type") != assertionType {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "client assertion not valid")
		return false
	}
	p.assertions = append(p.assertions, claims)
	return true
}

// issue answers with new tokens. The caller holds mu.
func (p *fakeProvider) issue(w http.ResponseWriter, refresh bool) {
	p.issued++
	now := p.clock.Now()
	exp := now.Add(p.accessTTL)
	rt := fmt.Sprintf("rt-%s-%d-%s", p.style, p.issued, strings.Repeat("r", 8))
	p.live[rt] = true
	p.everIssued = append(p.everIssued, rt)
	body := map[string]any{"refresh_token": rt}
	switch p.style {
	case "apiax":
		body["access_token"] = fmt.Sprintf("at-apiax-%d", p.issued)
		body["token_type"] = "Bearer"
		body["refresh_expires_in"] = 0
		body["not-before-policy"] = 0
		body["session_state"] = "5f2c"
		body["scope"] = "profile email"
		if refresh {
			body["expires_at"] = exp.Unix()
		} else {
			body["expires_in"] = int(p.accessTTL.Seconds())
		}
	default:
		body["access_token"] = testJWT(map[string]any{"sub": testUsername, "exp": exp.Unix(), "n": p.issued})
		body["token_type"] = "bearer"
		body["expires_in"] = int(p.accessTTL.Seconds())
	}
	writeJSON(w, http.StatusOK, body)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]any{"error": code, "error_description": desc})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// testJWT builds an unsigned JWT with the given claims.
func testJWT(claims map[string]any) string {
	enc := base64.RawURLEncoding
	header, _ := json.Marshal(map[string]any{"alg": "RS256", "typ": "JWT"})
	payload, _ := json.Marshal(claims)
	return enc.EncodeToString(header) + "." + enc.EncodeToString(payload) + ".c2ln"
}

// assertNoSecrets fails when any secret appears in text.
func assertNoSecrets(tb testing.TB, what, text string, secrets ...string) {
	tb.Helper()
	for _, s := range secrets {
		if s != "" && strings.Contains(text, s) {
			tb.Errorf("%s contains the secret %q", what, s)
		}
	}
}

// respText renders a response as JSON for leak checks.
func respText(resp *logical.Response) string {
	if resp == nil {
		return ""
	}
	b, _ := json.Marshal(resp)
	return string(b)
}
