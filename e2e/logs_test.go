package e2e

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestNoSecretsInLogs is scenario 6: with Vault's server log at trace level
// (which carries the plugin's own log output), the password, the client
// secret and every refresh token stay out of the log and out of every CLI and
// HTTP answer, across the success and failure paths: a refused password, a
// confidential client with HTTP Basic, forced renewals, a refresh token
// revoked behind the engine's back (invalid_grant, then a password login),
// and forgetting the tokens with revocation.
//
// Every other scenario runs the same search over its own logs when it ends.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Minute
	// A password that needs form encoding, and a confidential client.
	password := "P@ss w&rd+=/%" + "-" + harness.RandomHex(8)
	secret := "cs-" + harness.RandomHex(8)
	sc := env.NewScenario(t, provider.Config{
		AccessTokenTTL:           life,
		ClientID:                 "pub-client",
		Password:                 password,
		ConfidentialClientID:     "conf-client",
		ConfidentialClientSecret: secret,
	})
	p := sc.Provider
	wrong := "wrong-" + harness.RandomHex(8)
	sc.AddSecret(wrong)
	s := sc.StartDev()
	s.RegisterPlugin()
	s.EnableEngine()

	// A refused password: the write fails, and neither the error nor the
	// log repeats the password.
	before := p.Counts()
	out, errOut, err := s.CLI(s.Token, "write", "bearer/config/bad",
		"token_url="+p.TokenURL(), "client_id=pub-client", "username=demo", "password="+wrong)
	if err == nil {
		t.Errorf("config write with a wrong password succeeded (verify defaults to true): %s", out)
	}
	if strings.Contains(errOut, wrong) {
		t.Errorf("the refused config write quotes the password: %s", errOut)
	}
	assertCounts(t, p, before, provider.Counts{PasswordFailed: 1}, "config write with a wrong password")

	// Saved anyway, a read fails: one clear message with HTTP 502, not Vault's list
	// of errors, through the CLI and the HTTP API.
	s.MustCLI("write", "bearer/config/bad", "token_url="+p.TokenURL(), "client_id=pub-client", "username=demo", "password="+wrong, "verify=false")
	s.MustCLI("write", "bearer/roles/bad", "config=bad")
	_, errOut, err = s.CLI(s.Token, "read", "bearer/creds/bad")
	if err == nil || !strings.Contains(errOut, "Code: 502") || strings.Contains(errOut, "error occurred") ||
		!strings.Contains(errOut, `connection "bad" rejected the credentials of user "demo"`) {
		t.Errorf("a read whose login is rejected, through the CLI: %v\n%s", err, errOut)
	}
	resp, err := s.Do("GET", "/v1/bearer/creds/bad", s.Token, nil)
	if err != nil || resp.Status != 502 || len(resp.Errors) != 1 || !strings.Contains(resp.Errors[0], "no login is tried before") {
		t.Errorf("the same over HTTP: %v %v", err, resp)
	}

	// A public client, and a confidential client using HTTP Basic, with
	// revocation when tokens are forgotten.
	writeConfig(sc, s, "pub", "revocation_url="+p.RevokeURL())
	s.MustCLI("write", "bearer/config/conf", "token_url="+p.TokenURL(), "revocation_url="+p.RevokeURL(),
		"client_id=conf-client", "client_secret="+secret, "client_auth=basic", "username=demo", "password="+password)
	s.MustCLI("write", "bearer/roles/pub", "config=pub")
	s.MustCLI("write", "bearer/roles/conf", "config=conf", "scopes=read,write")

	for _, role := range []string{"pub", "conf"} {
		c := readCredsCLI(t, s, role)
		checkCredsShape(t, c, life, 60*time.Second)
		f := forceCreds(t, s, role)
		if is, _ := p.Lookup(f.AccessToken); is.GrantType != "refresh_token" {
			t.Errorf("forced renewal of %s used grant %q, want refresh_token", role, is.GrantType)
		}
		s.MustCLI("read", "bearer/roles/"+role)
		s.MustCLI("read", "bearer/config/"+role)
	}
	if c := mustReadCreds(t, s, "conf"); c.Scope != "read write" {
		t.Errorf("conf token scope = %q, want \"read write\"", c.Scope)
	}

	// Revoke the engine's refresh token at the provider: the next renewal
	// gets invalid_grant and falls back to one password login.
	rt := latestRefreshToken(p, "pub-client")
	if resp, err := http.PostForm(p.RevokeURL(), url.Values{"client_id": {"pub-client"}, "token": {rt}}); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	before = p.Counts()
	c := forceCreds(t, s, "pub")
	assertCounts(t, p, before, provider.Counts{RefreshInvalidGrant: 1, PasswordOK: 1}, "renewal with a revoked refresh token")
	if in, err := p.Introspect(context.Background(), c.AccessToken); err != nil || !in.Active {
		t.Errorf("token after the fallback login is not active: %+v, %v", in, err)
	}
	var role struct {
		Data map[string]any `json:"data"`
	}
	s.CLIJSON(&role, "read", "-format=json", "bearer/roles/pub")
	if role.Data["last_grant"] != "password" {
		t.Errorf("role state after the fallback: last_grant=%v", role.Data["last_grant"])
	}

	// Forgetting the tokens revokes the refresh token (best effort), and the
	// next read logs in again.
	before = p.Counts()
	s.MustCLI("delete", "bearer/creds/conf")
	if got := p.Counts().Sub(before); got.Revocations != 1 || got.TokenCalls() != 0 {
		t.Errorf("delete creds with revocation_url: provider traffic %+v, want one revocation", got)
	}
	before = p.Counts()
	mustReadCreds(t, s, "conf")
	assertCounts(t, p, before, provider.Counts{PasswordOK: 1}, "read after delete")

	// What the provider saw: the password only in password grants, the
	// client secret never in a form (HTTP Basic).
	for _, f := range p.Forms() {
		form, _ := url.ParseQuery(f)
		if strings.Contains(f, url.QueryEscape(password)) && form.Get("grant_type") != "password" {
			t.Errorf("the password was sent outside a password grant (grant_type=%q)", form.Get("grant_type"))
		}
		if form.Get("client_secret") != "" || strings.Contains(f, url.QueryEscape(secret)) {
			t.Errorf("the client secret was sent in a form body although client_auth=basic (grant_type=%q)", form.Get("grant_type"))
		}
	}

	// Stop Vault so the log is complete, then search it.
	s.Stop()
	logText, err := os.ReadFile(s.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logText), "[TRACE]") || !strings.Contains(string(logText), "secrets.bearer.") {
		t.Errorf("the server log has no trace lines or no plugin lines; the search would prove nothing")
	}
	if leaks := sc.LeakReport(); leaks != "" {
		t.Errorf("secrets in logs or answers:\n%s", leaks)
	}
	t.Logf("searched %d bytes of server log for %d secrets (%d refresh tokens)", len(logText), len(sc.Secrets()), len(p.RefreshTokens()))
}

// latestRefreshToken is the newest refresh token issued to clientID.
func latestRefreshToken(p *provider.Provider, clientID string) string {
	var rt string
	for _, is := range p.Issued() {
		if is.ClientID == clientID && is.RefreshToken != "" {
			rt = is.RefreshToken
		}
	}
	return rt
}
