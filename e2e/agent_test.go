package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestAgentTemplate is scenario 3: Vault Agent, with the README's template
// stanza, renders the access token to a file of the README's mode (0600)
// and, driven by the ttl and rotation_period keys (no lease), replaces it
// with a new valid token before the old one expires, renewal after renewal.
func TestAgentTemplate(t *testing.T) {
	t.Parallel()
	const (
		life     = 20 * time.Second // min_ttl 60s is capped at 10s
		renewals = 3
	)
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	s := sc.StartDev()
	setupEngine(sc, s)
	app := createAppToken(t, s)

	tpl := readmeAgentTemplate(t)
	tpl.Destination = filepath.Join(sc.Dir, "access_token")
	dest := tpl.Destination
	base, start := p.Counts(), time.Now()
	agent := sc.StartAgent(s, app, tpl)

	type change struct {
		token string
		at    time.Time
		iss   provider.Issued
	}
	var changes []change
	deadline := time.Now().Add(time.Duration(renewals+2) * life)
	for len(changes) < renewals+1 {
		if time.Now().After(deadline) {
			t.Fatalf("saw %d renewals of the rendered token before the deadline, want %d", len(changes)-1, renewals)
		}
		if !agent.Running() {
			t.Fatal("vault agent exited")
		}
		b, err := os.ReadFile(dest)
		tok := strings.TrimSpace(string(b))
		now := time.Now()
		switch {
		case err != nil || tok == "":
			// Not rendered yet.
		case len(changes) > 0 && tok == changes[len(changes)-1].token:
			if iss := changes[len(changes)-1].iss; now.After(iss.ExpiresAt) {
				t.Fatalf("the rendered token expired at %s and is still in the file", iss.ExpiresAt.Format(time.RFC3339))
			}
		default:
			iss, ok := p.Lookup(tok)
			if !ok {
				t.Fatalf("the agent rendered a token the provider never issued: %.12q", tok)
			}
			if fi, err := os.Stat(dest); err != nil {
				t.Error(err)
			} else if fi.Mode().Perm() != 0o600 {
				t.Errorf("rendered token file has mode %v, want -rw------- (the README's perms)", fi.Mode())
			}
			if in, err := p.Introspect(context.Background(), tok); err != nil || !in.Active {
				t.Errorf("rendered token is not active at the provider: %+v, %v", in, err)
			}
			if n := len(changes); n > 0 {
				prev := changes[n-1]
				if now.After(prev.iss.ExpiresAt) {
					t.Errorf("renewal %d rendered at %s, after the previous token expired at %s",
						n, now.Format(time.RFC3339), prev.iss.ExpiresAt.Format(time.RFC3339))
				}
				// Re-reads follow ttl+1 (about life-min_ttl), not a fixed
				// interval and not a busy loop.
				if gap := now.Sub(prev.at); gap < life/4 {
					t.Errorf("renewal %d came %s after the previous one; want about %s (ttl+1)", n, gap, life/2)
				}
				if iss.GrantType != "refresh_token" {
					t.Errorf("renewal %d used grant %q, want refresh_token", n, iss.GrantType)
				}
			}
			t.Logf("rendered token %d at +%s (expires %s)", len(changes), now.Sub(start).Round(time.Millisecond), iss.ExpiresAt.Format(time.TimeOnly))
			changes = append(changes, change{token: tok, at: now, iss: iss})
		}
		time.Sleep(200 * time.Millisecond)
	}

	got := p.Counts().Sub(base)
	if got.PasswordOK > 1 || got.PasswordFailed != 0 || got.RefreshInvalidGrant != 0 || got.RefreshFailed != 0 ||
		got.RefreshOK < renewals || got.RefreshOK > renewals+1 {
		t.Errorf("provider traffic while the agent ran: %+v; want at most 1 password login and %d refreshes", got, renewals)
	}

	// consul-template says when it schedules the re-read from rotation_period.
	logText, err := os.ReadFile(agent.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logText), "Found rotation_period") {
		t.Errorf("agent log does not show the re-read scheduled from rotation_period/ttl")
	}
}

// readmeAgentTemplate is the README's Vault Agent template stanza (section
// "## Reading a token"): its contents, reading the test's role "demo" instead
// of the README's "mindbaz", and its perms, which must be "0600". The test
// sets the destination.
func readmeAgentTemplate(t *testing.T) harness.Template {
	t.Helper()
	for _, b := range readmeBlocks(t, "## Reading a token") {
		text := strings.Join(b.lines, "\n")
		if b.lang != "hcl" || !strings.HasPrefix(text, "template {") {
			continue
		}
		tpl := harness.Template{
			Contents: strings.ReplaceAll(hclString("contents", text), "bearer/creds/mindbaz", "bearer/creds/demo"),
			Perms:    hclString("perms", text),
		}
		if !strings.Contains(tpl.Contents, "bearer/creds/demo") || tpl.Perms != "0600" {
			t.Fatalf("README template stanza: contents %q, perms %q; want bearer/creds/mindbaz and \"0600\"", tpl.Contents, tpl.Perms)
		}
		return tpl
	}
	t.Fatal(`README "## Reading a token": no hcl block starting "template {"`)
	return harness.Template{}
}

// hclString returns the value of the quoted string attribute key in an HCL
// block (a Go-compatible string literal), or "".
func hclString(key, text string) string {
	m := regexp.MustCompile(`(?m)^\s*` + key + `\s*=\s*("(?:[^"\\]|\\.)*")`).FindStringSubmatch(text)
	if m == nil {
		return ""
	}
	v, err := strconv.Unquote(m[1])
	if err != nil {
		return ""
	}
	return v
}
