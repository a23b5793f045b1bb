package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// scrapeSection is the README section with the monitoring policy, the token commands
// and the Prometheus scrape job.
const scrapeSection = "### Scraping with Prometheus"

// README placeholders the test replaces with its own.
const (
	readmeTokenFile  = "/etc/prometheus/vault-token"
	readmeVaultAddr  = "127.0.0.1:8200"
	readmePolicyFile = "bearer-monitoring.hcl"
)

// TestPrometheusScrape: a real Prometheus server scrapes bearer/metrics through Vault
// with a monitoring token made as the README says (its policy, its commands, its
// scrape job), and its query API finds the engine's series after a renewal and after
// a rejected password. The monitoring token reads metrics and health and nothing
// else; health answers 200, then 503 naming the role and the connection.
func TestPrometheusScrape(t *testing.T) {
	t.Parallel()
	bin, skip, err := env.PrometheusBin()
	if err != nil {
		t.Fatal(err)
	}
	if skip != "" {
		t.Skip("no Prometheus server: " + skip)
	}
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: 20 * time.Minute})
	s := sc.StartDev()
	setupEngine(sc, s)
	prom := sc.NewPrometheus(bin)
	token := readmeMonitoringToken(t, s, prom.Dir)
	prom.Start(readmeScrapeConfig(t, s, filepath.Join(prom.Dir, "vault-token")))

	// The monitoring token reads metrics and health, and nothing else.
	if status, ct, body := rawGet(t, s, "/v1/bearer/metrics?format=prometheus", token); status != http.StatusOK ||
		!strings.HasPrefix(ct, "text/plain; version=0.0.4") || !strings.Contains(body, "# TYPE bearer_token_requests_total counter") {
		t.Errorf("metrics with the monitoring token: HTTP %d %s\n%s", status, ct, body)
	}
	if h := health(t, s, token); h.Status != http.StatusOK {
		t.Errorf("health of a fresh engine: %s", h)
	}
	for _, path := range []string{"/v1/bearer/creds/demo", "/v1/bearer/config/demo", "/v1/bearer/roles/demo"} {
		if r, err := s.Do(http.MethodGet, path, token, nil); err != nil || r.Status != http.StatusForbidden {
			t.Errorf("monitoring token: GET %s: %v %v; want 403", path, r, err)
		}
	}
	for _, path := range []string{"bearer/metrics", "bearer/health"} {
		if out, errOut, err := s.CLI(token, "path-help", path); err != nil || !strings.Contains(out, "node") {
			t.Errorf("vault path-help %s: %v\n%s%s", path, err, out, errOut)
		}
	}
	awaitSeries(t, prom, `up{job="vault-bearer"}`, 1, "Prometheus scrapes Vault")

	// A read (it takes the verify login's session: answered without a provider call, as
	// a cached read) and a forced renewal: a refresh.
	mustReadCreds(t, s, "demo")
	forceCreds(t, s, "demo")
	awaitSeries(t, prom, `bearer_token_requests_total{connection="demo",grant="refresh_token",outcome="success"}`, 1, "after a renewal")
	awaitSeries(t, prom, `bearer_token_requests_total{connection="demo",grant="password",outcome="success"}`, 1, "the verify login")
	awaitSeries(t, prom, `bearer_creds_reads_total{role="demo",answer="renewed"}`, 1, "reads that renewed")
	awaitSeries(t, prom, `bearer_provider_request_duration_seconds_count{connection="demo"}`, 2, "provider latency")
	awaitSeries(t, prom, `bearer_access_token_remaining_seconds{role="demo"} > 1000`, -1, "access token time left")
	awaitSeries(t, prom, `bearer_connection_credentials_rejected{connection="demo"}`, 0, "credentials not rejected")

	// The password changes in Vault to one the provider rejects, and the session is
	// discarded: the next read logs in and is rejected.
	wrong := "wrong-" + harness.RandomHex(8)
	sc.AddSecret(wrong)
	s.MustCLI("write", "bearer/config/demo", "password="+wrong, "verify=false")
	s.MustCLI("delete", "bearer/creds/demo")
	if r, err := s.Do(http.MethodGet, "/v1/bearer/creds/demo", s.Token, nil); err != nil || r.Status != http.StatusBadGateway {
		t.Fatalf("read with a rejected password: %v %v; want 502", r, err)
	}
	awaitSeries(t, prom, `bearer_token_requests_total{connection="demo",grant="password",outcome="rejected"}`, 1, "after a rejected password")
	awaitSeries(t, prom, `bearer_connection_credentials_rejected{connection="demo"}`, 1, "credentials rejected")
	awaitSeries(t, prom, `bearer_creds_reads_total{role="demo",answer="failed"}`, 1, "the failed read")
	awaitSeries(t, prom, `bearer_role_consecutive_failures{role="demo"}`, 1, "consecutive failures")
	awaitSeries(t, prom, fmt.Sprintf(`bearer_connection_next_login_timestamp_seconds{connection="demo"} > %d`, time.Now().Unix()), -1, "next login time")

	h := health(t, s, token)
	if h.Status != http.StatusServiceUnavailable {
		t.Fatalf("health after the rejection: %s", h)
	}
	// The CLI prints the reasons of a 503.
	if _, errOut, err := s.CLI(token, "read", "bearer/health"); err == nil || !strings.Contains(errOut, "Code: 503") ||
		!strings.Contains(errOut, `role "demo": the credentials of its connection "demo" were rejected`) {
		t.Errorf("vault read bearer/health after the rejection: %v\n%s", err, errOut)
	}
	// The JSON form, through the CLI: this node's counters.
	var metrics struct {
		Data map[string][]struct {
			Labels map[string]string `json:"labels"`
			Value  float64           `json:"value"`
		} `json:"data"`
	}
	if out, errOut, err := s.CLI(token, "read", "-format=json", "bearer/metrics"); err != nil || json.Unmarshal([]byte(out), &metrics) != nil {
		t.Errorf("vault read -format=json bearer/metrics: %v\n%s%s", err, out, errOut)
	}
	rejected := 0.0
	for _, m := range metrics.Data["bearer_token_requests_total"] {
		if m.Labels["grant"] == "password" && m.Labels["outcome"] == "rejected" {
			rejected += m.Value
		}
	}
	if rejected != 1 {
		t.Errorf("JSON metrics: %v rejected password logins, want 1: %v", rejected, metrics.Data)
	}
	errs := strings.Join(h.Errors, "\n")
	for _, want := range []string{`role "demo": the credentials of its connection "demo" were rejected`, `connection "demo" rejected the credentials of user`} {
		if !strings.Contains(errs, want) {
			t.Errorf("health errors lack %q:\n%s", want, errs)
		}
	}
	// Every series Prometheus holds, into the transcript, which is searched for secrets.
	if _, err := prom.Query(`{job="vault-bearer"}`); err != nil {
		t.Error(err)
	}
}

