package bearer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
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

// failStorageOnRefresh makes the engine's storage fail writes once a refresh grant
// reaches the provider: the write-ahead mark is stored, what follows is not.
func failStorageOnRefresh(p *fakeProvider, fail func()) {
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantRefresh {
			fail()
		}
		return false
	})
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

// switchableStorage answers writes with Vault's read-only error once readOnly is set,
// as a node's storage does after it lost leadership.
type switchableStorage struct {
	logical.Storage
	readOnly atomic.Bool
}

func (s *switchableStorage) Put(ctx context.Context, e *logical.StorageEntry) error {
	if s.readOnly.Load() {
		return errors.New(logical.ErrReadOnly.Error())
	}
	return s.Storage.Put(ctx, e)
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

	// A v0.1.0 entry of another role recorded that the credentials were rejected.
	rejectedAt := env.clock.Now().Add(-time.Minute)
	old := fmt.Sprintf(`{"config":"conn","account_version":%d,"last_error":"password grant failed: invalid_grant (HTTP 401)",`+
		`"credentials_rejected_at":%q,"rejected_credentials_version":%d,"rejections":1,"consecutive_failures":1}`,
		conn.AccountVersion, rejectedAt.Format(time.RFC3339Nano), conn.CredentialsVersion)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})
	if err := env.storage.Put(context.Background(), &logical.StorageEntry{Key: tokenPrefix + "other", Value: []byte(old)}); err != nil {
		t.Fatal(err)
	}
	env.start(t)
	msg := env.mustFail(t, logical.ReadOperation, "creds/other", nil)
	if !strings.Contains(msg, "no login is tried before "+formatTime(rejectedAt.Add(15*time.Minute))) || p.calls(grantPassword) != 0 {
		t.Errorf("the role with a v0.1.0 rejection: %d logins, %s", p.calls(grantPassword), msg)
	}
	if rej := env.storedRejection(t, "conn"); rej == nil || !rej.At.Equal(rejectedAt) {
		t.Errorf("the connection's rejection record = %+v, want the adopted one", rej)
	}
}

// waitForGoroutines returns once n goroutines are blocked in a function whose frame
// contains fn, with a state starting with state ("select", "chan receive").
func waitForGoroutines(tb testing.TB, n int, state, fn string) {
	tb.Helper()
	buf := make([]byte, 4<<20)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		got := 0
		stack := buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(stack), "\n\n") {
			if strings.Contains(g, " ["+state) && strings.Contains(g, fn) {
				got++
			}
		}
		if got >= n {
			return
		}
		runtime.Gosched()
	}
	tb.Fatalf("fewer than %d goroutines wait in %s", n, fn)
}

// waitFor polls cond until it holds, failing the test after 30 seconds.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// holdLogins makes the provider hold password grants until release is called; arrived
// counts those that reached it.
func holdLogins(p *fakeProvider) (arrived *atomic.Int32, release func()) {
	arrived = &atomic.Int32{}
	hold := make(chan struct{})
	var once sync.Once
	p.setHook(func(_ http.ResponseWriter, _ *http.Request, form url.Values) bool {
		if form.Get("grant_type") == grantPassword {
			arrived.Add(1)
			<-hold
		}
		return false
	})
	return arrived, func() { once.Do(func() { close(hold) }) }
}

// readRolesAsync reads creds of every role at once; the channel gets each read's error
// text ("" on success) when it is done.
func readRolesAsync(env *testEnv, roles []string) <-chan string {
	out := make(chan string, len(roles))
	for _, role := range roles {
		go func() {
			resp, err := env.b.HandleRequest(context.Background(), &logical.Request{
				Operation: logical.ReadOperation, Path: "creds/" + role, Storage: env.storage, MountPoint: "bearer/",
			})
			out <- errorText(resp, err)
		}()
	}
	return out
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
