package bearer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// The tests of the renewal state machine, following docs/renewal.md: the decision table,
// then each step's writes and what a crash or failed write after them leaves.

func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	conn := &connEntry{name: "conn", CredentialsVersion: 3, Revision: 7}
	valid := sessionTokens{AccessToken: "at", ObtainedAt: t0, ExpiresAt: t0.Add(20 * time.Minute), RefreshToken: "rt"}
	withRT := func(mut func(*sessionTokens)) sessionTokens {
		t := valid
		mut(&t)
		return t
	}
	expired := withRT(func(t *sessionTokens) { t.ExpiresAt = t0.Add(-time.Second) })
	rejected := &rejection{CredentialsVersion: 3, At: t0.Add(-time.Minute), NextLoginAt: t0.Add(14 * time.Minute)}
	cases := map[string]struct {
		sit  situation
		want step
	}{
		"a token good enough is served": {
			sit: situation{tokens: valid, minTTL: time.Minute}, want: stepServe,
		},
		"forced: renewed although good enough": {
			sit: situation{tokens: valid, minTTL: time.Minute, force: true}, want: stepRefresh,
		},
		"under min_ttl: refresh": {
			sit: situation{tokens: valid, minTTL: 19*time.Minute + time.Second}, want: stepServe, // capped at half: 10 min
		},
		"expired with a refresh token: refresh": {
			sit: situation{tokens: expired}, want: stepRefresh,
		},
		"refresh token marked sent: spent, log in": {
			sit:  situation{tokens: withRT(func(t *sessionTokens) { t.ExpiresAt = t0; t.RefreshSentAt = t0.Add(-time.Hour) })},
			want: stepLogin,
		},
		"refresh token known to be expired: log in": {
			sit:  situation{tokens: withRT(func(t *sessionTokens) { t.ExpiresAt = t0; t.RefreshExpiresAt = t0 })},
			want: stepLogin,
		},
		"no session: log in": {
			sit: situation{}, want: stepLogin,
		},
		"inside the retry window: wait, even forced": {
			sit: situation{
				tokens: expired, force: true,
				failure: failureRecord{NextAttemptAt: t0.Add(time.Second), ConnRevision: 7},
			},
			want: stepWaitRetry,
		},
		"a config write since the failure lifts the window": {
			sit: situation{
				tokens:  expired,
				failure: failureRecord{NextAttemptAt: t0.Add(time.Second), ConnRevision: 6},
			},
			want: stepRefresh,
		},
		"the window ends at NextAttemptAt": {
			sit: situation{
				tokens:  expired,
				failure: failureRecord{NextAttemptAt: t0, ConnRevision: 7},
			},
			want: stepRefresh,
		},
		"rejected credentials: a refresh token still serves": {
			sit: situation{tokens: expired, rejection: rejected}, want: stepRefresh,
		},
		"rejected client: a refresh (which authenticates it) waits too": {
			sit:  situation{tokens: expired, rejection: &rejection{CredentialsVersion: 3, Client: true, NextLoginAt: t0.Add(time.Minute)}},
			want: stepWaitRejection,
		},
		"rejected credentials, no refresh token: wait for the backoff": {
			sit: situation{rejection: rejected}, want: stepWaitRejection,
		},
		"a rejection of older credentials does not hold back": {
			sit: situation{rejection: &rejection{CredentialsVersion: 2, NextLoginAt: t0.Add(time.Hour)}}, want: stepLogin,
		},
		"after the backoff: log in": {
			sit: situation{rejection: &rejection{CredentialsVersion: 3, NextLoginAt: t0}}, want: stepLogin,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tc.sit.now, tc.sit.conn, tc.sit.connRevision = t0, conn, conn.Revision
			if got := decide(tc.sit); got != tc.want {
				t.Errorf("decide = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestRenewal_SaveFailsAfterRefresh (R2): the refresh succeeds but its save fails;
// after a restart on the same storage the next renewal logs in and the spent refresh
// token is never presented again.
func TestRenewal_SaveFailsAfterRefresh(t *testing.T) {
	env, p, _, _ := newSession(t)
	spent := env.storedSession(t, "app").Tokens.RefreshToken
	env.clock.Add(p.accessTTL)
	failStorageOnRefresh(p, func() { env.storage.failPuts.Store(true) })
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	p.setHook(nil)
	env.storage.failPuts.Store(false)
	if st := env.storedSession(t, "app"); st.Tokens.RefreshToken != spent || st.Tokens.RefreshSentAt.IsZero() {
		t.Fatalf("stored session: refresh token %q marked %v; want the spent one, marked", st.Tokens.RefreshToken, st.Tokens.RefreshSentAt)
	}

	env.start(t) // the process died: the new session in memory is lost
	logins, refreshes := p.calls(grantPassword), p.calls(grantRefresh)
	env.readCreds(t, "app")
	if p.calls(grantPassword) != logins+1 || p.calls(grantRefresh) != refreshes {
		t.Errorf("after the restart: %d logins, %d refreshes; want 1 login, no refresh", p.calls(grantPassword)-logins, p.calls(grantRefresh)-refreshes)
	}
	p.assertNoRefreshReuse(t)
	// The new session renews with its own refresh token.
	env.clock.Add(p.accessTTL)
	env.readCreds(t, "app")
	if p.calls(grantRefresh) != refreshes+1 {
		t.Errorf("the next renewal made %d refreshes, want 1", p.calls(grantRefresh)-refreshes)
	}
	p.assertNoRefreshReuse(t)
}

// TestRenewal_LeadershipLostDuringRefresh (R2): the node loses leadership while its
// refresh is at the provider, so the save is refused as read-only and the request goes
// to another node; the new active node, over the same storage, logs in and never
// presents the spent refresh token.
func TestRenewal_LeadershipLostDuringRefresh(t *testing.T) {
	shared := &logical.InmemStorage{}
	old := &switchableStorage{Storage: shared}
	env := &testEnv{storage: &testStorage{Storage: old}, clock: newTestClock(), logs: &syncBuffer{}}
	env.start(t)
	p := withMindbaz(t, env, 0, nil, nil)
	env.readCreds(t, "app")
	env.clock.Add(p.accessTTL)

	failStorageOnRefresh(p, func() { old.readOnly.Store(true) })
	if _, err := env.request(t, logical.ReadOperation, "creds/app", nil); !errors.Is(err, logical.ErrReadOnly) {
		t.Fatalf("the read on the node that lost leadership: %v, want ErrReadOnly (Vault forwards it)", err)
	}
	p.setHook(nil)

	active := newNode(t, env, shared)
	logins, refreshes := p.calls(grantPassword), p.calls(grantRefresh)
	active.readCreds(t, "app")
	if p.calls(grantPassword) != logins+1 || p.calls(grantRefresh) != refreshes {
		t.Errorf("the new active node made %d logins and %d refreshes; want 1 login", p.calls(grantPassword)-logins, p.calls(grantRefresh)-refreshes)
	}
	p.assertNoRefreshReuse(t)
}

// TestRenewal_MarkNotWritten (R1): storage that cannot record the write-ahead mark
// means the refresh token is not sent; a still-valid token is served with a warning.
func TestRenewal_MarkNotWritten(t *testing.T) {
	env, p, _, first := newSession(t)
	env.clock.Add(p.accessTTL - 30*time.Second)
	env.storage.failPuts.Store(true)
	resp := env.readCreds(t, "app")
	if resp.Data["access_token"] != first["access_token"] || len(resp.Warnings) != 1 ||
		!strings.Contains(resp.Warnings[0], "the refresh token was not presented because storage could not record that it is in use") {
		t.Errorf("read with storage down: %v %v", resp.Data["access_token"], resp.Warnings)
	}
	if p.calls(grantRefresh) != 0 {
		t.Error("a refresh token was presented without its write-ahead mark in storage")
	}
	env.storage.failPuts.Store(false)
	env.readCreds(t, "app")
	if p.calls(grantRefresh) != 1 || p.calls(grantPassword) != 1 {
		t.Errorf("once storage works: %d refreshes and %d logins, want 1 refresh after the verify login", p.calls(grantRefresh), p.calls(grantPassword))
	}
}

// TestRenewal_LegacySession: a session stored by v0.1.0 is served and renewed with its
// refresh token; its record of a rejection holds back logins for the whole connection.
func TestRenewal_LegacySession(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	_, conn, _ := env.b.connection(context.Background(), env.storage, "conn")
	now := env.clock.Now()
	p.mu.Lock()
	p.live["rt-legacy-rrrrrrrr"] = true
	p.mu.Unlock()
	legacy := fmt.Sprintf(`{"config":"conn","account_version":%d,"access_token":"at-legacy","token_type":"Bearer","expires_at":%q,"obtained_at":%q,`+
		`"refresh_token":"rt-legacy-rrrrrrrr","refresh_expires_at":%q,"last_grant":"password","last_error":"","last_error_at":"0001-01-01T00:00:00Z",`+
		`"credentials_rejected_at":"0001-01-01T00:00:00Z"}`, conn.AccountVersion,
		now.Add(10*time.Minute).Format(time.RFC3339Nano), now.Add(-10*time.Minute).Format(time.RFC3339Nano), now.Add(7*24*time.Hour).Format(time.RFC3339Nano))
	if err := env.storage.Put(context.Background(), &logical.StorageEntry{Key: tokenPrefix + "app", Value: []byte(legacy)}); err != nil {
		t.Fatal(err)
	}
	env.start(t) // the upgraded plugin
	if got := env.readCreds(t, "app").Data["access_token"]; got != "at-legacy" || p.calls("") != 0 {
		t.Errorf("the v0.1.0 session: token %v after %d provider calls; want at-legacy, none", got, p.calls(""))
	}
	env.clock.Add(10 * time.Minute)
	env.readCreds(t, "app")
	if p.calls(grantRefresh) != 1 || p.lastRequest(t).form.Get("refresh_token") != "rt-legacy-rrrrrrrr" || p.calls(grantPassword) != 0 {
		t.Errorf("the renewal: %d refreshes with %q, %d logins; want the stored refresh token, no login",
			p.calls(grantRefresh), p.lastRequest(t).form.Get("refresh_token"), p.calls(grantPassword))
	}
	if st := env.storedSession(t, "app"); st.Format != sessionFormat || st.Tokens.RefreshToken != p.newest() {
		t.Errorf("rewritten as format %d with refresh token %q", st.Format, st.Tokens.RefreshToken)
	}

	// A v0.1.0 entry of another role recorded that the credentials were rejected (and
	// v0.1.0 kept no accounts/ record).
	rejectedAt := env.clock.Now().Add(-time.Minute)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	env.putLegacyRejection(t, "other", conn, rejectedAt)
	env.start(t)
	msg := env.mustFail(t, logical.ReadOperation, "creds/other", nil)
	if !strings.Contains(msg, "no login is tried before "+formatTime(rejectedAt.Add(15*time.Minute))) || p.calls(grantPassword) != 0 {
		t.Errorf("the role with a v0.1.0 rejection: %d logins, %s", p.calls(grantPassword), msg)
	}
	if rej := env.storedRejection(t, "conn"); rej == nil || !rej.At.Equal(rejectedAt) {
		t.Errorf("the connection's rejection record = %+v, want the adopted one", rej)
	}
}

// TestRenewal_OneLoginGoesAlone (L1): ten roles of one connection need a login at the
// same moment while its credentials are unproven. With a wrong password exactly one
// login reaches the provider and all ten get its error; with the right one, the first
// login goes alone and the nine others then log in together.
func TestRenewal_OneLoginGoesAlone(t *testing.T) {
	setup := func(t *testing.T) (*testEnv, *fakeProvider, []string) {
		env := getTestBackend(t)
		p := withMindbaz(t, env, 0, map[string]any{"max_concurrent_requests": 10}, nil)
		roles := []string{"app"}
		for i := range 9 {
			name := fmt.Sprintf("app%d", i)
			env.mustOK(t, logical.UpdateOperation, "roles/"+name, map[string]any{"config": "conn"})
			roles = append(roles, name)
		}
		return env, p, roles
	}
	t.Run("wrong password: one login, ten errors", func(t *testing.T) {
		env, p, roles := setup(t)
		p.setPassword("changed-at-the-provider")
		arrived, release := holdLogins(p)
		done := readRolesAsync(env, roles)
		waitForGoroutines(t, 9, "select", "(*loginGate).enter(")
		waitFor(t, "the first login at the provider", func() bool { return arrived.Load() >= 1 })
		release()
		for range roles {
			if msg := <-done; !strings.Contains(msg, `connection "conn" rejected the credentials of user "alice@example.com"`) {
				t.Errorf("a read got %q, want the rejection", msg)
			}
		}
		if n := arrived.Load(); n != 1 {
			t.Errorf("%d logins reached the provider, want 1", n)
		}
		for _, role := range roles {
			if data := env.mustOK(t, logical.ReadOperation, "roles/"+role, nil).Data; data["credentials_rejected_at"] == "" || data["next_login_at"] == "" {
				t.Errorf("role %s does not show the rejection: %v", role, data)
			}
		}
	})
	t.Run("right password: the first alone, then nine together", func(t *testing.T) {
		env, p, roles := setup(t)
		arrived, release := holdLogins(p)
		done := readRolesAsync(env, roles)
		waitForGoroutines(t, 9, "select", "(*loginGate).enter(")
		waitFor(t, "the first login at the provider", func() bool { return arrived.Load() >= 1 })
		if n := arrived.Load(); n != 1 {
			t.Fatalf("%d logins at the provider while the credentials are unproven, want 1", n)
		}
		// Let the first through: the nine others must then all be at the provider at
		// once, while it holds them.
		gate := make(chan struct{})
		p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
			arrived.Add(1)
			<-gate
			return false
		})
		release()
		waitFor(t, "all ten logins at the provider together", func() bool { return arrived.Load() == 10 })
		close(gate)
		for range roles {
			if msg := <-done; msg != "" {
				t.Errorf("a read failed: %s", msg)
			}
		}
	})
}

// TestRenewal_RejectionSurvivesRestart (L4): the provider's rejection is recorded for
// the connection in storage: after a restart within the backoff neither a read of any
// role nor a config write that keeps the rejected credentials (verify=true) logs in,
// and the config and every role show the rejection.
func TestRenewal_RejectionSurvivesRestart(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	p.setPassword("changed-at-the-provider")
	start := env.clock.Now()
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if p.calls(grantPassword) != 1 {
		t.Fatalf("%d logins, want the one rejected", p.calls(grantPassword))
	}

	env.start(t)
	env.clock.Add(10 * time.Minute)
	for _, role := range []string{"app", "other"} {
		msg := env.mustFail(t, logical.ReadOperation, "creds/"+role, nil)
		if !strings.Contains(msg, "no login is tried before "+formatTime(start.Add(15*time.Minute))) {
			t.Errorf("read of %s after the restart: %s", role, msg)
		}
	}
	resp := env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "20s"})
	if resp == nil || len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "verification login skipped") {
		t.Errorf("config write keeping the rejected credentials: %#v", resp)
	}
	if p.calls(grantPassword) != 1 {
		t.Errorf("%d logins after the restart, want none", p.calls(grantPassword)-1)
	}
	cause := "password grant failed: invalid_grant: Invalid user credentials (HTTP 401)"
	want := map[string]any{
		"credentials_rejected_at": formatTime(start), "next_login_at": formatTime(start.Add(15 * time.Minute)), "last_error": cause,
	}
	conf := env.mustOK(t, logical.ReadOperation, "config/conn", nil).Data
	for k, v := range want {
		if conf[k] != v {
			t.Errorf("config %s = %v, want %v", k, conf[k], v)
		}
	}
	for _, role := range []string{"app", "other"} {
		data := env.mustOK(t, logical.ReadOperation, "roles/"+role, nil).Data
		for k, v := range want {
			if data[k] != v {
				t.Errorf("role %s: %s = %v, want %v", role, k, data[k], v)
			}
		}
	}

	// After the backoff one login goes, and is rejected again: the backoff doubles.
	env.clock.Add(5 * time.Minute)
	env.mustFail(t, logical.ReadOperation, "creds/other", nil)
	if rej := env.storedRejection(t, "conn"); rej == nil || rej.Count != 2 || !rej.NextLoginAt.Equal(env.clock.Now().Add(30*time.Minute)) {
		t.Errorf("second rejection: %+v, want count 2 and a 30-minute backoff", rej)
	}
	// A new password lifts it at once.
	p.setPassword("n3w-Password")
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "n3w-Password"})
	env.readCreds(t, "app")
	env.readCreds(t, "other")
	if conf := env.mustOK(t, logical.ReadOperation, "config/conn", nil).Data; conf["credentials_rejected_at"] != "" {
		t.Errorf("config after the new password: %v", conf)
	}
}

