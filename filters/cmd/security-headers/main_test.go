//go:build !wasip1

package main

import (
	"strings"
	"testing"

	pw "filterrelease.dev/filters/internal/proxywasm"
)

func headerMap(hs []pw.Header) map[string][]string {
	m := map[string][]string{}
	for _, h := range hs {
		m[h.Name] = append(m[h.Name], h.Value)
	}
	return m
}

func TestSecurityHeaders(t *testing.T) {
	h, ok := pw.NewTestHost([]byte(`{"frame_options":"SAMEORIGIN","version":"v1.1.0"}`))
	if !ok {
		t.Fatalf("configuration rejected: %v", h.Logs)
	}
	id := h.NewStream()
	req, action := h.RequestHeaders(id, []pw.Header{{Name: ":path", Value: "/"}, {Name: "x-envoy-wasm-filter", Value: "spoofed"}})
	if action != pw.ActionContinue {
		t.Errorf("request paused")
	}
	if got := headerMap(req)["x-envoy-wasm-filter"]; len(got) != 1 || got[0] != "active" {
		t.Errorf("x-envoy-wasm-filter = %v, want [active]", got)
	}
	resp, _ := h.ResponseHeaders(id, []pw.Header{
		{Name: ":status", Value: "200"}, {Name: "server", Value: "upstream"}, {Name: "x-frame-options", Value: "ALLOW"},
	})
	m := headerMap(resp)
	if _, present := m["server"]; present {
		t.Errorf("server header kept: %v", m["server"])
	}
	for name, want := range map[string]string{
		"x-frame-options": "SAMEORIGIN", "x-content-type-options": "nosniff",
		"x-xss-protection": "1; mode=block", "x-filter-version": "v1.1.0", ":status": "200",
	} {
		if got := m[name]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %v, want [%s]", name, got, want)
		}
	}
	h.EndStream(id)
	if h.Streams() != 0 {
		t.Errorf("stream not forgotten")
	}
}

func TestSecurityHeadersRejectsInvalidJSON(t *testing.T) {
	for _, config := range []string{`{"frame_options":`, `{"frame_option":"DENY"}`, `[]`} {
		h, ok := pw.NewTestHost([]byte(config))
		if ok {
			t.Errorf("%s accepted", config)
			continue
		}
		if len(h.Logs) != 1 || h.Logs[0].Level != pw.LogLevelError ||
			!strings.HasPrefix(h.Logs[0].Message, "security-headers: rejecting the plugin configuration: invalid plugin configuration: ") {
			t.Errorf("%s: log %v", config, h.Logs)
		}
	}
}
