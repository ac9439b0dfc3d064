//go:build !wasip1

package main

import (
	"strings"
	"testing"

	pw "filterrelease.dev/filters/internal/proxywasm"
)

func TestRejectsEveryConfiguration(t *testing.T) {
	for _, config := range []string{"", "{}", `{"version":"v1"}`, "not json"} {
		h, ok := pw.NewTestHost([]byte(config))
		if ok {
			t.Errorf("%q accepted", config)
		}
		if len(h.Logs) != 1 || h.Logs[0].Level != pw.LogLevelError ||
			!strings.HasPrefix(h.Logs[0].Message, RejectMessage) {
			t.Errorf("%q: logs %v", config, h.Logs)
		}
	}
}
