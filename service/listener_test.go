package service

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/internal/wstest"
)

// emfileChildEnv makes the test binary act as a wsd process with a tiny
// descriptor limit (see emfileChild).
const emfileChildEnv = "WSD_TEST_EMFILE_CHILD"

// TestAcceptSurvivesEMFILE runs a server in a child process whose
// descriptors are all used up, so accept fails with EMFILE. Clients must
// get an answer (the spare-descriptor 503) or a close, never a hang; the
// accept loop must not spin; once descriptors are free again, upgrades
// succeed.
func TestAcceptSurvivesEMFILE(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), emfileChildEnv+"=1")
	if testing.Verbose() {
		cmd.Env = append(cmd.Env, emfileChildEnv+"_LOG=1")
	}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	next := func(prefix string) []string {
		t.Helper()
		for lines.Scan() {
			if f := strings.Fields(lines.Text()); len(f) > 0 && f[0] == prefix {
				return f[1:]
			}
		}
		t.Fatalf("child ended before %s: %v", prefix, lines.Err())
		return nil
	}
	addrs := next("READY")
	public, admin := addrs[0], addrs[1]
	next("FULL")

	for i := range 20 {
		c, err := net.DialTimeout("tcp", public, 5*time.Second)
		if err != nil {
			continue // refused by the kernel: an answer, not a hang
		}
		_ = c.SetDeadline(time.Now().Add(15 * time.Second))
		_, _ = io.WriteString(c, upgradeRequest("/ws/echo"))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		switch {
		case err == nil && resp.StatusCode == http.StatusServiceUnavailable:
		case err != nil && (isEOF(err) || strings.Contains(err.Error(), "reset")):
		default:
			t.Fatalf("connection %d under EMFILE: response %v, error %v; want 503 or close", i, resp, err)
		}
		c.Close()
	}

	fmt.Fprintln(stdin, "release")
	next("RELEASED")
	wstest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		resp, err := http.Get("http://" + admin + "/debug/stats")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	// The guard re-reads the descriptor count within resampleEvery.
	waitUpgradeOK(t, "ws://"+public+"/ws/echo")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v", err)
	}
}

// emfileChild is the child side of TestAcceptSurvivesEMFILE.
func emfileChild() int {
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: 64, Max: 64}); err != nil {
		fmt.Fprintln(os.Stderr, "setrlimit:", err)
		return 1
	}
	// The child's log is noise unless the parent runs with -v.
	out := io.Discard
	if os.Getenv(emfileChildEnv+"_LOG") != "" {
		out = os.Stderr
	}
	srv, err := New(testConfig(), WithLogger(slog.New(slog.NewTextHandler(out, nil))))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()
	fmt.Printf("READY %s %s\n", srv.Addr(), srv.AdminAddr())

	var fillers []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break
		}
		fillers = append(fillers, f)
	}
	// The guard learns of the exhaustion as on its next housekeeping
	// tick (the count cannot be read: out of descriptors). Without it, a
	// slot that a transient user (the race runtime) frees after the fill
	// would let the first client in on the guard's older, low sample.
	srv.fd.sample()
	fmt.Printf("FULL %d\n", len(fillers))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "release" {
			for _, f := range fillers {
				f.Close()
			}
			fillers = nil
			fmt.Println("RELEASED")
		}
	}
	cancel()
	if err := <-done; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
