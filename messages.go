package bearer

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/hashicorp/vault/sdk/logical"
)

// Every message a user sees, one constructor each. "<mount>/" stands for the mount path
// and is replaced when the message is answered (withMount).

func msgUnknownRole(role string) string {
	return fmt.Sprintf("role %q does not exist: create it with vault write <mount>/roles/%s config=<connection>", role, role)
}

func msgUnknownConnection(role, conn string) string {
	return fmt.Sprintf("role %q uses connection %q, which does not exist: write <mount>/config/%s or point the role to another connection", role, conn, conn)
}

// msgProviderFailure is a failed token request; advice says what to do.
func msgProviderFailure(conn, tokenURL, cause, advice string) string {
	msg := fmt.Sprintf("could not get a token from connection %q (%s): %s", conn, displayURL(tokenURL), cause)
	if advice != "" {
		msg += "; " + advice
	}
	return msg
}

// msgRejected is the error of a login the provider just rejected.
func msgRejected(conn *connEntry, rej *rejection) string {
	return fmt.Sprintf("%s: %s; to protect the account from lockout no login is tried before %s: %s",
		rejectedWhat(conn, rej), rej.Cause, formatTime(rej.NextLoginAt), rejectedFix(conn, rej))
}

// msgHeldBack is the error of a read held back by an earlier rejection.
func msgHeldBack(conn *connEntry, rej *rejection) string {
	return fmt.Sprintf("%s at %s (%s); to protect the account from lockout no login is tried before %s: %s",
		rejectedWhat(conn, rej), formatTime(rej.At), rej.Cause, formatTime(rej.NextLoginAt), rejectedFix(conn, rej))
}

func rejectedWhat(conn *connEntry, rej *rejection) string {
	if rej.Client {
		return fmt.Sprintf("connection %q: the provider rejected the OAuth2 client %q", conn.name, conn.ClientID)
	}
	return fmt.Sprintf("connection %q rejected the credentials of %s", conn.name, loginIdentity(conn))
}

func rejectedFix(conn *connEntry, rej *rejection) string {
	switch {
	case rej.Client && conn.ClientAuth == clientAuthJWT:
		return fmt.Sprintf("check the client's client_id and the public key registered for client_private_key (and client_private_key_id, client_assertion_audience) at the provider, then update them with vault write <mount>/config/%s client_private_key=@<key file>", conn.name)
	case rej.Client:
		return fmt.Sprintf("check the client's client_id, client_secret and client_auth at the provider, then update them with vault write <mount>/config/%s client_id=<id> client_secret=<secret> client_auth=<body or basic>", conn.name)
	case conn.grantType() == grantClientCredentials:
		return fmt.Sprintf("update the client's credentials with vault write <mount>/config/%s client_secret=<new secret> (or client_private_key=@<key file>)", conn.name)
	}
	return fmt.Sprintf("update the credentials with vault write <mount>/config/%s password=<new password> (or client_secret=<new secret>)", conn.name)
}

// loginIdentity names who a connection logs in as, for messages: the user, or the client.
func loginIdentity(conn *connEntry) string {
	if conn.grantType() == grantPassword {
		return fmt.Sprintf("user %q", conn.Username)
	}
	return fmt.Sprintf("client %q", conn.ClientID)
}

// msgRetryLater is the error of an attempt that failed, for the readers until the next.
func msgRetryLater(msg string, next time.Time) string {
	return fmt.Sprintf("%s; the next attempt is allowed at %s", msg, formatTime(next))
}

// msgStale is the warning of a token served after its renewal failed.
func msgStale(expiresAt time.Time, err error) string {
	return fmt.Sprintf("served the current token, valid until %s, because renewing it failed: %s", formatTime(expiresAt), err)
}

func msgNotSaved(role string, err error) error {
	return fmt.Errorf("role %q: a new token was obtained but could not be saved; it is kept in memory and saved at the next chance: %w", role, err)
}

func msgUnsavedWarning(err error) string {
	return "the role's newest tokens could not be saved to storage yet: " + err.Error()
}

