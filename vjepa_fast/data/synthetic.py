"""Built-in synthetic videos: coloured shapes moving over varied backgrounds, rendered on the fly.

Each clip shows `num_shapes` objects that share one shape class (circle, square, triangle), one colour class and one
velocity (one of 8 compass directions, or static), over a static background that varies per clip (linear gradient,
sinusoidal stripes or low-frequency colour noise). So every clip has two well-defined labels:
- appearance = shape * len(COLORS) + color  (what the objects look like),
- motion     = direction index in MOTIONS    (how they move; constant over the clip).

Objects are large, as objects in real video are at the model's patch scale: radius 25%-35% of the frame (divided by
sqrt(num_shapes)), so at 96 px with 16 px patches one object spans about 10-16 of the 36 patch positions and every
mask hides part of an object, which masked-feature prediction then has to fill in from the visible part (docs/data.md
says why). They move 1%-2.5% of the frame per frame in a straight line; their centres stay in the band
[15%, 85%] of the frame (the whole object for small objects), so a large object may be partly out of view, as objects
entering or leaving a real shot are. A clip starts where its whole track fits in that band whenever that is possible
(always at the default sizes and speeds), so the motion label holds in every frame, and bounces off the band's edges
otherwise. A clip samples its video as real clips do (`data.frame_step`): with frame step k, clip frame t is frame
t * k of the underlying video, so objects move k times as far between clip frames.

Everything about clip i is drawn from a numpy Generator seeded by (seed, i) alone (never global RNG state), so any
process or data-loader worker renders the same clip for the same index. Rendering is vectorised over all frames and
pixels with torch broadcasting (no per-pixel Python loops).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

SHAPES = ("circle", "square", "triangle")
# Saturated base colours; backgrounds are muted, so the objects stand out from any background.
COLORS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.80, 0.15),
    "blue": (0.12, 0.25, 0.92),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.12, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
COLOR_NAMES = tuple(COLORS)
# Directions are counter-clockwise from east in screen terms ("north" = up = decreasing row index).
MOTIONS = ("east", "northeast", "north", "northwest", "west", "southwest", "south", "southeast", "static")
STATIC = len(MOTIONS) - 1
BACKGROUNDS = ("gradient", "stripes", "noise")
# The labels a probe (or the supervised ceiling) reads, and the dataset item key that holds each.
LABEL_KEYS = {"appearance": "label", "motion": "motion"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_RADIUS_RANGE = (0.25, 0.35)  # object size, fraction of the frame size (divided by sqrt(num_shapes))
# The centre of an object stays at least this far (fraction of the frame) from the frame's edges, or its radius if that
# is smaller: wide enough that the fastest track of the default 8-frame, step-4 clip (70% of the frame) fits.
_CENTER_MARGIN = 0.15
# Circumradius per unit size for each shape, so that squares and triangles cover an area close to the circle's
# (at equal circumradius a triangle covers only 41% of the circle).
_SHAPE_SCALE = {"circle": 1.0, "square": 1.15, "triangle": 1.35}
_SPEED_RANGE = (0.010, 0.025)  # pixels per frame, fraction of the frame size
_COLOR_JITTER = 0.06
_TAG_CLIP = 0x5EED  # domain tag in the seed, so these streams never coincide with other users of (seed, i)
_MAX_INT = 2**63 - 1


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip; `centers` is the object track (after bouncing)."""

    shape: int  # index into SHAPES
    color: int  # index into COLOR_NAMES
    motion: int  # index into MOTIONS
    speed: float  # pixels per frame (0 for static clips)
    rgb: torch.Tensor  # float32 [3] in [0, 1]: the (jittered) colour of all objects
    centers: torch.Tensor  # float32 [T, K, 2]: (x, y) pixel coordinates, pixel (r, c) has centre (c + .5, r + .5)
    radius: torch.Tensor  # float32 [K]: circumradius in pixels
    angle: torch.Tensor  # float32 [K]: rotation in radians (squares and triangles)
    background: torch.Tensor  # float32 [3, H, W] in [0, 1] (channels first, like the renderer)
    background_kind: str  # one of BACKGROUNDS

    @property
    def appearance(self) -> int:
        return self.shape * len(COLOR_NAMES) + self.color

    @property
    def velocity(self) -> tuple[float, float]:
        """(vx, vy) in pixels per frame before any bounce; (0, 0) for static clips."""
        return _velocity(self.motion, self.speed)


