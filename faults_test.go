package bearer

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// hookFunc answers a token request in place of the fake provider (returns true) or
// lets it through (returns false).
type hookFunc = func(w http.ResponseWriter, r *http.Request, form url.Values) bool

// Special values of sessionWant.refresh.
const (
	rtKept   = "<kept>"   // the refresh token stored before the read
	rtNewest = "<newest>" // the newest refresh token the fake provider issued
)

// perPause, as a call count, means one call plus one per recorded retry pause.
const perPause = -1

// sessionWant is what tokens/app must hold after a read.
type sessionWant struct {
	refresh   string // "" none, rtKept, rtNewest or the literal token
	failures  int
	lastError string // whole text, with the placeholders of expand
	rejected  bool   // credentials_rejected_at set to the time of the read
}

func TestFaultMatrix(t *testing.T) {
	cases := map[string]struct {
		// renew: the fault hits the renewal of a session whose access token expired
		// (or, with advance, has under min_ttl left); else the first login.
		renew   bool
		advance time.Duration
		arrange func(t *testing.T, env *testEnv, p *fakeProvider)
		hook    func(p *fakeProvider) hookFunc

		err       string // whole error text; "" when the read succeeds
		warning   string // whole warning text of a successful read
		token     string // access token wanted on success ("<old>": the one before)
		expiresIn int64  // expires_in wanted on success (0: the provider's default)
		calls     map[string]int
		retried   bool // the client paused and retried inside request_timeout
		session   sessionWant
	}{
		"500": {
			renew: true,
			hook:  reply(grantRefresh, http.StatusInternalServerError, "text/plain", "internal error\n"),
			err: `could not get a token from connection "conn" ({url}): refresh_token grant failed: token endpoint answered Internal Server Error (HTTP 500); ` +
				adviceTransient,
			calls:   map[string]int{grantRefresh: perPause, grantPassword: 0},
			retried: true,
			session: sessionWant{
				refresh: rtKept, failures: 1,
				lastError: "refresh_token grant failed: token endpoint answered Internal Server Error (HTTP 500)",
			},
		},
		"500 while the cached token is still valid: served with a warning": {
			renew:   true,
			advance: 1199*time.Second - 30*time.Second,
			hook:    reply("", http.StatusServiceUnavailable, "application/json", `{"error":"temporarily_unavailable"}`),
			token:   "<old>",
			warning: `served the current token, valid until {old_expiry}, because renewing it failed: could not get a token from connection "conn" ({url}): ` +
				`refresh_token grant failed: temporarily_unavailable (HTTP 503); ` + adviceTransient,
			calls:   map[string]int{grantRefresh: perPause, grantPassword: 0},
			retried: true,
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: temporarily_unavailable (HTTP 503)"},
		},
		"502 with an HTML body": {
			hook: reply("", http.StatusBadGateway, "text/html; charset=utf-8", "<html><body><h1>502 Bad Gateway</h1></body></html>"),
			err: `could not get a token from connection "conn" ({url}): password grant failed: token endpoint answered Bad Gateway with a body that is not an OAuth2 error (text/html) (HTTP 502); ` +
				adviceTransient,
			calls:   map[string]int{grantPassword: perPause},
			retried: true,
			session: sessionWant{failures: 1, lastError: "password grant failed: token endpoint answered Bad Gateway with a body that is not an OAuth2 error (text/html) (HTTP 502)"},
		},
		"429 with Retry-After": {
			renew: true,
			// Retry-After 3s inside the 10s request_timeout: tries at 0, 3, 6 and 9s.
			hook: reply("", http.StatusTooManyRequests, "application/json", `{"error":"slow_down","error_description":"too many requests"}`, "Retry-After", "3"),
			err: `could not get a token from connection "conn" ({url}): refresh_token grant failed: slow_down: too many requests (HTTP 429); ` +
				adviceTransient,
			calls:   map[string]int{grantRefresh: 4, grantPassword: 0},
			retried: true,
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: slow_down: too many requests (HTTP 429)"},
		},
		"slow provider past the timeout: the refresh token is spent": {
			renew: true,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) {
				env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "1s", "verify": false})
			},
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					if form.Get("grant_type") != grantRefresh {
						return false
					}
					p.consume(form.Get("refresh_token"))
					select { // answer too late: when the client has given up
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
					return true
				}
			},
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"connection refused": {
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) {
				env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"token_url": refusedURL(t), "verify": false})
			},
			err: `could not get a token from connection "conn" ({url}): password grant failed: dial tcp {host}: connect: connection refused; ` +
				adviceTransient,
			calls:   map[string]int{grantPassword: 0},
			retried: true,
			session: sessionWant{failures: 1, lastError: "password grant failed: dial tcp {host}: connect: connection refused"},
		},
		"reset after send: the rotated refresh token is never presented again": {
			renew: true,
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					if form.Get("grant_type") != grantRefresh {
						return false
					}
					p.consume(form.Get("refresh_token"))
					resetConn(w)
					return true
				}
			},
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"reset after sending the password grant": {
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					resetConn(w)
					return true
				}
			},
			err:     `could not get a token from connection "conn" ({url}): password grant failed: ` + netReset + `; ` + adviceAmbiguous,
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, lastError: "password grant failed: " + netReset},
		},
		"body over 1 MiB": {
			hook: reply("", http.StatusOK, "application/json", `{"access_token":"at-big","pad":"`+strings.Repeat("a", maxResponseBytes)+`"}`),
			err: `could not get a token from connection "conn" ({url}): password grant failed: response body is larger than 1 MiB (HTTP 200); ` +
				adviceAmbiguous,
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, lastError: "password grant failed: response body is larger than 1 MiB (HTTP 200)"},
		},
		"non-JSON 200": {
			hook: reply("", http.StatusOK, "text/html", "<html>welcome</html>"),
			err: `could not get a token from connection "conn" ({url}): password grant failed: unreadable token response: body is not JSON (content type "text/html") (HTTP 200); ` +
				adviceAmbiguous,
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, lastError: `password grant failed: unreadable token response: body is not JSON (content type "text/html") (HTTP 200)`},
		},
		"200 without access_token": {
			hook: reply("", http.StatusOK, "application/json", `{"token_type":"bearer","expires_in":1199,"refresh_token":"rt-orphan-rrrrrrrr"}`),
			err: `could not get a token from connection "conn" ({url}): password grant failed: unusable token response: no access_token in the response (HTTP 200); ` +
				adviceAmbiguous,
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, lastError: "password grant failed: unusable token response: no access_token in the response (HTTP 200)"},
		},
		"200 without access_token on refresh: the refresh token is spent": {
			renew:   true,
			hook:    reply(grantRefresh, http.StatusOK, "application/json", `{"token_type":"bearer","expires_in":1199}`),
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"200 with error on refresh": {
			renew:   true,
			hook:    reply(grantRefresh, http.StatusOK, "application/json", `{"error":"invalid_grant","error_description":"Session not active"}`),
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"200 with error on login": {
			hook: reply("", http.StatusOK, "application/json", `{"error":"invalid_scope","error_description":"scope not allowed"}`),
			err: `could not get a token from connection "conn" ({url}): password grant failed: invalid_scope: scope not allowed (HTTP 200); ` +
				adviceRejected,
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, lastError: "password grant failed: invalid_scope: scope not allowed (HTTP 200)"},
		},
		"missing expires_in: the JWT exp is used": {
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					writeJSON(w, http.StatusOK, map[string]any{
						"access_token":  testJWT(map[string]any{"exp": p.clock.Now().Add(600 * time.Second).Unix()}),
						"token_type":    "bearer",
						"refresh_token": "rt-jwt-rrrrrrrr",
					})
					return true
				}
			},
			expiresIn: 600,
			calls:     map[string]int{grantPassword: 1},
			session:   sessionWant{refresh: "rt-jwt-rrrrrrrr"},
		},
		"expires_at in milliseconds": {
			renew: true,
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					writeJSON(w, http.StatusOK, map[string]any{
						"access_token":  "at-ms",
						"expires_at":    p.clock.Now().Add(900 * time.Second).UnixMilli(),
						"refresh_token": "rt-ms-rrrrrrrr",
					})
					return true
				}
			},
			token:     "at-ms",
			expiresIn: 900,
			calls:     map[string]int{grantRefresh: 1, grantPassword: 0},
			session:   sessionWant{refresh: "rt-ms-rrrrrrrr"},
		},
		"refresh invalid_grant": {
			renew:   true,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) { p.forgetSessions() },
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"password invalid_grant": {
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) { p.setPassword("changed-at-the-provider") },
			err:     rejectedError("password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"},
		},
		"invalid_client": {
			hook:    reply(grantPassword, http.StatusUnauthorized, "application/json", `{"error":"invalid_client","error_description":"Invalid client credentials"}`),
			err:     rejectedError("password grant failed: invalid_client: Invalid client credentials (HTTP 401)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: invalid_client: Invalid client credentials (HTTP 401)"},
		},
		"unauthorized_client": {
			hook:    reply(grantPassword, http.StatusBadRequest, "application/json", `{"error":"unauthorized_client"}`),
			err:     rejectedError("password grant failed: unauthorized_client (HTTP 400)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: unauthorized_client (HTTP 400)"},
		},
		"HTTP 401 without an OAuth2 body": {
			hook: reply(grantPassword, http.StatusUnauthorized, "text/plain", ""),
			err:  rejectedError("password grant failed: token endpoint answered Unauthorized with a body that is not an OAuth2 error (text/plain) (HTTP 401)"),
			calls: map[string]int{
				grantPassword: 1,
			},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: token endpoint answered Unauthorized with a body that is not an OAuth2 error (text/plain) (HTTP 401)"},
		},
		"redirect to another host": {
			renew: true,
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					http.Redirect(w, r, "https://sso.elsewhere.example/oauth2/token?next=1", http.StatusTemporaryRedirect)
					return true
				}
			},
			err: `could not get a token from connection "conn" ({url}): refresh_token grant failed: token endpoint redirected to "https://sso.elsewhere.example/oauth2/token"; ` +
				`redirects are not followed: set token_url to the final address (HTTP 307)`,
			calls: map[string]int{grantRefresh: 1, grantPassword: 0},
			session: sessionWant{
				refresh: rtKept, failures: 1,
				lastError: `refresh_token grant failed: token endpoint redirected to "https://sso.elsewhere.example/oauth2/token"; redirects are not followed: set token_url to the final address (HTTP 307)`,
			},
		},
		"bad TLS certificate": {
			renew: true,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) {
				env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"ca_cert": otherCAPEM(t), "verify": false})
			},
			err: `could not get a token from connection "conn" ({url}): refresh_token grant failed: tls: failed to verify certificate: x509: certificate signed by unknown authority; ` +
				adviceCertificate,
			calls:   map[string]int{grantRefresh: 0, grantPassword: 0},
			retried: true,
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		},
		"storage write failure after a refresh": {
			renew:   true,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) { env.storage.failPuts.Store(true) },
			err:     `role "app": a new token was obtained but could not be saved; it is kept in memory and saved at the next chance: writing tokens/app: storage unavailable (test)`,
			calls:   map[string]int{grantRefresh: 1, grantPassword: 0},
			session: sessionWant{refresh: rtKept}, // storage still holds the state before the read
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := getTestBackend(t)
			pauses := env.recordPauses()
			p := newFakeProvider(t, "mindbaz", env.clock)
			env.setup(t, p, map[string]any{"client_secret": testSecret, "verify": false}, nil)
			old := map[string]any{}
			if tc.renew {
				old = env.readCreds(t, "app").Data
				env.clock.Add(cmp.Or(tc.advance, p.accessTTL+time.Second))
			}
			if tc.arrange != nil {
				tc.arrange(t, env, p)
			}
			if tc.hook != nil {
				p.setHook(tc.hook(p))
			}
			before := env.storedSession(t, "app")
			baseline := map[string]int{grantPassword: p.calls(grantPassword), grantRefresh: p.calls(grantRefresh)}
			pauses.reset()
			expand := env.expander(t, p, old)

			resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
			msg := errorText(resp, err)
			if msg != expand(tc.err) {
				t.Errorf("error:\n got %s\nwant %s", msg, expand(tc.err))
			}
			if tc.err == "" && msg == "" {
				checkToken(t, resp, old, tc.token, cmp.Or(tc.expiresIn, 1199))
				if got := strings.Join(resp.Warnings, "\n"); got != expand(tc.warning) {
					t.Errorf("warnings:\n got %s\nwant %s", got, expand(tc.warning))
				}
			}

			n := pauses.len()
			if tc.retried != (n > 0) {
				t.Errorf("retry pauses = %d, want retries: %v", n, tc.retried)
			}
			for grant, want := range tc.calls {
				if want == perPause {
					want = 1 + n
				}
				if got := p.calls(grant) - baseline[grant]; got != want {
					t.Errorf("%s grant calls = %d, want %d", grant, got, want)
				}
			}
			if !tc.retried { // a retry after a transient answer presents the same token on purpose
				p.assertNoRefreshReuse(t)
			}

			env.storage.failPuts.Store(false)
			want := tc.session
			want.lastError = expand(want.lastError)
			switch want.refresh {
			case rtKept:
				want.refresh = before.RefreshToken
			case rtNewest:
				want.refresh = p.newest()
			}
			env.assertSession(t, "app", want)

			secrets := append([]string{testPassword, testSecret}, p.refreshTokens()...)
			assertNoSecrets(t, "response", respText(resp)+msg, secrets...)
			assertNoSecrets(t, "logs", env.logs.String(), secrets...)
		})
	}
}

