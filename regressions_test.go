package bearer

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Regression tests of the review of the renewal rewrite: each failed before its fix.

// failingGets fails every Get of keys under prefix while on is set.
type failingGets struct {
	logical.Storage
	prefix string
	on     atomic.Bool
}

func (s *failingGets) Get(ctx context.Context, key string) (*logical.StorageEntry, error) {
	if s.on.Load() && strings.HasPrefix(key, s.prefix) {
		return nil, fmt.Errorf("storage read timed out (test)")
	}
	return s.Storage.Get(ctx, key)
}

// loginsWith counts the password grants that carried password pw.
func loginsWith(p *fakeProvider, pw string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.requests {
		if r.grant == grantPassword && r.form.Get("password") == pw {
			n++
		}
	}
	return n
}

// TestRegression_GateTwoVersions: a login of unproven credentials leads the gate with a
// waiter; a password change (verify=false) makes the next login lead for the new
// version. When the first leader ends, its waiter is released, not left waiting forever.
func TestRegression_GateTwoVersions(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, map[string]any{"max_concurrent_requests": 10}, nil) // verify=false: unproven
	for _, r := range []string{"b", "c"} {
		env.mustOK(t, logical.UpdateOperation, "roles/"+r, map[string]any{"config": "conn"})
	}
	arrived, release := holdLogins(p)
	first := readRolesAsync(env, []string{"app"})
	waitFor(t, "the first leader's login at the provider", func() bool { return arrived.Load() == 1 })
	waiter := readRolesAsync(env, []string{"b"})
	waitForGoroutines(t, 1, "select", "(*loginGate).enter(")
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "an0ther-Passw0rd", "verify": false})
	third := readRolesAsync(env, []string{"c"})
	waitFor(t, "the second leader's login at the provider", func() bool { return arrived.Load() == 2 })
	release()
	<-first
	<-third
	select {
	case <-waiter:
	case <-time.After(30 * time.Second):
		t.Fatal("the read of role b waits forever in the login gate")
	}
	stopped := make(chan struct{})
	go func() { env.b.bg.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the background does not stop")
	}
}

// TestRegression_VerifyRejectionUnproves: a rejection recorded by a config write's
// verify login makes the credentials unproven: after the backoff one login goes alone.
func TestRegression_VerifyRejectionUnproves(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, map[string]any{"max_concurrent_requests": 10}, nil)
	var roles []string
	for i := range 9 {
		name := fmt.Sprintf("r%d", i)
		env.mustOK(t, logical.UpdateOperation, "roles/"+name, map[string]any{"config": "conn"})
		roles = append(roles, name)
	}
	env.readCreds(t, "app") // a login succeeds: the credentials are proven
	p.setPassword("changed-at-the-provider")
	env.mustFail(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s"}) // verify rejected, recorded
	if env.storedRejection(t, "conn") == nil {
		t.Fatal("the verify login's rejection is not recorded")
	}
	env.clock.Add(16 * time.Minute) // the backoff is over
	arrived, release := holdLogins(p)
	done := readRolesAsync(env, roles)
	waitForGoroutines(t, 8, "select", "(*loginGate).enter(")
	waitFor(t, "the first login at the provider", func() bool { return arrived.Load() >= 1 })
	if n := arrived.Load(); n != 1 {
		t.Errorf("%d logins at once after the backoff, want 1 alone", n)
	}
	release()
	for range roles {
		<-done
	}
	if n := arrived.Load(); n != 1 {
		t.Errorf("%d logins with the rejected password after the backoff, want 1", n)
	}
}

// TestRegression_AccountRecordUnreadable: when the connection's rejection record cannot
// be read, no login is sent (fail closed); a rejection that cannot be stored is kept in
// memory and still holds back the next login.
func TestRegression_AccountRecordUnreadable(t *testing.T) {
	t.Run("read fails after a restart", func(t *testing.T) {
		env := getTestBackend(t)
		fg := &failingGets{Storage: env.storage.Storage, prefix: accountPrefix}
		env.storage.Storage = fg
		p := withMindbaz(t, env, 0, nil, nil)
		p.setPassword("changed-at-the-provider")
		env.mustFail(t, logical.ReadOperation, "creds/app", nil) // rejected, recorded
		env.start(t)
		env.clock.Add(time.Minute)
		fg.on.Store(true)
		env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		if n := p.calls(grantPassword); n != 1 {
			t.Errorf("%d logins with the rejected password within its backoff, want 1", n)
		}
	})
	t.Run("rejection not stored", func(t *testing.T) {
		env := getTestBackend(t)
		fg := &failingGets{Storage: env.storage.Storage, prefix: accountPrefix}
		env.storage.Storage = fg
		p := withMindbaz(t, env, 0, nil, nil)
		p.setPassword("changed-at-the-provider")
		env.start(t)
		// The record can be read before the login (nothing is there), not after.
		env.mustOK(t, logical.ReadOperation, "roles/app", nil)
		p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
			if form.Get("grant_type") == grantPassword {
				fg.on.Store(true)
			}
			return false
		})
		msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		if !strings.Contains(msg, "no login is tried before "+formatTime(env.clock.Now().Add(15*time.Minute))) {
			t.Errorf("the rejection: %s", msg)
		}
		fg.on.Store(false)
		p.setHook(nil)
		env.clock.Add(time.Second)
		env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		if n := p.calls(grantPassword); n != 1 {
			t.Errorf("%d rejected logins one second apart, want 1", n)
		}
	})
}

