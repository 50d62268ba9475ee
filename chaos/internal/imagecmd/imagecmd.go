// Package imagecmd is the body of the commands that build one offline
// image (natsimage, jaegerimage): what `go tool task nats:image` and the
// offline compose recipes run.
package imagecmd

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Main runs command name: it takes no arguments (else it prints a usage
// line naming tag and exits 2), calls build until it returns or the
// process gets SIGINT or SIGTERM, and prints the tag built, or the error
// and exits 1.
func Main(name, tag string, build func(context.Context) (string, error)) {
	if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "usage: %s (no arguments): builds %s unless it exists\n", name, tag)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	got, err := build(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(got)
}
