package bearer

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
)

func TestCreds_FormBodies(t *testing.T) {
	cases := map[string]struct {
		style       string
		conn, role  map[string]any
		password    url.Values
		refresh     url.Values
		basicClient string
	}{
		"mindbaz": {
			style: "mindbaz",
			password: url.Values{
				"grant_type": {"password"}, "username": {testUsername}, "password": {testPassword}, "client_id": {"100"},
			},
			// The first read takes the verify login's session (rt-1).
			refresh: url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-mindbaz-1-rrrrrrrr"}, "client_id": {"100"}},
		},
		"apiax": {
			style: "apiax",
			role:  map[string]any{"scopes": "profile,email"},
			password: url.Values{
				"grant_type": {"password"}, "username": {testUsername}, "password": {testPassword}, "client_id": {"integration-api"},
				"scope": {"profile email"},
			},
			refresh: url.Values{
				"grant_type": {"refresh_token"}, "refresh_token": {"rt-apiax-2-rrrrrrrr"}, "client_id": {"integration-api"},
				"client_assertion_type": {assertionType},
			},
		},
		"extra params and a client secret in the body": {
			style: "mindbaz",
			conn:  map[string]any{"client_secret": testSecret, "password_params": "audience=api", "refresh_params": "audience=api"},
			password: url.Values{
				"grant_type": {"password"}, "username": {testUsername}, "password": {testPassword}, "client_id": {"100"},
				"client_secret": {testSecret}, "audience": {"api"},
			},
			refresh: url.Values{
				"grant_type": {"refresh_token"}, "refresh_token": {"rt-mindbaz-1-rrrrrrrr"}, "client_id": {"100"},
				"client_secret": {testSecret}, "audience": {"api"},
			},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, tc.style, env.clock)
			env.setup(t, p, tc.conn, tc.role)
			env.readCreds(t, "app")
			// The last password grant: the role's, or with no scopes the verify login's.
			if got := p.lastRequest(t).form; got.Encode() != tc.password.Encode() {
				t.Errorf("password grant form:\n got %s\nwant %s", got.Encode(), tc.password.Encode())
			}
			env.clock.Add(p.accessTTL)
			env.readCreds(t, "app")
			if got := p.lastRequest(t).form; got.Encode() != tc.refresh.Encode() {
				t.Errorf("refresh grant form:\n got %s\nwant %s", got.Encode(), tc.refresh.Encode())
			}
		})
	}
}

func TestCreds_BasicClientAuth(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	var header string
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		header = r.Header.Get("Authorization")
		if form.Get("client_id") != "" || form.Get("client_secret") != "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", "client credentials in the body")
			return true
		}
		writeJSON(w, http.StatusOK, map[string]any{"access_token": "at", "expires_in": 60})
		return true
	})
	env.setup(t, p, map[string]any{"provider": "generic", "client_id": "my client", "client_secret": "p@ss:word", "client_auth": "basic"}, nil)
	env.readCreds(t, "app")
	want := "Basic " + base64.StdEncoding.EncodeToString([]byte("my+client:p%40ss%3Aword"))
	if header != want {
		t.Errorf("Authorization = %q, want %q", header, want)
	}
}

