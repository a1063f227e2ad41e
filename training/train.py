#!/usr/bin/python3
"""Train the tiny default model and export it in the diffusers legacy ONNX layout.

    python3 training/train.py --out models/default

Stages (each saves a checkpoint under --work, so a later run resumes):
  1. tokenizer: a CLIP-format BPE trained on the captions;
  2. vae: an AutoencoderKL-style VAE (64x64x3 <-> 4x8x8) on the images;
  3. latents: the data set encoded once (posterior means), scaling factor 1/std;
  4. unet: text encoder + UNet trained jointly on the latents (epsilon
     prediction, SD's scaled_linear schedule, 10% empty captions for
     classifier-free guidance, min-SNR-5 weighting, EMA weights);
  5. export: ONNX (opset 14, dynamic axes) and the JSON configs.

Everything is seeded; training uses one thread (torch.set_num_threads(1)).
Needs Debian's python3-torch, python3-numpy and python3-onnx only.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import data  # noqa: E402
import nets  # noqa: E402

HIDDEN = 64  # text encoder width = cross-attention dim
UNET_CH = (64, 64)
T = 1000


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float32) ** 2
    return torch.cumprod(1 - betas, dim=0)


def stage_tokenizer(work):
    path = os.path.join(work, "merges.json")
    if os.path.exists(path):
        with open(path) as f:
            return bpe.Tokenizer([tuple(m) for m in json.load(f)])
    rng = np.random.default_rng(1)
    counts = Counter()
    for _ in range(20000):
        counts.update(data.caption(data.sample_attrs(rng), rng).replace(",", " , ").split())
    merges = bpe.train(counts)
    with open(path, "w") as f:
        json.dump(merges, f)
    log(f"tokenizer: {len(merges)} merges")
    return bpe.Tokenizer(merges)


def to_tensor(imgs):
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(enc, dec, imgs, steps, batch, lr, klw, seed, label, onecycle):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    params = list(enc.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    if onecycle:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 100)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(len(imgs), (batch,), generator=g)
        x = to_tensor(imgs[idx.numpy()])
        m, lv = enc(x)
        z = m + torch.exp(0.5 * lv) * torch.randn(m.shape, generator=g)
        y = dec(z)
        rec = (y - x).abs().mean() + 0.5 * (y - x).pow(2).mean()
        kl = 0.5 * (m.pow(2) + lv.exp() - 1 - lv).mean()
        loss = rec + klw * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"{label} {step}/{steps} rec {rec.item():.4f} kl {kl.item():.2f} {time.time() - t0:.0f}s")


def stage_vae(work, imgs, steps_a, steps_b):
    """Phase A: 32-image batches, KL weight 1e-4, one-cycle LR. Phase B:
    more updates on 16-image batches with a cosine LR and SD's KL weight
    (1e-6), which sharpens small shapes a lot."""
    path = os.path.join(work, "vae.pt")
    torch.manual_seed(1)
    enc, dec = nets.Encoder(), nets.Decoder()
    if os.path.exists(path):
        sd = torch.load(path)
        enc.load_state_dict(sd["enc"])
        dec.load_state_dict(sd["dec"])
        return enc, dec
    path_a = os.path.join(work, "vae_a.pt")
    if os.path.exists(path_a):
        sd = torch.load(path_a)
        enc.load_state_dict(sd["enc"])
        dec.load_state_dict(sd["dec"])
    else:
        train_vae(enc, dec, imgs, steps_a, 32, 2e-3, 1e-4, 2, "vae-a", True)
        torch.save({"enc": enc.state_dict(), "dec": dec.state_dict()}, path_a)
    train_vae(enc, dec, imgs, steps_b, 16, 1e-3, 1e-6, 12, "vae-b", False)
    torch.save({"enc": enc.state_dict(), "dec": dec.state_dict()}, path)
    return enc, dec


def stage_latents(work, enc, imgs):
    path = os.path.join(work, "latents.pt")
    if os.path.exists(path):
        return torch.load(path)
    out = []
    with torch.no_grad():
        for i in range(0, len(imgs), 256):
            out.append(enc(to_tensor(imgs[i : i + 256]))[0])
    lat = torch.cat(out)
    sf = 1.0 / lat.std().item()
    res = {"latents": lat, "scaling_factor": sf}
    torch.save(res, path)
    log(f"latents {tuple(lat.shape)} mean {lat.mean().item():.3f} std {lat.std().item():.3f} scaling_factor {sf:.5f}")
    return res


def stage_unet(work, tok, attrs, lat, sf, steps, batch=64, name="unet.pt", init=None, lr=1e-3, seed=4):
    """Phase A from scratch (one-cycle LR); phases B and C each continue
    from the previous phase's EMA weights (init) with a fresh optimizer and
    a cosine LR."""
    path = os.path.join(work, name)
    torch.manual_seed(seed)
    te = nets.CLIPText(len(tok.encoder), d=HIDDEN)
    un = nets.UNet(ctx=HIDDEN, ch=UNET_CH)
    if os.path.exists(path):
        sd = torch.load(path)
        te.load_state_dict(sd["te"])
        un.load_state_dict(sd["un"])
        return te, un
    if init is not None:
        te.load_state_dict(init[0].state_dict())
        un.load_state_dict(init[1].state_dict())
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng(seed + 2)
    z0all = lat * sf
    ac = alphas_cumprod()
    params = list(te.parameters()) + list(un.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if init is None:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.04, final_div_factor=20)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 100)
    ema_te, ema_un = copy.deepcopy(te), copy.deepcopy(un)
    ema_p = list(ema_te.parameters()) + list(ema_un.parameters())
    t0, avg = time.time(), 0.0
    for step in range(steps):
        idx = torch.randint(len(z0all), (batch,), generator=g)
        caps = ["" if rng.random() < 0.1 else data.caption(attrs[i], rng) for i in idx.tolist()]
        ids = torch.tensor([tok.encode(c) for c in caps], dtype=torch.int32)
        z0 = z0all[idx]
        t = torch.randint(T, (batch,), generator=g)
        a = ac[t][:, None, None, None]
        eps = torch.randn(z0.shape, generator=g)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        ctx, _ = te(ids)
        pred = un(zt, t.float(), ctx)
        snr = ac[t] / (1 - ac[t])
        w = torch.clamp(snr, max=5.0) / snr
        loss = (w * (pred - eps).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = 0.999 if init is not None else min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_p, params):
                pe.mul_(decay).add_(p, alpha=1 - decay)
        avg = loss.item() if step == 0 else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet {step}/{steps} loss {avg:.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s")
        if step % 1000 == 999:
            torch.save({"te": ema_te.state_dict(), "un": ema_un.state_dict(), "step": step}, path + ".partial")
    torch.save({"te": ema_te.state_dict(), "un": ema_un.state_dict()}, path)
    return ema_te, ema_un


class VAEEncoderExport(torch.nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, sample):
        return self.enc(sample)[0]  # the posterior mean: deterministic


def export(out, tok, te, un, enc, dec, sf):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for m in (te, un, enc, dec):
        m.eval()

    def onnx(model, args, sub, inputs, outputs, axes):
        d = os.path.join(out, sub)
        os.makedirs(d, exist_ok=True)
        torch.onnx.export(
            model, args, os.path.join(d, "model.onnx"), input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=14, do_constant_folding=True,
        )

    ids = torch.tensor([tok.encode("a red circle on a blue background")] * 2, dtype=torch.int32)
    onnx(te, (ids,), "text_encoder", ["input_ids"], ["last_hidden_state", "pooler_output"],
         {"input_ids": {0: "batch", 1: "sequence"}, "last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}})
    onnx(un, (torch.randn(2, 4, 8, 8), torch.tensor([981.0, 981.0]), torch.randn(2, 77, HIDDEN)), "unet",
         ["sample", "timestep", "encoder_hidden_states"], ["out_sample"],
         {"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
          "encoder_hidden_states": {0: "batch", 1: "sequence"}, "out_sample": {0: "batch", 2: "height", 3: "width"}})
    onnx(VAEEncoderExport(enc), (torch.randn(1, 3, 64, 64),), "vae_encoder", ["sample"], ["latent_sample"],
         {"sample": {0: "batch", 2: "height", 3: "width"}, "latent_sample": {0: "batch", 2: "height", 3: "width"}})
    onnx(dec, (torch.randn(1, 4, 8, 8),), "vae_decoder", ["latent_sample"], ["sample"],
         {"latent_sample": {0: "batch", 2: "height", 3: "width"}, "sample": {0: "batch", 2: "height", 3: "width"}})

    tok.save(os.path.join(out, "tokenizer"))
    here = os.path.dirname(os.path.abspath(__file__))

    def write(sub, obj):
        p = os.path.join(out, sub)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")

    with open(os.path.join(here, "scheduler_config.json")) as f:
        write("scheduler/scheduler_config.json", json.load(f))
    vae_cfg = {
        "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "sample_size": 64, "scaling_factor": round(sf, 6),
    }
    write("vae_decoder/config.json", vae_cfg)
    write("vae_encoder/config.json", vae_cfg)
    write("unet/config.json", {
        "_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "sample_size": 8,
        "cross_attention_dim": HIDDEN, "block_out_channels": list(UNET_CH),
    })
    write("text_encoder/config.json", {
        "architectures": ["CLIPTextModel"], "hidden_size": HIDDEN, "max_position_embeddings": 77,
        "vocab_size": len(tok.encoder), "bos_token_id": tok.bos, "eos_token_id": tok.eos,
    })
    write("model_index.json", {
        "_class_name": "OnnxStableDiffusionPipeline",
        "_diffusers_version": "0.24.0",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["diffusers", "OnnxRuntimeModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "OnnxRuntimeModel"],
        "vae_decoder": ["diffusers", "OnnxRuntimeModel"],
        "vae_encoder": ["diffusers", "OnnxRuntimeModel"],
    })
    log("exported to", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/default", help="model folder to write")
    ap.add_argument("--work", default="training/work", help="checkpoints (resumable)")
    ap.add_argument("--images", type=int, default=24000)
    ap.add_argument("--vae-steps", type=int, default=1200, help="phase A")
    ap.add_argument("--vae-finetune-steps", type=int, default=2400, help="phase B")
    ap.add_argument("--unet-steps", type=int, default=5000)
    ap.add_argument("--unet-finetune-steps", type=int, default=1800, help="UNet phase B")
    ap.add_argument("--unet-phase-c-steps", type=int, default=4000, help="UNet phase C (continues phase B)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--partial", action="store_true", help="export the last partial UNet checkpoint (to look at progress)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    tok = stage_tokenizer(args.work)
    imgs, attrs = data.dataset(args.images, seed=7)
    log(f"data: {len(imgs)} images")
    enc, dec = stage_vae(args.work, imgs, args.vae_steps, args.vae_finetune_steps)
    lat = stage_latents(args.work, enc, imgs)
    if args.partial:
        te = nets.CLIPText(len(tok.encoder), d=HIDDEN)
        un = nets.UNet(ctx=HIDDEN, ch=UNET_CH)
        # The newest partial checkpoint of whichever UNet phase ran last.
        parts = [os.path.join(args.work, n + ".partial") for n in ("unet.pt", "unet_b.pt", "unet_c.pt")]
        path = max((p for p in parts if os.path.exists(p)), key=os.path.getmtime)
        sd = torch.load(path)
        te.load_state_dict(sd["te"])
        un.load_state_dict(sd["un"])
        log(f"partial checkpoint {os.path.basename(path)} at step {sd['step'] + 1}")
    else:
        te, un = stage_unet(args.work, tok, attrs, lat["latents"], lat["scaling_factor"], args.unet_steps)
        if args.unet_finetune_steps > 0:
            te, un = stage_unet(args.work, tok, attrs, lat["latents"], lat["scaling_factor"], args.unet_finetune_steps,
                                name="unet_b.pt", init=(te, un), lr=3e-4, seed=14)
        if args.unet_phase_c_steps > 0:
            te, un = stage_unet(args.work, tok, attrs, lat["latents"], lat["scaling_factor"], args.unet_phase_c_steps,
                                name="unet_c.pt", init=(te, un), lr=2e-4, seed=24)
    export(args.out, tok, te, un, enc, dec, lat["scaling_factor"])
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
