#!/usr/bin/env python3
"""Generate testdata/streams.json: torch and numpy Gaussian streams that
../shared/reference/rng/randn.json does not cover (torch.randn with fewer than
16 values, which takes torch's scalar normal_distribution<double> path with
its cached second value; consecutive calls on one generator; 64-bit torch
seeds).

Made with Debian bookworm's python3-torch 1.13.1+dfsg-4 (torch.__version__
1.13.0a0, CPU capability AVX2) and python3-numpy 1.24.2, the versions that
produced the shared reference:

    python3 rng/testdata/gen_streams.py > rng/testdata/streams.json

Values are float32 bit patterns (little-endian uint32) so they compare exactly.
"""
import json

import numpy as np
import torch

SEEDS = [0, 1, 42, 1234, 2**32 - 1]


def bits(a):
    return [int(x) for x in np.asarray(a, dtype=np.float32).view(np.uint32)]


def torch_calls(seed, sizes):
    g = torch.Generator("cpu").manual_seed(seed)
    return [bits(torch.randn(n, generator=g, dtype=torch.float32).numpy()) for n in sizes]


def numpy_calls(seed, sizes):
    rs = np.random.RandomState(seed)
    return [bits(rs.randn(n).astype(np.float32)) for n in sizes]


cases = []
for seed in SEEDS:
    # A fresh generator for each small size: the scalar path.
    for n in range(1, 16):
        cases.append({"kind": "torch-cpu", "seed": seed, "sizes": [n], "values": torch_calls(seed, [n])})
# Consecutive calls mixing both torch paths and odd numpy sizes (gauss cache).
for seed in (0, 42, 2**32 - 1):
    sizes = [3, 1, 20, 5, 16, 2, 33, 7, 1]
    cases.append({"kind": "torch-cpu", "seed": seed, "sizes": sizes, "values": torch_calls(seed, sizes)})
    cases.append({"kind": "numpy", "seed": seed, "sizes": sizes, "values": numpy_calls(seed, sizes)})
# torch keeps only the low 32 bits of a 64-bit seed.
for seed in (2**32 + 7, 2**64 - 1, 0x123456789ABCDEF0):
    sizes = [5, 40]
    cases.append({"kind": "torch-cpu", "seed": seed, "sizes": sizes, "values": torch_calls(seed, sizes)})

print(json.dumps({
    "generated_with": {"torch": torch.__version__, "numpy": np.__version__,
                       "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()
                       if hasattr(torch.backends, "cpu") else "AVX2"},
    "cases": cases,
}, separators=(",", ":")))
