package bearer

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testClient is a token client for a test server's /token endpoint that records its
// retry pauses instead of sleeping.
type testClient struct {
	*tokenClient
	srv    *httptest.Server
	mu     sync.Mutex
	pauses []time.Duration
	calls  int
}

func newTestClient(tb testing.TB, timeout time.Duration, handler http.HandlerFunc) *testClient {
	tb.Helper()
	tc := &testClient{}
	tc.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tc.mu.Lock()
		tc.calls++
		tc.mu.Unlock()
		handler(w, r)
	}))
	tb.Cleanup(tc.srv.Close)
	tc.init(tb, tc.srv.URL+"/token", (&fakeProvider{srv: tc.srv}).caPEM(), timeout)
	return tc
}

// init builds the token client for tokenURL, trusting caPEM.
func (tc *testClient) init(tb testing.TB, tokenURL, caPEM string, timeout time.Duration) {
	tb.Helper()
	conn := &connEntry{
		TokenURL: tokenURL, ClientID: "cli", ClientSecret: testSecret, ClientAuth: clientAuthBody,
		Username: testUsername, Password: testPassword, CACert: caPEM, RequestTimeout: timeout,
	}
	hc, err := newHTTPClient(conn)
	if err != nil {
		tb.Fatal(err)
	}
	clock := newTestClock()
	tc.tokenClient = &tokenClient{conn: conn, http: hc, now: clock.Now, sleep: func(ctx context.Context, d time.Duration) error {
		tc.mu.Lock()
		tc.pauses = append(tc.pauses, d)
		tc.mu.Unlock()
		return ctx.Err()
	}}
}

// callCount is how many requests the server received.
func (tc *testClient) callCount() int {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.calls
}

// served answers with a status, a content type and a body, plus header pairs.
func served(status int, contentType, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		reply("", status, contentType, body, header...)(nil)(w, r, nil)
	}
}

func TestClient_RetriesTransientFailures(t *testing.T) {
	cases := map[string]struct {
		handler    http.HandlerFunc
		retryAfter [2]time.Duration // range of every pause, when the provider sets Retry-After
		retried    bool
		err        string
	}{
		"500: jittered backoff": {
			handler: served(http.StatusInternalServerError, "", ""),
			retried: true,
			err:     "password grant failed: token endpoint answered Internal Server Error (HTTP 500)",
		},
		"503 with Retry-After in seconds": {
			handler:    served(http.StatusServiceUnavailable, "application/json", `{"error":"temporarily_unavailable"}`, "Retry-After", "2"),
			retryAfter: [2]time.Duration{2 * time.Second, 2 * time.Second},
			retried:    true,
			err:        "password grant failed: temporarily_unavailable (HTTP 503)",
		},
		"429 with Retry-After as an HTTP date": {
			handler: func(w http.ResponseWriter, r *http.Request) {
				// The date has whole seconds: ask for 5 s to get more than 4 s.
				at := time.Now().Add(5 * time.Second).UTC().Format(http.TimeFormat)
				served(http.StatusTooManyRequests, "", "", "Retry-After", at)(w, r)
			},
			retryAfter: [2]time.Duration{4 * time.Second, 5 * time.Second},
			retried:    true,
			err:        "password grant failed: token endpoint answered Too Many Requests (HTTP 429)",
		},
		"400 invalid_request: not retried": {
			handler: served(http.StatusBadRequest, "application/json", `{"error":"invalid_request","error_description":"missing username"}`),
			err:     "password grant failed: invalid_request: missing username (HTTP 400)",
		},
		"unreadable 200: not retried": {
			handler: served(http.StatusOK, "application/json", `{"access_token":`),
			err:     "password grant failed: unreadable token response: body is not valid JSON (HTTP 200)",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			const timeout = 10 * time.Second
			c := newTestClient(t, timeout, tc.handler)
			_, err := c.passwordGrant(context.Background(), nil, maxAttemptRequests)
			if err == nil || err.Error() != tc.err {
				t.Fatalf("error = %v, want %s", err, tc.err)
			}
			if tc.retried != (len(c.pauses) > 0) {
				t.Fatalf("pauses %v, want retries: %v", c.pauses, tc.retried)
			}
			if c.callCount() != 1+len(c.pauses) {
				t.Errorf("%d calls with %d pauses", c.callCount(), len(c.pauses))
			}
			var total time.Duration
			delay := firstRetryDelay
			for i, p := range c.pauses {
				switch {
				case tc.retryAfter[1] > 0 && (p < tc.retryAfter[0] || p > tc.retryAfter[1]):
					t.Errorf("pause %d = %v, want Retry-After %v", i, p, tc.retryAfter)
				case tc.retryAfter[1] == 0 && (p < delay/2 || p >= delay*3/2):
					t.Errorf("pause %d = %v, want within [%v, %v)", i, p, delay/2, delay*3/2)
				}
				total += p
				delay *= 2
			}
			if total >= timeout {
				t.Errorf("pauses add up to %v, beyond request_timeout %v", total, timeout)
			}
		})
	}
}