// Texts of what to do, as the failure messages end.
const (
	adviceTransient   = "check that the provider is up and that token_url is right, then try again"
	adviceCertificate = "check ca_cert and the provider's TLS certificate"
	adviceAmbiguous   = "try again; if it persists, check token_url and request_timeout"
	adviceRejected    = "check the connection's token_url, client settings and grant parameters, and the role's scopes"
)

// netReset is how a connection reset after the request was sent reads.
const netReset = "connection reset before an answer came"

// rejectedError is the error of a read whose password grant the provider just rejected.
func rejectedError(cause string) string {
	return `connection "conn" rejected the credentials of user "alice@example.com": ` + cause +
		`; to protect the account from lockout no login is tried before {now+15m}: update the password with vault write bearer/config/conn password=...`
}

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

func (l *pauseLog) all() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.pauses...)
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

// storedSession reads tokens/<role> from storage; an empty entry when there is none.
func (e *testEnv) storedSession(tb testing.TB, role string) *tokenEntry {
	tb.Helper()
	st := new(tokenEntry)
	if _, err := getJSON(context.Background(), e.storage.Storage, tokenPrefix+role, st); err != nil {
		tb.Fatal(err)
	}
	return st
}

// assertSession checks the stored session of a role and what a role read shows of it.
func (e *testEnv) assertSession(tb testing.TB, role string, want sessionWant) {
	tb.Helper()
	st := e.storedSession(tb, role)
	if st.RefreshToken != want.refresh {
		tb.Errorf("stored refresh token = %q, want %q", st.RefreshToken, want.refresh)
	}
	data := e.mustOK(tb, logical.ReadOperation, "roles/"+role, nil).Data
	now := formatTime(e.clock.Now())
	wantAt, wantRejected := "", ""
	if want.lastError != "" {
		wantAt = now
	}
	if want.rejected {
		wantRejected = now
	}
	for k, v := range map[string]any{
		"last_error": want.lastError, "last_error_at": wantAt,
		"consecutive_failures": want.failures, "credentials_rejected_at": wantRejected,
	} {
		if data[k] != v {
			tb.Errorf("role %s = %#v, want %#v", k, data[k], v)
		}
	}
	if st.LastError != want.lastError || st.ConsecutiveFailures != want.failures {
		tb.Errorf("stored failure record = %q x%d, want %q x%d", st.LastError, st.ConsecutiveFailures, want.lastError, want.failures)
	}
	if want.rejected != !st.CredentialsRejectedAt.IsZero() {
		tb.Errorf("stored credentials_rejected_at = %v, want set: %v", st.CredentialsRejectedAt, want.rejected)
	}
}

