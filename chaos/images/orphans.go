package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"github.com/moby/moby/client"
)

// Labels put on every container and network the suite creates, so that
// RemoveOrphans can find what a crashed run left behind.
const (
	LabelPID  = "org.wsd.e2e.pid"
	LabelHost = "org.wsd.e2e.host"
)

// SessionLabels returns the labels for resources owned by this process.
func SessionLabels() map[string]string {
	host, _ := os.Hostname()
	return map[string]string{LabelPID: strconv.Itoa(os.Getpid()), LabelHost: host}
}

// RemoveOrphans removes the containers and networks labelled by a test
// process of this host that no longer runs. With Ryuk off, a process that
// dies without running its cleanups (a panic in a goroutine, SIGKILL)
// leaves its containers running; this is the sweep Ryuk would have done.
// Resources of live processes, and of other hosts sharing the engine, are
// left alone. It returns how many it removed.
func RemoveOrphans(ctx context.Context) (int, error) {
	cli, err := client.New(client.FromEnv)
	if err != nil {
		return 0, fmt.Errorf("images: docker client: %w", err)
	}
	defer cli.Close()
	host, _ := os.Hostname()
	orphan := func(labels map[string]string) bool {
		pid, err := strconv.Atoi(labels[LabelPID])
		if err != nil || labels[LabelHost] != host || pid == os.Getpid() {
			return false
		}
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	removed := 0
	var errs []error
	cs, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: client.Filters{}.Add("label", LabelPID)})
	if err != nil {
		return 0, fmt.Errorf("images: list containers: %w", err)
	}
	for _, c := range cs.Items {
		if !orphan(c.Labels) {
			continue
		}
		if _, err := cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true}); err != nil {
			errs = append(errs, fmt.Errorf("remove container %s: %w", c.ID[:12], err))
			continue
		}
		removed++
	}
	ns, err := cli.NetworkList(ctx, client.NetworkListOptions{Filters: client.Filters{}.Add("label", LabelPID)})
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("images: list networks: %w", err))...)
	}
	for _, n := range ns.Items {
		if !orphan(n.Labels) {
			continue
		}
		if _, err := cli.NetworkRemove(ctx, n.ID, client.NetworkRemoveOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("remove network %s: %w", n.Name, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
