package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestRaftFailoverDuringRefresh: three Vault nodes on Raft; the active node
// is killed (SIGKILL: no step-down, no seal) while its refresh is in flight at
// the provider, which has already rotated the refresh token and answers only
// after the node died. The new active node serves a token and no refresh token
// is ever presented twice: the one that was in flight counts as spent (its
// write-ahead mark, docs/renewal.md), so the new active node logs in once with the password, then
// renews with the refresh token of that login. A replay of the spent token
// would be reuse to the provider: invalid_grant, the whole family revoked.
func TestRaftFailoverDuringRefresh(t *testing.T) {
	t.Parallel()
	const life = 20 * time.Second // min_ttl 60s is capped at 10s
	p, nodes := startRaftEngine(t, life)
	setupEvents := len(p.Events()) // after the verify login
	first := mustReadCreds(t, nodes[0], "demo")
	// From here on the role has a session: the only login allowed is the one
	// that replaces the refresh token spent in flight.
	base := p.Counts()
	active, rest := splitActive(t, nodes)

	// A forced renewal through the active node; the provider rotates the
	// refresh token and holds its answer.
	arrived, release := p.HoldRefreshes()
	t.Cleanup(release)
	forced := make(chan string, 1)
	go func() {
		r, err := active.Do(http.MethodPost, "/v1/bearer/creds/demo", active.Token, map[string]any{})
		if err != nil {
			forced <- err.Error()
		} else {
			forced <- r.String()
		}
	}()
	select {
	case ev := <-arrived:
		t.Logf("refresh in flight at the provider (already processed: %s), answer held", ev.Outcome())
	case answer := <-forced:
		t.Fatalf("forced renewal through %s answered before a refresh reached the provider: %s", active.Name, answer)
	case <-time.After(60 * time.Second):
		t.Fatalf("no refresh reached the provider within 60s of a forced renewal through %s", active.Name)
	}
	if h := active.Health(); h != http.StatusOK {
		t.Fatalf("%s is no longer the active node (health %d), the refresh in flight is another node's: %s", active.Name, h, healthStatuses(nodes))
	}
	active.Kill()
	killed := time.Now()
	// rel is a provider time relative to the kill (negative: before it).
	rel := func(at time.Time) time.Duration { return at.Sub(killed).Round(time.Millisecond) }
	release() // the answer goes to a dead node
	answer := <-forced
	t.Logf("forced renewal through the killed node: %s", answer)

	// The new active node serves a token the provider issued and holds valid.
	ctx := context.Background()
	checkServed := func(what string, c creds) provider.Issued {
		t.Helper()
		is, known := p.Lookup(c.AccessToken)
		if !known {
			t.Fatalf("%s: a token the provider never issued", what)
		}
		if in, err := p.Introspect(ctx, c.AccessToken); err != nil || !in.Active {
			t.Errorf("%s: token of the %s grant at %s not active at the provider: %+v, %v", what, is.GrantType, is.IssuedAt.Format(time.TimeOnly), in, err)
		}
		if twice := p.PresentedTwice(); len(twice) != 0 {
			t.Errorf("%s: refresh tokens presented twice: %q", what, twice)
		}
		return is
	}
	for _, n := range rest {
		after := readAfterFailover(t, n, nodes)
		is := checkServed("first read through "+n.Name+" after failover", after)
		t.Logf("%s serves the token of the %s grant at %s from the kill (the token read before the failover: %v)",
			n.Name, is.GrantType, rel(is.IssuedAt), after.AccessToken == first.AccessToken)
	}

	// Keep reading until the new active node has renewed with a refresh token
	// of its own (after its login: the one in flight is spent).
	renewed := readUntil(t, rest, 2*life+20*time.Second, "a refresh by the new active node", func(c creds) (bool, string) {
		is, _ := p.Lookup(c.AccessToken)
		return is.GrantType == "refresh_token" && is.IssuedAt.After(killed),
			fmt.Sprintf("serving the token of the %s grant at %s from the kill", is.GrantType, rel(is.IssuedAt))
	})
	checkServed("renewal by the new active node", renewed)
	checkCredsShape(t, renewed, life, life/2)

	for _, ev := range p.Events()[setupEvents:] {
		if ev.Endpoint == "token" {
			t.Logf("provider: %9s %s %s held=%t", rel(ev.Time), ev.GrantType, ev.Outcome(), ev.Held)
		}
	}
	total := p.Counts().Sub(base)
	if total.PasswordOK > 1 || total.PasswordFailed != 0 || total.RefreshInvalidGrant != 0 || total.RefreshFailed != 0 {
		t.Errorf("after the first read: %+v; want at most one password login (for the refresh token spent in flight) and no invalid_grant", total)
	}
	t.Logf("provider traffic after the first read: %+v", total)
}
