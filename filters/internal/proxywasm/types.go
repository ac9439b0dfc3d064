package proxywasm

import (
	"errors"
	"strconv"
)

// Action is proxy_action_t: what the host does after a stream callback.
type Action uint32

const (
	// ActionContinue (CONTINUE = 0) lets the host go on processing the stream.
	ActionContinue Action = 0
	// ActionPause (PAUSE = 1) pauses it until proxy_continue_stream or a local response.
	ActionPause Action = 1
)

// Status is proxy_status_t, the result of every host call.
type Status uint32

// proxy_status_t values.
const (
	StatusOK                   Status = 0
	StatusNotFound             Status = 1
	StatusBadArgument          Status = 2
	StatusSerializationFailure Status = 3
	StatusParseFailure         Status = 4
	StatusInvalidMemoryAccess  Status = 6
	StatusEmpty                Status = 7
	StatusCASMismatch          Status = 8
	StatusInternalFailure      Status = 10
	StatusUnimplemented        Status = 12
)

var statusNames = map[Status]string{
	StatusOK:                   "OK",
	StatusNotFound:             "NOT_FOUND",
	StatusBadArgument:          "BAD_ARGUMENT",
	StatusSerializationFailure: "SERIALIZATION_FAILURE",
	StatusParseFailure:         "PARSE_FAILURE",
	StatusInvalidMemoryAccess:  "INVALID_MEMORY_ACCESS",
	StatusEmpty:                "EMPTY",
	StatusCASMismatch:          "CAS_MISMATCH",
	StatusInternalFailure:      "INTERNAL_FAILURE",
	StatusUnimplemented:        "UNIMPLEMENTED",
}

// StatusError is a host call that did not return OK.
type StatusError struct {
	Call   string // the ABI name of the host call, e.g. "proxy_get_header_map_value"
	Status Status
}

func (e *StatusError) Error() string {
	name, ok := statusNames[e.Status]
	if !ok {
		name = "status " + strconv.FormatUint(uint64(e.Status), 10)
	}
	return e.Call + ": " + name
}

// ErrNotFound matches (errors.Is) any StatusError with NOT_FOUND, e.g. a missing header.
var ErrNotFound = errors.New("not found")

// Is makes errors.Is(err, ErrNotFound) true for NOT_FOUND.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && e.Status == StatusNotFound
}

// statusErr turns a host call's status into an error (nil for OK).
func statusErr(call string, s Status) error {
	if s == StatusOK {
		return nil
	}
	return &StatusError{Call: call, Status: s}
}

// LogLevel is proxy_log_level_t.
type LogLevel uint32

// proxy_log_level_t values.
const (
	LogLevelTrace    LogLevel = 0
	LogLevelDebug    LogLevel = 1
	LogLevelInfo     LogLevel = 2
	LogLevelWarn     LogLevel = 3
	LogLevelError    LogLevel = 4
	LogLevelCritical LogLevel = 5
)

// bufferType is proxy_buffer_type_t (only the values this package reads).
type bufferType uint32

const (
	bufferVMConfiguration     bufferType = 6
	bufferPluginConfiguration bufferType = 7
)

// mapType is proxy_map_type_t (only the values this package uses).
type mapType uint32

const (
	mapRequestHeaders  mapType = 0
	mapResponseHeaders mapType = 2
)

// streamType is proxy_stream_type_t (only the values this package uses).
type streamType uint32

const (
	streamHTTPRequest  streamType = 0
	streamHTTPResponse streamType = 1
)

// Header is one HTTP header field. Names are lower case on the wire (HTTP/2 style).
type Header struct {
	Name, Value string
}

// serializeHeaders encodes fields as the ABI's serialized map: a little-endian u32 count, then
// for each pair its key length and value length (u32 each), then each key and value followed
// by a NUL byte. An empty map is encoded as no bytes.
func serializeHeaders(fields []Header) []byte {
	if len(fields) == 0 {
		return nil
	}
	size := 4 + 8*len(fields)
	for _, f := range fields {
		size += len(f.Name) + 1 + len(f.Value) + 1
	}
	out := make([]byte, 4+8*len(fields), size)
	putU32(out, uint32(len(fields)))
	for i, f := range fields {
		putU32(out[4+8*i:], uint32(len(f.Name)))
		putU32(out[8+8*i:], uint32(len(f.Value)))
	}
	for _, f := range fields {
		out = append(out, f.Name...)
		out = append(out, 0)
		out = append(out, f.Value...)
		out = append(out, 0)
	}
	return out
}

// errBadMap is returned by deserializeHeaders for bytes that are not a serialized map.
var errBadMap = errors.New("proxywasm: malformed serialized header map")

// deserializeHeaders is the inverse of serializeHeaders. It accepts both encodings of an
// empty map (no bytes, or a single 0x00 byte).
func deserializeHeaders(data []byte) ([]Header, error) {
	if len(data) == 0 || (len(data) == 1 && data[0] == 0) {
		return nil, nil
	}
	if len(data) < 4 {
		return nil, errBadMap
	}
	n := int(getU32(data))
	if n < 0 || n > (len(data)-4)/8 {
		return nil, errBadMap
	}
	sizes := data[4 : 4+8*n]
	rest := data[4+8*n:]
	fields := make([]Header, n)
	for i := range n {
		kl := int(getU32(sizes[8*i:]))
		vl := int(getU32(sizes[8*i+4:]))
		if kl < 0 || vl < 0 || kl+1+vl+1 > len(rest) || rest[kl] != 0 || rest[kl+1+vl] != 0 {
			return nil, errBadMap
		}
		fields[i] = Header{Name: string(rest[:kl]), Value: string(rest[kl+1 : kl+1+vl])}
		rest = rest[kl+1+vl+1:]
	}
	return fields, nil
}

// putU32 and getU32 are little-endian, as the ABI's serialization is. (encoding/binary would
// pull reflect into every module for two one-liners.)
func putU32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

func getU32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}
