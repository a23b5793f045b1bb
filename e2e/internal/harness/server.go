package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Storage kinds for a persistent server.
const (
	StorageFile = "file"
	StorageRaft = "raft"
)

// Server is a vault server process on 127.0.0.1.
type Server struct {
	Name        string
	Addr        string // http://127.0.0.1:PORT, the API address
	ClusterAddr string // https://127.0.0.1:PORT (raft only)
	Dir         string
	LogPath     string
	Token       string   // root token
	UnsealKeys  []string // empty in dev mode

	sc   *Scenario
	proc *process
	http *http.Client
}

// StartDev starts `vault server -dev` (in-memory storage, unsealed, root
// token known) with the plugin directory set, and waits until it is active.
func (sc *Scenario) StartDev() *Server {
	sc.T.Helper()
	s := sc.newServer("dev")
	s.Token = "root-" + RandomHex(8)
	port, err := freePorts(2) // the API port and, next to it, the cluster port
	if err != nil {
		sc.T.Fatal(err)
	}
	s.Addr = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.proc.args = []string{
		"server", "-dev",
		"-dev-root-token-id=" + s.Token,
		"-dev-listen-address=" + strings.TrimPrefix(s.Addr, "http://"),
		"-dev-plugin-dir=" + sc.Env.PluginDir,
		"-dev-plugin-init=false", // register the plugin explicitly, by sha256
		"-dev-no-store-token",
		"-log-level=trace",
	}
	s.Start()
	s.WaitActive()
	return s
}

// ServerOptions configure a persistent server.
type ServerOptions struct {
	Storage string // StorageFile (default) or StorageRaft
}

// NewServer writes the configuration of a persistent server with its own
// data directory (file or raft storage); start it with Start, then Init or
// join it.
func (sc *Scenario) NewServer(opts ServerOptions) *Server {
	sc.T.Helper()
	if opts.Storage == "" {
		opts.Storage = StorageFile
	}
	s := sc.newServer(opts.Storage)
	port, err := freePort()
	if err != nil {
		sc.T.Fatal(err)
	}
	cport, err := freePort()
	if err != nil {
		sc.T.Fatal(err)
	}
	s.Addr = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.ClusterAddr = fmt.Sprintf("https://127.0.0.1:%d", cport)
	data := filepath.Join(s.Dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		sc.T.Fatal(err)
	}

	var storage string
	switch opts.Storage {
	case StorageFile:
		storage = fmt.Sprintf("storage \"file\" {\n  path = %q\n}\n", data)
	case StorageRaft:
		// performance_multiplier = 1: the tightest raft timings, for fast
		// elections on loopback.
		storage = fmt.Sprintf("storage \"raft\" {\n  path = %q\n  node_id = %q\n  performance_multiplier = 1\n}\n", data, s.Name)
	default:
		sc.T.Fatalf("unknown storage %q", opts.Storage)
	}
	conf := fmt.Sprintf(`ui = false
disable_mlock = true
plugin_directory = %q
api_addr = %q
cluster_addr = %q
listener "tcp" {
  address = "127.0.0.1:%d"
  cluster_address = "127.0.0.1:%d"
  tls_disable = true
}
%s`, sc.Env.PluginDir, s.Addr, s.ClusterAddr, port, cport, storage)
	path := filepath.Join(s.Dir, "vault.hcl")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		sc.T.Fatal(err)
	}
	s.proc.args = []string{"server", "-config=" + path, "-log-level=trace"}
	return s
}

// NewBareServer prepares a server whose configuration the test writes itself,
// into the server's directory (the README's config.hcl): it reserves the API
// address Addr and, next to it, the port Vault derives the cluster listener
// from (api_addr's port + 1). Start it with StartWith.
func (sc *Scenario) NewBareServer() *Server {
	sc.T.Helper()
	s := sc.newServer("config")
	port, err := freePorts(2)
	if err != nil {
		sc.T.Fatal(err)
	}
	s.Addr = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.proc.dir = s.Dir
	// Trace level through the environment, so that the command line stays the
	// caller's; the log is searched for secrets like every other.
	s.proc.env = append(s.proc.env, "VAULT_LOG_LEVEL=trace")
	return s
}

