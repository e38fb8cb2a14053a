"""The supervised ceiling of the quality benchmark: the same encoder trained end to end on one synthetic label.

    train_supervised(cfg, label, steps, out_file) -> {"steps", "seconds", "seconds_per_step", "train_accuracy", ...}

The encoder is built and initialised exactly as a pretraining run builds it (same config, same seed), an attentive
probe head (vjepa_fast/models/probe.py) sits on its output tokens, and they are trained with cross-entropy on the label
over the same synthetic training stream the pretraining runs read (clips 0, 1, 2, ... of seed train.seed) in two
phases, as linear-probing-then-fine-tuning does (Kumar et al., ICLR 2022):
1. the head alone on the frozen encoder, for HEAD_FRACTION of the steps at HEAD_LR (cosine to 0): an attentive head
   starts on a plateau (its query must first find the object tokens) that end-to-end training at the encoder's
   learning rate does not leave within a CPU budget (docs/results.md), and a head that has left it gives the encoder
   a useful gradient from the first fine-tuning step;
2. encoder and head together for the remaining steps, with the config's optimiser settings (AdamW, warm-up then
   cosine learning rate, gradient clipping).
So the ceiling starts where the random encoder's probe ends and can only be trained up from there. The encoder's
weights are saved as a weights-only file whose `encoder` entry `python -m vjepa_fast.eval --checkpoint FILE` loads, so
the ceiling is measured by the same frozen probe as every other encoder (docs/eval.md, "Representation quality
benchmark").
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vjepa_fast.config import Config, ConfigError
from vjepa_fast.data.synthetic import LABEL_KEYS, SyntheticVideos
from vjepa_fast.models.build import build_encoder
from vjepa_fast.models.probe import AttentiveProbe
from vjepa_fast.run.schedules import lr_at

HEAD_FRACTION = 0.25  # share of the steps that train the head alone (phase 1)
HEAD_LR = 5e-3  # phase 1's peak learning rate: at 1e-3 the head was still on its plateau after 400 steps (batch 8)


def _optimizer(modules, o) -> torch.optim.AdamW:
    """AdamW with the config's betas, eps and weight decay; no decay on biases, norms and the probe's query."""
    named = [(n, p) for m in modules for n, p in m.named_parameters()]
    decay = [p for n, p in named if p.ndim >= 2 and n != "query"]
    rest = [p for n, p in named if not (p.ndim >= 2 and n != "query")]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=o.start_lr, betas=tuple(o.betas), eps=o.eps)


def fit_classifier(encoder: torch.nn.Module, head: torch.nn.Module, batches, key: str, steps: int, o, device,
                   bf16: bool = False, train_encoder: bool = True) -> dict:
    """Train head (and encoder, unless `train_encoder` is False: then it stays frozen) with cross-entropy on item[key]
    over the first `steps` batches (optimiser settings `o`: cfg.optim); returns steps, seconds, the seconds of every
    step and the training accuracy of the last fifth."""
    trained = (encoder, head) if train_encoder else (head,)
    opt = _optimizer(trained, o)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    params = [p for m in trained for p in m.parameters()]
    encoder.train(train_encoder)
    head.train()
    step_seconds, correct, seen, loss = [], [], [], None
    t0 = last = time.perf_counter()
    for step, item in enumerate(itertools.islice(batches, steps)):  # islice: leaves the rest for the next phase
        for g in opt.param_groups:
            g["lr"] = lr_at(step, o.warmup_steps, steps, o.start_lr, o.lr, o.final_lr)
        video = item["video"].to(device, non_blocking=True)
        y = item[key].to(device, non_blocking=True)
        with autocast():
            with torch.set_grad_enabled(train_encoder):
                tokens = encoder(video)
            logits = head(tokens).float()
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
                     device: Optional[torch.device] = None) -> dict:
    """Train encoder + probe head on `label` for `steps` steps of cfg.train.batch_size clips; returns what it did and
    writes {"encoder": state dict} to out_file when given."""
    if cfg.data.path != "synthetic":
        raise ConfigError("data.path: the supervised ceiling needs the synthetic videos (their labels)")
    if label not in LABEL_KEYS:
        raise ConfigError(f"label: must be one of {tuple(LABEL_KEYS)}, got {label!r}")
    if steps < 1:
        raise ConfigError(f"steps: must be >= 1, got {steps}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d, t, o = cfg.data, cfg.train, cfg.optim
    torch.manual_seed(t.seed)  # the same initial encoder as a pretraining run of this config
    encoder = build_encoder(cfg).to(device)
    videos = SyntheticVideos(num_frames=d.num_frames, size=d.crop_size, length=steps * t.batch_size, seed=t.seed,
                             frame_step=d.frame_step)
    classes = videos.num_appearance_classes if label == "appearance" else videos.num_motion_classes
    head = AttentiveProbe(encoder.embed_dim, classes, encoder.num_heads).to(device)
    loader = DataLoader(videos, batch_size=t.batch_size, shuffle=False, num_workers=d.num_workers,
                        pin_memory=device.type == "cuda")
    bf16 = t.precision == "bf16" or (t.precision == "auto" and device.type == "cuda")
    head_steps = int(steps * HEAD_FRACTION)
    batches = iter(loader)
    head_only = dataclasses.replace(o, lr=HEAD_LR, start_lr=HEAD_LR, warmup_steps=0, final_lr=0.0, clip_grad=0.0)
    phases = [fit_classifier(encoder, head, batches, LABEL_KEYS[label], n, opt, device, bf16, train_encoder=both)
              for n, opt, both in ((head_steps, head_only, False), (steps - head_steps, o, True)) if n]
    result = {"label": label, "steps": sum(r["steps"] for r in phases),
              "seconds": sum(r["seconds"] for r in phases),
              "step_seconds": [s for r in phases for s in r["step_seconds"]],
              "train_accuracy": phases[-1]["train_accuracy"], "last_loss": phases[-1]["last_loss"],  # fine-tuning's
              "head_steps": head_steps, "head_train_accuracy": phases[0]["train_accuracy"] if head_steps else None}
    if out_file is not None:
        out_file = Path(out_file)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}, out_file)
        result["checkpoint"] = str(out_file)
    return result