// TestRenewal_RefreshRefusedByConfiguration (R4): Apiax without client_assertion_type
// in refresh_params refuses every refresh with invalid_request. Apps keep working with
// password logins, and it is surfaced: the role's last_error names the cause and the
// fix, and every read that paid a login for it carries a warning.
func TestRenewal_RefreshRefusedByConfiguration(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "apiax", env.clock)
	env.setup(t, p, map[string]any{"refresh_params": map[string]any{}, "verify": false}, nil)
	env.readCreds(t, "app")
	for i := range 3 {
		env.clock.Add(p.accessTTL)
		resp := env.readCreds(t, "app")
		if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], `this token took a password login because connection "conn" refused the refresh grant (refresh_token grant failed: invalid_request: client_assertion_type missing (HTTP 400))`) ||
			!strings.Contains(resp.Warnings[0], "refresh_params=client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
			t.Errorf("renewal %d: warnings %v", i, resp.Warnings)
		}
		// The next read, served from cache, paid nothing.
		if resp := env.readCreds(t, "app"); len(resp.Warnings) != 0 {
			t.Errorf("a cached read carries %v", resp.Warnings)
		}
	}
	if p.calls(grantRefresh) != 3 || p.calls(grantPassword) != 4 {
		t.Errorf("%d refreshes and %d logins, want 3 refused refreshes, each followed by a login", p.calls(grantRefresh), p.calls(grantPassword))
	}
	data := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
	if le, _ := data["last_error"].(string); !strings.HasPrefix(le, "refresh_token grant failed: invalid_request: client_assertion_type missing (HTTP 400); logged in with the password instead: check refresh_params") ||
		data["consecutive_failures"] != 0 || data["last_grant"] != grantPassword {
		t.Errorf("role state: %v", data)
	}
	// Fixed: the refresh works, and the role's state is clean again.
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"refresh_params": "client_assertion_type=" + assertionType, "verify": false})
	env.clock.Add(p.accessTTL)
	if resp := env.readCreds(t, "app"); len(resp.Warnings) != 0 {
		t.Errorf("after the fix: %v", resp.Warnings)
	}
	if data := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data; data["last_error"] != "" || data["last_grant"] != grantRefresh {
		t.Errorf("role state after the fix: %v", data)
	}
}

