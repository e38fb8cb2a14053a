"""V-JEPA (and VideoMAE baseline) pretraining: `torchrun vjepa_fast/train.py [--config FILE] [key=value ...]`.

With no arguments it trains the tiny model on built-in synthetic videos. Read top to bottom: config -> processes ->
model -> parallelism -> optimizer -> resume -> data -> the step loop (forward, loss guard, backward, clip, AdamW, EMA,
metrics, checkpoints).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a file by torchrun: make the package importable, not its folder's modules
    _here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == _here:
        sys.path.pop(0)
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import contextlib
import logging
import math
import resource
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from vjepa_fast import checkpoint, ops
from vjepa_fast.collapse import CollapseWatch
from vjepa_fast.config import Config, ConfigError, load_config, save_config
from vjepa_fast.data.loader import DataLoadError, MaskCollate, build_dataset, make_loader
from vjepa_fast.flops import device_peak_flops
from vjepa_fast.metrics import MetricsLog, Progress
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.parallel import DistInfo, init_distributed, local_tensor, parallelize, shutdown_distributed
from vjepa_fast.profiling import enable_nvtx, maybe_profile, nvtx_range
from vjepa_fast.reference_checkpoint import CheckpointFormatError, load_reference_into
from vjepa_fast.schedules import Schedules

log = logging.getLogger("vjepa_fast.train")

MIN_ATTEMPTS_FOR_ERROR_LIMIT = 100  # judge the broken-sample fraction only once it means something


class NonFiniteLossError(RuntimeError):
    pass


class DataErrorLimit(RuntimeError):
    pass


def param_groups(modules, weight_decay: float) -> list[dict]:
    """No weight decay on biases and other 1-D parameters (norm weights, mask tokens' leading dims excluded)."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "decay": True},
            {"params": no_decay, "weight_decay": 0.0, "decay": False}]