// msgMarkNotSaved: the refresh grant was not sent because storage could not record it.
func msgMarkNotSaved(role string, err error) error {
	return fmt.Errorf("role %q: the refresh token was not presented because storage could not record that it is in use: %w", role, err)
}

// msgRefreshRefused is a role's last_error after a refresh refused for a reason of
// configuration was replaced by a password login.
func msgRefreshRefused(conn, cause string) string {
	return fmt.Sprintf("%s; logged in with the password instead: %s", cause, refreshRefusedFix(conn))
}

func msgRefreshRefusedWarning(conn, cause string) string {
	return fmt.Sprintf("this token took a password login because connection %q refused the refresh grant (%s): %s", conn, cause, refreshRefusedFix(conn))
}

func refreshRefusedFix(conn string) string {
	return fmt.Sprintf("check refresh_params and the client settings of the connection (Keycloak clients such as Apiax's may need refresh_params=client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer) with vault write <mount>/config/%s", conn)
}

// msgMinTTLCapped warns that a min_ttl asks for more than half a token's lifetime.
func msgMinTTLCapped(field string, asked, lifetime time.Duration) string {
	return fmt.Sprintf("%s %s is more than half of this connection's token lifetime (%s): tokens are served with at least %s left, and renewed at that point",
		field, asked, lifetime, lifetime/2)
}

// msgSessionEnded: a seeded session (grant_type=refresh_token) has ended, or was never
// seeded (cause empty).
func msgSessionEnded(role, conn, cause string) string {
	if cause == "" {
		return fmt.Sprintf("role %q has no session, and connection %q (grant_type=refresh_token) cannot log in: seed one with vault write <mount>/creds/%s refresh_token=-", role, conn, role)
	}
	return fmt.Sprintf("role %q: the session of connection %q (grant_type=refresh_token) has ended (%s) and the engine cannot log in: seed a new one with vault write <mount>/creds/%s refresh_token=-", role, conn, cause, role)
}

func msgBadConnection(conn string, err error) string {
	return fmt.Sprintf("connection %q cannot be used: %s: fix it with vault write <mount>/config/%s", conn, err, conn)
}

// displayURL is an endpoint as errors and logs quote it: without its query string and
// fragment, which may carry a key.
func displayURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if i := strings.IndexAny(raw, "?#"); i >= 0 {
			return raw[:i]
		}
		return raw
	}
	u.RawQuery, u.Fragment, u.RawFragment, u.User = "", "", "", nil
	return u.String()
}

// userError is a mistake of the caller's (an unknown role or connection): it becomes
// a 400 response.
type userError struct {
	msg string
	// unknownRole: the role named does not exist.
	unknownRole bool
}

func (e *userError) Error() string { return e.msg }

// providerError is a failure to get a token from the provider: Vault answers 502.
type providerError struct{ err error }

func (e *providerError) Error() string { return e.err.Error() }
func (e *providerError) Unwrap() error { return e.err }

// responseError turns an error into Vault's answer: a 400 for user mistakes, a 502 with
// one message for provider failures, the error itself (500) for storage failures.
func responseError(req *logical.Request, err error) (*logical.Response, error) {
	var uerr *userError
	if errors.As(err, &uerr) {
		return logical.ErrorResponse(withMount(uerr.msg, req.MountPoint)), nil
	}
	if isReadOnlyErr(err) {
		return nil, logical.ErrReadOnly
	}
	var perr *providerError
	if errors.As(err, &perr) {
		return rawError(http.StatusBadGateway, withMount(perr.Error(), req.MountPoint)), nil
	}
	return nil, err
}

// rawError is an error answer with its own HTTP status, shaped as Vault shapes its
// errors ({"errors": [msg]}), so that clients read one message, not a list of them.
func rawError(status int, msg string) *logical.Response {
	body, _ := json.Marshal(map[string][]string{"errors": {msg}})
	return &logical.Response{Data: map[string]any{
		logical.HTTPStatusCode:  status,
		logical.HTTPContentType: "application/json",
		logical.HTTPRawBody:     body,
	}}
}

func withMount(msg, mount string) string {
	if mount == "" {
		mount = "bearer/"
	}
	return strings.ReplaceAll(msg, "<mount>/", mount)
}
