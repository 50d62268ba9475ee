// Command jaegerimage builds the offline Jaeger image (wsd-e2e/jaeger:
// <version>) unless the Docker engine has it, and prints its tag. It is
// how `go tool task jaeger:image` and the offline compose recipe get a
// Jaeger without a registry; the e2e suite calls jaeger.Image directly.
package main

import (
	"github.com/wsd-dev/wsd/chaos/internal/imagecmd"
	"github.com/wsd-dev/wsd/chaos/jaeger"
)

func main() { imagecmd.Main("jaegerimage", jaeger.ImageTag, jaeger.Image) }
