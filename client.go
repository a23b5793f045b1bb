package bearer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-cleanhttp"
)

const (
	// maxResponseBytes caps what is read of a token endpoint's answer.
	maxResponseBytes = 1 << 20
	// fallbackLifetime is assumed when a token response says nothing about expiry.
	fallbackLifetime = 5 * time.Minute
	// firstRetryDelay is the first pause between retries of a transient failure.
	firstRetryDelay = 250 * time.Millisecond
	// maxRetryAfter bounds the pause a provider's Retry-After can impose.
	maxRetryAfter = time.Hour
	// maxQuoted bounds the provider text (error, error_description) quoted in an error.
	maxQuoted = 300

	grantPassword = "password"
	grantRefresh  = "refresh_token"
)

// failureKind says what a failed grant means for the session.
type failureKind int

const (
	// failTransient: the provider did not process the request (429, 5xx, network error
	// before the request was sent); the refresh token is still good.
	failTransient failureKind = iota
	// failRejected: the provider refused the grant (invalid_grant, invalid_client,
	// unauthorized_client, HTTP 401, or another 4xx): for the password grant the
	// credentials are wrong, for the refresh grant the refresh token is dead.
	failRejected
	// failAmbiguous: the request may have reached the provider but no usable answer came
	// back (timeout or reset after sending, an unreadable 2xx body): a refresh token sent
	// this way must be treated as spent.
	failAmbiguous
	// failInvalid: the request could not be built or sent for a reason of our own
	// configuration (bad URL, redirect refused).
	failInvalid
	// failPermanent: the request did not reach the provider for a reason a retry cannot
	// change (the name does not resolve, TLS with a plain-HTTP server, an unknown
	// certificate authority).
	failPermanent
)

// grantError describes a failed token request. Its text quotes the provider's OAuth2
// error and the HTTP status, never the request and never a token.
type grantError struct {
	kind        failureKind
	grant       string
	status      int
	code        string
	description string
	detail      string
	retryAfter  time.Duration
	// badCert marks a TLS certificate the connection does not trust.
	badCert bool
	// outOfTime marks a request not sent because its attempt's time was used up.
	outOfTime bool
}

func (e *grantError) Error() string {
	var sb strings.Builder
	sb.WriteString(e.grant)
	sb.WriteString(" grant failed: ")
	switch {
	case e.code != "" && e.description != "":
		fmt.Fprintf(&sb, "%s: %s", e.code, e.description)
	case e.code != "":
		sb.WriteString(e.code)
	default:
		sb.WriteString(e.detail)
	}
	if e.status != 0 {
		fmt.Fprintf(&sb, " (HTTP %d)", e.status)
	}
	return sb.String()
}

// advice says what to do about the failure; "" when its text already says it.
func (e *grantError) advice() string {
	switch {
	case e.badCert:
		return "check ca_cert and the provider's TLS certificate"
	case e.kind == failPermanent:
		return "check token_url (host name, https) and ca_cert"
	case e.kind == failTransient:
		return "check that the provider is up and that token_url is right, then try again"
	case e.kind == failAmbiguous:
		return "try again; if it persists, check token_url and request_timeout"
	case e.kind == failRejected:
		return "check the connection's token_url, client settings and grant parameters, and the role's scopes"
	}
	return ""
}

// tokenResponse is a parsed, successful token endpoint answer.
type tokenResponse struct {
	AccessToken      string
	TokenType        string
	Scope            string
	ExpiresAt        time.Time
	RefreshToken     string
	RefreshExpiresAt time.Time // zero: the provider did not say
	// Started is when the request that obtained it was sent: expires_in counts from it.
	Started time.Time
}

// tokenClient performs the grants against one connection.
type tokenClient struct {
	conn  *connEntry
	http  *http.Client
	now   func() time.Time
	sleep func(context.Context, time.Duration) error
	// slots bounds the requests in flight to the provider: each request holds one.
	slots chan struct{}
	// observe, when set, is told of every token request's outcome and latency.
	observe func(grant string, err error, latency time.Duration)
	// assertions signs the client assertions of client_auth=private_key_jwt.
	assertions *assertionSigner
}

