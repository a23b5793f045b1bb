package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// pluginVersion is the version the plugin is built to report.
const pluginVersion = "v0.1.0-e2e"

// env is shared by every scenario: one plugin build, one Vault binary.
var env *harness.Env

func TestMain(m *testing.M) {
	start := time.Now()
	e, cleanup, err := harness.Setup(pluginVersion)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e setup:", err)
		os.Exit(1)
	}
	env = e
	fmt.Fprintf(os.Stderr, "e2e: setup took %s\n", time.Since(start).Round(time.Millisecond))
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// setupEngine registers the plugin, mounts it at bearer/, and writes the
// connection "demo" (verified: one password login) and the role "demo" for
// the scenario's provider. roleArgs are extra role fields (key=value).
func setupEngine(sc *harness.Scenario, s *harness.Server, roleArgs ...string) {
	sc.T.Helper()
	s.RegisterPlugin()
	s.EnableEngine()
	writeConfig(sc, s, "demo")
	s.MustCLI(append([]string{"write", "bearer/roles/demo", "config=demo"}, roleArgs...)...)
}

// writeConfig writes connection name for the scenario's provider with the
// public client; extra fields (key=value) are appended.
func writeConfig(sc *harness.Scenario, s *harness.Server, name string, extra ...string) {
	sc.T.Helper()
	cfg := sc.Provider.Config()
	args := []string{
		"write", "bearer/config/" + name,
		"provider=generic",
		"token_url=" + sc.Provider.TokenURL(),
		"client_id=" + cfg.ClientID,
		"username=" + cfg.Username,
		"password=" + cfg.Password,
	}
	s.MustCLI(append(args, extra...)...)
}

// creds is the data of a creds read.
type creds struct {
	AccessToken    string
	TokenType      string
	ExpiresAt      time.Time
	ExpiresAtRaw   string
	ExpiresIn      int64
	TTL            int64
	RotationPeriod int64
	Scope          string
	Keys           []string // every data key, sorted as returned
	LeaseID        string
	LeaseDuration  int
	Warnings       []string
	// The request was served between ReadStart and ReadAt.
	ReadStart, ReadAt time.Time
}

// parseCreds checks the shape of a creds answer (the keys and types the
// README's "Reading a token" lists) to a request sent at start and decodes it.
func parseCreds(data map[string]any, r *harness.Response, start time.Time) (creds, error) {
	c := creds{ReadStart: start, ReadAt: time.Now()}
	if r != nil {
		c.LeaseID, c.LeaseDuration, c.Warnings = r.LeaseID, r.LeaseDuration, r.Warnings
	}
	for k := range data {
		c.Keys = append(c.Keys, k)
	}
	str := func(k string) string { s, _ := data[k].(string); return s }
	num := func(k string) (int64, error) {
		n, ok := data[k].(json.Number)
		if !ok {
			return 0, fmt.Errorf("creds: %q is %T (%v), want an integer", k, data[k], data[k])
		}
		return n.Int64()
	}
	c.AccessToken, c.TokenType, c.Scope = str("access_token"), str("token_type"), str("scope")
	if c.AccessToken == "" {
		return c, fmt.Errorf("creds: no access_token in %v", c.Keys)
	}
	var err error
	if c.ExpiresIn, err = num("expires_in"); err != nil {
		return c, err
	}
	if c.TTL, err = num("ttl"); err != nil {
		return c, err
	}
	if c.RotationPeriod, err = num("rotation_period"); err != nil {
		return c, err
	}
	c.ExpiresAtRaw = str("expires_at")
	if c.ExpiresAt, err = time.Parse(time.RFC3339, c.ExpiresAtRaw); err != nil {
		return c, fmt.Errorf("creds: expires_at: %w", err)
	}
	return c, nil
}

// readCreds reads bearer/creds/<role> over HTTP with token and checks it.
func readCreds(s *harness.Server, token, role string) (creds, error) {
	start := time.Now()
	r, err := s.Do(http.MethodGet, "/v1/bearer/creds/"+role, token, nil)
	if err != nil {
		return creds{}, err
	}
	if r.Status != http.StatusOK {
		return creds{}, fmt.Errorf("read creds/%s: %s", role, r)
	}
	return parseCreds(r.Data, r, start)
}

