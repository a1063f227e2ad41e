package sd

// TrimHeap is trimHeap for the measurements.
func TrimHeap() bool { return trimHeap() }
