package e2e

import (
	"bytes"
	"context"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	devAccessToken = regexp.MustCompile(`(?m)^access_token\s+\S+$`)
	devTokenType   = regexp.MustCompile(`(?m)^token_type\s+Bearer$`)
	devVaultAddr   = regexp.MustCompile(`(?m)^\s*export VAULT_ADDR=(http://127\.0\.0\.1:\d+)$`)
	devVaultToken  = regexp.MustCompile(`(?m)^\s*export VAULT_TOKEN=\S+$`)
)

// TestDevScript runs `make dev` as scripts/dev.sh --once, twice in a row: it
// builds the plugin, starts the demo provider and a dev Vault, prints a token
// read from bearer/creds/demo and the exports to reach that Vault, and leaves
// no process and no file behind.
func TestDevScript(t *testing.T) {
	t.Parallel()
	for i := range 2 {
		runDevScript(t, i+1)
	}
}

// runDevScript runs scripts/dev.sh --once with the harness's Vault binary
// and checks its output and that nothing it started survives it.
func runDevScript(t *testing.T, run int) {
	t.Helper()
	// The script's work directory goes under tmp, which every process it
	// starts names on its command line (vault -dev-plugin-dir, the plugin,
	// the demo provider).
	tmp := t.TempDir()
	var envv []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "VAULT_") && !strings.HasPrefix(kv, "TMPDIR=") {
			envv = append(envv, kv)
		}
	}
	// A cold Go build cache compiles the plugin and the demo provider: allow
	// for it; warm, a run takes a few seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(env.RepoRoot, "scripts", "dev.sh"), "--once")
	cmd.Dir = env.RepoRoot
	cmd.Env = append(envv, "VAULT_BIN="+env.VaultBin, "TMPDIR="+tmp)
	// Its own process group, killed whole on timeout or when it leaves
	// processes behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second // a child holding stdout open must not hang the test
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	out := stdout.String()
	if err != nil {
		t.Fatalf("run %d: scripts/dev.sh --once: %v\nstdout:\n%s\nstderr:\n%s", run, err, out, stderr.String())
	}
	t.Logf("run %d: scripts/dev.sh --once took %s", run, time.Since(start).Round(time.Millisecond))

	if !devAccessToken.MatchString(out) {
		t.Errorf("run %d: no access_token line with a token in the output:\n%s", run, out)
	}
	if !devTokenType.MatchString(out) {
		t.Errorf("run %d: no token_type Bearer line in the output:\n%s", run, out)
	}
	if !devVaultToken.MatchString(out) {
		t.Errorf("run %d: no export VAULT_TOKEN= line in the output:\n%s", run, out)
	}
	m := devVaultAddr.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("run %d: no export VAULT_ADDR= line in the output:\n%s", run, out)
	}

	// Nothing left: no process naming the work directory, no work
	// directory, nobody listening at the printed address.
	if procs := processesNaming(t, tmp); len(procs) > 0 {
		t.Errorf("run %d: processes left running:\n%s", run, strings.Join(procs, "\n"))
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("run %d: the work directory %s was left behind", run, filepath.Join(tmp, left[0].Name()))
	}
	u, err := url.Parse(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", u.Host, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("run %d: something still listens at %s", run, m[1])
	}
}

// processesNaming lists the live processes whose command line contains s, as
// "pid: command line".
func processesNaming(t *testing.T, s string) []string {
	t.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		if err != nil {
			continue // exited meanwhile
		}
		if cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})); strings.Contains(cmdline, s) {
			found = append(found, d.Name()+": "+cmdline)
		}
	}
	return found
}
