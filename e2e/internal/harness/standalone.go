package harness

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DevVault is a `vault server -dev` started outside a test, by a program such
// as cmd/benchtable. Its process group dies with the program (SIGKILL on the
// parent's death); Stop ends it earlier.
type DevVault struct {
	Addr    string // http://127.0.0.1:PORT
	Token   string // root token
	LogPath string
	proc    *process
}

// StartDevVault starts a dev-mode server in dir whose plugin_directory is
// the Env's plugin directory, logging at logLevel, and waits until it is the
// active node. Plugins are registered by the caller, by sha256.
func (e *Env) StartDevVault(dir, logLevel string) (*DevVault, error) {
	port, err := freePorts(2) // the API port and, next to it, the cluster port
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "vault.hcl")
	hcl := fmt.Sprintf("plugin_directory = %q\ndisable_mlock = true\n", e.PluginDir)
	if err := os.WriteFile(conf, []byte(hcl), 0o600); err != nil {
		return nil, err
	}
	v := &DevVault{
		Addr:    fmt.Sprintf("http://127.0.0.1:%d", port),
		Token:   "root-" + RandomHex(8),
		LogPath: filepath.Join(dir, "vault.log"),
	}
	v.proc = &process{
		name: "vault-dev",
		bin:  e.VaultBin,
		args: []string{
			"server", "-dev", "-config=" + conf,
			"-dev-root-token-id=" + v.Token,
			"-dev-listen-address=" + strings.TrimPrefix(v.Addr, "http://"),
			"-dev-no-store-token",
			"-log-level=" + logLevel,
		},
		env:     childEnv(dir),
		logPath: v.LogPath,
	}
	if err := v.proc.start(); err != nil {
		return nil, err
	}
	if err := v.waitActive(60 * time.Second); err != nil {
		return nil, errors.Join(err, v.Stop())
	}
	return v, nil
}

// waitActive polls sys/health until the server answers 200 (active).
func (v *DevVault) waitActive(timeout time.Duration) error {
	client := &http.Client{Timeout: 2 * time.Second}
	exited := v.proc.exited()
	last := "no answer"
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case <-exited:
			return fmt.Errorf("vault exited during startup:\n%s", tail(v.LogPath, 40))
		default:
		}
		resp, err := client.Get(v.Addr + "/v1/sys/health")
		if err != nil {
			last = err.Error()
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = resp.Status
	}
	return fmt.Errorf("vault at %s not active after %s: %s", v.Addr, timeout, last)
}

// Stop stops the server (SIGTERM, then SIGKILL to its process group, plugins
// included). Calling it again is a no-op.
func (v *DevVault) Stop() error {
	return v.proc.stop(20 * time.Second)
}

// BuildE2EPlugin builds package pkg of the e2e module (for example
// ./cmd/floor-plugin) into the plugin directory as command, and returns the
// binary's hex sha256 for registration.
func (e *Env) BuildE2EPlugin(pkg, command string) (string, error) {
	bin := filepath.Join(e.PluginDir, command)
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = filepath.Join(e.RepoRoot, "e2e")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %w\n%s", pkg, err, out)
	}
	return FileSHA256(bin)
}
