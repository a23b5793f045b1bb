package bearer

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/vault/sdk/logical"
)

// clientCredentialsConn is a client_credentials connection to p (a Mindbaz-style fake,
// client 100).
func clientCredentialsConn(p *fakeProvider, extra map[string]any) map[string]any {
	data := map[string]any{
		"grant_type": grantClientCredentials, "token_url": p.tokenURL(), "ca_cert": p.caPEM(), "client_id": "100",
	}
	for k, v := range extra {
		data[k] = v
	}
	return data
}

// TestGrants_ClientCredentials: a connection with grant_type=client_credentials logs in
// as the client alone (no username, no password), verifies on write, renews by
// repeating the grant, and a rejected client is held back like a rejected password.
func TestGrants_ClientCredentials(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	p.clientSecret = testSecret
	env.mustOK(t, logical.UpdateOperation, "config/cc", clientCredentialsConn(p, map[string]any{"client_secret": testSecret}))
	env.mustOK(t, logical.UpdateOperation, "roles/svc", map[string]any{"config": "cc", "scopes": "api"})
	first := env.readCreds(t, "svc").Data
	form := p.lastRequest(t).form
	if form.Get("grant_type") != grantClientCredentials || form.Get("client_secret") != testSecret || form.Get("scope") != "api" ||
		form.Has("username") || form.Has("password") {
		t.Errorf("client credentials form: %v", form)
	}
	if p.calls(grantClientCredentials) != 2 { // the verify login, then the role's (it has scopes)
		t.Errorf("%d client credentials grants, want 2", p.calls(grantClientCredentials))
	}
	env.clock.Add(p.accessTTL)
	if again := env.readCreds(t, "svc").Data; again["access_token"] == first["access_token"] || p.calls(grantClientCredentials) != 3 {
		t.Errorf("renewal: same token %v, %d grants", again["access_token"] == first["access_token"], p.calls(grantClientCredentials))
	}
	conf := env.mustOK(t, logical.ReadOperation, "config/cc", nil).Data
	if conf["grant_type"] != grantClientCredentials || conf["client_secret_set"] != true {
		t.Errorf("config read: %v", conf)
	}

	// The provider stops accepting the secret: one attempt, then the backoff.
	p.clientSecret = "rotated"
	env.clock.Add(p.accessTTL)
	calls := p.calls("")
	msg := env.mustFail(t, logical.ReadOperation, "creds/svc", nil)
	if !strings.Contains(msg, `connection "cc": the provider rejected the OAuth2 client "100"`) || !strings.Contains(msg, "no login is tried before") {
		t.Errorf("rejected client: %s", msg)
	}
	env.clock.Add(time.Minute)
	env.mustFail(t, logical.ReadOperation, "creds/svc", nil)
	if p.calls("")-calls != 1 {
		t.Errorf("%d requests after the rejection, want 1", p.calls("")-calls)
	}
	// A new secret lifts it.
	env.mustOK(t, logical.UpdateOperation, "config/cc", map[string]any{"client_secret": "rotated"})
	env.readCreds(t, "svc")
	assertNoSecrets(t, "logs", env.logs.String(), testSecret, "rotated")

	// A client_credentials connection needs a way to authenticate the client.
	if msg := env.mustFail(t, logical.UpdateOperation, "config/bad", clientCredentialsConn(p, nil)); !strings.Contains(msg, "needs the client to authenticate") {
		t.Errorf("no client secret: %s", msg)
	}
}

// testKey is a private key in PEM and its public key.
func testKey(tb testing.TB, kind string) (string, crypto.PublicKey) {
	tb.Helper()
	var key crypto.Signer
	var err error
	switch kind {
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ec":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ec384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "rsa1024":
		key, err = rsa.GenerateKey(rand.Reader, 1024)
	}
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), key.Public()
}

