// Package pluginconfig reads the JSON plugin configuration the filters of this project get at
// plugin start (proxy_on_configure): one flat JSON object whose keys are bound to Go variables.
//
// It is strict, so that a mistyped knob rejects the configuration instead of being ignored:
// unknown keys, duplicate keys, wrong value types, nested objects or arrays and trailing data
// are errors. null leaves a variable at its default, as with encoding/json.
//
// It is hand-written rather than encoding/json on purpose: encoding/json imports fmt and os,
// and importing os in a wasip1 module starts the Go runtime's network poller, which then calls
// WASI poll_oneoff when the scheduler idles with a timer pending (e.g. around GC). Envoy hosts
// that answer poll_oneoff with ENOSYS crash such a module ("fatal error: poll_oneoff failed",
// golang/go#78513). Without os the poller never starts. See filters/README.md.
package pluginconfig

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// VersionHeader is the response header every filter sets to the configured "version", so that
// two rollouts of the same module with different configurations differ visibly.
const VersionHeader = "x-filter-version"

// ChainHeader is the response header every filter instance appends its "version" to (never
// replaces): a proxy that ran two instances of a filter answers with two values, so a test can
// tell "two versions at once" from "one version", which VersionHeader alone cannot.
const ChainHeader = "x-filter-chain"

// Field binds one JSON key to a Go variable; make it with String, Uint or Bool.
type Field struct {
	kind string // "a string", "a whole number", "a boolean": for error messages
	set  func(v value) error
}

// Fields maps each accepted key to its Field.
type Fields map[string]Field

// value is one scalar JSON value as scanned.
type value struct {
	kind byte   // 's' string, 'n' number, 'b' boolean
	text string // the decoded string, the number's literal text, or "true"/"false"
}

var errWrongType = errors.New("wrong type")

// String binds a JSON string.
func String(p *string) Field {
	return Field{kind: "a string", set: func(v value) error {
		if v.kind != 's' {
			return errWrongType
		}
		*p = v.text
		return nil
	}}
}

// Bool binds a JSON boolean.
func Bool(p *bool) Field {
	return Field{kind: "a boolean", set: func(v value) error {
		if v.kind != 'b' {
			return errWrongType
		}
		*p = v.text == "true"
		return nil
	}}
}

// Uint binds a JSON number that must be a whole number in [0, max]. Fractions, exponents and
// negative numbers are rejected.
func Uint[T ~uint8 | ~uint16 | ~uint32 | ~uint64](p *T, maxValue T) Field {
	kind := "a whole number from 0 to " + strconv.FormatUint(uint64(maxValue), 10)
	return Field{kind: kind, set: func(v value) error {
		if v.kind != 'n' {
			return errWrongType
		}
		n, err := strconv.ParseUint(v.text, 10, 64)
		if err != nil || n > uint64(maxValue) {
			return errWrongType
		}
		*p = T(n)
		return nil
	}}
}

// Error is a configuration that was not accepted.
type Error struct {
	Offset int // byte offset in the input where the problem was found; -1: not a syntax error
	Msg    string
}

func (e *Error) Error() string {
	if e.Offset < 0 {
		return "invalid plugin configuration: " + e.Msg
	}
	return "invalid plugin configuration: " + e.Msg + " (at byte " + strconv.Itoa(e.Offset) + ")"
}

// Invalid is an Error for a well-formed configuration whose values do not make sense.
func Invalid(msg string) error { return &Error{-1, msg} }

// Decode reads data, one JSON object, into fields. Empty (or all-blank) data is the empty
// object. Keys not in fields, and keys given twice, are errors.
func Decode(data []byte, fields Fields) error {
	s := &scanner{data: data}
	s.skipSpace()
	if s.eof() {
		return nil
	}
	if s.peek() != '{' {
		return s.fail("the configuration must be a JSON object")
	}
	s.pos++
	seen := map[string]bool{}
	s.skipSpace()
	if !s.eof() && s.peek() == '}' {
		s.pos++
		return s.end()
	}
	for {
		s.skipSpace()
		keyAt := s.pos
		if s.eof() || s.peek() != '"' {
			return s.fail("expected a quoted key")
		}
		key, err := s.str()
		if err != nil {
			return err
		}
		s.skipSpace()
		if s.eof() || s.peek() != ':' {
			return s.fail("expected ':' after key " + strconv.Quote(key))
		}
		s.pos++
		s.skipSpace()
		valueAt := s.pos
		v, isNull, err := s.scalar()
		if err != nil {
			return err
		}
		f, known := fields[key]
		switch {
		case !known:
			return &Error{keyAt, "unknown key " + strconv.Quote(key)}
		case seen[key]:
			return &Error{keyAt, "duplicate key " + strconv.Quote(key)}
		}
		seen[key] = true
		if !isNull {
			if f.set(v) != nil {
				return &Error{valueAt, strconv.Quote(key) + " must be " + f.kind}
			}
		}
		s.skipSpace()
		if s.eof() {
			return s.fail("unterminated object")
		}
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return s.end()
		default:
			return s.fail("expected ',' or '}'")
		}
	}
}

