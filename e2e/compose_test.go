//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/wsd-dev/wsd/chaos/images"
	"github.com/wsd-dev/wsd/chaos/jaeger"
	"github.com/wsd-dev/wsd/chaos/natscontainer"
)

// TestComposeFile loads docker-compose.yml with compose-go, the loader
// and schema validator of Compose v2 (CI also runs `docker-compose config
// -q` for 1.29), and checks what users rely on: the services and the demo
// profile, build targets that exist in the Dockerfile, an environment wsd
// itself accepts (it runs `wsd --print-config` with exactly that
// environment), OTLP to Jaeger, and a stop_grace_period longer than the
// drain_timeout it configures; and the cluster profile: NATS and two
// replicas of the wsd service on the bus, told apart in traces.
func TestComposeFile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := images.ModuleRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Only the compose defaults: a developer's WSD_TARGET or .env must not
	// change what is checked.
	load := func(t *testing.T, env []string, profiles ...string) *types.Project {
		t.Helper()
		opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
			cli.WithName("wsd"), cli.WithWorkingDirectory(root), cli.WithEnv(env), cli.WithProfiles(profiles))
		if err != nil {
			t.Fatal(err)
		}
		p, err := opts.LoadProject(ctx)
		if err != nil {
			t.Fatalf("docker-compose.yml (profiles %v): %v", profiles, err)
		}
		return p
	}
	stages := opsDockerfileStages(t, filepath.Join(root, "Dockerfile"))
	if len(stages) == 0 || stages[0] != "prebuilt" {
		t.Errorf("Dockerfile stages %v: the first must be prebuilt (the offline e2e image)", stages)
	}

	def := load(t, nil)
	if got := slices.Sorted(maps.Keys(def.Services)); !slices.Equal(got, []string{"jaeger", "wsd"}) {
		t.Errorf("default services %v, want jaeger and wsd (wschaos only with --profile demo)", got)
	}
	wsd := def.Services["wsd"]
	if wsd.Build == nil || wsd.Build.Target != "runtime" || !slices.Contains(stages, wsd.Build.Target) {
		t.Errorf("wsd build %+v: want target runtime, a Dockerfile stage (%v)", wsd.Build, stages)
	}
	env := map[string]string{}
	for k, v := range wsd.Environment {
		if v == nil {
			t.Errorf("wsd environment %s has no value", k)
			continue
		}
		env[k] = *v
	}
	if env["OTEL_EXPORTER_OTLP_ENDPOINT"] != "http://jaeger:4318" || env["OTEL_EXPORTER_OTLP_PROTOCOL"] != "http/protobuf" {
		t.Errorf("wsd OTLP settings %q %q, want http://jaeger:4318 over http/protobuf",
			env["OTEL_EXPORTER_OTLP_ENDPOINT"], env["OTEL_EXPORTER_OTLP_PROTOCOL"])
	}
	if nf := wsd.Ulimits["nofile"]; nf == nil || nf.Soft < 4096 || nf.Hard < nf.Soft {
		t.Errorf("wsd ulimits.nofile %+v, want soft >= 4096 <= hard", nf)
	}
	if wsd.HealthCheck != nil && wsd.HealthCheck.Disable {
		t.Error("wsd disables the image's HEALTHCHECK, the demo waits for it")
	}

	// wsd must accept the environment as it is, without a warning.
	out := opsPrintConfig(t, ctx, env)
	drain := opsConfigDuration(t, string(out), "drain_timeout")
	if wsd.StopGracePeriod == nil || time.Duration(*wsd.StopGracePeriod) <= drain {
		t.Errorf("wsd stop_grace_period %v, want longer than shutdown.drain_timeout %s", wsd.StopGracePeriod, drain)
	}
	// wsd's own default is loopback: compose must widen it, or neither
	// the port mapping nor wschaos reaches the admin port.
	if a := strings.Trim(opsConfigValue(t, string(out), "admin_listen"), `"'`); a != ":9090" {
		t.Errorf("compose admin_listen %q, want :9090", a)
	}
	if p := opsConfigInt(t, string(out), "pause_bytes"); p != 131072 {
		t.Errorf("compose backpressure.pause_bytes %d, want the demo's 131072 (the README table)", p)
	}

	if img := def.Services["jaeger"].Image; !strings.HasPrefix(img, "jaegertracing/jaeger:2.") {
		t.Errorf("jaeger image %q, want the official Jaeger v2 image", img)
	}
	if e := def.Services["jaeger"].Environment["JAEGER_LISTEN_HOST"]; e == nil || *e != "0.0.0.0" {
		t.Error("jaeger without JAEGER_LISTEN_HOST=0.0.0.0 listens on localhost only")
	}

	demo := load(t, nil, "demo")
	ch, ok := demo.Services["wschaos"]
	if !ok {
		t.Fatalf("--profile demo services %v, want wschaos", slices.Sorted(maps.Keys(demo.Services)))
	}
	if ch.Build == nil || !slices.Contains(stages, ch.Build.Target) {
		t.Errorf("wschaos build %+v: want a Dockerfile stage (%v)", ch.Build, stages)
	}
	wantCmd := []string{"run", "-target", "ws://wsd:8080", "-admin", "http://wsd:9090", "-scenario", "demo", "-duration", "10m"}
	if !slices.Equal(ch.Command, wantCmd) {
		t.Errorf("wschaos command %q, want %q", ch.Command, wantCmd)
	}
	if dep, ok := ch.DependsOn["wsd"]; !ok || dep.Condition != "service_healthy" {
		t.Errorf("wschaos depends_on %+v, want wsd service_healthy", ch.DependsOn)
	}
	if ch.Restart != "no" {
		t.Errorf("wschaos restart %q, want no: the demo is bounded", ch.Restart)
	}

	// The cluster profile: NATS and two replicas of the wsd service,
	// identical but for the bus, the host ports and the trace instance id.
	cl := load(t, nil, "cluster")
	for _, name := range []string{"nats", "wsd-a", "wsd-b"} {
		if _, ok := cl.Services[name]; !ok {
			t.Fatalf("--profile cluster services %v, want nats, wsd-a and wsd-b", slices.Sorted(maps.Keys(cl.Services)))
		}
		if _, ok := def.Services[name]; ok {
			t.Errorf("%s runs without --profile cluster", name)
		}
	}
	nats := cl.Services["nats"]
	if nats.Image != "nats:"+natscontainer.Version {
		t.Errorf("nats image %q, want nats:%s (the version chaos/natscontainer builds offline)", nats.Image, natscontainer.Version)
	}
	if want := []string{"--port", "4222", "--http_port", "8222"}; !slices.Equal(nats.Command, want) {
		t.Errorf("nats command %q, want %q (clients and monitoring on the official image's ports)", nats.Command, want)
	}
	hostPorts := map[string]string{}
	for _, p := range wsd.Ports {
		hostPorts[p.Published] = "wsd"
	}
	instances := map[string]bool{}
	for _, name := range []string{"wsd-a", "wsd-b"} {
		r := cl.Services[name]
		if r.Build == nil || wsd.Build == nil || r.Build.Target != wsd.Build.Target || r.Image != wsd.Image {
			t.Errorf("%s build %+v image %q, want the wsd service's (%+v, %q)", name, r.Build, r.Image, wsd.Build, wsd.Image)
		}
		renv := map[string]string{}
		for k, v := range r.Environment {
			if v != nil {
				renv[k] = *v
			}
		}
		for k, v := range env {
			if k != "OTEL_RESOURCE_ATTRIBUTES" && renv[k] != v {
				t.Errorf("%s %s=%q, want the wsd service's %q", name, k, renv[k], v)
			}
		}
		if renv["WSD_BUS__KIND"] != "nats" || renv["WSD_BUS__NATS__URL"] != "nats://nats:4222" {
			t.Errorf("%s bus %q %q, want nats at nats://nats:4222", name, renv["WSD_BUS__KIND"], renv["WSD_BUS__NATS__URL"])
		}
		instances[renv["OTEL_RESOURCE_ATTRIBUTES"]] = true
		if _, ok := r.DependsOn["nats"]; !ok {
			t.Errorf("%s depends_on %v, want nats", name, slices.Sorted(maps.Keys(r.DependsOn)))
		}
		if r.StopGracePeriod == nil || time.Duration(*r.StopGracePeriod) <= drain {
			t.Errorf("%s stop_grace_period %v, want longer than drain_timeout %s", name, r.StopGracePeriod, drain)
		}
		for _, p := range r.Ports {
			if other, dup := hostPorts[p.Published]; dup {
				t.Errorf("%s host port %s also used by %s", name, p.Published, other)
			}
			hostPorts[p.Published] = name
		}
		if out := opsPrintConfig(t, ctx, renv); opsConfigValue(t, out, "kind") != "nats" {
			t.Errorf("%s: wsd --print-config shows bus kind %q, want nats", name, opsConfigValue(t, out, "kind"))
		}
	}
	if len(instances) != 2 || instances[""] {
		t.Errorf("replica OTEL_RESOURCE_ATTRIBUTES %v: want a distinct service.instance.id each, to tell them apart in Jaeger", slices.Sorted(maps.Keys(instances)))
	}

	// The offline recipe of the README selects stages and images that
	// exist without a registry.
	off := load(t, []string{"WSD_TARGET=prebuilt", "WSCHAOS_TARGET=prebuilt-wschaos", "JAEGER_IMAGE=" + jaeger.ImageTag, "NATS_IMAGE=" + natscontainer.ImageTag}, "demo", "cluster")
	if off.Services["wsd"].Build.Target != "prebuilt" || off.Services["wschaos"].Build.Target != "prebuilt-wschaos" ||
		off.Services["jaeger"].Image != jaeger.ImageTag || !slices.Contains(stages, "prebuilt-wschaos") ||
		off.Services["nats"].Image != natscontainer.ImageTag || off.Services["wsd-a"].Build.Target != "prebuilt" {
		t.Errorf("offline variables not applied: wsd %q, wschaos %q, jaeger %q, nats %q, wsd-a %q (stages %v)",
			off.Services["wsd"].Build.Target, off.Services["wschaos"].Build.Target, off.Services["jaeger"].Image,
			off.Services["nats"].Image, off.Services["wsd-a"].Build.Target, stages)
	}
}