func TestClient_RetryStopsAtTheDeadline(t *testing.T) {
	// Real time: a provider that answers 503 after 600ms, with a 1s request_timeout and
	// sleeps that take no time, is tried twice at most before the deadline stops it.
	c := newTestClient(t, time.Second, func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(600 * time.Millisecond)
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	started := time.Now()
	_, err := c.passwordGrant(context.Background(), nil, maxAttemptRequests)
	if err == nil || time.Since(started) > 3*time.Second {
		t.Fatalf("error %v after %v", err, time.Since(started))
	}
	if n := c.callCount(); n > 2 {
		t.Errorf("%d calls inside a 1s request_timeout", n)
	}
}

func TestClient_Classification(t *testing.T) {
	cases := map[string]struct {
		handler  http.HandlerFunc
		kind     failureKind
		rejected bool // the password grant's credentials were rejected
		err      string
		advice   string
	}{
		"invalid_grant": {
			handler: served(http.StatusBadRequest, "application/json", `{"error":"invalid_grant","error_description":"Invalid user credentials"}`),
			kind:    failRejected, rejected: true,
			err:    "password grant failed: invalid_grant: Invalid user credentials (HTTP 400)",
			advice: adviceRejected,
		},
		"invalid_client form-encoded": {
			handler: served(http.StatusUnauthorized, "application/x-www-form-urlencoded", "error=invalid_client&error_description=bad+secret"),
			kind:    failRejected, rejected: true,
			err:    "password grant failed: invalid_client: bad secret (HTTP 401)",
			advice: adviceRejected,
		},
		"401 with a text body": {
			handler: served(http.StatusUnauthorized, "text/html", "<h1>denied</h1>"),
			kind:    failRejected, rejected: true,
			err:    "password grant failed: token endpoint answered Unauthorized with a body that is not an OAuth2 error (text/html) (HTTP 401)",
			advice: adviceRejected,
		},
		"403 without a body: rejected, not the credentials": {
			handler: served(http.StatusForbidden, "", ""),
			kind:    failRejected,
			err:     "password grant failed: token endpoint answered Forbidden (HTTP 403)",
			advice:  adviceRejected,
		},
		"400 invalid_scope": {
			handler: served(http.StatusBadRequest, "application/json", `{"error":"invalid_scope"}`),
			kind:    failRejected,
			err:     "password grant failed: invalid_scope (HTTP 400)",
			advice:  adviceRejected,
		},
		"200 carrying an error": {
			handler: served(http.StatusOK, "application/json", `{"error":"unauthorized_client","error_description":"grant not allowed"}`),
			kind:    failRejected, rejected: true,
			err:    "password grant failed: unauthorized_client: grant not allowed (HTTP 200)",
			advice: adviceRejected,
		},
		"200 form-encoded without access_token": {
			handler: served(http.StatusOK, "text/plain", "token_type=bearer"),
			kind:    failAmbiguous,
			err:     "password grant failed: unusable token response: no access_token in the response (HTTP 200)",
			advice:  adviceAmbiguous,
		},
		"200 with an empty body": {
			handler: served(http.StatusOK, "application/json", ""),
			kind:    failAmbiguous,
			err:     "password grant failed: unreadable token response: body is empty (HTTP 200)",
			advice:  adviceAmbiguous,
		},
		"200 form content type that is not a form": {
			handler: served(http.StatusOK, "application/x-www-form-urlencoded", "%zz"),
			kind:    failAmbiguous,
			err:     "password grant failed: unreadable token response: body is neither JSON nor form-encoded (HTTP 200)",
			advice:  adviceAmbiguous,
		},
		"redirect": {
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://other.example:8443/token?code=1#x", http.StatusFound)
			},
			kind: failInvalid,
			err:  `password grant failed: token endpoint redirected to "https://other.example:8443/token"; redirects are not followed: set token_url to the final address (HTTP 302)`,
		},
		"redirect without a location": {
			handler: served(http.StatusMovedPermanently, "", ""),
			kind:    failInvalid,
			err:     `password grant failed: token endpoint redirected to "an unknown location"; redirects are not followed: set token_url to the final address (HTTP 301)`,
		},
		"reset after the request was sent": {
			handler: func(w http.ResponseWriter, r *http.Request) { resetConn(w) },
			kind:    failAmbiguous,
			err:     "password grant failed: connection reset before an answer came",
			advice:  adviceAmbiguous,
		},
		"closed after the request was sent": {
			handler: func(w http.ResponseWriter, r *http.Request) {
				conn, _, err := w.(http.Hijacker).Hijack()
				if err == nil {
					_ = conn.Close()
				}
			},
			kind:   failAmbiguous,
			err:    "password grant failed: connection closed before an answer came",
			advice: adviceAmbiguous,
		},
		"body cut short": {
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte(`{"access_token":`))
				w.(http.Flusher).Flush()
				resetConn(w)
			},
			kind:   failAmbiguous,
			err:    "password grant failed: reading the response failed: connection reset before an answer came (HTTP 200)",
			advice: adviceAmbiguous,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, 10*time.Second, tc.handler)
			_, err := c.passwordGrant(context.Background(), nil, maxAttemptRequests)
			var gerr *grantError
			if !errors.As(err, &gerr) {
				t.Fatalf("error %v is not a grant error", err)
			}
			if gerr.kind != tc.kind || gerr.credentialsRejected() != tc.rejected {
				t.Errorf("kind %d, credentials rejected %v; want %d, %v", gerr.kind, gerr.credentialsRejected(), tc.kind, tc.rejected)
			}
			if err.Error() != tc.err {
				t.Errorf("error:\n got %s\nwant %s", err, tc.err)
			}
			if gerr.advice() != tc.advice {
				t.Errorf("advice = %q, want %q", gerr.advice(), tc.advice)
			}
			if n := c.callCount(); n != 1 {
				t.Errorf("%d calls, want 1 (no retry)", n)
			}
		})
	}
}

