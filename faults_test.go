package bearer

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

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
	lastError string    // whole text, with the placeholders of expand
	rejected  bool      // credentials_rejected_at set to the time of the failure
	sent      bool      // the refresh token carries the write-ahead mark
	at        time.Time // when the failure happened; zero: now
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
		"500 while the cached token is still valid: one request, served at once with a warning": {
			renew:   true,
			advance: 1199*time.Second - 30*time.Second,
			hook:    reply("", http.StatusServiceUnavailable, "application/json", `{"error":"temporarily_unavailable"}`),
			token:   "<old>",
			warning: `served the current token, valid until {old_expiry}, because renewing it failed: could not get a token from connection "conn" ({url}): ` +
				`refresh_token grant failed: temporarily_unavailable (HTTP 503); ` + adviceTransient,
			calls:   map[string]int{grantRefresh: 1, grantPassword: 0},
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: temporarily_unavailable (HTTP 503)"},
		},
		"502 from a gateway on refresh: the refresh token counts as spent": {
			renew:   true,
			hook:    reply(grantRefresh, http.StatusBadGateway, "text/html", "<html>502 Bad Gateway</html>"),
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
		},
		"504 from a gateway on refresh: the refresh token counts as spent": {
			renew:   true,
			hook:    reply(grantRefresh, http.StatusGatewayTimeout, "text/plain", "upstream timed out"),
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{refresh: rtNewest},
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
			// Retry-After 3s inside the 10s request_timeout: three requests at 0, 3 and 6s,
			// the most one attempt sends.
			hook: reply("", http.StatusTooManyRequests, "application/json", `{"error":"slow_down","error_description":"too many requests"}`, "Retry-After", "3"),
			err: `could not get a token from connection "conn" ({url}): refresh_token grant failed: slow_down: too many requests (HTTP 429); ` +
				adviceTransient,
			calls:   map[string]int{grantRefresh: 3, grantPassword: 0},
			retried: true,
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: slow_down: too many requests (HTTP 429)"},
		},
		"slow provider past the timeout: the refresh token is spent, and the attempt's time": {
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
			// The read is answered within request_timeout; nothing is recorded against
			// the provider, so the next read logs in at once (TestRenewal_SlowRefreshThenLogin).
			err: `could not get a token from connection "conn" ({url}): the refresh token was spent and the attempt used up request_timeout before a login: ` +
				`the next read logs in; if this repeats, check the provider and request_timeout`,
			calls:   map[string]int{grantRefresh: 1, grantPassword: 0},
			session: sessionWant{refresh: rtKept, sent: true},
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
			err:     rejectedText("password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"},
		},
		"refresh invalid_grant, then password invalid_grant, while the token is still valid": {
			renew:   true,
			advance: 1199*time.Second - 30*time.Second,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) {
				p.forgetSessions()
				p.setPassword("changed-at-the-provider")
			},
			token:   "<old>",
			warning: "served the current token, valid until {old_expiry}, because renewing it failed: " + rejectedText("password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"),
			calls:   map[string]int{grantRefresh: 1, grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"},
		},
		"invalid_client": {
			hook:    reply(grantPassword, http.StatusUnauthorized, "application/json", `{"error":"invalid_client","error_description":"Invalid client credentials"}`),
			err:     clientRejectedText("password grant failed: invalid_client: Invalid client credentials (HTTP 401)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: invalid_client: Invalid client credentials (HTTP 401)"},
		},
		"unauthorized_client": {
			hook:    reply(grantPassword, http.StatusBadRequest, "application/json", `{"error":"unauthorized_client"}`),
			err:     clientRejectedText("password grant failed: unauthorized_client (HTTP 400)"),
			calls:   map[string]int{grantPassword: 1},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: unauthorized_client (HTTP 400)"},
		},
		"HTTP 401 without an OAuth2 body": {
			hook: reply(grantPassword, http.StatusUnauthorized, "text/plain", ""),
			err:  rejectedText("password grant failed: token endpoint answered Unauthorized (HTTP 401)"),
			calls: map[string]int{
				grantPassword: 1,
			},
			session: sessionWant{failures: 1, rejected: true, lastError: "password grant failed: token endpoint answered Unauthorized (HTTP 401)"},
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
			session: sessionWant{refresh: rtKept, failures: 1, lastError: "refresh_token grant failed: tls: failed to verify certificate: x509: certificate signed by unknown authority"},
		},
		"storage down: the refresh token is not presented": {
			renew:   true,
			arrange: func(t *testing.T, env *testEnv, p *fakeProvider) { env.storage.failPuts.Store(true) },
			err:     `role "app": the refresh token was not presented because storage could not record that it is in use: writing tokens/app: storage unavailable (test)`,
			calls:   map[string]int{grantRefresh: 0, grantPassword: 0},
			session: sessionWant{refresh: rtKept}, // storage still holds the state before the read
		},
		"storage fails after the refresh was sent: the spent refresh token stays marked": {
			renew: true,
			hook: func(p *fakeProvider) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
					if form.Get("grant_type") == grantRefresh {
						p.failStorage.Store(true)
					}
					return false
				}
			},
			err:     `role "app": a new token was obtained but could not be saved; it is kept in memory and saved at the next chance: writing tokens/app: storage unavailable (test)`,
			calls:   map[string]int{grantRefresh: 1, grantPassword: 0},
			session: sessionWant{refresh: rtKept, sent: true}, // the mark written before the refresh
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
			p.failStorage = &env.storage.failPuts
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
				want.refresh = before.Tokens.RefreshToken
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

