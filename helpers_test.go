package bearer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
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

// hookFunc answers a token request in place of the fake provider (returns true) or
// lets it through (returns false).
type hookFunc = func(w http.ResponseWriter, r *http.Request, form url.Values) bool

// reply is a hook that answers the requests of one grant ("" for all) with a fixed
// status, content type, body and header pairs.
func reply(grant string, status int, contentType, body string, header ...string) func(*fakeProvider) hookFunc {
	return func(*fakeProvider) hookFunc {
		return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
			if grant != "" && form.Get("grant_type") != grant {
				return false
			}
			for i := 0; i+1 < len(header); i += 2 {
				w.Header().Set(header[i], header[i+1])
			}
			if contentType != "" {
				w.Header().Set("Content-Type", contentType)
			}
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
			return true
		}
	}
}

// resetConn drops the connection of a request that was read, with a TCP reset.
func resetConn(w http.ResponseWriter) {
	conn, _, err := w.(http.Hijacker).Hijack()
	if err != nil {
		panic(err)
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = raw.Close()
}

// refusedURL is a token URL on a loopback port where nothing listens.
func refusedURL(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "https://" + addr + "/oauth2/token"
}

// otherCAPEM is a CA certificate that did not sign the fake provider's certificate.
func otherCAPEM(tb testing.TB) string {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "another test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

// consume uses a refresh token as a refresh would, issuing a successor that never
// reaches the client. It reports whether the token was live.
func (p *fakeProvider) consume(rt string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.live[rt] {
		return false
	}
	delete(p.live, rt)
	p.issued++
	next := fmt.Sprintf("rt-%s-%d-%s", p.style, p.issued, strings.Repeat("r", 8))
	p.live[next] = true
	p.everIssued = append(p.everIssued, next)
	return true
}

// forgetSessions makes every refresh token dead, as a provider restart would.
func (p *fakeProvider) forgetSessions() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live = map[string]bool{}
}

// newest is the last refresh token the provider issued.
func (p *fakeProvider) newest() string {
	rts := p.refreshTokens()
	if len(rts) == 0 {
		return ""
	}
	return rts[len(rts)-1]
}

// assertNoRefreshReuse fails when a refresh token was presented more than once.
func (p *fakeProvider) assertNoRefreshReuse(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := map[string]bool{}
	for _, r := range p.requests {
		if r.grant != grantRefresh {
			continue
		}
		rt := r.form.Get("refresh_token")
		if seen[rt] {
			tb.Errorf("refresh token %q was presented again", rt)
		}
		seen[rt] = true
	}
}

// pauseLog records the client's retry pauses, which take no time in tests.
type pauseLog struct {
	mu     sync.Mutex
	pauses []time.Duration
}

func (l *pauseLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.pauses = nil
}

func (l *pauseLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.pauses)
}

// recordPauses makes the backend record its retry pauses. Call it before the first
// token request: clients keep the sleep function they were built with.
func (e *testEnv) recordPauses() *pauseLog {
	l := &pauseLog{}
	e.b.sleep = func(ctx context.Context, d time.Duration) error {
		l.mu.Lock()
		l.pauses = append(l.pauses, d)
		l.mu.Unlock()
		return ctx.Err()
	}
	return l
}

// storedRejection reads the rejection recorded for a connection; nil when none.
func (e *testEnv) storedRejection(tb testing.TB, conn string) *rejection {
	tb.Helper()
	a := new(accountEntry)
	if _, err := getJSON(context.Background(), e.storage.Storage, accountPrefix+conn, a); err != nil {
		tb.Fatal(err)
	}
	return a.Rejection
}

// storedSession reads tokens/<role> from storage; an empty entry when there is none.
func (e *testEnv) storedSession(tb testing.TB, role string) *sessionEntry {
	tb.Helper()
	sess, _, err := readSession(context.Background(), e.storage.Storage, role)
	if err != nil {
		tb.Fatal(err)
	}
	if sess == nil {
		sess = &sessionEntry{}
	}
	return sess
}

// errorText is the error of a request, "" when it succeeded.
func errorText(resp *logical.Response, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case resp != nil && resp.IsError():
		return resp.Error().Error()
	}
	if status, msg := rawErrorOf(resp); status != 0 {
		return msg
	}
	return ""
}

// rawErrorOf reads an error answer with its own status (rawError): its status and its
// one message; 0 when resp is not one.
func rawErrorOf(resp *logical.Response) (int, string) {
	if resp == nil || resp.Data == nil {
		return 0, ""
	}
	status, ok := resp.Data[logical.HTTPStatusCode].(int)
	if !ok {
		return 0, ""
	}
	var body struct {
		Errors []string `json:"errors"`
	}
	raw, _ := resp.Data[logical.HTTPRawBody].([]byte)
	if err := json.Unmarshal(raw, &body); err != nil || len(body.Errors) != 1 {
		return status, fmt.Sprintf("malformed raw error body %q", raw)
	}
	return status, body.Errors[0]
}

