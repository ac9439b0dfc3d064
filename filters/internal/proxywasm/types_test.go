package proxywasm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestSerializeHeadersMatchesTheSpec(t *testing.T) {
	// The ABI's example: {{"a": "1"}, {"b": "22"}}.
	got := serializeHeaders([]Header{{"a", "1"}, {"b", "22"}})
	want := []byte{
		2, 0, 0, 0, // number of pairs
		1, 0, 0, 0, 1, 0, 0, 0, // len("a"), len("1")
		1, 0, 0, 0, 2, 0, 0, 0, // len("b"), len("22")
		'a', 0, '1', 0, 'b', 0, '2', '2', 0,
	}
	if !bytes.Equal(got, want) {
		t.Errorf("serializeHeaders = %v, want %v", got, want)
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	for _, fields := range [][]Header{
		nil,
		{{"content-type", "text/plain"}},
		{{"x-empty", ""}, {"", "empty name"}, {"set-cookie", "a=1"}, {"set-cookie", "b=2"}},
		{{"x-long", string(bytes.Repeat([]byte("v"), 70000))}},
	} {
		got, err := deserializeHeaders(serializeHeaders(fields))
		if err != nil {
			t.Fatalf("round trip of %d fields: %v", len(fields), err)
		}
		if !reflect.DeepEqual(got, fields) {
			t.Errorf("round trip: got %v, want %v", got, fields)
		}
	}
}

func TestDeserializeHeaders(t *testing.T) {
	if got, err := deserializeHeaders([]byte{0}); err != nil || got != nil {
		t.Errorf("single 0x00 byte is the empty map, got %v, %v", got, err)
	}
	good := serializeHeaders([]Header{{"a", "1"}})
	for name, bad := range map[string][]byte{
		"short count":          {1, 0},
		"count too large":      {9, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0},
		"truncated data":       good[:len(good)-1],
		"missing NUL":          append(append([]byte{}, good[:len(good)-1]...), 'x'),
		"length past the data": {1, 0, 0, 0, 0xff, 0, 0, 0, 1, 0, 0, 0, 'a', 0, '1', 0},
	} {
		if _, err := deserializeHeaders(bad); err == nil {
			t.Errorf("%s: accepted %v", name, bad)
		}
	}
}

func TestStatusError(t *testing.T) {
	if statusErr("proxy_log", StatusOK) != nil {
		t.Fatal("OK is not an error")
	}
	err := statusErr("proxy_get_header_map_value", StatusNotFound)
	if err.Error() != "proxy_get_header_map_value: NOT_FOUND" {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Error("NOT_FOUND does not match ErrNotFound")
	}
	other := statusErr("proxy_continue_stream", StatusBadArgument)
	if errors.Is(other, ErrNotFound) {
		t.Error("BAD_ARGUMENT matches ErrNotFound")
	}
	if got := statusErr("x", Status(99)).Error(); got != "x: status 99" {
		t.Errorf("unknown status message %q", got)
	}
}
