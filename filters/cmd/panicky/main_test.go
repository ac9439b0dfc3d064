//go:build !wasip1

package main

import (
	"slices"
	"strings"
	"testing"

	pw "filterrelease.dev/filters/internal/proxywasm"
)

// request runs one request through the plugin and returns the panic value, if any.
func request(h *pw.TestHost) (recovered any) {
	defer func() { recovered = recover() }()
	h.RequestHeaders(h.NewStream(), nil)
	return nil
}

func TestPanicsOnEveryNthRequest(t *testing.T) {
	h, ok := pw.NewTestHost([]byte(`{"panic_every":3,"version":"v9"}`))
	if !ok {
		t.Fatalf("rejected: %v", h.Logs)
	}
	var pattern strings.Builder
	for range 9 {
		if p := request(h); p != nil {
			pattern.WriteByte('P')
			if !strings.HasPrefix(p.(string), "panicky: deliberate panic on request ") {
				t.Errorf("panic value %q", p)
			}
		} else {
			pattern.WriteByte('.')
		}
	}
	if pattern.String() != "..P..P..P" {
		t.Errorf("panics: %s, want ..P..P..P", pattern.String())
	}
}

func TestPanickySetsTheVersion(t *testing.T) {
	h, _ := pw.NewTestHost([]byte(`{"panic_every":100,"version":"v9"}`))
	id := h.NewStream()
	h.RequestHeaders(id, nil)
	resp, _ := h.ResponseHeaders(id, []pw.Header{{Name: ":status", Value: "200"}})
	want := []pw.Header{{Name: ":status", Value: "200"}, {Name: "x-filter-version", Value: "v9"}, {Name: "x-filter-chain", Value: "v9"}}
	if !slices.Equal(resp, want) {
		t.Errorf("response headers %v", resp)
	}
}

func TestPanickyRejectsABadConfiguration(t *testing.T) {
	if h, ok := pw.NewTestHost([]byte(`{"panic_every":0}`)); ok || len(h.Logs) != 1 {
		t.Errorf("ok=%v logs=%v", ok, h.Logs)
	}
}
