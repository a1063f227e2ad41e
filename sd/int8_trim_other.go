//go:build !linux || !cgo

package sd

func tuneHeap() {}

func trimHeap() bool { return false }