// mustReadCreds is readCreds with the root token, failing the test on error.
func mustReadCreds(t testing.TB, s *harness.Server, role string) creds {
	t.Helper()
	c, err := readCreds(s, s.Token, role)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// readCredsCLI reads bearer/creds/<role> with `vault read -format=json`.
func readCredsCLI(t testing.TB, s *harness.Server, role string) creds {
	t.Helper()
	var out struct {
		LeaseID       string         `json:"lease_id"`
		LeaseDuration int            `json:"lease_duration"`
		Warnings      []string       `json:"warnings"`
		Data          map[string]any `json:"data"`
	}
	start := time.Now()
	s.CLIJSON(&out, "read", "-format=json", "bearer/creds/"+role)
	c, err := parseCreds(out.Data, &harness.Response{LeaseID: out.LeaseID, LeaseDuration: out.LeaseDuration, Warnings: out.Warnings}, start)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkCredsShape asserts the documented creds answer (Bearer type, no
// lease, no secret keys, consistent expires_in, expires_at, ttl and
// rotation_period) for a token with lifetime life and the role's effective
// min_ttl.
func checkCredsShape(t testing.TB, c creds, life, minTTL time.Duration) {
	t.Helper()
	if c.TokenType != "Bearer" {
		t.Errorf("token_type = %q, want Bearer", c.TokenType)
	}
	if c.LeaseID != "" || c.LeaseDuration != 0 {
		t.Errorf("creds carry a lease (%q, %ds); want none", c.LeaseID, c.LeaseDuration)
	}
	for _, k := range c.Keys {
		if strings.Contains(k, "refresh") || strings.Contains(k, "password") || strings.Contains(k, "secret") {
			t.Errorf("creds answer has key %q", k)
		}
	}
	lifeS := int64(life / time.Second)
	if c.ExpiresIn <= 0 || c.ExpiresIn > lifeS {
		t.Errorf("expires_in = %d, want in (0, %d]", c.ExpiresIn, lifeS)
	}
	if c.RotationPeriod < lifeS-2 || c.RotationPeriod > lifeS {
		t.Errorf("rotation_period = %d, want the token lifetime %d (±2)", c.RotationPeriod, lifeS)
	}
	wantTTL := max(c.ExpiresIn-int64(minTTL/time.Second), 1)
	if c.TTL < wantTTL-2 || c.TTL > wantTTL+1 {
		t.Errorf("ttl = %d, want expires_in - min_ttl = %d (±2)", c.TTL, wantTTL)
	}
	// expires_in was computed when the request was served, somewhere between
	// ReadStart and ReadAt: however long a loaded machine took to answer,
	// expires_at was at most expires_in away at ReadAt and at least at
	// ReadStart.
	early, late := c.ExpiresAt.Sub(c.ReadStart), c.ExpiresAt.Sub(c.ReadAt)
	if early < time.Duration(c.ExpiresIn-2)*time.Second || late > time.Duration(c.ExpiresIn+2)*time.Second {
		t.Errorf("expires_at %s is %s away at the request and %s at the answer, expires_in says %ds", c.ExpiresAt, early, late, c.ExpiresIn)
	}
	if !strings.HasSuffix(c.ExpiresAtRaw, "Z") {
		t.Errorf("expires_at %q is not in UTC", c.ExpiresAtRaw)
	}
}

// assertCounts compares the provider's traffic since before with want.
func assertCounts(t testing.TB, p *provider.Provider, before provider.Counts, want provider.Counts, what string) {
	t.Helper()
	if got := p.Counts().Sub(before); got != want {
		t.Errorf("%s: provider traffic %+v, want %+v", what, got, want)
	}
}

// forceCreds asks for a new token now (`vault write -f bearer/creds/<role>`
// over HTTP) with the root token.
func forceCreds(t testing.TB, s *harness.Server, role string) creds {
	t.Helper()
	start := time.Now()
	r := s.MustDo(http.MethodPost, "/v1/bearer/creds/"+role, map[string]any{}, http.StatusOK)
	c, err := parseCreds(r.Data, r, start)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mount is a secrets engine as `vault secrets list -detailed` shows it.
type mount struct {
	Type                 string `json:"type"`
	PluginVersion        string `json:"plugin_version"`
	RunningPluginVersion string `json:"running_plugin_version"`
	RunningSHA256        string `json:"running_sha256"`
}

// readMount returns the mount at path (bearer/) from `vault secrets list
// -detailed -format=json`.
func readMount(t testing.TB, s *harness.Server, path string) mount {
	t.Helper()
	var mounts map[string]mount
	s.CLIJSON(&mounts, "secrets", "list", "-detailed", "-format=json")
	m, ok := mounts[path]
	if !ok {
		t.Fatalf("%s not in secrets list: %v", path, mounts)
	}
	return m
}

// restart stops a persistent server, starts it again and unseals it.
func restart(s *harness.Server) {
	s.Stop()
	s.Start()
	s.Unseal()
	s.WaitActive()
}