// TestRenewal_ClockAfterTheAnswer: whether the old token may still be served is decided
// with the clock read after the provider answered: a token that expired while the
// provider took 8 s to answer 503 is not served, and no answer has a negative
// expires_in.
func TestRenewal_ClockAfterTheAnswer(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL - 5*time.Second) // 5 s left, under min_ttl
	p.setHook(func(w http.ResponseWriter, _ *http.Request, form url.Values) bool {
		p.clock.Add(8 * time.Second) // the provider is slow
		oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "")
		return true
	})
	resp, err := env.request(t, logical.ReadOperation, "creds/app", nil)
	if status, msg := rawErrorOf(resp); err != nil || status != http.StatusBadGateway || !strings.Contains(msg, "HTTP 503") {
		t.Errorf("a token that expired during the attempt was answered: %v %#v", err, resp)
	}
	if resp != nil && resp.Data["expires_in"] != nil {
		t.Errorf("expires_in %v", resp.Data["expires_in"])
	}
}

// TestRenewal_HangingProviderOneAttempt: while the provider hangs until request_timeout,
// ten concurrent readers of one role wait for one attempt and get its result, within
// that one request_timeout: they do not queue attempts one behind another, and the
// attempt does not follow its hung refresh with a login it has no time left for.
func TestRenewal_HangingProviderOneAttempt(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "1s", "verify": false})
	env.clock.Add(p.accessTTL + time.Second) // expired: nothing to serve meanwhile
	requests := hangUntilGivenUp(p)
	done := readRolesAsync(env, []string{"app", "app", "app", "app", "app", "app", "app", "app", "app", "app"})
	var first string
	for i := range 10 {
		msg := <-done
		if i == 0 {
			first = msg
		}
		if msg == "" || msg != first {
			t.Errorf("read %d: %q, want the attempt's error %q", i, msg, first)
		}
	}
	// One attempt, one request: the refresh (spent: it may have reached the provider).
	if n := requests.Load(); n != 1 {
		t.Errorf("the provider saw %d requests, want one attempt: the refresh", n)
	}
	// The next read logs in (and hangs: a failure with a retry window); the one after is
	// answered from that window.
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); !strings.Contains(msg, "the next attempt is allowed at") || requests.Load() != 2 {
		t.Errorf("the reads after: %d more requests, %s", requests.Load()-1, msg)
	}
}

