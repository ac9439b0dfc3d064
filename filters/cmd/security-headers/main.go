// Command security-headers is a proxy-wasm HTTP filter: it marks requests with
// x-envoy-wasm-filter: active, and on responses removes `server` and sets
// x-content-type-options, x-frame-options, x-xss-protection and x-filter-version from its
// JSON plugin configuration (see internal/secheaders). An invalid configuration is rejected
// at plugin start.
package main

import (
	"filterrelease.dev/filters/internal/pluginconfig"
	"filterrelease.dev/filters/internal/proxywasm"
	"filterrelease.dev/filters/internal/secheaders"
)

func main() {}

func init() {
	proxywasm.SetNewRootContext(func(uint32) proxywasm.RootContext { return &root{} })
}

type root struct {
	proxywasm.DefaultRootContext
	config secheaders.Config
}

func (r *root) OnPluginStart(data []byte) bool {
	c, err := secheaders.Parse(data)
	if err != nil {
		proxywasm.LogError("security-headers: rejecting the plugin configuration: " + err.Error())
		return false
	}
	r.config = c
	proxywasm.LogInfo("security-headers: started, version " + c.Version)
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{config: &r.config} }

type stream struct {
	proxywasm.DefaultHTTPContext
	config *secheaders.Config
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	h := secheaders.ActiveHeader
	if err := proxywasm.ReplaceHTTPRequestHeader(h.Name, h.Value); err != nil {
		proxywasm.LogError("security-headers: " + err.Error())
	}
	return proxywasm.ActionContinue
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	for _, name := range secheaders.RemovedResponseHeaders {
		if err := proxywasm.RemoveHTTPResponseHeader(name); err != nil {
			proxywasm.LogError("security-headers: " + err.Error())
		}
	}
	for _, h := range s.config.ResponseHeaders() {
		if err := proxywasm.ReplaceHTTPResponseHeader(h.Name, h.Value); err != nil {
			proxywasm.LogError("security-headers: " + err.Error())
		}
	}
	if err := proxywasm.AddHTTPResponseHeader(pluginconfig.ChainHeader, s.config.Version); err != nil {
		proxywasm.LogError("security-headers: " + err.Error())
	}
	return proxywasm.ActionContinue
}
