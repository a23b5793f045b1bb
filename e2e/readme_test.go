package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

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

// installSection is the README section TestReadmeInstall runs.
const installSection = "## Install in a real Vault"

var readmeBuildVersion = regexp.MustCompile(`make build VERSION=(\S+)`)

// TestReadmeInstall runs the README's install section from nothing: a
// non-dev Vault from the README's config.hcl, initialized, unsealed and
// logged into as written, then the plugin built by the README's make line
// (with the README's version, not the harness's v0.1.0-e2e build), copied
// into plugin_directory under its versioned name, registered, mounted and
// listed. The mount then serves a token from the scenario's provider.
//
// The test changes the README's text in these ways only:
//   - 127.0.0.1:8200, Vault's default address, becomes a free loopback port
//     (Vault's cluster listener takes the next port, reserved too), and the
//     two system paths, /opt/vault/data and /etc/vault/plugins, become
//     directories of the test;
//   - make runs in the repository (-C) and writes into the test's bin/
//     (BIN_DIR), so that the commands after it run as written from the
//     test's directory and the working tree's bin/ is left alone;
//   - the interactive steps get what a person types at their prompts: the
//     unseal keys and the root token from init's output, as arguments; init
//     prints JSON (-format=json) so that the test can read them;
//   - `vault server` runs as a harness process (stopped at the end), at
//     trace level through VAULT_LOG_LEVEL.
//
// The other lines run with bash from the test's directory, with the README's
// exports and the token file that `vault login` wrote.
func TestReadmeInstall(t *testing.T) {
	t.Parallel()
	sc := env.NewScenario(t, provider.Config{})
	s := sc.NewBareServer()
	blocks := readmeBlocks(t, installSection)
	version, listed := runInstall(t, s, blocks)

	command := harness.PluginCommand + "_" + version
	if !slices.ContainsFunc(strings.Split(listed, "\n"), func(l string) bool {
		return strings.HasPrefix(l, harness.MountPath+"/ ") && strings.Contains(l, " "+version+" ")
	}) {
		t.Errorf("vault secrets list -detailed does not show %s/ running %s:\n%s", harness.MountPath, version, listed)
	}
	entries, err := os.ReadDir(filepath.Join(s.Dir, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != command {
		t.Fatalf("plugin_directory holds %v, want only %s", entries, command)
	}
	sum, err := fileSHA256(filepath.Join(s.Dir, "plugins", command))
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Command, Version, SHA256 string }
	s.CLIJSON(&info, "plugin", "info", "-format=json", "-version="+version, "secret", harness.PluginName)
	if info.Command != command || info.Version != version || info.SHA256 != sum {
		t.Errorf("plugin catalog: %+v, want command %s, version %s, sha256 %s", info, command, version, sum)
	}
	var mounts map[string]struct {
		Type                 string `json:"type"`
		RunningPluginVersion string `json:"running_plugin_version"`
		RunningSHA256        string `json:"running_sha256"`
	}
	s.CLIJSON(&mounts, "secrets", "list", "-detailed", "-format=json")
	if m := mounts[harness.MountPath+"/"]; m.Type != harness.PluginName || m.RunningPluginVersion != version || m.RunningSHA256 != sum {
		t.Errorf("%s/ mount: %+v, want type %s running %s (sha256 %s)", harness.MountPath, m, harness.PluginName, version, sum)
	}

	// The installed engine works.
	writeConfig(sc, s, "demo")
	s.MustCLI("write", "bearer/roles/demo", "config=demo")
	c := mustReadCreds(t, s, "demo")
	if _, ok := sc.Provider.Lookup(c.AccessToken); !ok {
		t.Errorf("the installed engine served a token the provider never issued")
	}
}

// runInstall runs the README's install section (its blocks) on s, with the
// substitutions TestReadmeInstall lists, and returns the plugin version its
// make line builds and the output of its last command, which must be
// `vault secrets list -detailed`.
func runInstall(t *testing.T, s *harness.Server, blocks []readmeBlock) (version, listed string) {
	t.Helper()
	var text strings.Builder
	var hcl []readmeBlock
	for _, b := range blocks {
		text.WriteString(strings.Join(b.lines, "\n") + "\n")
		if b.lang == "hcl" {
			hcl = append(hcl, b)
		}
	}
	m := readmeBuildVersion.FindStringSubmatch(text.String())
	if m == nil {
		t.Fatalf("README %q: no `make build VERSION=...` line", installSection)
	}
	if len(hcl) != 1 {
		t.Fatalf("README %q: %d hcl blocks, want one: config.hcl", installSection, len(hcl))
	}
	substitutions := []string{
		"127.0.0.1:8200", strings.TrimPrefix(s.Addr, "http://"),
		"/opt/vault/data", filepath.Join(s.Dir, "data"),
		"/etc/vault/plugins", filepath.Join(s.Dir, "plugins"),
		"make build", fmt.Sprintf("make -C %s BIN_DIR=%s build", env.RepoRoot, filepath.Join(s.Dir, "bin")),
	}
	for i := 0; i < len(substitutions); i += 2 {
		if !strings.Contains(text.String(), substitutions[i]) {
			t.Fatalf("README %q no longer says %q: update TestReadmeInstall's substitutions", installSection, substitutions[i])
		}
	}
	r := strings.NewReplacer(substitutions...)
	conf := r.Replace(strings.Join(hcl[0].lines, "\n") + "\n")
	if err := os.WriteFile(filepath.Join(s.Dir, "config.hcl"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	var exports, batch []string
	last := ""
	flush := func() {
		if len(batch) > 0 {
			listed = s.Shell(5*time.Minute, strings.Join(batch, "\n"), exports...)
			batch = nil
		}
	}
	steps := map[string]bool{}
	for _, b := range blocks {
		if b.lang != "sh" {
			continue
		}
		for _, line := range shellLines(b) {
			line, last = r.Replace(line), line
			args := strings.Fields(line)
			switch {
			case strings.HasPrefix(line, "export "):
				k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
				if k == "VAULT_ADDR" && v != s.Addr {
					t.Fatalf("README: %q: want the server's address %s", line, s.Addr)
				}
				exports = append(exports, k+"="+v)
			case strings.HasPrefix(line, "vault server "):
				flush()
				s.StartWith(args[1:]...)
				steps["server"] = true
			case strings.HasPrefix(line, "vault operator init"):
				flush()
				readmeInit(t, s, args[1:])
				steps["init"] = true
			case line == "vault operator unseal":
				s.Unseal()
				s.WaitActive()
				steps["unseal"] = true
			case line == "vault login":
				if out, errOut, err := s.CLI("", "login", s.Token); err != nil {
					t.Fatalf("%s: vault login: %v\n%s%s", s.Name, err, out, errOut)
				}
				t.Logf("%s: vault login <the root token>", s.Name)
				steps["login"] = true
			default:
				batch = append(batch, line)
			}
		}
	}
	flush()
	for _, step := range []string{"server", "init", "unseal", "login"} {
		if !steps[step] {
			t.Fatalf("README %q: no %s step", installSection, step)
		}
	}
	if last != "vault secrets list -detailed" {
		t.Fatalf("README %q ends with %q, want vault secrets list -detailed", installSection, last)
	}
	return m[1], listed
}

// readmeInit runs the README's `vault operator init` (args after "vault"),
// with -format=json to read its answer, and keeps the unseal keys the
// README's unseal step needs (three, it says) and the root token.
func readmeInit(t *testing.T, s *harness.Server, args []string) {
	t.Helper()
	var out struct {
		Keys      []string `json:"unseal_keys_b64"`
		Threshold int      `json:"unseal_threshold"`
		Token     string   `json:"root_token"`
	}
	s.CLIJSON(&out, append(args, "-format=json")...)
	if out.Threshold != 3 || len(out.Keys) < out.Threshold || out.Token == "" {
		t.Fatalf("vault operator init: threshold %d, %d keys, root token set %t; the README says to unseal three times",
			out.Threshold, len(out.Keys), out.Token != "")
	}
	s.UnsealKeys, s.Token = out.Keys[:out.Threshold], out.Token
}

// fileSHA256 is the hex sha256 of a file's contents.
func fileSHA256(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
}

// readmeCommands returns the vault command lines (arguments after "vault") of
// the sh code blocks in the README sections whose headings are given,
// continuation lines joined and comments dropped.
func readmeCommands(t *testing.T, headings ...string) [][]string {
	t.Helper()
	var cmds [][]string
	for _, b := range readmeBlocks(t, headings...) {
		if b.lang != "sh" {
			continue
		}
		for _, line := range shellLines(b) {
			if strings.ContainsAny(line, `"'$`) {
				t.Fatalf("README: %q: quotes or variables; this test splits command lines on spaces only", line)
			}
			if f := strings.Fields(line); len(f) > 1 && f[0] == "vault" {
				cmds = append(cmds, f[1:])
			}
		}
	}
	if len(cmds) == 0 {
		t.Fatalf("README: no vault commands in the sections %q", headings)
	}
	return cmds
}

// readmeBlock is a fenced code block of the README.
type readmeBlock struct {
	lang  string   // the word after the opening fence: sh, hcl, yaml
	lines []string // as written
}

// readmeBlocks returns the fenced code blocks of the README sections whose
// headings are given (a heading line as written, "### Mindbaz"), in order.
func readmeBlocks(t *testing.T, headings ...string) []readmeBlock {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(env.RepoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []readmeBlock
	var cur *readmeBlock
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "```") && cur == nil:
			cur = &readmeBlock{lang: strings.TrimPrefix(line, "```")}
		case strings.HasPrefix(line, "```"):
			if slices.Contains(headings, section) {
				blocks = append(blocks, *cur)
			}
			cur = nil
		case cur != nil:
			cur.lines = append(cur.lines, line)
		case strings.HasPrefix(line, "#"):
			section = strings.TrimSpace(line)
		}
	}
	return blocks
}

// shellLines returns the command lines of an sh block: comments (from " #")
// and blank lines dropped, continuation lines joined.
func shellLines(b readmeBlock) []string {
	var lines []string
	cont := ""
	for _, line := range b.lines {
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			line = ""
		}
		line = cont + strings.TrimSpace(line)
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont = l + " "
			continue
		}
		cont = ""
		if line != "" {
			lines = append(lines, line)
		}
	}
	return lines
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