// StartWith starts the server as `vault args...`, run in its directory, and
// waits until its API answers.
func (s *Server) StartWith(args ...string) {
	s.sc.T.Helper()
	s.proc.args = args
	s.Start()
}

func (sc *Scenario) newServer(kind string) *Server {
	sc.mu.Lock()
	sc.n++
	name := fmt.Sprintf("vault%d-%s", sc.n, kind)
	sc.mu.Unlock()
	dir := filepath.Join(sc.Dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		sc.T.Fatal(err)
	}
	s := &Server{
		Name:    name,
		Dir:     dir,
		LogPath: filepath.Join(dir, "vault.log"),
		sc:      sc,
		http:    &http.Client{Timeout: 30 * time.Second},
	}
	s.proc = &process{name: name, bin: sc.Env.VaultBin, env: childEnv(dir), logPath: s.LogPath}
	sc.AddLogFile(s.LogPath)
	sc.T.Cleanup(func() {
		if err := s.proc.stop(20 * time.Second); err != nil {
			sc.T.Errorf("stop %s: %v", name, err)
		}
	})
	return s
}

// Start starts the server process and waits until its API answers.
func (s *Server) Start() {
	t := s.sc.T
	t.Helper()
	if err := s.proc.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: started at %s, log %s", s.Name, s.Addr, s.LogPath)
	exited := s.proc.exited()
	Eventually(t, 60*time.Second, 100*time.Millisecond, s.Name+" API up", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("%s exited during startup:\n%s", s.Name, tail(s.LogPath, 40))
		default:
		}
		resp, err := s.Do(http.MethodGet, "/v1/sys/seal-status", "", nil)
		if err != nil {
			return false, err.Error()
		}
		return resp.Status == http.StatusOK, resp.String()
	})
}

// Stop stops the server gracefully (SIGTERM); a no-op if it is not running.
func (s *Server) Stop() {
	t := s.sc.T
	t.Helper()
	if err := s.proc.stop(20 * time.Second); err != nil {
		t.Error(err)
	}
	t.Logf("%s: stopped", s.Name)
}

// Kill kills the server and its plugins at once (SIGKILL to the process
// group, no chance to seal, step down or answer in-flight requests) and waits
// until the process has exited; a no-op if it is not running.
func (s *Server) Kill() {
	t := s.sc.T
	t.Helper()
	if err := s.proc.kill(); err != nil {
		t.Errorf("kill %s: %v", s.Name, err)
	}
	t.Logf("%s: killed", s.Name)
}

// Running reports whether the server process is alive.
func (s *Server) Running() bool { return s.proc.running() }

// Init initializes the server with one unseal key and keeps the key and the
// root token.
func (s *Server) Init() {
	t := s.sc.T
	t.Helper()
	var out struct {
		Keys  []string `json:"unseal_keys_b64"`
		Token string   `json:"root_token"`
	}
	s.CLIJSON(&out, "operator", "init", "-key-shares=1", "-key-threshold=1", "-format=json")
	if len(out.Keys) == 0 || out.Token == "" {
		t.Fatalf("%s: operator init returned no keys or token", s.Name)
	}
	s.UnsealKeys, s.Token = out.Keys, out.Token
}

// Unseal submits keys (the server's own by default) until it is unsealed.
func (s *Server) Unseal(keys ...string) {
	t := s.sc.T
	t.Helper()
	if len(keys) == 0 {
		keys = s.UnsealKeys
	}
	for _, k := range keys {
		s.MustCLI("operator", "unseal", k)
	}
	Eventually(t, 60*time.Second, 100*time.Millisecond, s.Name+" unsealed", func() (bool, string) {
		resp, err := s.Do(http.MethodGet, "/v1/sys/seal-status", "", nil)
		if err != nil {
			return false, err.Error()
		}
		var st struct{ Sealed bool }
		_ = json.Unmarshal(resp.Body, &st)
		return resp.Status == http.StatusOK && !st.Sealed, resp.String()
	})
}

