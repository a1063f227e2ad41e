package server

import "github.com/sdpipe/sdpipe/sd"

// The few names the service takes from package sd under its own names.

var (
	encodePNG  = sd.EncodePNG
	schedulers = sd.Schedulers
)

const maxGuidance = sd.MaxGuidance

// engineDefaults returns the model's default image size.
func engineDefaults(e Engine) (width, height int) {
	d := e.Defaults()
	return d.Width, d.Height
}
