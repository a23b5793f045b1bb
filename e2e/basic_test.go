package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestRegisterEnableRead is scenario 1: register the plugin by sha256,
// enable it at bearer/, configure it with the CLI, and read creds with the
// CLI and the HTTP API.
func TestRegisterEnableRead(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Minute
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	s := sc.StartDev()
	s.RegisterPlugin()
	s.EnableEngine()

	// The mount reports the version the plugin was built with.
	m := readMount(t, s, "bearer/")
	switch {
	case m.Type != "bearer":
		t.Errorf("bearer/ type = %q, want bearer", m.Type)
	case m.RunningPluginVersion != pluginVersion:
		t.Errorf("bearer/ running_plugin_version = %q, want %q", m.RunningPluginVersion, pluginVersion)
	case m.RunningSHA256 != env.PluginSHA256:
		t.Errorf("bearer/ running_sha256 = %q, want %q", m.RunningSHA256, env.PluginSHA256)
	}
	out := s.MustCLI("secrets", "list", "-detailed")
	if !strings.Contains(out, pluginVersion) {
		t.Errorf("vault secrets list -detailed does not show %s:\n%s", pluginVersion, out)
	}

	// Writing the connection verifies the account with one password login.
	before := p.Counts()
	writeConfig(sc, s, "demo")
	assertCounts(t, p, before, provider.Counts{PasswordOK: 1}, "config write with verify")

	var conf struct {
		Data map[string]any `json:"data"`
	}
	s.CLIJSON(&conf, "read", "-format=json", "bearer/config/demo")
	if _, ok := conf.Data["password"]; ok {
		t.Error("config read returns the password field")
	}
	if conf.Data["password_set"] != true || conf.Data["username"] != "demo" || conf.Data["token_url"] != p.TokenURL() {
		t.Errorf("config read: %v", conf.Data)
	}
	if out := s.MustCLI("list", "bearer/config"); !strings.Contains(out, "demo") {
		t.Errorf("list bearer/config: %q", out)
	}

	s.MustCLI("write", "bearer/roles/demo", "config=demo")
	if out := s.MustCLI("list", "bearer/roles"); !strings.Contains(out, "demo") {
		t.Errorf("list bearer/roles: %q", out)
	}

	// First read: the verify login's session, no second login.
	before = p.Counts()
	c1 := readCredsCLI(t, s, "demo")
	checkCredsShape(t, c1, life, 60*time.Second)
	assertCounts(t, p, before, provider.Counts{}, "first creds read after the verified config write")
	is, ok := p.Lookup(c1.AccessToken)
	if !ok {
		t.Fatalf("creds returned a token the provider never issued")
	}
	if is.GrantType != "password" {
		t.Errorf("first token came from grant %q, want password", is.GrantType)
	}
	in, err := p.Introspect(context.Background(), c1.AccessToken)
	if err != nil || !in.Active || in.ClientID != "demo" {
		t.Fatalf("provider introspection of the creds token: %+v, %v", in, err)
	}

	// Second read, over HTTP: the cached token, no provider call.
	before = p.Counts()
	c2 := mustReadCreds(t, s, "demo")
	assertCounts(t, p, before, provider.Counts{}, "cached creds read")
	if c2.AccessToken != c1.AccessToken {
		t.Error("second read returned a different token; want the cached one")
	}
	checkCredsShape(t, c2, life, 60*time.Second)

	var role struct {
		Data map[string]any `json:"data"`
	}
	s.CLIJSON(&role, "read", "-format=json", "bearer/roles/demo")
	if role.Data["last_grant"] != "password" || role.Data["token_expires_at"] == "" || role.Data["token_expires_at"] == nil {
		t.Errorf("role state: last_grant=%v token_expires_at=%v", role.Data["last_grant"], role.Data["token_expires_at"])
	}

	// Help for every path.
	for _, path := range []string{"bearer/config/x", "bearer/roles/x", "bearer/creds/x", "bearer/config", "bearer/roles"} {
		out, errOut, err := s.CLI(s.Token, "path-help", path)
		if err != nil || len(strings.TrimSpace(out)) == 0 {
			t.Errorf("vault path-help %s: %v\n%s%s", path, err, out, errOut)
		}
	}

	// The OpenAPI document Vault serves describes the creds response fields (Vault drops
	// the $refs of a plugin's document: they are inline), and creds delete takes no
	// min_ttl.
	spec := s.MustDo(http.MethodGet, "/v1/sys/internal/specs/openapi", nil, http.StatusOK)
	var doc struct {
		Paths map[string]struct {
			Get struct {
				Responses map[string]struct {
					Content map[string]struct {
						Schema struct {
							Properties map[string]struct {
								Description string `json:"description"`
							} `json:"properties"`
						} `json:"schema"`
					} `json:"content"`
				} `json:"responses"`
			} `json:"get"`
			Delete struct {
				Parameters []struct {
					Name string `json:"name"`
				} `json:"parameters"`
			} `json:"delete"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(spec.Body, &doc); err != nil {
		t.Fatal(err)
	}
	creds, ok := doc.Paths["/bearer/creds/{name}"]
	if !ok {
		t.Fatalf("no /bearer/creds/{name} in Vault's OpenAPI document")
	}
	props := creds.Get.Responses["200"].Content["application/json"].Schema.Properties
	for _, field := range []string{"access_token", "expires_at", "expires_in", "ttl", "rotation_period", "last_vault_rotation"} {
		if props[field].Description == "" {
			t.Errorf("Vault's OpenAPI document does not describe the creds response field %s: %v", field, props)
		}
	}
	for _, p := range creds.Delete.Parameters {
		if p.Name == "min_ttl" {
			t.Error("Vault's OpenAPI document lists min_ttl for creds delete")
		}
	}

	// An unknown role is a 4xx error naming it, not a 500.
	r, err := s.Do(http.MethodGet, "/v1/bearer/creds/no-such-role", s.Token, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Status < 400 || r.Status >= 500 || r.Status == http.StatusForbidden || !strings.Contains(strings.Join(r.Errors, " "), "no-such-role") {
		t.Errorf("read of an unknown role: %s; want a 4xx error naming it", r)
	}
}
