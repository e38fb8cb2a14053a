"""Dataclass configs: defaults (the tiny synthetic run), YAML files, dotted `key=value` overrides, validation.

Every error is a `ConfigError` whose message is one line naming the field, so the entry points can exit non-zero
with exactly that line.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import math
import textwrap
import tokenize
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
    patch_size: int = 16  # spatial patch side in pixels
    tubelet_size: int = 2  # frames per token (temporal patch)
    pred_width: Optional[int] = None  # predictor (VideoMAE: decoder) width; null: the size's default
    pred_depth: Optional[int] = None  # predictor (VideoMAE: decoder) depth; null: the size's default
    init: str = "reference"  # reference (the original's effective start) / depth_scaled (docs/recipe.md)
    pos_embed: str = "sincos"  # sincos (3D table, V-JEPA) / sincos_1d (VideoMAE's) / rope (3D rotary, V-JEPA 2)
    num_heads: Optional[int] = None  # encoder attention heads; null: the size's head count
    pred_num_heads: Optional[int] = None  # predictor (VideoMAE: decoder) heads; null: the size's default
    pred_mask_tokens: int = 2  # learned mask tokens of the predictor (V-JEPA 2's checkpoints have 10)


@dataclass
class MaskConfig:
    short_blocks: int = 8  # V-JEPA short-range mask: number of blocks
    short_scale: float = 0.15  # short-range mask: spatial fraction of ONE block
    long_blocks: int = 2  # V-JEPA long-range mask: number of blocks
    long_scale: float = 0.7  # long-range mask: spatial fraction of ONE block
    aspect_min: float = 0.75  # block aspect ratio (h / w) drawn in [aspect_min, aspect_max]
    aspect_max: float = 1.5  # see aspect_min
    tube_ratio: float = 0.9  # VideoMAE: fraction of spatial positions masked (tubes through time)
    truncate_to_batch_min: bool = False  # reproduce the original code's token dropping


@dataclass
class DataConfig:
    path: str = "synthetic"  # "synthetic", a folder of videos, an index file, or several of those comma-separated
    num_frames: int = 8  # frames per clip
    crop_size: int = 96  # clip height = width in pixels
    frame_step: int = 4  # take every frame_step-th frame of the video
    num_workers: int = 1  # loader worker processes per training process (0: load in the main process)
    max_error_fraction: float = 0.1  # stop when more than this fraction of samples failed to decode
    weights: tuple[float, ...] = ()  # relative sampling weight of each comma-separated source; [] concatenates them
    decoder: str = "auto"  # auto (= pyav) / pyav / decord / torchcodec
    decode_threads: int = 1  # decoder threads per loader worker (0: the decoder's choice)
    target_fps: Optional[float] = None  # when set, the frame step is derived from each video's fps
    clips_per_video: int = 1  # clips sampled from one decode; > 1 makes "video" [clips, 3, T, H, W]
    crop_scale: tuple[float, ...] = (0.3, 1.0)  # random resized crop: area fraction range
    crop_aspect: tuple[float, ...] = (0.75, 1.35)  # random resized crop: aspect (w / h) range
    hflip_prob: float = 0.5  # probability of a horizontal flip


@dataclass
class OptimConfig:
    lr: float = 6.25e-4  # peak learning rate (reached after warm-up, then cosine to final_lr)
    start_lr: float = 2e-4  # learning rate at step 0 (linear warm-up to lr)
    final_lr: float = 1e-6  # learning rate at the end of the schedule
    warmup_steps: int = 40  # steps of linear learning-rate warm-up
    weight_decay: float = 0.04  # AdamW weight decay at step 0 (cosine to final_weight_decay)
    final_weight_decay: float = 0.4  # weight decay at the end of the schedule
    ema_start: float = 0.998  # target-encoder EMA momentum at step 0 (linear to ema_end)
    ema_end: float = 1.0  # EMA momentum at the end of the schedule
    schedule_scale: float = 1.25  # schedules span steps * scale, as the reference stretches them
    clip_grad: float = 10.0  # encoder's and predictor's gradient norms each clipped to this; 0 disables
    clip_start_step: Optional[int] = None  # first clipped step (null: optim.warmup_steps; docs/recipe.md)
    betas: tuple[float, ...] = (0.9, 0.999)  # AdamW betas, each in [0, 1)
    eps: float = 1e-8  # AdamW epsilon (> 0)
    lr_schedule: str = "cosine"  # cosine (warm-up, cosine decay) / wsd (warm-up, constant, linear cool-down)
    cooldown_steps: int = 0  # wsd: the last cooldown_steps steps decay linearly from lr to final_lr


@dataclass
class LossConfig:
    sigreg: float = 0.0  # SIGReg weight w in [0, 1): (1 - w) x prediction loss + w x SIGReg; 0: the original loss
    sigreg_directions: int = 64  # SIGReg: random unit directions, drawn afresh each step
    sigreg_t_max: float = 3.0  # SIGReg: characteristic functions are compared for t in [0, sigreg_t_max]
    sigreg_t_points: int = 17  # SIGReg: points of the t grid (trapezoid rule)


@dataclass
class TrainConfig:
    steps: int = 300  # optimizer steps of the whole run
    batch_size: int = 8  # clips per process and step (global batch = batch_size x processes)
    seed: int = 0  # seeds weights, data order, crops and masks
    log_every: int = 5  # steps between metrics.jsonl rows
    ckpt_every: int = 100  # steps between checkpoints (the last step always saves)
    keep_checkpoints: int = 2  # newest checkpoints kept in <run_dir>/checkpoints
    compile: bool = False  # torch.compile each transformer block
    compile_backend: str = "inductor"  # torch.compile backend (aot_eager: debugging, fast compile)
    activation_checkpointing: bool = False  # recompute block activations in the backward (less memory)
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) / bf16 / fp32
    max_nonfinite: int = 5  # consecutive NaN/Inf losses before the run stops
    check_indices: bool = False  # debug: range-check every gather/loss/attention index on the GPU too (host syncs)
    resume: Any = True  # true: continue the newest checkpoint / false: refuse a dir that has one / restart
    init_from: Optional[str] = None  # start from weights (any format of docs/weights.md; weights only)
    progress: bool = True  # progress bar (tqdm) or a line per logged step on stderr
    peak_tflops: Optional[float] = None  # override the device's peak for MFU
    nvtx: bool = False  # NVTX ranges around the step's phases (for Nsight Systems)
    profile: bool = False  # write a torch.profiler Chrome trace of a few steps to <run_dir>/profile/
    profile_steps: int = 3  # steps traced when train.profile is on
    collapse_std: float = 0.05  # warn once when the target features' spread within a clip falls under this (0: never)
    collapse_rank: float = 1.0  # warn once when an effective rank falls under this many directions per clip (0: never)
    tensorboard: str = "auto"  # TensorBoard event files in <run_dir>/tb: auto (on when installed) / true / false
    plots: bool = True  # a finished run draws <run_dir>/plots/ (curves, masks) when matplotlib is installed
    float8: bool = False  # float8 matmuls in the transformer linears (torchao, vjepa_fast/float8.py)
    async_checkpoint: bool = False  # write checkpoints in the background (at most one in flight)


@dataclass
class ParallelConfig:
    replicate: int = 1  # HSDP: groups that each hold a full copy (usually the number of nodes)
    shard: int = 0  # processes one copy is sharded over; 0: world size / replicate (full sharding by default)
    timeout_s: float = 600.0  # a collective that waits longer than this fails instead of hanging


@dataclass
class BackendsConfig:
    """Forced op backends ("auto": the registry's choice, or VJEPA_FAST_<OP>_BACKEND) and the attention kernels'
    settings; docs/architecture.md, "Backends"."""
    gather: str = "auto"  # backend of the token gather
    attention: str = "auto"  # backend of the packed (varlen) attention
    dense_attention: str = "auto"  # backend of the target encoder's dense attention
    l1_loss: str = "auto"  # backend of the fused L1 target loss
    ema: str = "auto"  # backend of the EMA update
    rope: str = "auto"  # backend of V-JEPA 2's rotary q/k (auto: torch)
    attention_backward: str = "auto"  # split / atomic ("auto": VJEPA_FAST_FLASH_BWD, else split)
    attention_tuning: Optional[str] = None  # block-size table JSON (null: VJEPA_FAST_FLASH_TUNING, else packaged)


@dataclass
class Config:
    method: str = "vjepa"  # vjepa (feature prediction) / videomae (pixel-reconstruction baseline)
    run_dir: str = "runs/tiny"  # where config.yaml, metrics.jsonl, checkpoints/ and plots/ go
    model: ModelConfig = field(default_factory=ModelConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backends: BackendsConfig = field(default_factory=BackendsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


METHODS = ("vjepa", "videomae")
SIZES = ("tiny", "small", "base", "large", "huge", "giant")
PRECISIONS = ("auto", "bf16", "fp32")
DECODERS = ("auto", "pyav", "decord", "torchcodec")
POS_EMBEDS = ("sincos", "sincos_1d", "rope")
LR_SCHEDULES = ("cosine", "wsd")
INT_LIMIT = 2**63  # every integer key must fit an int64 (numpy seeds, torch tensors)
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


# ---- reading values ------------------------------------------------------------------------------------------------
def _number(value: Any, key: str) -> float:
    """A float from a YAML value; YAML 1.1 reads `1e-4` (no dot) as a string, so numeric strings count."""
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, key: str) -> int:
    if isinstance(value, str):
        try:
            value = float(value.strip().replace("_", "")) if value.strip() else value
        except ValueError:
            pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


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
        return _integer(value, key)
    if typ is float:
        return _number(value, key)
    if typ is str:
        if isinstance(value, bool):  # `train.tensorboard=true`: YAML's boolean read back as the word
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typ is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(typ)[0] if typing.get_args(typ) else None
        return tuple(_coerce(v, item, key) for v in value) if item is not None else tuple(value)
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _set(obj: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{dotted}: unknown key")
    target = obj
    for i, part in enumerate(parts[:-1]):
        sub = getattr(target, part, None) if dataclasses.is_dataclass(target) else None
        if sub is None or not dataclasses.is_dataclass(sub):
            if isinstance(sub, dict) and part in typing.get_type_hints(type(target)):
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
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError(f"{dotted}: unknown key")
        obj = getattr(obj, part)
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{text[:200]!r}: overrides are key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"{text[:200]!r}: an override needs a key before '=' (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except Exception:  # not YAML (or YAML that cannot be built, such as an impossible date): the raw text
        value = raw
    return key.strip(), value


# ---- files ---------------------------------------------------------------------------------------------------------
def packaged_configs() -> list[str]:
    """Names of the recipes shipped with the package (`--config NAME`)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """`--config` takes a path, or the name of a packaged recipe (`tiny`, `vitl16`, with or without `.yaml`)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.parent == Path("."):
        packaged = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
        if packaged.is_file():
            return packaged
    raise ConfigError(f"--config: no such file {name} (packaged recipes: {', '.join(packaged_configs())})")


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Defaults, then the YAML file (which may name a `base:` file relative to itself), then overrides; validated."""
    cfg = Config()
    if path is not None:
        if not str(path).strip():
            raise ConfigError("--config: empty file name")
        for mapping in _yaml_chain(resolve_config_path(str(path)), ()):
            apply_mapping(cfg, mapping)
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value)
    validate(cfg)
    return cfg


