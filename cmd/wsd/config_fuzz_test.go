package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzConfigLayers feeds arbitrary text to every configuration layer at
// once (a YAML file, one WSD_ variable, one flag): loading must never
// panic, and whatever it accepts must be a valid configuration, since
// wsd starts serving with it.
func FuzzConfigLayers(f *testing.F) {
	f.Add("limits:\n  max_connections: 5\n", "WSD_BACKPRESSURE__PAUSE_BYTES=2097152", "--limits.frame_timeout=3s")
	f.Add("backpressure: {resume_bytes: 9999999}\n", "WSD_LIMITS__ALLOWED_ORIGINS=http://a,https://b:1", "--log.level=debug")
	f.Add("listen: [1, 2]\n", "WSD_HEARTBEAT__PING_INTERVAL=-1s", "--limits.max_partial_bytes=1")
	f.Add("\x00: \x00\n", "WSD_=", "--=")
	f.Fuzz(func(t *testing.T, yamlText, envVar, flag string) {
		path := filepath.Join(t.TempDir(), "wsd.yaml")
		if err := os.WriteFile(path, []byte(yamlText), 0o600); err != nil {
			t.Fatal(err)
		}
		args := []string{"--config=" + path}
		if strings.HasPrefix(flag, "--") {
			args = append(args, flag)
		}
		cfg, act, _, err := loadConfig(args, []string{envVar}, io.Discard)
		if err != nil || act != actionServe {
			return
		}
		if verr := cfg.Validate(); verr != nil {
			t.Fatalf("loadConfig accepted an invalid configuration: %v", verr)
		}
	})
}
