"""Why PNDM fails at guidance 7.5 on the default model (training/README.md).

Runs the trained UNet (training/work/unet_c.pt, or --checkpoint) in torch on one prompt and
seed at 20 steps, once with DDIM's update and once with PLMS's 2-, 3- and
4-step noise extrapolation on that update, and prints at every step the
norm of the guidance difference (cond - uncond), of the guided prediction,
of the gap between the noise PLMS steps with and the model's own, and the
range of the predicted clean latents.

    /usr/bin/python3 training/plms_stability.py [guidance] [--work DIR]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nets  # noqa: E402
import plms_toy  # noqa: E402
import train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("guidance", type=float, nargs="?", default=7.5)
    ap.add_argument("--work", default="training/work")
    ap.add_argument("--checkpoint", default="unet_c.pt", help="UNet checkpoint in --work")
    ap.add_argument("--prompt", default="a red circle on a blue background")
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args()
    tok = train.stage_tokenizer(args.work)
    te = nets.CLIPText(len(tok.encoder), d=train.HIDDEN)
    un = nets.UNet(ctx=train.HIDDEN, ch=train.UNET_CH)
    sd = torch.load(os.path.join(args.work, args.checkpoint))
    te.load_state_dict(sd["te"])
    un.load_state_dict(sd["un"])
    te.eval()
    un.eval()
    ac = train.alphas_cumprod()
    ids = torch.tensor([tok.encode(args.prompt), tok.encode("")], dtype=torch.int32)
    with torch.no_grad():
        ctx, _ = te(ids)

    def guided(x, t):
        with torch.no_grad():
            e = un(torch.cat([x, x]), torch.tensor([float(t)] * 2), ctx)
        c, u = e[0:1], e[1:2]
        return u + args.guidance * (c - u), (c - u).norm().item()

    ts = list(range(1, 1000, 50))[::-1]  # SD's 20 "leading" steps: 951 … 1
    for mode in ["ddim", "plms"]:
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(args.seed))
        ets = []
        print(f"== {mode}, guidance {args.guidance}")
        for t in ts:
            e, diff = guided(x, t)
            ee = e
            if mode == "plms":
                ets = (ets + [e])[-4:]
                ee = plms_toy.plms_eps(ets)
            a = ac[t]
            ap_ = ac[t - 50] if t >= 50 else torch.tensor(1.0)
            x0 = (x - (1 - a).sqrt() * ee) / a.sqrt()
            x = ap_.sqrt() * x0 + (1 - ap_).sqrt() * ee
            print(f"t={t:4d} |c-u| {diff:6.2f}  |e| {e.norm().item():6.2f}  |step e - e| {(ee - e).norm().item():7.2f}"
                  f"  x0 [{x0.min().item():6.2f}, {x0.max().item():6.2f}] std {x0.std().item():.2f}")


if __name__ == "__main__":
    main()
