package server

import "github.com/sdpipe/sdpipe/sd"

// The few names the service takes from package sd under its own names.

var (
	encodePNG  = sd.EncodePNG
	schedulers = sd.Schedulers
)

const maxGuidance = sd.MaxGuidance

// engineDefaults returns the model's default image size, when the engine
// tells it (sd.Model.Defaults, once sd has it); 0, 0 otherwise.
func engineDefaults(Engine) (width, height int) { return 0, 0 }
