package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Template is one Vault Agent template: contents rendered to destination,
// with file mode perms ("0600" if empty).
type Template struct {
	Contents    string
	Destination string
	Perms       string
}

// Agent is a `vault agent` process.
type Agent struct {
	Dir     string
	LogPath string
	proc    *process
}

// StartAgent starts Vault Agent against s, authenticated with token through
// the token_file auto-auth method, rendering templates. Its log (trace
// level) is searched for secrets at the end of the test.
func (sc *Scenario) StartAgent(s *Server, token string, templates ...Template) *Agent {
	t := sc.T
	t.Helper()
	dir := filepath.Join(sc.Dir, "agent-"+RandomHex(3))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tokenPath := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `pid_file = %q
exit_after_auth = false

vault {
  address = %q
}

auto_auth {
  method "token_file" {
    config = {
      token_file_path = %q
    }
  }
}

template_config {
  exit_on_retry_failure = true
}
`, filepath.Join(dir, "agent.pid"), s.Addr, tokenPath)
	for _, tpl := range templates {
		perms := tpl.Perms
		if perms == "" {
			perms = "0600"
		}
		fmt.Fprintf(&b, "\ntemplate {\n  contents = %q\n  destination = %q\n  perms = %q\n}\n", tpl.Contents, tpl.Destination, perms)
	}
	conf := filepath.Join(dir, "agent.hcl")
	if err := os.WriteFile(conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}

	a := &Agent{Dir: dir, LogPath: filepath.Join(dir, "agent.log")}
	a.proc = &process{
		name:    "agent",
		bin:     sc.Env.VaultBin,
		args:    []string{"agent", "-config=" + conf, "-log-level=trace"},
		env:     childEnv(dir),
		logPath: a.LogPath,
	}
	sc.AddLogFile(a.LogPath)
	t.Cleanup(func() {
		if err := a.proc.stop(10 * time.Second); err != nil {
			t.Errorf("stop agent: %v", err)
		}
	})
	if err := a.proc.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent: started against %s, log %s", s.Addr, a.LogPath)
	return a
}

// Running reports whether the agent process is alive.
func (a *Agent) Running() bool { return a.proc.running() }
