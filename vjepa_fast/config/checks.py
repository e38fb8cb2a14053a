"""Validating a config: one function per section, each raising ConfigError("<key>: ...") for the first problem.

This module sits above models/ (and ops/, masks, float8): what a model or a masker needs is checked by asking their
own builders and tables (models/arch.py, models/build.py), never by deriving it a second time here.
"""
from __future__ import annotations

import math
from pathlib import Path

from vjepa_fast.config.schema import LR_SCHEDULES, METHODS, PRECISIONS, Config, ConfigError, iter_keys
# Choice lists whose owners are the modules that act on the choice.
from vjepa_fast.data.decode import DECODERS
from vjepa_fast.models.pos_embed import POS_EMBEDS
from vjepa_fast.models.vit import VIT_SIZES

SIZES = tuple(VIT_SIZES)  # the ViT sizes models/vit.py defines
INT_LIMIT = 2**63  # every integer key must fit an int64 (numpy seeds, torch tensors)


# ---- validation ----------------------------------------------------------------------------------------------------
# One function per section; each raises ConfigError("<key>: ...") for the first problem it finds. A new section (or
# new keys of an existing one) adds its checks as a function here and appends it to SECTION_CHECKS.
def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}")


def _check_value_types(cfg: Config) -> None:
    """What holds for every key: finite numbers, integers that fit int64, no empty strings."""
    for key, value, _typ, _help in iter_keys(cfg):
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float):
                _require(math.isfinite(v), key, f"must be a finite number, got {v}")
            elif isinstance(v, int) and not isinstance(v, bool):
                _require(-INT_LIMIT <= v < INT_LIMIT, key, f"{v} does not fit a 64-bit integer")
            elif isinstance(v, str):
                _require(bool(v.strip()), key, "must not be empty" + (" (leave it out or null for none)"
                                                                      if _typ is not str else ""))