func TestCreds_ResponseAndCache(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)

	resp := env.readCreds(t, "app")
	if resp.Secret != nil {
		t.Error("creds read returned a lease")
	}
	d := resp.Data
	expires := env.clock.Now().Add(1199 * time.Second)
	want := map[string]any{
		"token_type": "Bearer", "expires_at": expires.Format(time.RFC3339), "expires_in": int64(1199),
		"ttl": int64(1199 - 60), "rotation_period": int64(1199),
	}
	for k, v := range want {
		if d[k] != v {
			t.Errorf("%s = %#v, want %#v", k, d[k], v)
		}
	}
	if at, _ := d["access_token"].(string); strings.Count(at, ".") != 2 {
		t.Errorf("access_token %q is not the provider's JWT", at)
	}
	if _, ok := d["refresh_token"]; ok {
		t.Error("creds returned the refresh token")
	}
	if _, ok := d["scope"]; ok {
		t.Error("scope returned although the provider sent none")
	}

	// Cache hits: no provider call, no storage operation.
	calls, ops := p.calls(""), env.storage.ops()
	for i := 0; i < 50; i++ {
		env.clock.Add(10 * time.Second)
		if got := env.readCreds(t, "app").Data["access_token"]; got != d["access_token"] {
			t.Fatal("a cached read returned another token")
		}
	}
	if p.calls("") != calls || env.storage.ops() != ops {
		t.Errorf("cached reads made %d provider calls and %d storage operations", p.calls("")-calls, env.storage.ops()-ops)
	}
	if ttl := env.readCreds(t, "app").Data["ttl"]; ttl != int64(1199-60-500) {
		t.Errorf("ttl after 500s = %v", ttl)
	}

	// Under min_ttl left: renewed with the refresh token.
	env.clock.Add(1199*time.Second - 500*time.Second - 59*time.Second)
	d2 := env.readCreds(t, "app").Data
	if d2["access_token"] == d["access_token"] || p.calls(grantRefresh) != 1 {
		t.Errorf("token with 59s left was not refreshed (refresh calls %d)", p.calls(grantRefresh))
	}

	// A min_ttl query parameter asks for more, capped at half the lifetime.
	env.clock.Add(1199*time.Second - 300*time.Second)
	resp = env.mustOK(t, logical.ReadOperation, "creds/app", map[string]any{"min_ttl": "200s"})
	if resp.Data["access_token"] != d2["access_token"] {
		t.Error("min_ttl=200s renewed a token with 300s left")
	}
	resp = env.mustOK(t, logical.ReadOperation, "creds/app", map[string]any{"min_ttl": "1h"})
	if resp.Data["access_token"] == d2["access_token"] {
		t.Error("min_ttl=1h (capped at half the lifetime, 599s) did not renew a token with 300s left")
	}
}

func TestCreds_MinTTLCap(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	p.accessTTL = 20 * time.Second
	env.setup(t, p, nil, nil) // min_ttl 60s > lifetime: capped at 10s
	firstResp := env.readCreds(t, "app")
	first := firstResp.Data
	if first["ttl"] != int64(10) || first["rotation_period"] != int64(20) {
		t.Errorf("ttl=%v rotation_period=%v, want 10 and 20", first["ttl"], first["rotation_period"])
	}
	capped := "min_ttl 1m0s is more than half of this connection's token lifetime (20s): tokens are served with at least 10s left, and renewed at that point"
	if strings.Join(firstResp.Warnings, "\n") != capped {
		t.Errorf("warnings %v, want %q", firstResp.Warnings, capped)
	}
	env.clock.Add(10 * time.Second)
	if env.readCreds(t, "app").Data["access_token"] != first["access_token"] {
		t.Error("token with exactly half its life left was renewed")
	}
	env.clock.Add(time.Second)
	if env.readCreds(t, "app").Data["access_token"] == first["access_token"] {
		t.Error("token with under half its life left was not renewed")
	}
	// A role write whose min_ttl exceeds what the tokens last, once that is known, warns.
	resp := env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"min_ttl": "15s"})
	if resp == nil || len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], "min_ttl 15s is more than half of this connection's token lifetime (20s)") {
		t.Errorf("role write: %#v", resp)
	}
	if resp := env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"min_ttl": "10s"}); resp != nil && len(resp.Warnings) != 0 {
		t.Errorf("a role write within half the lifetime warns: %v", resp.Warnings)
	}
	if resp := env.readCreds(t, "app"); len(resp.Warnings) != 0 {
		t.Errorf("a read within half the lifetime warns: %v", resp.Warnings)
	}
	if resp := env.mustOK(t, logical.ReadOperation, "creds/app", map[string]any{"min_ttl": "30s"}); len(resp.Warnings) != 1 || !strings.HasPrefix(resp.Warnings[0], "min_ttl 30s is more than half") {
		t.Errorf("a read asking for more than half: %v", resp.Warnings)
	}
}

func TestCreds_RotationSurvivesRestart(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	env.readCreds(t, "app") // the verify login's session, rt-1
	env.clock.Add(p.accessTTL)
	env.readCreds(t, "app") // refresh: rt-1 used, rt-2 issued
	tok := env.readCreds(t, "app").Data["access_token"]

	env.start(t) // a new backend on the same storage
	if got := env.readCreds(t, "app").Data["access_token"]; got != tok {
		t.Error("after a restart the stored token was not served")
	}
	env.clock.Add(p.accessTTL)
	env.readCreds(t, "app")
	if got := p.lastRequest(t).form.Get("refresh_token"); got != "rt-mindbaz-2-rrrrrrrr" {
		t.Errorf("after a restart the refresh used %q, want the newest rt-mindbaz-2", got)
	}
	if p.calls(grantPassword) != 1 { // the verify login, whose session the first read took
		t.Errorf("password logins = %d, want 1", p.calls(grantPassword))
	}
}

