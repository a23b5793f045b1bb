package provider

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v3"
	josejwt "github.com/go-jose/go-jose/v3/jwt"
)

func newTestProvider(t *testing.T, cfg Config) *Provider {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// post sends a form to the token endpoint and decodes the JSON answer.
func post(t *testing.T, p *Provider, form url.Values, basicUser, basicPass string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, p.TokenURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if basicUser != "" {
		req.SetBasicAuth(basicUser, basicPass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestPasswordRefreshRotationAndReuse(t *testing.T) {
	p := newTestProvider(t, Config{AccessTokenTTL: 20 * time.Second})
	ctx := context.Background()

	status, body := post(t, p, url.Values{"grant_type": {"password"}, "client_id": {"demo"}, "username": {"demo"}, "password": {"wrong"}}, "", "")
	if status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Fatalf("wrong password: got %d %v", status, body)
	}

	status, body = post(t, p, url.Values{"grant_type": {"password"}, "client_id": {"demo"}, "username": {"demo"}, "password": {"demo-password"}, "scope": {"read"}}, "", "")
	if status != http.StatusOK {
		t.Fatalf("password grant: got %d %v", status, body)
	}
	at1, rt1 := body["access_token"].(string), body["refresh_token"].(string)
	if at1 == "" || rt1 == "" || body["expires_in"].(float64) > 20 || body["scope"] != "read" {
		t.Fatalf("password grant answer: %v", body)
	}
	if in, err := p.Introspect(ctx, at1); err != nil || !in.Active || in.Scope != "read" {
		t.Fatalf("introspect first token: %+v, %v", in, err)
	}

	status, body = post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {rt1}}, "", "")
	if status != http.StatusOK {
		t.Fatalf("refresh: got %d %v", status, body)
	}
	at2, rt2 := body["access_token"].(string), body["refresh_token"].(string)
	if rt2 == "" || rt2 == rt1 || at2 == at1 {
		t.Fatalf("refresh did not rotate: %v", body)
	}
	// Like a JWT, the old access token lives on until it expires.
	if in, _ := p.Introspect(ctx, at1); !in.Active {
		t.Fatal("old access token revoked by a normal refresh")
	}

	// Presenting the used refresh token again revokes the family.
	status, body = post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {rt1}}, "", "")
	if status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Fatalf("reuse: got %d %v", status, body)
	}
	status, body = post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {rt2}}, "", "")
	if status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Fatalf("family not revoked after reuse: got %d %v", status, body)
	}
	if in, _ := p.Introspect(ctx, at2); in.Active {
		t.Fatal("access token of the revoked family still active")
	}

	want := Counts{PasswordOK: 1, PasswordFailed: 1, RefreshOK: 1, RefreshInvalidGrant: 2, Introspections: 3}
	if got := p.Counts(); got != want {
		t.Fatalf("counts: got %+v, want %+v", got, want)
	}
	if got := len(p.RefreshTokens()); got != 2 {
		t.Fatalf("recorded %d refresh tokens, want 2", got)
	}
	if is, ok := p.Lookup(at2); !ok || is.GrantType != "refresh_token" || is.RefreshToken != rt2 || time.Until(is.ExpiresAt) > 20*time.Second {
		t.Fatalf("issuance record of the refreshed token: %+v, %v", is, ok)
	}
	if forms := p.Forms(); !strings.Contains(forms[1], "password=demo-password") {
		t.Fatalf("raw form not recorded: %q", forms[1])
	}
}

func TestConfidentialClientAndRevocation(t *testing.T) {
	p := newTestProvider(t, Config{ConfidentialClientID: "conf", ConfidentialClientSecret: "s3cret"})
	pw := url.Values{"grant_type": {"password"}, "username": {"demo"}, "password": {"demo-password"}}

	status, body := post(t, p, pw, "conf", "s3cret")
	if status != http.StatusOK {
		t.Fatalf("basic auth: got %d %v", status, body)
	}
	withBody := url.Values{"client_id": {"conf"}, "client_secret": {"s3cret"}}
	for k, v := range pw {
		withBody[k] = v
	}
	if status, body = post(t, p, withBody, "", ""); status != http.StatusOK {
		t.Fatalf("client_secret in body: got %d %v", status, body)
	}
	if status, body = post(t, p, pw, "conf", "wrong"); status != http.StatusUnauthorized || body["error"] != "invalid_client" {
		t.Fatalf("wrong secret: got %d %v", status, body)
	}

	// Revoke the refresh token with the public client, then it is dead.
	status, body = post(t, p, url.Values{"grant_type": {"password"}, "client_id": {"demo"}, "username": {"demo"}, "password": {"demo-password"}}, "", "")
	if status != http.StatusOK {
		t.Fatalf("public password grant: got %d %v", status, body)
	}
	rt := body["refresh_token"].(string)
	resp, err := http.PostForm(p.RevokeURL(), url.Values{"client_id": {"demo"}, "token": {rt}, "token_type_hint": {"refresh_token"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: HTTP %d", resp.StatusCode)
	}
	if status, body = post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {rt}}, "", ""); body["error"] != "invalid_grant" {
		t.Fatalf("refresh after revoke: got %d %v", status, body)
	}
	if c := p.Counts(); c.Revocations != 1 || c.PasswordOK != 3 || c.PasswordFailed != 1 {
		t.Fatalf("counts: %+v", c)
	}
}

