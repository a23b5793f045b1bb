package e2e

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestGrantsThroughVault: fosite accepts the grants beyond the password
// grant from the plugin running in a real Vault: the client credentials grant
// of clients that authenticate with private_key_jwt (RS256 with a key ID,
// ES256 without), and the refresh grant of a session seeded through
// creds/<role>, until the provider ends it.
func TestGrantsThroughVault(t *testing.T) {
	t.Parallel()
	t.Run("client_credentials", func(t *testing.T) {
		t.Parallel()
		testClientCredentialsJWT(t)
	})
	t.Run("seeded_refresh_token", func(t *testing.T) {
		t.Parallel()
		testSeededSession(t)
	})
}

// jwtConnection is a grant_type=client_credentials connection whose client
// authenticates with private_key_jwt.
type jwtConnection struct {
	name     string // the connection and its role
	clientID string
	keyID    string // client_private_key_id, none if empty
	audience string // client_assertion_audience, the token URL if empty
	alg      string // what the key signs with
	key      crypto.Signer
}

// testClientCredentialsJWT: config writes verify with one client credentials
// grant, reads serve that token, forced renewals repeat the grant (fosite
// issues no refresh token for it), every request carries a fresh RFC 7523
// assertion fosite accepts; a key the provider does not know is rejected at
// the verify login and, saved anyway, at the first read, after which the
// connection is held back without contacting the provider; an assertion for
// another audience (client_assertion_audience) is rejected too.
func testClientCredentialsJWT(t *testing.T) {
	const life = 20 * time.Minute
	rsaKey, ecKey, wrongKey := newRSAKey(t), newECKey(t), newRSAKey(t)
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life, JWTClients: []provider.JWTClient{
		{ID: "svc-rsa", Key: rsaKey.Public(), KeyID: "rsa-1"},
		{ID: "svc-ec", Key: ecKey.Public()},
	}})
	p := sc.Provider
	s := sc.StartDev()
	s.RegisterPlugin()
	s.EnableEngine()

	for _, c := range []jwtConnection{
		{name: "cc-rsa", clientID: "svc-rsa", keyID: "rsa-1", alg: "RS256", key: rsaKey},
		{name: "cc-ec", clientID: "svc-ec", alg: "ES256", key: ecKey},
	} {
		checkJWTConnection(t, sc, s, c)
	}

	// Another key pair under the registered client and key ID: fosite cannot
	// verify the assertion's signature (invalid_client), and the verify login
	// keeps the connection from being saved.
	wrong := []string{
		"write", "bearer/config/cc-wrong", "grant_type=client_credentials", "client_auth=private_key_jwt",
		"client_id=svc-rsa", "client_private_key_id=rsa-1", "client_private_key=@" + writeKeyFile(t, sc, "wrong", wrongKey),
		"token_url=" + p.TokenURL(),
	}
	before, n := p.Counts(), len(p.Events())
	out, errOut, err := s.CLI(s.Token, wrong...)
	if err == nil {
		t.Errorf("config write with a key the provider does not know succeeded (verify defaults to true): %s", out)
	} else if !strings.Contains(errOut, "not saved") || !strings.Contains(errOut, "invalid_client") {
		t.Errorf("config write with the wrong key: the error does not say the connection was not saved and why:\n%s", errOut)
	}
	t.Logf("config write with the wrong key: %s", strings.TrimSpace(errOut))
	assertCounts(t, p, before, provider.Counts{ClientCredentialsFailed: 1}, "verify login with the wrong key")
	checkAssertions(t, p, p.Events()[n:], jwtConnection{clientID: "svc-rsa", keyID: "rsa-1", alg: "RS256"}, "invalid_client")
	if _, _, err := s.CLI(s.Token, "read", "bearer/config/cc-wrong"); err == nil {
		t.Error("the refused connection cc-wrong was saved")
	}

	// client_assertion_audience names the assertions' audience: fosite takes
	// only its token endpoint's URL.
	before, n = p.Counts(), len(p.Events())
	if out, errOut, err := s.CLI(s.Token, "write", "bearer/config/cc-aud", "grant_type=client_credentials", "client_auth=private_key_jwt",
		"client_id=svc-rsa", "client_private_key_id=rsa-1", "client_private_key=@"+writeKeyFile(t, sc, "cc-aud", rsaKey),
		"client_assertion_audience="+p.URL(), "token_url="+p.TokenURL()); err == nil || !strings.Contains(errOut, "invalid_client") {
		t.Errorf("config write with client_assertion_audience=%s: %v, want invalid_client:\n%s%s", p.URL(), err, out, errOut)
	}
	assertCounts(t, p, before, provider.Counts{ClientCredentialsFailed: 1}, "verify login with another audience")
	checkAssertions(t, p, p.Events()[n:], jwtConnection{clientID: "svc-rsa", keyID: "rsa-1", alg: "RS256", audience: p.URL()}, "invalid_client")

	// Saved with verify=false, the first read is rejected naming the client;
	// the rejection is kept, and the next read does not contact the provider.
	before = p.Counts()
	s.MustCLI(append(wrong, "verify=false")...)
	s.MustCLI("write", "bearer/roles/cc-wrong", "config=cc-wrong")
	assertCounts(t, p, before, provider.Counts{}, "config write with verify=false, role write")
	for i, want := range []provider.Counts{{ClientCredentialsFailed: 1}, {}} {
		before = p.Counts()
		r, err := s.Do(http.MethodGet, "/v1/bearer/creds/cc-wrong", s.Token, nil)
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Join(r.Errors, " ")
		if r.Status != http.StatusBadGateway || !strings.Contains(msg, `the provider rejected the OAuth2 client "svc-rsa"`) || !strings.Contains(msg, `"cc-wrong"`) {
			t.Errorf("read %d of a role whose client is rejected: %s; want HTTP 502 naming the connection and the rejected client", i+1, r)
		}
		assertCounts(t, p, before, want, "read of a role whose client is rejected")
	}
	conf := readData(t, s, "bearer/config/cc-wrong")
	if conf["credentials_rejected_at"] == "" || conf["next_login_at"] == "" || !strings.Contains(conf["last_error"].(string), "invalid_client") {
		t.Errorf("config read after the rejection: credentials_rejected_at=%v next_login_at=%v last_error=%v",
			conf["credentials_rejected_at"], conf["next_login_at"], conf["last_error"])
	}

	// The rejection is cc-wrong's alone: the same client's good connection
	// serves its cached token.
	before = p.Counts()
	mustReadCreds(t, s, "cc-rsa")
	assertCounts(t, p, before, provider.Counts{}, "read of cc-rsa after cc-wrong's rejection")

	// No assertion was ever sent twice (fosite would answer jti_known), and no
	// form carried a secret of another kind.
	seen := map[string]int{}
	for _, ev := range p.Events() {
		if ev.Assertion != nil {
			seen[ev.Assertion.ID]++
		}
	}
	for jti, k := range seen {
		if k > 1 || jti == "" {
			t.Errorf("client assertion jti %q sent %d times", jti, k)
		}
	}
	if len(seen) != 7 { // cc-rsa and cc-ec: verify and forced renewal; cc-wrong: verify and one read; cc-aud: verify
		t.Errorf("the provider saw %d client assertions, want 7", len(seen))
	}
	for _, f := range p.Forms() {
		form, _ := url.ParseQuery(f)
		for _, k := range []string{"username", "password", "client_secret", "refresh_token"} {
			if form.Has(k) {
				t.Errorf("a %s request sent %s", form.Get("grant_type"), k)
			}
		}
	}
}

