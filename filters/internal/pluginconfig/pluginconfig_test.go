package pluginconfig

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

type knobs struct {
	Name  string
	Every uint64
	Code  uint32
	On    bool
}

func decodeKnobs(data string) (knobs, error) {
	k := knobs{Name: "default", Every: 7}
	err := Decode([]byte(data), Fields{
		"name":  String(&k.Name),
		"every": Uint(&k.Every, 1000),
		"code":  Uint(&k.Code, 599),
		"on":    Bool(&k.On),
	})
	return k, err
}

func TestDecodeAccepts(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     knobs
	}{
		{"empty input is the empty object", "", knobs{Name: "default", Every: 7}},
		{"blank input", " \n\t", knobs{Name: "default", Every: 7}},
		{"empty object", "{}", knobs{Name: "default", Every: 7}},
		{"all fields", `{"name":"x","every":3,"code":503,"on":true}`, knobs{"x", 3, 503, true}},
		{"blanks everywhere", " {\n \"name\" : \"x\" ,\r\n\t\"on\":false } \n", knobs{Name: "x", Every: 7}},
		{"null keeps the default", `{"name":null,"every":null}`, knobs{Name: "default", Every: 7}},
		{"zero", `{"every":0}`, knobs{Name: "default"}},
		{"max", `{"every":1000}`, knobs{Name: "default", Every: 1000}},
		{"escapes", `{"name":"a\"b\\c\/d\n\t\u00e9\ud83d\ude00"}`, knobs{Name: "a\"b\\c/d\n\té😀", Every: 7}},
		{"lone surrogate becomes U+FFFD", `{"name":"\ud800x"}`, knobs{Name: "\uFFFDx", Every: 7}},
		{"raw UTF-8", `{"name":"1; mode=block – ok"}`, knobs{Name: "1; mode=block – ok", Every: 7}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeKnobs(tc.in)
			if err != nil {
				t.Fatalf("Decode(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("Decode(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"not an object", `[1]`, "must be a JSON object"},
		{"a bare string", `"x"`, "must be a JSON object"},
		{"unterminated object", `{"name":"x"`, "unterminated object"},
		{"missing brace", `{`, "expected a quoted key"},
		{"unquoted key", `{name:"x"}`, "expected a quoted key"},
		{"missing colon", `{"name" "x"}`, "expected ':'"},
		{"trailing comma", `{"name":"x",}`, "expected a quoted key"},
		{"unknown key", `{"nmae":"x"}`, `unknown key "nmae"`},
		{"duplicate key", `{"name":"x","name":"y"}`, `duplicate key "name"`},
		{"string for a number", `{"every":"3"}`, `"every" must be a whole number from 0 to 1000`},
		{"number for a string", `{"name":3}`, `"name" must be a string`},
		{"negative", `{"every":-1}`, "must be a whole number"},
		{"fraction", `{"every":1.5}`, "must be a whole number"},
		{"exponent", `{"every":1e2}`, "must be a whole number"},
		{"above max", `{"code":600}`, `"code" must be a whole number from 0 to 599`},
		{"huge", `{"every":123456789012345678901234567890}`, "must be a whole number"},
		{"leading zero", `{"every":01}`, "leading zero"},
		{"malformed number", `{"every":-}`, "malformed number"},
		{"boolean as string", `{"on":"true"}`, `"on" must be a boolean`},
		{"nested object", `{"name":{"a":1}}`, "nested objects and arrays"},
		{"array", `{"name":["a"]}`, "nested objects and arrays"},
		{"bad literal", `{"on":tru}`, "expected a value"},
		{"data after the object", `{} {}`, "data after the JSON object"},
		{"garbage after the object", `{"on":true}x`, "data after the JSON object"},
		{"raw newline in string", "{\"name\":\"a\nb\"}", "control character"},
		{"unknown escape", `{"name":"\x"}`, `unknown escape \x`},
		{"short unicode escape", `{"name":"\u12"}`, "malformed \\u escape"},
		{"unterminated string", `{"name":"abc`, "unterminated string"},
		{"invalid UTF-8", "{\"name\":\"\xff\"}", "not valid UTF-8"},
		{"not JSON at all", `{bad`, "expected a quoted key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeKnobs(tc.in)
			if err == nil {
				t.Fatalf("Decode(%q) accepted it", tc.in)
			}
			var perr *Error
			if !errors.As(err, &perr) {
				t.Errorf("Decode(%q) error %T is not a *pluginconfig.Error", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Decode(%q) = %q, want it to contain %q", tc.in, err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "invalid plugin configuration: ") {
				t.Errorf("error %q lacks the common prefix", err)
			}
		})
	}
}

func TestErrorOffset(t *testing.T) {
	_, err := decodeKnobs(`{"name": 3}`)
	var perr *Error
	if !errors.As(err, &perr) || perr.Offset != 9 {
		t.Fatalf("want the offset of the bad value (9), got %v", err)
	}
	if !strings.HasSuffix(err.Error(), "(at byte 9)") {
		t.Errorf("error %q does not say where", err)
	}
}

func TestCheckHeaderValue(t *testing.T) {
	for _, tc := range []struct {
		value string
		ok    bool
	}{
		{"DENY", true},
		{"1; mode=block", true},
		{"tab\tis fine", true},
		{"", true},
		{"a\r\nset-cookie: x", false},
		{"nul\x00", false},
		{"del\x7f", false},
	} {
		err := CheckHeaderValue("k", tc.value)
		if (err == nil) != tc.ok {
			t.Errorf("CheckHeaderValue(%q) = %v, want ok=%v", tc.value, err, tc.ok)
		}
	}
}

// FuzzStringsAgreeWithEncodingJSON checks our string decoding against encoding/json's on any
// input both accept as {"name": <string>}. `go test` runs the seeds; `go test -fuzz` explores.
func FuzzStringsAgreeWithEncodingJSON(f *testing.F) {
	for _, seed := range []string{
		`"plain"`, `"a\"b"`, `"\u00e9"`, `"\ud83d\ude00"`, `"\ud800"`, `"\ud800\u0041"`,
		`"\udc00\ud800"`, `"\/\b\f\n\r\t"`, `"é"`, `""`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, lit string) {
		doc := `{"name":` + lit + `}`
		var ours string
		errOurs := Decode([]byte(doc), Fields{"name": String(&ours)})
		var theirs struct {
			Name *string `json:"name"`
		}
		errTheirs := json.Unmarshal([]byte(doc), &theirs)
		if errOurs != nil || errTheirs != nil || theirs.Name == nil {
			return // we are stricter (invalid UTF-8, null): only compare what both accept
		}
		if ours != *theirs.Name {
			t.Errorf("%s: ours %q, encoding/json %q", doc, ours, *theirs.Name)
		}
	})
}

// FuzzNeverLaxerThanJSON: whatever Decode accepts (but blank input) is valid JSON, and Decode
// never panics.
func FuzzNeverLaxerThanJSON(f *testing.F) {
	for _, seed := range []string{
		`{}`, `{"name":"x","every":3}`, `{"on":true}`, `{"every":1e2}`, `{"name":"\ud800"}`,
		`{"every":-0}`, `{"code":599} `, `{"name":null}`, `{`, `{"name":"x",}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if _, err := decodeKnobs(in); err == nil && strings.TrimSpace(in) != "" && !json.Valid([]byte(in)) {
			t.Errorf("Decode accepted %q, which is not valid JSON", in)
		}
	})
}
