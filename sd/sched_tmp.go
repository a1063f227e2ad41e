package sd

// TEMPORARY until branch scheduler is merged: replaced by scheduler.Config.
type schedulerConfig struct{}

func (in *inspector) readScheduler() *schedulerConfig {
	if err := readJSON(in.path(schedulerFile), new(map[string]any)); err != nil {
		in.fail(schedulerFile, err)
		return nil
	}
	return &schedulerConfig{}
}