// clientRejectedText is the error of a read whose password grant the provider just
// rejected as coming from an unknown client.
func clientRejectedText(cause string) string {
	return `connection "conn": the provider rejected the OAuth2 client "100": ` + cause +
		`; to protect the account from lockout no login is tried before {now+15m}: check the client's client_id, client_secret and client_auth at the provider, ` +
		`then update them with vault write bearer/config/conn client_id=<id> client_secret=<secret> client_auth=<body or basic>`
}

// rejectedText is the error of a read whose password grant the provider just rejected.
func rejectedText(cause string) string {
	return `connection "conn" rejected the credentials of user "alice@example.com": ` + cause +
		`; to protect the account from lockout no login is tried before {now+15m}: update the credentials with vault write bearer/config/conn password=<new password> (or client_secret=<new secret>)`
}

// assertSession checks the stored session of a role and what a role read shows of it.
func (e *testEnv) assertSession(tb testing.TB, role string, want sessionWant) {
	tb.Helper()
	st := e.storedSession(tb, role)
	if st.Tokens.RefreshToken != want.refresh {
		tb.Errorf("stored refresh token = %q, want %q", st.Tokens.RefreshToken, want.refresh)
	}
	if sent := !st.Tokens.RefreshSentAt.IsZero(); sent != want.sent {
		tb.Errorf("stored refresh token marked as sent: %v, want %v", sent, want.sent)
	}
	data := e.mustOK(tb, logical.ReadOperation, "roles/"+role, nil).Data
	now := formatTime(cmp.Or(want.at, e.clock.Now()))
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
	if st.Failure.LastError != want.lastError || st.Failure.Failures != want.failures {
		tb.Errorf("stored failure record = %q x%d, want %q x%d", st.Failure.LastError, st.Failure.Failures, want.lastError, want.failures)
	}
	if rej := e.storedRejection(tb, "conn"); want.rejected != (rej != nil) {
		tb.Errorf("stored rejection of the connection = %+v, want one: %v", rej, want.rejected)
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

func TestFaults_RejectedCredentialsBackoff(t *testing.T) {
	const newPassword = "n3w-Passw0rd-after-rotation"
	const newSecret = "n3w-client-s3cret"
	cases := map[string]struct {
		conn  map[string]any
		hook  hookFunc // makes the provider reject the connection's current credentials
		fix   map[string]any
		cause string
		// client: the provider rejects the client, not the password
		client bool
		// extra password grants the fix makes (a verifying write logs in once)
		fixLogins int
	}{
		"password, fixed by a write with verify=false": {
			fix:   map[string]any{"password": newPassword, "verify": false},
			cause: "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)",
		},
		"password, fixed by a verified write": {
			fix:       map[string]any{"password": newPassword},
			cause:     "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)",
			fixLogins: 1,
		},
		"client secret, fixed by a write with verify=false": {
			conn: map[string]any{"client_secret": testSecret},
			hook: func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
				if form.Get("client_secret") == newSecret {
					return false
				}
				oauthError(w, http.StatusUnauthorized, "invalid_client", "Invalid client credentials")
				return true
			},
			fix:    map[string]any{"client_secret": newSecret, "verify": false},
			cause:  "password grant failed: invalid_client: Invalid client credentials (HTTP 401)",
			client: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, "mindbaz", env.clock)
			conn := map[string]any{"verify": false} // no spare session: the first read logs in
			for k, v := range tc.conn {
				conn[k] = v
			}
			env.setup(t, p, conn, nil)
			start := env.clock.Now()
			if tc.hook == nil { // the account's password changes at the provider
				p.setPassword(newPassword)
			}
			var attempts []time.Duration
			p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
				if form.Get("grant_type") == grantPassword {
					attempts = append(attempts, env.clock.Now().Sub(start))
				}
				return tc.hook != nil && tc.hook(w, r, form)
			})

			var errs strings.Builder
			rejectedAt := start
			for i := range 1000 {
				if i > 0 {
					env.clock.Add(3600 * time.Millisecond)
				}
				puts := env.storage.puts.Load()
				msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil)
				errs.WriteString(msg + "\n")
				now := env.clock.Now()
				tried := len(attempts) > 0 && start.Add(attempts[len(attempts)-1]).Equal(now)
				if tried {
					rejectedAt = now
				}
				if !tried && env.storage.puts.Load() != puts {
					t.Errorf("read %d wrote to storage without trying the provider", i)
				}
				what, fix := rejectedParts(tc.client)
				if !strings.HasPrefix(msg, what) || !strings.HasSuffix(msg, fix) {
					t.Fatalf("read %d: error %q does not name the connection and what to do", i, msg)
				}
				switch i {
				case 0: // the attempt itself
					if want := fmt.Sprintf("%s: %s; to protect the account from lockout no login is tried before %s: %s", what, tc.cause, formatTime(now.Add(15*time.Minute)), fix); msg != want {
						t.Errorf("first error:\n got %s\nwant %s", msg, want)
					}
				case 1, 2, 500: // blocked by the backoff
					allowed := map[int]time.Duration{1: 15 * time.Minute, 2: 15 * time.Minute, 500: 45 * time.Minute}[i]
					want := fmt.Sprintf("%s at %s (%s); to protect the account from lockout no login is tried before %s: %s",
						what, formatTime(rejectedAt), tc.cause, formatTime(start.Add(allowed)), fix)
					if msg != want {
						t.Errorf("read %d:\n got %s\nwant %s", i, msg, want)
					}
				}
			}
			want := []time.Duration{0, 15 * time.Minute, 45 * time.Minute}
			if fmt.Sprint(attempts) != fmt.Sprint(want) {
				t.Errorf("password attempts at %v, want %v", attempts, want)
			}
			env.assertSession(t, "app", sessionWant{failures: 3, rejected: true, lastError: tc.cause, at: start.Add(45 * time.Minute)})

			// A write that leaves the credentials alone does not lift the block.
			env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s", "verify": false})
			if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); !strings.Contains(msg, "no login is tried before "+formatTime(start.Add(105*time.Minute))) || len(attempts) != 3 {
				t.Errorf("after a write of request_timeout (%d attempts): %s", len(attempts), msg)
			}

			// Fixing the credentials lifts the block at once.
			env.mustOK(t, logical.UpdateOperation, "config/conn", tc.fix)
			if at := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data["credentials_rejected_at"]; at != "" {
				t.Errorf("credentials_rejected_at = %v after the fix", at)
			}
			resp := env.readCreds(t, "app")
			if len(resp.Warnings) != 0 {
				t.Errorf("warnings: %v", resp.Warnings)
			}
			if got := len(attempts); got != 3+tc.fixLogins+1 {
				t.Errorf("password grants = %d, want %d", got, 3+tc.fixLogins+1)
			}
			state := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
			if state["consecutive_failures"] != 0 || state["credentials_rejected_at"] != "" || state["last_grant"] != grantPassword {
				t.Errorf("role state after the fix: %v", state)
			}

			secrets := append([]string{testPassword, testSecret, newPassword, newSecret}, p.refreshTokens()...)
			assertNoSecrets(t, "errors", errs.String(), secrets...)
			assertNoSecrets(t, "logs", env.logs.String(), secrets...)
		})
	}
}