// maxAttemptRequests is the most requests one attempt sends for one grant: the first
// and two retries of a transient failure.
const maxAttemptRequests = 3

// newHTTPClient returns the HTTP client for a connection: TLS always verified (against
// ca_cert alone when set), redirects never followed.
func newHTTPClient(conn *connEntry) (*http.Client, error) {
	transport := cleanhttp.DefaultPooledTransport()
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if conn.CACert != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM([]byte(conn.CACert)) {
			return nil, errors.New("ca_cert holds no PEM certificate")
		}
		tlsConfig.RootCAs = pool
	}
	transport.TLSClientConfig = tlsConfig
	return &http.Client{
		Transport: &droppableTransport{Transport: transport},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}, nil
}

// droppableTransport is a connection's transport. The engine calls
// CloseIdleConnections when it drops the client; a renewal that still holds the client
// (its connection changed while it was at the provider) may send more requests through
// it, and those close their connection after the answer instead of leaving it idle in
// a pool nobody will close.
type droppableTransport struct {
	*http.Transport
	dropped atomic.Bool
}

func (t *droppableTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.dropped.Load() {
		req = req.Clone(req.Context())
		req.Close = true
	}
	resp, err := t.Transport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	// Dropped while the request was sent: the connection may already be back in the
	// pool when the body is closed.
	resp.Body = &droppableBody{ReadCloser: resp.Body, t: t}
	return resp, nil
}

type droppableBody struct {
	io.ReadCloser
	t *droppableTransport
}

func (b *droppableBody) Close() error {
	err := b.ReadCloser.Close()
	if b.t.dropped.Load() {
		b.t.Transport.CloseIdleConnections()
	}
	return err
}

func (t *droppableTransport) CloseIdleConnections() {
	t.dropped.Store(true)
	t.Transport.CloseIdleConnections()
}

// login starts a session with the connection's grant: the password grant, or the
// client credentials grant. It sends at most requests requests (retrying transient
// failures).
func (c *tokenClient) login(ctx context.Context, scopes []string, requests int, guard *requestGuard) (*tokenResponse, error) {
	if c.conn.grantType() == grantClientCredentials {
		return c.clientCredentialsGrant(ctx, scopes, requests, guard)
	}
	return c.passwordGrantGuarded(ctx, scopes, requests, guard)
}

// passwordGrant logs in with the connection's username and password.
func (c *tokenClient) passwordGrant(ctx context.Context, scopes []string, requests int) (*tokenResponse, error) {
	return c.passwordGrantGuarded(ctx, scopes, requests, nil)
}

// clientCredentialsGrant gets a token for the client itself (RFC 6749 4.4).
func (c *tokenClient) clientCredentialsGrant(ctx context.Context, scopes []string, requests int, guard *requestGuard) (*tokenResponse, error) {
	form := url.Values{}
	for k, v := range c.conn.PasswordParams {
		form.Set(k, v)
	}
	form.Set("grant_type", grantClientCredentials)
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	return c.do(ctx, grantClientCredentials, form, requests, guard)
}

// requestGuard is asked about each request while its request slot is held: before, right
// before it is sent (an error stops it unsent), and after, with its outcome.
type requestGuard struct {
	before func() error
	after  func(err error)
}

// passwordGrantGuarded is passwordGrant with a guard.
func (c *tokenClient) passwordGrantGuarded(ctx context.Context, scopes []string, requests int, guard *requestGuard) (*tokenResponse, error) {
	form := url.Values{}
	for k, v := range c.conn.PasswordParams {
		form.Set(k, v)
	}
	form.Set("grant_type", grantPassword)
	form.Set("username", c.conn.Username)
	form.Set("password", c.conn.Password)
	if c.conn.OfflineAccess && !slices.Contains(scopes, "offline_access") {
		scopes = append(slices.Clone(scopes), "offline_access")
	}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	return c.do(ctx, grantPassword, form, requests, guard)
}