func TestClient_RedirectIsNotFollowed(t *testing.T) {
	var elsewhere int
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere++ }))
	defer other.Close()
	c := newTestClient(t, 10*time.Second, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/token", http.StatusTemporaryRedirect)
	})
	// Trust the other server too: the redirect must not be followed even so.
	c.conn.CACert += (&fakeProvider{srv: other}).caPEM()
	_, err := c.refreshGrant(context.Background(), "rt-secret-value", maxAttemptRequests)
	if err == nil || !strings.Contains(err.Error(), "redirects are not followed") {
		t.Fatalf("error = %v", err)
	}
	if elsewhere != 0 {
		t.Errorf("the redirect target got %d requests", elsewhere)
	}
	assertNoSecrets(t, "error", err.Error(), "rt-secret-value", testSecret)
}

func TestClient_ProviderTextIsSafe(t *testing.T) {
	const rt = "rt-echoed-by-the-provider"
	cases := map[string]struct {
		body string
		err  string
	}{
		"secrets echoed in the description": {
			body: fmt.Sprintf(`{"error":"invalid_grant","error_description":"token %s (client %s) is not active"}`, rt, testSecret),
			err:  "refresh_token grant failed: invalid_grant: token [redacted] (client [redacted]) is not active (HTTP 400)",
		},
		"a huge description is clipped": {
			body: `{"error":"invalid_grant","error_description":"` + strings.Repeat("é", 5000) + `"}`,
			err:  "refresh_token grant failed: invalid_grant: " + strings.Repeat("é", maxQuoted/2) + "... (HTTP 400)",
		},
		"invalid UTF-8": {
			body: "{\"error\":\"invalid_grant\",\"error_description\":\"bad \xff byte\"}",
			err:  "refresh_token grant failed: invalid_grant: bad \uFFFD byte (HTTP 400)",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, 10*time.Second, served(http.StatusBadRequest, "application/json", tc.body))
			_, err := c.refreshGrant(context.Background(), rt, maxAttemptRequests)
			if err == nil || err.Error() != tc.err {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.err)
			}
			assertNoSecrets(t, "error", err.Error(), rt, testSecret, testPassword)
		})
	}
}

