package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/sd"
)

// apiError is an error with its HTTP status. It is written as
// {"error": {"message", "type", "param", "code"}}, the shape OpenAI's
// clients read, on every endpoint.
type apiError struct {
	Status     int
	Type       string // "invalid_request_error", "rate_limit", …
	Param      string // the offending field, when one is
	Msg        string
	RetryAfter int // seconds, for 429 and 503
	// cause is the error behind a 500, for the log: its message may hold
	// paths and library internals, so the client never sees it.
	cause error
}

func (e *apiError) Error() string { return e.Msg }

func badRequest(param, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param, Msg: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"error":{"message":"internal error: encoding the response","type":"server_error","code":500}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// writeError writes err in the JSON error shape. A 500's cause goes to the
// log under a reference the client gets instead.
func (s *Server) writeError(w http.ResponseWriter, err error) {
	e := asAPIError(err)
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	msg := e.Msg
	if e.cause != nil {
		ref := newID()[:12]
		s.log.Error("server: internal error", "ref", ref, "err", e.cause)
		msg = fmt.Sprintf("%s (reference %s in the server's log)", msg, ref)
	}
	type body struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   string `json:"param,omitempty"`
		Code    int    `json:"code"`
	}
	writeJSON(w, e.Status, map[string]body{"error": {Message: msg, Type: e.Type, Param: e.Param, Code: e.Status}})
}

// asAPIError maps any error of a request to its status and message.
func asAPIError(err error) *apiError {
	var ae *apiError
	var re *sd.RequestError
	var me *sd.MemoryError
	switch {
	case errors.As(err, &ae):
		if ae.Type == "" {
			c := *ae
			c.Type = "invalid_request_error"
			if c.Status >= 500 {
				c.Type = "server_error"
			}
			return &c
		}
		return ae
	case errors.As(err, &re):
		return badRequest(re.Field, "%s: %s", re.Field, re.Reason)
	case errors.As(err, &me):
		param := "width"
		if me.Images > 1 && me.FitImages >= 1 {
			param = "images"
		}
		return badRequest(param, "%s (the server's memory budget)", strings.TrimPrefix(me.Error(), "sd: "))
	case errors.Is(err, errShutdown):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "canceled: the server is shutting down; send the request again (another replica takes it)", RetryAfter: 1}
	case errors.Is(err, sd.ErrClosed):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "the engine is closed", RetryAfter: 1}
	case errors.Is(err, errInterrupted):
		return &apiError{Status: http.StatusConflict, Type: "interrupted", Msg: "interrupted by /sdapi/v1/interrupt"}
	case errors.Is(err, errCanceled):
		// nobody reads it when the client left; an async job's result says so
		return &apiError{Status: http.StatusConflict, Type: "canceled", Msg: "canceled"}
	case errors.Is(err, sd.ErrNaN):
		return &apiError{Status: http.StatusInternalServerError, Type: "server_error", Msg: "the model's output is not finite (NaN or infinity)", cause: err}
	}
	return &apiError{Status: http.StatusInternalServerError, Type: "server_error", Msg: "internal error", cause: err}
}

// decode reads r's body under the server's limits (see readBody) into v,
// which must be a pointer to a struct, and reports what is wrong with it
// in terms a client can act on. release gives the body's memory back to
// the budget; call it once the decoded value no longer holds large parts
// of the body.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) (release func(), err error) {
	b, release, err := s.readBody(w, r)
	if err != nil {
		return nil, err
	}
	if err := unmarshal(b, v); err != nil {
		release()
		return nil, err
	}
	return release, nil
}

// unmarshal decodes one JSON object into v.
func unmarshal(b []byte, v any) error {
	var first byte
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			first = c
			break
		}
	}
	switch first {
	case 0:
		return badRequest("", "empty request body: send a JSON object")
	case 'n':
		if string(bytes.TrimSpace(b)) == "null" {
			return badRequest("", "the body must be a JSON object, not null")
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return badRequest("", "malformed JSON: data after the object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("", "malformed JSON: data after the object")
	}
	return nil
}

func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &se):
		return badRequest("", "malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		if te.Field == "" {
			return badRequest("", "the body must be a JSON object, not %s", te.Value)
		}
		return badRequest(te.Field, "%s: wrong type: got %s, want %s", te.Field, te.Value, te.Type)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("", "malformed JSON: unexpected end of input")
	}
	return badRequest("", "malformed JSON: %v", err)
}