// rejectedParts are the beginning and the end of the errors of a connection "conn"
// whose password (or, with client, whose client) the provider rejected.
func rejectedParts(client bool) (what, fix string) {
	if client {
		return `connection "conn": the provider rejected the OAuth2 client "100"`,
			"check the client's client_id, client_secret and client_auth at the provider, then update them with vault write bearer/config/conn client_id=<id> client_secret=<secret> client_auth=<body or basic>"
	}
	return `connection "conn" rejected the credentials of user "alice@example.com"`,
		"update the credentials with vault write bearer/config/conn password=<new password> (or client_secret=<new secret>)"
}

func TestFaults_AmbiguousRefreshIsNeverReplayed(t *testing.T) {
	env, p, _, _ := newSession(t)
	used := env.storedSession(t, "app").Tokens.RefreshToken
	env.clock.Add(p.accessTTL)

	// The provider rotates the refresh token and the connection drops before the
	// answer; the password login that follows finds the provider unavailable.
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantRefresh {
			if !p.consume(form.Get("refresh_token")) {
				t.Errorf("the provider got a refresh token that was not live")
			}
			resetConn(w)
			return true
		}
		return reply("", http.StatusServiceUnavailable, "text/plain", "maintenance")(p)(w, r, form)
	})
	msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	want := `could not get a token from connection "conn" (` + p.tokenURL() + `): password grant failed: token endpoint answered Service Unavailable (HTTP 503); ` + adviceTransient
	if msg != want {
		t.Errorf("error:\n got %s\nwant %s", msg, want)
	}
	// The spent refresh token is gone from storage, so a restart cannot bring it back.
	if st := env.storedSession(t, "app"); st.Tokens.RefreshToken != "" || st.Failure.LastError == "" {
		t.Errorf("stored refresh token %q, last error %q: want none and the failure", st.Tokens.RefreshToken, st.Failure.LastError)
	}
	if logs := env.logs.String(); !strings.Contains(logs, `reason="refresh_token grant failed: connection reset before an answer came"`) {
		t.Errorf("the spent refresh token was not logged with its reason:\n%s", logs)
	}

	env.start(t)
	p.setHook(nil)
	refreshes, logins := p.calls(grantRefresh), p.calls(grantPassword)
	env.clock.Add(retryInterval) // the failed attempt's retry window, kept across the restart
	env.readCreds(t, "app")
	if p.calls(grantRefresh) != refreshes || p.calls(grantPassword) != logins+1 {
		t.Errorf("after a restart: %d refresh and %d password grants, want 0 and 1", p.calls(grantRefresh)-refreshes, p.calls(grantPassword)-logins)
	}
	// Later renewals use the new session's refresh tokens, each once.
	for range 3 {
		env.clock.Add(p.accessTTL)
		env.readCreds(t, "app")
	}
	if p.calls(grantRefresh) != refreshes+3 || p.calls(grantPassword) != logins+1 {
		t.Errorf("renewals after the new login: %d refresh and %d password grants, want 3 and 0", p.calls(grantRefresh)-refreshes, p.calls(grantPassword)-logins-1)
	}
	p.assertNoRefreshReuse(t)
	for _, r := range p.requests[len(p.requests)-3:] {
		if r.form.Get("refresh_token") == used {
			t.Error("the spent refresh token was presented again")
		}
	}
	secrets := append([]string{testPassword}, p.refreshTokens()...)
	assertNoSecrets(t, "error", msg, secrets...)
	assertNoSecrets(t, "logs", env.logs.String(), secrets...)
}

