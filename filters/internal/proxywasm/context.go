package proxywasm

// RootContext is the plugin context (the ABI's "root context"): one per plugin per VM, that is
// one per Envoy worker thread. It holds the parsed configuration and creates HTTP contexts.
type RootContext interface {
	// OnPluginStart is called from proxy_on_configure with the plugin configuration bytes
	// (PLUGIN_CONFIGURATION buffer). Returning false rejects the configuration: the host
	// then refuses to use the plugin.
	OnPluginStart(config []byte) bool
	// NewHTTPContext is called from proxy_on_context_create for each HTTP stream.
	NewHTTPContext(contextID uint32) HTTPContext
	// OnTick is called from proxy_on_tick every period set with SetTickPeriodMilliseconds.
	OnTick()
}

// HTTPContext is a per-stream context: one per HTTP request/response pair.
type HTTPContext interface {
	// OnRequestHeaders is proxy_on_request_headers. The request headers can be read and
	// changed with the *HTTPRequestHeader functions while it runs (or while the request is
	// paused from it).
	OnRequestHeaders(numHeaders int, endOfStream bool) Action
	// OnResponseHeaders is proxy_on_response_headers; likewise for the response headers.
	OnResponseHeaders(numHeaders int, endOfStream bool) Action
	// OnStreamDone is called once from proxy_on_delete, when the host drops the stream.
	OnStreamDone()
}

// DefaultRootContext can be embedded to get no-op RootContext methods.
type DefaultRootContext struct{}

// OnPluginStart accepts any configuration.
func (DefaultRootContext) OnPluginStart([]byte) bool { return true }

// NewHTTPContext returns nil: the plugin does not look at HTTP streams.
func (DefaultRootContext) NewHTTPContext(uint32) HTTPContext { return nil }

// OnTick does nothing.
func (DefaultRootContext) OnTick() {}

// DefaultHTTPContext can be embedded to get HTTPContext methods that let everything through.
type DefaultHTTPContext struct{}

// OnRequestHeaders continues.
func (DefaultHTTPContext) OnRequestHeaders(int, bool) Action { return ActionContinue }

// OnResponseHeaders continues.
func (DefaultHTTPContext) OnResponseHeaders(int, bool) Action { return ActionContinue }

// OnStreamDone does nothing.
func (DefaultHTTPContext) OnStreamDone() {}

// SetNewRootContext registers the plugin. Call it from the main package's init function: a
// c-shared wasip1 module runs package initializers from _initialize, but never main.main.
func SetNewRootContext(f func(contextID uint32) RootContext) {
	newRootContext = f
	resetContexts()
}
