package bearer

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestConfig_Presets(t *testing.T) {
	env := getTestBackend(t)
	cases := map[string]struct {
		data  map[string]any
		check map[string]any
	}{
		"mindbaz fills token url, client and refresh token ttl": {
			data: map[string]any{"provider": "mindbaz"},
			check: map[string]any{
				"token_url": "https://sso.mindbaz.com/oauth2/token", "client_id": "100",
				"refresh_token_ttl": int64(168 * 3600), "revocation_url": "",
			},
		},
		"keycloak derives the endpoints from the issuer": {
			data: map[string]any{"provider": "keycloak", "issuer": "https://sso.example.com/realms/acme", "client_id": "cli"},
			check: map[string]any{
				"token_url":      "https://sso.example.com/realms/acme/protocol/openid-connect/token",
				"revocation_url": "https://sso.example.com/realms/acme/protocol/openid-connect/revoke",
				"client_id":      "cli",
			},
		},
		"apiax is keycloak with its realm, client and refresh parameter": {
			data: map[string]any{"provider": "apiax"},
			check: map[string]any{
				"token_url":      "https://auth.apiax.io/auth/realms/apiax/protocol/openid-connect/token",
				"revocation_url": "https://auth.apiax.io/auth/realms/apiax/protocol/openid-connect/revoke",
				"client_id":      "integration-api",
				"refresh_params": map[string]string{"client_assertion_type": assertionType},
			},
		},
		"generic with explicit fields and basic client auth": {
			data: map[string]any{"token_url": "https://api.example.com/token", "client_id": "x", "client_secret": testSecret, "client_auth": "basic"},
			check: map[string]any{
				"provider": "generic", "token_url": "https://api.example.com/token", "client_auth": "basic",
				"client_secret_set": true, "request_timeout": int64(10),
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			data := map[string]any{"username": testUsername, "password": testPassword, "verify": false}
			for k, v := range tc.data {
				data[k] = v
			}
			env.mustOK(t, logical.UpdateOperation, "config/c", data)
			resp := env.mustOK(t, logical.ReadOperation, "config/c", nil)
			for k, want := range tc.check {
				got := resp.Data[k]
				if gm, ok := got.(map[string]string); ok {
					if !mapsEqual(gm, want.(map[string]string)) {
						t.Errorf("%s = %v, want %v", k, got, want)
					}
					continue
				}
				if got != want {
					t.Errorf("%s = %#v, want %#v", k, got, want)
				}
			}
			if resp.Data["password_set"] != true {
				t.Errorf("password_set = %v", resp.Data["password_set"])
			}
			if _, ok := resp.Data["password"]; ok {
				t.Error("config read returned the password")
			}
			if _, ok := resp.Data["client_secret"]; ok {
				t.Error("config read returned the client secret")
			}
			assertNoSecrets(t, "config read", respText(resp), testPassword, testSecret)
			env.mustOK(t, logical.DeleteOperation, "config/c", nil)
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestConfig_PartialUpdateKeepsFields(t *testing.T) {
	env := getTestBackend(t)
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{
		"provider": "mindbaz", "username": testUsername, "password": testPassword, "verify": false,
		"token_url": "https://mindbaz.test/oauth2/token", "request_timeout": "30s",
	})
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"username": "bob", "verify": false})
	resp := env.mustOK(t, logical.ReadOperation, "config/c", nil)
	for k, want := range map[string]any{
		"username": "bob", "token_url": "https://mindbaz.test/oauth2/token", "client_id": "100",
		"request_timeout": int64(30), "password_set": true, "provider": "mindbaz",
	} {
		if resp.Data[k] != want {
			t.Errorf("%s = %#v, want %#v", k, resp.Data[k], want)
		}
	}
	// Switching the preset resets what the preset fills, keeps the account.
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"provider": "apiax", "verify": false})
	resp = env.mustOK(t, logical.ReadOperation, "config/c", nil)
	if resp.Data["client_id"] != "integration-api" || resp.Data["username"] != "bob" || resp.Data["refresh_token_ttl"] != int64(14*24*3600) {
		t.Errorf("after switching to apiax: %#v", resp.Data)
	}
}

