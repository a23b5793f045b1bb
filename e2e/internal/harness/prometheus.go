package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// prometheusMissing is the exit status of scripts/prometheus-bin.sh when Prometheus is
// not installed and may not be installed here.
const prometheusMissing = 3

var prometheusOnce struct {
	sync.Once
	bin, skip string
	err       error
}

// PrometheusBin returns the Prometheus server binary that scripts/prometheus-bin.sh
// finds or installs (Debian's package, once per test binary). When Prometheus is
// missing and may not be installed here, skip says why and err is nil.
func (e *Env) PrometheusBin() (bin, skip string, err error) {
	o := &prometheusOnce
	o.Do(func() {
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(e.RepoRoot, "scripts", "prometheus-bin.sh"))
		cmd.Dir = e.RepoRoot
		var stderr strings.Builder
		cmd.Stderr = io.MultiWriter(os.Stderr, &stderr)
		out, err := cmd.Output()
		var exit *exec.ExitError
		switch {
		case errors.As(err, &exit) && exit.ExitCode() == prometheusMissing:
			o.skip = strings.TrimSpace(stderr.String())
		case err != nil:
			o.err = fmt.Errorf("scripts/prometheus-bin.sh: %w\n%s", err, stderr.String())
		default:
			o.bin = strings.TrimSpace(string(out))
			fmt.Fprintf(os.Stderr, "e2e: using %s (located in %s)\n", o.bin, time.Since(start).Round(time.Millisecond))
		}
	})
	return o.bin, o.skip, o.err
}

// Prometheus is a Prometheus server on 127.0.0.1 with its own storage directory.
type Prometheus struct {
	Name    string
	Addr    string // http://127.0.0.1:PORT
	Dir     string // configuration, token files and storage
	LogPath string

	sc   *Scenario
	proc *process
	http *http.Client
}

// NewPrometheus prepares a Prometheus server run by bin on a free loopback port; write
// what its configuration refers to into Dir, then Start it. It is stopped when the
// test ends.
func (sc *Scenario) NewPrometheus(bin string) *Prometheus {
	sc.T.Helper()
	dir := filepath.Join(sc.Dir, "prometheus")
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		sc.T.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		sc.T.Fatal(err)
	}
	p := &Prometheus{
		Name: "prometheus", Addr: fmt.Sprintf("http://127.0.0.1:%d", port), Dir: dir,
		LogPath: filepath.Join(dir, "prometheus.log"),
		sc:      sc, http: &http.Client{Timeout: 10 * time.Second},
	}
	p.proc = &process{
		name: p.Name, bin: bin, dir: dir, env: childEnv(dir), logPath: p.LogPath,
		args: []string{
			"--config.file=" + filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path=" + filepath.Join(dir, "data"),
			"--web.listen-address=" + strings.TrimPrefix(p.Addr, "http://"),
		},
	}
	sc.AddLogFile(p.LogPath)
	sc.T.Cleanup(func() {
		if err := p.proc.stop(20 * time.Second); err != nil {
			sc.T.Errorf("stop prometheus: %v", err)
		}
	})
	return p
}

// Start writes config as prometheus.yml, starts the server and waits until it is ready.
func (p *Prometheus) Start(config string) {
	t := p.sc.T
	t.Helper()
	if err := os.WriteFile(filepath.Join(p.Dir, "prometheus.yml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p.sc.record("prometheus.yml", config)
	if err := p.proc.start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: started at %s, log %s", p.Name, p.Addr, p.LogPath)
	exited := p.proc.exited()
	Eventually(t, 60*time.Second, 200*time.Millisecond, "prometheus ready", func() (bool, string) {
		select {
		case <-exited:
			t.Fatalf("prometheus exited during startup:\n%s", tail(p.LogPath, 40))
		default:
		}
		r, err := p.http.Get(p.Addr + "/-/ready")
		if err != nil {
			return false, err.Error()
		}
		r.Body.Close()
		return r.StatusCode == http.StatusOK, r.Status
	})
}

// Sample is one series of an instant query's answer.
type Sample struct {
	Metric map[string]string
	Value  float64
}

// Query runs an instant PromQL query through the HTTP API (/api/v1/query).
func (p *Prometheus) Query(expr string) ([]Sample, error) {
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/query?query="+url.QueryEscape(expr), &out); err != nil {
		return nil, err
	}
	if out.Status != "success" {
		return nil, fmt.Errorf("query %s: %s", expr, out.Error)
	}
	if out.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: result type %q, want vector", expr, out.Data.ResultType)
	}
	samples := make([]Sample, 0, len(out.Data.Result))
	for _, r := range out.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %v: %w", expr, r.Value[1], err)
		}
		samples = append(samples, Sample{Metric: r.Metric, Value: v})
	}
	return samples, nil
}

// Targets describes the scrape targets' health (/api/v1/targets): one line each
// with its URL, health and last error.
func (p *Prometheus) Targets() string {
	var out struct {
		Data struct {
			ActiveTargets []struct {
				ScrapeURL string `json:"scrapeUrl"`
				Health    string `json:"health"`
				LastError string `json:"lastError"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := p.get("/api/v1/targets", &out); err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, t := range out.Data.ActiveTargets {
		fmt.Fprintf(&b, "%s: %s %s\n", t.ScrapeURL, t.Health, t.LastError)
	}
	return b.String()
}

func (p *Prometheus) get(path string, out any) error {
	r, err := p.http.Get(p.Addr + path)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	p.sc.record("prometheus: GET "+path, string(b))
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("GET %s: HTTP %d: %w: %s", path, r.StatusCode, err, b)
	}
	return nil
}
