package ckpt

import (
	"io"

	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/torchfile"
)

// readTorchArchive lists the tensors of a PyTorch zip archive; a
// checkpoint's "state_dict" is unwrapped.
func readTorchArchive(r io.ReaderAt, size int64) ([]safetensors.Info, error) {
	return torchfile.Read(r, size)
}