// expander replaces the placeholders of expected texts: {url} the connection's token
// URL, {host} its host:port, {now} and {now+15m} times,
// {old_expiry} the expiry of the token read before.
func (e *testEnv) expander(tb testing.TB, p *fakeProvider, old map[string]any) func(string) string {
	tb.Helper()
	tokenURL := e.mustOK(tb, logical.ReadOperation, "config/conn", nil).Data["token_url"].(string)
	u, err := url.Parse(tokenURL)
	if err != nil {
		tb.Fatal(err)
	}
	now := e.clock.Now()
	oldExpiry, _ := old["expires_at"].(string)
	return func(s string) string {
		s = strings.NewReplacer(
			"{url}", tokenURL, "{host}", u.Host, "{now}", formatTime(now),
			"{now+15m}", formatTime(now.Add(15*time.Minute)), "{old_expiry}", oldExpiry,
		).Replace(s)
		return s
	}
}

// errorText is the error of a request, "" when it succeeded.
func errorText(resp *logical.Response, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case resp != nil && resp.IsError():
		return resp.Error().Error()
	}
	return ""
}

// checkToken checks a successful creds read: the token wanted ("<old>": the one in
// old; "": any) and its expires_in.
func checkToken(tb testing.TB, resp *logical.Response, old map[string]any, want string, expiresIn int64) {
	tb.Helper()
	got := resp.Data["access_token"]
	switch want {
	case "":
		if got == "" || got == old["access_token"] {
			tb.Errorf("access_token = %v, want a new token", got)
		}
	case "<old>":
		if got != old["access_token"] || resp.Data["expires_at"] != old["expires_at"] {
			tb.Errorf("access_token = %v, want the one served before", got)
		}
		return
	default:
		if got != want {
			tb.Errorf("access_token = %v, want %s", got, want)
		}
	}
	if resp.Data["expires_in"] != expiresIn {
		tb.Errorf("expires_in = %v, want %d", resp.Data["expires_in"], expiresIn)
	}
}