// newSession is a backend with a fake Mindbaz provider, the connection "conn" and the
// role "app", after a first creds read whose data it returns; retry pauses are recorded.
func newSession(tb testing.TB) (*testEnv, *fakeProvider, *pauseLog, map[string]any) {
	tb.Helper()
	env := getTestBackend(tb)
	pauses := env.recordPauses()
	p := newFakeProvider(tb, "mindbaz", env.clock)
	env.setup(tb, p, nil, nil)
	return env, p, pauses, env.readCreds(tb, "app").Data
}

// advanceTo moves the clock forward to t.
func advanceTo(c *testClock, t time.Time) {
	c.Add(t.Sub(c.Now()))
}

// withMindbaz starts a Mindbaz-like provider whose access tokens live accessTTL (0:
// 1199 s) and writes connection "conn" (verify=false unless conn says) and role "app".
func withMindbaz(tb testing.TB, env *testEnv, accessTTL time.Duration, conn, role map[string]any) *fakeProvider {
	tb.Helper()
	p := newFakeProvider(tb, "mindbaz", env.clock)
	if accessTTL > 0 {
		p.accessTTL = accessTTL
	}
	data := map[string]any{"verify": false}
	for k, v := range conn {
		data[k] = v
	}
	env.setup(tb, p, data, role)
	return p
}

// rollback runs Vault's periodic function once, through HandleRequest as Vault's
// rollback manager does.
func (e *testEnv) rollback() error {
	_, err := e.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.RollbackOperation, Storage: e.storage})
	return err
}

// runPeriodic runs Vault's periodic function and waits for the background work it
// started.
func (e *testEnv) runPeriodic(tb testing.TB) {
	tb.Helper()
	if err := e.rollback(); err != nil {
		tb.Fatalf("periodic function: %v", err)
	}
	e.b.bg.wait()
}

// periodicAsync runs the periodic function in a goroutine; the channel is closed when
// it returns.
func (e *testEnv) periodicAsync(tb testing.TB) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.rollback(); err != nil {
			tb.Errorf("periodic function: %v", err)
		}
	}()
	return done
}

// readToken reads creds/app and returns the access token, or nil after reporting the
// failure. Safe in a goroutine.
func (e *testEnv) readToken(tb testing.TB) any {
	resp, err := e.b.HandleRequest(context.Background(), &logical.Request{
		Operation: logical.ReadOperation, Path: "creds/app", Storage: e.storage, MountPoint: "bearer/",
	})
	if err != nil || resp.IsError() {
		tb.Errorf("read creds/app: %v %v", err, resp)
		return nil
	}
	return resp.Data["access_token"]
}

// readAsync runs readToken in a goroutine.
func (e *testEnv) readAsync(tb testing.TB) <-chan any {
	out := make(chan any, 1)
	go func() { out <- e.readToken(tb) }()
	return out
}

// seedRoles writes n roles with fresh sessions straight to storage, none of them read:
// the background keeps them for their keep-alive point, days away.
func seedRoles(tb testing.TB, env *testEnv, n int) {
	tb.Helper()
	ctx := context.Background()
	_, conn, err := env.b.connection(ctx, env.storage, "conn")
	if err != nil || conn == nil {
		tb.Fatalf("connection: %v", err)
	}
	now := env.clock.Now()
	for i := range n {
		name := fmt.Sprintf("role-%05d", i)
		role := &roleEntry{Config: "conn", MinTTL: defaultMinTTL, BackgroundRefresh: true}
		sess := &sessionEntry{
			Format: sessionFormat, Revision: 1,
			Account: sessionAccount{Config: "conn", AccountVersion: conn.AccountVersion},
			Tokens: sessionTokens{
				AccessToken: "at-" + name, TokenType: "Bearer", ObtainedAt: now, ExpiresAt: now.Add(20 * time.Minute),
				Grant: grantPassword, RefreshToken: "rt-" + name, RefreshExpiresAt: now.Add(168 * time.Hour),
			},
		}
		if err := putJSON(ctx, env.storage.Storage, rolePrefix+name, role); err != nil {
			tb.Fatal(err)
		}
		if err := putJSON(ctx, env.storage.Storage, tokenPrefix+name, sess); err != nil {
			tb.Fatal(err)
		}
	}
}

