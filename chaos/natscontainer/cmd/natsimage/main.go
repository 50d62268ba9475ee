// Command natsimage builds the offline NATS server image (wsd-e2e/nats:
// <version>) unless the Docker engine has it, and prints its tag. It is
// how `go tool task nats:image` and the offline compose recipe get a NATS
// server without a registry; the e2e suite calls natscontainer.Image.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wsd-dev/wsd/chaos/natscontainer"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: natsimage (no arguments): builds "+natscontainer.ImageTag+" unless it exists")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tag, err := natscontainer.Image(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(tag)
}