// Health returns the status of GET /v1/sys/health: 200 active, 429
// standby, 501 not initialized, 503 sealed, or 0 if the server is down.
func (s *Server) Health() int {
	resp, err := s.Do(http.MethodGet, "/v1/sys/health", "", nil)
	if err != nil {
		return 0
	}
	return resp.Status
}

// WaitActive waits until the server is the unsealed active node.
func (s *Server) WaitActive() {
	t := s.sc.T
	t.Helper()
	Eventually(t, 60*time.Second, 100*time.Millisecond, s.Name+" active", func() (bool, string) {
		h := s.Health()
		return h == http.StatusOK, fmt.Sprintf("health %d", h)
	})
}

// RegisterPlugin registers the plugin binary in the catalog by sha256,
// command vault-plugin-secrets-bearer, name bearer, with the build version.
func (s *Server) RegisterPlugin() {
	s.sc.T.Helper()
	e := s.sc.Env
	s.RegisterPluginVersion(e.PluginSHA256, PluginCommand, e.PluginVersion)
}

// RegisterPluginVersion registers another build of the plugin (command in
// the plugin directory, with its sha256) as version of the catalog's bearer.
func (s *Server) RegisterPluginVersion(sha256, command, version string) {
	s.sc.T.Helper()
	s.MustCLI("plugin", "register", "-sha256="+sha256, "-command="+command,
		"-version="+version, "secret", PluginName)
}

// EnableEngine mounts the registered plugin at bearer/.
func (s *Server) EnableEngine() {
	s.sc.T.Helper()
	s.MustCLI("secrets", "enable", "-path="+MountPath, "-plugin-version="+s.sc.Env.PluginVersion, PluginName)
}

// CLI runs the vault CLI against this server with token (none if empty).
// Its output is recorded in the transcript; the command line is logged with
// password and client_secret values redacted.
func (s *Server) CLI(token string, args ...string) (stdout, stderr string, err error) {
	return s.CLIInput(token, "", args...)
}