// opsPrintConfig runs `wsd --print-config` with exactly env and returns
// its YAML; any error or warning fails the test.
func opsPrintConfig(t *testing.T, ctx context.Context, env map[string]string) string {
	t.Helper()
	bin, err := images.GoBinary(ctx, "./cmd/wsd")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "--print-config")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("wsd --print-config with the compose environment: %v\n%s", err, stderr.String())
	}
	return string(out)
}

// opsDockerfileStages returns the stage names of a Dockerfile, in order.
func opsDockerfileStages(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && strings.EqualFold(f[0], "FROM") && strings.EqualFold(f[2], "AS") {
			out = append(out, f[3])
		}
	}
	return out
}

// opsConfigValue finds "key: value" in wsd --print-config's YAML (keys
// used here are unique across sections).
func opsConfigValue(t *testing.T, yaml, key string) string {
	t.Helper()
	for _, line := range strings.Split(yaml, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == key {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in wsd --print-config:\n%s", key, yaml)
	return ""
}

func opsConfigDuration(t *testing.T, yaml, key string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(opsConfigValue(t, yaml, key))
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return d
}

func opsConfigInt(t *testing.T, yaml, key string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(opsConfigValue(t, yaml, key), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	return n
}

// TestTaskfile runs the pinned go-task (`go tool task`, from go.mod's
// tool directive, as the README tells users) on Taskfile.yml: it parses,
// `default` lists every task the README promises, each with a
// description, and OFFLINE=1 hands compose the offline targets and the
// Jaeger image chaos/jaeger builds.
func TestTaskfile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	root, err := images.ModuleRoot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// task runs go-task and returns its standard output and both
	// streams together (it logs --dry commands to standard error). On a
	// fresh machine the first `go tool task` also prints the go
	// command's "downloading" lines, on standard error.
	task := func(args ...string) (stdout, all string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, "go", append([]string{"tool", "task"}, args...)...)
		cmd.Dir = root
		// Task colours its output when CI is set; the test reads plain text.
		cmd.Env = append(os.Environ(), "NO_COLOR=1")
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		all = out.String() + errOut.String()
		if err != nil {
			t.Fatalf("go tool task %s: %v\n%s", strings.Join(args, " "), err, all)
		}
		return out.String(), all
	}
	var list struct {
		Tasks []struct{ Name, Desc string }
	}
	if out, all := task("--list", "--json"); json.Unmarshal([]byte(out), &list) != nil {
		t.Fatalf("task --list --json: not JSON:\n%s", all)
	}
	desc := map[string]string{}
	for _, tk := range list.Tasks {
		desc[tk.Name] = tk.Desc
	}
	_, listed := task() // the default task
	for _, name := range []string{"run", "build", "test", "e2e", "bench", "up", "down", "demo", "lint", "cluster", "nats:image"} {
		if desc[name] == "" {
			t.Errorf("task %s missing or without a description (tasks %v)", name, slices.Sorted(maps.Keys(desc)))
		}
		if !strings.Contains(listed, "* "+name+":") {
			t.Errorf("`go tool task` does not list %s:\n%s", name, listed)
		}
	}

	_, offline := task("--dry", "up", "OFFLINE=1")
	for _, want := range []string{"WSD_TARGET=prebuilt ", "JAEGER_IMAGE=" + jaeger.ImageTag + " ", "go run ./chaos/jaeger/cmd/jaegerimage", "up --build --detach"} {
		if !strings.Contains(offline, want) {
			t.Errorf("go tool task --dry up OFFLINE=1 lacks %q:\n%s", want, offline)
		}
	}
	_, cluster := task("--dry", "cluster", "OFFLINE=1")
	for _, want := range []string{"NATS_IMAGE=" + natscontainer.ImageTag + " ", "go run ./chaos/natscontainer/cmd/natsimage", "--profile cluster up --build --detach nats wsd-a wsd-b jaeger"} {
		if !strings.Contains(cluster, want) {
			t.Errorf("go tool task --dry cluster OFFLINE=1 lacks %q:\n%s", want, cluster)
		}
	}
	if _, online := task("--dry", "up"); strings.Contains(online, "WSD_TARGET=") || strings.Contains(online, "jaegerimage") {
		t.Errorf("go tool task --dry up (online) uses the offline images:\n%s", online)
	}
}
