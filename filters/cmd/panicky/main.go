// Command panicky is a deliberately faulty proxy-wasm filter: it panics on every Nth request
// ({"panic_every": N}), which kills the Go runtime inside the VM, so Envoy fails the request
// and marks the VM as failed. It sets x-filter-version on the responses it lets through.
package main

import (
	"strconv"

	"filterrelease.dev/filters/internal/faults"
	"filterrelease.dev/filters/internal/pluginconfig"
	"filterrelease.dev/filters/internal/proxywasm"
)

func main() {}

func init() {
	proxywasm.SetNewRootContext(func(uint32) proxywasm.RootContext { return &root{} })
}

type root struct {
	proxywasm.DefaultRootContext
	config   faults.PanickyConfig
	every    faults.Every
	requests uint64
}

func (r *root) OnPluginStart(data []byte) bool {
	c, err := faults.ParsePanicky(data)
	if err != nil {
		proxywasm.LogError("panicky: rejecting the plugin configuration: " + err.Error())
		return false
	}
	r.config, r.every = c, faults.Every{N: c.PanicEvery}
	proxywasm.LogInfo("panicky: started, version " + c.Version + ", panicking on 1 request in " +
		strconv.FormatUint(c.PanicEvery, 10))
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{root: r} }

type stream struct {
	proxywasm.DefaultHTTPContext
	root *root
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	s.root.requests++
	if s.root.every.Next() {
		panic("panicky: deliberate panic on request " + strconv.FormatUint(s.root.requests, 10))
	}
	return proxywasm.ActionContinue
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	if err := proxywasm.ReplaceHTTPResponseHeader(pluginconfig.VersionHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("panicky: " + err.Error())
	}
	if err := proxywasm.AddHTTPResponseHeader(pluginconfig.ChainHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("panicky: " + err.Error())
	}
	return proxywasm.ActionContinue
}
