package e2e

import (
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// upgradeVersion is the second build TestUpgradeKeepsSession switches to.
const upgradeVersion = "v0.1.1-e2e"

// TestUpgradeKeepsSession follows the README's "Upgrading" steps: a second
// version of the plugin, installed next to the first under its own file name
// and registered by sha256, takes over the mount with `secrets tune
// -plugin-version` and `plugin reload`. The new process serves the session
// the old one stored (same access token, no provider call) and renews it
// with the stored refresh token, not with a password login; rolling back to
// the first version keeps the renewed session the same way.
func TestUpgradeKeepsSession(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Minute
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	command := harness.PluginCommand + "_" + upgradeVersion
	sum, err := env.BuildPluginVersion(upgradeVersion, command)
	if err != nil {
		t.Fatal(err)
	}
	if sum == env.PluginSHA256 {
		t.Fatal("the two versions built to the same binary")
	}
	s := sc.StartDev()
	s.RegisterPlugin()
	s.RegisterPluginVersion(sum, command, upgradeVersion)
	s.EnableEngine() // with the first version
	if m := readMount(t, s, "bearer/"); m.RunningPluginVersion != pluginVersion {
		t.Fatalf("bearer/ runs %q before the upgrade, want %q", m.RunningPluginVersion, pluginVersion)
	}
	writeConfig(sc, s, "demo")
	s.MustCLI("write", "bearer/roles/demo", "config=demo")
	base := p.Counts() // after the verify login, whose session the first read takes
	c1 := mustReadCreds(t, s, "demo")

	switchVersion(t, s, upgradeVersion, sum)
	before := p.Counts()
	c2 := mustReadCreds(t, s, "demo")
	assertCounts(t, p, before, provider.Counts{}, "first read after the upgrade")
	if c2.AccessToken != c1.AccessToken {
		t.Error("after the upgrade the token changed; want the one the first version stored")
	}
	checkCredsShape(t, c2, life, 60*time.Second)

	// A renewal by the new version presents the refresh token the first
	// version stored; the provider rotates it.
	c3 := forceCreds(t, s, "demo")
	if is, _ := p.Lookup(c3.AccessToken); is.GrantType != "refresh_token" || c3.AccessToken == c2.AccessToken {
		t.Errorf("renewal after the upgrade: grant %q, same token %v; want a new token from the refresh grant",
			is.GrantType, c3.AccessToken == c2.AccessToken)
	}
	assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "renewal after the upgrade")

	// Rolling back: the first version serves the session the new one renewed.
	switchVersion(t, s, pluginVersion, env.PluginSHA256)
	before = p.Counts()
	if c4 := mustReadCreds(t, s, "demo"); c4.AccessToken != c3.AccessToken {
		t.Error("after the rollback the token changed; want the one the new version renewed")
	}
	assertCounts(t, p, before, provider.Counts{}, "first read after the rollback")

	total := p.Counts().Sub(base)
	if total.PasswordOK != 0 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("whole run: %+v; want no password login after the verify login, no invalid_grant", total)
	}
}

// switchVersion runs the README's upgrade (or rollback) commands for bearer/
// and checks that the mount then runs version, the binary with sha256 sum.
func switchVersion(t *testing.T, s *harness.Server, version, sum string) {
	t.Helper()
	s.MustCLI("secrets", "tune", "-plugin-version="+version, "bearer/")
	s.MustCLI("plugin", "reload", "-type=secret", "-plugin="+harness.PluginName)
	m := readMount(t, s, "bearer/")
	if m.PluginVersion != version || m.RunningPluginVersion != version || m.RunningSHA256 != sum {
		t.Fatalf("bearer/ after switching to %s: plugin_version %q, running_plugin_version %q, running_sha256 %.12s; want %s and %.12s",
			version, m.PluginVersion, m.RunningPluginVersion, m.RunningSHA256, version, sum)
	}
}
