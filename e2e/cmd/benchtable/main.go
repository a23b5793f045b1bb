// Command benchtable prints the performance figures and their targets as one
// Markdown table (make bench): the root package's Go benchmarks, run as a
// subprocess, and a real Vault's HTTP API on loopback, where one client reads
// alternately a cached bearer/creds/<role>, the same read on a do-nothing
// plugin built with the same SDK (the floor: what the plugin RPC alone costs),
// and a built-in KV-v2 secret (the reference). It reports timings; it never
// asserts them.
//
// With -readme FILE it also writes the table into FILE between the lines
// <!-- bench:start --> and <!-- bench:end -->.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run() error {
	var opts vaultOptions
	readme := flag.String("readme", "", "also write the table into this file between the bench markers")
	goBenchArgs := flag.String("go-bench-args", "", "extra arguments for the root package's go test -bench (e.g. -benchtime=2s)")
	skipGo := flag.Bool("skip-go", false, "skip the Go benchmarks")
	skipVault := flag.Bool("skip-vault", false, "skip the real-Vault comparison")
	flag.IntVar(&opts.warmup, "warmup", 500, "alternating warm-up rounds")
	flag.IntVar(&opts.blocks, "blocks", 3, "measured blocks of alternating rounds")
	flag.IntVar(&opts.rounds, "rounds", 2000, "alternating rounds per block (one request per endpoint each)")
	flag.IntVar(&opts.clients, "clients", 4, "concurrent clients in the throughput phase")
	flag.DurationVar(&opts.window, "window", 250*time.Millisecond, "one endpoint's turn in the throughput phase")
	flag.IntVar(&opts.windows, "windows", 12, "turns per endpoint in the throughput phase")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root, err := repoRoot()
	if err != nil {
		return err
	}
	start := time.Now()
	var benches []goBench
	if !*skipGo {
		if benches, err = runGoBench(ctx, root, strings.Fields(*goBenchArgs)); err != nil {
			return err
		}
	}
	var vr *vaultResult
	if !*skipVault {
		if vr, err = runVault(ctx, opts); err != nil {
			return err
		}
	}
	out := render(benches, vr, root)
	fmt.Fprintf(os.Stderr, "benchtable: done in %s\n\n", time.Since(start).Round(time.Second))
	fmt.Print(out)
	if *readme != "" {
		if err := writeBetweenMarkers(*readme, out); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "benchtable: wrote the table into %s\n", *readme)
	}
	return nil
}

// repoRoot is the plugin repository: the parent of the e2e module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for ; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "e2e", "go.mod")); err == nil {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", errors.New("run benchtable inside the plugin repository")
		}
	}
}

const (
	startMarker = "<!-- bench:start -->"
	endMarker   = "<!-- bench:end -->"
)

// writeBetweenMarkers replaces what lies between the markers in path.
func writeBetweenMarkers(path, text string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i := strings.Index(s, startMarker)
	j := strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s ... %s section", path, startMarker, endMarker)
	}
	s = s[:i+len(startMarker)] + "\n" + text + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}

// machine describes where the figures were taken.
func machine(vr *vaultResult, root string) string {
	parts := []string{
		fmt.Sprintf("%s, %d cores", cpuModel(), runtime.NumCPU()),
		fmt.Sprintf("%s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH),
	}
	if vr != nil {
		parts = append(parts, strings.SplitN(vr.vaultVersion, ",", 2)[0])
	}
	if sdk := sdkVersions(root); sdk != "" {
		parts = append(parts, sdk)
	}
	return strings.Join(parts, "; ")
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

const sdkModule = "github.com/hashicorp/vault/sdk"

// sdkVersions names the Vault SDK required by the plugin (go.mod) and by the
// floor plugin (e2e/go.mod).
func sdkVersions(root string) string {
	plugin := requiredVersion(filepath.Join(root, "go.mod"), sdkModule)
	floor := requiredVersion(filepath.Join(root, "e2e", "go.mod"), sdkModule)
	if plugin == floor {
		return "vault/sdk " + plugin + " in both plugins"
	}
	return fmt.Sprintf("vault/sdk %s (bearer), %s (floor)", plugin, floor)
}

// requiredVersion returns the version of module in a go.mod file, or "?".
func requiredVersion(gomod, module string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "?"
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return "?"
}
