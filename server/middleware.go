package server

import (
	"cmp"
	"crypto/subtle"
	"net/http"
	"runtime/debug"
)

type statusWriter struct {
	http.ResponseWriter
	code    int
	written bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.written {
		w.code, w.written = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.written {
		w.code, w.written = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts requests by route and status and sets X-Replica-ID.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.ReplicaID != "" {
			w.Header().Set("X-Replica-ID", s.cfg.ReplicaID)
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		s.met.request(cmp.Or(r.Pattern, "other"), sw.code)
	})
}

// recoverer turns a panic in a handler into a 500, so that no panic
// reaches a client's connection and the other requests go on.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("server: panic", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				writeError(w, &apiError{Status: http.StatusInternalServerError, Msg: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// auth checks the bearer token when one is configured.
func (s *Server) auth(next http.Handler) http.Handler {
	if s.cfg.Token == "" {
		return next
	}
	want := []byte("Bearer " + s.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sdpipe"`)
			writeError(w, &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