// TestHoldRefreshes: a held refresh is processed (rotated and counted) before
// it is answered, the answer waits for release, and presenting its refresh
// token again is reuse, reported by PresentedTwice.
func TestHoldRefreshes(t *testing.T) {
	p := newTestProvider(t, Config{})
	status, body := post(t, p, url.Values{"grant_type": {"password"}, "client_id": {"demo"}, "username": {"demo"}, "password": {"demo-password"}}, "", "")
	if status != http.StatusOK {
		t.Fatalf("password grant: got %d %v", status, body)
	}
	refresh := url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {body["refresh_token"].(string)}}

	arrived, release := p.HoldRefreshes()
	defer release()
	answered := make(chan int, 1)
	go func() {
		resp, err := http.PostForm(p.TokenURL(), refresh)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	ev := <-arrived
	if !ev.Held || ev.GrantType != "refresh_token" || ev.Outcome() != "ok" {
		t.Fatalf("held event: %+v", ev)
	}
	if c := p.Counts(); c.RefreshOK != 1 || len(p.RefreshTokens()) != 2 {
		t.Fatalf("held refresh not processed before its answer: %+v, %d refresh tokens", c, len(p.RefreshTokens()))
	}
	select {
	case s := <-answered:
		t.Fatalf("held refresh answered before release: %d", s)
	default:
	}
	if twice := p.PresentedTwice(); len(twice) != 0 {
		t.Fatalf("PresentedTwice after one presentation: %v", twice)
	}
	release()
	if s := <-answered; s != http.StatusOK {
		t.Fatalf("released refresh: HTTP %d", s)
	}

	// After the release refreshes are answered at once; the rotated token is dead.
	if status, body = post(t, p, refresh, "", ""); status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Fatalf("reuse of the held refresh's token: got %d %v", status, body)
	}
	twice := p.PresentedTwice()
	if len(twice) != 1 || !strings.Contains(twice[0], "issuance #1 (password grant") || !strings.Contains(twice[0], "presented 2 times, outcomes ok, invalid_grant") {
		t.Fatalf("PresentedTwice: %q", twice)
	}
	if strings.Contains(twice[0], refresh.Get("refresh_token")) {
		t.Fatal("PresentedTwice shows the refresh token")
	}
	if c := p.Counts(); c.RefreshOK != 1 || c.RefreshInvalidGrant != 1 {
		t.Fatalf("counts: %+v", c)
	}
}