def _check_top(cfg: Config) -> None:
    _require(cfg.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {cfg.method!r}")


def _check_model(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    _require(m.size in SIZES, "model.size", f"must be one of {', '.join(SIZES)}, got {m.size!r}")
    for name in ("patch_size", "tubelet_size"):
        _require(getattr(m, name) >= 1, f"model.{name}", f"must be >= 1, got {getattr(m, name)}")
    _require(d.crop_size >= 1 and d.crop_size % m.patch_size == 0, "data.crop_size",
             f"{d.crop_size} is not divisible by model.patch_size {m.patch_size}")
    _require(d.num_frames >= 1 and d.num_frames % m.tubelet_size == 0, "data.num_frames",
             f"{d.num_frames} is not divisible by model.tubelet_size {m.tubelet_size}")
    _require(m.pred_depth is None or m.pred_depth >= 1, "model.pred_depth", f"must be >= 1, got {m.pred_depth}")
    _require(m.pos_embed in POS_EMBEDS, "model.pos_embed",
             f"must be one of {', '.join(POS_EMBEDS)}, got {m.pos_embed!r}")
    _require(not (cfg.method == "videomae" and m.pos_embed == "rope"), "model.pos_embed",
             "the VideoMAE decoder takes sincos or sincos_1d, not rope")
    for name in ("num_heads", "pred_num_heads"):
        _require(getattr(m, name) is None or getattr(m, name) >= 1, f"model.{name}",
                 f"must be >= 1, got {getattr(m, name)}")
    from vjepa_fast.models.arch import arch_from_config
    from vjepa_fast.models.vit import INIT_SCHEMES

    _require(m.init in INIT_SCHEMES, "model.init", f"must be one of {', '.join(INIT_SCHEMES)}, got {m.init!r}")
    width = VIT_SIZES[m.size]["embed_dim"]
    _require(m.num_heads is None or width % m.num_heads == 0, "model.num_heads",
             f"{m.num_heads} heads do not divide the {m.size} encoder's width {width}")
    _require(m.pred_mask_tokens >= 1, "model.pred_mask_tokens", f"must be >= 1, got {m.pred_mask_tokens}")
    arch = arch_from_config(cfg)  # the predictor's (VideoMAE: decoder's) width and heads as the model gets them
    heads, width = arch.pred_num_heads, arch.pred_dim
    _require(width >= 1 and width % heads == 0, "model.pred_width" if m.pred_width else "model.pred_num_heads",
             f"width {width} is not a positive multiple of the {heads} heads of the {m.size} "
             + ("decoder" if cfg.method == "videomae" else "predictor"))


def _check_masks(cfg: Config) -> None:
    k = cfg.masks
    for name in ("short_blocks", "long_blocks"):
        _require(getattr(k, name) >= 1, f"masks.{name}", f"must be >= 1, got {getattr(k, name)}")
    for name in ("short_scale", "long_scale"):
        _require(0.0 < getattr(k, name) <= 1.0, f"masks.{name}", f"must be in (0, 1], got {getattr(k, name)}")
    _require(0.0 < k.aspect_min <= k.aspect_max, "masks.aspect_min",
             f"need 0 < aspect_min <= aspect_max, got {k.aspect_min} and {k.aspect_max}")
    _require(0.0 < k.tube_ratio < 1.0, "masks.tube_ratio", f"must be in (0, 1), got {k.tube_ratio}")


def _check_data(cfg: Config) -> None:
    d = cfg.data
    _require(d.frame_step >= 1, "data.frame_step", f"must be >= 1, got {d.frame_step}")
    _require(d.num_workers >= 0, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _require(0.0 <= d.max_error_fraction <= 1.0, "data.max_error_fraction",
             f"must be in [0, 1], got {d.max_error_fraction}")
    sources = [s.strip() for s in str(d.path).split(",")]
    _require(all(sources), "data.path", f"empty source in {d.path!r}")
    _require(all(w > 0 for w in d.weights), "data.weights", f"expected positive numbers, got {list(d.weights)}")
    _require(not d.weights or len(d.weights) == len(sources), "data.weights",
             f"{len(d.weights)} weights for {len(sources)} sources in data.path")
    _require(d.decoder in DECODERS, "data.decoder", f"must be one of {', '.join(DECODERS)}, got {d.decoder!r}")
    _require(d.decode_threads >= 0, "data.decode_threads", f"must be >= 0, got {d.decode_threads}")
    _require(d.target_fps is None or d.target_fps > 0, "data.target_fps", f"must be positive, got {d.target_fps}")
    _require(d.clips_per_video >= 1, "data.clips_per_video", f"must be >= 1, got {d.clips_per_video}")
    for name, hi in (("crop_scale", 1.0), ("crop_aspect", math.inf)):
        pair = getattr(d, name)
        _require(len(pair) == 2 and 0 < pair[0] <= pair[1] <= hi, f"data.{name}",
                 "expected [low, high] with 0 < low <= high" + (" <= 1" if hi == 1.0 else "") + f", got {list(pair)}")
    _require(0.0 <= d.hflip_prob <= 1.0, "data.hflip_prob", f"must be in [0, 1], got {d.hflip_prob}")


def _check_optim(cfg: Config) -> None:
    o = cfg.optim
    _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
    for name in ("ema_start", "ema_end"):
        _require(0.0 <= getattr(o, name) <= 1.0, f"optim.{name}", f"must be in [0, 1], got {getattr(o, name)}")
    _require(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    for name in ("start_lr", "final_lr", "weight_decay", "final_weight_decay", "clip_grad"):
        _require(getattr(o, name) >= 0, f"optim.{name}", f"must be >= 0, got {getattr(o, name)}")
    _require(o.clip_start_step is None or o.clip_start_step >= 0, "optim.clip_start_step",
             f"must be >= 0 or null, got {o.clip_start_step}")
    _require(o.schedule_scale >= 1.0, "optim.schedule_scale", f"must be >= 1, got {o.schedule_scale}")
    _require(len(o.betas) == 2 and all(0.0 <= b < 1.0 for b in o.betas), "optim.betas",
             f"expected two numbers in [0, 1), got {list(o.betas)}")
    _require(o.eps > 0, "optim.eps", f"must be > 0, got {o.eps}")
    _require(o.lr_schedule in LR_SCHEDULES, "optim.lr_schedule",
             f"must be one of {', '.join(LR_SCHEDULES)}, got {o.lr_schedule!r}")
    _require(0 <= o.cooldown_steps <= cfg.train.steps, "optim.cooldown_steps",
             f"must be in [0, train.steps={cfg.train.steps}], got {o.cooldown_steps}")


def _check_loss(cfg: Config) -> None:
    c = cfg.loss
    _require(0.0 <= c.sigreg < 1.0, "loss.sigreg", f"must be in [0, 1) (0: off), got {c.sigreg}")
    _require(c.sigreg == 0 or cfg.method == "vjepa", "loss.sigreg",
             f"the SIGReg term is for method vjepa, not {cfg.method} (set loss.sigreg=0, or use "
             f"--config videomae_tiny: the tiny recipe turns the term on)")
    _require(c.sigreg_directions >= 1, "loss.sigreg_directions", f"must be >= 1, got {c.sigreg_directions}")
    _require(c.sigreg_t_max > 0, "loss.sigreg_t_max", f"must be > 0, got {c.sigreg_t_max}")
    _require(c.sigreg_t_points >= 2, "loss.sigreg_t_points", f"must be >= 2, got {c.sigreg_t_points}")


def _check_train(cfg: Config) -> None:
    t = cfg.train
    _require(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    _require(0 <= t.seed, "train.seed", f"must be in [0, 2**63), got {t.seed}")
    _require(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    for name in ("log_every", "ckpt_every", "keep_checkpoints", "max_nonfinite", "profile_steps"):
        _require(getattr(t, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(t, name)}")
    _require(t.precision in PRECISIONS, "train.precision",
             f"must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    _require(t.collapse_std >= 0, "train.collapse_std", f"must be >= 0, got {t.collapse_std}")
    _require(t.collapse_rank >= 0, "train.collapse_rank", f"must be >= 0, got {t.collapse_rank}")
    _require(t.peak_tflops is None or t.peak_tflops > 0, "train.peak_tflops", f"must be > 0, got {t.peak_tflops}")
    _require(t.tensorboard in ("auto", "true", "false"), "train.tensorboard",
             f"must be auto, true or false, got {t.tensorboard!r}")
    if t.compile_backend != "inductor":  # the default needs no look-up (importing torch._dynamo takes seconds)
        import torch._dynamo

        usual = sorted({"eager", "aot_eager", *torch._dynamo.list_backends()})  # the debug ones are accepted too
        _require(t.compile_backend in torch._dynamo.list_backends(exclude_tags=()), "train.compile_backend",
                 f"unknown torch.compile backend {t.compile_backend!r} (e.g. {', '.join(usual)}; "
                 f"torch._dynamo.list_backends() names them)")
    if t.float8:
        from vjepa_fast.float8 import unavailable_reason

        why = unavailable_reason()
        _require(why is None, "train.float8", str(why))


def _check_backends(cfg: Config) -> None:
    from vjepa_fast.ops import _backend

    b = cfg.backends
    for op in _backend.op_names():
        names = ("auto", *_backend.backend_names(op))  # the registry: the one list
        name = getattr(b, op)
        _require(name in names, f"backends.{op}", f"unknown backend {name!r} (one of {', '.join(names)})")
    modes = ("auto", *_backend.ATTENTION_BACKWARD_MODES)
    _require(b.attention_backward in modes, "backends.attention_backward",
             f"must be one of {', '.join(modes)}, got {b.attention_backward!r}")
    _require(b.attention_tuning is None or Path(b.attention_tuning).is_file(), "backends.attention_tuning",
             f"no such file {b.attention_tuning}")


def _check_parallel(cfg: Config) -> None:
    """Resume mode, HSDP mesh sizes, collective timeout."""
    t, p = cfg.train, cfg.parallel
    _require(isinstance(t.resume, bool) or t.resume == "restart", "train.resume",
             f"expected true, false or restart, got {t.resume!r}")
    _require(p.replicate >= 1, "parallel.replicate", f"must be >= 1, got {p.replicate}")
    _require(p.shard >= 0, "parallel.shard", f"must be >= 0 (0: world size / replicate), got {p.shard}")
    _require(0 < p.timeout_s, "parallel.timeout_s", f"must be a positive number of seconds, got {p.timeout_s}")


def _check_masks_fit(cfg: Config) -> None:
    """Build each mask configuration at the configured token grid and draw a few batches, so masks that cannot fit
    are found here rather than in a loader worker after step 0."""
    from vjepa_fast.masks import MultiBlockMasker
    from vjepa_fast.models.arch import arch_from_config
    from vjepa_fast.models.build import build_masker, mask_specs

    grid = arch_from_config(cfg).grid
    if cfg.method == "videomae":
        maskers = {"masks.tube_ratio": lambda: build_masker(cfg, grid)}
    else:  # each range alone, so the error names the keys of the one that does not fit
        maskers = {f"masks.{r}_blocks / masks.{r}_scale": (
            lambda spec=spec: MultiBlockMasker(grid, specs=[spec], seed=cfg.train.seed))
            for r, spec in mask_specs(cfg).items()}
    for key, make in maskers.items():
        try:
            masker = make()
            for step in range(8):
                masker.sample(step, range(4))
        except ValueError as e:
            why = str(e).splitlines()[0]
            if "block size" in why:  # the multi-block generator's message: keep the sizes, drop the sample list
                why = "no context is left " + why[why.index("(block size"):]
            raise ConfigError(f"{key}: these masks do not fit the token grid (T', H', W') = {grid}: {why}") from None


SECTION_CHECKS = [_check_value_types, _check_top, _check_model, _check_masks, _check_data, _check_optim, _check_loss,
                  _check_train, _check_parallel, _check_backends,
                  _check_masks_fit]  # last: it builds the masker from checked values


def validate(cfg: Config) -> None:
    for check in SECTION_CHECKS:
        check(cfg)