func TestClient_Revoke(t *testing.T) {
	cases := map[string]struct {
		handler http.HandlerFunc
		err     string
	}{
		"accepted":         {handler: served(http.StatusOK, "", "")},
		"refused":          {handler: served(http.StatusBadRequest, "", ""), err: "revocation endpoint answered HTTP 400"},
		"connection reset": {handler: func(w http.ResponseWriter, r *http.Request) { resetConn(w) }, err: "revocation request failed: connection reset before an answer came"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, 10*time.Second, tc.handler)
			c.conn.RevocationURL = c.srv.URL + "/revoke"
			err := c.revoke(context.Background(), "rt-to-revoke-1234")
			if got := fmt.Sprint(err); (tc.err == "" && err != nil) || (tc.err != "" && got != tc.err) {
				t.Errorf("error = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	cases := map[string]struct {
		header string
		want   time.Duration
	}{
		"absent":              {"", 0},
		"seconds":             {"3", 3 * time.Second},
		"spaces":              {" 7 ", 7 * time.Second},
		"zero":                {"0", 0},
		"negative":            {"-5", 0},
		"not a number":        {"soon", 0},
		"huge seconds capped": {"99999999999999", maxRetryAfter},
		"http date":           {now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		"past http date":      {now.Add(-time.Minute).Format(http.TimeFormat), 0},
		"far http date":       {now.Add(72 * time.Hour).Format(http.TimeFormat), maxRetryAfter},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := parseRetryAfter(tc.header, now); got != tc.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.header, got, tc.want)
			}
		})
	}
}

func TestTokenFromFields(t *testing.T) {
	started := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	jwt := testJWT(map[string]any{"exp": started.Add(42 * time.Minute).Unix()})
	cases := map[string]struct {
		contentType string
		body        string
		expires     time.Time
		refresh     time.Time // refresh token expiry; zero: unknown
		tokenType   string
		err         string
	}{
		"expires_in number":      {body: `{"access_token":"a","expires_in":1199}`, expires: started.Add(1199 * time.Second)},
		"expires_in string":      {body: `{"access_token":"a","expires_in":" 1800 "}`, expires: started.Add(1800 * time.Second)},
		"expires_in fraction":    {body: `{"access_token":"a","expires_in":1.5}`, expires: started.Add(1500 * time.Millisecond)},
		"expires_in beats exp":   {body: `{"access_token":"` + jwt + `","expires_in":60,"expires_at":1}`, expires: started.Add(time.Minute)},
		"expires_in capped":      {body: `{"access_token":"a","expires_in":1e300}`, expires: started.Add(maxSeconds * time.Second)},
		"expires_at seconds":     {body: fmt.Sprintf(`{"access_token":"a","expires_at":%d}`, started.Add(time.Hour).Unix()), expires: started.Add(time.Hour)},
		"expires_at ms":          {body: fmt.Sprintf(`{"access_token":"a","expires_at":%d}`, started.Add(time.Hour).UnixMilli()), expires: started.Add(time.Hour)},
		"expires_at ms string":   {body: fmt.Sprintf(`{"access_token":"a","expires_at":"%d"}`, started.Add(time.Hour).UnixMilli()), expires: started.Add(time.Hour)},
		"expires_at RFC 3339":    {body: `{"access_token":"a","expires_at":"2026-03-02T10:30:00+01:00"}`, expires: started.Add(30 * time.Minute)},
		"expires_at in the past": {body: `{"access_token":"a","expires_at":"2026-03-02T08:00:00Z"}`, expires: started.Add(-time.Hour)},
		"expires_at far future":  {body: `{"access_token":"a","expires_at":"9999-12-31T23:59:59Z"}`, expires: started.Add(maxSeconds * time.Second)},
		"JWT exp":                {body: `{"access_token":"` + jwt + `"}`, expires: started.Add(42 * time.Minute)},
		"zero expires_in: JWT":   {body: `{"access_token":"` + jwt + `","expires_in":0}`, expires: started.Add(42 * time.Minute)},
		"tiny expires_in: JWT":   {body: `{"access_token":"` + jwt + `","expires_in":1e-12}`, expires: started.Add(42 * time.Minute)},
		"bad expiry: fallback":   {body: `{"access_token":"a.b.c","expires_in":"Infinity","expires_at":"tomorrow"}`, expires: started.Add(fallbackLifetime)},
		"NaN: fallback":          {body: `{"access_token":"a","expires_in":"NaN"}`, expires: started.Add(fallbackLifetime)},
		"nothing: fallback":      {body: `{"access_token":"a"}`, expires: started.Add(fallbackLifetime)},
		"refresh_expires_in":     {body: `{"access_token":"a","expires_in":60,"refresh_expires_in":3600}`, expires: started.Add(time.Minute), refresh: started.Add(time.Hour)},
		"refresh_expires_in 0":   {body: `{"access_token":"a","expires_in":60,"refresh_expires_in":0}`, expires: started.Add(time.Minute)},
		"token_type kept":        {body: `{"access_token":"a","expires_in":60,"token_type":"DPoP"}`, expires: started.Add(time.Minute), tokenType: "DPoP"},
		"form-encoded": {
			contentType: "application/x-www-form-urlencoded", body: "access_token=a&expires_in=60&token_type=bearer",
			expires: started.Add(time.Minute),
		},
		"empty access_token":   {body: `{"access_token":"","expires_in":60}`, err: "no access_token in the response"},
		"numeric access_token": {body: `{"access_token":12345}`, err: "no access_token in the response"},
		"not JSON":             {contentType: "text/html", body: "<html>", err: `body is not JSON (content type "text/html")`},
		"broken JSON":          {body: `{"access_token":"a"`, err: "body is not valid JSON"},
		"empty":                {body: " \n", err: "body is empty"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			fields, err := parseBody(cmp.Or(tc.contentType, "application/json"), []byte(tc.body))
			var tok *tokenResponse
			if err == nil {
				tok, err = tokenFromFields(fields, started)
			}
			if tc.err != "" || err != nil {
				if fmt.Sprint(err) != tc.err {
					t.Fatalf("error = %v, want %q", err, tc.err)
				}
				return
			}
			if !tok.ExpiresAt.Equal(tc.expires) || !tok.RefreshExpiresAt.Equal(tc.refresh) {
				t.Errorf("expires %v, refresh expires %v; want %v, %v", tok.ExpiresAt, tok.RefreshExpiresAt, tc.expires, tc.refresh)
			}
			if want := cmp.Or(tc.tokenType, "Bearer"); tok.TokenType != want {
				t.Errorf("token_type = %q, want %q", tok.TokenType, want)
			}
		})
	}
}

