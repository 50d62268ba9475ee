// Command jaegerimage builds the offline Jaeger image (wsd-e2e/jaeger:
// <version>) unless the Docker engine has it, and prints its tag. It is
// how `go tool task jaeger:image` and the offline compose recipe get a
// Jaeger without a registry; the e2e suite calls jaeger.Image directly.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wsd-dev/wsd/chaos/jaeger"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: jaegerimage (no arguments): builds "+jaeger.ImageTag+" unless it exists")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tag, err := jaeger.Image(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(tag)
}
