// Package chaos injects faults into a running wsd and checks that it
// survives them without leaking. It is shared by the e2e suite (which
// runs wsd and Toxiproxy in containers) and by the wschaos command (which
// targets any wsd URL).
//
// Fault injectors, each bounded in count and time and closed when their
// context ends:
//
//   - SlowConsumers: fast and slow topic subscribers (paced reads through
//     a small socket buffer) next to a numbered publisher.
//   - Flood: echo clients that write without reading until the server
//     pauses them, then read everything back.
//   - OpenPeers: live, silent (half-open) or idle connections.
//   - Churn: connect/echo/close cycles ending in a close handshake, an
//     RST or a bare FIN.
//   - Abuse: invalid close frames, invalid UTF-8, oversized and malformed
//     frames, malformed upgrades, forbidden Origins, slowloris requests.
//   - Storm and OpenRaw: connection storms and raw TCP connections that
//     never send a request (descriptor pressure).
//   - EchoLoad: well-behaved echo clients, to measure outcomes under a
//     network fault.
//
// Checker samples /debug/stats and memory during a scenario, then proves
// every counter returned to its baseline (Tolerance), memory stayed under
// MemoryBound, and /metrics agrees with /debug/stats (CheckMetrics).
// Result records faults, invariants and the time series for the report
// (package chaos/report). Run repeats a scenario's rounds for wschaos.
//
// The WebSocket client (Dial, Conn) is written here on purpose: see the
// comment in wsconn.go.
package chaos
