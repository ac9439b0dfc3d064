//go:build wasip1

package proxywasm

import "unsafe"

// ---------------------------------------------------------------------------------------------
// Callbacks exposed by the module (//go:wasmexport). All are optional for the host; these are
// the ones an HTTP filter needs. size_t and uint32_t parameters are i32, bool results are i32.
// ---------------------------------------------------------------------------------------------

// proxy_abi_version_0_2_1 is a marker export: the host reads the ABI version from its name.
//
//go:wasmexport proxy_abi_version_0_2_1
func proxyABIVersion021() {}

// proxy_on_memory_allocate: the host asks for memory to write a host call's result into (a
// header value, a buffer). The Go GC does not move objects, so the slice's address is stable;
// the slice is kept in allocations until the host call's Go wrapper takes it.
//
//go:wasmexport proxy_on_memory_allocate
func proxyOnMemoryAllocate(size uint32) uint32 {
	buf := make([]byte, max(size, 1))
	ptr := uint32(uintptr(unsafe.Pointer(&buf[0])))
	allocations[ptr] = buf
	return ptr
}

//go:wasmexport proxy_on_context_create
func proxyOnContextCreate(contextID, parentContextID uint32) {
	defer guard("proxy_on_context_create")
	onContextCreate(contextID, parentContextID)
}

// proxy_on_vm_start: this package ignores the VM configuration.
//
//go:wasmexport proxy_on_vm_start
func proxyOnVMStart(rootContextID, vmConfigurationSize uint32) bool { return true }

//go:wasmexport proxy_on_configure
func proxyOnConfigure(rootContextID, pluginConfigurationSize uint32) bool {
	defer guard("proxy_on_configure")
	return onConfigure(rootContextID, int(pluginConfigurationSize))
}

//go:wasmexport proxy_on_request_headers
func proxyOnRequestHeaders(contextID, numHeaders uint32, endOfStream bool) uint32 {
	defer guard("proxy_on_request_headers")
	return uint32(onRequestHeaders(contextID, int(numHeaders), endOfStream))
}

//go:wasmexport proxy_on_request_body
func proxyOnRequestBody(contextID, bodySize uint32, endOfStream bool) uint32 {
	return uint32(ActionContinue)
}

//go:wasmexport proxy_on_response_headers
func proxyOnResponseHeaders(contextID, numHeaders uint32, endOfStream bool) uint32 {
	defer guard("proxy_on_response_headers")
	return uint32(onResponseHeaders(contextID, int(numHeaders), endOfStream))
}

//go:wasmexport proxy_on_response_body
func proxyOnResponseBody(contextID, bodySize uint32, endOfStream bool) uint32 {
	return uint32(ActionContinue)
}

//go:wasmexport proxy_on_tick
func proxyOnTick(rootContextID uint32) {
	defer guard("proxy_on_tick")
	onTick(rootContextID)
}

// proxy_on_done: true lets the host finalize the context now (we never defer it).
//
//go:wasmexport proxy_on_done
func proxyOnDone(contextID uint32) bool { return true }

//go:wasmexport proxy_on_log
func proxyOnLog(contextID uint32) {}

//go:wasmexport proxy_on_delete
func proxyOnDelete(contextID uint32) {
	defer guard("proxy_on_delete")
	onDelete(contextID)
}

// ---------------------------------------------------------------------------------------------
// Functions exposed by the host (//go:wasmimport env ...). Each returns proxy_status_t. A Go
// string parameter is passed as the two i32s (data, size) the ABI expects; *uint32 parameters
// are the ABI's return_* out-pointers.
// ---------------------------------------------------------------------------------------------

//go:wasmimport env proxy_log
func proxyLog(level uint32, message string) uint32

//go:wasmimport env proxy_get_buffer_bytes
func proxyGetBufferBytes(bufferID, start, maxSize uint32, returnData, returnSize *uint32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mapID uint32, key string, returnData, returnSize *uint32) uint32

//go:wasmimport env proxy_add_header_map_value
func proxyAddHeaderMapValue(mapID uint32, key, value string) uint32

//go:wasmimport env proxy_replace_header_map_value
func proxyReplaceHeaderMapValue(mapID uint32, key, value string) uint32

//go:wasmimport env proxy_remove_header_map_value
func proxyRemoveHeaderMapValue(mapID uint32, key string) uint32

//go:wasmimport env proxy_send_local_response
func proxySendLocalResponse(statusCode uint32, details string, body unsafe.Pointer, bodySize uint32,
	headers unsafe.Pointer, headersSize uint32, grpcStatus int32) uint32