// TestRenewal_ServiceUnavailableOneAttempt: ten concurrent readers of a role whose token
// expired, against a provider that answers 503, cause one attempt: at most three
// requests, all with the same refresh token, which stays good.
func TestRenewal_ServiceUnavailableOneAttempt(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL + time.Second)
	p.setHook(reply("", http.StatusServiceUnavailable, "text/plain", "maintenance")(p))
	before := p.calls("")
	done := readRolesAsync(env, []string{"app", "app", "app", "app", "app", "app", "app", "app", "app", "app"})
	for range 10 {
		if msg := <-done; !strings.Contains(msg, "(HTTP 503)") {
			t.Errorf("a read: %q", msg)
		}
	}
	if n := p.calls("") - before; n < 1 || n > maxAttemptRequests {
		t.Errorf("10 concurrent readers caused %d requests, want one attempt of at most %d", n, maxAttemptRequests)
	}
	if st := env.storedSession(t, "app"); st.Tokens.RefreshToken == "" || !st.Tokens.RefreshSentAt.IsZero() {
		t.Errorf("the refresh token after 503s: %+v, want it kept, unmarked", st.Tokens)
	}
}

// TestRenewal_SlowRefreshThenLogin: a refresh answered after request_timeout spends the
// refresh token and the attempt's time; the read is answered then, and the next read
// logs in at once, never presenting the spent token again.
func TestRenewal_SlowRefreshThenLogin(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"request_timeout": "1s", "verify": false})
	env.clock.Add(p.accessTTL + time.Second)
	p.setHook(func(_ http.ResponseWriter, r *http.Request, form url.Values) bool {
		if form.Get("grant_type") != grantRefresh {
			return false
		}
		p.consume(form.Get("refresh_token")) // rotated, answered too late
		<-r.Context().Done()
		return true
	})
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	logins := p.calls(grantPassword)
	env.readCreds(t, "app")
	if p.calls(grantPassword) != logins+1 || p.calls(grantRefresh) != 1 {
		t.Errorf("the next read: %d logins, %d refreshes in all; want a login at once, no second refresh", p.calls(grantPassword)-logins, p.calls(grantRefresh))
	}
	p.assertNoRefreshReuse(t)
}

