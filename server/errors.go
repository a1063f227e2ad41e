package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/sdpipe/sdpipe/pipeline"
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

func writeError(w http.ResponseWriter, err error) {
	e := asAPIError(err)
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	type body struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   string `json:"param,omitempty"`
		Code    int    `json:"code"`
	}
	writeJSON(w, e.Status, map[string]body{"error": {Message: e.Msg, Type: e.Type, Param: e.Param, Code: e.Status}})
}

// asAPIError maps any error of a request to its status and message.
func asAPIError(err error) *apiError {
	var ae *apiError
	var re *pipeline.RequestError
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
	case errors.Is(err, errShutdown):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "canceled: the server is shutting down", RetryAfter: 1}
	case errors.Is(err, pipeline.ErrClosed):
		return &apiError{Status: http.StatusServiceUnavailable, Type: "unavailable", Msg: "the engine is closed", RetryAfter: 1}
	case errors.Is(err, errInterrupted):
		return &apiError{Status: http.StatusConflict, Type: "interrupted", Msg: "interrupted by /sdapi/v1/interrupt"}
	case errors.Is(err, errCanceled):
		// nobody reads it when the client left; an async job's result says so
		return &apiError{Status: http.StatusConflict, Type: "canceled", Msg: "canceled"}
	}
	return &apiError{Status: http.StatusInternalServerError, Type: "server_error", Msg: err.Error()}
}

// decodeJSON reads r's body (at most limit bytes) into v, which must be a
// pointer to a struct, and reports what is wrong with it in terms a client
// can act on.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body := http.MaxBytesReader(w, r.Body, limit)
	b, err := io.ReadAll(body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{Status: http.StatusRequestEntityTooLarge, Type: "invalid_request_error", Msg: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
		}
		return badRequest("", "reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return badRequest("", "empty request body: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
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
