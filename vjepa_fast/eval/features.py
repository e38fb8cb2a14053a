"""The frozen encoder's features of a split: encoded per batch, or once and cached when the split allows it."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Iterator, Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from vjepa_fast.data.probe_splits import Split, collate
from vjepa_fast.eval.options import EvalError

log = logging.getLogger("vjepa_fast.eval")

CACHE_LIMIT_BYTES = 4 * 2**30  # cache a split's features only when they fit in this much (device) memory


def freeze(encoder: nn.Module) -> nn.Module:
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


@torch.no_grad()
def encode(encoder: nn.Module, video: torch.Tensor, segments: int = 1, views: int = 1,
           chunk: Optional[int] = None, autocast=contextlib.nullcontext) -> torch.Tensor:
    """video [B, 3, T, H, W] or [B, segments * views, 3, T, H, W] (index = segment * views + view, the order
    VideoDataset gives) -> features [B, views, segments * N, D]: per view, the tokens of all segments concatenated.
    The encoder runs on at most `chunk` clips at a time."""
    B = video.shape[0]
    clip_shape = tuple(video.shape[-4:])
    if video.dim() not in (5, 6) or video.numel() != B * segments * views * math.prod(clip_shape):
        raise ValueError(f"video {tuple(video.shape)} does not hold {segments} segments x {views} views per sample")
    clips = video.reshape(B * segments * views, *clip_shape)
    step = chunk or clips.shape[0]
    outs = []
    for i in range(0, clips.shape[0], step):
        with autocast():
            outs.append(encoder(clips[i:i + step]))
    x = torch.cat(outs)
    N, D = x.shape[1:]
    return x.reshape(B, segments, views, N, D).transpose(1, 2).reshape(B, views, segments * N, D)


class Features:
    """Batches of (features, labels) of one split; computed once and kept when the split has no augmentation and
    fits in CACHE_LIMIT_BYTES, else recomputed every epoch."""

    def __init__(self, encoder: nn.Module, split: Split, batch_size: int, device: torch.device, autocast,
                 num_workers: int, seed: int, shuffle: bool, name: str):
        self.encoder, self.split, self.bs, self.device, self.autocast = encoder, split, batch_size, device, autocast
        self.num_workers, self.seed, self.shuffle, self.name = num_workers, seed, shuffle, name
        self.errors: list[str] = []
        self.cache: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.cacheable = not split.augmented and self.estimated_bytes() <= CACHE_LIMIT_BYTES

    def estimated_bytes(self) -> int:
        e = self.encoder
        elem = 2 if self.autocast is not contextlib.nullcontext else 4
        return len(self.split.dataset) * self.split.views * self.split.segments * e.num_tokens * e.embed_dim * elem

    def _encoded(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.split.dataset
        if hasattr(ds, "epoch"):
            ds.epoch = epoch  # read by fresh (non-persistent) loader workers
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        loader = DataLoader(ds, batch_size=self.bs, shuffle=shuffle, generator=g, num_workers=self.num_workers,
                            collate_fn=collate, pin_memory=self.device.type == "cuda")
        for video, labels, errors in loader:
            for err in errors:
                log.warning("%s: skipped unreadable sample %s", self.name, err)
            self.errors.extend(errors)
            if video is None:
                continue
            feats = encode(self.encoder, video.to(self.device, non_blocking=True), self.split.segments,
                           self.split.views, chunk=self.bs, autocast=self.autocast)
            yield feats, labels.to(self.device)

    def batches(self, epoch: int, cached_batch: Optional[int] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's (features, labels) batches; `cached_batch` sets the batch size when features are cached (the
        probe's per-clip predictions do not depend on it, so validation reads cached features in large batches)."""
        if not self.cacheable:
            yield from self._encoded(epoch, self.shuffle)
            return
        if self.cache is None:
            t0 = time.perf_counter()
            parts = list(self._encoded(0, False))
            if not parts:
                raise EvalError(f"{self.name} split: no readable samples")
            self.cache = (torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts]))
            log.info("%s: cached features of %d clips %s in %.1f s", self.name, self.cache[0].shape[0],
                     tuple(self.cache[0].shape[1:]), time.perf_counter() - t0)
        feats, labels = self.cache
        n = feats.shape[0]
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                 if self.shuffle else torch.arange(n)).to(feats.device)
        bs = cached_batch or self.bs
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            yield feats[idx], labels[idx]

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.split.dataset) / self.bs)
