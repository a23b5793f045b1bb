package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// recipeSections are the README sections whose vault commands
// TestReadmeRecipes runs.
var recipeSections = []string{"### Mindbaz", "### Apiax (Keycloak)"}

// presetWant is what the presets put in a connection (the providers'
// endpoints, client ids, refresh parameters and token lifetimes), by
// connection name in the README; fields given on a command line are checked
// against that command line.
var presetWant = map[string]map[string]any{
	"mindbaz": {
		"provider":          "mindbaz",
		"token_url":         "https://sso.mindbaz.com/oauth2/token",
		"client_id":         "100",
		"client_auth":       "body",
		"refresh_token_ttl": json.Number("604800"),
	},
	"apiax": {
		"provider":          "apiax",
		"issuer":            "https://auth.apiax.io/auth/realms/apiax",
		"token_url":         "https://auth.apiax.io/auth/realms/apiax/protocol/openid-connect/token",
		"revocation_url":    "https://auth.apiax.io/auth/realms/apiax/protocol/openid-connect/revoke",
		"client_id":         "integration-api",
		"client_auth":       "body",
		"refresh_params":    map[string]any{"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"refresh_token_ttl": json.Number("1209600"),
	},
	"sso": {
		"provider":       "keycloak",
		"token_url":      "https://sso.example.com/realms/acme/protocol/openid-connect/token",
		"revocation_url": "https://sso.example.com/realms/acme/protocol/openid-connect/revoke",
	},
}

// TestReadmeRecipes runs the vault commands of the README's Mindbaz and Apiax
// recipes as written, on a real Vault, with the password on stdin
// (password=-). Connection writes get verify=false and creds reads are left
// out: the presets point at the real providers, unreachable from here. The
// connections read back hold what the presets promise, and a password
// rotation (the README's operations table) keeps the rest.
func TestReadmeRecipes(t *testing.T) {
	t.Parallel()
	sc := env.NewScenario(t, provider.Config{})
	s := sc.StartDev()
	s.RegisterPlugin()
	s.EnableEngine()

	written := map[string]map[string]string{} // connection -> fields on its command line
	for _, args := range readmeCommands(t, recipeSections...) {
		line := "vault " + strings.Join(args, " ")
		path := ""
		if len(args) > 1 {
			path = args[1]
		}
		if args[0] == "read" && strings.HasPrefix(path, "bearer/creds/") {
			t.Logf("not run (needs the real provider): %s", line)
			continue
		}
		fields := map[string]string{}
		for _, a := range args[2:] {
			if k, v, ok := strings.Cut(a, "="); ok {
				fields[k] = v
			}
		}
		name, isConfig := strings.CutPrefix(path, "bearer/config/")
		if args[0] == "write" && isConfig {
			args = append(args, "verify=false")
			written[name] = fields
		}
		runRecipe(t, sc, s, line, args...)
	}

	for _, name := range []string{"mindbaz", "apiax"} {
		if written[name] == nil {
			t.Fatalf("the README recipes write no connection %q", name)
		}
	}
	for name, fields := range written {
		data := readData(t, s, "bearer/config/"+name)
		want := map[string]any{"password_set": true}
		for k, v := range fields {
			if k != "password" {
				want[k] = v
			}
		}
		for k, v := range presetWant[name] {
			want[k] = v
		}
		checkFields(t, "config/"+name, data, want)
	}
	for _, role := range []string{"mindbaz", "apiax"} {
		checkFields(t, "roles/"+role, readData(t, s, "bearer/roles/"+role), map[string]any{"config": role})
	}

	// Rotating the password is a partial update: the preset fields stay.
	before := readData(t, s, "bearer/config/mindbaz")
	runRecipe(t, sc, s, "vault write bearer/config/mindbaz password=-",
		"write", "bearer/config/mindbaz", "password=-", "verify=false")
	after := readData(t, s, "bearer/config/mindbaz")
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("password rotation changed the connection:\nbefore %v\nafter  %v", before, after)
	}
	if out := s.MustCLI("list", "bearer/config"); !strings.Contains(out, "mindbaz") || !strings.Contains(out, "apiax") {
		t.Errorf("vault list bearer/config: %q", out)
	}
}

// readmeCommands returns the vault command lines (arguments after "vault") of
// the sh code blocks in the README sections whose headings are given,
// continuation lines joined and comments dropped.
func readmeCommands(t *testing.T, headings ...string) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.RepoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var cmds [][]string
	section, inFence, lang, cont := "", false, "", ""
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inFence, lang = !inFence, strings.TrimPrefix(line, "```")
			continue
		case !inFence && strings.HasPrefix(line, "#"):
			section = strings.TrimSpace(line)
			continue
		case !inFence || lang != "sh" || !slices.Contains(headings, section):
			continue
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		line = cont + strings.TrimSpace(line)
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont = l + " "
			continue
		}
		cont = ""
		if strings.ContainsAny(line, `"'$`) {
			t.Fatalf("README: %q: quotes or variables; this test splits command lines on spaces only", line)
		}
		if f := strings.Fields(line); len(f) > 1 && f[0] == "vault" {
			cmds = append(cmds, f[1:])
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("README: no vault commands in the sections %q", headings)
	}
	return cmds
}

// runRecipe runs a vault command with the root token and a new password
// (a secret of the scenario) on stdin, for a password=- field; it fails the
// test on error.
func runRecipe(t *testing.T, sc *harness.Scenario, s *harness.Server, line string, args ...string) {
	t.Helper()
	password := "pw-" + harness.RandomHex(8)
	sc.AddSecret(password)
	if out, errOut, err := s.CLIInput(s.Token, password, args...); err != nil {
		t.Fatalf("%s: %v\n%s%s", line, err, out, errOut)
	}
	t.Logf("ran: %s", line)
}

// readData reads path with `vault read` and returns its data.
func readData(t *testing.T, s *harness.Server, path string) map[string]any {
	t.Helper()
	var out struct {
		Data map[string]any `json:"data"`
	}
	s.CLIJSON(&out, "read", "-format=json", path)
	return out.Data
}

// checkFields compares the fields of data named in want.
func checkFields(t *testing.T, what string, data, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if fmt.Sprint(data[k]) != fmt.Sprint(v) {
			t.Errorf("%s: %s = %v, want %v", what, k, data[k], v)
		}
	}
}