// TestGrants_PrivateKeyJWT: with client_auth=private_key_jwt every token request carries
// a client assertion signed with the connection's key (RS256 or ES256), verified here
// with go-jose against the public key: iss and sub the client, aud the token URL (or the
// configured audience), a new jti each time, a kid when set, an expiry within 5 minutes.
func TestGrants_PrivateKeyJWT(t *testing.T) {
	for _, kind := range []string{"rsa", "ec"} {
		t.Run(kind, func(t *testing.T) {
			env := getTestBackend(t)
			p := newFakeProvider(t, "mindbaz", env.clock)
			keyPEM, pub := testKey(t, kind)
			p.clientKey = pub
			env.mustOK(t, logical.UpdateOperation, "config/jwt", clientCredentialsConn(p, map[string]any{
				"client_auth": clientAuthJWT, "client_private_key": keyPEM, "client_private_key_id": "key-1",
			}))
			env.mustOK(t, logical.UpdateOperation, "roles/svc", map[string]any{"config": "jwt"})
			env.readCreds(t, "svc")
			env.mustOK(t, logical.UpdateOperation, "creds/svc", nil)
			req := p.lastRequest(t)
			if req.form.Get("client_assertion_type") != assertionType || req.form.Has("client_secret") {
				t.Errorf("form: %v", req.form)
			}
			tok, err := jwt.ParseSigned(req.form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
			if err != nil {
				t.Fatal(err)
			}
			wantAlg := map[string]string{"rsa": "RS256", "ec": "ES256"}[kind]
			if h := tok.Headers[0]; h.Algorithm != wantAlg || h.KeyID != "key-1" {
				t.Errorf("header alg %s kid %q, want %s and key-1", h.Algorithm, h.KeyID, wantAlg)
			}
			var claims jwt.Claims
			if err := tok.Claims(pub, &claims); err != nil {
				t.Fatalf("signature: %v", err)
			}
			now := env.clock.Now()
			if claims.Issuer != "100" || claims.Subject != "100" || len(claims.Audience) != 1 || claims.Audience[0] != p.tokenURL() ||
				claims.Expiry.Time().After(now.Add(5*time.Minute)) || !claims.Expiry.Time().After(now) || claims.ID == "" {
				t.Errorf("claims: %+v", claims)
			}
			p.mu.Lock()
			seen := map[string]bool{}
			for _, c := range p.assertions {
				if seen[c.ID] {
					t.Errorf("jti %s used twice", c.ID)
				}
				seen[c.ID] = true
			}
			p.mu.Unlock()
			if len(seen) < 2 {
				t.Errorf("%d assertions verified, want one per request", len(seen))
			}
			conf := env.mustOK(t, logical.ReadOperation, "config/jwt", nil).Data
			if conf["client_private_key_set"] != true || conf["client_private_key_id"] != "key-1" || conf["client_auth"] != clientAuthJWT {
				t.Errorf("config read: %v", conf)
			}
			assertNoSecrets(t, "config read", respText(env.mustOK(t, logical.ReadOperation, "config/jwt", nil)), keyPEM, strings.Split(keyPEM, "\n")[1])
			assertNoSecrets(t, "logs", env.logs.String(), strings.Split(keyPEM, "\n")[1])
		})
	}
	t.Run("configured audience", func(t *testing.T) {
		env := getTestBackend(t)
		p := newFakeProvider(t, "mindbaz", env.clock)
		keyPEM, pub := testKey(t, "ec")
		env.mustOK(t, logical.UpdateOperation, "config/jwt", clientCredentialsConn(p, map[string]any{
			"client_auth": clientAuthJWT, "client_private_key": keyPEM, "client_assertion_audience": "https://sso.example.com/realms/acme", "verify": false,
		}))
		env.mustOK(t, logical.UpdateOperation, "roles/svc", map[string]any{"config": "jwt"})
		env.mustFail(t, logical.ReadOperation, "creds/svc", nil) // the fake wants its token URL
		tok, err := jwt.ParseSigned(p.lastRequest(t).form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		var claims jwt.Claims
		if err := tok.Claims(pub, &claims); err != nil || len(claims.Audience) != 1 || claims.Audience[0] != "https://sso.example.com/realms/acme" {
			t.Errorf("audience %v (%v)", claims.Audience, err)
		}
	})
	t.Run("keys refused", func(t *testing.T) {
		env := getTestBackend(t)
		p := newFakeProvider(t, "mindbaz", env.clock)
		for kind, want := range map[string]string{
			"ec384": "an EC key must be on P-256", "rsa1024": "at least 2048 bits", "": "holds no PEM block",
		} {
			keyPEM := "not a key"
			if kind != "" {
				keyPEM, _ = testKey(t, kind)
			}
			msg := env.mustFail(t, logical.UpdateOperation, "config/jwt", clientCredentialsConn(p, map[string]any{"client_auth": clientAuthJWT, "client_private_key": keyPEM}))
			if !strings.Contains(msg, want) {
				t.Errorf("%s: %s, want %q", kind, msg, want)
			}
		}
	})
}

// TestGrants_SeededSession: a grant_type=refresh_token connection cannot log in: a
// role's session is seeded with vault write creds/<role> refresh_token=..., then kept
// alive and rotated; when it dies the role says so and asks for a new seed. The seed is
// never returned or logged.
func TestGrants_SeededSession(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "mindbaz", env.clock)
	withSeededConnection(t, env, p)
	if msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil); !strings.Contains(msg, `role "app" has no session, and connection "seeded" (grant_type=refresh_token) cannot log in`) || !strings.Contains(msg, "vault write bearer/creds/app refresh_token=-") {
		t.Errorf("read before seeding: %s", msg)
	}
	p.mu.Lock()
	p.live["rt-seed-rrrrrrrr"] = true
	p.mu.Unlock()
	resp := env.mustOK(t, logical.UpdateOperation, "creds/app", map[string]any{"refresh_token": "rt-seed-rrrrrrrr\n"})
	if resp.Data["access_token"] == nil || p.lastRequest(t).form.Get("refresh_token") != "rt-seed-rrrrrrrr" {
		t.Fatalf("seeding: %v", resp.Data)
	}
	for range 3 {
		env.clock.Add(p.accessTTL)
		env.readCreds(t, "app")
	}
	if p.calls(grantRefresh) != 4 || p.calls(grantPassword) != 0 {
		t.Errorf("%d refreshes, %d logins; want the seed and 3 rotations", p.calls(grantRefresh), p.calls(grantPassword))
	}
	p.assertNoRefreshReuse(t)

	p.forgetSessions() // the provider ends the session
	env.clock.Add(p.accessTTL)
	msg := env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if !strings.Contains(msg, `the session of connection "seeded" (grant_type=refresh_token) has ended (refresh_token grant failed: invalid_grant: Token is not active (HTTP 401))`) ||
		!strings.HasSuffix(msg, "seed a new one with vault write bearer/creds/app refresh_token=-") {
		t.Errorf("ended session: %s", msg)
	}
	if data := env.mustOK(t, logical.ReadOperation, "roles/app", nil).Data; !strings.Contains(data["last_error"].(string), "invalid_grant") {
		t.Errorf("role state: %v", data)
	}
	env.clock.Add(time.Hour)
	calls := p.calls("")
	env.mustFail(t, logical.ReadOperation, "creds/app", nil)
	if p.calls("") != calls {
		t.Error("an ended session made provider calls")
	}
	secrets := append([]string{"rt-seed-rrrrrrrr"}, p.refreshTokens()...)
	assertNoSecrets(t, "logs", env.logs.String(), secrets...)
	assertNoSecrets(t, "seed answer", respText(resp), secrets...)
}

