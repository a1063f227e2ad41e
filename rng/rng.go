package rng

import (
	"errors"
	"fmt"
	"math"
)

// Source is a seeded standard-normal generator. Randn fills dst as one call
// of the underlying library's randn with len(dst) values, continuing the
// stream left by earlier calls. Implementations are not safe for concurrent
// use.
type Source interface {
	Randn(dst []float32)
}

// Kind names the library whose Gaussian stream a [Source] reproduces.
type Kind int

// The kinds of [Source] that [New] builds.
const (
	// KindNumpy is np.random.RandomState(seed).randn ([Numpy]), as
	// diffusers' ONNX pipelines use it.
	KindNumpy Kind = iota + 1
	// KindTorchCPU is torch.randn with a CPU generator seeded by
	// manual_seed ([Torch]), as diffusers' PyTorch pipelines and ComfyUI use
	// it on CPU.
	KindTorchCPU
)

// ErrUnknownKind is returned (wrapped) by [ParseKind] and [New] for a kind
// they do not know.
var ErrUnknownKind = errors.New("rng: unknown kind")

// ErrSeedRange is returned (wrapped) by [New] for a seed the kind cannot
// take: numpy's RandomState accepts only seeds in [0, 2^32).
var ErrSeedRange = errors.New("rng: seed out of range")

// String returns the canonical name of k: "numpy" or "torch-cpu".
func (k Kind) String() string {
	switch k {
	case KindNumpy:
		return "numpy"
	case KindTorchCPU:
		return "torch-cpu"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// ParseKind returns the Kind named by s: "numpy", or "torch" or "torch-cpu"
// for KindTorchCPU. Any other string gives an error wrapping [ErrUnknownKind].
func ParseKind(s string) (Kind, error) {
	switch s {
	case "numpy":
		return KindNumpy, nil
	case "torch", "torch-cpu":
		return KindTorchCPU, nil
	}
	return 0, fmt.Errorf("%w %q (want numpy, torch or torch-cpu)", ErrUnknownKind, s)
}

// New returns a fresh generator of the given kind seeded with seed. A numpy
// seed must be below 2^32 (else the error wraps [ErrSeedRange]); a torch seed
// may be any uint64, of which torch keeps the low 32 bits. The returned Source
// is not safe for concurrent use.
func New(kind Kind, seed uint64) (Source, error) {
	switch kind {
	case KindNumpy:
		if seed > math.MaxUint32 {
			return nil, fmt.Errorf("%w: numpy seed %d is not below 2^32", ErrSeedRange, seed)
		}
		return NewNumpy(uint32(seed)), nil
	case KindTorchCPU:
		return NewTorch(seed), nil
	}
	return nil, fmt.Errorf("%w %v", ErrUnknownKind, kind)
}
