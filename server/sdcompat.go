package server

import (
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/scheduler"
)

// The few names the service needs that package sd does not own yet on
// main: sd's own Request, generators, PNG writer and scheduler list are on
// their way (the "edge" reshaping of sd); when they land, these become
// sd.EncodePNG, sd.Schedulers and sd.MaxGuidance,
// and this file goes away.

var (
	encodePNG  = pipeline.EncodePNG
	schedulers = scheduler.Names
)

const maxGuidance = pipeline.MaxGuidance

// engineDefaults returns the model's default image size, when the engine
// tells it (sd.Model.Defaults, once sd has it); 0, 0 otherwise.
func engineDefaults(Engine) (width, height int) { return 0, 0 }