// TestRegression_StaleLoginKeepsNewerRejection: a renewal that loaded the connection
// before a password change logs in with the old password; it neither lifts nor replaces
// the rejection of the new password.
func TestRegression_StaleLoginKeepsNewerRejection(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.mustOK(t, logical.UpdateOperation, "roles/b", map[string]any{"config": "conn"})
	env.clock.Add(p.accessTTL)
	received, release := holdRefresh(p)
	inflight := readRolesAsync(env, []string{"app"})
	<-received // app's refresh is at the provider; its renewal holds the old connection
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "wr0ng-New-Password", "verify": false})
	env.mustFail(t, logical.ReadOperation, "creds/b", nil) // the new password is rejected: backoff
	p.forgetSessions()                                     // app's refresh token turns out dead
	release()
	<-inflight
	p.setHook(nil)
	if rej := env.storedRejection(t, "conn"); rej == nil {
		t.Error("the stale renewal lifted the rejection of the new password")
	}
	env.clock.Add(time.Second)
	env.mustFail(t, logical.ReadOperation, "creds/b", nil)
	if n := loginsWith(p, "wr0ng-New-Password"); n != 1 {
		t.Errorf("%d logins with the rejected new password within its backoff, want 1", n)
	}
}

// TestRegression_GatewayTimeoutOnRefresh: a 5xx from a gateway (524: the origin did not
// answer in time) may follow a rotation: the refresh token counts as spent.
func TestRegression_GatewayTimeoutOnRefresh(t *testing.T) {
	for _, status := range []int{520, 522, 524, 598} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			env, p, _, _ := newSession(t)
			env.clock.Add(p.accessTTL) // expired: the read may retry
			p.setHook(func(w http.ResponseWriter, _ *http.Request, form url.Values) bool {
				if form.Get("grant_type") != grantRefresh {
					return false
				}
				p.consume(form.Get("refresh_token")) // the origin rotated it
				w.WriteHeader(status)
				return true
			})
			_, _ = env.request(t, logical.ReadOperation, "creds/app", nil)
			p.assertNoRefreshReuse(t)
			if p.calls(grantRefresh) != 1 {
				t.Errorf("%d refresh requests, want 1", p.calls(grantRefresh))
			}
		})
	}
}

// TestRegression_AccountChangeDuringColdLoad: an account change while a read loads a
// role whose view is not cached: the old account's token is not served afterwards.
func TestRegression_AccountChangeDuringColdLoad(t *testing.T) {
	env, _, _, _ := newSession(t)
	old := env.readCreds(t, "app").Data["access_token"]
	env.start(t)
	gate := &gatedStorage{Storage: env.storage.Storage, key: tokenPrefix + "app", entered: make(chan struct{}), release: make(chan struct{})}
	env.storage.Storage = gate
	env.mustOK(t, logical.ReadOperation, "config/conn", nil) // the connection is cached
	done := readRolesAsync(env, []string{"app"})
	<-gate.entered
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"username": "bob", "verify": false})
	close(gate.release)
	<-done
	resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
	if err == nil && resp != nil && resp.Data["access_token"] == old {
		t.Error("after the account change the old account's token is served")
	}
}

// TestRegression_LegacyRejectionForTheConnection: a rejection that v0.1.0 recorded in one
// role's session holds back the logins of every role of the connection at once.
func TestRegression_LegacyRejectionForTheConnection(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	_, conn, _ := env.b.connection(context.Background(), env.storage, "conn")
	p.setPassword("changed-at-the-provider")
	rejectedAt := env.clock.Now().Add(-time.Minute)
	old := fmt.Sprintf(`{"config":"conn","account_version":%d,"last_error":"password grant failed: invalid_grant (HTTP 401)",`+
		`"credentials_rejected_at":%q,"rejected_credentials_version":%d,"rejections":1,"consecutive_failures":1}`,
		conn.AccountVersion, rejectedAt.Format(time.RFC3339Nano), conn.CredentialsVersion)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	if err := env.storage.Put(context.Background(), &logical.StorageEntry{Key: tokenPrefix + "other", Value: []byte(old)}); err != nil {
		t.Fatal(err)
	}
	// The v0.1.0 state: no accounts/ record.
	if err := env.storage.Delete(context.Background(), accountPrefix+"conn"); err != nil {
		t.Fatal(err)
	}
	env.start(t)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if n := p.calls(grantPassword); n != 0 {
		t.Errorf("%d logins with credentials v0.1.0 recorded as rejected a minute ago", n)
	}
}
