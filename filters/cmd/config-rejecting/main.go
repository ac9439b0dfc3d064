// Command config-rejecting is a deliberately faulty proxy-wasm filter: it rejects every plugin
// configuration at plugin start (proxy_on_configure returns false), so Envoy refuses to use it.
package main

import (
	"strconv"

	"filterrelease.dev/filters/internal/proxywasm"
)

// RejectMessage is the log line the filter writes (at ERROR) before it rejects.
const RejectMessage = "config-rejecting: rejecting the plugin configuration on purpose"

func main() {}

func init() {
	proxywasm.SetNewRootContext(func(uint32) proxywasm.RootContext { return &root{} })
}

type root struct{ proxywasm.DefaultRootContext }

func (r *root) OnPluginStart(data []byte) bool {
	proxywasm.LogError(RejectMessage + " (" + strconv.Itoa(len(data)) + " bytes)")
	return false
}
