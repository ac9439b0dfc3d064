//go:build !wasip1

package proxywasm

import (
	"strings"
)

// This file is an in-memory host with the same Go wrappers as abi_wasm.go, for native builds:
// `go test` and `go vet` of the filters run without a Wasm runtime. A test drives a plugin
// through a TestHost, which calls the same dispatcher the wasm exports call.

// LogEntry is one proxy_log call.
type LogEntry struct {
	Level   LogLevel
	Message string
}

// LocalResponse is one proxy_send_local_response call.
type LocalResponse struct {
	ContextID uint32
	Status    uint32
	Headers   []Header
	Body      []byte
	Details   string
}

// TestHost plays the host's part for one plugin: a root context and its HTTP streams.
type TestHost struct {
	RootID           uint32
	Logs             []LogEntry
	LocalResponses   []LocalResponse
	Resumed          []uint32 // contexts resumed with ResumeHTTPRequest, in order
	TickPeriodMillis uint32
	NowNanos         uint64 // what CurrentTimeNanoseconds returns

	pluginConfig []byte
	nextID       uint32
	current      uint32 // the stream whose callback is running
	maps         [mapResponseHeaders + 1][]Header
}

var host *TestHost

// NewTestHost makes a fresh host with a new root context for the registered plugin and runs
// proxy_on_configure with config. It returns the host and what the plugin answered.
func NewTestHost(config []byte) (*TestHost, bool) {
	resetContexts()
	host = &TestHost{RootID: 1, nextID: 2, pluginConfig: config, NowNanos: 1}
	onContextCreate(host.RootID, 0)
	return host, onConfigure(host.RootID, len(config))
}

// NewStream creates an HTTP context (proxy_on_context_create) and returns its id.
func (h *TestHost) NewStream() uint32 {
	id := h.nextID
	h.nextID++
	onContextCreate(id, h.RootID)
	return id
}

// RequestHeaders runs proxy_on_request_headers on stream id with headers, and returns the
// headers as the plugin left them and its action.
func (h *TestHost) RequestHeaders(id uint32, headers []Header) ([]Header, Action) {
	h.current = id
	h.maps[mapRequestHeaders] = append([]Header(nil), headers...)
	a := onRequestHeaders(id, len(headers), true)
	return h.maps[mapRequestHeaders], a
}

// ResponseHeaders is RequestHeaders for proxy_on_response_headers.
func (h *TestHost) ResponseHeaders(id uint32, headers []Header) ([]Header, Action) {
	h.current = id
	h.maps[mapResponseHeaders] = append([]Header(nil), headers...)
	a := onResponseHeaders(id, len(headers), true)
	return h.maps[mapResponseHeaders], a
}

// Tick runs proxy_on_tick on the root context.
func (h *TestHost) Tick() {
	h.current = h.RootID
	onTick(h.RootID)
}

// EndStream runs proxy_on_done and proxy_on_delete on stream id.
func (h *TestHost) EndStream(id uint32) {
	h.current = id
	onDelete(id)
}

// Streams is the number of HTTP contexts the dispatcher tracks.
func (h *TestHost) Streams() int { return len(httpContexts) }

func hostLog(level LogLevel, msg string) {
	if host != nil {
		host.Logs = append(host.Logs, LogEntry{Level: level, Message: msg})
	}
}

func getBuffer(b bufferType, size int) ([]byte, error) {
	if host == nil || b != bufferPluginConfiguration {
		return nil, statusErr("proxy_get_buffer_bytes", StatusNotFound)
	}
	return host.pluginConfig[:min(size, len(host.pluginConfig))], nil
}

func getHeader(m mapType, name string) (string, error) {
	for _, f := range host.maps[m] {
		if strings.EqualFold(f.Name, name) {
			return f.Value, nil
		}
	}
	return "", statusErr("proxy_get_header_map_value", StatusNotFound)
}

func addHeader(m mapType, name, value string) error {
	host.maps[m] = append(host.maps[m], Header{Name: name, Value: value})
	return nil
}

func replaceHeader(m mapType, name, value string) error {
	_ = removeHeader(m, name)
	return addHeader(m, name, value)
}

func removeHeader(m mapType, name string) error {
	kept := host.maps[m][:0]
	for _, f := range host.maps[m] {
		if !strings.EqualFold(f.Name, name) {
			kept = append(kept, f)
		}
	}
	host.maps[m] = kept
	return nil
}

// SendHTTPResponse records a local response (see abi_wasm.go).
func SendHTTPResponse(status uint32, headers []Header, body []byte, details string) error {
	host.LocalResponses = append(host.LocalResponses, LocalResponse{
		ContextID: host.current, Status: status, Headers: headers, Body: body, Details: details,
	})
	return nil
}

// SetTickPeriodMilliseconds records the tick period (see abi_wasm.go).
func SetTickPeriodMilliseconds(period uint32) error {
	host.TickPeriodMillis = period
	return nil
}

// ResumeHTTPRequest records the resumed stream (see abi_wasm.go).
func ResumeHTTPRequest(contextID uint32) error {
	if _, ok := httpContexts[contextID]; !ok {
		return statusErr("proxy_set_effective_context", StatusBadArgument)
	}
	host.Resumed = append(host.Resumed, contextID)
	return nil
}

// CurrentTimeNanoseconds returns the host's NowNanos (see abi_wasm.go).
func CurrentTimeNanoseconds() (uint64, error) { return host.NowNanos, nil }