func TestFaults_TransientFailuresAreRateLimited(t *testing.T) {
	env, p, pauses, first := newSession(t)
	expiry := env.clock.Now().Add(p.accessTTL)
	env.clock.Add(p.accessTTL - 50*time.Second) // under min_ttl, still valid
	p.setHook(reply("", http.StatusServiceUnavailable, "application/json", `{"error":"temporarily_unavailable","error_description":"down for maintenance"}`)(p))
	cause := `could not get a token from connection "conn" (` + p.tokenURL() + `): refresh_token grant failed: temporarily_unavailable: down for maintenance (HTTP 503); ` + adviceTransient
	staleWarning := func(suffix string) string {
		return "served the current token, valid until " + formatTime(expiry) + ", because renewing it failed: " + cause + suffix
	}

	// read reads creds at the current time and returns how many provider calls it made.
	read := func(wantWarning string) int {
		t.Helper()
		calls := p.calls("")
		resp := env.readCreds(t, "app")
		if resp.Data["access_token"] != first["access_token"] {
			t.Error("the still valid token was not served")
		}
		if got := strings.Join(resp.Warnings, "\n"); got != wantWarning {
			t.Errorf("warning:\n got %s\nwant %s", got, wantWarning)
		}
		return p.calls("") - calls
	}
	// A read that holds a valid token makes one request, no retry, and is served at once.
	start := env.clock.Now()
	pauses.reset()
	if n := read(staleWarning("")); n != 1 || pauses.len() != 0 {
		t.Errorf("first failing read made %d calls with %d retry pauses, want 1 and none", n, pauses.len())
	}
	// The retry window starts at the end of the attempt and doubles: 5 s, then 10 s.
	for range 4 {
		env.clock.Add(time.Second)
		if n := read(staleWarning("; the next attempt is allowed at " + formatTime(start.Add(5*time.Second)))); n != 0 {
			t.Errorf("a read %v after a failed attempt made %d provider calls", env.clock.Now().Sub(start), n)
		}
	}
	env.clock.Add(time.Second)
	if n := read(staleWarning("")); n != 1 {
		t.Errorf("the read 5s after the failed attempt made %d calls, want a new attempt", n)
	}
	second := env.clock.Now()
	env.clock.Add(9 * time.Second)
	if n := read(staleWarning("; the next attempt is allowed at " + formatTime(second.Add(10*time.Second)))); n != 0 {
		t.Errorf("a read 9s after the second failure made %d calls, want none (window 10s)", n)
	}

	// Concurrent readers at a due attempt: one attempt reaches the provider.
	env.clock.Add(time.Second)
	calls := p.calls("")
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := env.request(t, logical.ReadOperation, "creds/app", nil); err != nil || resp.IsError() || len(resp.Warnings) != 1 {
				t.Errorf("concurrent read: %v %v", err, resp)
			}
		}()
	}
	wg.Wait()
	if n := p.calls("") - calls; n != 1 {
		t.Errorf("20 concurrent reads made %d calls: want one attempt", n)
	}
	state := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
	if state["consecutive_failures"] != 3 || state["last_error"] != "refresh_token grant failed: temporarily_unavailable: down for maintenance (HTTP 503)" ||
		state["last_error_at"] != formatTime(env.clock.Now()) || state["next_attempt_at"] != formatTime(env.clock.Now().Add(20*time.Second)) {
		t.Errorf("role state: %v", state)
	}

	// Once the token has expired the failure is an error, still rate limited; that
	// attempt may retry (nothing else can be served).
	advanceTo(env.clock, expiry)
	env.clock.Add(time.Second)
	pauses.reset()
	calls = p.calls("")
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); msg != cause || p.calls("")-calls != 1+pauses.len() || pauses.len() == 0 {
		t.Errorf("the attempt with an expired token (%d calls, %d pauses): %s", p.calls("")-calls, pauses.len(), msg)
	}
	env.clock.Add(time.Second)
	calls = p.calls("")
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); msg != cause+"; the next attempt is allowed at "+formatTime(env.clock.Now().Add(39*time.Second)) || p.calls("") != calls {
		t.Errorf("rate-limited error (%d calls): %s", p.calls("")-calls, msg)
	}
	resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
	if status, _ := rawErrorOf(resp); err != nil || status != http.StatusBadGateway {
		t.Errorf("a provider failure is not a 502: %v %v", resp, err)
	}

	// Recovery: the next attempt succeeds, the failure record is cleared.
	env.clock.Add(40 * time.Second)
	p.setHook(nil)
	resp = env.readCreds(t, "app")
	if len(resp.Warnings) != 0 || resp.Data["access_token"] == first["access_token"] {
		t.Errorf("recovery: warnings %v, token renewed: %v", resp.Warnings, resp.Data["access_token"] != first["access_token"])
	}
	state = env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
	if state["consecutive_failures"] != 0 || state["last_grant"] != grantRefresh || state["last_error"] != "" || state["next_attempt_at"] != "" ||
		state["last_success_at"] != formatTime(env.clock.Now()) {
		t.Errorf("role state after recovery: %v", state)
	}
	assertNoSecrets(t, "logs", env.logs.String(), append([]string{testPassword}, p.refreshTokens()...)...)
}

