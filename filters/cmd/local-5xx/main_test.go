//go:build !wasip1

package main

import (
	"testing"

	pw "filterrelease.dev/filters/internal/proxywasm"
)

func TestAnswersEveryNthRequestLocally(t *testing.T) {
	h, ok := pw.NewTestHost([]byte(`{"fail_every":4,"status":502,"version":"v2"}`))
	if !ok {
		t.Fatalf("rejected: %v", h.Logs)
	}
	paused := 0
	for i := 1; i <= 100; i++ {
		id := h.NewStream()
		_, action := h.RequestHeaders(id, nil)
		if action == pw.ActionPause {
			paused++
			if i%4 != 0 {
				t.Errorf("request %d answered locally", i)
			}
		}
		h.EndStream(id)
	}
	if paused != 25 || len(h.LocalResponses) != 25 {
		t.Fatalf("paused %d, local responses %d, want 25", paused, len(h.LocalResponses))
	}
	r := h.LocalResponses[0]
	if r.Status != 502 || r.Details != Details || len(r.Body) == 0 {
		t.Errorf("local response %+v", r)
	}
	found := false
	for _, hd := range r.Headers {
		found = found || hd == pw.Header{Name: "x-filter-version", Value: "v2"}
	}
	if !found {
		t.Errorf("local response lacks x-filter-version: %v", r.Headers)
	}
}

func TestDefaultStatusIs503(t *testing.T) {
	h, _ := pw.NewTestHost([]byte(`{"fail_every":1}`))
	h.RequestHeaders(h.NewStream(), nil)
	if len(h.LocalResponses) != 1 || h.LocalResponses[0].Status != 503 {
		t.Errorf("local responses %+v", h.LocalResponses)
	}
}

func TestLocal5xxRejectsANon5xxStatus(t *testing.T) {
	if _, ok := pw.NewTestHost([]byte(`{"fail_every":2,"status":200}`)); ok {
		t.Error("status 200 accepted")
	}
}
