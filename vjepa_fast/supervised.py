"""The supervised ceiling of the quality benchmark: the same encoder trained end to end on one synthetic label.

    train_supervised(cfg, label, steps, out_file) -> {"steps", "seconds", "step_seconds", "train_accuracy", ...}

The encoder is built and initialised exactly as a pretraining run builds it (same config, same seed), an attentive
probe head (vjepa_fast/models/probe.py) sits on its output tokens, and they are trained with cross-entropy on the label
over the same synthetic training stream the pretraining runs read (clips 0, 1, 2, ... of seed train.seed) in two
phases, as linear-probing-then-fine-tuning does (Kumar et al., ICLR 2022):
1. the head alone on the frozen encoder: the encoder's tokens for the first HEAD_CLIPS clips of the stream are
   computed once, and the head is trained on them for HEAD_EPOCHS epochs (batch HEAD_BATCH, seeded shuffle, AdamW at
   HEAD_LR, cosine to 0), as a probe on precomputed features is (vjepa_fast/eval/probe.py's loop). An attentive head
   starts on a plateau (its query must first find the object tokens) that end-to-end training at the encoder's
   learning rate, or a few hundred head-only steps on fresh clips where the label is weakly exposed, do not leave
   within a CPU budget (docs/eval.md, docs/results.md); a head that has left it gives the encoder a useful gradient
   from the first fine-tuning step. Its cost does not depend on the end-to-end step count;
2. encoder and head together for `steps` steps on the clips after those, with the config's optimiser settings
   (AdamW, warm-up then cosine learning rate, gradient clipping). No clip is used in both phases.
So the ceiling starts where the random encoder's probe ends and can only be trained up from there. The encoder's
weights are saved as a weights-only file whose `encoder` entry `python -m vjepa_fast.eval --checkpoint FILE` loads, so
the ceiling is measured by the same frozen probe as every other encoder (docs/eval.md, "Representation quality
benchmark").
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vjepa_fast.config import Config, ConfigError
from vjepa_fast.data.synthetic import LABEL_KEYS, SyntheticVideos
from vjepa_fast.eval.probe import make_optimizer, train_epoch
from vjepa_fast.models.build import build_encoder
from vjepa_fast.models.probe import AttentiveProbe
from vjepa_fast.run.schedules import lr_at

# Phase 1: the head on cached frozen tokens, as a probe on precomputed features is trained. On a label that the random
# encoder exposes only weakly (objects moving 0.4-1% of the frame per frame), ~700 steps of one fresh batch of 8 through
# the frozen encoder never left the head's plateau (training accuracy 0.12, chance 0.111); 50 epochs over 1000 cached
# clips (batch 16, lr 3e-3) reached 0.93-1.0 for about the same time on a 2-core CPU (docs/eval.md).
HEAD_CLIPS = 1000  # clips at the start of the stream whose tokens are cached (rounded up to whole batches)
HEAD_EPOCHS = 50
HEAD_LR = 3e-3  # peak learning rate, cosine to 0 over the epochs
HEAD_BATCH = 16
HEAD_WEIGHT_DECAY = 0.01


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


@torch.no_grad()
def cache_tokens(encoder: torch.nn.Module, batches, key: str, n_batches: int, device,
                 bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen encoder's output tokens [N, L, D] (fp32) and item[key] labels [N] of the next `n_batches` batches
    of the iterator `batches` (islice: the rest is left for the next phase)."""
    encoder.eval()
    tokens, labels = [], []
    for item in itertools.islice(batches, n_batches):
        with _autocast(device, bf16):
            tokens.append(encoder(item["video"].to(device, non_blocking=True)).float())
        labels.append(item[key].to(device, non_blocking=True))
    if not tokens:
        raise ConfigError("supervised training: no clips for the head phase")
    return torch.cat(tokens), torch.cat(labels)


def fit_head(head: torch.nn.Module, tokens: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
             lr: float = HEAD_LR, batch: int = HEAD_BATCH, weight_decay: float = HEAD_WEIGHT_DECAY) -> dict:
    """Train `head` on cached tokens [N, L, D] and labels [N] for `epochs` epochs (AdamW, cosine to 0, a shuffle
    seeded by `seed`); returns the last epoch's mean loss and training accuracy."""
    opt = make_optimizer(head, lr, weight_decay)
    shuffle = torch.Generator().manual_seed(seed)
    total, step = epochs * math.ceil(len(labels) / batch), 0
    loss = accuracy = None
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=shuffle).to(labels.device)
        batches = ((tokens[i].unsqueeze(1), labels[i]) for i in order.split(batch))  # one view per clip
        loss, accuracy, step = train_epoch(head, opt, batches, step, total, lr)
    return {"epochs": epochs, "train_loss": loss, "train_accuracy": accuracy}


