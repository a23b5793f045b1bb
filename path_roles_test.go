package bearer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

func TestRoles_CRUDAndPartialUpdate(t *testing.T) {
	env := getTestBackend(t)
	env.mustOK(t, logical.UpdateOperation, "config/c", map[string]any{"token_url": "https://x.example/t", "username": "u", "password": "p", "verify": false})

	msg := env.mustFail(t, logical.UpdateOperation, "roles/r", map[string]any{"scopes": "a"})
	if msg != `role "r": config is required: name the connection to use (config/<name>)` {
		t.Errorf("role without config: %s", msg)
	}
	env.mustOK(t, logical.UpdateOperation, "roles/r", map[string]any{"config": "c", "scopes": "read,write"})
	resp := env.mustOK(t, logical.ReadOperation, "roles/r", nil)
	want := map[string]any{"config": "c", "min_ttl": int64(60), "background_refresh": true, "last_grant": "", "consecutive_failures": 0}
	for k, v := range want {
		if resp.Data[k] != v {
			t.Errorf("%s = %#v, want %#v", k, resp.Data[k], v)
		}
	}
	if s := resp.Data["scopes"].([]string); strings.Join(s, " ") != "read write" {
		t.Errorf("scopes = %v", s)
	}

	env.mustOK(t, logical.UpdateOperation, "roles/r", map[string]any{"min_ttl": "5m", "background_refresh": false})
	resp = env.mustOK(t, logical.ReadOperation, "roles/r", nil)
	if resp.Data["min_ttl"] != int64(300) || resp.Data["background_refresh"] != false || resp.Data["config"] != "c" || len(resp.Data["scopes"].([]string)) != 2 {
		t.Errorf("partial update lost fields: %#v", resp.Data)
	}
	env.mustOK(t, logical.UpdateOperation, "roles/q", map[string]any{"config": "c"})
	keys := env.mustOK(t, logical.ListOperation, "roles/", nil).Data["keys"].([]string)
	if strings.Join(keys, ",") != "q,r" {
		t.Errorf("list = %v", keys)
	}
	msg = env.mustFail(t, logical.UpdateOperation, "roles/r", map[string]any{"min_ttl": "-5s"})
	if !strings.Contains(msg, "min_ttl") {
		t.Errorf("negative min_ttl: %s", msg)
	}
}

func TestRoles_StateAndDelete(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	env.setup(t, p, nil, nil)
	obtained := env.clock.Now()
	env.readCreds(t, "app")

	state := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data
	want := map[string]any{
		"token_obtained_at":        obtained.Format(time.RFC3339),
		"token_expires_at":         obtained.Add(1199 * time.Second).Format(time.RFC3339),
		"refresh_token_expires_at": obtained.Add(168 * time.Hour).Format(time.RFC3339), // mindbaz preset
		"last_grant":               "password",
		"last_error":               "",
		"credentials_rejected_at":  "",
	}
	for k, v := range want {
		if state[k] != v {
			t.Errorf("%s = %#v, want %#v", k, state[k], v)
		}
	}
	assertNoSecrets(t, "role read", respText(&logical.Response{Data: state}), append(p.refreshTokens(), testPassword)...)

	env.mustOK(t, logical.DeleteOperation, "roles/app", nil)
	if e, _ := env.storage.Get(context.Background(), "tokens/app"); e != nil {
		t.Error("deleting the role left its tokens in storage")
	}
	if resp, _ := env.request(t, logical.ReadOperation, "roles/app", nil); resp != nil {
		t.Error("deleted role still readable")
	}
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); !strings.Contains(msg, `role "app" does not exist`) {
		t.Errorf("creds of a deleted role: %s", msg)
	}
}

func TestRoles_ChangingAccountDiscardsTokens(t *testing.T) {
	cases := map[string]struct {
		path       string
		data       map[string]any
		wantLogins int // password logins caused by the next read
	}{
		"password change keeps the tokens":  {"config/conn", map[string]any{"password": "n3w-Password", "verify": false}, 0},
		"username change discards them":     {"config/conn", map[string]any{"username": "bob", "verify": false}, 1},
		"scopes change discards them":       {"roles/app", map[string]any{"scopes": "other"}, 1},
		"min_ttl change keeps them":         {"roles/app", map[string]any{"min_ttl": "30s"}, 0},
		"token url change discards them":    {"config/conn", map[string]any{"token_url": "", "verify": false}, 1},
		"request timeout change keeps them": {"config/conn", map[string]any{"request_timeout": "20s", "verify": false}, 0},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, "mindbaz", env.clock)
			env.setup(t, p, nil, nil)
			env.readCreds(t, "app")
			data := tc.data
			if v, ok := data["token_url"]; ok && v == "" {
				data = map[string]any{"token_url": p.tokenURL() + "?v=2", "verify": false}
			}
			env.mustOK(t, logical.UpdateOperation, tc.path, data)
			before := p.calls(grantPassword)
			_, _ = env.request(t, logical.ReadOperation, "creds/app", nil) // bob cannot log in: only the attempt counts
			if got := p.calls(grantPassword) - before; got != tc.wantLogins {
				t.Errorf("password logins after the change = %d, want %d", got, tc.wantLogins)
			}
		})
	}
}