// TestGrants_OfflineAccess: offline_access adds the offline_access scope to the login.
func TestGrants_OfflineAccess(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "apiax", env.clock)
	env.setup(t, p, map[string]any{"offline_access": true, "verify": false}, map[string]any{"scopes": "profile"})
	env.readCreds(t, "app")
	if got := p.lastRequest(t).form.Get("scope"); got != "profile offline_access" {
		t.Errorf("scope = %q, want profile offline_access", got)
	}
	if conf := env.mustOK(t, logical.ReadOperation, "config/conn", nil).Data; conf["offline_access"] != true {
		t.Errorf("config read: %v", conf)
	}
}

// TestGrants_SeedTwiceAndConfigurationRefusal: seeding the refresh token the role's
// session already holds is refused (it would be presented twice); a refresh refused for
// a reason of configuration keeps a seeded session (no login can replace it) until the
// connection is fixed.
func TestGrants_SeedTwiceAndConfigurationRefusal(t *testing.T) {
	env := getTestBackend(t)
	p := newFakeProvider(t, "apiax", env.clock)
	env.mustOK(t, logical.UpdateOperation, "config/seeded", map[string]any{
		"grant_type": grantRefresh, "provider": "apiax", "issuer": p.srv.URL + apiaxRealm, "ca_cert": p.caPEM(),
		"refresh_params": map[string]any{}, // without client_assertion_type: refused with invalid_request
	})
	env.mustOK(t, logical.UpdateOperation, "roles/app", map[string]any{"config": "seeded"})
	p.mu.Lock()
	p.live["rt-seed-rrrrrrrr"] = true
	p.mu.Unlock()
	msg := env.mustFail(t, logical.UpdateOperation, "creds/app", map[string]any{"refresh_token": "rt-seed-rrrrrrrr"})
	if !strings.Contains(msg, "client_assertion_type missing") {
		t.Errorf("seeding with a refused refresh grant: %s", msg)
	}
	if st := env.storedSession(t, "app"); st.Tokens.RefreshToken != "rt-seed-rrrrrrrr" || !st.Tokens.RefreshSentAt.IsZero() {
		t.Errorf("the seeded session was not kept for the fix: %+v", st.Tokens)
	}
	if msg := env.mustFail(t, logical.UpdateOperation, "creds/app", map[string]any{"refresh_token": "rt-seed-rrrrrrrr"}); !strings.Contains(msg, "this refresh token is already the role's session") {
		t.Errorf("the same seed again: %s", msg)
	}
	// Fixed: the seed, refused unread, serves.
	env.mustOK(t, logical.UpdateOperation, "config/seeded", map[string]any{"refresh_params": "client_assertion_type=" + assertionType})
	if got := env.readCreds(t, "app").Data["access_token"]; got == nil || p.calls(grantRefresh) != 2 {
		t.Errorf("after the fix: %v, %d refreshes (the refused one and this)", got, p.calls(grantRefresh))
	}
}
