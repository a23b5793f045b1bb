package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// appPolicy is the policy the README gives applications.
const appPolicy = `path "bearer/creds/demo" {
  capabilities = ["read"]
}
`

// createAppToken writes appPolicy as "bearer-app" and returns a token
// holding only it (and default).
func createAppToken(t testing.TB, s *harness.Server) string {
	t.Helper()
	s.MustDo(http.MethodPut, "/v1/sys/policies/acl/bearer-app", map[string]any{"policy": appPolicy}, http.StatusNoContent)
	var tok struct {
		Auth struct {
			ClientToken string `json:"client_token"`
		} `json:"auth"`
	}
	s.CLIJSON(&tok, "token", "create", "-policy=bearer-app", "-ttl=1h", "-format=json")
	if tok.Auth.ClientToken == "" {
		t.Fatal("token create returned no token")
	}
	return tok.Auth.ClientToken
}

// TestPolicyCredsOnly is scenario 5: a token with only read on
// bearer/creds/demo reads creds and is denied everything else.
func TestPolicyCredsOnly(t *testing.T) {
	t.Parallel()
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: 20 * time.Minute})
	s := sc.StartDev()
	setupEngine(sc, s)
	s.MustCLI("write", "bearer/roles/other", "config=demo")
	app := createAppToken(t, s)

	if _, err := readCreds(s, app, "demo"); err != nil {
		t.Fatalf("app token cannot read its creds: %v", err)
	}
	out, _, err := s.CLI(app, "read", "-field=access_token", "bearer/creds/demo")
	if err != nil || strings.TrimSpace(out) == "" {
		t.Errorf("vault read -field=access_token bearer/creds/demo with the app token: %v %q", err, out)
	}

	denied := []struct{ method, path string }{
		{http.MethodGet, "/v1/bearer/config/demo"},
		{"LIST", "/v1/bearer/config"},
		{http.MethodPost, "/v1/bearer/config/demo"},
		{http.MethodDelete, "/v1/bearer/config/demo"},
		{http.MethodGet, "/v1/bearer/roles/demo"},
		{"LIST", "/v1/bearer/roles"},
		{http.MethodPost, "/v1/bearer/roles/demo"},
		{http.MethodDelete, "/v1/bearer/roles/demo"},
		{http.MethodPost, "/v1/bearer/creds/demo"},
		{http.MethodDelete, "/v1/bearer/creds/demo"},
		{http.MethodGet, "/v1/bearer/creds/other"},
	}
	for _, d := range denied {
		var body any
		if d.method == http.MethodPost {
			body = map[string]any{"min_ttl": "1s"}
		}
		r, err := s.Do(d.method, d.path, app, body)
		if err != nil {
			t.Fatal(err)
		}
		if r.Status != http.StatusForbidden {
			t.Errorf("app token: %s %s: %s; want 403", d.method, d.path, r)
		}
	}
	_, errOut, err := s.CLI(app, "read", "bearer/config/demo")
	if err == nil || !strings.Contains(errOut, "permission denied") {
		t.Errorf("vault read bearer/config/demo with the app token: err=%v, %q; want permission denied", err, errOut)
	}

	// The denied writes changed nothing: the root token still reads the same
	// configuration and the role still serves.
	if _, err := readCreds(s, app, "demo"); err != nil {
		t.Errorf("creds read after the denied requests: %v", err)
	}
}
