package bearer

import (
	"encoding/json"
	"html"
	"net/url"
	"regexp"
	"strings"
)

// minRedactable is the shortest secret that can be taken out of text safely: a shorter
// one would match inside ordinary words.
const minRedactable = 4

// redactor takes secrets out of text in every form a provider may echo them back: as
// sent, URL- or form-encoded, JSON-escaped or HTML-escaped.
type redactor struct {
	needles []string
	// short is set when a secret is too short to take out safely: provider text is then
	// not quoted at all, only a well-formed error code.
	short bool
}

func newRedactor(secrets ...string) redactor {
	var r redactor
	seen := map[string]bool{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if len(s) < minRedactable {
			r.short = true
			continue
		}
		quoted, _ := json.Marshal(s)
		for _, form := range []string{
			s, url.QueryEscape(s), url.PathEscape(s), string(quoted[1 : len(quoted)-1]),
			html.EscapeString(s), jsonEscapeHTML(s),
		} {
			if !seen[form] {
				seen[form] = true
				r.needles = append(r.needles, form)
			}
		}
	}
	return r
}

// jsonEscapeHTML is s as encoding/json writes it by default, with <, > and & escaped.
func jsonEscapeHTML(s string) string {
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	_ = enc.Encode(s)
	out := strings.TrimSpace(sb.String())
	return out[1 : len(out)-1]
}

// redact replaces every secret in s.
func (r redactor) redact(s string) string {
	for _, n := range r.needles {
		s = strings.ReplaceAll(s, n, "[redacted]")
	}
	return s
}

// oauthCode is the shape of an OAuth2 error code (RFC 6749 5.2 allows more; providers
// use these).
var oauthCode = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)

// registeredCodes are the error codes of RFC 6749, 6750 and 8628 and OpenID Connect:
// kept even when provider text cannot be quoted.
var registeredCodes = map[string]bool{
	"invalid_request": true, "invalid_client": true, "invalid_grant": true, "unauthorized_client": true,
	"unsupported_grant_type": true, "invalid_scope": true, "access_denied": true, "server_error": true,
	"temporarily_unavailable": true, "invalid_token": true, "insufficient_scope": true,
	"slow_down": true, "expired_token": true, "authorization_pending": true, "login_required": true,
	"interaction_required": true, "consent_required": true, "invalid_dpop_proof": true, "use_dpop_nonce": true,
}

// providerText returns what may be quoted of a provider's error code and description:
// without secrets, clipped to maxQuoted; only a registered code when a secret is too
// short to take out safely.
func (r redactor) providerText(code, description string) (string, string) {
	if r.short {
		if registeredCodes[code] {
			return code, ""
		}
		return "", ""
	}
	code = clip(r.redact(code))
	if code != "" && !oauthCode.MatchString(code) && !registeredCodes[code] {
		// Not an error code: treat it as free text.
		if description == "" {
			description = code
		}
		code = "unrecognized_error"
	}
	return code, clip(r.redact(description))
}
