package main

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// runWsd runs the command in-process and returns its exit code and output.
func runWsd(t *testing.T, args, environ []string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, environ, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// runWsdBounded is runWsd for configurations wsd must refuse: should
// wsd start serving instead, the test fails within 10 s naming the
// broken invariant (not at the package timeout), and wsd is stopped with
// the SIGTERM its signal handler catches. Listeners go to loopback
// ephemeral ports so that a wrongly started wsd cannot collide.
func runWsdBounded(t *testing.T, args, environ []string) (int, string, string) {
	t.Helper()
	args = append(args[:len(args):len(args)], "--listen=127.0.0.1:0", "--admin_listen=127.0.0.1:0")
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() { done <- run(args, environ, &stdout, &stderr) }()
	select {
	case code := <-done:
		return code, stdout.String(), stderr.String()
	case <-time.After(10 * time.Second):
		t.Errorf("invalid configuration %v %v: wsd still running after 10 s, want exit 2 before listening", args, environ)
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		<-done
		return 0, stdout.String(), stderr.String()
	}
}

// effective returns the configuration wsd would run with, as printed by
// --print-config, keyed by dotted path.
func effective(t *testing.T, args, environ []string) map[string]string {
	t.Helper()
	code, out, errOut := runWsd(t, append(args, "--print-config"), environ)
	if code != 0 {
		t.Fatalf("--print-config exited %d: %s", code, errOut)
	}
	var tree map[string]any
	if err := yaml.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("--print-config is not YAML: %v\n%s", err, out)
	}
	flat := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if m, ok := v.(map[string]any); ok {
			for k, sub := range m {
				walk(strings.TrimPrefix(prefix+"."+k, "."), sub)
			}
			return
		}
		flat[prefix] = fmt.Sprint(v)
	}
	walk("", tree)
	return flat
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wsd.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestConfigLayers: each layer overrides the one before it — defaults,
// then the YAML file, then WSD_ environment variables, then flags.
func TestConfigLayers(t *testing.T) {
	file := writeFile(t, "listen: \":7000\"\nbackpressure:\n  pause_bytes: 2000000\n  resume_bytes: 1000\n  slow_consumer: drop\nheartbeat:\n  ping_interval: 7s\n")
	tests := []struct {
		name    string
		args    []string
		environ []string
		want    map[string]string
	}{
		{"defaults", nil, nil, map[string]string{
			"listen": ":8080", "admin_listen": "127.0.0.1:9090", "admin.pprof": "false", "admin.max_connections": "64",
			"admin.max_profile_duration": "30s", "backpressure.pause_bytes": "1048576",
			"backpressure.resume_bytes": "524288", "heartbeat.ping_interval": "25s", "backpressure.slow_consumer": "close",
			"limits.max_connections": "10000", "shutdown.drain_timeout": "10s",
		}},
		{"file over defaults", []string{"--config", file}, nil, map[string]string{
			"listen": ":7000", "backpressure.pause_bytes": "2000000", "backpressure.resume_bytes": "1000",
			"heartbeat.ping_interval": "7s", "backpressure.slow_consumer": "drop", "admin_listen": "127.0.0.1:9090",
		}},
		{"env over file", []string{"--config", file}, []string{"WSD_BACKPRESSURE__PAUSE_BYTES=3000000", "WSD_HEARTBEAT__PING_INTERVAL=9s", "UNRELATED=1"},
			map[string]string{"listen": ":7000", "backpressure.pause_bytes": "3000000", "heartbeat.ping_interval": "9s"}},
		{"flags over env", []string{"--config=" + file, "--backpressure.pause_bytes=4000000", "--listen=:7100"},
			[]string{"WSD_BACKPRESSURE__PAUSE_BYTES=3000000", "WSD_LISTEN=:7200"},
			map[string]string{"listen": ":7100", "backpressure.pause_bytes": "4000000", "heartbeat.ping_interval": "7s"}},
		{"admin from env", nil, []string{"WSD_ADMIN_LISTEN=:9090", "WSD_ADMIN__PPROF=true", "WSD_ADMIN__MAX_CONNECTIONS=8"},
			map[string]string{"admin_listen": ":9090", "admin.pprof": "true", "admin.max_connections": "8"}},
		{"list from env", nil, []string{"WSD_LIMITS__ALLOWED_ORIGINS=https://a.example, https://b.example"},
			map[string]string{"limits.allowed_origins": "[https://a.example https://b.example]"}},
		{"bus defaults", nil, nil, map[string]string{
			"bus.kind": "local", "bus.nats.url": "nats://127.0.0.1:4222", "bus.nats.subject_prefix": "wsd",
			"bus.nats.reconnect_buffer_bytes": "0", "bus.nats.publish_queue": "8192", "bus.nats.pending_messages": "65536",
			"bus.nats.pending_bytes": "67108864", "bus.nats.reconnect_wait": "250ms", "bus.nats.reconnect_wait_max": "10s",
			"bus.nats.token": "", "bus.nats.credentials_file": "", "bus.nats.tls_ca_file": "",
		}},
		{"bus from env", nil, []string{"WSD_BUS__KIND=nats", "WSD_BUS__NATS__URL=nats://n1:4222,nats://n2:4222",
			"WSD_BUS__NATS__SUBJECT_PREFIX=prod.eu", "WSD_BUS__NATS__RECONNECT_WAIT=1s", "WSD_BUS__NATS__PENDING_MESSAGES=10"},
			map[string]string{"bus.kind": "nats", "bus.nats.url": "nats://n1:4222,nats://n2:4222",
				"bus.nats.subject_prefix": "prod.eu", "bus.nats.reconnect_wait": "1s", "bus.nats.pending_messages": "10"}},
		{"auth defaults", nil, nil, map[string]string{
			"auth.mode": "none", "auth.jwt.hmac_secret": "", "auth.jwt.hmac_secret_file": "", "auth.jwt.jwks_url": "",
			"auth.jwt.issuer": "", "auth.jwt.audience": "", "auth.jwt.leeway": "5s",
			"limits.max_connections_per_user": "0", "telemetry.record_user_id": "false",
		}},
		{"auth from env, file and flags", []string{"--config", writeFile(t, "auth:\n  jwt:\n    issuer: https://idp.example\n    leeway: 2s\n"),
			"--auth.jwt.audience=wsd", "--limits.max_connections_per_user=3", "--telemetry.record_user_id=true"},
			[]string{"WSD_AUTH__MODE=jwt", "WSD_AUTH__JWT__HMAC_SECRET=0123456789abcdef0123456789abcdef"},
			map[string]string{"auth.mode": "jwt", "auth.jwt.hmac_secret": "0123456789abcdef0123456789abcdef",
				"auth.jwt.issuer": "https://idp.example", "auth.jwt.leeway": "2s", "auth.jwt.audience": "wsd",
				"limits.max_connections_per_user": "3", "telemetry.record_user_id": "true"}},
		{"bus from file and flags", []string{"--config", writeFile(t, "bus:\n  kind: nats\n  nats:\n    url: tls://n1:4222\n    tls_ca_file: /ca.pem\n"), "--bus.nats.subject_prefix=x"}, nil,
			map[string]string{"bus.kind": "nats", "bus.nats.url": "tls://n1:4222", "bus.nats.tls_ca_file": "/ca.pem", "bus.nats.subject_prefix": "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := effective(t, tt.args, tt.environ)
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

// TestConfigInvalid: every invalid configuration exits non-zero before
// listening, with a message naming the offending key.
func TestConfigInvalid(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		environ []string
		file    string
		wantKey string
	}{
		{"resume not below pause", []string{"--backpressure.resume_bytes=2097152"}, nil, "", "backpressure.resume_bytes"},
		{"unknown slow-consumer policy", nil, []string{"WSD_BACKPRESSURE__SLOW_CONSUMER=ignore"}, "", "backpressure.slow_consumer"},
		{"negative size", []string{"--limits.max_message_bytes=-1"}, nil, "", "limits.max_message_bytes"},
		{"negative max_bytes in file", nil, nil, "backpressure:\n  max_bytes: -5\n", "backpressure.max_bytes"},
		{"unparsable duration flag", []string{"--heartbeat.ping_interval=soon"}, nil, "", "heartbeat.ping_interval"},
		{"unparsable duration env", nil, []string{"WSD_HEARTBEAT__PONG_TIMEOUT=10 parsecs"}, "", "pong_timeout"},
		{"unparsable duration file", nil, nil, "shutdown:\n  drain_timeout: forever\n", "drain_timeout"},
		{"unknown key in file", nil, nil, "backpressure:\n  pause_byte: 10\n", "backpressure.pause_byte"},
		{"unknown section in file", nil, nil, "limitz:\n  max_connections: 1\n", "limitz"},
		{"bad headroom", []string{"--limits.fd_headroom=1.5"}, nil, "", "limits.fd_headroom"},
		{"bad origin", []string{"--limits.allowed_origins=not a url"}, nil, "", "limits.allowed_origins"},
		{"zero admin connections", []string{"--admin.max_connections=0"}, nil, "", "admin.max_connections"},
		{"bad log format", []string{"--log.format=xml"}, nil, "", "log.format"},
		{"unknown flag", []string{"--backpressure.nope=1"}, nil, "", "backpressure.nope"},
		{"missing file", []string{"--config=/nonexistent/wsd.yaml"}, nil, "", "/nonexistent/wsd.yaml"},
		{"positional argument", []string{"serve"}, nil, "", `"serve"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.args
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, tt.file))
			}
			code, out, errOut := runWsdBounded(t, args, tt.environ)
			if code == 0 {
				t.Fatalf("exit 0, want non-zero; stdout:\n%s", out)
			}
			if !strings.Contains(errOut, tt.wantKey) {
				t.Fatalf("stderr does not name %q:\n%s", tt.wantKey, errOut)
			}
		})
	}
}

// TestConfigBusInvalid: a bad bus.* value exits 2 before listening,
// naming its key.
func TestConfigBusInvalid(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		environ []string
		wantKey string
	}{
		{"unknown kind", nil, []string{"WSD_BUS__KIND=redis"}, "bus.kind"},
		{"unknown kind flag", []string{"--bus.kind=NATS"}, nil, "bus.kind"},
		{"unparsable url", nil, []string{"WSD_BUS__NATS__URL=nats://[::1"}, "bus.nats.url"},
		{"url without scheme", []string{"--bus.kind=nats", "--bus.nats.url=127.0.0.1:4222"}, nil, "bus.nats.url"},
		{"bad url in list", nil, []string{"WSD_BUS__NATS__URL=nats://a:4222,http://b"}, "bus.nats.url"},
		{"bad port", nil, []string{"WSD_BUS__NATS__URL=nats://a:port"}, "bus.nats.url"},
		{"empty url", []string{"--bus.nats.url="}, nil, "bus.nats.url"},
		{"wildcard prefix", []string{"--bus.nats.subject_prefix=wsd.*"}, nil, "bus.nats.subject_prefix"},
		{"empty prefix token", []string{"--bus.nats.subject_prefix=wsd..x"}, nil, "bus.nats.subject_prefix"},
		{"token and creds", []string{"--bus.nats.token=s3cret", "--bus.nats.credentials_file=/a.creds"}, nil, "bus.nats.token"},
		{"cert without key", []string{"--bus.nats.tls_cert_file=/c.pem"}, nil, "bus.nats.tls_cert_file"},
		{"zero queue", []string{"--bus.nats.publish_queue=0"}, nil, "bus.nats.publish_queue"},
		{"negative reconnect buffer", []string{"--bus.nats.reconnect_buffer_bytes=-1"}, nil, "bus.nats.reconnect_buffer_bytes"},
		{"max wait below wait", []string{"--bus.nats.reconnect_wait=20s"}, nil, "bus.nats.reconnect_wait_max"},
		{"zero pending", nil, []string{"WSD_BUS__NATS__PENDING_BYTES=0"}, "bus.nats.pending_bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runWsd(t, tt.args, tt.environ)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			if !strings.Contains(errOut, tt.wantKey+":") {
				t.Fatalf("stderr does not name %q:\n%s", tt.wantKey, errOut)
			}
		})
	}
}

// TestConfigAuthInvalid: with auth.mode jwt, zero or two key sources
// (or an unreadable secret file) exit 2 before listening, naming the key.
func TestConfigAuthInvalid(t *testing.T) {
	secret := "WSD_AUTH__JWT__HMAC_SECRET=0123456789abcdef0123456789abcdef"
	tests := []struct {
		name    string
		args    []string
		environ []string
		wantKey string
	}{
		{"unknown mode", []string{"--auth.mode=basic"}, nil, "auth.mode"},
		{"jwt without key", []string{"--auth.mode=jwt"}, nil, "auth.jwt.hmac_secret"},
		{"secret and jwks", []string{"--auth.mode=jwt", "--auth.jwt.jwks_url=https://idp.example/jwks"}, []string{secret}, "auth.jwt.jwks_url"},
		{"secret and file", []string{"--auth.mode=jwt", "--auth.jwt.hmac_secret_file=/s"}, []string{secret}, "auth.jwt.hmac_secret_file"},
		{"short secret", nil, []string{"WSD_AUTH__MODE=jwt", "WSD_AUTH__JWT__HMAC_SECRET=short"}, "auth.jwt.hmac_secret"},
		{"missing secret file", []string{"--auth.mode=jwt", "--auth.jwt.hmac_secret_file=/nonexistent/secret"}, nil, "auth.jwt.hmac_secret_file"},
		{"negative leeway", []string{"--auth.jwt.leeway=-1s"}, nil, "auth.jwt.leeway"},
		{"negative per-user cap", []string{"--limits.max_connections_per_user=-1"}, nil, "limits.max_connections_per_user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runWsd(t, append(tt.args, "--listen=127.0.0.1:0", "--admin_listen=127.0.0.1:0"), tt.environ)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stdout:\n%s\nstderr:\n%s", code, out, errOut)
			}
			if !strings.Contains(errOut, tt.wantKey+":") {
				t.Fatalf("stderr does not name %q:\n%s", tt.wantKey, errOut)
			}
			if strings.Contains(errOut, "0123456789abcdef0123456789abcdef") {
				t.Fatalf("stderr shows the secret:\n%s", errOut)
			}
		})
	}
}

// TestConfigUnknownEnvIgnoredLoudly: a WSD_ variable that names no key
// is reported on stderr rather than silently ignored.
func TestConfigUnknownEnvIgnoredLoudly(t *testing.T) {
	code, _, errOut := runWsd(t, []string{"--print-config"}, []string{"WSD_BACKPRESURE__PAUSE_BYTES=1"})
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "WSD_BACKPRESURE__PAUSE_BYTES") {
		t.Fatalf("unknown variable not reported: %q", errOut)
	}
}

// TestHelpListsEveryKey: --help shows every configuration key with its
// default, and each key has a description.
func TestHelpListsEveryKey(t *testing.T) {
	code, out, errOut := runWsd(t, []string{"--help"}, nil)
	if code != 0 {
		t.Fatalf("--help exited %d: %s", code, errOut)
	}
	keys := effective(t, nil, nil)
	if len(keys) < 25 {
		t.Fatalf("only %d keys in --print-config", len(keys))
	}
	for key := range keys {
		// pflag prints booleans as --key[=true|false].
		if !strings.Contains(out, "--"+key+" ") && !strings.Contains(out, "--"+key+"[=") {
			t.Errorf("--help does not list --%s", key)
		}
		if keyHelp[key] == "" {
			t.Errorf("key %s has no help text", key)
		}
	}
	for _, def := range []string{`(default ":8080")`, "(default 1048576)", "(default 25s)", `(default "close")`} {
		if !strings.Contains(out, def) {
			t.Errorf("--help lacks %s", def)
		}
	}
}

// TestHealthcheck: the subcommand used by the image's HEALTHCHECK exits 0
// on 200 and non-zero otherwise.
func TestHealthcheck(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	status := http.StatusOK
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	url := "http://" + ln.Addr().String() + "/healthz"

	if code, _, errOut := runWsd(t, []string{"healthcheck", "--url", url}, nil); code != 0 {
		t.Fatalf("healthy: exit %d: %s", code, errOut)
	}
	status = http.StatusServiceUnavailable
	if code, _, errOut := runWsd(t, []string{"healthcheck", "--url=" + url}, nil); code == 0 || !strings.Contains(errOut, "503") {
		t.Fatalf("unhealthy: exit %d, stderr %q", code, errOut)
	}
	if code, _, _ := runWsd(t, []string{"healthcheck", "--url", "http://127.0.0.1:1/healthz"}, nil); code == 0 {
		t.Fatal("unreachable: exit 0")
	}
	if code, _, _ := runWsd(t, []string{"healthcheck", "--bogus"}, nil); code != 2 {
		t.Fatalf("bad argument: exit %d, want 2", code)
	}
}
