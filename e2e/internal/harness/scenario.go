package harness

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// Scenario is one test's world: an OAuth2 provider, the Vault servers and
// agents started through it, and a transcript of every CLI and HTTP answer.
//
// When the test ends, every process is stopped and every server log, agent
// log and the transcript are searched for the provider's secrets (password,
// client secret, every refresh token it issued): finding one fails the test.
type Scenario struct {
	T        *testing.T
	Env      *Env
	Provider *provider.Provider
	Dir      string // the test's temporary directory

	mu      sync.Mutex
	files   []string // searched for secrets at the end
	secrets []string // extra secrets beyond the provider's
	tr      *os.File // transcript of CLI and HTTP answers
	n       int      // servers started, for names
}

// NewScenario starts a provider with cfg (a random password if none is set)
// and registers the cleanups. Call it first in a test.
func (e *Env) NewScenario(t *testing.T, cfg provider.Config) *Scenario {
	t.Helper()
	dir := t.TempDir() // removed last: its cleanup is registered first
	sc := &Scenario{T: t, Env: e, Dir: dir}
	t.Cleanup(sc.finish) // runs after every process below has stopped

	tr, err := os.Create(filepath.Join(dir, "transcript.log"))
	if err != nil {
		t.Fatal(err)
	}
	sc.tr = tr
	sc.files = append(sc.files, tr.Name())

	if cfg.Password == "" {
		cfg.Password = "pw-" + RandomHex(16)
	}
	p, err := provider.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	sc.Provider = p
	return sc
}

// AddSecret adds a value that must not appear in any log or answer.
func (sc *Scenario) AddSecret(s string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.secrets = append(sc.secrets, s)
}

// AddLogFile adds a file to search for secrets at the end of the test.
func (sc *Scenario) AddLogFile(path string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sc.files = append(sc.files, path)
}

// record appends an answer to the transcript.
func (sc *Scenario) record(label, text string) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	fmt.Fprintf(sc.tr, "---- %s %s\n%s\n", time.Now().Format("15:04:05.000"), label, text)
}

// Secrets is every value the test must never see outside the provider.
func (sc *Scenario) Secrets() []string {
	sc.mu.Lock()
	extra := append([]string(nil), sc.secrets...)
	sc.mu.Unlock()
	return append(sc.Provider.Secrets(), extra...)
}

// LeakReport searches the scenario's log files and transcript for secrets
// and describes each hit (file, line number, which secret), or returns "".
func (sc *Scenario) LeakReport() string {
	sc.mu.Lock()
	files := append([]string(nil), sc.files...)
	sc.mu.Unlock()
	needles := map[string]string{} // needle -> description
	for i, s := range sc.Secrets() {
		for _, n := range needlesFor(s) {
			needles[n] = fmt.Sprintf("secret #%d (%s...)", i, safePrefix(s))
		}
	}
	var b strings.Builder
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			continue // a process that never started has no log
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for line := 1; sc.Scan(); line++ {
			text := sc.Text()
			for n, what := range needles {
				if strings.Contains(text, n) {
					fmt.Fprintf(&b, "%s:%d contains %s\n", filepath.Base(f), line, what)
				}
			}
		}
		fh.Close()
	}
	return b.String()
}

var alnumRun = regexp.MustCompile(`[A-Za-z0-9]{16,}`)

// needlesFor is what betrays secret s in a log: s itself, its form encoding,
// and every long alphanumeric run in it (which survives JSON escaping,
// quoting and truncation at a punctuation mark).
func needlesFor(s string) []string {
	out := []string{s, url.QueryEscape(s)}
	return append(out, alnumRun.FindAllString(s, -1)...)
}

// safePrefix shows enough of a secret to tell which one it is, no more.
func safePrefix(s string) string {
	if strings.HasPrefix(s, "ory_rt_") {
		return "refresh token ory_rt_" + s[7:min(len(s), 10)]
	}
	return s[:min(len(s), 3)]
}

// finish runs after the test: on failure it shows the tail of every log;
// then it fails the test if a secret leaked.
func (sc *Scenario) finish() {
	t := sc.T
	sc.mu.Lock()
	sc.tr.Close()
	files := append([]string(nil), sc.files...)
	sc.mu.Unlock()
	if t.Failed() || os.Getenv("E2E_SHOW_LOGS") != "" {
		for _, f := range files {
			t.Logf("==== tail of %s:\n%s", filepath.Base(f), tail(f, 60))
		}
	}
	if dir := os.Getenv("E2E_KEEP_LOGS"); dir != "" {
		sc.keepLogs(filepath.Join(dir, t.Name()), files)
	}
	if leaks := sc.LeakReport(); leaks != "" {
		t.Errorf("secrets leaked into logs or answers:\n%s", leaks)
	}
}

// keepLogs copies the scenario's logs and transcript into dir, named after
// their place in the test's directory (vault1-raft-vault.log).
func (sc *Scenario) keepLogs(dir string, files []string) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		sc.T.Logf("E2E_KEEP_LOGS: %v", err)
		return
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a process that never started has no log
		}
		name := filepath.Base(f)
		if rel, err := filepath.Rel(sc.Dir, f); err == nil {
			name = strings.ReplaceAll(rel, string(filepath.Separator), "-")
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			sc.T.Logf("E2E_KEEP_LOGS: %v", err)
		}
	}
	sc.T.Logf("logs kept in %s", dir)
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Eventually polls cond every interval until it returns true or timeout
// passes, then fails the test with cond's last message.
func Eventually(t testing.TB, timeout, interval time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, timeout, msg)
		}
		time.Sleep(interval)
	}
}

// RandomHex returns 2n random hex digits.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
