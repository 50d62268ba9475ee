// Package wstest is test support shared by wsd's packages: polling for a
// condition, running a server in the background, a hand-rolled WebSocket
// client with full control over frames, a recording gws client and a
// buffer safe for concurrent writers.
//
// It depends on no wsd package, so service's own (internal) tests can
// use it without an import cycle; helpers that need a service type or
// unexported service state stay in the test files of their package.
package wstest
