package e2e

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/internal/harness"
	"github.com/bearer-vault/vault-plugin-secrets-bearer/e2e/provider"
)

// releaseVersion is what TestRelease builds: a string found nowhere else in
// the binaries (dependency versions such as v0.2.0 are), so finding it proves
// the -X stamp.
const releaseVersion = "v0.9.9-reltest.1"

// releaseTargets are the platforms of `make release`, with the executable
// format and CPU each binary must be built for.
var releaseTargets = map[string]struct {
	elf   elf.Machine
	macho macho.Cpu
}{
	"linux_amd64":  {elf: elf.EM_X86_64},
	"linux_arm64":  {elf: elf.EM_AARCH64},
	"darwin_amd64": {macho: macho.CpuAmd64},
	"darwin_arm64": {macho: macho.CpuArm64},
}

// releaseBlock is what the release script prints per binary: the platform,
// the copy into the plugin directory and the register command.
var releaseBlock = regexp.MustCompile(`(?m)^(\w+)/(\w+):\n\s+cp (\S+) <plugin_directory>/(\S+)\n\s+vault (plugin register -sha256=([0-9a-f]{64}) -command=(\S+) -version=(\S+) secret bearer)$`)

// TestRelease runs `make release`'s script twice on one source tree, the
// second time from a copy of the tree at another path, and requires
// byte-identical binaries and SHA256SUMS. It checks each binary's platform,
// build settings and version stamp, and installs and registers the binary for
// this machine in Vault with the commands the script printed.
func TestRelease(t *testing.T) {
	t.Parallel()
	t.Run("refuses a bad version", func(t *testing.T) {
		for _, v := range []string{"", "1.2.3", "v1.2", "v1.02.3", "v1.2.3-", "v1.2.3 ", "v1.2.3/x"} {
			dist := t.TempDir()
			_, stderr, err := runRelease(t, env.RepoRoot, dist, v)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(stderr, "VERSION must look like") {
				t.Errorf("release %q: %v, want exit status 2 and the rule:\n%s", v, err, stderr)
			}
			if left, _ := os.ReadDir(dist); len(left) > 0 {
				t.Errorf("release %q left %s in DIST_DIR", v, left[0].Name())
			}
		}
	})

	dist1, dist2 := t.TempDir(), t.TempDir()
	out := mustRelease(t, env.RepoRoot, dist1)
	elsewhere := filepath.Join(t.TempDir(), "elsewhere")
	copyTree(t, env.RepoRoot, elsewhere)
	mustRelease(t, elsewhere, dist2)

	sums1 := readFile(t, filepath.Join(dist1, "SHA256SUMS"))
	if sums2 := readFile(t, filepath.Join(dist2, "SHA256SUMS")); !bytes.Equal(sums1, sums2) {
		t.Errorf("SHA256SUMS differ between the two builds:\n%s\n%s", sums1, sums2)
	}
	sums := map[string]string{} // file -> sha256
	for _, line := range strings.Split(strings.TrimSpace(string(sums1)), "\n") {
		sum, file, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not in sha256sum format", line)
		}
		sums[file] = sum
	}
	for _, dist := range []string{dist1, dist2} {
		want := []string{"SHA256SUMS"}
		for target := range releaseTargets {
			want = append(want, releaseFile(target))
		}
		if got := dirNames(t, dist); !sameSet(got, want) {
			t.Errorf("%s holds %v, want %v", dist, got, want)
		}
	}

	for target, arch := range releaseTargets {
		file := releaseFile(target)
		b1, b2 := readFile(t, filepath.Join(dist1, file)), readFile(t, filepath.Join(dist2, file))
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s differs between the two builds", file)
		}
		path := filepath.Join(dist1, file)
		if sum, err := harness.FileSHA256(path); err != nil || sum != sums[file] {
			t.Errorf("%s: sha256 %s (%v), SHA256SUMS says %q", file, sum, err, sums[file])
		}
		if !bytes.Contains(b1, []byte(releaseVersion)) {
			t.Errorf("%s does not contain its version %s", file, releaseVersion)
		}
		checkPlatform(t, path, arch.elf, arch.macho)
		checkBuildSettings(t, path, target)
		checkBuildSettings(t, filepath.Join(dist2, file), target)
	}

	blocks := releaseBlock.FindAllStringSubmatch(out, -1)
	if len(blocks) != len(releaseTargets) {
		t.Fatalf("the script printed %d install blocks, want %d:\n%s", len(blocks), len(releaseTargets), out)
	}
	installed := harness.PluginCommand + "_" + releaseVersion
	var host []string
	for _, b := range blocks {
		target, src, dst, sum, command, version := b[1]+"_"+b[2], b[3], b[4], b[6], b[7], b[8]
		if src != filepath.Join(dist1, releaseFile(target)) || dst != installed || command != installed ||
			version != releaseVersion || sum != sums[releaseFile(target)] {
			t.Errorf("install block for %s does not match its binary:\n%s", target, b[0])
		}
		if target == runtime.GOOS+"_"+runtime.GOARCH {
			host = b
		}
	}
	if host == nil {
		t.Skipf("no release binary runs on %s/%s: not registering one in Vault", runtime.GOOS, runtime.GOARCH)
	}

	// Install and register as printed: Vault refuses a -version the binary
	// does not report, and the mount shows the version the plugin reports.
	sc := env.NewScenario(t, provider.Config{})
	s := sc.StartDev()
	if err := os.WriteFile(filepath.Join(env.PluginDir, installed), readFile(t, host[3]), 0o755); err != nil {
		t.Fatal(err)
	}
	s.MustCLI(strings.Fields(host[5])...)
	s.MustCLI("secrets", "enable", "-path=release", "-plugin-version="+releaseVersion, harness.PluginName)
	if m := readMount(t, s, "release/"); m.RunningPluginVersion != releaseVersion || m.RunningSHA256 != host[6] {
		t.Errorf("release/ runs version %q (sha256 %.12s), want %s (%.12s)", m.RunningPluginVersion, m.RunningSHA256, releaseVersion, host[6])
	}
}

