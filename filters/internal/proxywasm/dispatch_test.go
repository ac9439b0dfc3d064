//go:build !wasip1

package proxywasm

import (
	"errors"
	"testing"
)

// A plugin that records what the dispatcher calls, to test the context lifecycle.
type recRoot struct {
	DefaultRootContext
	id      uint32
	config  string
	ticks   int
	streams map[uint32]*recStream
	accept  bool
}

type recStream struct {
	DefaultHTTPContext
	id               uint32
	reqCalls, dones  int
	endOfStream      bool
	numHeadersOnResp int
}

var lastRoot *recRoot

func registerRecorder(accept bool) {
	SetNewRootContext(func(id uint32) RootContext {
		lastRoot = &recRoot{id: id, streams: map[uint32]*recStream{}, accept: accept}
		return lastRoot
	})
}

func (r *recRoot) OnPluginStart(config []byte) bool { r.config = string(config); return r.accept }
func (r *recRoot) OnTick()                          { r.ticks++ }
func (r *recRoot) NewHTTPContext(id uint32) HTTPContext {
	if id%2 == 1 {
		return nil // odd streams: not interested
	}
	s := &recStream{id: id}
	r.streams[id] = s
	return s
}

func (s *recStream) OnRequestHeaders(n int, eos bool) Action {
	s.reqCalls++
	s.endOfStream = eos
	if err := AddHTTPRequestHeader("x-seen", "yes"); err != nil {
		panic(err)
	}
	return ActionPause
}

func (s *recStream) OnResponseHeaders(n int, eos bool) Action {
	s.numHeadersOnResp = n
	v, err := GetHTTPResponseHeader("server")
	if err == nil {
		_ = ReplaceHTTPResponseHeader("server", v+"+wasm")
	}
	return ActionContinue
}

func (s *recStream) OnStreamDone() { s.dones++ }

func TestPluginStartGetsTheConfiguration(t *testing.T) {
	registerRecorder(true)
	_, ok := NewTestHost([]byte(`{"k":"v"}`))
	if !ok || lastRoot.config != `{"k":"v"}` || lastRoot.id != 1 {
		t.Fatalf("ok=%v root=%+v", ok, lastRoot)
	}
	registerRecorder(false)
	if _, ok := NewTestHost(nil); ok {
		t.Fatal("a rejecting plugin was accepted")
	}
	if lastRoot.config != "" {
		t.Errorf("empty configuration read as %q", lastRoot.config)
	}
}

func TestStreamLifecycle(t *testing.T) {
	registerRecorder(true)
	h, _ := NewTestHost(nil)
	id := h.NewStream()
	if id%2 == 1 {
		id = h.NewStream()
	}
	s := lastRoot.streams[id]
	got, action := h.RequestHeaders(id, []Header{{":path", "/"}})
	if action != ActionPause || s.reqCalls != 1 || !s.endOfStream {
		t.Errorf("request headers: action %d, stream %+v", action, s)
	}
	if len(got) != 2 || got[1] != (Header{"x-seen", "yes"}) {
		t.Errorf("request headers after the plugin: %v", got)
	}
	resp, _ := h.ResponseHeaders(id, []Header{{":status", "200"}, {"server", "up"}})
	if s.numHeadersOnResp != 2 || resp[1] != (Header{"server", "up+wasm"}) {
		t.Errorf("response headers after the plugin: %v (saw %d)", resp, s.numHeadersOnResp)
	}
	if h.Streams() != 1 {
		t.Errorf("tracking %d streams, want 1", h.Streams())
	}
	h.EndStream(id)
	if s.dones != 1 || h.Streams() != 0 {
		t.Errorf("after the end: dones=%d, tracked=%d", s.dones, h.Streams())
	}
	h.EndStream(id) // the host never does this twice, but it must be harmless
	if s.dones != 1 {
		t.Errorf("OnStreamDone called again")
	}
}

func TestStreamsWithoutContextContinue(t *testing.T) {
	registerRecorder(true)
	h, _ := NewTestHost(nil)
	odd := h.NewStream()
	for odd%2 == 0 {
		odd = h.NewStream()
	}
	if _, a := h.RequestHeaders(odd, nil); a != ActionContinue {
		t.Errorf("a stream the plugin did not take was not continued")
	}
	if err := ResumeHTTPRequest(odd); err == nil {
		t.Errorf("resuming an unknown stream succeeded")
	}
}

func TestTickAndResume(t *testing.T) {
	registerRecorder(true)
	h, _ := NewTestHost(nil)
	h.Tick()
	h.Tick()
	if lastRoot.ticks != 2 {
		t.Errorf("ticks = %d", lastRoot.ticks)
	}
	id := h.NewStream()
	if id%2 == 1 {
		id = h.NewStream()
	}
	if err := ResumeHTTPRequest(id); err != nil || len(h.Resumed) != 1 || h.Resumed[0] != id {
		t.Errorf("resume: %v, %v", err, h.Resumed)
	}
}

func TestMissingHeaderIsNotFound(t *testing.T) {
	registerRecorder(true)
	h, _ := NewTestHost(nil)
	h.RequestHeaders(h.NewStream(), nil)
	if _, err := GetHTTPRequestHeader("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing header: %v", err)
	}
	if err := RemoveHTTPRequestHeader("nope"); err != nil {
		t.Errorf("removing a missing header: %v", err)
	}
}

func TestNoRootContextRegistered(t *testing.T) {
	SetNewRootContext(nil)
	_, ok := NewTestHost([]byte("{}"))
	if ok {
		t.Fatal("configure succeeded without a plugin")
	}
	if len(host.Logs) == 0 || host.Logs[0].Level != LogLevelCritical {
		t.Errorf("no critical log line: %v", host.Logs)
	}
}

type panicRoot struct{ DefaultRootContext }

func (panicRoot) OnPluginStart([]byte) bool { panic(errors.New("boom")) }

func TestGuardLogsAndRepanics(t *testing.T) {
	SetNewRootContext(func(uint32) RootContext { return panicRoot{} })
	defer func() {
		r := recover()
		if err, ok := r.(error); !ok || err.Error() != "boom" {
			t.Fatalf("the panic was not passed on: %v", r)
		}
		want := PanicLogPrefix + "proxy_on_configure: boom"
		if n := len(host.Logs); n == 0 || host.Logs[n-1].Message != want || host.Logs[n-1].Level != LogLevelCritical {
			t.Errorf("logs %v, want a CRITICAL %q", host.Logs, want)
		}
	}()
	func() {
		defer guard("proxy_on_configure")
		NewTestHost(nil)
	}()
}

func TestPanicText(t *testing.T) {
	for _, tc := range []struct {
		v    any
		want string
	}{
		{"s", "s"},
		{errors.New("e"), "e"},
		{42, "(a panic value that is neither a string nor an error)"},
	} {
		if got := panicText(tc.v); got != tc.want {
			t.Errorf("panicText(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
