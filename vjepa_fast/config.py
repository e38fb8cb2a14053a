"""Dataclass configs: defaults (the tiny synthetic run), YAML files, dotted `key=value` overrides, validation.

Every error is a `ConfigError` whose message is one line naming the field, so the entry points can exit non-zero
with exactly that line.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """An invalid configuration; the message names the field."""


@dataclass
class ModelConfig:
    size: str = "tiny"  # tiny / small / base / large / huge / giant
    patch_size: int = 16
    tubelet_size: int = 2
    pred_width: Optional[int] = None  # None: the size's default predictor
    pred_depth: Optional[int] = None
    init: str = "reference"  # reference (the original's effective start) / depth_scaled (docs/recipe.md)
    num_heads: Optional[int] = None  # None: the size's (set for checkpoints trained with other head counts)
    pred_heads: Optional[int] = None  # None: the encoder's head count, as the original


@dataclass
class MaskConfig:
    short_blocks: int = 8
    short_scale: float = 0.15
    long_blocks: int = 2
    long_scale: float = 0.7
    aspect_min: float = 0.75
    aspect_max: float = 1.5
    tube_ratio: float = 0.9  # VideoMAE
    truncate_to_batch_min: bool = False  # reproduce the reference code's token dropping


@dataclass
class DataConfig:
    path: str = "synthetic"  # "synthetic", a folder of videos, an index file, or several of those comma-separated
    num_frames: int = 8
    crop_size: int = 96
    frame_step: int = 4
    num_workers: int = 1
    synthetic_length: int = 1_000_000
    max_error_fraction: float = 0.1  # stop when more than this fraction of samples failed to decode
    weights: tuple = ()  # relative sampling weight of each comma-separated source; () concatenates them
    decoder: str = "auto"  # auto (= pyav) / pyav / decord / torchcodec
    decode_threads: int = 1  # decoder threads per loader worker (0: the decoder's choice)
    target_fps: Optional[float] = None  # when set, the frame step is derived from each video's fps
    clips_per_video: int = 1  # clips sampled from one decode; > 1 makes "video" [clips, 3, T, H, W]
    crop_scale: tuple = (0.3, 1.0)  # random resized crop: area fraction range
    crop_aspect: tuple = (0.75, 1.35)  # random resized crop: aspect (w / h) range
    hflip_prob: float = 0.5


@dataclass
class OptimConfig:
    lr: float = 6.25e-4
    start_lr: float = 2e-4
    final_lr: float = 1e-6
    warmup_steps: int = 40
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    ema_start: float = 0.998
    ema_end: float = 1.0
    schedule_scale: float = 1.25  # schedules span steps * scale, as the reference stretches them
    clip_grad: float = 10.0  # applied after warmup; 0 disables
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # per process
    seed: int = 0
    log_every: int = 5
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    compile: bool = False  # torch.compile each transformer block
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: debugging, fast compile)
    activation_checkpointing: bool = False
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) / bf16 / fp32
    max_nonfinite: int = 5  # consecutive NaN/Inf losses before the run stops
    check_indices: bool = False  # debug: range-check every gather/loss/attention index on the GPU too (host syncs)
    resume: bool = True  # continue from <run_dir>/checkpoints when one exists
    init_from: Optional[str] = None  # start from a reference-format checkpoint (weights only; prefixes stripped)
    progress: bool = True
    peak_tflops: Optional[float] = None  # override the device's peak for MFU
    nvtx: bool = False  # NVTX ranges around the step's phases (for Nsight Systems)
    profile: bool = False  # write a torch.profiler Chrome trace of a few steps to <run_dir>/profile/
    profile_steps: int = 3
    collapse_std: float = 0.05  # warn once when the target features' spread within a clip falls under this (0: never)


@dataclass
class Config:
    method: str = "vjepa"  # vjepa / videomae
    run_dir: str = "runs/tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backends: dict = field(default_factory=dict)  # op name -> backend ("auto" or e.g. "reference")


METHODS = ("vjepa", "videomae")
SIZES = ("tiny", "small", "base", "large", "huge", "giant")
PRECISIONS = ("auto", "bf16", "fp32")
INIT_SCHEMES = ("reference", "depth_scaled")
OPS = ("gather", "attention", "dense_attention", "l1_loss", "ema")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's annotated type."""
    origin = typing.get_origin(typ)
    if origin is typing.Union:
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typ is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(value)
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _set(obj: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target = obj
    for i, part in enumerate(parts[:-1]):
        sub = getattr(target, part, None) if dataclasses.is_dataclass(target) else None
        if sub is None or not dataclasses.is_dataclass(sub):
            if isinstance(sub, dict):
                sub[".".join(parts[i + 1:])] = value
                return
            raise ConfigError(f"{dotted}: unknown key")
        target = sub
    name = parts[-1]
    hints = typing.get_type_hints(type(target))
    if not dataclasses.is_dataclass(target) or name not in hints:
        raise ConfigError(f"{dotted}: unknown key")
    if dataclasses.is_dataclass(getattr(target, name)):
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a mapping of sub-keys")
        for k, v in value.items():
            _set(obj, f"{dotted}.{k}", v)
        return
    setattr(target, name, _coerce(value, hints[name], dotted))


def apply_mapping(cfg: Config, mapping: dict, prefix: str = "") -> None:
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        sub = None
        try:
            sub = _get(cfg, key)
        except ConfigError:
            pass
        if isinstance(v, dict) and dataclasses.is_dataclass(sub):
            apply_mapping(cfg, v, prefix=f"{key}.")
        else:
            _set(cfg, key, v)


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            raise ConfigError(f"{dotted}: unknown key")
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{text}: overrides are key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file relative to itself), then overrides; validated."""
    cfg = Config()
    if path:
        for mapping in _yaml_chain(Path(path)):
            apply_mapping(cfg, mapping)
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def _yaml_chain(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}")
    try:
        mapping = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--config: {path} must hold a mapping")
    base = mapping.pop("base", None)
    chain = _yaml_chain(path.parent / base) if base else []
    return chain + [mapping]


def validate(cfg: Config) -> None:
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim
    if cfg.method not in METHODS:
        raise ConfigError(f"method: must be one of {METHODS}, got {cfg.method!r}")
    if m.size not in SIZES:
        raise ConfigError(f"model.size: must be one of {SIZES}, got {m.size!r}")
    for name in ("patch_size", "tubelet_size"):
        if getattr(m, name) < 1:
            raise ConfigError(f"model.{name}: must be >= 1")
    _validate_heads(m)
    if d.crop_size < 1 or d.crop_size % m.patch_size:
        raise ConfigError(f"data.crop_size: {d.crop_size} is not divisible by model.patch_size {m.patch_size}")
    if d.num_frames < 1 or d.num_frames % m.tubelet_size:
        raise ConfigError(f"data.num_frames: {d.num_frames} is not divisible by model.tubelet_size {m.tubelet_size}")
    if d.frame_step < 1:
        raise ConfigError("data.frame_step: must be >= 1")
    if d.num_workers < 0:
        raise ConfigError("data.num_workers: must be >= 0")
    if not 0.0 <= d.max_error_fraction <= 1.0:
        raise ConfigError("data.max_error_fraction: must be in [0, 1]")
    n_sources = len(str(d.path).split(","))
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < float("inf") for w in d.weights):
        raise ConfigError(f"data.weights: expected positive numbers, got {list(d.weights)}")
    if d.weights and len(d.weights) != n_sources:
        raise ConfigError(f"data.weights: {len(d.weights)} weights for {n_sources} sources in data.path")
    if d.decoder not in ("auto", "pyav", "decord", "torchcodec"):
        raise ConfigError(f"data.decoder: must be one of auto, pyav, decord, torchcodec, got {d.decoder!r}")
    if d.decode_threads < 0:
        raise ConfigError("data.decode_threads: must be >= 0")
    if d.target_fps is not None and not 0 < d.target_fps < float("inf"):
        raise ConfigError(f"data.target_fps: must be positive, got {d.target_fps}")
    if d.clips_per_video < 1:
        raise ConfigError("data.clips_per_video: must be >= 1")
    for name, hi in (("crop_scale", 1.0), ("crop_aspect", float("inf"))):
        pair = getattr(d, name)
        if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in pair)
                or not 0 < pair[0] <= pair[1] <= hi):
            raise ConfigError(f"data.{name}: expected [low, high] with 0 < low <= high"
                              + (" <= 1" if hi == 1.0 else "") + f", got {list(pair)}")
    if not 0.0 <= d.hflip_prob <= 1.0:
        raise ConfigError("data.hflip_prob: must be in [0, 1]")
    if t.steps < 1:
        raise ConfigError(f"train.steps: must be >= 1, got {t.steps}")
    if not 0 <= t.seed < 2**63:
        raise ConfigError(f"train.seed: must be in [0, 2**63), got {t.seed}")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size: must be >= 1, got {t.batch_size}")
    for name in ("log_every", "ckpt_every", "keep_checkpoints", "max_nonfinite", "profile_steps"):
        if getattr(t, name) < 1:
            raise ConfigError(f"train.{name}: must be >= 1")
    if not 0.0 <= t.collapse_std < float("inf"):
        raise ConfigError(f"train.collapse_std: must be >= 0, got {t.collapse_std}")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision: must be one of {PRECISIONS}, got {t.precision!r}")
    if o.warmup_steps < 0:
        raise ConfigError("optim.warmup_steps: must be >= 0")
    if not (0.0 <= o.ema_start <= 1.0 and 0.0 <= o.ema_end <= 1.0):
        raise ConfigError("optim.ema_start: EMA momenta must be in [0, 1]")
    if o.lr <= 0 or o.start_lr < 0 or o.final_lr < 0:
        raise ConfigError("optim.lr: learning rates must be positive")
    if o.schedule_scale < 1.0:
        raise ConfigError("optim.schedule_scale: must be >= 1")
    if len(o.betas) != 2:
        raise ConfigError("optim.betas: expected two numbers")
    k = cfg.masks
    for name in ("short_scale", "long_scale"):
        if not 0.0 < getattr(k, name) <= 1.0:
            raise ConfigError(f"masks.{name}: must be in (0, 1]")
    if not 0.0 < k.aspect_min <= k.aspect_max:
        raise ConfigError("masks.aspect_min: need 0 < aspect_min <= aspect_max")
    if not 0.0 < k.tube_ratio < 1.0:
        raise ConfigError("masks.tube_ratio: must be in (0, 1)")
    for op, name in cfg.backends.items():
        if op not in OPS:
            raise ConfigError(f"backends.{op}: unknown op (one of {', '.join(OPS)})")


def _validate_heads(m: ModelConfig) -> None:
    if m.init not in INIT_SCHEMES:
        raise ConfigError(f"model.init: must be one of {INIT_SCHEMES}, got {m.init!r}")
    if m.num_heads is None and m.pred_heads is None:
        return
    from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS
    from vjepa_fast.models.vit import VIT_SIZES

    enc_heads = m.num_heads or VIT_SIZES[m.size]["num_heads"]
    for key, heads, width in (("num_heads", enc_heads, VIT_SIZES[m.size]["embed_dim"]),
                              ("pred_heads", m.pred_heads or enc_heads,
                               m.pred_width or PREDICTOR_DEFAULTS[m.size]["pred_dim"])):
        if heads < 1 or width % heads:
            raise ConfigError(f"model.{key}: {heads} heads do not divide width {width}")


def to_dict(cfg: Config) -> dict:
    def conv(v):
        if isinstance(v, tuple):
            return list(v)
        return v
    return {k: (to_dict(v) if dataclasses.is_dataclass(v) else conv(v))
            for k, v in ((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg))}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