func TestDescribeNetError(t *testing.T) {
	cases := map[string]struct {
		err  error
		want string
	}{
		"deadline":   {&url.Error{Op: "Post", URL: "https://x/token?secret=1", Err: context.DeadlineExceeded}, "no answer within request_timeout"},
		"canceled":   {&url.Error{Op: "Post", URL: "https://x/token?secret=1", Err: context.Canceled}, "request canceled"},
		"reset":      {&url.Error{Op: "Post", URL: "https://x/token?secret=1", Err: fmt.Errorf("read: %w", syscall.ECONNRESET)}, "connection reset before an answer came"},
		"eof":        {&url.Error{Op: "Post", URL: "https://x/token?secret=1", Err: io.EOF}, "connection closed before an answer came"},
		"short body": {io.ErrUnexpectedEOF, "connection closed before an answer came"},
		"other":      {&url.Error{Op: "Post", URL: "https://x/token?secret=1", Err: errors.New("dial tcp: lookup x: no such host")}, "dial tcp: lookup x: no such host"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := describeNetError(tc.err); got != tc.want {
				t.Errorf("describeNetError = %q, want %q", got, tc.want)
			}
		})
	}
}

// Secrets with characters that every encoding changes: & < > " / + and a space.
const (
	oddPassword = `p&ss <w>rd "q"/+ x`
	oddSecret   = `c&s<e>c"r/e+t k`
	oddRefresh  = `rt&<>"/+ 1234=`
)

