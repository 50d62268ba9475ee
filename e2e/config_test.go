//go:build e2e

package e2e

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsd-dev/wsd/service"
)

// applyConfig mirrors the WSD_ settings a scenario passes to the
// container into a service.Config, so the test derives its bounds (memory,
// reaping deadlines) from the same values wsd runs with. Keys are the
// dotted koanf keys; an unknown key or a bad value fails the test, so a
// typo cannot silently leave wsd on its defaults.
func applyConfig(t *testing.T, cfg *service.Config, kv map[string]string) {
	t.Helper()
	for key, val := range kv {
		v := reflect.ValueOf(cfg).Elem()
		for _, part := range strings.Split(key, ".") {
			v = fieldByTag(v, part)
			if !v.IsValid() {
				t.Fatalf("config key %q: unknown", key)
			}
		}
		if err := setValue(v, val); err != nil {
			t.Fatalf("config key %q = %q: %v", key, val, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("scenario configuration is invalid: %v", err)
	}
}

func fieldByTag(v reflect.Value, tag string) reflect.Value {
	if v.Kind() != reflect.Struct {
		return reflect.Value{}
	}
	for i := 0; i < v.NumField(); i++ {
		f := v.Type().Field(i)
		if f.Tag.Get("koanf") == tag {
			return v.Field(i)
		}
	}
	return reflect.Value{}
}

func setValue(v reflect.Value, s string) error {
	if v.Type() == reflect.TypeOf(time.Duration(0)) {
		d, err := time.ParseDuration(s)
		if err == nil {
			v.SetInt(int64(d))
		}
		return err
	}
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err == nil {
			v.SetInt(n)
		}
		return err
	case reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err == nil {
			v.SetFloat(f)
		}
		return err
	case reflect.String:
		v.SetString(s)
		return nil
	case reflect.Slice:
		v.Set(reflect.ValueOf(strings.Split(s, ",")))
		return nil
	}
	return &reflect.ValueError{Method: "setValue", Kind: v.Kind()}
}