// readmeMonitoringToken writes the README's monitoring policy and runs its commands:
// the policy is written from a file in dir, the token written to dir/vault-token. It
// returns the token.
func readmeMonitoringToken(t *testing.T, s *harness.Server, dir string) string {
	t.Helper()
	var policy, script []string
	for _, b := range readmeBlocks(t, scrapeSection) {
		switch {
		case b.lang == "hcl" && strings.HasPrefix(strings.Join(b.lines, "\n"), `path "bearer/metrics"`):
			policy = b.lines
		case b.lang == "sh":
			script = shellLines(b)
		}
	}
	if policy == nil || len(script) != 2 {
		t.Fatalf("README %q: want the monitoring policy (hcl) and two commands (sh), got %d policy lines and %q", scrapeSection, len(policy), script)
	}
	policyFile := filepath.Join(dir, readmePolicyFile)
	if err := os.WriteFile(policyFile, []byte(strings.Join(policy, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	var token string
	for _, line := range script {
		cmd, out, redirected := strings.Cut(line, " > ")
		args := strings.Fields(strings.ReplaceAll(cmd, readmePolicyFile, policyFile))
		if args[0] != "vault" {
			t.Fatalf("README %q: %q is not a vault command", scrapeSection, line)
		}
		stdout := s.MustCLI(args[1:]...)
		if redirected {
			if strings.TrimSpace(out) != readmeTokenFile {
				t.Fatalf("README %q: %q writes to %q, want %s", scrapeSection, line, out, readmeTokenFile)
			}
			token = strings.TrimSpace(stdout)
			if err := os.WriteFile(filepath.Join(dir, "vault-token"), []byte(token+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if token == "" {
		t.Fatalf("README %q: no command wrote the token to %s", scrapeSection, readmeTokenFile)
	}
	return token
}

// readmeScrapeConfig is a prometheus.yml holding the README's scrape job, scraping s
// every second with the token in tokenFile.
func readmeScrapeConfig(t *testing.T, s *harness.Server, tokenFile string) string {
	t.Helper()
	for _, b := range readmeBlocks(t, scrapeSection) {
		job := strings.Join(b.lines, "\n")
		if b.lang != "yaml" || !strings.HasPrefix(job, "- job_name: vault-bearer") {
			continue
		}
		if !strings.Contains(job, readmeTokenFile) || !strings.Contains(job, readmeVaultAddr) {
			t.Fatalf("README scrape job: want %s and %s in it:\n%s", readmeTokenFile, readmeVaultAddr, job)
		}
		job = strings.ReplaceAll(job, readmeTokenFile, tokenFile)
		job = strings.ReplaceAll(job, readmeVaultAddr, strings.TrimPrefix(s.Addr, "http://"))
		return "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  " + strings.ReplaceAll(job, "\n", "\n  ") + "\n"
	}
	t.Fatalf("README %q: no yaml block starting with - job_name: vault-bearer", scrapeSection)
	return ""
}

// awaitSeries waits until the instant query expr answers one series, with value want
// (-1: any value, for a comparison such as "x > 5").
func awaitSeries(t *testing.T, prom *harness.Prometheus, expr string, want float64, what string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, 500*time.Millisecond, what+": "+expr, func() (bool, string) {
		samples, err := prom.Query(expr)
		if err != nil {
			return false, err.Error()
		}
		if len(samples) != 1 || (want >= 0 && samples[0].Value != want) {
			return false, fmt.Sprintf("answered %v; targets:\n%s", samples, prom.Targets())
		}
		return true, ""
	})
}

// rawGet is a GET of a Vault path whose answer is not JSON: its status, content type
// and body.
func rawGet(t *testing.T, s *harness.Server, path, token string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.Addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", token)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	return r.StatusCode, r.Header.Get("Content-Type"), string(b)
}

// health reads bearer/health with token.
func health(t *testing.T, s *harness.Server, token string) *harness.Response {
	t.Helper()
	r, err := s.Do(http.MethodGet, "/v1/bearer/health", token, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
