// Command local-5xx is a deliberately faulty proxy-wasm filter: every Nth request
// ({"fail_every": N, "status": 503}) is answered by the filter itself with that status
// (proxy_send_local_response) and never reaches the upstream. It sets x-filter-version on all
// responses, the local ones included.
package main

import (
	"strconv"

	"filterrelease.dev/filters/internal/faults"
	"filterrelease.dev/filters/internal/pluginconfig"
	"filterrelease.dev/filters/internal/proxywasm"
)

// Details is the response code details of the local responses (Envoy's
// %RESPONSE_CODE_DETAILS%, no spaces allowed), so that access logs tell them apart.
const Details = "local_5xx_filter"

func main() {}

func init() {
	proxywasm.SetNewRootContext(func(uint32) proxywasm.RootContext { return &root{} })
}

type root struct {
	proxywasm.DefaultRootContext
	config faults.Local5xxConfig
	every  faults.Every
}

func (r *root) OnPluginStart(data []byte) bool {
	c, err := faults.ParseLocal5xx(data)
	if err != nil {
		proxywasm.LogError("local-5xx: rejecting the plugin configuration: " + err.Error())
		return false
	}
	r.config, r.every = c, faults.Every{N: c.FailEvery}
	proxywasm.LogInfo("local-5xx: started, version " + c.Version + ", answering 1 request in " +
		strconv.FormatUint(c.FailEvery, 10) + " with " + strconv.FormatUint(uint64(c.Status), 10))
	return true
}

func (r *root) NewHTTPContext(uint32) proxywasm.HTTPContext { return &stream{root: r} }

type stream struct {
	proxywasm.DefaultHTTPContext
	root *root
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	if !s.root.every.Next() {
		return proxywasm.ActionContinue
	}
	headers := []proxywasm.Header{
		{Name: "content-type", Value: "text/plain"},
		{Name: pluginconfig.VersionHeader, Value: s.root.config.Version},
	}
	body := []byte("local-5xx: failing this request on purpose\n")
	if err := proxywasm.SendHTTPResponse(s.root.config.Status, headers, body, Details); err != nil {
		proxywasm.LogError("local-5xx: " + err.Error())
		return proxywasm.ActionContinue
	}
	return proxywasm.ActionPause
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	if err := proxywasm.ReplaceHTTPResponseHeader(pluginconfig.VersionHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("local-5xx: " + err.Error())
	}
	if err := proxywasm.AddHTTPResponseHeader(pluginconfig.ChainHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("local-5xx: " + err.Error())
	}
	return proxywasm.ActionContinue
}