// releaseFile is the name of the release binary for target (linux_amd64).
func releaseFile(target string) string {
	return harness.PluginCommand + "_" + releaseVersion + "_" + target
}

// runRelease runs root's scripts/release.sh with version into dist.
func runRelease(t *testing.T, root, dist, version string) (stdout, stderr string, err error) {
	t.Helper()
	// Cold, the Go build cache compiles the SDK and gRPC for four platforms:
	// minutes on 2 cores. Warm, a build links four binaries.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	// Niced: the scenarios running alongside have timing checks, and a
	// cold build keeps both cores busy.
	cmd := exec.CommandContext(ctx, "nice", "-n", "10", "bash", filepath.Join(root, "scripts", "release.sh"), version)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "DIST_DIR="+dist)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// mustRelease builds releaseVersion from root into dist and returns what the
// script printed on stdout.
func mustRelease(t *testing.T, root, dist string) string {
	t.Helper()
	start := time.Now()
	out, stderr, err := runRelease(t, root, dist, releaseVersion)
	if err != nil {
		t.Fatalf("release build in %s: %v\n%s%s", root, err, out, stderr)
	}
	t.Logf("release build in %s took %s", root, time.Since(start).Round(time.Millisecond))
	return out
}

// copyTree copies the plugin module at src (its sources, cmd/ and scripts/;
// not .git, build output, the e2e module or tools) to dst and commits it
// there in a new git repository.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	skip := map[string]bool{".git": true, "bin": true, "dist": true, "e2e": true, "tools": true}
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if skip[rel] {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
	// A repository of its own, with a .git directory (which the go command
	// reads to stamp VCS information, unlike a worktree's .git file): a
	// release build must not carry it.
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "-A"},
		{"-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "copy"},
	} {
		cmd := exec.Command("git", args...)
		cmd.Dir = dst
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s in %s: %v\n%s", args[len(args)-1], dst, err, out)
		}
	}
}

// checkPlatform checks that path is an executable for the ELF machine or,
// if none is given, the Mach-O CPU; an ELF one also has no symbol table
// and no DWARF (-s -w).
func checkPlatform(t *testing.T, path string, machine elf.Machine, cpu macho.Cpu) {
	t.Helper()
	name := filepath.Base(path)
	if machine != elf.EM_NONE {
		f, err := elf.Open(path)
		if err != nil {
			t.Errorf("%s is not an ELF binary: %v", name, err)
			return
		}
		defer f.Close()
		if f.Machine != machine || f.Type != elf.ET_EXEC {
			t.Errorf("%s is ELF %s %s, want an executable for %s", name, f.Type, f.Machine, machine)
		}
		if _, err := f.Symbols(); !errors.Is(err, elf.ErrNoSymbols) {
			t.Errorf("%s has a symbol table; -s strips it", name)
		}
		if _, err := f.DWARF(); err == nil {
			t.Errorf("%s has DWARF; -w strips it", name)
		}
		return
	}
	f, err := macho.Open(path)
	if err != nil {
		t.Errorf("%s is not a Mach-O binary: %v", name, err)
		return
	}
	defer f.Close()
	if f.Cpu != cpu || f.Type != macho.TypeExec {
		t.Errorf("%s is Mach-O %s %s, want an executable for %s", name, f.Type, f.Cpu, cpu)
	}
}

// checkBuildSettings checks the Go build information of a release binary
// for target (linux_amd64): the plugin's main package, no cgo, trimmed paths,
// no VCS stamp.
func checkBuildSettings(t *testing.T, path, target string) {
	t.Helper()
	name := filepath.Base(path)
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Errorf("%s: no Go build information: %v", name, err)
		return
	}
	if bi.Path != harness.PluginModule+"/cmd/"+harness.PluginCommand {
		t.Errorf("%s is %s, want the plugin's command", name, bi.Path)
	}
	goos, goarch, _ := strings.Cut(target, "_")
	want := map[string]string{"CGO_ENABLED": "0", "-trimpath": "true", "GOOS": goos, "GOARCH": goarch}
	for _, st := range bi.Settings {
		if strings.HasPrefix(st.Key, "vcs") {
			t.Errorf("%s carries %s=%s; a release build has no VCS stamp", name, st.Key, st.Value)
		}
		if v, ok := want[st.Key]; ok {
			if st.Value != v {
				t.Errorf("%s was built with %s=%s, want %s", name, st.Key, st.Value, v)
			}
			delete(want, st.Key)
		}
	}
	for k, v := range want {
		t.Errorf("%s: build setting %s missing, want %s", name, k, v)
	}
}

// readFile returns a file's content, failing the test if it cannot be read.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// sameSet reports whether a and b hold the same strings, ignoring order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
