package sd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/sdpipe/sdpipe/pipeline"
)

// TestEngineError checks that the engine's errors, as Submit and Wait
// return them, match this package's sentinels and error types and keep
// matching the context's errors.
func TestEngineError(t *testing.T) {
	stage := func(err error) error { return &pipeline.StageError{Stage: "decode", Err: err} }
	tests := []struct {
		name string
		err  error
		is   []error
		not  []error
	}{
		{"closed at submit", pipeline.ErrClosed, []error{ErrClosed}, []error{context.Canceled}},
		{"closed in flight", fmt.Errorf("%w: %w", pipeline.ErrClosed, context.Canceled), []error{ErrClosed, context.Canceled}, []error{ErrNaN}},
		{"nan", stage(fmt.Errorf("image 0: %w", pipeline.ErrNaN)), []error{ErrNaN}, []error{ErrClosed, ErrInvalidRequest}},
		{"canceled", context.Canceled, []error{context.Canceled}, []error{ErrClosed}},
		{"deadline", context.DeadlineExceeded, []error{context.DeadlineExceeded}, nil},
		{"invalid at submit", &pipeline.RequestError{Field: "Width", Reason: "odd"}, []error{ErrInvalidRequest}, []error{ErrClosed}},
		{"invalid in a stage", stage(&pipeline.RequestError{Field: "Prompt", Reason: "bad"}), []error{ErrInvalidRequest}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := engineError(tt.err)
			for _, target := range tt.is {
				if !errors.Is(got, target) {
					t.Errorf("engineError(%v) does not match %v", tt.err, target)
				}
			}
			for _, target := range tt.not {
				if errors.Is(got, target) {
					t.Errorf("engineError(%v) matches %v", tt.err, target)
				}
			}
			var re *RequestError
			if errors.As(tt.err, new(*pipeline.RequestError)) != errors.As(got, &re) {
				t.Errorf("engineError(%v): errors.As *RequestError = %v", tt.err, re)
			}
		})
	}
	if got := engineError(&pipeline.RequestError{Field: "Width", Reason: "65 is odd"}); got.Error() != "sd: invalid request: Width: 65 is odd" {
		t.Errorf("message %q", got)
	}
	if engineError(pipeline.ErrClosed) != ErrClosed || engineError(context.Canceled) != context.Canceled || engineError(nil) != nil {
		t.Error("sentinels are not returned as themselves")
	}
}
