// Command natsimage builds the offline NATS server image (wsd-e2e/nats:
// <version>) unless the Docker engine has it, and prints its tag. It is
// how `go tool task nats:image` and the offline compose recipe get a NATS
// server without a registry; the e2e suite calls natscontainer.Image.
package main

import (
	"github.com/wsd-dev/wsd/chaos/internal/imagecmd"
	"github.com/wsd-dev/wsd/chaos/natscontainer"
)

func main() { imagecmd.Main("natsimage", natscontainer.ImageTag, natscontainer.Image) }