// newSeededEnv is a backend with n seeded roles and its schedule built.
func newSeededEnv(tb testing.TB, n int) (*testEnv, *fakeProvider) {
	tb.Helper()
	env := getTestBackend(tb)
	p := newFakeProvider(tb, "mindbaz", env.clock)
	env.mustOK(tb, logical.UpdateOperation, "config/conn", map[string]any{
		"provider": "mindbaz", "token_url": p.tokenURL(), "ca_cert": p.caPEM(),
		"username": testUsername, "password": testPassword, "verify": false,
	})
	seedRoles(tb, env, n)
	env.runPeriodic(tb)
	if got := env.b.bg.sched.len(); got != n {
		tb.Fatalf("schedule built with %d roles, want %d", got, n)
	}
	return env, p
}

// burstReads starts n reads of creds/app together and returns the tokens they got.
func burstReads(tb testing.TB, env *testEnv, n int) []any {
	tb.Helper()
	tokens := make([]any, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tokens[i] = env.readToken(tb)
		}()
	}
	close(start)
	wg.Wait()
	return tokens
}

// holdRefresh makes the provider hold refresh requests until the returned release
// function is called; received fires when the first one arrives.
func holdRefresh(p *fakeProvider) (received <-chan struct{}, release func()) {
	got := make(chan struct{}, 1)
	hold := make(chan struct{})
	p.mu.Lock()
	p.refreshDelay = hold
	p.mu.Unlock()
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantRefresh {
			select {
			case got <- struct{}{}:
			default:
			}
		}
		return false
	})
	return got, func() { close(hold) }
}

// failStorageOnRefresh makes the engine's storage fail writes once a refresh grant
// reaches the provider: the write-ahead mark is stored, what follows is not.
func failStorageOnRefresh(p *fakeProvider, fail func()) {
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantRefresh {
			fail()
		}
		return false
	})
}

// switchableStorage answers writes with Vault's read-only error once readOnly is set,
// as a node's storage does after it lost leadership.
type switchableStorage struct {
	logical.Storage
	readOnly atomic.Bool
}

func (s *switchableStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.readOnly.Load() {
		return errors.New(logical.ErrReadOnly.Error())
	}
	return s.Storage.Put(ctx, e)
}

// waitForGoroutines returns once n goroutines are blocked in a function whose frame
// contains fn, with a state starting with state ("select", "chan receive").
func waitForGoroutines(tb testing.TB, n int, state, fn string) {
	tb.Helper()
	buf := make([]byte, 4<<20)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got := 0
		stack := buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(stack), "\n\n") {
			if strings.Contains(g, " ["+state) && strings.Contains(g, fn) {
				got++
			}
		}
		if got >= n {
			return
		}
		runtime.Gosched()
	}
	tb.Fatalf("fewer than %d goroutines wait in %s", n, fn)
}

// waitFor polls cond until it holds, failing the test after 30 seconds.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// holdLogins makes the provider hold password grants until release is called; arrived
// counts those that reached it.
func holdLogins(p *fakeProvider) (arrived *atomic.Int32, release func()) {
	arrived = &atomic.Int32{}
	hold := make(chan struct{})
	var once sync.Once
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantPassword {
			arrived.Add(1)
			<-hold
		}
		return false
	})
	return arrived, func() { once.Do(func() { close(hold) }) }
}

// readRolesAsync reads creds of every role at once; the channel gets each read's error
// text ("" on success) when it is done.
func readRolesAsync(env *testEnv, roles []string) <-chan string {
	out := make(chan string, len(roles))
	for _, role := range roles {
		go func() {
			resp, err := env.b.HandleRequest(context.Background(), &logical.Request{
				Operation: logical.ReadOperation, Path: "creds/" + role, Storage: env.storage, MountPoint: "bearer/",
			})
			out <- errorText(resp, err)
		}()
	}
	return out
}

// hangUntilGivenUp makes the provider hold every token request until the client gives
// up (request_timeout); it counts them.
func hangUntilGivenUp(p *fakeProvider) *atomic.Int32 {
	n := &atomic.Int32{}
	p.setHook(func(_ http.ResponseWriter, r *http.Request, _ url.Values) bool {
		n.Add(1)
		<-r.Context().Done()
		return true
	})
	return n
}

// recordingStorage passes everything through and records the keys written or deleted,
// so that a test can invalidate them on another node as Vault does; with onWrite set,
// it calls it with each key right after the write.
type recordingStorage struct {
	logical.Storage

	// mu guards keys and onWrite.
	mu      sync.Mutex
	keys    []string
	onWrite func(key string)
}

func (s *recordingStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if err := s.Storage.Put(ctx, e); err != nil {
		return err
	}
	s.record(e.Key)
	return nil
}