def _yaml_chain(path: Path, seen: tuple[Path, ...]) -> list[dict]:
    if path.resolve() in seen:
        loop = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"--config: the base: chain loops ({loop})")
    if not path.is_file():
        raise ConfigError(f"--config: no such file {path}" + (f" (the base: of {seen[-1]})" if seen else ""))
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"--config: cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config: {path} is not a text (UTF-8) YAML file") from None
    try:
        mapping = yaml.safe_load(text) or {}
    except Exception as e:  # YAMLError, or a value PyYAML cannot build (an impossible date)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"--config: {path} is not valid YAML ({first})") from None
    if not isinstance(mapping, dict):
        raise ConfigError(f"--config: {path} must hold a mapping")
    base = mapping.pop("base", None)
    if base is not None and (not isinstance(base, str) or not base.strip()):
        raise ConfigError(f"--config: {path}: base: must name a YAML file, got {base!r}")
    chain = _yaml_chain(path.parent / base, (*seen, path.resolve())) if base else []
    return chain + [mapping]


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


def _predictor_heads(cfg: Config) -> int:
    """Attention heads of the predictor (V-JEPA) or decoder (VideoMAE) of this size: the width must split into them."""
    if cfg.model.pred_num_heads is not None:
        return cfg.model.pred_num_heads
    if cfg.method == "videomae":
        from vjepa_fast.models.videomae import DECODER_DEFAULTS

        return DECODER_DEFAULTS[cfg.model.size]["num_heads"]
    from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS

    return cfg.model.num_heads or PREDICTOR_DEFAULTS[cfg.model.size]["num_heads"]  # the encoder's, as the original


