// Command wschaos runs a chaos scenario against any wsd.
//
//	wschaos run -target ws://HOST:8080 -admin http://HOST:9090 -scenario NAME -duration D
//
// NAME is slow-consumers, flooder, half-open, churn, abuse or demo (a mix
// of normal echo and topic clients, slow subscribers, silent peers and
// abusive clients). Rounds repeat until -duration elapses, one summary
// line each; SIGINT or SIGTERM stops at once. The exit code is 0 when
// the run ends, 2 for bad arguments, 1 when the target is unreachable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wsd-dev/wsd/chaos"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks an argument error (exit code 2).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "run" {
		fmt.Fprintf(stderr, "usage: wschaos run -target ws://HOST:8080 -admin http://HOST:9090 -scenario NAME -duration D\nscenarios: %s\n", strings.Join(chaos.Scenarios, ", "))
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return 0
		}
		return 2
	}
	cfg, err := parse(args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "wschaos: %v\n", err)
		return 2
	}
	cfg.Out = stdout
	defer cfg.Target.Admin.Close()
	fmt.Fprintf(stdout, "wschaos: scenario %s against %s (admin %s) for %s\n", cfg.Scenario, cfg.Target.WS, cfg.Target.Admin.URL(), cfg.Duration)
	if err := chaos.Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "wschaos: %v\n", err)
		return 1
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stdout, "wschaos: interrupted")
	} else {
		fmt.Fprintln(stdout, "wschaos: done")
	}
	return 0
}

func parse(args []string, stderr io.Writer) (chaos.RunConfig, error) {
	fs := flag.NewFlagSet("wschaos run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	target := fs.String("target", "ws://127.0.0.1:8080", "wsd public URL (ws://host:port)")
	admin := fs.String("admin", "http://127.0.0.1:9090", "wsd admin URL (http://host:port)")
	scenario := fs.String("scenario", "demo", "scenario: "+strings.Join(chaos.Scenarios, ", "))
	duration := fs.Duration("duration", time.Minute, "run rounds until this elapses")
	round := fs.Duration("round-timeout", 60*time.Second, "upper bound of one round")
	maxMsg := fs.Int("max-message-bytes", 64<<10, "the server's limits.max_message_bytes (abuse cases)")
	handshake := fs.Duration("handshake-timeout", 5*time.Second, "the server's limits.handshake_timeout (slowloris cases)")
	if err := fs.Parse(args); err != nil {
		return chaos.RunConfig{}, err
	}
	switch {
	case fs.NArg() > 0:
		return chaos.RunConfig{}, fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	case !chaos.ValidScenario(*scenario):
		return chaos.RunConfig{}, fmt.Errorf("%w: unknown scenario %q (want one of %s)", errUsage, *scenario, strings.Join(chaos.Scenarios, ", "))
	case *duration <= 0:
		return chaos.RunConfig{}, fmt.Errorf("%w: -duration must be > 0, got %s", errUsage, *duration)
	case *round <= 0:
		return chaos.RunConfig{}, fmt.Errorf("%w: -round-timeout must be > 0, got %s", errUsage, *round)
	case !strings.HasPrefix(*target, "ws://"):
		return chaos.RunConfig{}, fmt.Errorf("%w: -target %q must be ws://host:port", errUsage, *target)
	case !strings.HasPrefix(*admin, "http://"):
		return chaos.RunConfig{}, fmt.Errorf("%w: -admin %q must be http://host:port", errUsage, *admin)
	case *maxMsg <= 0:
		return chaos.RunConfig{}, fmt.Errorf("%w: -max-message-bytes must be > 0", errUsage)
	}
	return chaos.RunConfig{
		Target:   chaos.Target{WS: *target, Admin: chaos.NewAdmin(*admin)},
		Scenario: *scenario, Duration: *duration, RoundTimeout: *round,
		MaxMessageBytes: *maxMsg, HandshakeTimeout: *handshake,
	}, nil
}
