package server

import (
	"cmp"
	"context"
	"crypto/subtle"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

// statusWriter keeps a response's status, and gives the response
// writeTimeout from its first byte: a client that stops reading cannot
// hold its handler for ever (a generation before it is not counted).
type statusWriter struct {
	http.ResponseWriter
	code         int
	written      bool
	writeTimeout time.Duration
}

func (w *statusWriter) start(code int) {
	if w.written {
		return
	}
	w.code, w.written = code, true
	if w.writeTimeout > 0 {
		_ = http.NewResponseController(w.ResponseWriter).SetWriteDeadline(time.Now().Add(w.writeTimeout))
	}
}

func (w *statusWriter) WriteHeader(code int) {
	w.start(code)
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.start(http.StatusOK)
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// instrument counts requests by route and status and sets X-Replica-ID.
func (s *Server) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.ReplicaID != "" {
			w.Header().Set("X-Replica-ID", s.cfg.ReplicaID)
		}
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK, writeTimeout: s.cfg.WriteTimeout}
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
				s.writeError(w, &apiError{Status: http.StatusInternalServerError, Msg: "internal error"})
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type identityKey struct{}

// identity returns the identity auth gave r: the name of its bearer token,
// or its client's IP address on a server without tokens.
func identity(r *http.Request) string {
	if id, ok := r.Context().Value(identityKey{}).(string); ok {
		return id
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return "ip-" + host
}

// auth checks the bearer token when the server has tokens, before the body
// is read, and records the caller's identity.
func (s *Server) auth(next http.Handler) http.Handler {
	if len(s.tokens) == 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := s.bearer(r.Header.Get("Authorization"))
		if !ok {
			refuseEarly(w, r)
			w.Header().Set("WWW-Authenticate", `Bearer realm="sdpipe"`)
			s.writeError(w, &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, id)))
	})
}

// bearer returns the identity of an Authorization header's token. The
// scheme is case-insensitive (RFC 9110 §11.1); every token is compared in
// constant time.
func (s *Server) bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	found := ""
	for t, id := range s.tokens {
		if subtle.ConstantTimeCompare([]byte(tok), []byte(t)) == 1 {
			found = id
		}
	}
	return found, found != ""
}