// echoForms are the ways a provider may echo back a secret it received.
var echoForms = map[string]func(string) string{
	"as sent":                          func(s string) string { return s },
	"query-escaped":                    url.QueryEscape,
	"path-escaped":                     url.PathEscape,
	"form-encoded":                     func(s string) string { return strings.TrimPrefix(url.Values{"x": {s}}.Encode(), "x=") },
	"JSON-escaped (\\u0026 escapes)":   func(s string) string { return jsonEscaped(s, true) },
	"JSON-escaped (no HTML escapes)":   func(s string) string { return jsonEscaped(s, false) },
	"query-escaped, lower-case hex":    func(s string) string { return lowerHex(url.QueryEscape(s)) },
	"JSON-escaped (\\/ as PHP writes)": func(s string) string { return strings.ReplaceAll(jsonEscaped(s, false), "/", `\/`) },
	"HTML-escaped":                     html.EscapeString,
	"HTML-escaped (&quot;)":            func(s string) string { return strings.ReplaceAll(html.EscapeString(s), "&#34;", "&quot;") },
}

// lowerHex writes the percent escapes of s with lower-case hex digits, as .NET does.
func lowerHex(s string) string {
	return regexp.MustCompile(`%[0-9A-F]{2}`).ReplaceAllStringFunc(s, strings.ToLower)
}

// jsonEscaped is s inside a JSON string, with or without encoding/json's HTML escapes
// (\u0026 for &, \u003c for <): other encoders write & and < as they are.
func jsonEscaped(s string, escapeHTML bool) string {
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(escapeHTML)
	_ = enc.Encode(s)
	out := strings.TrimSpace(sb.String())
	return out[1 : len(out)-1]
}

func TestClient_EchoedSecretsAreRedacted(t *testing.T) {
	// The provider echoes a secret it received in error_description; the error names
	// the grant, the code and the status, and only "[redacted]" in the secret's place.
	type grant struct {
		name    string
		do      func(c *testClient) error
		secrets map[string]string // form field: the secret sent in it
	}
	grants := []grant{
		{
			name:    grantPassword,
			do:      func(c *testClient) error { _, err := c.passwordGrant(context.Background(), nil, 1); return err },
			secrets: map[string]string{"password": oddPassword, "client_secret": oddSecret},
		},
		{
			name:    grantRefresh,
			do:      func(c *testClient) error { _, err := c.refreshGrant(context.Background(), oddRefresh, 1); return err },
			secrets: map[string]string{"refresh_token": oddRefresh, "client_secret": oddSecret},
		},
	}
	for _, g := range grants {
		for field, secret := range g.secrets {
			for form, encode := range echoForms {
				t.Run(g.name+"/"+field+"/"+form, func(t *testing.T) {
					c := newTestClient(t, 10*time.Second, func(w http.ResponseWriter, r *http.Request) {
						_ = r.ParseForm()
						oauthError(w, http.StatusBadRequest, "invalid_request", "got "+encode(r.PostForm.Get(field)))
					})
					c.conn.Password, c.conn.ClientSecret = oddPassword, oddSecret
					err := g.do(c)
					want := g.name + " grant failed: invalid_request: got [redacted] (HTTP 400)"
					if err == nil || err.Error() != want {
						t.Fatalf("error:\n got %v\nwant %s", err, want)
					}
					assertNoSecrets(t, "error", err.Error(), secret, encode(secret))
				})
			}
		}
		t.Run(g.name+"/the request body", func(t *testing.T) {
			c := newTestClient(t, 10*time.Second, func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				oauthError(w, http.StatusBadRequest, "invalid_request", string(body))
			})
			c.conn.Password, c.conn.ClientSecret = oddPassword, oddSecret
			err := g.do(c)
			for _, secret := range g.secrets {
				for form, encode := range echoForms {
					assertNoSecrets(t, "error ("+form+")", fmt.Sprint(err), encode(secret))
				}
			}
			if n := strings.Count(fmt.Sprint(err), "[redacted]"); n != len(g.secrets) {
				t.Errorf("error %v has %d redactions, want %d", err, n, len(g.secrets))
			}
		})
	}
}