func (s *recordingStorage) Delete(ctx context.Context, key string) error {
	if err := s.Storage.Delete(ctx, key); err != nil {
		return err
	}
	s.record(key)
	return nil
}

func (s *recordingStorage) record(key string) {
	s.mu.Lock()
	s.keys = append(s.keys, key)
	onWrite := s.onWrite
	s.mu.Unlock()
	if onWrite != nil {
		onWrite(key)
	}
}

// drain returns the keys written since the last call.
func (s *recordingStorage) drain() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := s.keys
	s.keys = nil
	return keys
}

// readOnlyStorage is storage as a standby sees it: reads pass, writes fail with Vault's
// read-only error, which reaches a plugin over gRPC as plain text.
type readOnlyStorage struct{ logical.Storage }

func (readOnlyStorage) Put(context.Context, *logical.StorageEntry) error {
	return errors.New(logical.ErrReadOnly.Error())
}

func (readOnlyStorage) Delete(context.Context, string) error {
	return errors.New(logical.ErrReadOnly.Error())
}

// newRecordedEnv is a test backend whose storage writes are recorded.
func newRecordedEnv(tb testing.TB) (*testEnv, *recordingStorage) {
	tb.Helper()
	rec := &recordingStorage{Storage: &logical.InmemStorage{}}
	env := &testEnv{storage: &testStorage{Storage: rec}, clock: newTestClock(), logs: &syncBuffer{}}
	env.start(tb)
	return env, rec
}

// newNode starts another node's backend over storage, on env's clock.
func newNode(tb testing.TB, env *testEnv, storage logical.Storage) *testEnv {
	tb.Helper()
	node := &testEnv{storage: &testStorage{Storage: storage}, clock: env.clock, logs: env.logs}
	node.start(tb)
	return node
}

// gatedStorage holds the first Get of key, after reading it, until release is closed.
type gatedStorage struct {
	logical.Storage
	key              string
	entered, release chan struct{}
	once             sync.Once
}

func (s *gatedStorage) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	entry, err := s.Storage.Get(ctx, key)
	if key == s.key {
		s.once.Do(func() {
			close(s.entered)
			<-s.release
		})
	}
	return entry, err
}

// failingGets fails every Get of keys under prefix while on is set.
type failingGets struct {
	logical.Storage
	prefix string
	on     atomic.Bool
}

func (s *failingGets) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if s.on.Load() && strings.HasPrefix(key, s.prefix) {
		return nil, fmt.Errorf("storage read timed out (test)")
	}
	return s.Storage.Get(ctx, key)
}

// putLegacyRejection stores role's session as v0.1.0 wrote it after the provider
// rejected conn's credentials at rejectedAt, and removes conn's accounts/ record, which
// v0.1.0 did not have.
func (e *testEnv) putLegacyRejection(tb testing.TB, role string, conn *connEntry, rejectedAt time.Time) {
	tb.Helper()
	ctx := context.Background()
	old := fmt.Sprintf(`{"config":%q,"account_version":%d,"last_error":"password grant failed: invalid_grant (HTTP 401)",`+
		`"credentials_rejected_at":%q,"rejected_credentials_version":%d,"rejections":1,"consecutive_failures":1}`,
		conn.name, conn.AccountVersion, rejectedAt.Format(time.RFC3339Nano), conn.CredentialsVersion)
	if err := e.storage.Put(ctx, &logical.StorageEntry{Key: tokenPrefix + role, Value: []byte(old)}); err != nil {
		tb.Fatal(err)
	}
	if err := e.storage.Delete(ctx, accountPrefix+conn.name); err != nil {
		tb.Fatal(err)
	}
}

// withFailingAccountReads is a backend whose storage fails the reads of accounts/
// while the returned switch is on, with Mindbaz's provider and role "app".
func withFailingAccountReads(tb testing.TB) (*testEnv, *fakeProvider, *atomic.Bool) {
	tb.Helper()
	env := getTestBackend(tb)
	fg := &failingGets{Storage: env.storage.Storage, prefix: accountPrefix}
	env.storage.Storage = fg
	return env, withMindbaz(tb, env, 0, nil, nil), &fg.on
}

// withSeededConnection writes connection "seeded" (grant_type=refresh_token) to p and
// role "app" using it.
func withSeededConnection(tb testing.TB, env *testEnv, p *fakeProvider) {
	tb.Helper()
	env.mustOK(tb, logical.UpdateOperation, "config/seeded", map[string]any{
		"grant_type": grantRefresh, "token_url": p.tokenURL(), "ca_cert": p.caPEM(), "client_id": "100",
	})
	env.mustOK(tb, logical.UpdateOperation, "roles/app", map[string]any{"config": "seeded"})
}