// CheckHeaderValue rejects a value that cannot be sent as an HTTP header value: control
// characters (CR, LF, NUL, ...) other than horizontal tab.
func CheckHeaderValue(key, v string) error {
	if strings.ContainsFunc(v, func(r rune) bool { return (r < 0x20 && r != '\t') || r == 0x7f }) {
		return Invalid(strconv.Quote(key) + " has a control character")
	}
	return nil
}

type scanner struct {
	data []byte
	pos  int
}

func (s *scanner) eof() bool  { return s.pos >= len(s.data) }
func (s *scanner) peek() byte { return s.data[s.pos] }

func (s *scanner) fail(msg string) error {
	if s.eof() {
		msg += ", got the end of the input"
	}
	return &Error{s.pos, msg}
}

func (s *scanner) skipSpace() {
	for !s.eof() {
		switch s.peek() {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// end accepts only blanks after the closing brace.
func (s *scanner) end() error {
	s.skipSpace()
	if !s.eof() {
		return s.fail("data after the JSON object")
	}
	return nil
}

// scalar scans one value: a string, number, true, false or null.
func (s *scanner) scalar() (v value, isNull bool, err error) {
	if s.eof() {
		return v, false, s.fail("expected a value")
	}
	switch c := s.peek(); {
	case c == '"':
		text, err := s.str()
		return value{'s', text}, false, err
	case c == '-' || ('0' <= c && c <= '9'):
		text, err := s.number()
		return value{'n', text}, false, err
	case c == '{' || c == '[':
		return v, false, s.fail("nested objects and arrays are not accepted")
	}
	for _, lit := range []string{"true", "false", "null"} {
		if strings.HasPrefix(string(s.data[s.pos:min(s.pos+5, len(s.data))]), lit) {
			s.pos += len(lit)
			return value{'b', lit}, lit == "null", nil
		}
	}
	return v, false, s.fail("expected a value")
}

// number scans a JSON number (RFC 8259 grammar) and returns its literal text.
func (s *scanner) number() (string, error) {
	start := s.pos
	digits := func() int {
		n := 0
		for !s.eof() && '0' <= s.peek() && s.peek() <= '9' {
			s.pos++
			n++
		}
		return n
	}
	if s.peek() == '-' {
		s.pos++
	}
	intStart := s.pos
	if digits() == 0 {
		return "", s.fail("malformed number")
	}
	if s.data[intStart] == '0' && s.pos-intStart > 1 {
		return "", &Error{intStart, "malformed number (leading zero)"}
	}
	if !s.eof() && s.peek() == '.' {
		s.pos++
		if digits() == 0 {
			return "", s.fail("malformed number")
		}
	}
	if !s.eof() && (s.peek() == 'e' || s.peek() == 'E') {
		s.pos++
		if !s.eof() && (s.peek() == '+' || s.peek() == '-') {
			s.pos++
		}
		if digits() == 0 {
			return "", s.fail("malformed number")
		}
	}
	return string(s.data[start:s.pos]), nil
}

// str scans a JSON string starting at its opening quote and returns it decoded. Invalid
// UTF-8 and raw control characters are errors; a lone \u surrogate decodes to U+FFFD.
func (s *scanner) str() (string, error) {
	s.pos++ // the opening quote
	var out []byte
	for {
		if s.eof() {
			return "", s.fail("unterminated string")
		}
		c := s.peek()
		switch {
		case c == '"':
			s.pos++
			if !utf8.Valid(out) {
				return "", s.fail("string is not valid UTF-8")
			}
			return string(out), nil
		case c < 0x20:
			return "", s.fail("control character in string")
		case c != '\\':
			out = append(out, c)
			s.pos++
			continue
		}
		s.pos++ // the backslash
		if s.eof() {
			return "", s.fail("unterminated string")
		}
		esc := s.peek()
		s.pos++
		switch esc {
		case '"', '\\', '/':
			out = append(out, esc)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := s.hex4()
			if !ok {
				return "", s.fail("malformed \\u escape")
			}
			if utf16.IsSurrogate(r) {
				// A pair is two escapes, \uD8xx\uDCxx; anything else is a lone surrogate.
				save := s.pos
				r2 := utf8.RuneError
				if s.pos+1 < len(s.data) && s.data[s.pos] == '\\' && s.data[s.pos+1] == 'u' {
					s.pos += 2
					if lo, ok := s.hex4(); ok {
						r2 = lo
					}
				}
				if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
					r = dec
				} else {
					r = utf8.RuneError
					s.pos = save
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return "", &Error{s.pos - 2, "unknown escape \\" + string(rune(esc))}
		}
	}
}

func (s *scanner) hex4() (rune, bool) {
	if s.pos+4 > len(s.data) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(s.data[s.pos:s.pos+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	s.pos += 4
	return rune(n), true
}