func TestClient_ShortSecretDropsProviderText(t *testing.T) {
	// A secret under 4 bytes cannot be taken out of text safely: the provider's text is
	// not quoted, only a registered error code, with the grant and the status.
	cases := map[string]struct {
		password, secret, refresh string
		body                      string
		status                    int
		err                       string
		rejected                  bool
	}{
		"short password, registered code": {
			password: "ab1", status: http.StatusUnauthorized,
			body: `{"error":"invalid_grant","error_description":"password ab1 is wrong"}`,
			err:  "password grant failed: invalid_grant (HTTP 401)", rejected: true,
		},
		"short password, unregistered code": {
			password: "ab1", status: http.StatusBadRequest,
			body: `{"error":"wrong_ab1","error_description":"password ab1 is wrong"}`,
			err:  "password grant failed: token endpoint answered Bad Request (HTTP 400)",
		},
		"short password, free text as the code": {
			password: "ab1", status: http.StatusBadRequest,
			body: `{"error":"Password ab1 is wrong"}`,
			err:  "password grant failed: token endpoint answered Bad Request (HTTP 400)",
		},
		"short client secret": {
			password: testPassword, secret: "xy", status: http.StatusUnauthorized,
			body: `{"error":"invalid_client","error_description":"secret xy unknown"}`,
			err:  "password grant failed: invalid_client (HTTP 401)", rejected: true,
		},
		"short refresh token": {
			password: testPassword, refresh: "r1", status: http.StatusBadRequest,
			body: `{"error":"invalid_grant","error_description":"token r1 is not active"}`,
			err:  "refresh_token grant failed: invalid_grant (HTTP 400)", rejected: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := newTestClient(t, 10*time.Second, served(tc.status, "application/json", tc.body))
			c.conn.Password, c.conn.ClientSecret = tc.password, tc.secret
			var err error
			if tc.refresh != "" {
				_, err = c.refreshGrant(context.Background(), tc.refresh, maxAttemptRequests)
			} else {
				_, err = c.passwordGrant(context.Background(), nil, maxAttemptRequests)
			}
			var gerr *grantError
			if !errors.As(err, &gerr) || err.Error() != tc.err {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.err)
			}
			if gerr.credentialsRejected() != tc.rejected {
				t.Errorf("credentials rejected: %v, want %v", gerr.credentialsRejected(), tc.rejected)
			}
		})
	}
}

// countedServer is a test server that counts its connections: accepted in all, and
// open now.
type countedServer struct {
	*httptest.Server
	mu       sync.Mutex
	accepted int
	open     map[net.Conn]bool
}

// newCountedServer starts a server with handler, speaking TLS or plain HTTP.
func newCountedServer(tb testing.TB, useTLS bool, handler http.Handler) *countedServer {
	tb.Helper()
	cs := &countedServer{Server: httptest.NewUnstartedServer(handler), open: map[net.Conn]bool{}}
	cs.Config.ConnState = func(c net.Conn, state http.ConnState) {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		switch state {
		case http.StateNew:
			cs.accepted++
			cs.open[c] = true
		case http.StateClosed, http.StateHijacked:
			delete(cs.open, c)
		}
	}
	// The handshake errors a test provokes are expected.
	cs.Config.ErrorLog = log.New(io.Discard, "", 0)
	if useTLS {
		cs.StartTLS()
	} else {
		cs.Start()
	}
	tb.Cleanup(cs.Close)
	return cs
}

func (cs *countedServer) counts() (accepted, open int) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.accepted, len(cs.open)
}

// waitOpen waits up to 5 s for the server to see want connections open.
func (cs *countedServer) waitOpen(tb testing.TB, what string, want int) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, open := cs.counts()
		if open == want {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %d provider connections open, want %d", what, open, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// httpsURL is the server's address with https:// whatever it speaks.
func (cs *countedServer) httpsURL() string {
	return "https://" + cs.Listener.Addr().String() + "/token"
}

// permanentCase is a provider endpoint that no retry can make work.
type permanentCase struct {
	useTLS  bool   // the server speaks TLS
	dns     bool   // the token URL's host does not resolve (no server is contacted)
	otherCA bool   // the connection trusts another CA than the server's
	cause   string // the error after "<grant> grant failed: " ("" for DNS: checked apart)
	advice  string
}

// unresolvableURL is under the reserved .invalid TLD: resolving it fails at once, also
// offline.
const unresolvableURL = "https://sso.bearer-test.invalid/token"

var permanentCases = map[string]permanentCase{
	"name does not resolve": {dns: true, advice: "check token_url (host name, https) and ca_cert"},
	"TLS with a plain-HTTP server": {
		cause:  "http: server gave HTTP response to HTTPS client",
		advice: "check token_url (host name, https) and ca_cert",
	},
	"unknown certificate authority": {
		useTLS: true, otherCA: true,
		cause:  "tls: failed to verify certificate: x509: certificate signed by unknown authority",
		advice: adviceCertificate,
	},
}

// endpoint starts the case's server and returns it with the token URL and CA to use.
func (pc permanentCase) endpoint(tb testing.TB) (srv *countedServer, tokenURL, caPEM string) {
	tb.Helper()
	srv = newCountedServer(tb, pc.useTLS, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tb.Errorf("the server answered a request: %s %s", r.Method, r.URL)
	}))
	tokenURL = srv.httpsURL()
	switch {
	case pc.dns:
		tokenURL = unresolvableURL
	case pc.otherCA:
		caPEM = otherCAPEM(tb)
	case pc.useTLS:
		caPEM = (&fakeProvider{srv: srv.Server}).caPEM()
	}
	return srv, tokenURL, caPEM
}

