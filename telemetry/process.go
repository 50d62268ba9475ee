package telemetry

import (
	"context"
	"os"
	"syscall"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/semconv/v1.40.0/processconv"
)

// registerProcessMetrics adds the descriptor gauges: the semantic
// convention process.unix.file_descriptor.count (name, unit and
// description from semconv processconv, as an observable because the
// count is read, not tracked) and wsd.file_descriptor.limit, the
// RLIMIT_NOFILE soft limit, so that an alert can compare the two.
func registerProcessMetrics(m metric.Meter, in *instruments) error {
	var sc processconv.UnixFileDescriptorCount
	var err error
	in.fdCount, err = m.Int64ObservableUpDownCounter(sc.Name(), metric.WithUnit(sc.Unit()), metric.WithDescription(sc.Description()))
	if err != nil {
		return err
	}
	in.fdLimit, err = m.Int64ObservableUpDownCounter("wsd.file_descriptor.limit", metric.WithUnit("{file_descriptor}"),
		metric.WithDescription("Soft limit on open file descriptors (RLIMIT_NOFILE)."))
	if err != nil {
		return err
	}
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if n, ok := openDescriptors(); ok {
			o.ObserveInt64(in.fdCount, n)
		}
		var rl syscall.Rlimit
		if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil && rl.Cur <= 1<<62 {
			o.ObserveInt64(in.fdLimit, int64(rl.Cur))
		}
		return nil
	}, in.fdCount, in.fdLimit)
	if err != nil {
		return err
	}
	in.regs = append(in.regs, reg)
	return nil
}

// openDescriptors counts /proc/self/fd (Linux; elsewhere the gauge is
// absent). Hand-written rather than gopsutil: it is one directory read,
// run once per collection, never on the data path. The descriptor used
// for the read is not counted.
func openDescriptors() (int64, bool) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, false
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, false
	}
	return int64(len(names) - 1), true
}
