package bearer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

const (
	// assertionTypeJWT is the client_assertion_type of RFC 7523 client authentication.
	assertionTypeJWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// assertionLifetime is how long a signed client assertion is valid (RFC 7523 asks
	// for a short one; OIDC providers accept up to a few minutes).
	assertionLifetime = time.Minute
)

// assertionSigner signs the client assertions of a connection that authenticates with
// private_key_jwt (RFC 7523, OpenID Connect Core 9).
type assertionSigner struct {
	signer   jose.Signer
	clientID string
	audience string
}

// newAssertionSigner builds the signer of a connection's client_private_key: RS256 for
// an RSA key, ES256 for a P-256 key.
func newAssertionSigner(conn *connEntry) (*assertionSigner, error) {
	key, alg, err := parsePrivateKey(conn.ClientPrivateKey)
	if err != nil {
		return nil, err
	}
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if conn.ClientPrivateKeyID != "" {
		opts = opts.WithHeader("kid", conn.ClientPrivateKeyID)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		return nil, fmt.Errorf("client_private_key cannot sign: %w", err)
	}
	aud := conn.ClientAssertionAudience
	if aud == "" {
		aud = conn.TokenURL
	}
	return &assertionSigner{signer: signer, clientID: conn.ClientID, audience: aud}, nil
}

// sign returns a new client assertion: iss and sub the client, aud the token endpoint
// (or the configured audience), a unique jti, valid for a minute from now.
func (a *assertionSigner) sign(now time.Time) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", err
	}
	claims := jwt.Claims{
		Issuer:    a.clientID,
		Subject:   a.clientID,
		Audience:  jwt.Audience{a.audience},
		ID:        hex.EncodeToString(jti[:]),
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now.Add(-5 * time.Second)),
		Expiry:    jwt.NewNumericDate(now.Add(assertionLifetime)),
	}
	return jwt.Signed(a.signer).Claims(claims).Serialize()
}

// parsePrivateKey reads a PEM private key (PKCS #8, PKCS #1 or SEC 1) and the signature
// algorithm it takes.
func parsePrivateKey(pemText string) (any, jose.SignatureAlgorithm, error) {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil {
		return nil, "", errors.New("client_private_key holds no PEM block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, "", fmt.Errorf("client_private_key is a %q PEM block, not a private key", block.Type)
	}
	if err != nil {
		return nil, "", errors.New("client_private_key is not a readable private key")
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, "", errors.New("client_private_key: an RSA key needs at least 2048 bits")
		}
		return k, jose.RS256, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, "", errors.New("client_private_key: an EC key must be on P-256 (ES256)")
		}
		return k, jose.ES256, nil
	}
	return nil, "", errors.New("client_private_key must be an RSA (RS256) or P-256 EC (ES256) key")
}
