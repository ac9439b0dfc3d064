package secheaders

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Config
	}{
		{"empty configuration: defaults", "", Defaults},
		{"empty object: defaults", "{}", Defaults},
		{
			"all knobs",
			`{"frame_options":"SAMEORIGIN","content_type_options":"nosniff","xss_protection":"0","version":"v1.1.0"}`,
			Config{FrameOptions: "SAMEORIGIN", ContentTypeOptions: "nosniff", XSSProtection: "0", Version: "v1.1.0"},
		},
		{
			"only the version",
			`{"version":"v2"}`,
			Config{FrameOptions: "DENY", ContentTypeOptions: "nosniff", XSSProtection: "1; mode=block", Version: "v2"},
		},
		{"empty string means default", `{"frame_options":""}`, Defaults},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("Parse(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"invalid JSON", `{"frame_options":`, "invalid plugin configuration"},
		{"typo in a knob", `{"frame_option":"DENY"}`, `unknown key "frame_option"`},
		{"number for a header value", `{"version":1}`, `"version" must be a string`},
		{"header injection", `{"frame_options":"DENY\r\nx-evil: 1"}`, `"frame_options" has a control character`},
		{"array", `["DENY"]`, "must be a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Parse(%q) = %v, want an error containing %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestResponseHeaders(t *testing.T) {
	c := Config{FrameOptions: "F", ContentTypeOptions: "C", XSSProtection: "X", Version: "V"}
	got := map[string]string{}
	for _, h := range c.ResponseHeaders() {
		if _, dup := got[h.Name]; dup {
			t.Errorf("header %q set twice", h.Name)
		}
		if h.Name != strings.ToLower(h.Name) {
			t.Errorf("header name %q is not lower case", h.Name)
		}
		got[h.Name] = h.Value
	}
	want := map[string]string{
		"x-frame-options": "F", "x-content-type-options": "C", "x-xss-protection": "X",
		"x-filter-version": "V",
	}
	if len(got) != len(want) {
		t.Fatalf("ResponseHeaders() = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, removed := range RemovedResponseHeaders {
		if _, set := got[removed]; set {
			t.Errorf("%q is both removed and set", removed)
		}
	}
}
