"""One evaluation from start to result: build and load the encoder, freeze it, build the splits and their features,
train a probe per seed, and gather what the JSON result holds."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vjepa_fast import ops
from vjepa_fast.config import Config, to_dict
from vjepa_fast.eval.checkpoint import load_encoder_weights
from vjepa_fast.eval.features import Features, freeze
from vjepa_fast.eval.options import EvalConfig, probe_epochs, probe_qk_std
from vjepa_fast.eval.probe import train_probe
from vjepa_fast.eval.splits import build_splits, low_shot_split
from vjepa_fast.models.build import build_encoder
from vjepa_fast.weights.load import open_encoder

log = logging.getLogger("vjepa_fast.eval")


def warn_plateau(seed: int, run: dict, num_classes: int, e: EvalConfig, embed_dim: int) -> None:
    log.warning("seed %d: the probe ended on its plateau (final training loss %.3f, chance loss %.3f, ln %d = %.3f): "
                "its accuracy %.4f measures the probe's seed, not the encoder; train it longer (--epochs, %d here), "
                "with a wider query/key init (--probe-qk-std %.3g, the width's ** -0.5; %g here) or a higher --lr "
                "(%g here); docs/eval.md, \"The probe\"", seed, run["train_loss"], run["chance_loss"], num_classes,
                math.log(num_classes), run["accuracy"], e.epochs, embed_dim ** -0.5, probe_qk_std(e), e.lr)


def evaluate(cfg: Config, e: EvalConfig, ckpt_file: Optional[Path] = None, arch_from_file: bool = False) -> dict:
    """Build, load, freeze, train the probe, measure; returns the result dict (what the JSON file holds).
    arch_from_file: the architecture is the weights file's (stated or detected; vjepa_fast.load_encoder), the clip
    size the config's; otherwise the config defines the model and the file must match it."""
    t_start = time.perf_counter()
    device = torch.device(e.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    e = dataclasses.replace(e, epochs=probe_epochs(e))
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
        if runs[-1]["plateau"]:
            warn_plateau(seed, runs[-1], num_classes, e, encoder.embed_dim)
    accs = np.array([r["accuracy"] for r in runs])
    val_acc, n_val, history = float(accs.mean()), runs[-1]["val_samples"], runs[-1]["history"]
    return {
        "accuracy": val_acc, "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "accuracies": accs.tolist(), "seeds": list(range(e.seed, e.seed + e.seeds)),
        "labels_per_class": e.labels_per_class, "label_fraction": e.label_fraction,
        "train_samples_per_seed": [r["train_samples"] for r in runs],
        "plateau_per_seed": [r["plateau"] for r in runs], "train_loss_per_seed": [r["train_loss"] for r in runs],
        "chance_loss_per_seed": [r["chance_loss"] for r in runs],
        "val_samples": n_val, "train_samples": runs[-1]["train_samples"], "epochs": e.epochs,
        "checkpoint": str(ckpt_file) if ckpt_file is not None else None, "encoder": which,
        "baseline": ckpt_file is None, "label": label, "num_classes": num_classes,
        "model": model_cfg, "data_path": cfg.data.path, "val_path": e.val_path,
        "num_frames": cfg.data.num_frames, "crop_size": cfg.data.crop_size, "segments": val.segments,
        "views": val.views, "lr": e.lr, "weight_decay": e.weight_decay, "batch_size": e.batch_size,
        "probe_depth": e.probe_depth, "probe_heads": e.probe_heads or encoder.num_heads,
        "probe_qk_std": probe_qk_std(e), "seed": e.seed,
        "skipped_samples": sum(len(f.errors) for f in {id(f): f for f in used}.values()), "history": history,
        "seconds": time.perf_counter() - t_start,
    }
