package images

import (
	"os"
	"strings"
)

// ConfigureTestcontainers sets the testcontainers-go settings this suite
// needs on a plain local engine, unless the user set them:
//
//   - TESTCONTAINERS_RYUK_DISABLED=true: the reaper image would have to be
//     pulled from a registry; every container and network is instead
//     removed by the test that created it (testcontainers.CleanupContainer
//     and CleanupNetwork, registered before the error check).
//   - TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1: inside a container
//     (/.dockerenv) testcontainers guesses the bridge gateway as the host
//     of mapped ports; with a local engine they are on loopback.
//
// It only acts when DOCKER_HOST is unset or a unix socket (a remote
// engine's ports are not on loopback). Call it before the first
// testcontainers call: testcontainers reads its configuration once.
func ConfigureTestcontainers() {
	if h := os.Getenv("DOCKER_HOST"); h != "" && !strings.HasPrefix(h, "unix://") {
		return
	}
	setDefault("TESTCONTAINERS_RYUK_DISABLED", "true")
	setDefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
}

func setDefault(key, value string) {
	if _, ok := os.LookupEnv(key); !ok {
		_ = os.Setenv(key, value)
	}
}
