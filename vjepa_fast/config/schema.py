"""The config schema: the dataclasses, their defaults (the tiny synthetic run) and what each key means, and the
choice lists no other module owns. A leaf: it imports nothing of the project, so every floor may read it.

Every error is a `ConfigError` whose message is one line naming the field, so the entry points can exit non-zero
with exactly that line. Reading YAML and overrides: load.py; the checks: checks.py; --help: help.py.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from dataclasses import dataclass, field
from typing import Any, Optional


def single_line(text: str) -> str:
    """`text` with every character that could break or hide part of a terminal line (line and record separators,
    control and format characters) written as its escape, so that a user-facing error stays exactly one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


class ConfigError(ValueError):
    """An invalid configuration; the message names the field and is one line (user input in it is escaped)."""

    def __init__(self, message: str):
        super().__init__(single_line(str(message)))


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
PRECISIONS = ("auto", "bf16", "fp32")
LR_SCHEDULES = ("cosine", "wsd")


# ---- the keys --------------------------------------------------------------------------------------------------------
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


def iter_keys(cfg: Any, prefix: str = ""):
    """(dotted key, value, annotated type, one-line meaning) of every leaf key, in declaration order."""
    hints, comments = typing.get_type_hints(type(cfg)), _field_comments(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from iter_keys(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name], comments.get(f.name, "")


def to_dict_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def to_dict(cfg: Config) -> dict:
    return {f.name: (to_dict(getattr(cfg, f.name)) if dataclasses.is_dataclass(getattr(cfg, f.name))
                     else to_dict_value(getattr(cfg, f.name))) for f in dataclasses.fields(cfg)}