// checkCause checks the failure text after the grant's prefix.
func (pc permanentCase) checkCause(tb testing.TB, what, got, prefix string) {
	tb.Helper()
	if pc.dns {
		// The resolver's address is the machine's.
		if !strings.HasPrefix(got, prefix+"dial tcp: lookup sso.bearer-test.invalid") || !strings.HasSuffix(got, "no such host") {
			tb.Errorf("%s: %s", what, got)
		}
		return
	}
	if got != prefix+pc.cause {
		tb.Errorf("%s:\n got %s\nwant %s", what, got, prefix+pc.cause)
	}
}

func TestClient_PermanentFailuresAreNotRetried(t *testing.T) {
	for name, pc := range permanentCases {
		for _, grant := range []string{grantPassword, grantRefresh} {
			t.Run(name+"/"+grant, func(t *testing.T) {
				srv, tokenURL, caPEM := pc.endpoint(t)
				c := &testClient{}
				c.init(t, tokenURL, caPEM, 10*time.Second)
				var err error
				if grant == grantPassword {
					_, err = c.passwordGrant(context.Background(), nil, maxAttemptRequests)
				} else {
					_, err = c.refreshGrant(context.Background(), "rt-not-retried-1234", maxAttemptRequests)
				}
				var gerr *grantError
				if !errors.As(err, &gerr) {
					t.Fatalf("error %v is not a grant error", err)
				}
				if gerr.kind != failPermanent {
					t.Errorf("kind %d, want failPermanent", gerr.kind)
				}
				pc.checkCause(t, "error", err.Error(), grant+" grant failed: ")
				if gerr.advice() != pc.advice {
					t.Errorf("advice = %q, want %q", gerr.advice(), pc.advice)
				}
				if len(c.pauses) != 0 {
					t.Errorf("retried after pauses %v", c.pauses)
				}
				wantConns := 1
				if pc.dns {
					wantConns = 0
				}
				if accepted, _ := srv.counts(); accepted != wantConns {
					t.Errorf("the server accepted %d connections, want %d", accepted, wantConns)
				}
			})
		}
	}
}

func TestPermanentNetError(t *testing.T) {
	// The DNS case as the resolver reports it, and the temporary failures that are not
	// permanent: a server that is down, a resolver that is.
	cases := map[string]struct {
		err  error
		want bool
	}{
		"no such host":         {&url.Error{Op: "Post", Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "x.invalid", IsNotFound: true}}}, true},
		"resolver timed out":   {&url.Error{Op: "Post", Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "i/o timeout", Name: "x.example", IsTimeout: true}}}, false},
		"resolver failing":     {&url.Error{Op: "Post", Err: &net.OpError{Op: "dial", Err: &net.DNSError{Err: "server misbehaving", Name: "x.example", IsTemporary: true}}}, false},
		"refused":              {&url.Error{Op: "Post", Err: &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}}, false},
		"plain HTTP answer":    {&url.Error{Op: "Post", Err: http.ErrSchemeMismatch}, true},
		"neither TLS nor HTTP": {&url.Error{Op: "Post", Err: tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}}, true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := permanentNetError(tc.err); got != tc.want {
				t.Errorf("permanentNetError = %v, want %v", got, tc.want)
			}
		})
	}
	// And the real lookup of a reserved name.
	_, err := net.DefaultResolver.LookupHost(context.Background(), "sso.bearer-test.invalid")
	if !permanentNetError(err) {
		t.Errorf("looking up a .invalid name: %v is not permanent", err)
	}
}
