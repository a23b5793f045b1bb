package e2e

import (
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestRestartKeepsTokens is scenario 2: on persistent storage, a restart of
// Vault (and of the plugin) keeps the access token and the newest refresh
// token: no provider call on the first read after the restart, and the next
// renewal uses the rotated refresh token (the provider would answer
// invalid_grant to an old one and revoke the family).
func TestRestartKeepsTokens(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Second // min_ttl 60s is capped at 10s
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	s := sc.NewServer(harness.ServerOptions{Storage: harness.StorageFile})
	s.Start()
	s.Init()
	s.Unseal()
	s.WaitActive()
	setupEngine(sc, s)
	base := p.Counts() // after the verify login

	c1 := mustReadCreds(t, s, "demo")
	checkCredsShape(t, c1, life, life/2)
	// Rotate once, so that the stored refresh token is not the first one.
	c2 := forceCreds(t, s, "demo")
	if is, _ := p.Lookup(c2.AccessToken); is.GrantType != "refresh_token" || c2.AccessToken == c1.AccessToken {
		t.Fatalf("forced renewal: grant %q, same token %v; want a new token from the refresh grant", is.GrantType, c2.AccessToken == c1.AccessToken)
	}

	restart(s)
	before := p.Counts()
	c3 := mustReadCreds(t, s, "demo")
	assertCounts(t, p, before, provider.Counts{}, "first read after restart")
	if c3.AccessToken != c2.AccessToken {
		t.Errorf("after restart the token changed; want the persisted one")
	}

	// Past the renewal point (10 s before expiry) a read refreshes, with the
	// refresh token issued by the forced renewal.
	var c4 creds
	harness.Eventually(t, life+10*time.Second, 250*time.Millisecond, "token renewed after restart", func() (bool, string) {
		c, err := readCreds(s, s.Token, "demo")
		if err != nil {
			t.Fatal(err)
		}
		c4 = c
		return c.AccessToken != c2.AccessToken, "still the token from before the restart"
	})
	if time.Now().After(c2.ExpiresAt) {
		t.Errorf("token renewed at %s, after the old one expired at %s", time.Now().Format(time.RFC3339), c2.ExpiresAtRaw)
	}
	checkCredsShape(t, c4, life, life/2)
	if is, _ := p.Lookup(c4.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("renewal after restart used grant %q, want refresh_token", is.GrantType)
	}
	assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "renewal after restart")

	// That refresh's new refresh token was persisted too.
	restart(s)
	before = p.Counts()
	c5 := forceCreds(t, s, "demo")
	if is, _ := p.Lookup(c5.AccessToken); is.GrantType != "refresh_token" {
		t.Errorf("forced renewal after the second restart used grant %q, want refresh_token", is.GrantType)
	}
	assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "forced renewal after the second restart")

	total := p.Counts().Sub(base)
	if total.PasswordOK > 1 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("whole run: %+v; want one password login, no invalid_grant", total)
	}
}
