//go:build !wasip1

package main

import (
	"slices"
	"testing"

	pw "filterrelease.dev/filters/internal/proxywasm"
)

const ms = uint64(1_000_000)

func TestHoldsRequestsUntilDue(t *testing.T) {
	h, ok := pw.NewTestHost([]byte(`{"delay_ms":200,"version":"v3"}`))
	if !ok {
		t.Fatalf("rejected: %v", h.Logs)
	}
	if h.TickPeriodMillis != 20 {
		t.Errorf("tick period %d ms, want 20", h.TickPeriodMillis)
	}
	h.NowNanos = 1000 * ms
	a := h.NewStream()
	if _, action := h.RequestHeaders(a, nil); action != pw.ActionPause {
		t.Fatal("request not paused")
	}
	h.NowNanos += 50 * ms
	b := h.NewStream()
	h.RequestHeaders(b, nil)
	c := h.NewStream()
	h.RequestHeaders(c, nil)
	h.EndStream(c) // the client gave up while held

	for _, step := range []struct {
		advance uint64
		resumed []uint32
	}{
		{100 * ms, nil},           // t=1150: nothing due yet
		{49 * ms, nil},            // t=1199
		{1 * ms, []uint32{a}},     // t=1200: a is due
		{50 * ms, []uint32{a, b}}, // t=1250: b is due, c is gone
		{1000 * ms, []uint32{a, b}},
	} {
		h.NowNanos += step.advance
		h.Tick()
		if !slices.Equal(h.Resumed, step.resumed) {
			t.Fatalf("at %d ms: resumed %v, want %v", h.NowNanos/ms, h.Resumed, step.resumed)
		}
	}
	resp, _ := h.ResponseHeaders(a, []pw.Header{{Name: ":status", Value: "200"}})
	if !slices.Equal(resp[len(resp)-2:], []pw.Header{{Name: "x-filter-version", Value: "v3"}, {Name: "x-filter-chain", Value: "v3"}}) {
		t.Errorf("response headers %v", resp)
	}
}

func TestZeroDelayLetsRequestsThrough(t *testing.T) {
	h, _ := pw.NewTestHost([]byte(`{"delay_ms":0}`))
	if _, action := h.RequestHeaders(h.NewStream(), nil); action != pw.ActionContinue {
		t.Error("paused with no delay")
	}
	if h.TickPeriodMillis != 0 {
		t.Errorf("a timer was set: %d ms", h.TickPeriodMillis)
	}
}
