package bearer

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Regression tests of the review of the renewal rewrite: each failed before its fix.

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
		env, p, failing := withFailingAccountReads(t)
		p.setPassword("changed-at-the-provider")
		env.mustFail(t, logical.ReadOperation, "creds/app", nil) // rejected, recorded
		env.start(t)
		env.clock.Add(time.Minute)
		failing.Store(true)
		env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		if n := p.calls(grantPassword); n != 1 {
			t.Errorf("%d logins with the rejected password within its backoff, want 1", n)
		}
	})
	t.Run("rejection not stored", func(t *testing.T) {
		env, p, failing := withFailingAccountReads(t)
		p.setPassword("changed-at-the-provider")
		env.start(t)
		// The record can be read before the login (nothing is there), not after.
		env.mustOK(t, logical.ReadOperation, "roles/app", nil)
		p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
			if form.Get("grant_type") == grantPassword {
				failing.Store(true)
			}
			return false
		})
		msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		if !strings.Contains(msg, "no login is tried before "+formatTime(env.clock.Now().Add(15*time.Minute))) {
			t.Errorf("the rejection: %s", msg)
		}
		failing.Store(false)
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
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	env.putLegacyRejection(t, "other", conn, env.clock.Now().Add(-time.Minute))
	env.start(t)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if n := p.calls(grantPassword); n != 0 {
		t.Errorf("%d logins with credentials v0.1.0 recorded as rejected a minute ago", n)
	}
}

// a rejection seen by this node (localRejection) outlives the deletion of the
// connection: a connection re-created under the same name (same CredentialsVersion 2),
// whose verify login just succeeded, is held back for the whole backoff.
func TestRegression_RejectionOfADeletedConnection(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	p.setPassword("changed-at-the-provider")
	env.setup(t, p, map[string]any{"verify": false}, nil)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil) // rejected: recorded
	env.mustOK(t, logical.DeleteOperation, "roles/app", nil)
	env.mustOK(t, logical.DeleteOperation, "config/conn", nil)

	p.setPassword(testPassword) // fixed at the provider
	env.setup(t, p, nil, nil)   // verify=true: the login succeeds
	resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
	if msg := errorText(resp, err); msg != "" {
		t.Errorf("read after re-creating the connection (verify login succeeded): %s", msg)
	}
	if conf := env.mustOK(t, logical.ReadOperation, "config/conn", nil).Data; conf["credentials_rejected_at"] != "" {
		t.Errorf("config read of the new connection: credentials_rejected_at=%v", conf["credentials_rejected_at"])
	}
	if h := env.health(t); h.status != http.StatusOK {
		t.Errorf("health of the new connection: %d %v", h.status, h.errors)
	}
}

// the rejection this node saw stays after another path lifted it: a config
// write's verify login (same credentials, after the backoff) succeeds and clears the
// stored record, yet config read, health and metrics keep saying "rejected" while the
// roles renew with their refresh tokens.
func TestRegression_RejectionLiftedByVerify(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.mustOK(t, logical.UpdateOperation, "roles/b", map[string]any{"config": "conn"})
	p.setPassword("locked")
	env.mustFail(t, logical.ReadOperation, "creds/b", nil) // b has no session: login rejected
	env.clock.Add(16 * time.Minute)                        // backoff over
	p.setPassword(testPassword)                            // account unlocked at the provider
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": 15})
	if rej := env.storedRejection(t, "conn"); rej != nil {
		t.Fatalf("stored rejection not lifted: %+v", rej)
	}
	if conf := env.mustOK(t, logical.ReadOperation, "config/conn", nil).Data; conf["credentials_rejected_at"] != "" {
		t.Errorf("config read after the verify login succeeded: credentials_rejected_at=%v", conf["credentials_rejected_at"])
	}
	if h := env.health(t); h.data.Connections["conn"].CredentialsRejected {
		t.Errorf("health after the verify login succeeded: connection still rejected: %v", h.errors)
	}
	m, _ := env.request(t, logical.ReadOperation, "metrics", map[string]any{"format": "prometheus"})
	if body := string(m.Data[logical.HTTPRawBody].([]byte)); strings.Contains(body, `bearer_connection_credentials_rejected{connection="conn"} 1`) {
		t.Errorf("metrics after the verify login succeeded still say rejected")
	}
}

// health says "healthy" (200) for roles of a grant_type=refresh_token connection
// that cannot serve any token: never seeded, or whose seeded session ended.
func TestRegression_HealthOfAnEndedSeededSession(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	withSeededConnection(t, env, p)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil) // no session was seeded
	if h := env.health(t); h.status == http.StatusOK {
		t.Errorf("never seeded, every read fails: health 200, role %+v", h.data.Roles["app"])
	}
	p.mu.Lock()
	p.live["rt-seed-rrrrrrrr"] = true
	p.mu.Unlock()
	env.mustOK(t, logical.UpdateOperation, "creds/app", map[string]any{"refresh_token": "rt-seed-rrrrrrrr"})
	p.forgetSessions()
	env.clock.Add(p.accessTTL)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil) // the session ended
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if h := env.health(t); h.status == http.StatusOK {
		t.Errorf("session ended, every read fails: health 200, role %+v", h.data.Roles["app"])
	}
	if d := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data; d["consecutive_failures"] == 0 {
		t.Errorf("role read: consecutive_failures 0 for a role whose every read fails (last_error %q)", d["last_error"])
	}
}

