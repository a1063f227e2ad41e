package testenv

import (
	"os"
	"testing"
)

// AsMain makes a test binary the program under test when $env is "1": it
// runs main and exits. A program's test calls it from init, so that a
// child the test starts (a replica, a cluster's job) is the test binary
// run with env=1 and the program's own arguments: exactly the code under
// test, with no second build, and main runs before the testing flags are
// parsed. main exits on an error and returns on success.
func AsMain(env string, main func()) {
	if os.Getenv(env) == "1" {
		main()
		os.Exit(0)
	}
}

// Unavailable skips the test for want of what msg says (a tool not
// installed, a service that cannot start), or fails it when $require is
// set: CI sets it where it installed the tools, so that the test cannot
// pass by skipping there.
func Unavailable(t testing.TB, require, msg string) {
	t.Helper()
	if os.Getenv(require) != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
