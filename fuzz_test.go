package bearer

import (
	"encoding/base64"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// fuzzStarted is when the fuzzed token requests started.
var fuzzStarted = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

// fuzzSecret is the refresh token the fuzzed request sent: no error may quote it.
const fuzzSecret = "rt-fuzz-secret-0123456789"

// latestExpiry is the latest expiry a token obtained at fuzzStarted may have.
var latestExpiry = fuzzStarted.Add(maxSeconds * time.Second)

// FuzzParseTokenResponse feeds token endpoint answers (status, content type, body) to
// the parser and to the error path. Run with make fuzz; the seeds run in go test.
func FuzzParseTokenResponse(f *testing.F) {
	jwt := testJWT(map[string]any{"exp": fuzzStarted.Add(time.Hour).Unix()})
	seeds := []struct {
		status      int
		contentType string
		body        string
	}{
		{200, "application/json", `{"access_token":"` + jwt + `","token_type":"bearer","expires_in":1199,"refresh_token":"rt-1"}`},
		{200, "application/json;charset=UTF-8", `{"access_token":"a","expires_in":"1800","refresh_expires_in":0,"refresh_token":"r","token_type":"Bearer","not-before-policy":0,"session_state":"5f2c","scope":"profile email"}`},
		{200, "application/json", `{"access_token":"a","expires_at":1772442000}`},
		{200, "application/json", `{"access_token":"a","expires_at":1772442000000}`},
		{200, "application/json", `{"access_token":"a","expires_at":"2026-03-02T10:00:00Z"}`},
		{200, "application/json", `{"access_token":"a","expires_in":1e-12,"expires_at":"0000-01-01T00:00:00Z"}`},
		{200, "application/json", `{"access_token":"a","expires_in":"Infinity","refresh_expires_in":1e308}`},
		{200, "application/json", `{"access_token":"` + jwt + `","expires_in":-5}`},
		{200, "application/x-www-form-urlencoded", "access_token=a&expires_in=60&refresh_token=r"},
		{200, "text/plain", "access_token=a&token_type=mac"},
		{200, "text/html", "<html>ok</html>"},
		{200, "application/json", `{"token_type":"bearer"}`},
		{200, "application/json", `{"access_token":42}`},
		{200, "application/json", `{"access_token":"a"`},
		{200, "application/json", ""},
		{200, "application/json", `{"error":"invalid_grant","error_description":"Session not active"}`},
		{200, "application/json", `{"error":7,"access_token":"a"}`},
		{400, "application/json", `{"error":"invalid_grant","error_description":"token ` + fuzzSecret + ` is not active"}`},
		{401, "application/x-www-form-urlencoded", "error=invalid_client&error_description=bad+secret"},
		{401, "", ""},
		{429, "application/json", `{"error":"slow_down"}`},
		{502, "text/html; charset=utf-8", "<html><body><h1>502 Bad Gateway</h1></body></html>"},
		{503, "application/json", "{\"error\":\"x\",\"error_description\":\"\xff\xfe" + strings.Repeat("é", 400) + "\"}"},
		{999, "\x00;;", "{"},
	}
	for _, s := range seeds {
		f.Add(s.status, s.contentType, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, status int, contentType string, body []byte) {
		fields, parseErr := parseBody(contentType, body)
		if parseErr == nil {
			if tok, err := tokenFromFields(fields, fuzzStarted); err == nil {
				checkParsedToken(t, fields, tok)
			} else if err.Error() != "no access_token in the response" {
				t.Errorf("unexpected error %q", err)
			}
		}

		status = 100 + abs(status)%500
		resp := &http.Response{StatusCode: status, Header: http.Header{"Content-Type": {contentType}}}
		gerr := errorResponse(grantRefresh, resp, fields, parseErr, newRedactor(fuzzSecret), time.Now())
		msg := gerr.Error()
		if !strings.HasPrefix(msg, "refresh_token grant failed: ") || !strings.HasSuffix(msg, " (HTTP "+strconv.Itoa(status)+")") {
			t.Errorf("error %q does not say the grant and the status", msg)
		}
		if len(gerr.code) > maxQuoted+3 || len(gerr.description) > maxQuoted+3 || !utf8.ValidString(gerr.code+gerr.description) {
			t.Errorf("provider text not clipped to valid UTF-8: %q / %q", gerr.code, gerr.description)
		}
		if strings.Contains(msg, fuzzSecret) && !strings.Contains(contentType, fuzzSecret) {
			t.Errorf("error %q quotes the refresh token", msg)
		}
		// A refresh answered 429, 500 or 503 was not processed; another 5xx may come
		// from a gateway after the provider rotated the token; anything else is a refusal.
		want := failRejected
		switch {
		case status == http.StatusTooManyRequests || status == http.StatusInternalServerError || status == http.StatusServiceUnavailable:
			want = failTransient
		case status >= 500:
			want = failAmbiguous
		}
		if gerr.kind != want {
			t.Errorf("HTTP %d classified as %d, want %d", status, gerr.kind, want)
		}
	})
}

// checkParsedToken asserts what holds for every token the parser accepts.
func checkParsedToken(t *testing.T, fields map[string]any, tok *tokenResponse) {
	t.Helper()
	if tok.AccessToken == "" || tok.TokenType == "" {
		t.Errorf("access token %q, token type %q", tok.AccessToken, tok.TokenType)
	}
	checkExpiry(t, fields, tok.AccessToken, tok.ExpiresAt)
	if !tok.RefreshExpiresAt.IsZero() && (tok.RefreshExpiresAt.Before(fuzzStarted) || tok.RefreshExpiresAt.After(latestExpiry)) {
		t.Errorf("refresh token expiry %v out of range", tok.RefreshExpiresAt)
	}
}

// checkExpiry asserts that an access token expiry is set, at most ten years away, and
// after the start unless the provider gave an absolute time.
func checkExpiry(t *testing.T, fields map[string]any, accessToken string, at time.Time) {
	t.Helper()
	if at.IsZero() || at.After(latestExpiry) {
		t.Errorf("expiry %v: never expires in practice", at)
	}
	if !at.After(fuzzStarted) {
		_, absolute := parseExpiresAt(fields["expires_at"])
		if _, jwt := jwtExpiry(accessToken); !absolute && !jwt {
			t.Errorf("expiry %v not after the start without an absolute time (fields %v)", at, fields)
		}
	}
}

// FuzzExpiry feeds values to the expiry readers: number, parseExpiresAt, jwtExpiry
// and the whole expiry rule.
func FuzzExpiry(f *testing.F) {
	for _, s := range []string{
		"1199", " 1800 ", "1.5", "-1", "0", "1e-12", "1e308", "1e400", "NaN", "Inf", "-Infinity", "0x1p-2", "1_000",
		"1772442000", "1772442000000", "999999999999", "1000000000000", "1e15", "1e15000",
		"2026-03-02T10:00:00Z", "2026-03-02T10:00:00+01:00", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "tomorrow", "",
		`{"exp":1772442000}`, `{"exp":"1772442000"}`, `{"exp":1e400}`, `{"exp":null}`, `null`, `[1]`, `{"exp":1772442000000}`,
	} {
		f.Add(s, 1199.0)
	}
	f.Add(testJWT(map[string]any{"exp": 1772442000}), math.Inf(1))
	f.Add("a.b=.c", math.NaN())
	f.Add("...", -1e-300)
	f.Fuzz(func(t *testing.T, s string, x float64) {
		for _, v := range []any{s, json.Number(s), x} {
			if n, ok := number(v); ok && (math.IsNaN(n) || math.IsInf(n, 0)) {
				t.Errorf("number(%#v) = %v", v, n)
			}
			if at, ok := parseExpiresAt(v); ok {
				if at.IsZero() || at.Location() != time.UTC {
					t.Errorf("parseExpiresAt(%#v) = %v", v, at)
				}
				if n, isNum := number(v); isNum && (at.Year() < 1970 || at.UnixMilli() > unixMillisThreshold*1000 || n <= 0) {
					t.Errorf("parseExpiresAt(%#v) = %v out of range", v, at)
				}
			}
		}
		if d := secondsToDuration(x); x > 0 && (d < 0 || d > maxSeconds*time.Second) {
			t.Errorf("secondsToDuration(%v) = %v", x, d)
		}

		// s as a whole token, and as the payload of a JWT.
		payload := base64.RawURLEncoding.EncodeToString([]byte(s))
		for _, token := range []string{s, "eyJhbGciOiJub25lIn0." + payload + ".c2ln"} {
			exp, ok := jwtExpiry(token)
			if ok && (exp.IsZero() || exp.Year() < 1970) {
				t.Errorf("jwtExpiry(%q) = %v", token, exp)
			}
			fields := map[string]any{"expires_in": json.Number(s), "expires_at": s}
			checkExpiry(t, fields, token, expiryFromFields(fields, token, fuzzStarted))
			fields = map[string]any{"expires_in": x, "expires_at": x}
			checkExpiry(t, fields, token, expiryFromFields(fields, token, fuzzStarted))
		}
	})
}

func abs(n int) int {
	if n < 0 {
		if n == math.MinInt {
			return 0
		}
		return -n
	}
	return n
}