def _predictor_width(cfg: Config) -> int:
    if cfg.method == "videomae":
        from vjepa_fast.models.videomae import DECODER_DEFAULTS

        return DECODER_DEFAULTS[cfg.model.size]["dim"]
    from vjepa_fast.models.predictor import PREDICTOR_DEFAULTS

    return PREDICTOR_DEFAULTS[cfg.model.size]["pred_dim"]


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
    from vjepa_fast.models.vit import INIT_SCHEMES, VIT_SIZES

    _require(m.init in INIT_SCHEMES, "model.init", f"must be one of {', '.join(INIT_SCHEMES)}, got {m.init!r}")
    width = VIT_SIZES[m.size]["embed_dim"]
    _require(m.num_heads is None or width % m.num_heads == 0, "model.num_heads",
             f"{m.num_heads} heads do not divide the {m.size} encoder's width {width}")
    _require(m.pred_mask_tokens >= 1, "model.pred_mask_tokens", f"must be >= 1, got {m.pred_mask_tokens}")
    heads, width = _predictor_heads(cfg), m.pred_width or _predictor_width(cfg)
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
             f"the SIGReg term is for method vjepa, not {cfg.method} (set loss.sigreg=0)")
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
    if t.float8:
        from vjepa_fast.float8 import unavailable_reason

        why = unavailable_reason()
        _require(why is None, "train.float8", str(why))