func TestFaults_RetryAfterBeyondTheTimeout(t *testing.T) {
	env, p, pauses, _ := newSession(t)
	env.clock.Add(p.accessTTL)
	p.setHook(reply("", http.StatusTooManyRequests, "", "", "Retry-After", "120")(p))
	start := env.clock.Now()
	calls := p.calls("")
	cause := `could not get a token from connection "conn" (` + p.tokenURL() + `): refresh_token grant failed: token endpoint answered Too Many Requests (HTTP 429); ` + adviceTransient
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); msg != cause {
		t.Errorf("error:\n got %s\nwant %s", msg, cause)
	}
	if p.calls("") != calls+1 || pauses.len() != 0 {
		t.Errorf("a Retry-After longer than request_timeout: %d calls, %d pauses; want 1 call, no retry", p.calls("")-calls, pauses.len())
	}
	for _, after := range []time.Duration{5 * time.Second, time.Minute, 119 * time.Second} {
		advanceTo(env.clock, start.Add(after))
		want := cause + "; the next attempt is allowed at " + formatTime(start.Add(2*time.Minute))
		if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); msg != want {
			t.Errorf("after %v:\n got %s\nwant %s", after, msg, want)
		}
	}
	if p.calls("") != calls+1 {
		t.Errorf("reads before Retry-After passed reached the provider")
	}
	advanceTo(env.clock, start.Add(2*time.Minute))
	p.setHook(nil)
	env.readCreds(t, "app")
	if p.calls(grantRefresh) != 2 {
		t.Errorf("refresh grants = %d, want 2", p.calls(grantRefresh))
	}
}

