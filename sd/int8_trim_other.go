//go:build !linux || !cgo

package sd

func trimHeap() bool { return false }
