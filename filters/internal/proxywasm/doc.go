// Package proxywasm is a small binding of the Proxy-Wasm ABI v0.2.1 for standard Go
// (GOOS=wasip1 GOARCH=wasm, -buildmode=c-shared), written for this project's filters.
//
// The ABI is specified in the proxy-wasm/spec repository, abi-versions/v0.2.1/README.md.
// Names in comments (proxy_on_configure, proxy_get_buffer_bytes, ...) are the ABI's.
//
// Layout:
//
//   - types.go: the ABI's enumerations (proxy_status_t, proxy_action_t, ...) and the
//     serialization of header maps; pure Go.
//   - context.go: the Go API a filter implements (RootContext, HTTPContext) and registers
//     with SetNewRootContext from an init function.
//   - dispatch.go: the per-context state behind the callbacks; pure Go.
//   - abi_wasm.go: //go:wasmexport callbacks (proxy_on_*) and //go:wasmimport host calls
//     (proxy_*), and the Go wrappers over the host calls; built for wasip1 only.
//   - host_native.go: an in-memory host with the same wrappers, so that filters and the
//     dispatcher build and are tested natively with `go test`.
//
// Deliberately small: HTTP filters only (no TCP streams, HTTP/gRPC callouts, shared data,
// queues or metrics). The package imports neither fmt nor os nor time: importing os turns on
// the Go runtime's network poller, which calls wasi poll_oneoff, which Envoy does not
// implement (see filters/README.md).
package proxywasm
