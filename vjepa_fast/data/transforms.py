"""Clip transforms on uint8 [T, H, W, C] tensors, vectorised over the whole clip (one crop box, one flip, one resize
call per clip; no per-frame loops).

Resizing runs on uint8 in channels-last layout (the layout a decoded [T, H, W, C] clip already has once permuted to
[T, C, H, W]): torch's antialiased bilinear kernel for that case is several times faster than on float32 and the
rounding to integers is below the 8-bit precision of the source. Conversion to float happens once, on the final
(small) crop, fused with the normalisation.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_clip(clip: torch.Tensor) -> None:
    if not isinstance(clip, torch.Tensor) or clip.dtype != torch.uint8 or clip.dim() != 4 or clip.shape[-1] != 3:
        shape = tuple(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        dtype = clip.dtype if isinstance(clip, torch.Tensor) else None
        raise ValueError(f"expected a uint8 clip [T, H, W, 3], got {shape} {dtype}")
    if min(clip.shape[:3]) < 1:
        raise ValueError(f"empty clip {tuple(clip.shape)}")


def random_resized_crop_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
                            rng: np.random.Generator, attempts: int = 10) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a fraction in `scale` of the frame with aspect w/h in `ratio` (drawn
    log-uniformly). After `attempts` boxes that do not fit, the largest centred box with the aspect clamped to
    `ratio` is returned."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, H, W, C] -> uint8 [T, C, h, w] (channels-last memory), antialiased bilinear."""
    x = clip.permute(0, 3, 1, 2)
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 [T, C, H, W] (any memory layout) -> float32 [C, T, H, W] contiguous, (x / 255 - mean) / std."""
    out = torch.empty((x.shape[1], x.shape[0], x.shape[2], x.shape[3]), dtype=torch.float32)
    out.copy_(x.transpose(0, 1))
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1, 1)
    shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(-1, 1, 1, 1)
    return out.mul_(scale).sub_(shift)


def train_transform(clip: torch.Tensor, size: int, rng: np.random.Generator, scale: Sequence[float] = (0.3, 1.0),
                    ratio: Sequence[float] = (0.75, 1.35), hflip_prob: float = 0.5) -> torch.Tensor:
    """The pretraining augmentation: random resized crop (one box for the whole clip) to size x size, horizontal flip
    with probability `hflip_prob`, ImageNet normalisation. uint8 [T, H, W, 3] -> float32 [3, T, size, size]."""
    _check_clip(clip)
    top, left, h, w = random_resized_crop_box(clip.shape[1], clip.shape[2], scale, ratio, rng)
    x = resize(clip[:, top:top + h, left:left + w], (size, size))
    if rng.uniform() < hflip_prob:
        x = x.flip(-1)
    return normalize(x)


def short_side_resize(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, H, W, C] -> uint8 [T, C, h, w] with min(h, w) = size, aspect kept."""
    _check_clip(clip)
    h, w = clip.shape[1], clip.shape[2]
    if h <= w:
        new = (size, max(size, int(round(w * size / h))))
    else:
        new = (max(size, int(round(h * size / w))), size)
    return resize(clip, new)


def spatial_crop_offsets(height: int, width: int, size: int, views: int) -> list[tuple[int, int]]:
    """(top, left) of `views` size x size crops spread evenly along the longer side (1: the centre crop;
    3: start, centre, end)."""
    if size > height or size > width:
        raise ValueError(f"crop {size} larger than the frame {height}x{width}")
    if views < 1:
        raise ValueError(f"spatial views must be >= 1, got {views}")
    if views == 1:
        return [((height - size) // 2, (width - size) // 2)]
    offsets = []
    for v in range(views):
        if width >= height:
            offsets.append(((height - size) // 2, int(round(v * (width - size) / (views - 1)))))
        else:
            offsets.append((int(round(v * (height - size) / (views - 1))), (width - size) // 2))
    return offsets


def eval_transform(clip: torch.Tensor, size: int, spatial_views: int = 1) -> torch.Tensor:
    """Evaluation: short-side resize to `size`, then the centre crop (1 view) or crops spread along the long side.
    uint8 [T, H, W, 3] -> float32 [views, 3, T, size, size]."""
    x = short_side_resize(clip, size)
    offsets = spatial_crop_offsets(x.shape[2], x.shape[3], size, spatial_views)
    return torch.stack([normalize(x[:, :, t:t + size, l:l + size]) for t, l in offsets])