// TestRenewal_ServiceUnavailableBudget: one reader polling every 2 s for 5.5 minutes
// against a provider that answers 503 makes attempts 5 s, 10 s, 20 s... apart, each of a
// few requests: at most 25 requests in all.
func TestRenewal_ServiceUnavailableBudget(t *testing.T) {
	env, p, _, _ := newSession(t)
	env.clock.Add(p.accessTTL + time.Second) // expired: every attempt may retry
	p.setHook(reply("", http.StatusServiceUnavailable, "text/plain", "maintenance")(p))
	before := p.calls("")
	for elapsed := time.Duration(0); elapsed < 330*time.Second; elapsed += 2 * time.Second {
		env.mustFail(t, logical.ReadOperation, "creds/app", nil)
		env.clock.Add(2 * time.Second)
	}
	if n := p.calls("") - before; n > 25 || n < 7 {
		t.Errorf("5.5 minutes of reads every 2 s made %d requests, want 7 attempts of at most 3", n)
	}
	if f := env.storedSession(t, "app").Failure; f.Failures != 7 {
		t.Errorf("%d attempts recorded, want 7 (at 0, 5, 15, 35, 75, 155 and 315 s)", f.Failures)
	}
}

// TestRenewal_TwoProvidersIsolated: a connection whose provider hangs holds up neither
// the reads nor the background renewals of another connection's roles.
func TestRenewal_TwoProvidersIsolated(t *testing.T) {
	env := getTestBackend(t)
	good := newFakeProvider(t, "mindbaz", env.clock)
	bad := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, good, map[string]any{"verify": false}, nil)
	data := bad.connData()
	data["verify"], data["request_timeout"] = false, "2s"
	env.mustOK(t, logical.UpdateOperation, "config/bad", data)
	env.mustOK(t, logical.UpdateOperation, "roles/stuck", map[string]any{"config": "bad"})
	env.readCreds(t, "app")
	env.readCreds(t, "stuck")

	hang := make(chan struct{})
	defer close(hang)
	bad.setHook(func(_ http.ResponseWriter, r *http.Request, _ url.Values) bool {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
		return true
	})
	env.clock.Add(good.accessTTL + time.Second)
	stuck := readRolesAsync(env, []string{"stuck"})
	waitFor(t, "the stuck role's request at its provider", func() bool { return bad.calls("") > 1 })
	// The stuck role's read holds its lock and a request slot of its connection; the
	// other connection's role renews meanwhile.
	if got := env.readCreds(t, "app").Data["access_token"]; got == nil || good.calls(grantRefresh) != 1 {
		t.Errorf("the other connection's read: %v after %d refreshes", got, good.calls(grantRefresh))
	}
	<-stuck
}

