"""Frozen evaluation: `python -m vjepa_fast.eval --checkpoint RUN_DIR [options] [--config FILE] [key=value ...]`.

The encoder of a training run (its EMA target encoder unless --use-online-encoder) is frozen, an attentive probe
(vjepa_fast/models/probe.py) is trained on its output tokens with AdamW and a cosine learning rate, and the top-1
accuracy on the validation split is printed and written as JSON. Without --checkpoint it evaluates a randomly
initialised encoder: the baseline a pretrained encoder has to beat. --checkpoint also takes any weights file or
directory of docs/weights.md (V-JEPA / V-JEPA 2 reference files, Hugging Face VJEPA2Model or VideoMAE directories,
exported safetensors); without a run config or --config the architecture is the file's. See docs/eval.md.

Read top to bottom: options -> checkpoint -> data splits -> frozen features -> probe training -> main.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file (torchrun vjepa_fast/eval.py): import the package, not the folder
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == _here:
        sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast import ops
from vjepa_fast.config import Config, ConfigError, load_config, to_dict
from vjepa_fast.models.build import build_encoder
from vjepa_fast.models.probe import AttentiveProbe
from vjepa_fast.user_errors import exit_code
from vjepa_fast.weights import CheckpointFormatError, read_weights
from vjepa_fast.weights.load import load_part, open_encoder, pick_encoder, stated_kind

log = logging.getLogger("vjepa_fast.eval")

SYNTHETIC_VAL_START = 10**9  # synthetic validation clips: indices far from any training range, so never shared
SYNTHETIC_DEFAULT_SAMPLES = (1000, 500)  # train, val
# Probe epochs when --epochs is not given. The recipe's 20 suit large real datasets. On the synthetic 1000-clip split
# 20 epochs are only ~1250 steps, and the attentive probe sits on a plateau for most of them (its query has not yet
# found the few object tokens), so a motion score then says more about the probe's seed than about the encoder
# (docs/results.md): 100 epochs let every seed leave the plateau.
DEFAULT_EPOCHS = {"synthetic": 100, "real": 20}
CACHE_LIMIT_BYTES = 4 * 2**30  # cache a split's features only when they fit in this much (device) memory
LABELS = ("appearance", "motion")
VAL_BATCH = 256  # clips per probe call when validating on cached features (per-clip results do not depend on it)


class EvalError(RuntimeError):
    """A problem with the inputs of the evaluation (data, labels); the message is one line."""


# ---- options ------------------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # run dir, training checkpoint file or reference-format file; None: random init
    use_online_encoder: bool = False  # default: the EMA target encoder, as the reference evaluates
    label: Optional[str] = None  # synthetic data: appearance (default) / motion; real data: the index labels
    epochs: Optional[int] = None  # default: DEFAULT_EPOCHS (100 on the synthetic videos, 20 on real data)
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 16
    train_samples: Optional[int] = None  # synthetic: 1000 by default; real data: all unless set (a seeded subset)
    val_samples: Optional[int] = None  # synthetic: 500 by default; real data: all unless set
    val_path: Optional[str] = None  # real data: the validation videos (folder / index file)
    spatial_views: int = 3  # real validation data: crops per clip, predictions averaged
    num_classes: Optional[int] = None  # default: 18 appearance / 9 motion classes, or 1 + the largest real label
    probe_depth: int = 1
    probe_heads: Optional[int] = None  # default: the encoder's head count
    seed: int = 0
    device: Optional[str] = None  # default: cuda when available
    out: Optional[str] = None  # JSON result file
    labels_per_class: Optional[int] = None  # low-shot: train on this many labelled clips per class
    label_fraction: Optional[float] = None  # low-shot: train on this fraction of each class's clips
    seeds: int = 1  # probes trained (seeds seed .. seed + seeds - 1: probe init, shuffling, low-shot subset)


def validate_eval(e: EvalConfig) -> None:
    for name in ("batch_size", "spatial_views", "probe_depth"):
        if getattr(e, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(e, name)}")
    for name in ("epochs", "train_samples", "val_samples", "num_classes", "probe_heads"):
        v = getattr(e, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
    if not (0 < e.lr < float("inf")):
        raise ConfigError(f"--lr: must be positive, got {e.lr}")
    if not (0 <= e.weight_decay < float("inf")):
        raise ConfigError(f"--weight-decay: must be >= 0, got {e.weight_decay}")
    if e.label is not None and e.label not in LABELS:
        raise ConfigError(f"--label: must be one of {LABELS}, got {e.label!r}")
    if e.device is not None:
        try:
            torch.device(e.device)
        except RuntimeError:
            raise ConfigError(f"--device: not a device, got {e.device!r} (e.g. cpu, cuda, cuda:1)") from None
    if not 0 <= e.seed < 2**63:
        raise ConfigError(f"--seed: must be in [0, 2**63), got {e.seed}")
    if e.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {e.seeds}")
    if e.labels_per_class is not None and e.label_fraction is not None:
        raise ConfigError("--labels-per-class: give either it or --label-fraction, not both")
    if e.labels_per_class is not None and e.labels_per_class < 1:
        raise ConfigError(f"--labels-per-class: must be >= 1, got {e.labels_per_class}")
    if e.label_fraction is not None and not 0 < e.label_fraction <= 1:
        raise ConfigError(f"--label-fraction: must be in (0, 1], got {e.label_fraction}")


def parse_args(argv: Optional[list[str]]) -> tuple[Optional[str], list[str], EvalConfig]:
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="model/data config (default: the run's config.yaml when --checkpoint is a run)")
    p.add_argument("--checkpoint", help="run dir, training checkpoint or any weights file / dir (docs/weights.md)")
    p.add_argument("--use-online-encoder", action="store_true", help="probe the online encoder, not the EMA target")
    p.add_argument("--label", choices=LABELS, help="synthetic data: which label to predict (default appearance)")
    d = EvalConfig()
    for name, typ in (("epochs", int), ("lr", float), ("weight_decay", float), ("batch_size", int),
                      ("train_samples", int), ("val_samples", int), ("val_path", str), ("spatial_views", int),
                      ("num_classes", int), ("probe_depth", int), ("probe_heads", int), ("seed", int),
                      ("device", str), ("out", str), ("labels_per_class", int), ("label_fraction", float),
                      ("seeds", int)):
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(d, name))
    p.add_argument("overrides", nargs="*", help="dotted model/data overrides, e.g. data.num_workers=0")
    a = p.parse_intermixed_args(argv)
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    ecfg = EvalConfig(**{k: v for k, v in vars(a).items() if k in fields})
    return a.config, a.overrides, ecfg


# ---- checkpoint ---------------------------------------------------------------------------------------------------
def resolve_checkpoint(path: str) -> tuple[Path, Optional[Path]]:
    """(checkpoint file, the run's config.yaml or None). A run dir gives its newest checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():  # a Hugging Face model directory
        return p, None
    if p.is_dir() and not ckpt.is_checkpoint(p):  # a run dir (a sharded checkpoint is a dir too)
        found = ckpt.list_checkpoints(p)
        if not found and p.name == "checkpoints" and ckpt.list_checkpoints(p.parent):
            return resolve_checkpoint(str(p.parent))  # the run's checkpoints/ folder itself
        if not found:
            raise FileNotFoundError(f"checkpoint: no step_* checkpoints in {ckpt.checkpoint_dir(p)} (a run dir?)")
        run_cfg = p / "config.yaml"
        return found[-1][1], (run_cfg if run_cfg.is_file() else None)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    run_cfg = p.parent.parent / "config.yaml" if p.parent.name == "checkpoints" else None
    return p, (run_cfg if run_cfg is not None and run_cfg.is_file() else None)


def load_encoder_weights(encoder: nn.Module, path: Path, use_online: bool) -> str:
    """Load the chosen encoder of any supported weights file (vjepa_fast/weights, weights_only) into the encoder
    built from the config; returns which one ("target" / "online")."""
    w = read_weights(path)
    which, state = pick_encoder(w, use_online)
    try:
        load_part(encoder, "encoder", state, f"{w.format} {w.source} [{which} encoder]", stated_kind(w))
    except CheckpointFormatError as e:
        raise CheckpointFormatError(f"{e} (the model/data config must match the weights: pass --config "
                                    f"RUN_DIR/config.yaml or set model.size)") from None
    log.info("%s: %s", path, w.format)
    return which


# ---- data splits --------------------------------------------------------------------------------------------------
@dataclass
class Split:
    dataset: Dataset
    segments: int  # clips per video whose tokens are concatenated
    views: int  # spatial views whose predictions are averaged
    augmented: bool  # random crops/flips: features differ every epoch, so they cannot be cached


class SyntheticSplit(Dataset):
    """Clips `indices` of the synthetic stream with one of its labels."""

    def __init__(self, videos, indices: np.ndarray, label: str):
        self.videos, self.indices, self.label = videos, np.asarray(indices, dtype=np.int64), label
        from vjepa_fast.data.synthetic import LABEL_KEYS

        self.key = LABEL_KEYS[label]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        s = self.videos[int(self.indices[i])]
        return s["video"], int(s[self.key]), None

    def labels(self) -> np.ndarray:
        """The label of every clip, from the clip descriptions alone (nothing is rendered)."""
        specs = (self.videos.clip(int(i)) for i in self.indices)
        return np.array([s.appearance if self.label == "appearance" else s.motion for s in specs], dtype=np.int64)

    def restricted(self, keep: np.ndarray) -> "SyntheticSplit":
        return SyntheticSplit(self.videos, self.indices[keep], self.label)


class VideoSplit(Dataset):
    """Real videos at `indices`; a broken file gives (None, -1, message) so the batch goes on without it."""

    def __init__(self, dataset, indices: np.ndarray, train: bool):
        self.dataset, self.indices, self.train, self.epoch = dataset, indices, train, 0

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        return _labels_of(self.dataset)[self.indices]

    def restricted(self, keep: np.ndarray) -> "VideoSplit":
        return VideoSplit(self.dataset, self.indices[keep], self.train)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        try:
            # Training crops are drawn afresh each epoch (key = epoch, index); evaluation crops are fixed.
            s = self.dataset.get(idx, key=(self.epoch, idx)) if self.train else self.dataset[idx]
            return s["video"], int(s["label"]), None
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:
            where = getattr(self.dataset, "describe", lambda j: f"sample {j}")(idx)
            return None, -1, f"{where}: {type(e).__name__}: {e}"


def collate(items: list) -> tuple[Optional[torch.Tensor], torch.Tensor, list[str]]:
    good = [(v, y) for v, y, err in items if err is None]
    errors = [err for _, _, err in items if err is not None]
    if not good:
        return None, torch.empty(0, dtype=torch.long), errors
    return torch.stack([v for v, _ in good]), torch.tensor([y for _, y in good], dtype=torch.long), errors


def _labels_of(dataset) -> np.ndarray:
    if hasattr(dataset, "labels"):
        return np.asarray(dataset.labels)
    return np.concatenate([_labels_of(d) for d in dataset.datasets])  # MixedDataset


def _subset(n_total: int, n: Optional[int], seed: int, tag: int) -> np.ndarray:
    """All indices, or a seeded random subset of n of them (in order, so decoding walks the index file forward)."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng([seed, tag]).choice(n_total, size=n, replace=False))


def build_splits(cfg: Config, e: EvalConfig) -> tuple[Split, Split, int, str]:
    """(train split, validation split, number of classes, label name)."""
    d, seed = cfg.data, cfg.train.seed
    if d.path == "synthetic":
        from vjepa_fast.data.synthetic import SyntheticVideos

        if e.val_path is not None:
            raise ConfigError("--val-path: applies to real data (data.path=synthetic has its own validation range)")
        label = e.label or "appearance"
        videos = SyntheticVideos(num_frames=d.num_frames, size=d.crop_size, length=None, seed=seed,
                                 frame_step=d.frame_step)
        n_train = e.train_samples or SYNTHETIC_DEFAULT_SAMPLES[0]
        n_val = e.val_samples or SYNTHETIC_DEFAULT_SAMPLES[1]
        classes = videos.num_appearance_classes if label == "appearance" else videos.num_motion_classes
        train = Split(SyntheticSplit(videos, np.arange(n_train), label), 1, 1, False)
        val = Split(SyntheticSplit(videos, SYNTHETIC_VAL_START + np.arange(n_val), label), 1, 1, False)
        return train, val, e.num_classes or classes, label
    if e.label is not None:
        raise ConfigError("--label: applies to synthetic data; real data uses the labels of its index/folders")
    if e.val_path is None:
        raise ConfigError("--val-path: required with real data (data.path is the training split)")
    from vjepa_fast.data.video_dataset import build_video_dataset

    try:
        train_ds = build_video_dataset(d, seed, train=True)
        val_ds = build_video_dataset(dataclasses.replace(d, path=e.val_path, weights=()), seed, train=False,
                                     spatial_views=e.spatial_views)
    except ValueError as err:
        raise EvalError(f"data: {err}") from None
    labels = np.concatenate([_labels_of(train_ds), _labels_of(val_ds)])
    classes = e.num_classes or int(labels.max()) + 1
    if labels.min() < 0 or labels.max() >= classes:
        raise EvalError(f"labels span [{labels.min()}, {labels.max()}] but --num-classes is {classes}")
    segments = d.clips_per_video
    train = Split(VideoSplit(train_ds, _subset(len(train_ds), e.train_samples, e.seed, 0), True),
                  segments, 1, True)
    val = Split(VideoSplit(val_ds, _subset(len(val_ds), e.val_samples, e.seed, 1), False),
                segments, e.spatial_views, False)
    return train, val, classes, "index"


def low_shot_indices(labels: np.ndarray, seed: int, per_class: Optional[int] = None,
                     fraction: Optional[float] = None) -> np.ndarray:
    """Positions of a seeded class-balanced subset: `per_class` clips of every class (all of a class that has fewer),
    or round(fraction * size) of each class (at least one). Sorted, so decoding walks the data forward."""
    rng = np.random.default_rng([seed, 0x10F5])
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = per_class if per_class is not None else max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def low_shot_split(split: Split, e: EvalConfig, seed: int) -> Split:
    """The training split itself, or its low-shot subset for `seed` (--labels-per-class / --label-fraction)."""
    if e.labels_per_class is None and e.label_fraction is None:
        return split
    keep = low_shot_indices(split.dataset.labels(), seed, e.labels_per_class, e.label_fraction)
    return dataclasses.replace(split, dataset=split.dataset.restricted(keep))


# ---- frozen features ----------------------------------------------------------------------------------------------
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


def probe_logits(probe: nn.Module, feats: torch.Tensor) -> torch.Tensor:
    """features [B, V, L, D] -> logits [B, V, C] (the probe in fp32 whatever the encoder's precision)."""
    B, V, L, D = feats.shape
    return probe(feats.reshape(B * V, L, D).float()).reshape(B, V, -1)


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


# ---- probe training -----------------------------------------------------------------------------------------------
def make_optimizer(probe: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms and the query token."""
    decay = [p for n, p in probe.named_parameters() if p.ndim >= 2 and n != "query"]
    rest = [p for n, p in probe.named_parameters() if not (p.ndim >= 2 and n != "query")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


def cosine_lr(step: int, total: int, lr: float) -> float:
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def train_epoch(probe: nn.Module, opt: torch.optim.Optimizer, batches, step: int, total: int,
                lr: float) -> tuple[float, float, int]:
    """One pass; returns (mean loss, train accuracy, next step)."""
    probe.train()
    loss_sum, correct, count = 0.0, 0, 0
    for feats, labels in batches:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, total, lr)
        logits = probe_logits(probe, feats)  # [B, V, C]
        V = logits.shape[1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(V))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach()) * labels.numel()
        correct += int((logits.detach().softmax(-1).mean(1).argmax(-1) == labels).sum())
        count += labels.numel()
        step += 1
    if count == 0:
        raise EvalError("train split: no readable samples")
    if not math.isfinite(loss_sum):
        raise EvalError(f"probe loss is {loss_sum / count}: lower --lr or check the features")
    return loss_sum / count, correct / count, step


@torch.no_grad()
def accuracy(probe: nn.Module, batches) -> tuple[float, int]:
    """Top-1 accuracy, the class probabilities averaged over views; returns (accuracy, samples)."""
    probe.eval()
    correct, count = 0, 0
    for feats, labels in batches:
        pred = probe_logits(probe, feats).softmax(-1).mean(1).argmax(-1)
        correct += int((pred == labels).sum())
        count += labels.numel()
    if count == 0:
        raise EvalError("validation split: no readable samples")
    return correct / count, count


def probe_epochs(e: EvalConfig, cfg: Config) -> int:
    """--epochs when given, else the data's default (DEFAULT_EPOCHS)."""
    if e.epochs is not None:
        return e.epochs
    return DEFAULT_EPOCHS["synthetic" if cfg.data.path == "synthetic" else "real"]


def evaluate(cfg: Config, e: EvalConfig, ckpt_file: Optional[Path] = None, arch_from_file: bool = False) -> dict:
    """Build, load, freeze, train the probe, measure; returns the result dict (what the JSON file holds).
    arch_from_file: the architecture is the weights file's (stated or detected; vjepa_fast.load_encoder), the clip
    size the config's; otherwise the config defines the model and the file must match it."""
    t_start = time.perf_counter()
    device = torch.device(e.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    e = dataclasses.replace(e, epochs=probe_epochs(e, cfg))
    ops.configure(cfg.backends)
    torch.manual_seed(e.seed)
    model_cfg = to_dict(cfg)["model"]
    if ckpt_file is not None and arch_from_file:
        encoder, which, _, arch = open_encoder(ckpt_file, online=e.use_online_encoder,
                                               num_frames=cfg.data.num_frames, crop_size=cfg.data.crop_size)
        model_cfg = arch.to_dict()
        log.info("evaluating the %s encoder of %s", which, ckpt_file)
    elif ckpt_file is not None:
        encoder = build_encoder(cfg)
        which = load_encoder_weights(encoder, ckpt_file, e.use_online_encoder)
        log.info("evaluating the %s encoder of %s", which, ckpt_file)
    else:
        encoder = build_encoder(cfg)
        which = "random"
        log.warning("no --checkpoint: evaluating a randomly initialised encoder (a baseline, not a trained model)")
    encoder = freeze(encoder).to(device)
    train, val, num_classes, label = build_splits(cfg, e)
    t = cfg.train
    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    common = dict(batch_size=e.batch_size, device=device, autocast=autocast, num_workers=cfg.data.num_workers,
                  seed=e.seed)
    train_feats = Features(encoder, train, shuffle=True, name="train", **common)
    val_feats = Features(encoder, val, shuffle=False, name="val", **common)

    runs, used = [], [train_feats, val_feats]
    for seed in range(e.seed, e.seed + e.seeds):
        split = low_shot_split(train, e, seed)
        feats = train_feats if split is train else Features(encoder, split, shuffle=True, name="train", **common)
        used.append(feats)
        runs.append(train_probe(feats, val_feats, encoder, num_classes, dataclasses.replace(e, seed=seed), device))
        runs[-1]["train_samples"] = len(split.dataset)
        log.info("seed %d: top-1 accuracy %.4f (%d train clips)", seed, runs[-1]["accuracy"], len(split.dataset))
    accs = np.array([r["accuracy"] for r in runs])
    val_acc, n_val, history = float(accs.mean()), runs[-1]["val_samples"], runs[-1]["history"]
    return {
        "accuracy": val_acc, "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "accuracies": accs.tolist(), "seeds": list(range(e.seed, e.seed + e.seeds)),
        "labels_per_class": e.labels_per_class, "label_fraction": e.label_fraction,
        "train_samples_per_seed": [r["train_samples"] for r in runs],
        "val_samples": n_val, "train_samples": runs[-1]["train_samples"], "epochs": e.epochs,
        "checkpoint": str(ckpt_file) if ckpt_file is not None else None, "encoder": which,
        "baseline": ckpt_file is None, "label": label, "num_classes": num_classes,
        "model": model_cfg, "data_path": cfg.data.path, "val_path": e.val_path,
        "num_frames": cfg.data.num_frames, "crop_size": cfg.data.crop_size, "segments": val.segments,
        "views": val.views, "lr": e.lr, "weight_decay": e.weight_decay, "batch_size": e.batch_size,
        "probe_depth": e.probe_depth, "probe_heads": e.probe_heads or encoder.num_heads, "seed": e.seed,
        "skipped_samples": sum(len(f.errors) for f in {id(f): f for f in used}.values()), "history": history,
        "seconds": time.perf_counter() - t_start,
    }


def train_probe(train_feats: "Features", val_feats: "Features", encoder: nn.Module, num_classes: int,
                e: EvalConfig, device: torch.device) -> dict:
    """Train one probe (seed e.seed: its initialisation and the shuffling) on cached or streamed frozen features;
    returns {"accuracy", "val_samples", "history"}."""
    torch.manual_seed(e.seed)
    train_feats.seed = val_feats.seed = e.seed
    probe = AttentiveProbe(encoder.embed_dim, num_classes, e.probe_heads or encoder.num_heads,
                           depth=e.probe_depth).to(device)
    opt = make_optimizer(probe, e.lr, e.weight_decay)
    total = e.epochs * train_feats.steps_per_epoch()
    log.info("probe: %d classes, %d train / %d val clips, %d epochs, batch %d, lr %g, seed %d", num_classes,
             len(train_feats.split.dataset), len(val_feats.split.dataset), e.epochs, e.batch_size, e.lr, e.seed)
    history, step, val_acc, n_val = [], 0, None, 0
    for epoch in range(e.epochs):
        t0 = time.perf_counter()
        loss, train_acc, step = train_epoch(probe, opt, train_feats.batches(epoch), step, total, e.lr)
        row = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": train_acc}
        # Validation every epoch only when its features are cached (cheap); otherwise once, at the end.
        if val_feats.cacheable or epoch + 1 == e.epochs:
            val_acc, n_val = accuracy(probe, val_feats.batches(0, cached_batch=VAL_BATCH))
            row["val_accuracy"] = val_acc
        history.append(row)
        log.info("epoch %d/%d: train loss %.4f acc %.4f%s (%.1f s)", epoch + 1, e.epochs, loss, train_acc,
                 f" | val acc {val_acc:.4f}" if "val_accuracy" in row else "", time.perf_counter() - t0)
    return {"accuracy": val_acc, "val_samples": n_val, "history": history}


def write_result(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, overrides, e = parse_args(argv)

    def body() -> int:
        validate_eval(e)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("eval runs in one process: launch it with --nproc_per_node=1 or python -m")
        ckpt_file, run_cfg = resolve_checkpoint(e.checkpoint) if e.checkpoint else (None, None)
        path = config_path
        if path is None and run_cfg is not None:
            path = str(run_cfg)
            log.info("model/data config from %s", run_cfg)
        # no run config and no --config: the weights file says what the model is (V-JEPA 2, Hugging Face, ...)
        arch_from_file = ckpt_file is not None and path is None
        result = evaluate(load_config(path, overrides), e, ckpt_file, arch_from_file)
        if e.out:
            write_result(result, e.out)
            log.info("wrote %s", e.out)
        spread = f" +- {result['accuracy_std']:.4f} over {e.seeds} seeds" if e.seeds > 1 else ""
        print(f"top-1 accuracy {result['accuracy']:.4f}{spread} ({result['label']}, {result['val_samples']} val "
              f"clips, {result['encoder']} encoder{' - random-init baseline' if result['baseline'] else ''})")
        return 0

    return exit_code(body, (CheckpointFormatError, ckpt.CheckpointError, FileNotFoundError, EvalError))


if __name__ == "__main__":
    sys.exit(main())