// a background renewal whose write-ahead mark cannot be written (a storage
// hiccup) serves the old token and drops the role from the schedule: no background
// renewal ever again, not even after Vault's periodic call; the reads then renew on
// their own path, waiting on the provider.
func TestRegression_BackgroundKeepsARoleAfterAFailedMark(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.runPeriodic(t) // active: the schedule is built and the timer runs
	env.readCreds(t, "app")
	v := env.b.roleState("app").view.Load()
	due := renewalPoint("app", v.role, &v.session.Tokens)
	env.storage.failPuts.Store(true)
	advanceTo(env.clock, due.Add(time.Second)) // the background renewal runs, its mark fails
	env.storage.failPuts.Store(false)
	refreshes := p.calls(grantRefresh)
	env.runPeriodic(t)
	readable := v.session.Tokens.readableUntil(v.role.MinTTL)
	advanceTo(env.clock, readable.Add(-time.Second)) // a window of minutes before reads need it
	env.runPeriodic(t)
	if p.calls(grantRefresh) == refreshes {
		t.Errorf("no background renewal between the failed mark at %s and %s: the role left the schedule (scheduled: %v)",
			formatTime(due), formatTime(readable), env.b.bg.sched.len())
	}
}

// a rejection of a private_key_jwt client for its assertion's audience cannot be
// lifted by fixing client_assertion_audience: the CredentialsVersion does not change,
// the verify login is skipped and every read stays held back for the backoff.
func TestRegression_AudienceFixLiftsRejection(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	keyPEM, pub := testKey(t, "ec")
	p.clientKey = pub
	env.mustOK(t, logical.UpdateOperation, "config/jwt", clientCredentialsConn(p, map[string]any{
		"client_auth": clientAuthJWT, "client_private_key": keyPEM, "client_assertion_audience": "https://sso.example.com/realms/acme", "verify": false,
	}))
	env.mustOK(t, logical.UpdateOperation, "roles/svc", map[string]any{"config": "jwt"})
	env.mustFail(t, logical.ReadOperation, "creds/svc", nil) // invalid_client: recorded
	env.mustOK(t, logical.UpdateOperation, "config/jwt", map[string]any{"client_assertion_audience": p.tokenURL()})
	resp2, err := env.request(t, logical.ReadOperation, "creds/svc", nil)
	if msg := errorText(resp2, err); msg != "" {
		t.Errorf("read after fixing the audience: %s", msg)
	}
}

// Clean (bg.stop) re-opens the background once it has waited: a timer that had
// fired when Clean began, whose callback ran a moment later, starts a dispatch on the
// cleaned backend: a full storage scan and provider calls after Clean.
func TestRegression_TimerAfterClean(t *testing.T) {
	env, p, _, _ := newSession(t)
	var mu sync.Mutex
	var fired []func()
	env.b.afterFunc = func(d time.Duration, f func()) func() bool {
		mu.Lock()
		defer mu.Unlock()
		fired = append(fired, f)
		return func() bool { return false } // already fired: Stop cannot prevent the callback
	}
	env.runPeriodic(t)
	env.readCreds(t, "app") // served: scheduled, timer armed
	mu.Lock()
	if len(fired) == 0 {
		t.Fatal("no timer armed")
	}
	cb := fired[len(fired)-1]
	mu.Unlock()
	env.b.Cleanup(context.Background())       // unmount / reload
	env.clock.Add(6*24*time.Hour + time.Hour) // the idle session is due for its keep-alive
	before := p.calls("")
	cb() // the timer's callback, delayed past Clean by the scheduler
	env.b.bg.wait()
	if n := p.calls("") - before; n > 0 {
		t.Errorf("%d token requests by the background after Clean", n)
	}
}

// a rejected client (invalid_client) is tried again, within its backoff, by every
// other role of the connection that holds a refresh token: decide refreshes (row 3)
// before it looks at the rejection (row 4), and the refresh authenticates the client.
// Each such request also throws the role's session away (R4: "spent").
func TestRegression_RejectedClientHoldsBackRefreshes(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, map[string]any{"client_secret": testSecret}, nil)
	roles := []string{"app", "b", "c", "d"}
	for _, r := range roles[1:] {
		env.mustOK(t, logical.UpdateOperation, "roles/"+r, map[string]any{"config": "conn"})
	}
	for _, r := range roles {
		env.readCreds(t, r)
	}
	// The client secret is rotated at the provider: every request of this client fails.
	p.setHook(func(w http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("client_secret") == testSecret {
			oauthError(w, http.StatusUnauthorized, "invalid_client", "Invalid client credentials")
			return true
		}
		return false
	})
	env.clock.Add(p.accessTTL)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil) // refresh, then login: the client is rejected
	if rej := env.storedRejection(t, "conn"); rej == nil || !rej.Client {
		t.Fatalf("client rejection not recorded: %+v", rej)
	}
	after := p.calls("")
	for _, r := range roles[1:] {
		env.mustFail(t, logical.ReadOperation, "creds/"+r, nil)
	}
	if n := p.calls("") - after; n != 0 {
		t.Errorf("%d requests with the rejected client within its backoff (one refresh per other role), want 0", n)
	}
	for _, r := range roles[1:] {
		s := env.storedSession(t, r)
		if s.Tokens.RefreshToken == "" || !s.Tokens.RefreshSentAt.IsZero() {
			t.Errorf("role %s lost its session to a refresh refused for the rejected client", r)
		}
	}
}
