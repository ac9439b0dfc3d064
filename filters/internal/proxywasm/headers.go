package proxywasm

// The header functions below work on the current stream's header maps; call them from the
// matching callback (or while the stream is paused from it).

// GetHTTPRequestHeader returns a request header's value; the error matches ErrNotFound when it
// is absent.
func GetHTTPRequestHeader(name string) (string, error) { return getHeader(mapRequestHeaders, name) }

// AddHTTPRequestHeader adds a request header (another value if the name exists).
func AddHTTPRequestHeader(name, value string) error {
	return addHeader(mapRequestHeaders, name, value)
}

// ReplaceHTTPRequestHeader sets a request header, replacing any value it had.
func ReplaceHTTPRequestHeader(name, value string) error {
	return replaceHeader(mapRequestHeaders, name, value)
}

// RemoveHTTPRequestHeader removes a request header (no error when absent).
func RemoveHTTPRequestHeader(name string) error { return removeHeader(mapRequestHeaders, name) }

// GetHTTPResponseHeader returns a response header's value; the error matches ErrNotFound when
// it is absent.
func GetHTTPResponseHeader(name string) (string, error) {
	return getHeader(mapResponseHeaders, name)
}

// AddHTTPResponseHeader adds a response header (another value if the name exists).
func AddHTTPResponseHeader(name, value string) error {
	return addHeader(mapResponseHeaders, name, value)
}

// ReplaceHTTPResponseHeader sets a response header, replacing any value it had.
func ReplaceHTTPResponseHeader(name, value string) error {
	return replaceHeader(mapResponseHeaders, name, value)
}

// RemoveHTTPResponseHeader removes a response header (no error when absent).
func RemoveHTTPResponseHeader(name string) error { return removeHeader(mapResponseHeaders, name) }