def fit_classifier(encoder: torch.nn.Module, head: torch.nn.Module, batches, key: str, steps: int, o, device,
                   bf16: bool = False) -> dict:
    """Train encoder and head end to end with cross-entropy on item[key] over the next `steps` batches (optimiser
    settings `o`: cfg.optim); returns steps, seconds, the seconds of every step and the training accuracy of the last
    fifth."""
    opt = make_optimizer((encoder, head), o.start_lr, o.weight_decay, tuple(o.betas), o.eps)
    params = [p for m in (encoder, head) for p in m.parameters()]
    encoder.train()
    head.train()
    step_seconds, correct, seen, loss = [], [], [], None
    t0 = last = time.perf_counter()
    for step, item in enumerate(itertools.islice(batches, steps)):  # islice: reads no batch beyond its own
        for g in opt.param_groups:
            g["lr"] = lr_at(step, o.warmup_steps, steps, o.start_lr, o.lr, o.final_lr)
        video = item["video"].to(device, non_blocking=True)
        y = item[key].to(device, non_blocking=True)
        with _autocast(device, bf16):
            logits = head(encoder(video)).float()
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.clip_grad > 0 and step >= o.warmup_steps:
            torch.nn.utils.clip_grad_norm_(params, o.clip_grad)
        opt.step()
        correct.append(int((logits.detach().argmax(-1) == y).sum()))
        seen.append(y.numel())
        now = time.perf_counter()
        step_seconds.append(now - last)
        last = now
    if not seen:
        raise ConfigError("supervised training: no batches")
    tail = max(1, len(seen) // 5)
    return {"steps": len(seen), "seconds": time.perf_counter() - t0, "step_seconds": step_seconds,
            "train_accuracy": sum(correct[-tail:]) / sum(seen[-tail:]), "last_loss": float(loss.detach())}


def train_supervised(cfg: Config, label: str, steps: int, out_file: Optional[Path] = None,
                     device: Optional[torch.device] = None, head_clips: Optional[int] = None,
                     head_epochs: Optional[int] = None) -> dict:
    """Train the head on the frozen encoder's tokens of the first `head_clips` clips (HEAD_CLIPS) for `head_epochs`
    epochs (HEAD_EPOCHS), then encoder + head end to end for `steps` steps of cfg.train.batch_size clips; returns
    what it did and writes {"encoder": state dict} to out_file when given."""
    head_clips = HEAD_CLIPS if head_clips is None else head_clips
    head_epochs = HEAD_EPOCHS if head_epochs is None else head_epochs
    if cfg.data.path != "synthetic":
        raise ConfigError("data.path: the supervised ceiling needs the synthetic videos (their labels)")
    if label not in LABEL_KEYS:
        raise ConfigError(f"label: must be one of {tuple(LABEL_KEYS)}, got {label!r}")
    for name, value in (("steps", steps), ("head_clips", head_clips), ("head_epochs", head_epochs)):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d, t, o = cfg.data, cfg.train, cfg.optim
    torch.manual_seed(t.seed)  # the same initial encoder as a pretraining run of this config
    encoder = build_encoder(cfg).to(device)
    head_batches = math.ceil(head_clips / t.batch_size)
    videos = SyntheticVideos(num_frames=d.num_frames, size=d.crop_size, length=(head_batches + steps) * t.batch_size,
                             seed=t.seed, frame_step=d.frame_step)
    classes = videos.num_appearance_classes if label == "appearance" else videos.num_motion_classes
    head = AttentiveProbe(encoder.embed_dim, classes, encoder.num_heads).to(device)
    loader = DataLoader(videos, batch_size=t.batch_size, shuffle=False, num_workers=d.num_workers,
                        pin_memory=device.type == "cuda")
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    batches = iter(loader)  # one stream: phase 1 takes its first head_batches batches, phase 2 the rest
    t0 = time.perf_counter()
    tokens, labels = cache_tokens(encoder, batches, LABEL_KEYS[label], head_batches, device, bf16)
    head_fit = fit_head(head, tokens, labels, head_epochs, t.seed)
    del tokens, labels
    head_seconds = time.perf_counter() - t0
    tuned = fit_classifier(encoder, head, batches, LABEL_KEYS[label], steps, o, device, bf16)
    result = {"label": label, **tuned, "head_clips": head_batches * t.batch_size, "head_epochs": head_epochs,
              "head_seconds": head_seconds, "head_train_accuracy": head_fit["train_accuracy"]}
    if out_file is not None:
        out_file = Path(out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}, out_file)
        result["checkpoint"] = str(out_file)
    return result