// refreshGrant trades a refresh token for new tokens, sending at most requests requests.
func (c *tokenClient) refreshGrant(ctx context.Context, refreshToken string, requests int) (*tokenResponse, error) {
	form := url.Values{}
	for k, v := range c.conn.RefreshParams {
		form.Set(k, v)
	}
	form.Set("grant_type", grantRefresh)
	form.Set("refresh_token", refreshToken)
	return c.do(ctx, grantRefresh, form, requests, nil)
}

// revoke asks the revocation endpoint (RFC 7009) to end a refresh token's session.
func (c *tokenClient) revoke(ctx context.Context, refreshToken string) error {
	if c.conn.RevocationURL == "" || refreshToken == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.conn.RequestTimeout)
	defer cancel()
	form := url.Values{"token": {refreshToken}, "token_type_hint": {"refresh_token"}}
	req, err := c.newRequest(ctx, c.conn.RevocationURL, form)
	if err != nil {
		return err
	}
	release, err := c.acquire(ctx)
	if err != nil {
		return fmt.Errorf("revocation request not sent: %s", describeNetError(err))
	}
	defer release()
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("revocation request failed: %s", describeNetError(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("revocation endpoint answered HTTP %d", resp.StatusCode)
	}
	return nil
}

func (c *tokenClient) newRequest(ctx context.Context, endpoint string, form url.Values) (*http.Request, error) {
	conn := c.conn
	switch conn.ClientAuth {
	case clientAuthBasic:
		// RFC 6749 2.3.1: both parts are form-encoded before Basic encoding.
	case clientAuthJWT:
		if c.assertions == nil {
			return nil, errors.New("no client assertion signer: check client_private_key")
		}
		assertion, err := c.assertions.sign(c.now())
		if err != nil {
			return nil, errors.New("cannot sign the client assertion: check client_private_key")
		}
		form.Set("client_id", conn.ClientID)
		form.Set("client_assertion_type", assertionTypeJWT)
		form.Set("client_assertion", assertion)
	default:
		if conn.ClientID != "" {
			form.Set("client_id", conn.ClientID)
		}
		if conn.ClientSecret != "" {
			form.Set("client_secret", conn.ClientSecret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, errors.New("cannot build the request: check token_url")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if conn.ClientAuth == clientAuthBasic {
		req.SetBasicAuth(url.QueryEscape(conn.ClientID), url.QueryEscape(conn.ClientSecret))
	}
	return req, nil
}

// acquire takes one of the connection's request slots.
func (c *tokenClient) acquire(ctx context.Context) (func(), error) {
	if c.slots == nil {
		return func() {}, nil
	}
	select {
	case c.slots <- struct{}{}:
		return func() { <-c.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// do sends one grant, retrying transient failures with jittered backoff inside the
// connection's request_timeout, up to requests requests in all.
func (c *tokenClient) do(ctx context.Context, grant string, form url.Values, requests int, guard *requestGuard) (*tokenResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.conn.RequestTimeout)
	defer cancel()
	delay := firstRetryDelay
	var waited time.Duration
	for sent := 1; ; sent++ {
		if ctx.Err() != nil {
			// The attempt's time is up (a hung refresh before this login): not sent.
			return nil, &grantError{kind: failTransient, grant: grant, detail: "no time left within request_timeout", outOfTime: true}
		}
		started := c.now()
		tok, err := c.timed(ctx, grant, form, started, guard)
		var gerr *grantError
		if err == nil || !errors.As(err, &gerr) || gerr.kind != failTransient || sent >= requests {
			return tok, err
		}
		wait := delay/2 + rand.N(delay)
		if gerr.retryAfter > 0 {
			wait = gerr.retryAfter
		}
		// Stop when the pause would not fit in request_timeout, by the clock and by
		// the sum of the pauses so far.
		deadline, _ := ctx.Deadline()
		if time.Until(deadline) <= wait || waited+wait >= c.conn.RequestTimeout {
			return nil, err
		}
		waited += wait
		if c.sleep(ctx, wait) != nil {
			return nil, err
		}
		delay *= 2
	}
}

// timed sends one request holding a slot and reports its outcome.
func (c *tokenClient) timed(ctx context.Context, grant string, form url.Values, started time.Time, guard *requestGuard) (*tokenResponse, error) {
	release, err := c.acquire(ctx)
	if err != nil {
		return nil, &grantError{kind: failTransient, grant: grant, detail: "no request slot free within request_timeout (max_concurrent_requests)"}
	}
	defer release()
	if guard != nil && guard.before != nil {
		if err := guard.before(); err != nil {
			return nil, err
		}
	}
	begin := time.Now()
	tok, err := c.once(ctx, grant, form, started)
	if guard != nil && guard.after != nil {
		guard.after(err)
	}
	if c.observe != nil {
		c.observe(grant, err, time.Since(begin))
	}
	return tok, err
}

// once sends one HTTP request and classifies its outcome.
func (c *tokenClient) once(ctx context.Context, grant string, form url.Values, started time.Time) (*tokenResponse, error) {
	// sent is set from the transport's goroutine once the request's headers are out:
	// from then on the provider may act on it.
	var sent atomic.Bool
	trace := &httptrace.ClientTrace{
		WroteHeaders: func() { sent.Store(true) },
		WroteRequest: func(httptrace.WroteRequestInfo) { sent.Store(true) },
	}
	req, err := c.newRequest(httptrace.WithClientTrace(ctx, trace), c.conn.TokenURL, form)
	if err != nil {
		return nil, &grantError{kind: failInvalid, grant: grant, detail: err.Error()}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var cerr *tls.CertificateVerificationError
		badCert := errors.As(err, &cerr)
		kind := failTransient
		switch {
		case sent.Load():
			kind = failAmbiguous
		case badCert || permanentNetError(err):
			kind = failPermanent
		}
		return nil, &grantError{kind: kind, grant: grant, detail: describeNetError(err), badCert: badCert}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, &grantError{kind: failAmbiguous, grant: grant, status: resp.StatusCode, detail: "reading the response failed: " + describeNetError(err)}
	}
	if len(body) > maxResponseBytes {
		return nil, &grantError{kind: failAmbiguous, grant: grant, status: resp.StatusCode, detail: "response body is larger than 1 MiB"}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		return nil, &grantError{kind: failInvalid, grant: grant, status: resp.StatusCode, detail: fmt.Sprintf("token endpoint redirected to %q; redirects are not followed: set token_url to the final address", redirectTarget(resp))}
	}
	fields, parseErr := parseBody(resp.Header.Get("Content-Type"), body)
	if resp.StatusCode/100 != 2 || fields["error"] != nil {
		if len(bytes.TrimSpace(body)) == 0 {
			parseErr = nil // no body: nothing to say about it
		}
		// The provider's text is quoted: take out what the request sent.
		r := newRedactor(form.Get("password"), form.Get("refresh_token"), form.Get("client_secret"), form.Get("client_assertion"), c.conn.ClientSecret, c.conn.Password)
		// Retry-After dates are the provider's wall clock.
		return nil, errorResponse(grant, resp, fields, parseErr, r, time.Now())
	}
	if parseErr != nil {
		return nil, &grantError{kind: failAmbiguous, grant: grant, status: resp.StatusCode, detail: "unreadable token response: " + parseErr.Error()}
	}
	tok, err := tokenFromFields(fields, started)
	if err != nil {
		return nil, &grantError{kind: failAmbiguous, grant: grant, status: resp.StatusCode, detail: "unusable token response: " + err.Error()}
	}
	return tok, nil
}

// errorResponse classifies a non-2xx answer, or a 2xx one that carries an OAuth2 error.
// The provider's text is quoted without the secrets of r and clipped to maxQuoted.
func errorResponse(grant string, resp *http.Response, fields map[string]any, parseErr error, r redactor, now time.Time) *grantError {
	e := &grantError{grant: grant, status: resp.StatusCode}
	code, _ := fields["error"].(string)
	description, _ := fields["error_description"].(string)
	e.code, e.description = r.providerText(code, description)
	if e.code == "" {
		if parseErr != nil {
			e.detail = fmt.Sprintf("token endpoint answered %s with a body that is not an OAuth2 error (%s)", http.StatusText(resp.StatusCode), mediaType(resp))
		} else {
			e.detail = fmt.Sprintf("token endpoint answered %s", http.StatusText(resp.StatusCode))
		}
	}
	notProcessed := resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusInternalServerError ||
		resp.StatusCode == http.StatusServiceUnavailable
	switch {
	case grant == grantRefresh && resp.StatusCode >= 500 && !notProcessed:
		// A gateway (502, 504, a CDN's 52x) may have forwarded the refresh and lost the
		// answer: the provider may have rotated the refresh token.
		e.kind = failAmbiguous
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		e.kind = failTransient
		e.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	default:
		// Any other answer, a 200 carrying an error included: the grant was refused.
		e.kind = failRejected
	}
	return e
}

// clip shortens provider text to maxQuoted bytes of valid UTF-8.
func clip(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// credentialsRejected reports whether a password grant failure means the account's
// credentials (or the client's) were refused, as opposed to a malformed request.
func (e *grantError) credentialsRejected() bool {
	if e.kind != failRejected {
		return false
	}
	switch e.code {
	case "invalid_grant", "invalid_client", "unauthorized_client":
		return true
	}
	return e.status == http.StatusUnauthorized
}

// clientRejected reports whether the provider refused the client rather than the
// password.
func (e *grantError) clientRejected() bool {
	return e.kind == failRejected && (e.code == "invalid_client" || e.code == "unauthorized_client")
}

// refreshRefusedByConfiguration reports whether a refresh grant was refused for a
// reason of the connection's configuration rather than a dead refresh token.
func (e *grantError) refreshRefusedByConfiguration() bool {
	if e.kind != failRejected {
		return false
	}
	switch e.code {
	case "invalid_request", "invalid_client", "unauthorized_client", "unsupported_grant_type":
		return true
	}
	return false
}

func mediaType(resp *http.Response) string {
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt == "" {
		return "no content type"
	}
	return mt
}

func redirectTarget(resp *http.Response) string {
	loc, err := resp.Location()
	if err != nil {
		return "an unknown location"
	}
	return loc.Scheme + "://" + loc.Host + loc.Path
}

// describeNetError turns a transport error into text without the request URL's query.
func describeNetError(err error) string {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var nerr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &nerr) && nerr.Timeout()):
		return "no answer within request_timeout"
	case errors.Is(err, context.Canceled):
		return "request canceled"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset before an answer came"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed before an answer came"
	}
	return err.Error()
}

// permanentNetError reports transport failures that a retry cannot change: a host name
// that does not resolve, a TLS handshake with a server that does not speak TLS (net/http
// reports a plain-HTTP server's answer as ErrSchemeMismatch, anything else as the TLS
// record header error).
func permanentNetError(err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return true
	}
	if errors.Is(err, http.ErrSchemeMismatch) {
		return true
	}
	var recErr tls.RecordHeaderError
	if errors.As(err, &recErr) {
		return true
	}
	var x509Err x509.UnknownAuthorityError
	return errors.As(err, &x509Err)
}

// parseRetryAfter reads a Retry-After header: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs > 0 {
		return time.Duration(min(secs, int(maxRetryAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), maxRetryAfter)
	}
	return 0
}

// parseBody decodes a token endpoint body: JSON, or a form-encoded body.
func parseBody(contentType string, body []byte) (map[string]any, error) {
	trimmed := bytes.TrimSpace(body)
	mt, _, _ := mime.ParseMediaType(contentType)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.UseNumber()
		var fields map[string]any
		if err := dec.Decode(&fields); err != nil {
			return nil, errors.New("body is not valid JSON")
		}
		return fields, nil
	}
	if mt == "application/x-www-form-urlencoded" || mt == "text/plain" {
		values, err := url.ParseQuery(string(trimmed))
		if err != nil || len(values) == 0 {
			return nil, errors.New("body is neither JSON nor form-encoded")
		}
		fields := make(map[string]any, len(values))
		for k := range values {
			fields[k] = values.Get(k)
		}
		return fields, nil
	}
	if len(trimmed) == 0 {
		return nil, errors.New("body is empty")
	}
	return nil, fmt.Errorf("body is not JSON (content type %q)", mt)
}

