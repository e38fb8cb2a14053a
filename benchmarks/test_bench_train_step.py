"""One full training step (forward, backward, clip, AdamW, EMA) through the real Trainer, per way of running it.

Rows (group "train_step"):
- vjepa_fast: VJEPA with the default backends (gather, varlen attention, fused L1 loss, fused EMA kernels),
  every sample's full token sets packed (no truncation), eager;
- vjepa_fast_compiled (GPU only): the same with each transformer block torch.compile'd (train.compile=true);
- vjepa_fast_truncated: the fast path on exactly the reference-style step's tokens (masks.truncate_to_batch_min=true),
  compiled on a GPU: the equal-work comparison ("faster at the same work");
- vjepa_reference_style (the baseline): the original code's way on the same model: masks truncated to the batch
  minimum, one dense pass per mask configuration, plain SDPA, LayerNorm-gather-abs-mean loss, Python EMA loop, eager;
- videomae: the pixel-reconstruction baseline (tube masks 90%, decoder, norm-pix MSE), eager.

GPU: ViT-L/16 at 16 x 224 (configs/vitl16.yaml, configs/videomae_vitl16.yaml), bf16 autocast, batch 24 per step or
the largest of 16, 8, 4 that fits. CPU: the tiny model on a 4 x 6 x 6 grid, batch 4, a few rounds.
Batches come from the real loader and collate (synthetic clips), drawn before timing and cycled, so data loading
is not in the time (benchmarks/test_bench_data.py measures it). Every timed round ends with a CUDA synchronise (the
step itself reads nothing back but on log steps).

extra_info: clips/s, tokens/s, achieved TFLOP/s and MFU from the model's useful FLOPs (vjepa_fast.models.flops) over the
median step time (MFU against the card's datasheet bf16 peak, matmul_fraction against the measured 8192^3 bf16
matmul rate), peak memory, and in the reference-style row `fast_path_speedup`: the fast path's clips/s over its own,
when the fast path ran earlier in the same session, and `equal_tokens_speedup`: vjepa_fast_truncated's clips/s over
its own (the same tokens). The reference-style and truncated rows' FLOPs count the tokens they keep.

    PYTHONPATH=. pytest benchmarks/test_bench_train_step.py --benchmark-only
"""
from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from vjepa_fast import ops  # noqa: E402
from vjepa_fast.config import load_config  # noqa: E402
from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader  # noqa: E402
from forced_backends import forced_backends  # noqa: E402
from reference_style import ReferenceStyleVJEPA  # noqa: E402
from vjepa_fast.parallel import DistInfo  # noqa: E402
from vjepa_fast.train import Trainer  # noqa: E402

CUDA = torch.cuda.is_available()
if CUDA:
    BATCH_SIZES = (24, 16, 8, 4)  # the reference's 24 per GPU, else the largest that fits
    CONFIGS = {"vjepa": "configs/vitl16.yaml", "videomae": "configs/videomae_vitl16.yaml"}
    SHAPE = []
    NUM_BATCHES, WARMUP, ROUNDS = 3, 3, 10
    VARIANTS = ["vjepa_fast", "vjepa_fast_compiled", "vjepa_fast_truncated", "vjepa_reference_style", "videomae"]
else:
    BATCH_SIZES = (4,)
    CONFIGS = {"vjepa": "configs/tiny.yaml", "videomae": "configs/videomae_tiny.yaml"}
    SHAPE = ["data.num_frames=8", "data.crop_size=96"]  # tiny model, grid 4 x 6 x 6 = 144 tokens
    NUM_BATCHES, WARMUP, ROUNDS = 2, 1, 3
    VARIANTS = ["vjepa_fast", "vjepa_fast_truncated", "vjepa_reference_style", "videomae"]

DESCRIPTIONS = {
    "vjepa_fast": "VJEPA, default backends, packed full masks, eager",
    "vjepa_fast_compiled": "VJEPA, default backends, packed full masks, per-block torch.compile",
    "vjepa_fast_truncated": "VJEPA, default backends, masks truncated to the batch minimum (the reference-style "
                            "step's tokens), " + ("per-block torch.compile" if CUDA else "eager"),
    "vjepa_reference_style": "reference style: truncated masks, per-mask dense passes, SDPA, unfused loss, "
                             "Python EMA loop, eager",
    "videomae": "VideoMAE baseline: tube masks 90%, decoder, norm-pix MSE, eager",
}

_CLIPS_PER_S: dict[str, float] = {}  # variant -> clips/s measured earlier in this session


def _config(variant: str, batch: int, run_dir: Path):
    method = "videomae" if variant == "videomae" else "vjepa"
    overrides = [*SHAPE, f"train.batch_size={batch}", "data.path=synthetic", "data.num_workers=0",
                 "train.progress=false", f"train.compile={str(_compiled(variant)).lower()}",
                 "train.activation_checkpointing=false", f"run_dir={run_dir}"]
    if variant in ("vjepa_reference_style", "vjepa_fast_truncated"):
        overrides += ["masks.truncate_to_batch_min=true"]
    if variant == "vjepa_reference_style":
        overrides += ["backends.ema=reference"]
    return load_config(str(ROOT / CONFIGS[method]), overrides)