func TestFaults_StorageWriteFailure(t *testing.T) {
	cases := map[string]struct {
		// recover persists the session kept in memory once storage works again.
		recover func(t *testing.T, env *testEnv)
	}{
		"saved by the next read": {
			recover: func(t *testing.T, env *testEnv) {
				if resp := env.readCreds(t, "app"); len(resp.Warnings) != 0 {
					t.Errorf("warnings after storage recovered: %v", resp.Warnings)
				}
			},
		},
		"saved by the periodic function": {
			recover: func(t *testing.T, env *testEnv) {
				env.clock.Add(time.Minute)
				env.runPeriodic(t)
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env, p, _, _ := newSession(t)
			used := env.storedSession(t, "app").Tokens.RefreshToken
			env.clock.Add(p.accessTTL)

			// Storage fails while the refresh is at the provider: the write-ahead mark is
			// stored, the new session is not.
			p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
				if form.Get("grant_type") == grantRefresh {
					env.storage.failPuts.Store(true)
				}
				return false
			})
			saveErr := `role "app": a new token was obtained but could not be saved; it is kept in memory and saved at the next chance: writing tokens/app: storage unavailable (test)`
			resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
			if resp != nil || err == nil || err.Error() != saveErr {
				t.Fatalf("read with storage down: %v %v", resp, err)
			}
			if status, _ := rawErrorOf(resp); status != 0 {
				t.Error("a storage failure is reported as a provider failure")
			}
			refreshed := p.newest()
			p.setHook(nil) // storage stays down until the test brings it back

			// Storage is still down: the token kept in memory is served, with a warning.
			calls := p.calls("")
			resp = env.readCreds(t, "app")
			if want := "the role's newest tokens could not be saved to storage yet: writing tokens/app: storage unavailable (test)"; strings.Join(resp.Warnings, "\n") != want {
				t.Errorf("warnings %v, want %q", resp.Warnings, want)
			}
			if p.calls("") != calls {
				t.Error("serving the unsaved token called the provider")
			}
			token := resp.Data["access_token"]

			// The unsaved token expires: the renewal uses the unsaved refresh token.
			env.clock.Add(p.accessTTL)
			if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); msg != saveErr {
				t.Errorf("second renewal with storage down: %s", msg)
			}
			if got := p.lastRequest(t).form.Get("refresh_token"); got != refreshed {
				t.Errorf("the renewal presented %q, want the unsaved %q", got, refreshed)
			}
			if st := env.storedSession(t, "app"); st.Tokens.RefreshToken != used {
				t.Fatal("storage changed while it was failing")
			}

			env.storage.failPuts.Store(false)
			calls = p.calls("")
			tc.recover(t, env)
			if st := env.storedSession(t, "app"); st.Tokens.RefreshToken != p.newest() || st.Tokens.Grant != grantRefresh {
				t.Errorf("stored refresh token %q after recovery, want the newest %q", st.Tokens.RefreshToken, p.newest())
			}
			if p.calls("") != calls {
				t.Error("saving the kept session called the provider")
			}
			if got := env.readCreds(t, "app").Data["access_token"]; got == token {
				t.Error("the token served is not the newest")
			}
			env.start(t) // a restart serves what was saved
			env.clock.Add(p.accessTTL)
			env.readCreds(t, "app")
			if p.calls(grantPassword) != 1 {
				t.Errorf("password grants = %d, want only the verification, whose session the first read took", p.calls(grantPassword))
			}
			p.assertNoRefreshReuse(t)
			assertNoSecrets(t, "logs", env.logs.String(), append([]string{testPassword}, p.refreshTokens()...)...)
		})
	}
}

