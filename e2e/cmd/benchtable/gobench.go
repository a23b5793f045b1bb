package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// goBench is one result line of `go test -bench`.
type goBench struct {
	name    string // without the Benchmark prefix and the -GOMAXPROCS suffix
	n       int64
	metrics []metric // in the order printed: ns/op, B/op, allocs/op, then custom ones
}

type metric struct {
	value float64
	unit  string
}

// get returns the value of the metric with unit.
func (b goBench) get(unit string) (float64, bool) {
	for _, m := range b.metrics {
		if m.unit == unit {
			return m.value, true
		}
	}
	return 0, false
}

// runGoBench runs the root package's benchmarks in dir, echoing their output
// to stderr, and returns the parsed results.
func runGoBench(ctx context.Context, dir string, extra []string) ([]goBench, error) {
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem"}, extra...)
	args = append(args, ".")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, os.Stderr)
	cmd.Stderr = os.Stderr
	fmt.Fprintf(os.Stderr, "benchtable: go %s (in %s)\n", strings.Join(args, " "), dir)
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go test -bench: %w", err)
	}
	return parseGoBench(&out)
}

// parseGoBench reads benchmark result lines ("BenchmarkX-2  N  v unit  v unit ...")
// and ignores everything else.
func parseGoBench(r io.Reader) ([]goBench, error) {
	var res []goBench
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		b := goBench{name: benchName(f[0]), n: n}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
			}
			b.metrics = append(b.metrics, metric{v, f[i+1]})
		}
		res = append(res, b)
	}
	return res, sc.Err()
}

// benchName strips "Benchmark" and the "-N" GOMAXPROCS suffix.
func benchName(s string) string {
	s = strings.TrimPrefix(s, "Benchmark")
	if i := strings.LastIndexByte(s, '-'); i > 0 {
		if _, err := strconv.Atoi(s[i+1:]); err == nil {
			s = s[:i]
		}
	}
	return s
}