// checkJWTConnection writes connection c (verified), a role of it, reads
// its token, reads it again from the cache and forces a renewal.
func checkJWTConnection(t *testing.T, sc *harness.Scenario, s *harness.Server, c jwtConnection) {
	t.Helper()
	p := sc.Provider
	life := p.Config().AccessTokenTTL
	args := []string{
		"write", "bearer/config/" + c.name, "grant_type=client_credentials", "client_auth=private_key_jwt",
		"client_id=" + c.clientID, "client_private_key=@" + writeKeyFile(t, sc, c.name, c.key), "token_url=" + p.TokenURL(),
	}
	if c.keyID != "" {
		args = append(args, "client_private_key_id="+c.keyID)
	}
	before, n := p.Counts(), len(p.Events())
	s.MustCLI(args...)
	assertCounts(t, p, before, provider.Counts{ClientCredentialsOK: 1}, c.name+": config write with verify")
	checkAssertions(t, p, p.Events()[n:], c, "ok")

	// The read shows the grant and that a key is set, never the key.
	conf := readData(t, s, "bearer/config/"+c.name)
	checkFields(t, c.name+": config read", conf, map[string]any{
		"grant_type": "client_credentials", "client_auth": "private_key_jwt", "client_id": c.clientID,
		"client_private_key_set": true, "client_private_key_id": c.keyID, "client_assertion_audience": "",
		"password_set": false, "client_secret_set": false, "username": "",
	})
	if _, ok := conf["client_private_key"]; ok {
		t.Errorf("%s: config read returns client_private_key", c.name)
	}

	// The first read serves the verify login's token: issued to the client
	// by the client credentials grant, without a refresh token.
	s.MustCLI("write", "bearer/roles/"+c.name, "config="+c.name)
	before = p.Counts()
	c1 := readCredsCLI(t, s, c.name)
	checkCredsShape(t, c1, life, 60*time.Second)
	assertCounts(t, p, before, provider.Counts{}, c.name+": first read after the verified config write")
	checkIssued(t, p, c1.AccessToken, "client_credentials", c.clientID)
	role := readData(t, s, "bearer/roles/"+c.name)
	checkFields(t, c.name+": role read", role, map[string]any{"last_grant": "client_credentials", "refresh_token_expires_at": "", "last_error": ""})

	before = p.Counts()
	if c2 := mustReadCreds(t, s, c.name); c2.AccessToken != c1.AccessToken {
		t.Errorf("%s: second read returned another token; want the cached one", c.name)
	}
	assertCounts(t, p, before, provider.Counts{}, c.name+": cached read")

	// A forced renewal has no refresh token to present: it repeats the
	// client credentials grant, with a new assertion.
	before, n = p.Counts(), len(p.Events())
	f := forceCreds(t, s, c.name)
	assertCounts(t, p, before, provider.Counts{ClientCredentialsOK: 1}, c.name+": forced renewal")
	checkAssertions(t, p, p.Events()[n:], c, "ok")
	if f.AccessToken == c1.AccessToken {
		t.Errorf("%s: forced renewal returned the old token", c.name)
	}
	checkCredsShape(t, f, life, 60*time.Second)
	checkIssued(t, p, f.AccessToken, "client_credentials", c.clientID)
	before = p.Counts()
	if c3 := mustReadCreds(t, s, c.name); c3.AccessToken != f.AccessToken {
		t.Errorf("%s: read after the forced renewal does not serve the renewed token", c.name)
	}
	assertCounts(t, p, before, provider.Counts{}, c.name+": read after the forced renewal")
}

