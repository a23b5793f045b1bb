package bearer

import (
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRedactor(t *testing.T) {
	cases := map[string]struct {
		secrets []string
		text    string
		want    string
	}{
		"text without a secret is kept": {
			secrets: []string{oddPassword},
			text:    "invalid user credentials for alice, try again",
			want:    "invalid user credentials for alice, try again",
		},
		"every occurrence": {
			secrets: []string{"s3cr3t-value"},
			text:    "s3cr3t-value and s3cr3t-value",
			want:    "[redacted] and [redacted]",
		},
		"non-ASCII as JSON \\u escapes, either hex case": {
			secrets: []string{"pässwörd"},
			text:    `p\u00e4ssw\u00F6rd`,
			want:    "[redacted]",
		},
		"non-ASCII percent-encoded": {
			secrets: []string{"pässwörd"},
			text:    "p%C3%A4ssw%c3%b6rd",
			want:    "[redacted]",
		},
		"beyond the BMP as a JSON surrogate pair": {
			secrets: []string{"key-😀-1"},
			text:    `key-\ud83d\ude00-1`,
			want:    "[redacted]",
		},
		"HTML numeric entities, decimal and hex": {
			secrets: []string{`a"b'c&d`},
			text:    "a&#34;b&#039;c&#x26;d a&quot;b&apos;c&amp;d",
			want:    "[redacted] [redacted]",
		},
		"encodings mixed inside one occurrence": {
			secrets: []string{oddPassword},
			text:    `p&amp;ss+%3Cw\u003erd \"q\"\/+ x`,
			want:    "[redacted]",
		},
		"the whole escape is taken out, not its first character": {
			secrets: []string{"pass&"},
			text:    "pass&amp; pass%26 pass\\u0026 pass&#38;",
			want:    "[redacted] [redacted] [redacted] [redacted]",
		},
		"overlapping secrets leave no part of either": {
			secrets: []string{"abcd1234", "1234wxyz"},
			text:    "<abcd1234wxyz>",
			want:    "<[redacted]>",
		},
		"a secret inside another": {
			secrets: []string{"pass", "my-password!"},
			text:    "my-password! then pass",
			want:    "[redacted] then [redacted]",
		},
		"overlapping occurrences of one secret": {
			secrets: []string{"abab"},
			text:    "xababab",
			want:    "x[redacted]",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			r := newRedactor(tc.secrets...)
			if got := r.redact(tc.text); got != tc.want {
				t.Errorf("redact(%q) = %q, want %q", tc.text, got, tc.want)
			}
		})
	}
}

func TestRedactor_ProviderText(t *testing.T) {
	cases := map[string]struct {
		secrets           []string
		code, description string
		wantCode, wantDes string
	}{
		"quoted without the secret": {
			secrets: []string{testPassword}, code: "invalid_grant", description: "password " + testPassword + " is wrong",
			wantCode: "invalid_grant", wantDes: "password [redacted] is wrong",
		},
		"free text as the code becomes the description": {
			secrets: []string{testPassword}, code: "Wrong password " + testPassword,
			wantCode: "unrecognized_error", wantDes: "Wrong password [redacted]",
		},
		"a short secret: only a registered code": {
			secrets: []string{testPassword, "ab1"}, code: "invalid_grant", description: "password ab1 is wrong",
			wantCode: "invalid_grant",
		},
		"a short secret: an unregistered code is dropped too": {
			secrets: []string{"ab1"}, code: "ab1", description: "password ab1 is wrong",
		},
		"a secret too large to match: as a short one": {
			secrets: []string{strings.Repeat("&", 1<<20)}, code: "invalid_grant", description: "whatever",
			wantCode: "invalid_grant",
		},
		"invalid UTF-8 in a secret": {
			secrets: []string{"rt-\xff\xfe-token"}, code: "invalid_grant", description: "token rt-\xff\xfe-token",
			wantCode: "invalid_grant", wantDes: "token [redacted]",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, desc := newRedactor(tc.secrets...).providerText(tc.code, tc.description)
			if code != tc.wantCode || desc != tc.wantDes {
				t.Errorf("providerText = %q, %q; want %q, %q", code, desc, tc.wantCode, tc.wantDes)
			}
		})
	}
}

// allForms is every secret in every form of echoForms.
func allForms(secrets ...string) []string {
	var out []string
	for _, s := range secrets {
		for _, encode := range echoForms {
			out = append(out, encode(s))
		}
	}
	return out
}

// echoAll is text with each secret in every form of echoForms.
func echoAll(secrets ...string) string {
	var sb strings.Builder
	for _, s := range allForms(secrets...) {
		sb.WriteString(s + " ")
	}
	return sb.String()
}

func TestRedaction_ThroughTheBackend(t *testing.T) {
	// A provider that echoes the password, the client secret and the refresh token in
	// every form: no error, role or connection read, or log line at trace level shows
	// one of them.
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	var failing atomic.Bool
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		switch {
		case !failing.Load() && form.Get("grant_type") == grantPassword:
			writeJSON(w, http.StatusOK, map[string]any{"access_token": "at-1", "expires_in": 1199, "refresh_token": oddRefresh})
		case form.Get("grant_type") == grantRefresh:
			oauthError(w, http.StatusBadRequest, "invalid_grant", echoAll(form.Get("refresh_token"), form.Get("client_secret")))
		default:
			oauthError(w, http.StatusUnauthorized, "invalid_grant", echoAll(form.Get("password"), form.Get("client_secret")))
		}
		return true
	})
	env.setup(t, p, map[string]any{"password": oddPassword, "client_secret": oddSecret}, nil)
	env.readCreds(t, "app")

	failing.Store(true)
	env.clock.Add(1200 * time.Second)
	texts := map[string]string{"creds read": env.mustFail(t, logical.ReadOperation, "creds/app", nil)}
	const other = `an&other <pass> "word"/+ 2`
	texts["verify failure"] = env.mustFail(t, logical.UpdateOperation, "config/conn", map[string]any{"password": other})
	texts["role read"] = respText(env.mustOK(t, logical.ReadOperation, "roles/app", nil))
	texts["connection read"] = respText(env.mustOK(t, logical.ReadOperation, "config/conn", nil))
	texts["logs"] = env.logs.String()
	if p.calls(grantRefresh) == 0 || p.calls(grantPassword) < 3 {
		t.Fatalf("the provider saw %d refresh grants and %d logins", p.calls(grantRefresh), p.calls(grantPassword))
	}
	for what, text := range texts {
		assertNoSecrets(t, what, text, allForms(oddPassword, oddSecret, oddRefresh, other)...)
	}
	for _, what := range []string{"creds read", "verify failure"} {
		if !strings.Contains(texts[what], "invalid_grant: [redacted] [redacted]") {
			t.Errorf("%s does not quote the provider's description: %s", what, texts[what])
		}
	}
}