// TestJWTClientCredentials: the private_key_jwt client gets a token from the
// client credentials grant (no refresh token) with an assertion signed by its
// key; a replayed jti, another key, another audience and an assertion of the
// wrong algorithm are rejected as invalid_client (a replay as jti_known).
func TestJWTClientCredentials(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProvider(t, Config{JWTClients: []JWTClient{
		{ID: "svc", Key: &rsaKey.PublicKey, KeyID: "k1"},
		{ID: "svc-ec", Key: &ecKey.PublicKey},
	}})

	// assertion signs the claims of a client assertion of client id, with
	// key ID kid (none if empty).
	assertion := func(key any, alg jose.SignatureAlgorithm, id, kid, aud, jti string) string {
		t.Helper()
		opts := &jose.SignerOptions{}
		if kid != "" {
			opts = opts.WithHeader("kid", kid)
		}
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		raw, err := josejwt.Signed(signer).Claims(josejwt.Claims{
			Issuer: id, Subject: id, Audience: josejwt.Audience{aud}, ID: jti,
			IssuedAt: josejwt.NewNumericDate(now), Expiry: josejwt.NewNumericDate(now.Add(time.Minute)),
		}).CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	cc := func(id, a string) url.Values {
		return url.Values{
			"grant_type": {"client_credentials"}, "client_id": {id},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
			"client_assertion":      {a},
		}
	}

	good := assertion(rsaKey, jose.RS256, "svc", "k1", p.TokenURL(), "jti-1")
	status, body := post(t, p, cc("svc", good), "", "")
	if status != http.StatusOK || body["access_token"] == nil || body["refresh_token"] != nil {
		t.Fatalf("client credentials: got %d %v; want a token and no refresh token", status, body)
	}
	if is, ok := p.Lookup(body["access_token"].(string)); !ok || is.GrantType != "client_credentials" || is.ClientID != "svc" {
		t.Fatalf("issuance record: %+v, %v", is, ok)
	}
	ev := p.Events()[0]
	if ev.ClientAuth != "private_key_jwt" || ev.Assertion == nil || ev.Assertion.Alg != "RS256" || ev.Assertion.Kid != "k1" ||
		ev.Assertion.ID != "jti-1" || len(ev.Assertion.Audience) != 1 || ev.Assertion.Audience[0] != p.TokenURL() || ev.Assertion.Subject != "svc" {
		t.Fatalf("event: %+v, assertion %+v", ev, ev.Assertion)
	}

	for name, tc := range map[string]struct {
		assertion string
		want      string
	}{
		"replayed jti":   {good, "jti_known"},
		"another key":    {assertion(mustRSA(t), jose.RS256, "svc", "k1", p.TokenURL(), "jti-2"), "invalid_client"},
		"other audience": {assertion(rsaKey, jose.RS256, "svc", "k1", p.URL(), "jti-3"), "invalid_client"},
		"ES256":          {assertion(ecKey, jose.ES256, "svc", "k1", p.TokenURL(), "jti-4"), "invalid_client"},
	} {
		if status, body := post(t, p, cc("svc", tc.assertion), "", ""); status == http.StatusOK || body["error"] != tc.want {
			t.Errorf("%s: got %d %v, want %s", name, status, body, tc.want)
		}
	}
	if c := p.Counts(); c.ClientCredentialsOK != 1 || c.ClientCredentialsFailed != 4 || c.OtherGrant != 0 || c.TokenCalls() != 5 {
		t.Fatalf("counts: %+v", c)
	}

	// The ES256 client, its assertion without kid.
	ec := assertion(ecKey, jose.ES256, "svc-ec", "", p.TokenURL(), "jti-5")
	if status, body := post(t, p, cc("svc-ec", ec), "", ""); status != http.StatusOK {
		t.Fatalf("ES256 client credentials: got %d %v", status, body)
	}
	if secrets := strings.Join(p.Secrets(), " "); !strings.Contains(secrets, good) {
		t.Fatal("Secrets does not hold the client assertions")
	}

	// The public client may not use client credentials.
	if status, body := post(t, p, url.Values{"grant_type": {"client_credentials"}, "client_id": {"demo"}}, "", ""); status == http.StatusOK {
		t.Fatalf("public client credentials: got %d %v", status, body)
	}
}

func mustRSA(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSeedSessionAndRevoke: SeedSession's login is counted apart from the
// password grants, its refresh token refreshes, and Revoke of the newest
// refresh token ends the session.
func TestSeedSessionAndRevoke(t *testing.T) {
	p := newTestProvider(t, Config{})
	ctx := context.Background()
	seed, err := p.SeedSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := p.Counts(); c.SeedSessions != 1 || c.PasswordOK != 0 || c.TokenCalls() != 1 {
		t.Fatalf("counts after the seed: %+v", c)
	}
	if evs := p.Events(); len(evs) != 1 || !evs[0].Seed || evs[0].ClientAuth != "none" {
		t.Fatalf("events: %+v", evs)
	}
	status, body := post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {seed}}, "", "")
	if status != http.StatusOK {
		t.Fatalf("refresh of the seed: %d %v", status, body)
	}
	rt := body["refresh_token"].(string)
	if err := p.Revoke(ctx, rt); err != nil {
		t.Fatal(err)
	}
	if status, body = post(t, p, url.Values{"grant_type": {"refresh_token"}, "client_id": {"demo"}, "refresh_token": {rt}}, "", ""); body["error"] != "invalid_grant" {
		t.Fatalf("refresh after Revoke: %d %v", status, body)
	}
	if c := p.Counts(); c.SeedSessions != 1 || c.RefreshOK != 1 || c.RefreshInvalidGrant != 1 || c.Revocations != 1 || c.PasswordOK != 0 {
		t.Fatalf("counts: %+v", c)
	}
}
