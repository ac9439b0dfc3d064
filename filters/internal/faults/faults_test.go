package faults

import (
	"reflect"
	"strings"
	"testing"
)

func TestEvery(t *testing.T) {
	for _, tc := range []struct {
		n    uint64
		want string // one char per call: x = true, . = false
	}{
		{0, "........"},
		{1, "xxxxxxxx"},
		{2, ".x.x.x.x"},
		{3, "..x..x..x"},
		{5, "....x....x"},
	} {
		e := Every{N: tc.n}
		var got strings.Builder
		for range len(tc.want) {
			if e.Next() {
				got.WriteByte('x')
			} else {
				got.WriteByte('.')
			}
		}
		if got.String() != tc.want {
			t.Errorf("Every{N: %d}: %s, want %s", tc.n, got.String(), tc.want)
		}
	}
}

func TestEveryShare(t *testing.T) {
	e := Every{N: 4}
	hits := 0
	for range 3000 {
		if e.Next() {
			hits++
		}
	}
	if hits != 750 {
		t.Errorf("every 4th of 3000: %d hits, want 750", hits)
	}
}

func TestParsePanicky(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    PanickyConfig
		wantErr string
	}{
		{`{"panic_every":10,"version":"v3"}`, PanickyConfig{10, "v3"}, ""},
		{`{"panic_every":1}`, PanickyConfig{1, "unversioned"}, ""},
		{`{}`, PanickyConfig{}, "panic_every must be at least 1"},
		{`{"panic_every":0}`, PanickyConfig{}, "panic_every must be at least 1"},
		{`{"panic_every":-2}`, PanickyConfig{}, `"panic_every" must be a whole number`},
		{`{"panic_every":2,"fail_every":3}`, PanickyConfig{}, `unknown key "fail_every"`},
		{`nope`, PanickyConfig{}, "must be a JSON object"},
	} {
		got, err := ParsePanicky([]byte(tc.in))
		checkParse(t, tc.in, got, err, tc.want, tc.wantErr)
	}
}

func TestParseLocal5xx(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Local5xxConfig
		wantErr string
	}{
		{`{"fail_every":4,"status":502,"version":"v1"}`, Local5xxConfig{4, 502, "v1"}, ""},
		{`{"fail_every":4}`, Local5xxConfig{4, 503, "unversioned"}, ""},
		{`{"fail_every":1,"status":599}`, Local5xxConfig{1, 599, "unversioned"}, ""},
		{`{"status":503}`, Local5xxConfig{}, "fail_every must be at least 1"},
		{`{"fail_every":4,"status":404}`, Local5xxConfig{}, "status 404 is not a 5xx"},
		{`{"fail_every":4,"status":600}`, Local5xxConfig{}, `"status" must be a whole number from 0 to 599`},
		{`{"fail_every":4,"status":"503"}`, Local5xxConfig{}, `"status" must be a whole number`},
	} {
		got, err := ParseLocal5xx([]byte(tc.in))
		checkParse(t, tc.in, got, err, tc.want, tc.wantErr)
	}
}

func TestParseSlow(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    SlowConfig
		wantErr string
	}{
		{`{"delay_ms":200,"version":"v1"}`, SlowConfig{200, "v1"}, ""},
		{`{}`, SlowConfig{0, "unversioned"}, ""},
		{`{"delay_ms":60000}`, SlowConfig{60000, "unversioned"}, ""},
		{`{"delay_ms":60001}`, SlowConfig{}, `"delay_ms" must be a whole number from 0 to 60000`},
		{`{"delay_ms":0.5}`, SlowConfig{}, `"delay_ms" must be a whole number`},
		{`{"version":"a\nb"}`, SlowConfig{}, `"version" has a control character`},
	} {
		got, err := ParseSlow([]byte(tc.in))
		checkParse(t, tc.in, got, err, tc.want, tc.wantErr)
	}
}

func checkParse[C comparable](t *testing.T, in string, got C, err error, want C, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("parse %s: err = %v, want one containing %q", in, err, wantErr)
		}
		return
	}
	if err != nil {
		t.Errorf("parse %s: %v", in, err)
	} else if got != want {
		t.Errorf("parse %s = %+v, want %+v", in, got, want)
	}
}

func TestTickMillis(t *testing.T) {
	for delay, want := range map[uint32]uint32{0: 1, 5: 1, 10: 1, 100: 10, 200: 20, 500: 50, 60000: 50} {
		if got := (SlowConfig{DelayMillis: delay}).TickMillis(); got != want {
			t.Errorf("TickMillis for %d ms = %d, want %d", delay, got, want)
		}
	}
}

func TestDelayQueue(t *testing.T) {
	var q DelayQueue
	if due := q.PopDue(1 << 62); due != nil {
		t.Fatalf("empty queue popped %v", due)
	}
	q.Add(2, 100)
	q.Add(3, 150)
	q.Add(4, 200)
	q.Add(5, 250)
	steps := []struct {
		now  uint64
		want []uint32
	}{
		{99, nil},
		{100, []uint32{2}},
		{100, nil},
		{210, []uint32{3, 4}},
	}
	for _, s := range steps {
		if got := q.PopDue(s.now); !reflect.DeepEqual(got, s.want) {
			t.Errorf("PopDue(%d) = %v, want %v", s.now, got, s.want)
		}
	}
	q.Remove(5) // the client went away
	q.Remove(9) // unknown: no-op
	if q.Len() != 0 {
		t.Errorf("Len() = %d after removing the last one", q.Len())
	}
	if got := q.PopDue(1000); got != nil {
		t.Errorf("a removed stream was popped: %v", got)
	}
}