def make_optimizer(groups: list[dict], cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    o = cfg.optim
    kwargs = dict(lr=o.start_lr, betas=tuple(o.betas), eps=o.eps)
    try:  # torch's fused AdamW (one kernel for all parameters) where the device supports it
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def max_mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Trainer:
    def __init__(self, cfg: Config, di: DistInfo):
        self.cfg, self.di, self.device = cfg, di, di.device
        t = cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every rank (FSDP2 shards what each rank built)
        for op, name in cfg.backends.items():
            ops.set_backend(op, name)
        enable_nvtx(t.nvtx)
        ops._backend.set_check_indices(t.check_indices)
        self.model = build_model(cfg)
        if t.init_from:  # before sharding: every rank loads the full weights, then FSDP2 keeps its shard
            loaded = load_reference_into(self.model, t.init_from)
            if di.is_main:
                log.info("initialised %s from %s", ", ".join(loaded), t.init_from)
        self.model = self.model.to(self.device)
        self.encoder = self.model.encoder
        self.num_tokens = self.encoder.num_tokens
        self.masker = build_masker(cfg, self.encoder.grid)
        self.schedules = Schedules(cfg.optim, t.steps)
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        tops = [m for m in (getattr(self.model, n, None) for n in ("encoder", "predictor", "target_encoder",
                                                                   "decoder")) if m is not None]
        parallelize(self.model, tops, world_size=di.world_size, compile=t.compile,
                    activation_checkpointing=t.activation_checkpointing, compile_backend=t.compile_backend)
        self.groups = param_groups(self.model.trainable_modules(), cfg.optim.weight_decay)
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = make_optimizer(self.groups, cfg, self.device)
        self.peak = device_peak_flops(self.device, t.peak_tflops)
        self.start_step, self.data_errors, self.data_attempts = 0, 0, 0
        self.nonfinite_in_a_row = 0
        self.collapse = CollapseWatch(t.collapse_std)

    # ---- resume -----------------------------------------------------------------------------------------------
    def resume(self) -> None:
        if not self.cfg.train.resume:
            return
        payload = checkpoint.resume_latest(self.cfg.run_dir, self.model, self.optimizer)
        if payload is not None:
            self.start_step = int(payload["step"])
            self.data_errors = int(payload.get("data_errors", 0))
            self.data_attempts = int(payload.get("data_attempts", 0))
            if self.di.is_main:
                log.info("resuming at step %d", self.start_step)

    def save(self, next_step: int) -> None:
        extra = {"data_errors": self.data_errors, "data_attempts": self.data_attempts,
                 "world_size": self.di.world_size}
        checkpoint.save_checkpoint(self.cfg.run_dir, next_step, self.model, self.optimizer, extra,
                                   keep=self.cfg.train.keep_checkpoints, is_main=self.di.is_main)

    # ---- one step ---------------------------------------------------------------------------------------------
    def batch_stats(self, batch) -> torch.Tensor:
        """[per-mask target counts..., data errors, clips] summed over ranks (loss weights need global counts)."""
        m = batch.masks
        stats = torch.cat([m.tgt_counts.double(),
                           torch.tensor([len(batch.errors), batch.video.shape[0]], dtype=torch.float64)])
        if self.di.world_size > 1:
            stats = stats.to(self.device)
            dist.all_reduce(stats)
            stats = stats.cpu()
        return stats

    def row_weight(self, masks, counts: torch.Tensor) -> torch.Tensor:
        """Per target row: world / (M * rows of its mask over all ranks * width) -> the global per-mask mean."""
        width = self.model.loss_width
        per_mask = self.di.world_size / (masks.num_masks * counts.clamp(min=1) * width)
        return per_mask.to(torch.float32).to(self.device)[masks.tgt_mask_id]

    def compute_loss(self, batch, row_weight: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.model(batch.video, batch.masks, row_weight)

    def step_flops(self, batch) -> Optional[float]:
        fn = getattr(self.model, "step_flops", None)
        return fn(batch.masks) * self.di.world_size if fn is not None else None

    def train_step(self, batch, step: int) -> Optional[dict]:
        sched = self.schedules(step)
        for g in self.optimizer.param_groups:
            g["lr"] = sched["lr"]
            g["weight_decay"] = sched["wd"] if g.get("decay", True) else 0.0
        stats = self.batch_stats(batch)
        M = batch.masks.num_masks
        self.data_errors += int(stats[M])
        self.data_attempts += int(stats[M]) + int(stats[M + 1])
        self.check_data_errors()
        flops = self.step_flops(batch)
        with nvtx_range("data"):
            dev = batch.to(self.device, non_blocking=True)
        loss = self.compute_loss(dev, self.row_weight(dev.masks, stats[:M]))
        loss_value = loss.detach().clone()
        if self.di.world_size > 1:
            dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
        loss_value = float(loss_value)
        if not math.isfinite(loss_value):
            return self.skip(step, f"loss is {loss_value}")
        with nvtx_range("backward"):
            loss.backward()
        with nvtx_range("optimizer"):
            o = self.cfg.optim
            max_norm = o.clip_grad if (o.clip_grad > 0 and step >= o.warmup_steps) else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if not math.isfinite(grad_norm):
                return self.skip(step, f"gradient norm is {grad_norm}")
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        ema = getattr(self.model, "ema_pairs", None)
        if ema is not None:
            with nvtx_range("ema"):
                targets, sources = ema()
                ops.ema_update_([local_tensor(t) for t in targets], [local_tensor(s) for s in sources],
                                sched["ema_momentum"])
        self.nonfinite_in_a_row = 0
        return {"step": step, "loss": loss_value, "grad_norm": grad_norm, **sched, "flops": flops,
                "clips": int(stats[M + 1]), "feature_stats": getattr(self.model, "feature_stats", None)}

    def skip(self, step: int, why: str) -> None:
        """Drop this step's update; stop the run when it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        limit = self.cfg.train.max_nonfinite
        warnings.warn(f"step {step}: {why}; update skipped ({self.nonfinite_in_a_row} in a row, limit {limit})")
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} consecutive steps with a non-finite loss or "
                                     f"gradient (last at step {step}): stopping; lower optim.lr or check the data")
        return None

    def check_data_errors(self) -> None:
        limit = self.cfg.data.max_error_fraction
        if self.data_attempts >= MIN_ATTEMPTS_FOR_ERROR_LIMIT and self.data_errors > limit * self.data_attempts:
            raise DataErrorLimit(f"{self.data_errors} of {self.data_attempts} samples failed to load, more than "
                                 f"data.max_error_fraction={limit}: check the data (paths are in the log)")

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        cfg, di, t = self.cfg, self.di, self.cfg.train
        run_dir = Path(cfg.run_dir)
        if di.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        self.resume()
        if self.start_step >= t.steps:
            if di.is_main:
                log.info("run already finished (%d steps)", t.steps)
            return []
        dataset = build_dataset(cfg.data, cfg.train.seed)
        collate = MaskCollate(self.masker, self.num_tokens, cfg.masks.truncate_to_batch_min)
        loader = make_loader(dataset, collate, t.batch_size, di.rank, di.world_size, self.start_step, t.steps,
                             t.seed, cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        metrics = MetricsLog(run_dir / "metrics.jsonl", self.start_step) if di.is_main else None
        progress = Progress(t.steps, self.start_step, t.progress and di.is_main)
        rows, window_start, window_clips, window_flops = [], time.perf_counter(), 0, 0.0
        profiler = maybe_profile(run_dir, t.profile and di.is_main, t.profile_steps)
        batches = iter(loader)
        try:
            profiler.__enter__()
            while True:
                with nvtx_range("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                step = batch.step
                if di.is_main:
                    for err in batch.errors:
                        log.warning("data error (skipped): %s", err)
                out = self.train_step(batch, step)
                if out is not None:
                    window_clips += out["clips"]
                    window_flops += out["flops"] or 0.0
                logged = None
                if out is not None and ((step + 1) % t.log_every == 0 or step + 1 == t.steps):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - window_start
                    logged = self.metrics_row(out, elapsed, window_clips, window_flops)
                    rows.append(logged)
                    if metrics is not None:
                        metrics.write(logged)
                    window_start, window_clips, window_flops = time.perf_counter(), 0, 0.0
                progress.update(logged)
                if (step + 1) % t.ckpt_every == 0 or step + 1 == t.steps:
                    self.save(step + 1)
                profiler.step()
        finally:
            profiler.__exit__(None, None, None)
            progress.close()
            if metrics is not None:
                metrics.close()
        return rows

    def metrics_row(self, out: dict, elapsed: float, clips: int, flops: float) -> dict:
        clips_per_s = clips / max(elapsed, 1e-9)
        mfu = (flops / elapsed / self.peak) if (self.peak and flops) else None
        return {"step": out["step"], "loss": out["loss"], "lr": out["lr"], "wd": out["wd"],
                "ema_momentum": out["ema_momentum"], "grad_norm": out["grad_norm"],
                "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * self.num_tokens, "mfu": mfu,
                "max_mem_gb": max_mem_gb(self.device), "data_errors": self.data_errors,
                **self.collapse.fields(out["feature_stats"], out["step"])}


def parse_args(argv: Optional[list[str]]) -> tuple[Optional[str], list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    args = parser.parse_args(argv)
    return args.config, args.overrides


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, overrides = parse_args(argv)
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    di = init_distributed()
    if not di.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        Trainer(cfg, di).run()
    except (NonFiniteLossError, DataErrorLimit, DataLoadError, CheckpointFormatError, FileNotFoundError) as e:
        # From a loader worker the message carries the worker's traceback; its last line is the error itself.
        print(f"error: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
