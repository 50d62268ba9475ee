//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/network"

	"github.com/wsd-dev/wsd/chaos/images"
)

// TestImagesAreCachedByContentHash: a second build of the same content
// returns the same tag without building (the image's ID and creation time
// do not change), and FromBinary applies its ENV and EXPOSE options. The
// binary is copied first: the shared tree may change under a long run,
// and a changed binary must (rightly) give a new tag.
func TestImagesAreCachedByContentHash(t *testing.T) {
	requireDocker(t)
	ctx := t.Context()
	built, err := images.GoBinary(ctx, "./cmd/wschaos")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "wschaos")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cli, err := client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	opts := []images.Option{images.WithEnv("WSCHAOS_TEST", "1"), images.WithExpose("7777/tcp")}
	first, err := images.FromBinary(ctx, bin, "wschaos-test", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cli.ImageRemove(context.Background(), first, client.ImageRemoveOptions{}) })
	before, err := cli.ImageInspect(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	second, err := images.FromBinary(ctx, bin, "wschaos-test", opts...)
	if err != nil {
		t.Fatal(err)
	}
	after, err := cli.ImageInspect(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	if first != second || before.ID != after.ID || before.Created != after.Created {
		t.Errorf("rebuilt: %s %s (%s) → %s %s (%s)", first, before.ID, before.Created, second, after.ID, after.Created)
	}
	insp := after
	if !slices.Contains(insp.Config.Env, "WSCHAOS_TEST=1") {
		t.Errorf("env %v lacks WSCHAOS_TEST=1", insp.Config.Env)
	}
	if _, ok := insp.Config.ExposedPorts["7777/tcp"]; !ok {
		t.Errorf("exposed ports %v lack 7777/tcp", insp.Config.ExposedPorts)
	}
	if len(insp.Config.Entrypoint) != 1 || insp.Config.Entrypoint[0] != "/wschaos" || insp.Config.User != "65534:65534" {
		t.Errorf("entrypoint %v user %q", insp.Config.Entrypoint, insp.Config.User)
	}
	// Different content, different tag.
	other, err := images.FromBinary(ctx, bin, "wschaos-test", images.WithEnv("WSCHAOS_TEST", "2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cli.ImageRemove(context.Background(), other, client.ImageRemoveOptions{}) })
	if other == first {
		t.Errorf("different ENV, same tag %s", other)
	}
}

// TestRemoveOrphansSweepsOnlyDeadOwners: resources labelled by a process
// that has exited are removed; those of a live process are kept.
func TestRemoveOrphansSweepsOnlyDeadOwners(t *testing.T) {
	requireDocker(t)
	ctx := t.Context()
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	labels := func(pid int) map[string]string {
		l := images.SessionLabels()
		l[images.LabelPID] = strconv.Itoa(pid)
		return l
	}
	orphan, err := network.New(ctx, network.WithLabels(labels(dead.Process.Pid)))
	testcontainers.CleanupNetwork(t, orphan)
	if err != nil {
		t.Fatal(err)
	}
	alive, err := network.New(ctx, network.WithLabels(labels(os.Getppid())))
	testcontainers.CleanupNetwork(t, alive)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := images.RemoveOrphans(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := client.New(client.FromEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.NetworkInspect(ctx, orphan.ID, client.NetworkInspectOptions{}); err == nil {
		t.Error("the dead owner's network is still there")
	}
	if _, err := cli.NetworkInspect(ctx, alive.ID, client.NetworkInspectOptions{}); err != nil {
		t.Errorf("the live owner's network was removed: %v", err)
	}
}
