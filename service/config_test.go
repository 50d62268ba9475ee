package service

import (
	"strings"
	"testing"
	"time"
)

// TestConfigValidate: the defaults are valid, and each invalid setting
// is reported with its key, by Validate and by New.
func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		key    string
		mutate func(*Config)
	}{
		{"listen", func(c *Config) { c.Listen = "" }},
		{"admin_listen", func(c *Config) { c.AdminListen = "" }},
		{"limits.max_connections", func(c *Config) { c.Limits.MaxConnections = 0 }},
		{"limits.max_connections_per_ip", func(c *Config) { c.Limits.MaxConnectionsPerIP = -1 }},
		{"limits.max_handshakes", func(c *Config) { c.Limits.MaxHandshakes = 0 }},
		{"limits.upgrade_rate", func(c *Config) { c.Limits.UpgradeRate = 0 }},
		{"limits.upgrade_burst", func(c *Config) { c.Limits.UpgradeBurst = 0 }},
		{"limits.fd_headroom", func(c *Config) { c.Limits.FDHeadroom = 1 }},
		{"limits.fd_headroom", func(c *Config) { c.Limits.FDHeadroom = 0 }},
		{"limits.max_message_bytes", func(c *Config) { c.Limits.MaxMessageBytes = -5 }},
		{"limits.handshake_timeout", func(c *Config) { c.Limits.HandshakeTimeout = 0 }},
		{"limits.allowed_origins", func(c *Config) { c.Limits.AllowedOrigins = []string{"example.com"} }},
		{"limits.message_rate", func(c *Config) { c.Limits.MessageRate = -1 }},
		{"limits.message_burst", func(c *Config) { c.Limits.MessageBurst = 0 }},
		{"backpressure.warn_bytes", func(c *Config) { c.Backpressure.WarnBytes = -1 }},
		{"backpressure.resume_bytes", func(c *Config) { c.Backpressure.ResumeBytes = c.Backpressure.PauseBytes }},
		{"backpressure.max_bytes", func(c *Config) { c.Backpressure.MaxBytes = c.Backpressure.PauseBytes - 1 }},
		{"backpressure.max_paused", func(c *Config) { c.Backpressure.MaxPaused = -time.Second }},
		{"backpressure.write_timeout", func(c *Config) { c.Backpressure.WriteTimeout = 0 }},
		{"backpressure.slow_consumer", func(c *Config) { c.Backpressure.SlowConsumer = "block" }},
		{"heartbeat.ping_interval", func(c *Config) { c.Heartbeat.PingInterval = 0 }},
		{"heartbeat.pong_timeout", func(c *Config) { c.Heartbeat.PongTimeout = 0 }},
		{"shutdown.drain_timeout", func(c *Config) { c.Shutdown.DrainTimeout = 0 }},
		{"log.level", func(c *Config) { c.Log.Level = "verbose" }},
		{"log.format", func(c *Config) { c.Log.Format = "xml" }},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tt.key+": ") {
				t.Fatalf("Validate: %v, want an error naming %s", err, tt.key)
			}
			if _, err := New(c); err == nil || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("New: %v, want an error naming %s", err, tt.key)
			}
		})
	}
	// Several bad keys are all reported.
	c := DefaultConfig()
	c.Limits.MaxConnections, c.Heartbeat.PongTimeout = 0, 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "limits.max_connections") ||
		!strings.Contains(err.Error(), "heartbeat.pong_timeout") {
		t.Fatalf("Validate: %v, want both keys", err)
	}
}