// checkAssertions checks the token requests among evs: each authenticated
// with a client assertion of client c that the engine signed as RFC 7523 and
// the connection asks (iss and sub the client, aud the token endpoint or c's
// audience, a jti, valid for at most a minute, c's algorithm and key ID),
// answered outcome.
func checkAssertions(t *testing.T, p *provider.Provider, evs []provider.Event, c jwtConnection, outcome string) {
	t.Helper()
	tokenRequests := 0
	for _, ev := range evs {
		if ev.Endpoint != "token" {
			continue
		}
		tokenRequests++
		a := ev.Assertion
		switch {
		case ev.ClientAuth != "private_key_jwt" || a == nil:
			t.Errorf("%s grant of %s authenticated with %s, want private_key_jwt", ev.GrantType, ev.ClientID, ev.ClientAuth)
			continue
		case ev.Outcome() != outcome:
			t.Errorf("%s grant of %s: outcome %s, want %s", ev.GrantType, ev.ClientID, ev.Outcome(), outcome)
		}
		if a.Alg != c.alg || a.Kid != c.keyID || a.Typ != "JWT" {
			t.Errorf("client assertion header: alg=%q kid=%q typ=%q, want alg=%q kid=%q typ=JWT", a.Alg, a.Kid, a.Typ, c.alg, c.keyID)
		}
		if a.Issuer != c.clientID || a.Subject != c.clientID || ev.ClientID != c.clientID {
			t.Errorf("client assertion iss=%q sub=%q (client_id %q), want %q", a.Issuer, a.Subject, ev.ClientID, c.clientID)
		}
		aud := c.audience
		if aud == "" {
			aud = p.TokenURL()
		}
		if len(a.Audience) != 1 || a.Audience[0] != aud {
			t.Errorf("client assertion aud=%q, want [%s]", a.Audience, aud)
		}
		if a.ID == "" {
			t.Error("client assertion without jti")
		}
		if life := a.Expiry.Sub(a.IssuedAt); life <= 0 || life > time.Minute || a.Expiry.Before(ev.Time) || a.IssuedAt.After(ev.Time.Add(2*time.Second)) {
			t.Errorf("client assertion iat=%s exp=%s at a request of %s: want valid then, for at most a minute", a.IssuedAt, a.Expiry, ev.Time)
		}
	}
	if tokenRequests != 1 {
		t.Errorf("%d token requests, want 1", tokenRequests)
	}
}

