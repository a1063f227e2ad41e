"""Writes the torch.save fixtures of internal/torchfile's tests with torch itself.

Run with Debian's python3-torch (1.13.1): /usr/bin/python3 gen.py
Values are arange-based so that the Go test can recompute them.
"""
import collections
import sys
import types

import numpy as np
import torch

# A stand-in for PyTorch Lightning's ModelCheckpoint class, under its real
# module path, so that the checkpoint's "callbacks" entry is pickled the way a
# Lightning training run writes it (a class used as a dict key, a numpy scalar).
mod = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")


class ModelCheckpoint:
    pass


ModelCheckpoint.__module__ = mod.__name__
mod.ModelCheckpoint = ModelCheckpoint
for name in ["pytorch_lightning", "pytorch_lightning.callbacks", mod.__name__]:
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules[mod.__name__] = mod


def ar(n, dtype, start=0):
    return (torch.arange(n, dtype=torch.float64) * 0.25 + start).to(dtype)


# A Lightning-style checkpoint: nested state_dict, fp32/fp16/bf16/int64,
# a view into a shared storage (non-zero storage offset), a Parameter.
base = ar(24, torch.float32)
sd = collections.OrderedDict()
sd["model.diffusion_model.out.2.weight"] = ar(2 * 3 * 3 * 3, torch.float32).reshape(2, 3, 3, 3)
sd["model.diffusion_model.out.2.bias"] = torch.nn.Parameter(ar(2, torch.float32, 1), requires_grad=False)
sd["first_stage_model.quant_conv.weight"] = ar(8, torch.float16).reshape(2, 4, 1, 1)
sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = ar(5, torch.bfloat16, -1)
sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(7).reshape(1, 7)
sd["view.first"] = base[:6].reshape(2, 3)
sd["view.second"] = base[10:22].reshape(3, 4)
sd["scalar"] = torch.tensor(3.5)
ckpt = {
    "epoch": 6,
    "global_step": 470000,
    "pytorch-lightning_version": "1.4.2",
    "state_dict": sd,
    "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": np.float64(0.5), "best_k_models": {}}},
    "lr_schedulers": [],
}
torch.save(ckpt, "lightning.ckpt")

# AUTOMATIC1111's textual-inversion .pt (modules/textual_inversion/textual_inversion.py, save()).
vec = ar(3 * 8, torch.float32).reshape(3, 8)
torch.save({
    "string_to_token": {"*": 265},
    "string_to_param": {"*": vec},
    "name": "tiny-emb",
    "step": 1500,
    "sd_checkpoint": "abcdef12",
    "sd_checkpoint_name": "tiny-sd",
}, "a1111-embedding.pt")

# The original textual-inversion code's embeddings.pt: string_to_param is an
# nn.ParameterDict (a module pickled with copyreg and its __dict__).
pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(ar(2 * 8, torch.float32, 2).reshape(2, 8))})
torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": pd}, "ldm-embedding.pt")


# The legacy (pre-1.6) serialization, which the reader refuses with advice.
torch.save({"w": ar(4, torch.float32)}, "legacy.pt", _use_new_zipfile_serialization=False)
print("wrote lightning.ckpt, a1111-embedding.pt, ldm-embedding.pt, legacy.pt with torch", torch.__version__)
