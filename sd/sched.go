package sd

import (
	"os"

	"github.com/sdpipe/sdpipe/scheduler"
)

// readScheduler reads scheduler/scheduler_config.json.
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
	if err != nil {
		in.fail(schedulerFile, err)
		return nil
	}
	return c
}
