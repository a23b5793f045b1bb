package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a child process (vault server or agent) whose output goes to a
// log file. It runs in its own process group so that stopping it also stops
// the plugin processes it started.
type process struct {
	name    string
	bin     string
	args    []string
	dir     string // working directory; the test's if empty
	env     []string
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

// start launches the process, appending its output to logPath.
func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running", p.name)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "==== e2e: starting %s at %s\n", p.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Dir = p.dir
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL, // never outlive the test binary
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// running reports whether the process has been started and not yet exited.
func (p *process) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// exited is closed when the current process exits (nil if not started).
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// take forgets the current process and returns it (cmd nil if none runs), so
// that exactly one caller ends it.
func (p *process) take() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	return cmd, done
}

// stop sends SIGTERM, waits up to grace for a clean exit, then kills the
// whole process group. It is a no-op if the process is not running.
func (p *process) stop(grace time.Duration) error {
	cmd, done := p.take()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case <-done:
	case <-time.After(grace):
		err = fmt.Errorf("%s did not stop within %s after SIGTERM; killed", p.name, grace)
		_ = killGroup(cmd)
		<-done
	}
	// Anything left in the group (a plugin the server failed to stop) goes too.
	return errors.Join(err, killGroup(cmd))
}

// kill sends SIGKILL to the whole process group at once, the server and its
// plugins together as in a crash, and waits until the process has exited. It
// is a no-op if the process is not running.
func (p *process) kill() error {
	cmd, done := p.take()
	if cmd == nil {
		return nil
	}
	err := killGroup(cmd)
	<-done
	return err
}

// killGroup sends SIGKILL to the process group of cmd; a group that is already
// gone is no error.
func killGroup(cmd *exec.Cmd) error {
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// childEnv is the environment for Vault processes: the test's environment
// without any VAULT_* variable, plus extra, with HOME set to home so that no
// token helper file of the user is read or written.
func childEnv(home string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "VAULT_") || strings.HasPrefix(kv, "HOME=") {
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, "HOME="+home), extra...)
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{}
)

// Ports are picked at random in [minPort, maxPort), below the kernel's
// ephemeral range (32768-60999 by default), never in it: a port found free there
// can be taken, before Vault binds it, by any listener on port 0 or by the
// local end of any outgoing connection on the machine. Linux gives bind(0) odd
// ports and connect() even ones, so the cluster port of a dev server (API port
// + 1) was exactly where the test's own HTTP clients and Raft connections draw
// their local ports. scripts/dev.sh picks its ports from maxPort up, so that
// TestDevScript never races another scenario for a port.
const (
	minPort              = 10000
	maxPort              = 20000
	ephemeralRangeConfig = "/proc/sys/net/ipv4/ip_local_port_range"
)

// portRangeEnd is where picked ports end: maxPort, or the first port of the
// kernel's ephemeral range if that is lower (and leaves room).
func portRangeEnd() int {
	end := maxPort
	if b, err := os.ReadFile(ephemeralRangeConfig); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if lo, err := strconv.Atoi(f[0]); err == nil && lo > minPort+1000 {
				end = min(end, lo)
			}
		}
	}
	return end
}

// freePort returns a loopback TCP port that was free a moment ago and that
// this test binary has not handed out before.
func freePort() (int, error) { return freePorts(1) }

// freePorts returns the first of n consecutive loopback TCP ports that were
// free a moment ago and were not handed out before (vault server -dev puts
// its cluster listener on the API port + 1).
func freePorts(n int) (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	hi := portRangeEnd() - n
	for range 1000 {
		first := minPort + rand.IntN(hi-minPort)
		ok := true
		for p := first; p < first+n && ok; p++ {
			ok = !ports[p] && bindable(p)
		}
		if ok {
			for p := first; p < first+n; p++ {
				ports[p] = true
			}
			return first, nil
		}
	}
	return 0, errors.New("no free ports")
}

// bindable reports whether nothing holds 127.0.0.1:port.
func bindable(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