// CLIInput is CLI with stdin, which the CLI reads for a field written as
// key=- (vault write bearer/config/x password=-).
func (s *Server) CLIInput(token, stdin string, args ...string) (stdout, stderr string, err error) {
	env := []string{"VAULT_ADDR=" + s.Addr, "VAULT_CLI_NO_COLOR=1"}
	if token != "" {
		env = append(env, "VAULT_TOKEN="+token)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.sc.Env.VaultBin, args...)
	cmd.Env = childEnv(s.Dir, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	label := s.Name + ": vault " + redact(args)
	s.sc.record(label, o.String()+e.String())
	return o.String(), e.String(), err
}

// Shell runs script with `bash -euo pipefail` in the server's directory, the
// way an operator's terminal would: the harness's vault first on PATH, the
// environment without any VAULT_* variable plus env (the script's exports),
// so no VAULT_TOKEN: the token comes from `vault login`'s token file under
// HOME, the server's directory. Go keeps the test's build cache, module cache
// and settings, so that a build in the script reuses them. The script and
// everything it starts is killed after timeout. It fails the test on error and
// returns stdout.
func (s *Server) Shell(timeout time.Duration, script string, env ...string) string {
	t := s.sc.T
	t.Helper()
	bin := filepath.Join(s.Dir, ".vault-bin")
	if err := os.MkdirAll(bin, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(s.sc.Env.VaultBin, filepath.Join(bin, "vault")); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	goEnv, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH", "GOENV").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	var vars []string
	for i, v := range strings.Split(strings.TrimSpace(string(goEnv)), "\n") {
		vars = append(vars, []string{"GOCACHE", "GOMODCACHE", "GOPATH", "GOENV"}[i]+"="+v)
	}
	vars = append(vars, "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = s.Dir
	cmd.Env = childEnv(s.Dir, append(vars, env...)...)
	// Its own process group, killed whole on timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err = cmd.Run()
	s.sc.record(s.Name+": bash -c "+script, o.String()+e.String())
	if err != nil {
		t.Fatalf("%s: bash -c %q: %v\nstdout:\n%s\nstderr:\n%s", s.Name, script, err, o.String(), e.String())
	}
	t.Logf("%s: ran in %s:\n%s", s.Name, time.Since(start).Round(time.Millisecond), script)
	return o.String()
}

// MustCLI runs the CLI with the root token and fails the test on error.
func (s *Server) MustCLI(args ...string) string {
	t := s.sc.T
	t.Helper()
	out, errOut, err := s.CLI(s.Token, args...)
	if err != nil {
		t.Fatalf("%s: vault %s: %v\n%s%s", s.Name, redact(args), err, out, errOut)
	}
	t.Logf("%s: vault %s", s.Name, redact(args))
	return out
}

// CLIJSON runs the CLI with the root token (args must ask for
// -format=json) and decodes stdout into out.
func (s *Server) CLIJSON(out any, args ...string) {
	t := s.sc.T
	t.Helper()
	stdout := s.MustCLI(args...)
	d := json.NewDecoder(strings.NewReader(stdout))
	d.UseNumber()
	if err := d.Decode(out); err != nil {
		t.Fatalf("%s: vault %s: decode JSON: %v\n%s", s.Name, redact(args), err, stdout)
	}
}

// redact hides the values of sensitive key=value arguments.
func redact(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		for _, k := range []string{"password=", "client_secret=", "refresh_token="} {
			if strings.HasPrefix(a, k) {
				out[i] = k + "<redacted>"
			}
		}
	}
	return strings.Join(out, " ")
}

// Response is a Vault HTTP API answer.
type Response struct {
	Status        int
	Body          []byte
	Data          map[string]any `json:"data"`
	Warnings      []string       `json:"warnings"`
	Errors        []string       `json:"errors"`
	LeaseID       string         `json:"lease_id"`
	LeaseDuration int            `json:"lease_duration"`
	Renewable     bool           `json:"renewable"`
}

func (r *Response) String() string {
	return fmt.Sprintf("HTTP %d %s", r.Status, bytes.TrimSpace(r.Body))
}

// Do calls the HTTP API (path starts with /v1/) with token (none if empty)
// and a JSON body (none if nil). Safe to call from any goroutine.
func (s *Server) Do(method, path, token string, body any) (*Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.Addr+path, rd)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("X-Vault-Token", token)
	}
	hr, err := s.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(hr.Body)
	if err != nil {
		return nil, err
	}
	resp := &Response{Status: hr.StatusCode, Body: b}
	if len(bytes.TrimSpace(b)) > 0 {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(resp); err != nil {
			return resp, fmt.Errorf("%s %s: decode: %w: %s", method, path, err, b)
		}
	}
	if !strings.HasPrefix(path, "/v1/sys/health") && !strings.HasPrefix(path, "/v1/sys/seal-status") {
		s.sc.record(fmt.Sprintf("%s: HTTP %s %s", s.Name, method, path), resp.String())
	}
	return resp, nil
}

// MustDo is Do with the root token that fails the test on a transport error
// or an unexpected status.
func (s *Server) MustDo(method, path string, body any, wantStatus int) *Response {
	t := s.sc.T
	t.Helper()
	resp, err := s.Do(method, path, s.Token, body)
	if err != nil {
		t.Fatalf("%s: %s %s: %v", s.Name, method, path, err)
	}
	if resp.Status != wantStatus {
		t.Fatalf("%s: %s %s: want HTTP %d, got %s", s.Name, method, path, wantStatus, resp)
	}
	return resp
}

// ErrStatus is returned by helpers that expected a different HTTP status.
var ErrStatus = errors.New("unexpected HTTP status")
