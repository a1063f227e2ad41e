package testenv

import (
	"os"
	"testing"
)

// Measure starts a test that runs only when asked and needs ONNX Runtime,
// as the measurements do: it returns $name (a model folder, a list, a
// switch), and skips the test when name is unset, saying "set name to
// usage", or when the library cannot be found (RequireORT).
func Measure(t testing.TB, name, usage string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Skipf("set %s to %s", name, usage)
	}
	RequireORT(t)
	return v
}
