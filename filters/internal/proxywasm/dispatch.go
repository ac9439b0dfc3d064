package proxywasm

import "strconv"

// The state behind the proxy_on_* callbacks. The host calls a module from one thread only
// (Envoy runs one VM per worker thread), so none of this needs locking.
var (
	newRootContext func(contextID uint32) RootContext
	rootContexts   map[uint32]RootContext
	httpContexts   map[uint32]HTTPContext
)

func resetContexts() {
	rootContexts = map[uint32]RootContext{}
	httpContexts = map[uint32]HTTPContext{}
}

// onContextCreate is proxy_on_context_create: parentID 0 means a new root context.
func onContextCreate(contextID, parentID uint32) {
	if parentID == 0 {
		if newRootContext == nil {
			LogCritical("proxywasm: no root context registered (SetNewRootContext was not called)")
			return
		}
		rootContexts[contextID] = newRootContext(contextID)
		return
	}
	root, ok := rootContexts[parentID]
	if !ok {
		LogError("proxywasm: stream context " + itoa(contextID) + " has unknown root " + itoa(parentID))
		return
	}
	if hc := root.NewHTTPContext(contextID); hc != nil {
		httpContexts[contextID] = hc
	}
}

// onConfigure is proxy_on_configure: read PLUGIN_CONFIGURATION and hand it to the root.
func onConfigure(rootID uint32, configSize int) bool {
	root, ok := rootContexts[rootID]
	if !ok {
		LogCritical("proxywasm: proxy_on_configure for unknown root context " + itoa(rootID))
		return false
	}
	var config []byte
	if configSize > 0 {
		var err error
		config, err = getBuffer(bufferPluginConfiguration, configSize)
		if err != nil {
			LogCritical("proxywasm: reading the plugin configuration: " + err.Error())
			return false
		}
	}
	return root.OnPluginStart(config)
}

func onRequestHeaders(contextID uint32, numHeaders int, endOfStream bool) Action {
	if hc, ok := httpContexts[contextID]; ok {
		return hc.OnRequestHeaders(numHeaders, endOfStream)
	}
	return ActionContinue
}

func onResponseHeaders(contextID uint32, numHeaders int, endOfStream bool) Action {
	if hc, ok := httpContexts[contextID]; ok {
		return hc.OnResponseHeaders(numHeaders, endOfStream)
	}
	return ActionContinue
}

func onTick(rootID uint32) {
	if root, ok := rootContexts[rootID]; ok {
		root.OnTick()
	}
}

// onDelete is proxy_on_delete: the host forgets the context, and so do we.
func onDelete(contextID uint32) {
	if hc, ok := httpContexts[contextID]; ok {
		delete(httpContexts, contextID)
		hc.OnStreamDone()
		return
	}
	delete(rootContexts, contextID)
}

// guard, deferred by every callback that runs plugin code, logs a panic as one CRITICAL line
// ("proxywasm: panic in proxy_on_request_headers: <value>") and panics again: the VM still
// fails as the plugin meant, but the cause is one greppable line instead of the Go runtime's
// traceback, which Envoy logs one fd_write fragment per line.
func guard(callback string) {
	if r := recover(); r != nil {
		LogCritical(PanicLogPrefix + callback + ": " + panicText(r))
		panic(r)
	}
}

// PanicLogPrefix starts the log line guard writes for a panicking callback.
const PanicLogPrefix = "proxywasm: panic in "

func panicText(r any) string {
	switch v := r.(type) {
	case string:
		return v
	case error:
		return v.Error()
	case interface{ String() string }:
		return v.String()
	}
	return "(a panic value that is neither a string nor an error)"
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// LogTrace logs msg at TRACE level (proxy_log).
func LogTrace(msg string) { hostLog(LogLevelTrace, msg) }

// LogDebug logs msg at DEBUG level (proxy_log).
func LogDebug(msg string) { hostLog(LogLevelDebug, msg) }

// LogInfo logs msg at INFO level (proxy_log).
func LogInfo(msg string) { hostLog(LogLevelInfo, msg) }

// LogWarn logs msg at WARN level (proxy_log).
func LogWarn(msg string) { hostLog(LogLevelWarn, msg) }

// LogError logs msg at ERROR level (proxy_log).
func LogError(msg string) { hostLog(LogLevelError, msg) }

// LogCritical logs msg at CRITICAL level (proxy_log).
func LogCritical(msg string) { hostLog(LogLevelCritical, msg) }