// TestRenewal_ProvenCredentialsRejectedAtOnce: ten roles with proven credentials lose
// their sessions at once (the provider ended them when the password changed there). At
// most max_concurrent_requests logins are in flight together; once one is rejected,
// those still waiting for a request slot are not sent.
func TestRenewal_ProvenCredentialsRejectedAtOnce(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, map[string]any{"max_concurrent_requests": 4}, nil)
	roles := []string{"app"}
	for i := range 9 {
		roles = append(roles, fmt.Sprintf("app%d", i))
		env.mustOK(t, logical.UpdateOperation, "roles/"+roles[i+1], map[string]any{"config": "conn"})
	}
	for _, role := range roles {
		env.readCreds(t, role)
	}
	p.forgetSessions()
	p.setPassword("changed-at-the-provider")
	env.clock.Add(p.accessTTL + time.Second)
	logins := p.calls(grantPassword)

	arrived, release := holdLogins(p)
	done := readRolesAsync(env, roles)
	waitFor(t, "four logins at the provider", func() bool { return arrived.Load() == 4 })
	release()
	for range roles {
		if msg := <-done; !strings.Contains(msg, `connection "conn" rejected the credentials of user "alice@example.com"`) {
			t.Errorf("a read got %q", msg)
		}
	}
	if n := p.calls(grantPassword) - logins; n != 4 {
		t.Errorf("%d failed logins, want the 4 in flight at once", n)
	}
}
