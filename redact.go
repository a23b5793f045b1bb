package bearer

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// minRedactable is the shortest secret that can be taken out of text safely: a shorter
// one would match inside ordinary words.
const minRedactable = 4

// redactor takes secrets out of text in every form a provider may echo them back: as
// sent, URL- or form-encoded (either hex case), JSON-escaped (with or without \u0026
// escapes, \/ included) or HTML-escaped (numeric or named entities), and any mix of
// these.
type redactor struct {
	// patterns match one secret each, in all those forms.
	patterns []*regexp.Regexp
	// literals are secrets too long to match in every form, taken out as sent.
	literals []string
	// short is set when a secret is too short to take out safely: provider text is then
	// not quoted at all, only a well-formed error code.
	short bool
}

func newRedactor(secrets ...string) redactor {
	var r redactor
	seen := map[string]bool{}
	for _, s := range secrets {
		switch {
		case s == "" || seen[s]:
			continue
		case len(s) < minRedactable:
			r.short = true
			continue
		}
		seen[s] = true
		if re := secretPattern(s); re != nil {
			r.patterns = append(r.patterns, re)
			continue
		}
		// Too long to match in every form: the secret is taken out as sent, and no
		// provider text is quoted.
		r.literals = append(r.literals, s)
		r.short = true
	}
	return r
}

// maxPatternBytes and maxEscapable bound the secrets that secretPattern matches in
// every form (in bytes, and in characters that encoders change), which keeps its
// regular expression quick to build: about a millisecond.
const (
	maxPatternBytes = 8 << 10
	maxEscapable    = 256
)

// secretPattern matches s in every form; nil when s is longer than maxPatternBytes or
// has more than maxEscapable characters that encoders change.
func secretPattern(s string) *regexp.Regexp {
	if len(s) > maxPatternBytes {
		return nil
	}
	var sb strings.Builder
	escapable := 0
	for _, c := range s {
		if plain(c) {
			sb.WriteRune(c)
			continue
		}
		if escapable++; escapable > maxEscapable {
			return nil
		}
		sb.WriteString(charPattern(c))
	}
	re, err := regexp.Compile(sb.String())
	if err != nil {
		return nil
	}
	return re
}

// plain reports whether no encoder changes c: ASCII letters and digits, - . and _.
func plain(c rune) bool {
	return c < utf8.RuneSelf && (unicode.IsLetter(c) || unicode.IsDigit(c) || c == '-' || c == '.' || c == '_')
}

// charPattern matches c as any escape of it or as itself. The escapes come first: where
// both match (& and &amp;), the longer is taken out.
func charPattern(c rune) string {
	// URL and form encoding: %XX per UTF-8 byte; a space as +.
	var pct strings.Builder
	for _, b := range []byte(string(c)) {
		pct.WriteString("%" + hexPattern(uint64(b), 2))
	}
	alts := []string{pct.String()}
	if c == ' ' {
		alts = append(alts, `\+`)
	}
	// JSON: \uXXXX (a surrogate pair beyond the BMP), and the short escapes.
	if r1, r2 := utf16.EncodeRune(c); r1 != unicode.ReplacementChar {
		alts = append(alts, `\\u`+hexPattern(uint64(r1), 4)+`\\u`+hexPattern(uint64(r2), 4))
	} else {
		alts = append(alts, `\\u`+hexPattern(uint64(c), 4))
	}
	if esc, ok := jsonShortEscapes[c]; ok {
		alts = append(alts, regexp.QuoteMeta(esc))
	}
	// HTML: &#N; and &#xH; with any leading zeros, and the named entities.
	alts = append(alts, fmt.Sprintf("&#0*%d;", c), "&#[xX]0*"+hexPattern(uint64(c), 0)+";")
	if name, ok := htmlEntities[c]; ok {
		alts = append(alts, name)
	}
	alts = append(alts, regexp.QuoteMeta(string(c)))
	return "(?:" + strings.Join(alts, "|") + ")"
}

var jsonShortEscapes = map[rune]string{
	'"': `\"`, '\\': `\\`, '/': `\/`, '\b': `\b`, '\f': `\f`, '\n': `\n`, '\r': `\r`, '\t': `\t`,
}

var htmlEntities = map[rune]string{'&': "&amp;", '<': "&lt;", '>': "&gt;", '"': "&quot;", '\'': "&apos;"}

// hexPattern matches v in hexadecimal with at least digits digits, in either case.
func hexPattern(v uint64, digits int) string {
	var sb strings.Builder
	for _, d := range fmt.Sprintf("%0*x", digits, v) {
		if d >= 'a' {
			sb.WriteString("[" + string(d) + string(unicode.ToUpper(d)) + "]")
		} else {
			sb.WriteRune(d)
		}
	}
	return sb.String()
}

// redact replaces every secret in s. Overlapping occurrences, of one secret or of
// several, are replaced as one, so that no part of a secret is left.
func (r redactor) redact(s string) string {
	var spans [][2]int
	find := func(index func(string) (int, int)) {
		for at := 0; at < len(s); {
			start, end := index(s[at:])
			if start < 0 {
				return
			}
			spans = append(spans, [2]int{at + start, at + end})
			_, size := utf8.DecodeRuneInString(s[at+start:])
			at += start + size
		}
	}
	for _, re := range r.patterns {
		find(func(t string) (int, int) {
			if loc := re.FindStringIndex(t); loc != nil {
				return loc[0], loc[1]
			}
			return -1, -1
		})
	}
	for _, lit := range r.literals {
		find(func(t string) (int, int) {
			i := strings.Index(t, lit)
			return i, i + len(lit)
		})
	}
	if len(spans) == 0 {
		return s
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
	var sb strings.Builder
	end := 0
	for _, sp := range spans {
		switch {
		case sp[0] >= end:
			sb.WriteString(s[end:sp[0]])
			sb.WriteString("[redacted]")
			end = sp[1]
		case sp[1] > end:
			end = sp[1]
		}
	}
	sb.WriteString(s[end:])
	return sb.String()
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