func TestCreds_DeadRefreshTokenLogsInOnce(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	env.readCreds(t, "app")
	p.mu.Lock()
	p.live = map[string]bool{} // the provider forgot every session
	p.mu.Unlock()
	env.clock.Add(p.accessTTL)
	logins := p.calls(grantPassword)
	resp := env.readCreds(t, "app")
	if p.calls(grantRefresh) != 1 || p.calls(grantPassword) != logins+1 {
		t.Errorf("refresh calls %d, new logins %d; want 1 and 1", p.calls(grantRefresh), p.calls(grantPassword)-logins)
	}
	if len(resp.Warnings) != 0 {
		t.Errorf("unexpected warnings: %v", resp.Warnings)
	}
	state := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
	if state["last_grant"] != "password" {
		t.Errorf("last_grant = %v", state["last_grant"])
	}
	// The next renewal uses the new session's refresh token.
	env.clock.Add(p.accessTTL)
	env.readCreds(t, "app")
	if p.calls(grantPassword) != logins+1 || p.calls(grantRefresh) != 2 {
		t.Error("the new session was not refreshed with its refresh token")
	}
}

func TestCreds_ConcurrentReadsOneProviderCall(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	env.readCreds(t, "app")
	env.clock.Add(p.accessTTL + time.Second)
	before := p.calls("")

	const readers = 100
	var wg sync.WaitGroup
	tokens := make([]any, readers)
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
			if err != nil || resp.IsError() {
				t.Errorf("read %d: %v %v", i, err, resp)
				return
			}
			tokens[i] = resp.Data["access_token"]
		}()
	}
	wg.Wait()
	if got := p.calls("") - before; got != 1 {
		t.Errorf("%d concurrent reads of an expired token made %d provider calls, want 1", readers, got)
	}
	for i := range tokens {
		if tokens[i] != tokens[0] {
			t.Fatal("concurrent readers got different tokens")
		}
	}
}

func TestCreds_ForceAndDelete(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "apiax", env.clock)
	env.setup(t, p, nil, nil)
	first := env.readCreds(t, "app").Data["access_token"]

	forced := env.mustOK(t, logical.UpdateOperation, "creds/app", nil).Data
	if forced["access_token"] == first || p.calls(grantRefresh) != 1 {
		t.Error("vault write -f creds did not refresh the token")
	}
	if env.readCreds(t, "app").Data["access_token"] != forced["access_token"] {
		t.Error("the forced token is not served afterwards")
	}

	env.mustOK(t, logical.DeleteOperation, "creds/app", nil)
	revoke := p.lastRequest(t)
	if revoke.path != apiaxRevoke || revoke.form.Get("token") != "rt-apiax-2-rrrrrrrr" || revoke.form.Get("token_type_hint") != "refresh_token" {
		t.Errorf("delete did not revoke the refresh token: %s %v", revoke.path, revoke.form)
	}
	logins := p.calls(grantPassword)
	env.readCreds(t, "app")
	if p.calls(grantPassword) != logins+1 {
		t.Error("after delete the next read did not log in with the password")
	}
}

func TestCreds_UnknownRoleAndConnection(t *testing.T) {
	env := getTestBackend(t)
	msg := env.mustFail(t, logical.ReadOperation, "creds/nope", nil)
	if msg != `role "nope" does not exist: create it with vault write bearer/roles/nope config=<connection>` {
		t.Errorf("unknown role: %s", msg)
	}
	resp, _ := env.request(t, logical.ReadOperation, "creds/nope", nil)
	if resp == nil || !resp.IsError() {
		t.Error("unknown role is not a 400-class error response")
	}
	// Reads, forced renewals and deletes of names nobody created leave no state behind.
	for i := range 100 {
		name := fmt.Sprintf("creds/invented-%d", i)
		env.mustFail(t, logical.ReadOperation, name, nil)
		env.mustFail(t, logical.UpdateOperation, name, nil)
		env.mustFail(t, logical.DeleteOperation, name, nil)
	}
	n := 0
	env.b.roles.Range(func(any, any) bool { n++; return true })
	if n != 0 {
		t.Errorf("%d role states kept for roles that do not exist", n)
	}
	msg = env.mustFail(t, logical.UpdateOperation, "roles/r", map[string]any{"config": "missing"})
	if msg != `role "r": connection "missing" does not exist: write bearer/config/missing first` {
		t.Errorf("role with a missing connection: %s", msg)
	}
}

