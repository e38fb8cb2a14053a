"""What an encoder's token features carry, on the synthetic videos: `python -m vjepa_fast.feature_stats`.

    python -m vjepa_fast.feature_stats [--checkpoint RUN] [--use-online-encoder] [--clips N] [--out FILE]
                                       [--config FILE] [key=value ...]

The encoder (a run's EMA target by default, the online one with --use-online-encoder, a randomly initialised one
without --checkpoint) encodes N synthetic validation clips (the probe's validation range, docs/eval.md). Each token's
features are LayerNorm-ed without a learned scale, as the V-JEPA loss sees its targets, and four numbers describe them:

- position_share: share of the feature variance explained by the token's position alone (its mean over clips);
- clip_share: share explained by the clip alone (the mean over a clip's tokens): high when every token of a clip
  says the same thing, the clip-level collapse the collapse watch (train.collapse_std) looks for;
- object_gap: distance between the mean features of tokens an object covers and of background tokens, after the
  position mean is removed, relative to the features' overall spread (0: the features do not tell objects apart);
- effective_rank: exp(entropy) of the normalised spectrum of the centred features (1: one direction, D: isotropic).

They are what docs/results.md compares between trained and random encoders. Synthetic
data only: the object masks come from the renderer.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from vjepa_fast.config import Config, ConfigError, load_config
from vjepa_fast.models.build import build_encoder
from vjepa_fast.weights.training_checkpoint import CheckpointError
from vjepa_fast.user_errors import exit_code
from vjepa_fast.weights import CheckpointFormatError

OBJECT_TOKEN = 0.3  # a token is an object token when objects cover at least this share of its pixels
BACKGROUND_TOKEN = 0.02  # ... and a background token when they cover at most this share


def feature_stats(feats: torch.Tensor, object_share: torch.Tensor) -> dict:
    """feats [B, N, D] (B clips of N tokens), object_share [B, N] in [0, 1] -> the four statistics (module doc)."""
    if feats.dim() != 3 or object_share.shape != feats.shape[:2] or feats.shape[0] < 2:
        raise ValueError(f"feats [B >= 2, N, D] and object_share [B, N] expected, got {tuple(feats.shape)} and "
                         f"{tuple(object_share.shape)}")
    f = feats.double()
    grand, by_position, by_clip = f.mean((0, 1), keepdim=True), f.mean(0, keepdim=True), f.mean(1, keepdim=True)
    centred = f - grand
    total = centred.square().mean((0, 1)).sum()
    position_share = (by_position - grand).square().mean((0, 1)).sum() / total
    clip_share = (by_clip - grand).square().mean((0, 1)).sum() / total
    residual = f - by_position
    obj, bg = object_share >= OBJECT_TOKEN, object_share <= BACKGROUND_TOKEN
    gap = float("nan")
    if obj.any() and bg.any():
        gap = float((residual[obj].mean(0) - residual[bg].mean(0)).norm() / total.sqrt())
    s = torch.linalg.svdvals(centred.reshape(-1, f.shape[-1])).square()
    p = s / s.sum()
    rank = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum())
    return {"position_share": float(position_share), "clip_share": float(clip_share), "object_gap": gap,
            "effective_rank": float(rank), "object_tokens": float(obj.double().mean()), "clips": feats.shape[0],
            "tokens_per_clip": feats.shape[1], "dim": feats.shape[2]}


def token_object_share(coverage: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """Per-pixel object coverage [T, H, W] -> share of each token's pixels covered [T' * H' * W'] (token order)."""
    T, H, W = coverage.shape
    c = coverage.reshape(T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    return c.mean((1, 3, 5)).reshape(-1)


@torch.no_grad()
def encoder_stats(cfg: Config, encoder: torch.nn.Module, clips: int, batch: int = 16) -> dict:
    from vjepa_fast.data.synthetic import SyntheticVideos, object_coverage
    from vjepa_fast.data.probe_splits import SYNTHETIC_VAL_START

    d, m = cfg.data, cfg.model
    videos = SyntheticVideos(num_frames=d.num_frames, size=d.crop_size, length=None, seed=cfg.train.seed,
                             frame_step=d.frame_step)
    feats, shares = [], []
    for start in range(0, clips, batch):
        idx = [SYNTHETIC_VAL_START + i for i in range(start, min(start + batch, clips))]
        video = torch.stack([videos[i]["video"] for i in idx])
        out = encoder(video).float()
        feats.append(F.layer_norm(out, out.shape[-1:]))
        shares += [token_object_share(object_coverage(videos.clip(i), d.crop_size), m.tubelet_size, m.patch_size)
                   for i in idx]
    return feature_stats(torch.cat(feats), torch.stack(shares))


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.feature_stats", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="model/data config (default: the run's config.yaml when --checkpoint is a run)")
    p.add_argument("--checkpoint", help="run dir or training checkpoint (none: a randomly initialised encoder)")
    p.add_argument("--use-online-encoder", action="store_true", help="the online encoder, not the EMA target")
    p.add_argument("--clips", type=int, default=160, help="synthetic validation clips to encode (>= 2)")
    p.add_argument("--out", help="JSON result file")
    p.add_argument("overrides", nargs="*", help="dotted model/data overrides, e.g. data.crop_size=64")
    a = p.parse_intermixed_args(argv)
    from vjepa_fast.eval import freeze, load_encoder_weights, resolve_checkpoint

    def body() -> int:
        if a.clips < 2:
            raise ConfigError(f"--clips: must be >= 2, got {a.clips}")
        ckpt_file, run_cfg = resolve_checkpoint(a.checkpoint) if a.checkpoint else (None, None)
        cfg = load_config(a.config or (str(run_cfg) if run_cfg else None), a.overrides)
        if cfg.data.path != "synthetic":
            raise ConfigError("data.path: feature_stats needs the synthetic videos (their object masks)")
        torch.manual_seed(cfg.train.seed)
        encoder = build_encoder(cfg)
        which = load_encoder_weights(encoder, ckpt_file, a.use_online_encoder) if ckpt_file else "random"
        stats = {"encoder": which, "checkpoint": str(ckpt_file) if ckpt_file else None,
                 **encoder_stats(cfg, freeze(encoder), a.clips)}
        if a.out:
            Path(a.out).write_text(json.dumps(stats, indent=1) + "\n")
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        return 0

    return exit_code(body, (CheckpointFormatError, CheckpointError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