// checkIssued checks that the provider issued accessToken to clientID by
// grant, and that it is active.
func checkIssued(t *testing.T, p *provider.Provider, accessToken, grant, clientID string) provider.Issued {
	t.Helper()
	is, ok := p.Lookup(accessToken)
	if !ok {
		t.Fatal("creds returned a token the provider never issued")
	}
	if is.GrantType != grant || is.ClientID != clientID {
		t.Errorf("token issued by grant %q to %q, want %q to %q", is.GrantType, is.ClientID, grant, clientID)
	}
	if grant == "client_credentials" && is.RefreshToken != "" {
		t.Error("fosite issued a refresh token for the client credentials grant")
	}
	in, err := p.Introspect(context.Background(), accessToken)
	if err != nil || !in.Active || in.ClientID != clientID {
		t.Errorf("provider introspection of the token: %+v, %v; want active, of %s", in, err, clientID)
	}
	return is
}

// testSeededSession: a grant_type=refresh_token connection has nothing to
// verify and nothing to log in with; its role is seeded with a refresh token
// on stdin, serves and renews by rotating it, and once the provider has
// ended the session says so and asks for a new seed, which brings it back.
func testSeededSession(t *testing.T) {
	const life = 30 * time.Second
	ctx := context.Background()
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: life})
	p := sc.Provider
	clientID := p.Config().ClientID
	s := sc.StartDev()
	s.RegisterPlugin()
	s.EnableEngine()

	before := p.Counts()
	s.MustCLI("write", "bearer/config/seeded", "grant_type=refresh_token", "token_url="+p.TokenURL(), "client_id="+clientID)
	// The background is off so that every provider call below is the test's
	// doing; min_ttl stays under half the 30 s token.
	s.MustCLI("write", "bearer/roles/seeded", "config=seeded", "min_ttl=5s", "background_refresh=false")
	assertCounts(t, p, before, provider.Counts{}, "config write of a refresh_token connection (nothing to verify), role write")
	checkFields(t, "config read", readData(t, s, "bearer/config/seeded"), map[string]any{
		"grant_type": "refresh_token", "client_auth": "body", "password_set": false, "username": "",
	})

	// Before any seed, a read says how to seed the role, without a provider call.
	before = p.Counts()
	checkSessionEnded(t, s, http.MethodGet, "read before any seed")
	assertCounts(t, p, before, provider.Counts{}, "read before any seed")

	// The seed, on stdin: one refresh grant presenting it.
	seed, err := p.SeedSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc.AddSecret(seed)
	before, nForms := p.Counts(), len(p.Forms())
	c1 := seedCreds(t, s, "seeded", seed)
	checkCredsShape(t, c1, life, 5*time.Second)
	assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "seeding")
	checkRefreshForm(t, p, nForms, clientID, seed, "seeding")
	rt := checkIssued(t, p, c1.AccessToken, "refresh_token", clientID).RefreshToken
	if rt == "" || rt == seed {
		t.Fatal("the seeding refresh did not rotate the refresh token")
	}

	before = p.Counts()
	if c := readCredsCLI(t, s, "seeded"); c.AccessToken != c1.AccessToken {
		t.Error("read after seeding returned another token; want the seeded session's")
	}
	assertCounts(t, p, before, provider.Counts{}, "cached read of the seeded session")

	// Forced renewals present the newest refresh token, once each, and rotate it.
	var last creds
	for i := range 2 {
		before, nForms = p.Counts(), len(p.Forms())
		last = forceCreds(t, s, "seeded")
		assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "forced renewal")
		checkRefreshForm(t, p, nForms, clientID, rt, "forced renewal")
		next := checkIssued(t, p, last.AccessToken, "refresh_token", clientID).RefreshToken
		if next == "" || next == rt {
			t.Fatalf("forced renewal %d did not rotate the refresh token", i+1)
		}
		rt = next
	}
	checkFields(t, "role read after the renewals", readData(t, s, "bearer/roles/seeded"), map[string]any{
		"last_grant": "refresh_token", "last_error": "", "consecutive_failures": 0,
	})

	// The provider ends the session (its newest refresh token revoked). The
	// next renewal gets invalid_grant and, unable to log in, says that the
	// session ended and asks for a new seed; the current token, still valid,
	// may be served with that warning.
	if err := p.Revoke(ctx, rt); err != nil {
		t.Fatal(err)
	}
	before = p.Counts()
	if r := checkSessionEnded(t, s, http.MethodPost, "forced renewal after the provider ended the session"); r.Status == http.StatusOK {
		c, err := parseCreds(r.Data, r, time.Now())
		if err != nil || c.AccessToken != last.AccessToken {
			t.Errorf("forced renewal after the session ended answered 200 with a token other than the current one: %v", err)
		}
	}
	assertCounts(t, p, before, provider.Counts{RefreshInvalidGrant: 1}, "forced renewal after the provider ended the session")
	if role := readData(t, s, "bearer/roles/seeded"); role["last_error"] == "" {
		t.Errorf("role read after the session ended: no last_error (%v)", role)
	}

	// Once the token has expired, reads fail with the same advice, and the
	// dead refresh token is never presented again.
	time.Sleep(time.Until(last.ExpiresAt) + time.Second)
	before = p.Counts()
	for range 2 {
		if r := checkSessionEnded(t, s, http.MethodGet, "read after the token expired"); r.Status != http.StatusBadGateway {
			t.Errorf("read of an ended session with an expired token: %s; want HTTP 502", r)
		}
	}
	assertCounts(t, p, before, provider.Counts{}, "reads of an ended session")

	// A new seed brings the role back.
	seed2, err := p.SeedSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sc.AddSecret(seed2)
	before, nForms = p.Counts(), len(p.Forms())
	c2 := seedCreds(t, s, "seeded", seed2)
	assertCounts(t, p, before, provider.Counts{RefreshOK: 1}, "seeding again")
	checkRefreshForm(t, p, nForms, clientID, seed2, "seeding again")
	checkIssued(t, p, c2.AccessToken, "refresh_token", clientID)
	checkFields(t, "role read after the new seed", readData(t, s, "bearer/roles/seeded"), map[string]any{
		"last_grant": "refresh_token", "last_error": "", "consecutive_failures": 0,
	})
	if twice := p.PresentedTwice(); len(twice) != 0 {
		t.Errorf("refresh tokens presented more than once:\n%s", strings.Join(twice, "\n"))
	}
	if c := p.Counts(); c.PasswordOK+c.PasswordFailed != 0 || c.SeedSessions != 2 {
		t.Errorf("provider counts %+v: want no password grant from the engine and the 2 seeds of the test", c)
	}
}