//go:wasmimport env proxy_set_tick_period_milliseconds
func proxySetTickPeriodMilliseconds(period uint32) uint32

//go:wasmimport env proxy_set_effective_context
func proxySetEffectiveContext(contextID uint32) uint32

//go:wasmimport env proxy_continue_stream
func proxyContinueStream(stream uint32) uint32

//go:wasmimport env proxy_get_current_time_nanoseconds
func proxyGetCurrentTimeNanoseconds(returnTime *uint64) uint32

// ---------------------------------------------------------------------------------------------
// Go wrappers. The same functions exist in host_native.go over an in-memory host.
// ---------------------------------------------------------------------------------------------

// allocations holds the buffers handed out by proxy_on_memory_allocate until the wrapper of
// the host call that asked for them takes them.
var allocations = map[uint32][]byte{}

// takeAllocation returns the size bytes the host wrote at ptr, and forgets every allocation:
// all of them were made for the host call that just returned.
func takeAllocation(ptr, size uint32) []byte {
	buf := allocations[ptr]
	clear(allocations)
	if buf == nil || int(size) > len(buf) {
		return nil
	}
	return buf[:size]
}

func hostLog(level LogLevel, msg string) { proxyLog(uint32(level), msg) }

func getBuffer(b bufferType, size int) ([]byte, error) {
	var ptr, n uint32
	st := Status(proxyGetBufferBytes(uint32(b), 0, uint32(size), &ptr, &n))
	if err := statusErr("proxy_get_buffer_bytes", st); err != nil {
		clear(allocations)
		return nil, err
	}
	return takeAllocation(ptr, n), nil
}

func getHeader(m mapType, name string) (string, error) {
	var ptr, n uint32
	st := Status(proxyGetHeaderMapValue(uint32(m), name, &ptr, &n))
	if err := statusErr("proxy_get_header_map_value", st); err != nil {
		clear(allocations)
		return "", err
	}
	return string(takeAllocation(ptr, n)), nil
}

func addHeader(m mapType, name, value string) error {
	return statusErr("proxy_add_header_map_value", Status(proxyAddHeaderMapValue(uint32(m), name, value)))
}

func replaceHeader(m mapType, name, value string) error {
	return statusErr("proxy_replace_header_map_value", Status(proxyReplaceHeaderMapValue(uint32(m), name, value)))
}

func removeHeader(m mapType, name string) error {
	return statusErr("proxy_remove_header_map_value", Status(proxyRemoveHeaderMapValue(uint32(m), name)))
}

// SendHTTPResponse is proxy_send_local_response: answer the current stream with status,
// headers and body instead of forwarding it. details is the response code details Envoy
// logs (%RESPONSE_CODE_DETAILS%). Return ActionPause from the callback afterwards.
func SendHTTPResponse(status uint32, headers []Header, body []byte, details string) error {
	h := serializeHeaders(headers)
	st := proxySendLocalResponse(status, details,
		unsafe.Pointer(unsafe.SliceData(body)), uint32(len(body)),
		unsafe.Pointer(unsafe.SliceData(h)), uint32(len(h)), -1)
	return statusErr("proxy_send_local_response", Status(st))
}

// SetTickPeriodMilliseconds is proxy_set_tick_period_milliseconds: call it from the root
// context (OnPluginStart); the host then calls OnTick every period. 0 stops the timer.
func SetTickPeriodMilliseconds(period uint32) error {
	return statusErr("proxy_set_tick_period_milliseconds", Status(proxySetTickPeriodMilliseconds(period)))
}

// ResumeHTTPRequest resumes a request paused from OnRequestHeaders, from any callback of the
// same VM (e.g. OnTick): proxy_set_effective_context, then proxy_continue_stream(HTTP_REQUEST).
func ResumeHTTPRequest(contextID uint32) error {
	if err := statusErr("proxy_set_effective_context", Status(proxySetEffectiveContext(contextID))); err != nil {
		return err
	}
	return statusErr("proxy_continue_stream", Status(proxyContinueStream(uint32(streamHTTPRequest))))
}

// CurrentTimeNanoseconds is proxy_get_current_time_nanoseconds (wall clock, Unix epoch).
// Hosts may freeze it during a callback.
func CurrentTimeNanoseconds() (uint64, error) {
	var t uint64
	st := Status(proxyGetCurrentTimeNanoseconds(&t))
	return t, statusErr("proxy_get_current_time_nanoseconds", st)
}
