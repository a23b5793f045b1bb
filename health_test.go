package bearer

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// healthAnswer is a health read: its HTTP status, its errors (503 only) and its data.
type healthAnswer struct {
	status int
	errors []string
	data   healthData
	text   string // the whole answer, for leak checks
}

type healthData struct {
	Healthy bool   `json:"healthy"`
	Summary string `json:"summary"`
	Roles   map[string]struct {
		Connection          string `json:"connection"`
		Healthy             bool   `json:"healthy"`
		State               string `json:"state"`
		Problem             string `json:"problem"`
		TokenExpiresAt      string `json:"token_expires_at"`
		ConsecutiveFailures int    `json:"consecutive_failures"`
	} `json:"roles"`
	Connections map[string]struct {
		Roles               []string `json:"roles"`
		CredentialsRejected bool     `json:"credentials_rejected"`
		NextLoginAt         string   `json:"next_login_at"`
		Problem             string   `json:"problem"`
	} `json:"connections"`
	NeedsOperator []string `json:"needs_operator"`
}

func (e *testEnv) health(tb testing.TB) healthAnswer {
	tb.Helper()
	resp, err := e.request(tb, logical.ReadOperation, "health", nil)
	if err != nil || resp == nil {
		tb.Fatalf("read health: %v %#v", err, resp)
	}
	var a healthAnswer
	var raw []byte
	if body, ok := resp.Data[logical.HTTPRawBody].([]byte); ok {
		a.status = resp.Data[logical.HTTPStatusCode].(int)
		var b struct {
			Errors []string        `json:"errors"`
			Data   json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal(body, &b); err != nil {
			tb.Fatalf("health body: %v\n%s", err, body)
		}
		a.errors, raw, a.text = b.Errors, b.Data, string(body)
	} else {
		a.status = http.StatusOK
		raw, _ = json.Marshal(resp.Data)
		a.text = respText(resp)
	}
	if err := json.Unmarshal(raw, &a.data); err != nil {
		tb.Fatalf("health data: %v\n%s", err, raw)
	}
	return a
}

// TestHealth: fresh roles are healthy; a rejected password makes health answer 503
// naming the role and the connection; a new password makes it healthy again.
func TestHealth(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, map[string]any{"client_secret": testSecret}, nil)
	env.mustOK(t, logical.UpdateOperation, "roles/other", map[string]any{"config": "conn"})

	h := env.health(t)
	if h.status != http.StatusOK || !h.data.Healthy || h.data.Roles["app"].State != healthNoToken || len(h.data.NeedsOperator) != 0 {
		t.Errorf("fresh roles: %s", h.text)
	}
	if h.data.Summary != "2 of 2 roles can serve a token" {
		t.Errorf("summary %q", h.data.Summary)
	}

	tok := env.readCreds(t, "app").Data["access_token"].(string)
	h = env.health(t)
	if r := h.data.Roles["app"]; h.status != http.StatusOK || r.State != healthReady || r.TokenExpiresAt == "" {
		t.Errorf("after a read: %s", h.text)
	}

	p.setPassword("changed-at-the-provider")
	env.mustOK(t, logical.DeleteOperation, "creds/app", nil)
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	h = env.health(t)
	if h.status != http.StatusServiceUnavailable || h.data.Healthy {
		t.Fatalf("after a rejection: status %d: %s", h.status, h.text)
	}
	errs := strings.Join(h.errors, "\n")
	for _, want := range []string{
		`role "app": the credentials of its connection "conn" were rejected`,
		`role "other": the credentials of its connection "conn" were rejected`,
		`connection "conn" rejected the credentials of user "alice@example.com" at `,
		"vault write bearer/config/conn password=<new password>",
	} {
		if !strings.Contains(errs, want) {
			t.Errorf("errors lack %q:\n%s", want, errs)
		}
	}
	if c := h.data.Connections["conn"]; !c.CredentialsRejected || c.NextLoginAt == "" || strings.Join(c.Roles, ",") != "app,other" {
		t.Errorf("connection: %+v", c)
	}
	if r := h.data.Roles["app"]; r.Healthy || r.State != healthFailing || r.ConsecutiveFailures != 1 {
		t.Errorf("role app: %+v", r)
	}
	if h.data.Summary != "0 of 2 roles can serve a token" {
		t.Errorf("summary %q", h.data.Summary)
	}
	assertNoSecrets(t, "health", h.text, append([]string{testPassword, testSecret, "changed-at-the-provider", tok}, p.refreshTokens()...)...)

	// A new password lifts the rejection; the role that failed stays failing until a
	// read proves it, and says so.
	env.mustOK(t, logical.UpdateOperation, "config/conn", map[string]any{"password": "changed-at-the-provider", "verify": false})
	h = env.health(t)
	if h.status != http.StatusServiceUnavailable || len(h.errors) != 1 || !strings.HasSuffix(h.errors[0], "the next read of bearer/creds/app tries again") {
		t.Errorf("after a new password: %d %q", h.status, h.errors)
	}
	env.readCreds(t, "app")
	if h = env.health(t); h.status != http.StatusOK || !h.data.Healthy {
		t.Errorf("after a read with the new password: %s", h.text)
	}
}