// checkSessionEnded sends method to creds/seeded and checks that the answer
// (its error, or the warning of a token served from cache) says that the
// role's session ended or was never seeded, and how to seed one.
func checkSessionEnded(t *testing.T, s *harness.Server, method, what string) *harness.Response {
	t.Helper()
	var body any
	if method == http.MethodPost {
		body = map[string]any{}
	}
	r, err := s.Do(method, "/v1/bearer/creds/seeded", s.Token, body)
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Join(append(r.Errors, r.Warnings...), " ")
	if !strings.Contains(msg, `role "seeded"`) || !strings.Contains(msg, "grant_type=refresh_token)") ||
		(!strings.Contains(msg, ") has ended (") && !strings.Contains(msg, "has no session")) ||
		!strings.Contains(msg, "vault write bearer/creds/seeded refresh_token=-") {
		t.Errorf("%s: %s; want the role's session ended and the seeding command", what, r)
	}
	t.Logf("%s: %s", what, r)
	return r
}

// seedCreds seeds role with refresh token seed, written on stdin as an
// operator would (vault write bearer/creds/<role> refresh_token=-), and
// returns the token of the answer.
func seedCreds(t *testing.T, s *harness.Server, role, seed string) creds {
	t.Helper()
	start := time.Now()
	out, errOut, err := s.CLIInput(s.Token, seed+"\n", "write", "-format=json", "bearer/creds/"+role, "refresh_token=-")
	if err != nil {
		t.Fatalf("vault write bearer/creds/%s refresh_token=-: %v\n%s%s", role, err, out, errOut)
	}
	var answer struct {
		Warnings []string       `json:"warnings"`
		Data     map[string]any `json:"data"`
	}
	d := json.NewDecoder(strings.NewReader(out))
	d.UseNumber()
	if err := d.Decode(&answer); err != nil {
		t.Fatalf("vault write bearer/creds/%s refresh_token=-: %v\n%s", role, err, out)
	}
	c, err := parseCreds(answer.Data, &harness.Response{Warnings: answer.Warnings}, start)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) > 0 {
		t.Errorf("seeding %s: warnings %q", role, c.Warnings)
	}
	return c
}