func TestCreds_NoSecretsInResponsesOrLogs(t *testing.T) {
	for _, style := range []string{"mindbaz", "apiax"} {
		t.Run(style, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, style, env.clock)
			env.setup(t, p, map[string]any{"client_secret": testSecret}, nil)
			var out strings.Builder
			record := func(resp *logical.Response, err error) {
				out.WriteString(respText(resp))
				if err != nil {
					out.WriteString(err.Error())
				}
			}
			for i := 0; i < 3; i++ {
				record(env.request(t, logical.ReadOperation, "creds/app", nil))
				record(env.request(t, logical.UpdateOperation, "creds/app", nil))
				env.clock.Add(p.accessTTL)
			}
			record(env.request(t, logical.ReadOperation, "config/conn", nil))
			record(env.request(t, logical.ReadOperation, "roles/app", nil))
			// Failures: a wrong password, then a refresh token the provider rejects.
			record(env.request(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "Wr0ng-Passw0rd", "verify": true}))
			p.setPassword("Wr0ng-Passw0rd-2")
			env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "Wr0ng-Passw0rd-3", "verify": false})
			p.mu.Lock()
			p.live = map[string]bool{}
			p.mu.Unlock()
			env.clock.Add(p.accessTTL)
			record(env.request(t, logical.ReadOperation, "creds/app", nil))
			record(env.request(t, logical.ReadOperation, "roles/app", nil))
			record(env.request(t, logical.DeleteOperation, "creds/app", nil))

			secrets := append([]string{testPassword, testSecret, "Wr0ng-Passw0rd", "Wr0ng-Passw0rd-3"}, p.refreshTokens()...)
			if len(p.refreshTokens()) < 3 {
				t.Fatal("the scenario issued too few refresh tokens to be meaningful")
			}
			assertNoSecrets(t, "responses and errors", out.String(), secrets...)
			logs := env.logs.String()
			if !strings.Contains(logs, "[TRACE]") && !strings.Contains(logs, "[DEBUG]") {
				t.Fatal("no debug or trace log lines were captured")
			}
			assertNoSecrets(t, "trace logs", logs, secrets...)
		})
	}
}

// TestCreds_OpenAPIInline: the OpenAPI document describes the creds response fields
// inline (Vault drops the $refs of an external plugin's document), and creds delete
// takes no min_ttl.
func TestCreds_OpenAPIInline(t *testing.T) {
	env := getTestBackend(t)
	env.sys.PluginEnvironment = &logical.PluginEnvironment{VaultVersion: "1.21.0"}
	resp, err := env.b.HandleRequest(context.Background(), &logical.Request{Operation: logical.HelpOperation, Path: "", Storage: env.storage})
	if err != nil {
		t.Fatal(err)
	}
	doc, ok := resp.Data["openapi"].(*framework.OASDocument)
	if !ok {
		t.Fatalf("no OpenAPI document: %#v", resp.Data)
	}
	raw, _ := json.Marshal(doc.Paths)
	if strings.Contains(string(raw), "$ref") {
		t.Errorf("the paths still refer to components: %s", raw)
	}
	creds := doc.Paths["/creds/{name}"]
	if creds == nil || creds.Get == nil {
		t.Fatalf("no creds path: %v", doc.Paths)
	}
	schema := creds.Get.Responses[200].Content["application/json"].Schema
	for _, field := range []string{"access_token", "expires_at", "ttl", "rotation_period", "last_vault_rotation"} {
		if schema == nil || schema.Properties[field] == nil || schema.Properties[field].Description == "" {
			t.Errorf("the creds read response does not describe %s inline", field)
		}
	}
	for _, p := range creds.Delete.Parameters {
		if p.Name == "min_ttl" {
			t.Error("creds delete lists min_ttl")
		}
	}
	hasMinTTL := false
	for _, p := range creds.Get.Parameters {
		hasMinTTL = hasMinTTL || p.Name == "min_ttl"
	}
	if !hasMinTTL {
		t.Error("creds read does not list its min_ttl query parameter")
	}
}
