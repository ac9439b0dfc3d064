// Package secheaders is the logic of the security-headers filter: which headers it adds to
// requests and responses, and which it removes, for a given plugin configuration.
package secheaders

import "filterrelease.dev/filters/internal/pluginconfig"

// Config is the filter's plugin configuration, e.g. {"frame_options": "DENY",
// "content_type_options": "nosniff", "xss_protection": "1; mode=block", "version": "v1.1.0"}.
type Config struct {
	FrameOptions       string // frame_options: x-frame-options
	ContentTypeOptions string // content_type_options: x-content-type-options
	XSSProtection      string // xss_protection: x-xss-protection
	Version            string // version: x-filter-version
}

// Defaults apply to knobs the configuration leaves out (or sets to "").
var Defaults = Config{
	FrameOptions:       "DENY",
	ContentTypeOptions: "nosniff",
	XSSProtection:      "1; mode=block",
	Version:            "unversioned",
}

// Parse decodes and validates a plugin configuration, filling in Defaults.
func Parse(data []byte) (Config, error) {
	var c Config
	err := pluginconfig.Decode(data, pluginconfig.Fields{
		"frame_options":        pluginconfig.String(&c.FrameOptions),
		"content_type_options": pluginconfig.String(&c.ContentTypeOptions),
		"xss_protection":       pluginconfig.String(&c.XSSProtection),
		"version":              pluginconfig.String(&c.Version),
	})
	if err != nil {
		return Config{}, err
	}
	for _, f := range []struct {
		name       string
		value      *string
		defaultVal string
	}{
		{"frame_options", &c.FrameOptions, Defaults.FrameOptions},
		{"content_type_options", &c.ContentTypeOptions, Defaults.ContentTypeOptions},
		{"xss_protection", &c.XSSProtection, Defaults.XSSProtection},
		{"version", &c.Version, Defaults.Version},
	} {
		if *f.value == "" {
			*f.value = f.defaultVal
		}
		if err := pluginconfig.CheckHeaderValue(f.name, *f.value); err != nil {
			return Config{}, err
		}
	}
	return c, nil
}

// Header is one header to set.
type Header struct{ Name, Value string }

// ActiveHeader marks requests that went through the filter (seen by the upstream).
var ActiveHeader = Header{"x-envoy-wasm-filter", "active"}

// RemovedResponseHeaders are dropped from every response: they tell the world what runs there.
var RemovedResponseHeaders = []string{"server"}

// ResponseHeaders are the headers the filter sets (replacing any upstream value) on responses.
func (c Config) ResponseHeaders() []Header {
	return []Header{
		{"x-content-type-options", c.ContentTypeOptions},
		{"x-frame-options", c.FrameOptions},
		{"x-xss-protection", c.XSSProtection},
		{pluginconfig.VersionHeader, c.Version},
	}
}
