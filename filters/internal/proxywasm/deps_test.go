package proxywasm

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Packages a filter module must not link: os starts the Go runtime's network poller (through
// internal/poll), which calls WASI poll_oneoff whenever the scheduler idles with a timer
// pending; hosts that answer it with ENOSYS crash the module (golang/go#78513). fmt, time and
// encoding/json all import os. See filters/README.md.
var forbidden = []string{"os", "fmt", "time", "internal/poll", "encoding/json", "net"}

func TestModulesDoNotLinkTheNetworkPoller(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	// go test caches a result by the files the test itself opens, not by what `go list` reads:
	// read every Go source of the module so that editing any import reruns this test.
	err := filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".go") {
			_, err = os.ReadFile(path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-deps", "filterrelease.dev/filters/cmd/...")
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		deps[line] = true
	}
	if !deps["filterrelease.dev/filters/internal/proxywasm"] {
		t.Fatalf("go list did not see the filters: %s", out)
	}
	for _, p := range forbidden {
		if deps[p] {
			t.Errorf("a filter module links %q (run: GOOS=wasip1 GOARCH=wasm go list -deps ./cmd/...)", p)
		}
	}
}