// TestHealth_RefreshRefused: a role whose refresh grant the provider refuses for a
// reason of configuration serves (by password logins) and is listed as degraded.
func TestHealth_RefreshRefused(t *testing.T) {
	env := getTestBackend(t)
	p := withMindbaz(t, env, 0, nil, nil)
	env.readCreds(t, "app")
	p.setHook(func(w http.ResponseWriter, r *http.Request, form url.Values) bool {
		if form.Get("grant_type") != grantRefresh {
			return false
		}
		oauthError(w, http.StatusBadRequest, "invalid_request", "client_assertion_type missing")
		return true
	})
	env.mustOK(t, logical.UpdateOperation, "creds/app", nil)
	h := env.health(t)
	r := h.data.Roles["app"]
	if h.status != http.StatusOK || !r.Healthy || r.State != healthDegraded || len(h.data.NeedsOperator) != 1 {
		t.Fatalf("refresh refused: %s", h.text)
	}
	if !strings.Contains(r.Problem, "invalid_request: client_assertion_type missing") || !strings.Contains(r.Problem, "vault write bearer/config/conn") {
		t.Errorf("problem: %s", r.Problem)
	}
}

// TestHealth_UnknownConnection: a role whose connection is gone cannot serve.
func TestHealth_UnknownConnection(t *testing.T) {
	env := getTestBackend(t)
	withMindbaz(t, env, 0, nil, nil)
	// The API refuses to delete a connection in use: storage written otherwise (an
	// older version, a restore) may still hold such a role.
	if err := putJSON(context.Background(), env.storage, rolePrefix+"lost", &roleEntry{Config: "gone"}); err != nil {
		t.Fatal(err)
	}
	h := env.health(t)
	if h.status != http.StatusServiceUnavailable || len(h.errors) != 1 || !strings.Contains(h.errors[0], `role "lost" uses connection "gone", which does not exist`) {
		t.Errorf("role of a missing connection: %d %v", h.status, h.errors)
	}
	if !h.data.Roles["app"].Healthy {
		t.Errorf("role app: %+v", h.data.Roles["app"])
	}
}

func TestJudgeRole(t *testing.T) {
	now := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	conn := &connEntry{name: "conn", CredentialsVersion: 2, Revision: 3, Username: "alice"}
	role := &roleEntry{Config: "conn"}
	valid := sessionTokens{AccessToken: "at", ObtainedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), RefreshToken: "rt"}
	expired := sessionTokens{AccessToken: "at", ObtainedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour), RefreshToken: "rt"}
	failed := failureRecord{Failures: 2, LastError: "password grant failed: HTTP 503", Message: "could not get a token", LastErrorAt: now}
	waiting := failed
	waiting.NextAttemptAt, waiting.ConnRevision = now.Add(10*time.Second), 3
	refused := failureRecord{LastError: "refresh_token grant failed: invalid_request", LastErrorAt: now}
	session := func(t sessionTokens, f failureRecord) *sessionEntry { return &sessionEntry{Tokens: t, Failure: f} }
	cases := map[string]struct {
		conn    *connEntry
		sess    *sessionEntry
		rej     *rejection
		healthy bool
		state   string
		problem string
	}{
		"never read":                         {conn: conn, healthy: true, state: healthNoToken},
		"valid token":                        {conn: conn, sess: session(valid, failureRecord{}), healthy: true, state: healthReady},
		"expired, last attempt succeeded":    {conn: conn, sess: session(expired, failureRecord{}), healthy: true, state: healthRenewOnRead},
		"session discarded, no failure":      {conn: conn, sess: session(sessionTokens{}, failureRecord{}), healthy: true, state: healthNoToken},
		"failing, current token still valid": {conn: conn, sess: session(valid, failed), healthy: true, state: healthDegraded, problem: "renewing it failed 2 times in a row: could not get a token"},
		"failing, token expired":             {conn: conn, sess: session(expired, failed), state: healthFailing, problem: `role "app" has no valid token: its last attempt, at 2026-03-02T09:00:00Z, failed (2 in a row): could not get a token; the next read of <mount>/creds/app tries again`},
		"failing, in its retry window":       {conn: conn, sess: session(expired, waiting), state: healthFailing, problem: "could not get a token; the next attempt is allowed at 2026-03-02T09:00:10Z"},
		"failing, never had a token":         {conn: conn, sess: session(sessionTokens{}, failed), state: healthFailing, problem: "has no valid token"},
		"refresh refused by configuration":   {conn: conn, sess: session(valid, refused), healthy: true, state: healthDegraded, problem: "the refresh grant was refused at 2026-03-02T09:00:00Z: refresh_token grant failed: invalid_request"},
		"credentials rejected, valid token":  {conn: conn, sess: session(valid, failureRecord{}), rej: &rejection{CredentialsVersion: 2}, state: healthFailing, problem: `role "app": the credentials of its connection "conn" were rejected`},
		"rejection of older credentials":     {conn: conn, sess: session(valid, failureRecord{}), rej: &rejection{CredentialsVersion: 1}, healthy: true, state: healthReady},
		"connection missing":                 {state: healthFailing, problem: `role "app" uses connection "conn", which does not exist`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got := judgeRole(healthSituation{now: now, name: "app", role: role, conn: tc.conn, sess: tc.sess, rejection: tc.rej})
			if got.healthy != tc.healthy || got.state != tc.state {
				t.Errorf("healthy %v, state %q; want %v, %q", got.healthy, got.state, tc.healthy, tc.state)
			}
			if (tc.problem == "") != (got.problem == "") || !strings.Contains(got.problem, tc.problem) {
				t.Errorf("problem %q, want one containing %q", got.problem, tc.problem)
			}
		})
	}
}
