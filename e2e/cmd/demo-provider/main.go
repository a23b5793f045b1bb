// Command demo-provider runs the end-to-end OAuth2 provider on its own, for
// `make dev` and manual experiments: a public client, one user, the password
// and rotating refresh-token grants, introspection and revocation.
//
// Its first line on stdout is the token URL:
//
//	token_url=http://127.0.0.1:PORT/oauth2/token
//
// Requests are logged to stderr without passwords or tokens. SIGINT or
// SIGTERM stops it.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	clientID := flag.String("client-id", "demo", "public client id (client_id in the form body, no secret)")
	username := flag.String("username", "demo", "resource owner username")
	password := flag.String("password", "demo-password", "resource owner password")
	accessTTL := flag.Duration("access-ttl", 20*time.Minute, "access token lifetime")
	refreshTTL := flag.Duration("refresh-ttl", 7*24*time.Hour, "refresh token lifetime (negative: never expires)")
	flag.Parse()

	logger := log.New(os.Stderr, "demo-provider: ", log.LstdFlags)
	p, err := provider.New(provider.Config{
		Addr:            *addr,
		ClientID:        *clientID,
		Username:        *username,
		Password:        *password,
		AccessTokenTTL:  *accessTTL,
		RefreshTokenTTL: *refreshTTL,
		Logf:            logger.Printf,
	})
	if err != nil {
		logger.Fatal(err)
	}

	fmt.Printf("token_url=%s\n", p.TokenURL())
	fmt.Printf("introspection_url=%s\n", p.IntrospectURL())
	fmt.Printf("revocation_url=%s\n", p.RevokeURL())
	logger.Printf("serving client_id=%q username=%q access_ttl=%s refresh_ttl=%s", *clientID, *username, *accessTTL, *refreshTTL)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	s := <-sig
	logger.Printf("received %s, stopping", s)
	if err := p.Close(); err != nil {
		logger.Printf("stop: %v", err)
	}
	c := p.Counts()
	logger.Printf("served password ok=%d failed=%d, refresh ok=%d invalid_grant=%d failed=%d, introspections=%d, revocations=%d",
		c.PasswordOK, c.PasswordFailed, c.RefreshOK, c.RefreshInvalidGrant, c.RefreshFailed, c.Introspections, c.Revocations)
}
