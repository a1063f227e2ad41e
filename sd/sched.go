package sd

import (
	"os"

	"github.com/sdpipe/sdpipe/scheduler"
)

// readScheduler reads scheduler/scheduler_config.json and checks that it
// names a scheduler the engine runs, with settings it accepts.
func (in *inspector) readScheduler() *scheduler.Config {
	data, err := os.ReadFile(in.path(schedulerFile))
	if err != nil {
		in.fail(schedulerFile, fileError(err))
		return nil
	}
	if err := unmarshalJSON(data, new(any)); err != nil { // says where the syntax breaks
		in.fail(schedulerFile, err)
		return nil
	}
	c, err := scheduler.ParseConfig(data)
	if err == nil {
		err = scheduler.Check(c) // an unknown class fails here, not at the first request
	}
	if err != nil {
		in.fail(schedulerFile, err)
		return nil
	}
	return c
}