def _compiled(variant: str) -> bool:
    return variant == "vjepa_fast_compiled" or (CUDA and variant == "vjepa_fast_truncated")


class StepRunner:
    """A Trainer plus a few real batches; `step()` runs one training step on the next batch, synchronised."""

    def __init__(self, variant: str, batch: int, device: torch.device, run_dir: Path):
        self.cfg = _config(variant, batch, run_dir)
        self.device = device
        self.trainer = Trainer(self.cfg, DistInfo(0, 1, 0, device))
        if variant == "vjepa_reference_style":
            # Same parameters and optimizer; only the way the step runs changes.
            self.trainer.model = ReferenceStyleVJEPA(self.trainer.model)
        t = self.cfg.train
        collate = MaskCollate(self.trainer.masker, self.trainer.num_tokens, self.cfg.masks.truncate_to_batch_min)
        loader = make_loader(build_dataset(self.cfg.data, t.seed), collate, t.batch_size, 0, 1, 0, NUM_BATCHES,
                             t.seed, 0, pin_memory=device.type == "cuda")
        self.batches = list(loader)
        self.flops = sum(self.trainer.step_flops(b) or 0.0 for b in self.batches) / len(self.batches)
        self.count, self.skipped = 0, 0

    def step(self) -> None:
        batch = self.batches[self.count % len(self.batches)]
        out = self.trainer.train_step(batch, self.count)
        self.count += 1
        # the step reads nothing back (except on log steps): the flag is read here, after the step's work
        self.skipped += out is None or not bool(out["finite"])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _free() -> None:
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def _runner(variant: str, device: torch.device, run_dir: Path) -> StepRunner:
    """The largest batch in BATCH_SIZES whose warm-up steps fit in memory."""
    for batch in BATCH_SIZES:
        runner, oom = None, False
        try:
            runner = StepRunner(variant, batch, device, run_dir)
            for _ in range(WARMUP):  # first steps pay for kernel builds, autotuning and compilation
                runner.step()
        except torch.cuda.OutOfMemoryError:
            oom = True
        if not oom:
            return runner
        runner = None
        _free()  # after the except block, so the traceback no longer holds the tensors
    raise RuntimeError(f"{variant}: out of memory even at batch {BATCH_SIZES[-1]}")


@pytest.mark.benchmark(group="train_step")
@pytest.mark.parametrize("variant", VARIANTS)
def test_bench_train_step(benchmark, device, roofline, tmp_path, variant):
    with forced_backends():  # the Trainer applies its config's backends, process-wide: not past this row
        runner = _runner(variant, device, tmp_path)
        try:
            if CUDA:
                torch.cuda.reset_peak_memory_stats(device)
            benchmark.pedantic(runner.step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
            assert runner.skipped == 0, f"{runner.skipped} steps skipped (non-finite loss or gradient)"
            _record(benchmark, runner, variant, roofline)
        finally:
            del runner
            _free()


def _record(benchmark, runner: StepRunner, variant: str, roofline: dict) -> None:
    cfg, trainer = runner.cfg, runner.trainer
    info = {
        "variant": variant, "description": DESCRIPTIONS[variant], "model": cfg.model.size, "method": cfg.method,
        "batch_size": cfg.train.batch_size, "num_tokens": trainer.num_tokens,
        "clip": f"{cfg.data.num_frames}x{cfg.data.crop_size}",
        "precision": "bf16" if CUDA and cfg.train.precision in ("auto", "bf16") else "fp32",
        "compile": cfg.train.compile, "gflop_per_step": round(runner.flops / 1e9, 2),
        "dense_attention": ops._backend.forced_backend("dense_attention") or "auto",
    }
    if variant == "vjepa_reference_style":
        info["baseline"] = True
    if CUDA:
        info["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(runner.device) / 2**30, 2)
    else:  # the process's high-water mark, not this step's: indicative only
        info["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    info.update(clips_per_s=None, mfu=None)  # every row has them; None where not timed
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable: the step ran once, untimed
        median = stats.stats.median
        clips_per_s = cfg.train.batch_size / median
        tflops = runner.flops / median / 1e12
        info.update(clips_per_s=round(clips_per_s, 3), tokens_per_s=round(clips_per_s * trainer.num_tokens),
                    tflop_per_s=round(tflops, 3),
                    mfu=round(runner.flops / median / trainer.peak, 4) if trainer.peak else None)
        if roofline.get("matmul_tflops"):
            info["matmul_fraction"] = round(tflops / roofline["matmul_tflops"], 4)
        _CLIPS_PER_S[variant] = clips_per_s
        if variant == "vjepa_reference_style" and "vjepa_fast" in _CLIPS_PER_S:
            info["fast_path_speedup"] = round(_CLIPS_PER_S["vjepa_fast"] / clips_per_s, 3)
            if "vjepa_fast_compiled" in _CLIPS_PER_S:
                info["compiled_fast_path_speedup"] = round(_CLIPS_PER_S["vjepa_fast_compiled"] / clips_per_s, 3)
        if variant == "vjepa_reference_style" and "vjepa_fast_truncated" in _CLIPS_PER_S:  # same tokens
            info["equal_tokens_speedup"] = round(_CLIPS_PER_S["vjepa_fast_truncated"] / clips_per_s, 3)
    benchmark.extra_info.update(info)