def backend_names(op: str) -> tuple[str, ...]:
    """The backends `op` declares (the registry, ops/_backend.py: the one place `backends.<op>` is checked against)."""
    from vjepa_fast.ops import _backend

    return _backend.backend_names(op)


def _check_backends(cfg: Config) -> None:
    from vjepa_fast.ops import _backend

    b = cfg.backends
    for op in _backend.op_names():
        names = ("auto", *backend_names(op))
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
    from vjepa_fast.masks import BlockSpec, MultiBlockMasker, TubeMasker

    m, d, k = cfg.model, cfg.data, cfg.masks
    grid = (d.num_frames // m.tubelet_size, d.crop_size // m.patch_size, d.crop_size // m.patch_size)
    if cfg.method == "videomae":
        maskers = {"masks.tube_ratio": lambda: TubeMasker(grid, mask_ratio=k.tube_ratio, seed=cfg.train.seed)}
    else:
        aspect = (k.aspect_min, k.aspect_max)
        maskers = {f"masks.{r}_blocks / masks.{r}_scale": (
            lambda n=getattr(k, f"{r}_blocks"), sc=getattr(k, f"{r}_scale"):
            MultiBlockMasker(grid, specs=[BlockSpec(n, sc, aspect)], seed=cfg.train.seed)) for r in ("short", "long")}
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


# ---- help ----------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in the dataclass's source: the key's one-line meaning."""
    comments, name = {}, None
    for tok in tokenize.generate_tokens(io.StringIO(textwrap.dedent(inspect.getsource(cls))).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and name is None:
            name = tok.string
        elif tok.type == tokenize.COMMENT and name is not None:
            comments[name] = tok.string.lstrip("#").strip()
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            name = None
    return comments


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is typing.Union:
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(typ))
    if typ is tuple or typing.get_origin(typ) is tuple:
        return "list"
    return {dict: "mapping"}.get(typ, getattr(typ, "__name__", str(typ)))


def iter_keys(cfg: Any, prefix: str = ""):
    """(dotted key, value, annotated type, one-line meaning) of every leaf key, in declaration order."""
    hints, comments = typing.get_type_hints(type(cfg)), _field_comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name], comments.get(f.name, "")


def help_table(cfg: Optional[Config] = None) -> str:
    """Every key with its type, default and meaning (for `--help`); `backends.<op>` lists each op's choices."""
    from vjepa_fast.ops import _backend

    rows = []
    for key, value, typ, meaning in iter_keys(cfg or Config()):
        op = key.removeprefix("backends.")
        if key.startswith("backends.") and op in _backend.op_names():
            meaning += ": auto, " + ", ".join(backend_names(op))
        shown = "null" if value is None else yaml.safe_dump(to_dict_value(value), default_flow_style=True).strip()
        rows.append((key, _type_name(typ), shown.removesuffix("\n..."), meaning))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"  {k:<{width[0]}}  {t:<{width[1]}}  {d:<{width[2]}}  {m}".rstrip() for k, t, d, m in rows)


def to_dict_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def to_dict(cfg: Config) -> dict:
    return {f.name: (to_dict(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name))
                     else to_dict_value(getattr(cfg, f.name))) for f in dataclasses.fields(cfg)}


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(dump_config(cfg))