// checkRefreshForm checks the one token request after the first n forms: a
// refresh grant of the public client presenting refreshToken, nothing else.
func checkRefreshForm(t *testing.T, p *provider.Provider, n int, clientID, refreshToken, what string) {
	t.Helper()
	forms := p.Forms()[n:]
	if len(forms) != 1 {
		t.Errorf("%s: %d requests, want 1", what, len(forms))
		return
	}
	form, _ := url.ParseQuery(forms[0])
	if form.Get("grant_type") != "refresh_token" || form.Get("client_id") != clientID || form.Get("refresh_token") != refreshToken {
		t.Errorf("%s: grant_type=%q client_id=%q, and the refresh token presented is the expected one: %t",
			what, form.Get("grant_type"), form.Get("client_id"), form.Get("refresh_token") == refreshToken)
	}
	for _, k := range []string{"username", "password", "client_secret", "client_assertion", "scope"} {
		if form.Has(k) {
			t.Errorf("%s: the refresh grant sent %s", what, k)
		}
	}
}

func newRSAKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// writeKeyFile writes key as a PKCS #8 PEM file of mode 0600 in the
// scenario's directory, for client_private_key=@file, and registers the PEM
// as a secret of the scenario.
func writeKeyFile(t *testing.T, sc *harness.Scenario, name string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	text := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	sc.AddSecret(strings.TrimSpace(text))
	path := filepath.Join(sc.Dir, name+"-key.pem")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
