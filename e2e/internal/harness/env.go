// Package harness runs the end-to-end scenarios: it builds the plugin from
// the working tree, finds a Vault binary, starts Vault servers, agents and the
// OAuth2 provider on loopback ports, and stops all of them when a test ends.
//
// It drives Vault only through its CLI and HTTP API; it never imports the
// plugin package.
package harness

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const (
	// PluginModule is the plugin's Go module (and root package) path.
	PluginModule = "github.com/bearer-vault/vault-plugin-secrets-bearer"
	// PluginCommand is the binary name in Vault's plugin directory.
	PluginCommand = "vault-plugin-secrets-bearer"
	// PluginName is the catalog name the plugin is registered under.
	PluginName = "bearer"
	// MountPath is where the scenarios enable the engine.
	MountPath = "bearer"
)

// Env is what every scenario shares: one plugin build and one Vault binary.
type Env struct {
	RepoRoot      string // the plugin repository (working tree)
	VaultBin      string // absolute path of the vault binary
	PluginDir     string // Vault's plugin_directory, holding PluginCommand
	PluginSHA256  string // hex sha256 of the plugin binary
	PluginVersion string // the version the plugin was built to report
	workDir       string
}

// Setup prepares an Env for TestMain: it builds the plugin from the working
// tree with version (for example v0.1.0-e2e) and locates Vault with
// scripts/vault-bin.sh (which may build it, once, the first time). The
// returned cleanup removes the build directory.
func Setup(version string) (*Env, func(), error) {
	root, err := findRepoRoot()
	if err != nil {
		return nil, nil, err
	}
	work, err := os.MkdirTemp("", "bearer-e2e-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(work) }
	env := &Env{RepoRoot: root, PluginDir: filepath.Join(work, "plugins"), PluginVersion: version, workDir: work}

	if err := env.buildPlugin(); err != nil {
		cleanup()
		return nil, nil, err
	}
	if env.VaultBin, err = locateVault(root); err != nil {
		cleanup()
		return nil, nil, err
	}
	return env, cleanup, nil
}

// buildPlugin compiles ./cmd/vault-plugin-secrets-bearer into PluginDir.
func (e *Env) buildPlugin() error {
	if err := os.MkdirAll(e.PluginDir, 0o755); err != nil {
		return err
	}
	start := time.Now()
	sum, err := e.BuildPluginVersion(e.PluginVersion, PluginCommand)
	if err != nil {
		return err
	}
	e.PluginSHA256 = sum
	fmt.Fprintf(os.Stderr, "e2e: built plugin %s (%s) in %s\n", e.PluginVersion, sum[:12], time.Since(start).Round(time.Millisecond))
	return nil
}

// BuildPluginVersion builds the plugin from the working tree, reporting
// version, into PluginDir as command (next to the scenarios' build, as an
// operator installs a second version) and returns its hex sha256.
func (e *Env) BuildPluginVersion(version, command string) (string, error) {
	bin := filepath.Join(e.PluginDir, command)
	cmd := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X "+PluginModule+".Version="+version,
		"./cmd/"+PluginCommand)
	cmd.Dir = e.RepoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build plugin %s in %s: %w\n%s", version, e.RepoRoot, err, out)
	}
	return FileSHA256(bin)
}

// FileSHA256 returns the hex sha256 of a file, as `vault plugin register
// -sha256` wants it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// locateVault runs scripts/vault-bin.sh, which prints the binary's path.
func locateVault(root string) (string, error) {
	start := time.Now()
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "vault-bin.sh"))
	cmd.Dir = root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("scripts/vault-bin.sh: %w", err)
	}
	bin := strings.TrimSpace(string(out))
	if fi, err := os.Stat(bin); err != nil || fi.IsDir() {
		return "", fmt.Errorf("scripts/vault-bin.sh printed %q, not a file", bin)
	}
	ver, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", bin, err)
	}
	fmt.Fprintf(os.Stderr, "e2e: using %s: %s (located in %s)\n", bin, bytes.TrimSpace(ver), time.Since(start).Round(time.Millisecond))
	return bin, nil
}

// findRepoRoot walks up from the working directory to the plugin's go.mod.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			bytes.HasPrefix(bytes.TrimSpace(b), []byte("module "+PluginModule+"\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod of " + PluginModule + " above the working directory")
		}
		dir = parent
	}
}