func TestFaults_ConnectionGone(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	// Another node removed the connection behind the role's back.
	if err := env.storage.Delete(context.Background(), configPrefix+"conn"); err != nil {
		t.Fatal(err)
	}
	env.b.invalidate(context.Background(), configPrefix+"conn")
	resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
	want := `role "app" uses connection "conn", which does not exist: write bearer/config/conn or point the role to another connection`
	if err != nil || resp == nil || !resp.IsError() || resp.Error().Error() != want {
		t.Errorf("read: %v %v, want the 400 %q", resp, err, want)
	}
}

func TestFaults_RejectionHoldsBackEveryRoleOfTheConnection(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, map[string]any{"verify": false}, nil)
	env.mustOK(t, logical.UpdateOperation, "roles/app2", map[string]any{"config": "conn"})
	start := env.clock.Now()
	p.setPassword("rotated-elsewhere")
	logins := p.calls(grantPassword)

	cause := "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"
	for i := range 1000 {
		if i > 0 {
			env.clock.Add(3600 * time.Millisecond)
		}
		role := []string{"app", "app2"}[i%2]
		msg := env.mustFail(t, logical.ReadOperation, "creds/"+role, nil)
		if i == 1 {
			want := `connection "conn" rejected the credentials of user "alice@example.com" at ` + formatTime(start) + " (" + cause + "); " +
				"to protect the account from lockout no login is tried before " + formatTime(start.Add(15*time.Minute)) +
				": update the credentials with vault write bearer/config/conn password=<new password> (or client_secret=<new secret>)"
			if msg != want {
				t.Errorf("the other role's error:\n got %s\nwant %s", msg, want)
			}
		}
	}
	if got := p.calls(grantPassword) - logins; got != 3 {
		t.Errorf("two roles of one connection made %d password attempts in an hour, want 3", got)
	}

	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "rotated-elsewhere", "verify": false})
	env.readCreds(t, "app2")
	env.readCreds(t, "app")
	assertNoSecrets(t, "logs", env.logs.String(), testPassword, "rotated-elsewhere")
}