func TestConfig_Validation(t *testing.T) {
	env := getTestBackend(t)
	base := func(extra map[string]any) map[string]any {
		d := map[string]any{"token_url": "https://api.example.com/token", "username": testUsername, "password": testPassword, "verify": false}
		for k, v := range extra {
			d[k] = v
		}
		return d
	}
	cases := map[string]struct {
		data map[string]any
		want string
	}{
		"plain http to a remote host":      {base(map[string]any{"token_url": "http://api.example.com/token"}), "token_url must use https:// (http:// is allowed only for loopback hosts)"},
		"not a URL":                        {base(map[string]any{"token_url": "token"}), `token_url "token" is not an absolute URL`},
		"missing username":                 {base(map[string]any{"username": ""}), "username is required"},
		"missing password":                 {map[string]any{"token_url": "https://a.example/t", "username": "u", "verify": false}, "password is required"},
		"generic without token url":        {map[string]any{"username": "u", "password": "p", "verify": false}, "token_url is required for provider=generic"},
		"keycloak without issuer":          {base(map[string]any{"provider": "keycloak", "token_url": ""}), "provider=keycloak needs issuer"},
		"unknown client auth":              {base(map[string]any{"client_auth": "jwt"}), "client_auth must be body, basic or private_key_jwt"},
		"basic auth without client id":     {base(map[string]any{"client_auth": "basic"}), "client_auth=basic needs client_id"},
		"bad ca cert":                      {base(map[string]any{"ca_cert": "not a pem"}), "ca_cert holds no PEM certificate"},
		"http revocation to a remote host": {base(map[string]any{"revocation_url": "http://api.example.com/revoke"}), "revocation_url must use https://"},
		"unknown provider":                 {base(map[string]any{"provider": "okta"}), `unknown provider "okta"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			msg := env.mustFail(t, logical.UpdateOperation, "config/c", tc.data)
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, `connection "c"`) {
				t.Errorf("error %q does not contain %q and the connection name", msg, tc.want)
			}
			assertNoSecrets(t, "error", msg, testPassword)
		})
	}
	// http:// is fine on loopback.
	env.mustOK(t, logical.UpdateOperation, "config/c", base(map[string]any{"token_url": "http://127.0.0.1:9/token"}))
	env.mustOK(t, logical.UpdateOperation, "config/d", base(map[string]any{"token_url": "http://localhost:9/token"}))
}

func TestConfig_Verify(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)

	data := p.connData()
	data["password"] = "wrong-password"
	msg := env.mustFail(t, logical.UpdateOperation, "config/conn", data)
	want := `connection "conn" not saved: verification login as user "alice@example.com" failed: password grant failed: invalid_grant: Invalid user credentials (HTTP 401); check the credentials and endpoint, or write with verify=false to save anyway`
	if msg != want {
		t.Errorf("error:\n got %s\nwant %s", msg, want)
	}
	if resp, _ := env.request(t, logical.ReadOperation, "config/conn", nil); resp != nil {
		t.Fatal("a connection that failed verification was saved")
	}
	if got := p.calls(grantPassword); got != 1 {
		t.Errorf("verification made %d password logins, want 1", got)
	}

	env.mustOK(t, logical.UpdateOperation, "config/conn", p.connData())
	if got := p.calls(grantPassword); got != 2 {
		t.Errorf("password logins = %d, want 2", got)
	}
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"username": testUsername, "verify": false})
	if got := p.calls(""); got != 2 {
		t.Errorf("verify=false still called the provider: %d calls", got)
	}
}

func TestConfig_ListAndDeleteInUse(t *testing.T) {
	env := getTestBackend(t)
	for _, name := range []string{"a", "b"} {
		env.mustOK(t, logical.UpdateOperation, "config/"+name, map[string]any{"token_url": "https://x.example/t", "username": "u", "password": "p", "verify": false})
	}
	resp := env.mustOK(t, logical.ListOperation, "config/", nil)
	if keys := resp.Data["keys"].([]string); strings.Join(keys, ",") != "a,b" {
		t.Errorf("list = %v", keys)
	}
	env.mustOK(t, logical.UpdateOperation, "roles/r2", map[string]any{"config": "a"})
	env.mustOK(t, logical.UpdateOperation, "roles/r1", map[string]any{"config": "a"})
	msg := env.mustFail(t, logical.DeleteOperation, "config/a", nil)
	if msg != `connection "a" is used by roles r1, r2: delete them or point them to another connection first` {
		t.Errorf("delete in use: %s", msg)
	}
	env.mustOK(t, logical.DeleteOperation, "config/b", nil)
	if resp, _ := env.request(t, logical.ReadOperation, "config/b", nil); resp != nil {
		t.Error("deleted connection still readable")
	}
}

// apiKey is a key a token URL carries in its query, fragment or user info: no error or
// log line may quote it.
const apiKey = "SECRET-api-key-4711"

func TestConfig_TokenURLQueryIsNotQuoted(t *testing.T) {
	cases := map[string]struct {
		// base is the token URL without the key; conn adds connection fields.
		base func(t *testing.T, p *fakeProvider) string
		conn func(t *testing.T) map[string]any
		hook hookFunc
	}{
		"connection refused": {base: func(t *testing.T, _ *fakeProvider) string { return refusedURL(t) }},
		"provider answers 503": {
			base: func(_ *testing.T, p *fakeProvider) string { return p.tokenURL() },
			hook: reply("", http.StatusServiceUnavailable, "text/plain", "down")(nil),
		},
		"name does not resolve": {base: func(*testing.T, *fakeProvider) string { return "https://sso.bearer-test.invalid/oauth2/token" }},
		"unknown certificate authority": {
			base: func(_ *testing.T, p *fakeProvider) string { return p.tokenURL() },
			conn: func(t *testing.T) map[string]any { return map[string]any{"ca_cert": otherCAPEM(t)} },
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, "mindbaz", env.clock)
			p.setHook(tc.hook)
			base := tc.base(t, p)
			u, err := url.Parse(base)
			if err != nil {
				t.Fatal(err)
			}
			u.User = url.UserPassword("apiuser", apiKey)
			u.RawQuery, u.Fragment = "api_key="+apiKey, "key="+apiKey
			data := p.connData()
			data["token_url"] = u.String()
			if tc.conn != nil {
				maps.Copy(data, tc.conn(t))
			}

			msg := env.mustFail(t, logical.UpdateOperation, "config/conn", data)
			if !strings.HasPrefix(msg, `connection "conn" not saved: verification login as user "alice@example.com" failed: password grant failed: `) {
				t.Errorf("verify failure: %s", msg)
			}
			assertNoSecrets(t, "verify failure", msg, apiKey, "api_key")

			data["verify"] = false
			env.mustOK(t, logical.UpdateOperation, "config/conn", data)
			env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"config": "conn"})
			msg = env.mustFail(t, logical.ReadOperation, "creds/app", nil)
			if want := `could not get a token from connection "conn" (` + base + `): password grant failed: `; !strings.HasPrefix(msg, want) {
				t.Errorf("creds error:\n got %s\nwant %s...", msg, want)
			}
			assertNoSecrets(t, "creds error", msg, apiKey, "api_key")
			assertNoSecrets(t, "role read", respText(env.mustOK(t, logical.ReadOperation, "roles/app", nil)), apiKey)
			assertNoSecrets(t, "trace logs", env.logs.String(), apiKey)
		})
	}
}

func TestConfig_EndpointErrorsDoNotQuoteTheQuery(t *testing.T) {
	env := getTestBackend(t)
	cases := map[string]struct {
		data map[string]any
		want string
	}{
		"token_url not absolute": {
			data: map[string]any{"token_url": "sso.example.com/token?api_key=" + apiKey + "#k=" + apiKey},
			want: `token_url "sso.example.com/token" is not an absolute URL`,
		},
		"revocation_url not absolute": {
			data: map[string]any{"token_url": "https://sso.example.com/token", "revocation_url": "/revoke?api_key=" + apiKey},
			want: `revocation_url "/revoke" is not an absolute URL`,
		},
		"issuer not absolute": {
			data: map[string]any{"provider": "keycloak", "issuer": "realms/acme?api_key=" + apiKey},
			want: `issuer "realms/acme" is not an absolute URL`,
		},
		"plain http to a remote host": {
			data: map[string]any{"token_url": "http://sso.example.com/token?api_key=" + apiKey},
			want: "token_url must use https:// (http:// is allowed only for loopback hosts)",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			data := map[string]any{"username": testUsername, "password": testPassword, "verify": false}
			maps.Copy(data, tc.data)
			msg := env.mustFail(t, logical.UpdateOperation, "config/c", data)
			if want := `connection "c": ` + tc.want; msg != want {
				t.Errorf("error:\n got %s\nwant %s", msg, want)
			}
			assertNoSecrets(t, "error", msg, apiKey)
		})
	}
}

func TestConfig_PermanentFailuresFailAtOnce(t *testing.T) {
	// A verify login, and then a read, against an endpoint no retry can make work: one
	// attempt (no connection at all when the name does not resolve), no pause.
	for name, pc := range permanentCases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			pauses := env.recordPauses()
			srv, tokenURL, caPEM := pc.endpoint(t)
			data := map[string]any{"token_url": tokenURL, "username": testUsername, "password": testPassword}
			if caPEM != "" {
				data["ca_cert"] = caPEM
			}
			perAttempt := 1
			if pc.dns {
				perAttempt = 0
			}

			msg := env.mustFail(t, logical.UpdateOperation, "config/conn", data)
			const verifyPrefix = `connection "conn" not saved: verification login as user "alice@example.com" failed: password grant failed: `
			const verifySuffix = "; check the credentials and endpoint, or write with verify=false to save anyway"
			pc.checkCause(t, "verify failure", strings.TrimSuffix(msg, verifySuffix), verifyPrefix)
			if accepted, _ := srv.counts(); accepted != perAttempt || pauses.len() != 0 {
				t.Errorf("verify login: %d connections and %d pauses, want %d and none", accepted, pauses.len(), perAttempt)
			}

			data["verify"] = false
			env.mustOK(t, logical.UpdateOperation, "config/conn", data)
			env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"config": "conn"})
			msg = env.mustFail(t, logical.ReadOperation, "creds/app", nil)
			prefix := `could not get a token from connection "conn" (` + tokenURL + `): password grant failed: `
			pc.checkCause(t, "creds error", strings.TrimSuffix(msg, "; "+pc.advice), prefix)
			if accepted, _ := srv.counts(); accepted != 2*perAttempt || pauses.len() != 0 {
				t.Errorf("creds read: %d connections and %d pauses in all, want %d and none", accepted, pauses.len(), 2*perAttempt)
			}
		})
	}
}

// newCountedProvider is a fake provider on a server that counts its connections.
func newCountedProvider(tb testing.TB, style string, clock *testClock) (*fakeProvider, *countedServer) {
	tb.Helper()
	p := &fakeProvider{clock: clock, style: style, password: testPassword, live: map[string]bool{}, accessTTL: 1199 * time.Second}
	srv := newCountedServer(tb, true, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r) }))
	p.srv = srv.Server
	return p, srv
}

func TestConfig_ProviderConnectionsAreClosed(t *testing.T) {
	// A client the engine drops (its connection changed, was invalidated, or the
	// backend is cleaned up) closes its idle provider connections, and so does the
	// verify login's own client: none stays open behind the engine's back.
	env := getTestBackend(t)
	p, srv := newCountedProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	srv.waitOpen(t, "after the verify login", 0)
	env.readCreds(t, "app") // takes the verify login's session
	renew := func(what string) {
		t.Helper()
		env.mustOK(t, logical.UpdateOperation, "creds/app", nil)
		srv.waitOpen(t, what, 1) // kept in the pool for the next request
	}
	renew("after a renewal")
	renew("after another renewal")
	if accepted, _ := srv.counts(); accepted != 2 {
		t.Errorf("%d connections accepted, want 2 (the verify login's, then one reused)", accepted)
	}

	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s", "verify": false})
	srv.waitOpen(t, "after a config write", 0)
	renew("after a renewal with the new client")

	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "30s"})
	srv.waitOpen(t, "after a verified config write", 0)
	renew("after a renewal with the verified client")

	env.b.invalidate(context.Background(), configPrefix+"conn")
	srv.waitOpen(t, "after an invalidation", 0)
	renew("after a renewal with the reloaded client")

	env.b.Cleanup(context.Background())
	srv.waitOpen(t, "after Cleanup", 0)
}

func TestConfig_ConnectionBusyWhenItsClientIsDroppedIsClosed(t *testing.T) {
	// A renewal in flight when its connection changes: the old client is dropped while
	// its connection is busy. When the answer comes, that connection is closed rather
	// than kept idle in a pool nobody uses. When the refresh token turns out dead, the
	// login that follows goes through the connection as it is now: its client's one
	// connection stays open, until Cleanup.
	for name, refused := range map[string]bool{"refresh answered": false, "refresh refused, then a login": true} {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p, srv := newCountedProvider(t, "mindbaz", env.clock)
			env.setup(t, p, nil, nil)
			env.readCreds(t, "app")
			received, release := holdRefresh(p)
			done := make(chan string)
			go func() {
				resp, err := env.request(t, logical.UpdateOperation, "creds/app", nil)
				done <- errorText(resp, err)
			}()
			<-received
			env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s", "verify": false})
			if refused {
				p.forgetSessions()
			}
			release()
			if msg := <-done; msg != "" {
				t.Fatalf("renewal: %s", msg)
			}
			if refused && p.lastRequest(t).grant != grantPassword {
				t.Fatalf("the renewal did not log in after the refused refresh")
			}
			stillOpen := 0
			if refused {
				stillOpen = 1
			}
			srv.waitOpen(t, "after the renewal with the dropped client", stillOpen)
			env.mustOK(t, logical.UpdateOperation, "creds/app", nil)
			env.b.Cleanup(context.Background())
			srv.waitOpen(t, "after Cleanup", 0)
		})
	}
}

// requestsSince returns the requests the provider received after the first n.
func (p *fakeProvider) requestsSince(n int) []providerRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]providerRequest(nil), p.requests[n:]...)
}

func (p *fakeProvider) requestCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.requests)
}

func TestConfig_AccountChangeRevokesAtTheOldProviderOnly(t *testing.T) {
	// When a write changes the connection's account, the role's session is of no use:
	// its refresh token is revoked at the provider that issued it, never sent to the
	// new one, and the next read logs in as the new account.
	cases := map[string]struct {
		change func(a, b *fakeProvider) map[string]any
		// next is the provider the next read logs in at, as user.
		next string
		user string
		// spare: the change comes before any read, while the verify login's session
		// waits for the role's first read.
		spare bool
	}{
		"issuer moved to another provider": {
			change: func(_, b *fakeProvider) map[string]any {
				return map[string]any{"issuer": b.srv.URL + apiaxRealm, "ca_cert": b.caPEM()}
			},
			next: "b", user: testUsername,
		},
		"token_url and revocation_url moved to another provider": {
			change: func(_, b *fakeProvider) map[string]any {
				return map[string]any{"token_url": b.tokenURL(), "revocation_url": b.srv.URL + apiaxRevoke}
			},
			next: "b", user: testUsername,
		},
		"moved before the first read: the verify login's session": {
			change: func(_, b *fakeProvider) map[string]any {
				return map[string]any{"issuer": b.srv.URL + apiaxRealm}
			},
			next: "b", user: testUsername, spare: true,
		},
		"username changed": {
			change: func(*fakeProvider, *fakeProvider) map[string]any { return map[string]any{"username": "bob"} },
			next:   "a", user: "bob",
		},
		"client_id changed": {
			change: func(*fakeProvider, *fakeProvider) map[string]any {
				return map[string]any{"client_id": "another-client"}
			},
			next: "a", user: testUsername,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			a := newFakeProvider(t, "apiax", env.clock)
			b := newFakeProvider(t, "apiax", env.clock)
			b.mu.Lock()
			b.issued = 100 // B's tokens differ from A's
			b.mu.Unlock()
			env.setup(t, a, nil, nil)
			env.readCreds(t, "app")                                  // the verify login's session
			env.mustOK(t, logical.UpdateOperation, "creds/app", nil) // rotated once at A
			roleRT := env.storedSession(t, "app").Tokens.RefreshToken
			if roleRT != a.newest() {
				t.Fatalf("the role holds %q, A issued %q last", roleRT, a.newest())
			}
			seenA := a.requestCount()

			change := tc.change(a, b)
			change["verify"] = false
			env.mustOK(t, logical.UpdateOperation, "config/conn", change)
			env.b.bg.wait()

			after := a.requestsSince(seenA)
			if len(after) != 1 || after[0].path != apiaxRevoke || after[0].form.Get("token") != roleRT ||
				after[0].form.Get("token_type_hint") != "refresh_token" {
				t.Fatalf("A received after the change %+v, want one revocation of %q", after, roleRT)
			}

			resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
			next := map[string]*fakeProvider{"a": a, "b": b}[tc.next]
			login := next.lastRequest(t)
			if login.grant != grantPassword || login.form.Get("username") != tc.user {
				t.Errorf("the next read sent %s as %q to %s, want a password login as %q", login.grant, login.form.Get("username"), tc.next, tc.user)
			}
			if tc.next == "b" {
				if msg := errorText(resp, err); msg != "" || resp.Data["access_token"] != "at-apiax-101" {
					t.Errorf("the next read: %s %v, want B's token", msg, resp.Data["access_token"])
				}
			}
			for _, r := range append(a.requestsSince(seenA+1), b.requestsSince(0)...) {
				if r.grant == grantRefresh {
					t.Errorf("a refresh grant was sent after the account changed: %v", r.form)
				}
			}
			for _, r := range b.requestsSince(0) {
				for field, values := range r.form {
					for _, v := range values {
						assertNoSecrets(t, "B's request field "+field, v, a.refreshTokens()...)
					}
				}
			}
		})
	}
}

func TestConfig_MaxConcurrentRequests(t *testing.T) {
	env := getTestBackend(t)
	base := map[string]any{"token_url": "https://sso.example.com/token", "username": testUsername, "password": testPassword, "verify": false}
	read := func() any {
		t.Helper()
		return env.mustOK(t, logical.ReadOperation, "config/c", nil).Data["max_concurrent_requests"]
	}
	env.mustOK(t, logical.UpdateOperation, "config/c", base)
	if got := read(); got != 4 {
		t.Errorf("default max_concurrent_requests = %#v, want 4", got)
	}
	for _, v := range []any{0, 65, -1, "many"} {
		msg := env.mustFail(t, logical.UpdateOperation, "config/c", map[string]any{"max_concurrent_requests": v, "verify": false})
		if v == "many" {
			if !strings.Contains(msg, "max_concurrent_requests") {
				t.Errorf("max_concurrent_requests=%v: %s", v, msg)
			}
			continue
		}
		if want := `connection "c": max_concurrent_requests must be between 1 and 64`; msg != want {
			t.Errorf("max_concurrent_requests=%v:\n got %s\nwant %s", v, msg, want)
		}
	}
	if got := read(); got != 4 {
		t.Errorf("after refused writes max_concurrent_requests = %#v, want 4", got)
	}
	for _, v := range []int{1, 64, 8} {
		env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"max_concurrent_requests": v, "verify": false})
		if got := read(); got != v {
			t.Errorf("max_concurrent_requests = %#v, want %d", got, v)
		}
	}
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"username": "bob", "request_timeout": "20s", "verify": false})
	if got := read(); got != 8 {
		t.Errorf("after a partial update max_concurrent_requests = %#v, want 8 kept", got)
	}
}

func TestConfig_MaxConcurrentRequestsOfAv010Connection(t *testing.T) {
	// v0.1.0 stored connections without the field: they read as 4, and a partial update
	// keeps 4.
	env := getTestBackend(t)
	v010 := `{"provider":"generic","token_url":"https://sso.example.com/token","client_auth":"body",` +
		`"username":"alice@example.com","password":"` + testPassword + `","request_timeout":10000000000,` +
		`"credentials_version":1,"account_version":1}`
	if err := env.storage.Put(context.Background(), &logical.StorageEntry{Key: configPrefix + "c", Value: []byte(v010)}); err != nil {
		t.Fatal(err)
	}
	if got := env.mustOK(t, logical.ReadOperation, "config/c", nil).Data["max_concurrent_requests"]; got != 4 {
		t.Errorf("max_concurrent_requests = %#v, want 4", got)
	}
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"request_timeout": "20s", "verify": false})
	env.b.invalidate(context.Background(), configPrefix+"c") // read it back from storage
	data := env.mustOK(t, logical.ReadOperation, "config/c", nil).Data
	if data["max_concurrent_requests"] != 4 || data["request_timeout"] != int64(20) {
		t.Errorf("after a partial update: max_concurrent_requests %#v, request_timeout %#v", data["max_concurrent_requests"], data["request_timeout"])
	}
}

func TestConfig_MaxConcurrentRequestsBoundsTheProvider(t *testing.T) {
	// Roles of one connection that all need a login at once: no more than
	// max_concurrent_requests token requests are at the provider together, and a
	// partial update that changes the bound applies to the next requests.
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	var mu sync.Mutex
	var inFlight, most int
	arrived := make(chan struct{}, 64)
	var release chan struct{}
	p.setHook(func(http.ResponseWriter, *http.Request, url.Values) bool {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		wait := release
		mu.Unlock()
		arrived <- struct{}{}
		<-wait
		mu.Lock()
		inFlight--
		mu.Unlock()
		return false // the provider answers
	})
	const roles = 6
	round := func(limit int) {
		t.Helper()
		mu.Lock()
		release, most = make(chan struct{}), 0
		mu.Unlock()
		env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"max_concurrent_requests": limit, "verify": false})
		var wg sync.WaitGroup
		errs := make(chan string, roles)
		for i := range roles {
			wg.Go(func() {
				resp, err := env.request(t, logical.UpdateOperation, fmt.Sprintf("creds/r%d", i), nil)
				errs <- errorText(resp, err)
			})
		}
		for range limit {
			<-arrived
		}
		// Time for requests beyond the bound to arrive, if it did not hold.
		time.Sleep(200 * time.Millisecond)
		close(release)
		wg.Wait()
		close(errs)
		for msg := range errs {
			if msg != "" {
				t.Errorf("read: %s", msg)
			}
		}
		for len(arrived) > 0 {
			<-arrived
		}
		mu.Lock()
		defer mu.Unlock()
		if most != limit {
			t.Errorf("max_concurrent_requests=%d: %d token requests at the provider at once", limit, most)
		}
	}
	release = make(chan struct{})
	close(release)
	env.setup(t, p, nil, nil)
	for i := range roles {
		env.mustOK(t, logical.UpdateOperation, fmt.Sprintf("roles/r%d", i), map[string]any{"config": "conn"})
	}
	<-arrived // the verify login
	round(2)
	round(3)
}

// TestConfig_SecretLineEnd: a password or client secret written with field=- from echo
// or a typed line loses its one trailing line break, and the write says so.
func TestConfig_SecretLineEnd(t *testing.T) {
	for name, tc := range map[string]struct {
		field, written, stored string
		warned                 bool
	}{
		"password with \\n":         {field: "password", written: testPassword + "\n", stored: testPassword, warned: true},
		"password with \\r\\n":      {field: "password", written: testPassword + "\r\n", stored: testPassword, warned: true},
		"only one line break":       {field: "password", written: testPassword + "\n\n", stored: testPassword + "\n", warned: true},
		"client secret with \\n":    {field: "client_secret", written: testSecret + "\n", stored: testSecret, warned: true},
		"a password without one":    {field: "password", written: testPassword, stored: testPassword},
		"a line break inside stays": {field: "password", written: "pa\nss-word", stored: "pa\nss-word"},
	} {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, "mindbaz", env.clock)
			data := p.connData()
			data["verify"] = false
			data[tc.field] = tc.written
			resp := env.mustOK(t, logical.UpdateOperation, "config/conn", data)
			_, entry, _ := env.b.connection(context.Background(), env.storage, "conn")
			got := map[string]string{"password": entry.Password, "client_secret": entry.ClientSecret}[tc.field]
			if got != tc.stored {
				t.Errorf("stored %s = %q, want %q", tc.field, got, tc.stored)
			}
			warned := resp != nil && len(resp.Warnings) == 1 && strings.Contains(resp.Warnings[0], tc.field+" ended with a line break, which was dropped")
			if warned != tc.warned {
				t.Errorf("warnings %v, want one: %v", resp, tc.warned)
			}
			assertNoSecrets(t, "response", respText(resp), testPassword, testSecret)
		})
	}
	// The verify login uses the password without it.
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	data := p.connData()
	data["password"] = testPassword + "\n"
	env.mustOK(t, logical.UpdateOperation, "config/conn", data)
}
