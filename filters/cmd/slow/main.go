// Command slow is a deliberately faulty proxy-wasm filter: it holds every request
// {"delay_ms": D} milliseconds before letting it go upstream. The request is paused from
// proxy_on_request_headers and resumed from the root context's timer (proxy_on_tick), so the
// VM never busy-waits. It sets x-filter-version on responses.
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
	config faults.SlowConfig
	held   faults.DelayQueue
}

func (r *root) OnPluginStart(data []byte) bool {
	c, err := faults.ParseSlow(data)
	if err != nil {
		proxywasm.LogError("slow: rejecting the plugin configuration: " + err.Error())
		return false
	}
	r.config = c
	if c.DelayMillis > 0 {
		if err := proxywasm.SetTickPeriodMilliseconds(c.TickMillis()); err != nil {
			proxywasm.LogError("slow: " + err.Error())
			return false
		}
	}
	proxywasm.LogInfo("slow: started, version " + c.Version + ", delaying requests by " +
		strconv.FormatUint(uint64(c.DelayMillis), 10) + " ms")
	return true
}

func (r *root) OnTick() {
	now, err := proxywasm.CurrentTimeNanoseconds()
	if err != nil {
		proxywasm.LogError("slow: " + err.Error())
		return
	}
	for _, id := range r.held.PopDue(now) {
		if err := proxywasm.ResumeHTTPRequest(id); err != nil {
			proxywasm.LogWarn("slow: resuming stream " + strconv.FormatUint(uint64(id), 10) + ": " + err.Error())
		}
	}
}

func (r *root) NewHTTPContext(id uint32) proxywasm.HTTPContext { return &stream{root: r, id: id} }

type stream struct {
	proxywasm.DefaultHTTPContext
	root *root
	id   uint32
}

func (s *stream) OnRequestHeaders(int, bool) proxywasm.Action {
	if s.root.config.DelayMillis == 0 {
		return proxywasm.ActionContinue
	}
	now, err := proxywasm.CurrentTimeNanoseconds()
	if err != nil {
		proxywasm.LogError("slow: " + err.Error())
		return proxywasm.ActionContinue
	}
	s.root.held.Add(s.id, now+uint64(s.root.config.DelayMillis)*1_000_000)
	return proxywasm.ActionPause
}

func (s *stream) OnResponseHeaders(int, bool) proxywasm.Action {
	if err := proxywasm.ReplaceHTTPResponseHeader(pluginconfig.VersionHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("slow: " + err.Error())
	}
	if err := proxywasm.AddHTTPResponseHeader(pluginconfig.ChainHeader, s.root.config.Version); err != nil {
		proxywasm.LogError("slow: " + err.Error())
	}
	return proxywasm.ActionContinue
}

// OnStreamDone forgets a stream the client dropped while it was held.
func (s *stream) OnStreamDone() { s.root.held.Remove(s.id) }
