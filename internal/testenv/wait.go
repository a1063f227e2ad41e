package testenv

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// WaitOK polls url with GET every interval until it answers 200 OK, as a
// test waits for a server it started to be ready. When limit passes first
// it fails the test with the last status or error, followed by log() when
// log is not nil (the server's output).
func WaitOK(t testing.TB, url string, limit, interval time.Duration, log func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		r, err := http.Get(url)
		last := fmt.Sprint(err)
		if err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
			last = r.Status
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("GET %s: no 200 OK in %v: %s", url, limit, last)
			if log != nil {
				msg += "\n" + log()
			}
			t.Fatal(msg)
		}
		time.Sleep(interval)
	}
}
