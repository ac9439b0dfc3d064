// Package faults is the logic of the deliberately faulty filters (panicky, local-5xx, slow):
// their configurations and the deterministic "every Nth request" counter.
package faults

import (
	"strconv"

	"filterrelease.dev/filters/internal/pluginconfig"
)

// Every answers true on every Nth call of Next (the Nth, 2Nth, ...); never when N is 0.
// A filter keeps one per VM, so with several Envoy worker threads the share holds per
// thread, and exactly only with one.
type Every struct {
	N     uint64
	count uint64
}

// Next counts one call and reports whether it is an Nth one.
func (e *Every) Next() bool {
	if e.N == 0 {
		return false
	}
	e.count++
	if e.count == e.N {
		e.count = 0
		return true
	}
	return false
}

// versionOrDefault fills in the version every filter reports in x-filter-version.
func versionOrDefault(v string) (string, error) {
	if v == "" {
		v = "unversioned"
	}
	return v, pluginconfig.CheckHeaderValue("version", v)
}

// PanickyConfig configures the panicky filter: it panics on every PanicEvery-th request.
// JSON: {"panic_every": 10, "version": "v1"}.
type PanickyConfig struct {
	PanicEvery uint64
	Version    string
}

// ParsePanicky decodes and validates the panicky filter's configuration. panic_every is
// required and at least 1 (1: every request panics).
func ParsePanicky(data []byte) (PanickyConfig, error) {
	var c PanickyConfig
	err := pluginconfig.Decode(data, pluginconfig.Fields{
		"panic_every": pluginconfig.Uint(&c.PanicEvery, 1<<32),
		"version":     pluginconfig.String(&c.Version),
	})
	if err != nil {
		return c, err
	}
	if c.PanicEvery == 0 {
		return c, pluginconfig.Invalid("panic_every must be at least 1")
	}
	c.Version, err = versionOrDefault(c.Version)
	return c, err
}

// Local5xxConfig configures the local-5xx filter: every FailEvery-th request is answered by
// the filter itself with Status, without reaching the upstream.
// JSON: {"fail_every": 4, "status": 503, "version": "v1"}.
type Local5xxConfig struct {
	FailEvery uint64
	Status    uint32
	Version   string
}

// ParseLocal5xx decodes and validates the local-5xx filter's configuration. fail_every is
// required and at least 1; status defaults to 503 and must be a 5xx.
func ParseLocal5xx(data []byte) (Local5xxConfig, error) {
	var c Local5xxConfig
	err := pluginconfig.Decode(data, pluginconfig.Fields{
		"fail_every": pluginconfig.Uint(&c.FailEvery, 1<<32),
		"status":     pluginconfig.Uint(&c.Status, 599),
		"version":    pluginconfig.String(&c.Version),
	})
	if err != nil {
		return c, err
	}
	if c.FailEvery == 0 {
		return c, pluginconfig.Invalid("fail_every must be at least 1")
	}
	if c.Status == 0 {
		c.Status = 503
	}
	if c.Status < 500 || c.Status > 599 {
		return c, pluginconfig.Invalid("status " +
			strconv.FormatUint(uint64(c.Status), 10) + " is not a 5xx")
	}
	c.Version, err = versionOrDefault(c.Version)
	return c, err
}

// MaxDelayMillis bounds the slow filter's delay: a paused request holds a stream open.
const MaxDelayMillis = 60_000

// SlowConfig configures the slow filter: every request is held DelayMillis before it goes on.
// JSON: {"delay_ms": 200, "version": "v1"}.
type SlowConfig struct {
	DelayMillis uint32
	Version     string
}

// ParseSlow decodes and validates the slow filter's configuration (0 <= delay_ms <= 60000).
func ParseSlow(data []byte) (SlowConfig, error) {
	var c SlowConfig
	err := pluginconfig.Decode(data, pluginconfig.Fields{
		"delay_ms": pluginconfig.Uint(&c.DelayMillis, MaxDelayMillis),
		"version":  pluginconfig.String(&c.Version),
	})
	if err != nil {
		return c, err
	}
	c.Version, err = versionOrDefault(c.Version)
	return c, err
}

// TickMillis is how often the slow filter looks for requests to resume: a tenth of the
// delay, between 1 and 50 ms, so a request is held at most ~10% (or 50 ms) longer than asked.
func (c SlowConfig) TickMillis() uint32 {
	return min(max(c.DelayMillis/10, 1), 50)
}

// DelayQueue holds paused streams until their due time. Due times are added in increasing
// order (every request is delayed by the same amount), so it is a FIFO.
type DelayQueue struct {
	items []delayed
}

type delayed struct {
	contextID uint32
	dueNanos  uint64
}

// Add holds contextID until dueNanos.
func (q *DelayQueue) Add(contextID uint32, dueNanos uint64) {
	q.items = append(q.items, delayed{contextID, dueNanos})
}

// PopDue removes and returns, oldest first, the streams due at nowNanos.
func (q *DelayQueue) PopDue(nowNanos uint64) []uint32 {
	n := 0
	for n < len(q.items) && q.items[n].dueNanos <= nowNanos {
		n++
	}
	if n == 0 {
		return nil
	}
	due := make([]uint32, n)
	for i := range n {
		due[i] = q.items[i].contextID
	}
	q.items = append(q.items[:0], q.items[n:]...)
	return due
}

// Remove forgets contextID (a stream that ended while held: reset by the client).
func (q *DelayQueue) Remove(contextID uint32) {
	for i, it := range q.items {
		if it.contextID == contextID {
			q.items = append(q.items[:i], q.items[i+1:]...)
			return
		}
	}
}

// Len is the number of held streams.
func (q *DelayQueue) Len() int { return len(q.items) }