// tokenFromFields builds a token from a decoded body, per the expiry rules: expires_in,
// then expires_at, then the access token's JWT exp claim, else five minutes.
func tokenFromFields(fields map[string]any, started time.Time) (*tokenResponse, error) {
	tok := &tokenResponse{Started: started}
	tok.AccessToken, _ = fields["access_token"].(string)
	if tok.AccessToken == "" {
		return nil, errors.New("no access_token in the response")
	}
	tok.TokenType, _ = fields["token_type"].(string)
	if tok.TokenType == "" || strings.EqualFold(tok.TokenType, "bearer") {
		tok.TokenType = "Bearer"
	}
	tok.Scope, _ = fields["scope"].(string)
	tok.RefreshToken, _ = fields["refresh_token"].(string)
	tok.ExpiresAt = expiryFromFields(fields, tok.AccessToken, started)
	if secs, ok := number(fields["refresh_expires_in"]); ok && secs > 0 {
		tok.RefreshExpiresAt = started.Add(secondsToDuration(secs))
	}
	return tok, nil
}

func expiryFromFields(fields map[string]any, accessToken string, started time.Time) time.Time {
	if secs, ok := number(fields["expires_in"]); ok && secs > 0 {
		if d := secondsToDuration(secs); d > 0 {
			return started.Add(d)
		}
	}
	// An absolute time is bounded like expires_in: a token never lives "forever".
	latest := started.Add(maxSeconds * time.Second)
	if at, ok := parseExpiresAt(fields["expires_at"]); ok {
		return minTime(at, latest)
	}
	if exp, ok := jwtExpiry(accessToken); ok {
		return minTime(exp, latest)
	}
	return started.Add(fallbackLifetime)
}

