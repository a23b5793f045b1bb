package bearer

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/hashicorp/vault/sdk/logical"
)

// TestTokens_ReaderGoneDuringRefresh: a reader that disconnects while the provider
// rotates the refresh token does not lose the new one: the renewal completes and is
// saved, and nobody logs in again.
func TestTokens_ReaderGoneDuringRefresh(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL)
	logins := p.calls(grantPassword)

	ctx, cancel := context.WithCancel(context.Background())
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantRefresh {
			cancel() // the reader goes away while the provider works
		}
		return false
	})
	_, _ = env.b.HandleRequest(ctx, &logical.Request{Operation: logical.ReadOperation, Path: "creds/app", Storage: env.storage, MountPoint: "bearer/"})
	p.setHook(nil)

	if stored := env.storedSession(t, "app"); stored.Tokens.RefreshToken != "rt-mindbaz-2-rrrrrrrr" {
		t.Errorf("stored refresh token = %q, want the rotated rt-mindbaz-2", stored.Tokens.RefreshToken)
	}
	env.readCreds(t, "app")
	env.clock.Add(p.accessTTL)
	env.readCreds(t, "app")
	if p.calls(grantPassword) != logins || p.calls(grantRefresh) != 2 {
		t.Errorf("after the disconnect: %d new logins, %d refreshes; want 0 and 2", p.calls(grantPassword)-logins, p.calls(grantRefresh))
	}
}

// TestTokens_AccountChangeDuringRefresh: a connection write that changes the account
// while a renewal is in flight wins: the renewal's token (the old account's) is not
// served afterwards.
func TestTokens_AccountChangeDuringRefresh(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL)

	received, release := holdRefresh(p)
	done := make(chan *logical.Response, 1)
	go func() {
		resp, _ := env.request(t, logical.ReadOperation, "creds/app", nil)
		done <- resp
	}()
	<-received
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"username": "bob", "verify": false})
	release()
	inFlight := <-done
	p.setHook(nil)

	logins := p.calls(grantPassword)
	resp, _ := env.request(t, logical.ReadOperation, "creds/app", nil)
	if p.calls(grantPassword) != logins+1 {
		t.Errorf("the read after the account change made %d logins, want 1 as bob", p.calls(grantPassword)-logins)
	}
	if resp != nil && inFlight != nil && resp.Data["access_token"] != nil && resp.Data["access_token"] == inFlight.Data["access_token"] {
		t.Error("the old account's token was served after the account changed")
	}
}

// TestTokens_RefreshTokenStaysWithItsProvider: after the connection is pointed at
// another provider, the old session ends at the old provider (revocation) and its
// refresh token is never sent to the new one.
func TestTokens_RefreshTokenStaysWithItsProvider(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "apiax", env.clock)
	other := newFakeProvider(t, "apiax", env.clock)
	env.setup(t, p, nil, nil)
	env.readCreds(t, "app")
	rt := p.refreshTokens()[len(p.refreshTokens())-1]

	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"issuer": other.srv.URL + apiaxRealm, "ca_cert": other.caPEM(), "verify": false})
	env.b.bg.wait() // the old account's sessions end in the background
	env.mustOK(t, logical.DeleteOperation, "creds/app", nil)
	revoked := false
	for _, prov := range []*fakeProvider{p, other} {
		prov.mu.Lock()
		for _, r := range prov.requests {
			if r.form.Get("token") == rt || r.form.Get("refresh_token") == rt {
				if prov == other {
					t.Errorf("the old session's refresh token was sent to the new provider's %s", r.path)
				} else if r.path == apiaxRevoke {
					revoked = true
				}
			}
		}
		prov.mu.Unlock()
	}
	if !revoked {
		t.Error("the old session was not ended at the old provider")
	}
}

// TestTokens_RejectionSurvivesUnrelatedConfigWrites: after the provider rejects the
// password, a connection write that leaves the credentials alone (a Terraform
// re-apply, with the default verify=true) neither logs in nor lifts the block for
// the connection's other roles.
func TestTokens_RejectionSurvivesUnrelatedConfigWrites(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, map[string]any{"verify": false}, nil)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	p.setPassword("changed-at-the-provider")
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	attempts := p.calls(grantPassword)

	resp := env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s"})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "verification login skipped: the provider rejected these credentials at") {
		t.Errorf("write while rejected: %#v", resp)
	}
	msg := env.mustFail(t, logical.ReadOperation, "creds/other", nil)
	if !strings.Contains(msg, `connection "conn" rejected the credentials of user "alice@example.com"`) {
		t.Errorf("other role: %s", msg)
	}
	if got := p.calls(grantPassword) - attempts; got != 0 {
		t.Errorf("%d password logins while the credentials are known to be rejected, want 0", got)
	}

	// A new password lifts the block, and verify logs in with it.
	p.setPassword("n3w-Password")
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "n3w-Password"})
	env.readCreds(t, "other")
}

// TestTokens_UnsavedSessionOfAnOldAccount: a session that could not be saved, whose
// connection then changes account, is dropped; the next read logs in to the new one.
func TestTokens_UnsavedSessionOfAnOldAccount(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL)
	env.storage.failPuts.Store(true)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil) // refreshed, not saved
	env.storage.failPuts.Store(false)
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"username": "bob", "verify": false})

	logins := p.calls(grantPassword)
	msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil) // the fake provider knows no bob
	if p.calls(grantPassword) != logins+1 || !strings.Contains(msg, `rejected the credentials of user "bob"`) {
		t.Errorf("after the account change: %d logins, error %q; want 1 login as bob", p.calls(grantPassword)-logins, msg)
	}
}
