package e2e

import (
	"sync"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// TestConcurrentReadsOneLogin: N concurrent reads that all need a new token
// (after `vault delete bearer/creds/demo`) cause exactly one provider call
// and all get the same token: readers of a role wait for the one token
// request in flight.
func TestConcurrentReadsOneLogin(t *testing.T) {
	t.Parallel()
	const readers = 25
	sc := env.NewScenario(t, provider.Config{AccessTokenTTL: 20 * time.Minute})
	p := sc.Provider
	s := sc.StartDev()
	setupEngine(sc, s)
	first := mustReadCreds(t, s, "demo")
	s.MustCLI("delete", "bearer/creds/demo")

	before := p.Counts()
	tokens := make([]string, readers)
	errs := make([]error, readers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := readCreds(s, s.Token, "demo")
			tokens[i], errs[i] = c.AccessToken, err
		}()
	}
	close(start)
	wg.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("reader %d: %v", i, err)
		}
		if tokens[i] != tokens[0] {
			t.Errorf("reader %d got a different token than reader 0", i)
		}
	}
	if tokens[0] == first.AccessToken {
		t.Error("the read after delete returned the forgotten token")
	}
	assertCounts(t, p, before, provider.Counts{PasswordOK: 1}, "25 concurrent reads after delete")
}