func minTime(a, b time.Time) time.Time {
	if a.After(b) {
		return b
	}
	return a
}

// maxSeconds bounds any provider-given duration to 10 years, far below overflow.
const maxSeconds = 10 * 365 * 24 * 3600

func secondsToDuration(secs float64) time.Duration {
	if secs > maxSeconds {
		secs = maxSeconds
	}
	return time.Duration(secs * float64(time.Second))
}

// number reads a JSON number or a numeric string.
func number(v any) (float64, bool) {
	var s string
	switch t := v.(type) {
	case json.Number:
		s = t.String()
	case string:
		s = strings.TrimSpace(t)
	case float64:
		return t, !math.IsNaN(t) && !math.IsInf(t, 0)
	default:
		return 0, false
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// unixMillisThreshold separates Unix seconds from Unix milliseconds: as seconds it is
// the year 33658, as milliseconds September 2001.
const unixMillisThreshold = 1e12

// parseExpiresAt reads expires_at as Unix seconds, Unix milliseconds or RFC 3339.
func parseExpiresAt(v any) (time.Time, bool) {
	if v == nil {
		return time.Time{}, false
	}
	if f, ok := number(v); ok {
		return unixTime(f)
	}
	s, ok := v.(string)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, false
	}
	return t.UTC(), true
}

func unixTime(f float64) (time.Time, bool) {
	if f <= 0 || f > unixMillisThreshold*1000 {
		return time.Time{}, false
	}
	if f >= unixMillisThreshold {
		return time.UnixMilli(int64(f)).UTC(), true
	}
	return time.Unix(int64(f), 0).UTC(), true
}

// jwtExpiry reads the exp claim of a JWT without verifying it: the token is the
// provider's business, only its lifetime is ours.
func jwtExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims map[string]any
	if dec.Decode(&claims) != nil {
		return time.Time{}, false
	}
	f, ok := number(claims["exp"])
	if !ok {
		return time.Time{}, false
	}
	return unixTime(f)
}

// checkEndpoint allows https everywhere and http only for loopback hosts. Its errors
// quote the URL without its query and fragment, which may carry a key.
func checkEndpoint(field, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%s %q is not an absolute URL", field, displayURL(raw))
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%s must use https:// (http:// is allowed only for loopback hosts)", field)
	default:
		return fmt.Errorf("%s must use https://", field)
	}
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