def _velocity(motion: int, speed: float) -> tuple[float, float]:
    if motion == STATIC:
        return 0.0, 0.0
    a = motion * math.pi / 4
    return speed * math.cos(a), -speed * math.sin(a)  # image y grows downwards


def _check_int(name: str, value, lo: int, hi: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip `index` under `seed`.

    Each number is split into two fixed 32-bit words: numpy's SeedSequence would otherwise split large ints into a
    variable number of words and zero-pad short entropy, so different (seed, index) pairs could collide."""
    words = [_TAG_CLIP, seed & 0xFFFFFFFF, seed >> 32, index & 0xFFFFFFFF, index >> 32]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def _reflect(p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold unbounded positions into [lo, hi] as a ball bouncing between the walls would move (triangle wave)."""
    span = hi - lo
    u = np.mod(p - lo, 2 * span)
    return lo + span - np.abs(u - span)


def _start_positions(rng, v: float, travel: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Start coordinates along one axis: where the whole track fits between the walls when it can (no bounce, so the
    motion label holds in every frame), else at the wall behind the motion (the latest possible first bounce)."""
    u = rng.random(lo.shape)
    if v > 0:
        a, b = lo, np.maximum(hi - travel, lo)
    elif v < 0:
        a, b = np.minimum(lo + travel, hi), hi
    else:
        a, b = lo, hi
    return a + u * (b - a)


def _background(rng, size: int) -> tuple[torch.Tensor, str]:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    # Muted colours: a grey level plus a limited per-channel tint.
    c1, c2 = (np.clip(rng.uniform(0.2, 0.8) + rng.uniform(-0.22, 0.22, 3), 0, 1) for _ in range(2))
    c1, c2 = (torch.tensor(c, dtype=torch.float32) for c in (c1, c2))
    if kind == "noise":
        g = int(rng.integers(3, 7))  # low frequency: a g x g grid of random colours, smoothly upsampled
        # Mostly brightness variation with a little tint, so the noise never looks like a saturated object colour.
        noise = rng.uniform(-0.2, 0.2, (1, g, g)) + rng.uniform(-0.08, 0.08, (3, g, g))
        grid = (c1.view(3, 1, 1) + torch.from_numpy(noise).float()).clamp(0, 1)
        # Bicubic upsampling is separable: interpolating the identity gives the 1-D weights m [g, size], and
        # m^T @ grid @ m equals F.interpolate(grid, bicubic) at a tenth of the cost.
        m = F.interpolate(torch.eye(g)[None, :, :, None], size=(size, 1), mode="bicubic", align_corners=False)
        m = m[0, :, :, 0]
        return (m.T @ grid @ m).clamp_(0, 1), kind
    theta = rng.uniform(0, 2 * math.pi)
    coord = (torch.arange(size, dtype=torch.float32) + 0.5 - size / 2) / size
    proj = coord[None, :] * math.cos(theta) + coord[:, None] * math.sin(theta)  # [H, W], in about [-0.71, 0.71]
    if kind == "gradient":
        t = (proj / math.sqrt(2) + 0.5).clamp(0, 1)
    else:  # stripes: 1.5 to 4 periods across the frame, far coarser than the objects' edges
        freq, phase = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * math.pi)
        t = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * proj + phase)
    return torch.addcmul(c1.view(3, 1, 1), t[None], (c2 - c1).view(3, 1, 1)), kind


def sample_clip(seed: int, index: int, num_frames: int, size: int, num_shapes: int = 1,
                frame_step: int = 1) -> ClipSpec:
    """Draw the content of clip `index` (a pure function of its arguments): `num_frames` frames `frame_step` apart of
    a video (num_frames - 1) * frame_step + 1 frames long."""
    seed, index = _check_int("seed", seed, 0), _check_int("index", index, 0)
    num_frames, size = _check_int("num_frames", num_frames, 1), _check_int("size", size, 16, 8192)
    num_shapes = _check_int("num_shapes", num_shapes, 1, 16)
    frame_step = _check_int("frame_step", frame_step, 1, 1 << 20)
    rng = clip_rng(seed, index)
    shape = int(rng.integers(len(SHAPES)))
    color = int(rng.integers(len(COLOR_NAMES)))
    motion = int(rng.integers(len(MOTIONS)))
    rgb = np.clip(np.asarray(COLORS[COLOR_NAMES[color]]) + rng.uniform(-_COLOR_JITTER, _COLOR_JITTER, 3), 0, 1)
    k = num_shapes
    radius = rng.uniform(*_RADIUS_RANGE, k) * (size * _SHAPE_SCALE[SHAPES[shape]] / math.sqrt(k))
    angle = rng.uniform(0, 2 * math.pi, k)
    speed = 0.0 if motion == STATIC else rng.uniform(*_SPEED_RANGE) * size
    vx, vy = _velocity(motion, speed)
    lo = np.minimum(radius, _CENTER_MARGIN * size)  # small objects stay whole inside the frame, large ones may not
    hi = size - lo
    travel = (num_frames - 1) * frame_step  # video frames from the clip's first frame to its last
    x0 = _start_positions(rng, vx, abs(vx) * travel, lo, hi)
    y0 = _start_positions(rng, vy, abs(vy) * travel, lo, hi)
    t = np.arange(num_frames, dtype=np.float64)[:, None] * frame_step
    cx = _reflect(x0[None] + vx * t, lo[None], hi[None])
    cy = _reflect(y0[None] + vy * t, lo[None], hi[None])
    background, kind = _background(rng, size)
    return ClipSpec(
        shape=shape,
        color=color,
        motion=motion,
        speed=float(speed),
        rgb=torch.tensor(rgb, dtype=torch.float32),
        centers=torch.from_numpy(np.stack([cx, cy], axis=-1)).float(),
        radius=torch.from_numpy(radius).float(),
        angle=torch.from_numpy(angle).float(),
        background=background,
        background_kind=kind,
    )


def object_coverage(spec: ClipSpec, size: int) -> torch.Tensor:
    """Fraction of each pixel covered by any object: float32 [T, H, W] in [0, 1], anti-aliased over about 1 pixel.

    Each shape is a signed distance (circle: |p| - r; regular polygon: the largest projection on its edge normals minus
    the apothem). The projections split as x-part [T, 1, W] + y-part [T, H, 1], so a polygon costs one full-size add
    and max per edge."""
    pix = torch.arange(size, dtype=torch.float32) + 0.5
    free = None  # running product of (1 - alpha): the uncovered fraction
    for k in range(spec.radius.numel()):
        dx = pix[None, :] - spec.centers[:, k, 0:1]  # [T, W]
        dy = pix[None, :] - spec.centers[:, k, 1:2]  # [T, H]
        r = float(spec.radius[k])
        if SHAPES[spec.shape] == "circle":
            sd = torch.sqrt(dx[:, None, :].square() + dy[:, :, None].square()) - r
        else:
            sides = 4 if SHAPES[spec.shape] == "square" else 3
            sd = None
            for j in range(sides):
                phi = float(spec.angle[k]) + 2 * math.pi * j / sides
                proj = (dx * math.cos(phi))[:, None, :] + (dy * math.sin(phi))[:, :, None]
                sd = proj if sd is None else torch.maximum(sd, proj)
            sd = sd - r * math.cos(math.pi / sides)
        alpha = (0.5 - sd).clamp_(0, 1)
        free = 1 - alpha if free is None else free.mul_(1 - alpha)
    return 1 - free


def render_channels_first(spec: ClipSpec, with_background: bool = True) -> torch.Tensor:
    """uint8 [3, T, H, W] frames. Computed channels-first (contiguous rows, no stride-3 inner loop) with 255 and the
    rounding offset folded into the small per-clip tensors: the composite is one addcmul over the clip, exact in
    range because it is a convex combination of two colours in [0, 255]."""
    cov = object_coverage(spec, spec.background.shape[-1])[None]  # [1, T, H, W]
    bg = spec.background if with_background else torch.zeros_like(spec.background)
    base = (bg * 255 + 0.5)[:, None]  # [3, 1, H, W]; + 0.5 so the truncating cast rounds to nearest
    diff = (spec.rgb.view(3, 1, 1) * 255 - bg * 255)[:, None]
    return torch.addcmul(base, cov, diff).to(torch.uint8)


def render_frames(spec: ClipSpec, with_background: bool = True) -> torch.Tensor:
    """uint8 [T, H, W, 3] frames; `with_background=False` draws the objects on black (for checking the track)."""
    return render_channels_first(spec, with_background).permute(1, 2, 3, 0).contiguous()


def normalize_frames(video: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [3, T, H, W] -> float32 [3, T, H, W], in [0, 1] or ImageNet-normalised: (x / 255 - mean) / std."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if not normalize:
        mean, std = torch.zeros(3), torch.ones(3)
    scale, shift = (1 / (255 * std)).view(3, 1, 1, 1), (-mean / std).view(3, 1, 1, 1)
    return torch.addcmul(shift, video, scale)  # reads the uint8 clip directly: one pass, no float copy


class SyntheticVideos(Dataset):
    """Map-style dataset of synthetic clips; `ds[i]` = {"video", "label", "motion", "index"}.

    "video" is float32 [3, T, H, W] (ImageNet-normalised if `normalize`, else in [0, 1]), computed from the uint8
    frames that `frames(i)` returns; "label" is the appearance class, "motion" the motion class. The T frames are
    `frame_step` apart in the clip's underlying video (as data.frame_step samples real videos). `length=None` makes
    the dataset unbounded: any non-negative index is valid and `len()` is a TypeError (use a sampler that draws
    indices). With a finite length, negative indices count from the end as for a list."""

    num_appearance_classes = len(SHAPES) * len(COLOR_NAMES)
    num_motion_classes = len(MOTIONS)

    def __init__(
        self,
        num_frames: int = 16,
        size: int = 224,
        length: int | None = 10_000,
        seed: int = 0,
        num_shapes: int = 1,
        normalize: bool = True,
        frame_step: int = 1,
    ):
        self.num_frames = _check_int("num_frames", num_frames, 1)
        self.size = _check_int("size", size, 16, 8192)  # below 16 px the shapes are no longer recognisable
        self.length = None if length is None else _check_int("length", length, 0)
        self.seed = _check_int("seed", seed, 0)
        self.num_shapes = _check_int("num_shapes", num_shapes, 1, 16)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        self.normalize = normalize
        self.frame_step = _check_int("frame_step", frame_step, 1, 1 << 20)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("SyntheticVideos(length=None) is unbounded and has no length; draw indices with a sampler")
        return self.length

    def _index(self, i) -> int:
        try:
            i = operator.index(i)
        except TypeError:
            raise IndexError(f"SyntheticVideos index must be an integer, got {type(i).__name__}") from None
        if self.length is None:
            if not 0 <= i <= _MAX_INT:
                raise IndexError(f"index {i} out of range for an unbounded SyntheticVideos (need 0 <= i < 2**63)")
            return i
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for SyntheticVideos of length {self.length}")
        return i % self.length

    def clip(self, i) -> ClipSpec:
        """The content of clip i (labels, object track, background)."""
        return sample_clip(self.seed, self._index(i), self.num_frames, self.size, self.num_shapes, self.frame_step)

    def frames(self, i) -> torch.Tensor:
        """uint8 [T, H, W, 3] frames of clip i."""
        return render_frames(self.clip(i))

    def __getitem__(self, i) -> dict:
        i = self._index(i)
        spec = self.clip(i)
        video = normalize_frames(render_channels_first(spec), self.normalize)
        return {"video": video, "label": spec.appearance, "motion": spec.motion, "index": i}

    def describe(self, i) -> str:
        """Where sample i comes from, for error messages (the loader's RobustDataset uses it)."""
        return f"synthetic clip {i} (seed {self.seed})"

    def __repr__(self) -> str:
        return (
            f"SyntheticVideos(num_frames={self.num_frames}, size={self.size}, length={self.length}, seed={self.seed}, "
            f"num_shapes={self.num_shapes}, normalize={self.normalize}, frame_step={self.frame_step})"
        )
