"""Small Stable-Diffusion-shaped networks in plain torch.

CLIPText: token + position embeddings, pre-norm causal transformer, final
LayerNorm; pooler_output is the hidden state at the first EOS (CLIP's
argmax trick, EOS having the highest id). UNet: UNet2DCondition-style with
resnet blocks, timestep embedding and cross-attention transformers. VAE:
AutoencoderKL-style with an 8x spatial factor and 4 latent channels.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def gn(c):
    return nn.GroupNorm(min(16, c // 4), c, eps=1e-5)


# ---------------------------------------------------------------- text


class TextBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        b, n, d = x.shape
        hd = d // self.h
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.h, hd).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + mask, dim=-1)
        x = x + self.out((w @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class CLIPText(nn.Module):
    def __init__(self, vocab, d=96, layers=3, heads=4, max_len=77):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(max_len, d) * 0.01)
        self.blocks = nn.ModuleList([TextBlock(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, input_ids):
        ids = input_ids.long()
        n = ids.shape[1]
        x = self.tok(ids) + self.pos[:n]
        mask = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        for b in self.blocks:
            x = b(x, mask)
        x = self.ln(x)
        eos = ids.float().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0]), eos]
        return x, pooled


# ---------------------------------------------------------------- unet


def timestep_embedding(t, dim):
    # diffusers get_timestep_embedding with flip_sin_to_cos=True, shift 0.
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.n1 = gn(cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2 = gn(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(F.silu(temb))[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, d, ctx, heads):
        super().__init__()
        self.h = heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(ctx, d, bias=False)
        self.v = nn.Linear(ctx, d, bias=False)
        self.o = nn.Linear(d, d)

    def forward(self, x, c):
        b, n, d = x.shape
        hd = d // self.h
        q = self.q(x).reshape(b, -1, self.h, hd).transpose(1, 2)
        k = self.k(c).reshape(b, -1, self.h, hd).transpose(1, 2)
        v = self.v(c).reshape(b, -1, self.h, hd).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return self.o((w @ v).transpose(1, 2).reshape(b, -1, d))


class Transformer(nn.Module):
    """diffusers Transformer2DModel with one BasicTransformerBlock."""

    def __init__(self, c, ctx, heads):
        super().__init__()
        self.norm = gn(c)
        self.proj_in = nn.Linear(c, c)
        self.ln1 = nn.LayerNorm(c)
        self.self_attn = Attention(c, c, heads)
        self.ln2 = nn.LayerNorm(c)
        self.cross = Attention(c, ctx, heads)
        self.ln3 = nn.LayerNorm(c)
        self.ff = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.proj_out = nn.Linear(c, c)

    def forward(self, x, ctx):
        b, c, h, w = x.shape
        r = x
        x = self.norm(x).flatten(2).transpose(1, 2)
        x = self.proj_in(x)
        y = self.ln1(x)
        x = x + self.self_attn(y, y)
        x = x + self.cross(self.ln2(x), ctx)
        x = x + self.ff(self.ln3(x))
        x = self.proj_out(x)
        return r + x.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class UNet(nn.Module):
    def __init__(self, ctx=96, ch=(64, 128), heads=4):
        super().__init__()
        c0, c1 = ch
        temb = 4 * c0
        self.c0 = c0
        self.time = nn.Sequential(nn.Linear(c0, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(4, c0, 3, padding=1)
        self.d0r = ResBlock(c0, c0, temb)
        self.d0a = Transformer(c0, ctx, heads)
        self.down = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.d1r = ResBlock(c0, c1, temb)
        self.d1a = Transformer(c1, ctx, heads)
        self.m1 = ResBlock(c1, c1, temb)
        self.ma = Transformer(c1, ctx, heads)
        self.m2 = ResBlock(c1, c1, temb)
        self.u1r = ResBlock(c1 + c1, c1, temb)
        self.u1a = Transformer(c1, ctx, heads)
        self.u1r2 = ResBlock(c1 + c0, c1, temb)
        self.up = nn.Conv2d(c1, c1, 3, padding=1)
        self.u0r = ResBlock(c1 + c0, c0, temb)
        self.u0a = Transformer(c0, ctx, heads)
        self.u0r2 = ResBlock(c0 + c0, c0, temb)
        self.norm_out = gn(c0)
        self.conv_out = nn.Conv2d(c0, 4, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, sample, timestep, encoder_hidden_states):
        t = self.time(timestep_embedding(timestep, self.c0))
        ctx = encoder_hidden_states
        h0 = self.conv_in(sample)
        h1 = self.d0a(self.d0r(h0, t), ctx)
        h2 = self.down(h1)
        h3 = self.d1a(self.d1r(h2, t), ctx)
        h = self.m2(self.ma(self.m1(h3, t), ctx), t)
        h = self.u1a(self.u1r(torch.cat([h, h3], 1), t), ctx)
        h = self.u1r2(torch.cat([h, h2], 1), t)
        h = self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.u0a(self.u0r(torch.cat([h, h1], 1), t), ctx)
        h = self.u0r2(torch.cat([h, h0], 1), t)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------- vae


class VResBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.n1 = gn(cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.n2 = gn(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, ch=(16, 32, 64, 64)):
        super().__init__()
        a, b, c, d = ch
        self.net = nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1),
            nn.Conv2d(a, b, 3, stride=2, padding=1),  # 32
            VResBlock(b, b),
            nn.Conv2d(b, c, 3, stride=2, padding=1),  # 16
            VResBlock(c, c),
            nn.Conv2d(c, d, 3, stride=2, padding=1),  # 8
            VResBlock(d, d),
            gn(d),
            nn.SiLU(),
            nn.Conv2d(d, 8, 3, padding=1),
        )

    def forward(self, x):
        m, logvar = self.net(x).chunk(2, dim=1)
        return m, logvar.clamp(-30, 20)


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.c(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Decoder(nn.Module):
    def __init__(self, ch=(64, 64, 32, 16)):
        super().__init__()
        a, b, c, d = ch
        self.net = nn.Sequential(
            nn.Conv2d(4, a, 3, padding=1),
            VResBlock(a, a),
            Up(a, b),  # 16
            VResBlock(b, b),
            Up(b, c),  # 32
            VResBlock(c, c),
            Up(c, d),  # 64
            VResBlock(d, d),
            gn(d),
            nn.SiLU(),
            nn.Conv2d(d, 3, 3, padding=1),
        )

    def forward(self, z):
        return self.net(z)
