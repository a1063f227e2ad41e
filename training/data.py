"""Procedural, captioned 64x64 shape images for the default model.

Every image is one flat-coloured shape on a flat background. The attributes
(shape, colour, background, size, position) are drawn from fixed lists with
a seeded numpy Generator, so the data set is a pure function of the seed.
Captions are drawn from a few natural templates that name some or all of
the attributes; the background and placement are free when not named.
"""

import numpy as np

SIZE = 64

# Name -> RGB. Chosen far apart so a nearest-colour test is meaningful.
COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 30),
    "green": (30, 170, 50),
    "cyan": (40, 210, 220),
    "blue": (30, 60, 210),
    "purple": (130, 40, 180),
    "pink": (245, 130, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES = list(COLORS)

SHAPES = ["circle", "square", "triangle", "diamond", "cross"]

# Size word -> half-extent range in pixels (of the shape's bounding box).
SIZES = {"small": (7, 10), "medium": (12, 16), "large": (19, 24)}

# Position word -> centre (x, y) as fractions of the image.
POSITIONS = {
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
    "center": (0.5, 0.5),
}


def shape_mask(shape, cx, cy, r, n=SIZE, ss=4):
    """Anti-aliased coverage in [0,1] of a shape with centre (cx, cy) and
    half-extent r (pixels), by ss x ss supersampling."""
    g = (np.arange(n * ss) + 0.5) / ss
    x, y = np.meshgrid(g, g)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        m = dx * dx + dy * dy <= r * r
    elif shape == "square":
        m = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "triangle":  # pointing up, base at the bottom
        t = (dy + r) / (2 * r)  # 0 at the top apex, 1 at the base
        m = (t >= 0) & (t <= 1) & (np.abs(dx) <= r * t)
    elif shape == "diamond":
        m = np.abs(dx) + np.abs(dy) <= r
    elif shape == "cross":  # plus sign, arms a third of the extent wide
        a = r / 3
        m = ((np.abs(dx) <= a) & (np.abs(dy) <= r)) | ((np.abs(dy) <= a) & (np.abs(dx) <= r))
    else:
        raise ValueError(shape)
    return m.reshape(n, ss, n, ss).mean(axis=(1, 3))


def render(shape, color, bg, cx, cy, r, rng=None):
    """Render one image as uint8 [64, 64, 3]."""
    a = shape_mask(shape, cx, cy, r)[..., None]
    fg = np.array(COLORS[color], np.float64)
    b = np.array(COLORS[bg], np.float64)
    if rng is not None:  # slight colour jitter so colours are regions, not points
        fg = fg + rng.uniform(-12, 12, 3)
        b = b + rng.uniform(-12, 12, 3)
    img = a * fg + (1 - a) * b
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_attrs(rng):
    """Random attributes for one image."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    bg = color
    while bg == color:
        bg = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    size = list(SIZES)[rng.integers(len(SIZES))]
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi)
    pos = list(POSITIONS)[rng.integers(len(POSITIONS))]
    fx, fy = POSITIONS[pos]
    # Jitter the centre within its region, keeping the shape inside the image.
    cx = np.clip(fx * SIZE + rng.uniform(-5, 5), r + 1, SIZE - r - 1)
    cy = np.clip(fy * SIZE + rng.uniform(-5, 5), r + 1, SIZE - r - 1)
    return dict(shape=shape, color=color, bg=bg, size=size, pos=pos, cx=cx, cy=cy, r=r)


def caption(a, rng):
    """A random natural caption naming some or all of the attributes."""
    size = "" if a["size"] == "medium" else a["size"] + " "
    if rng.random() < 0.5:
        size_opt = size
    else:
        size_opt = ""
    pos = "in the center" if a["pos"] == "center" else "in the " + a["pos"]
    c, s, b = a["color"], a["shape"], a["bg"]
    templates = [
        f"a {size_opt}{c} {s} on a {b} background",
        f"a {size}{c} {s} {pos}",
        f"a {c} {s}",
        f"{c} {s}, {b} background",
        f"a {size}{c} {s} on a {b} background {pos}",
        f"a {c} {s} on {b}",
        f"a {b} background with a {size_opt}{c} {s}",
    ]
    return templates[rng.integers(8) % len(templates)]  # 7 gives the first again


def dataset(n, seed):
    """n images (uint8 [n, 64, 64, 3]) and their attribute dicts."""
    rng = np.random.default_rng(seed)
    attrs = [sample_attrs(rng) for _ in range(n)]
    imgs = np.stack([render(a["shape"], a["color"], a["bg"], a["cx"], a["cy"], a["r"], rng) for a in attrs])
    return imgs, attrs


def all_words():
    """Every word the captions can use, for the BPE corpus."""
    rng = np.random.default_rng(0)
    words = set()
    for _ in range(20000):
        words.update(caption(sample_attrs(rng), rng).replace(",", " , ").split())
    return words
