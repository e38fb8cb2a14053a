"""V-JEPA (and VideoMAE baseline) pretraining: `torchrun vjepa_fast/train.py [--config FILE] [key=value ...]`.

With no arguments it trains the tiny model on built-in synthetic videos. Read top to bottom: config -> processes ->
model -> parallelism -> optimizer -> checks before the run dir is touched (data, run dir, stored run) -> the run's
resources in one ExitStack -> resume -> the step loop (forward, loss guard, backward, clip, AdamW, EMA, metrics,
checkpoints when the checkpointer says) -> summary and plots."""
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from vjepa_fast import float8, ops
from vjepa_fast.run import checkpoint, preflight
from vjepa_fast.weights.training_checkpoint import CheckpointError
from vjepa_fast.run.collapse import CollapseWatch
from vjepa_fast.config import Config, ConfigError, dump_config, help_table, load_config, packaged_configs, save_config
from vjepa_fast.data.loader import BatchStream, DataLoadError, MaskCollate, make_loader
from vjepa_fast.data.prefetch import prefetch_to_device
from vjepa_fast.models.flops import device_peak_flops
from vjepa_fast.run.lifecycle import REQUEUE_EXIT_CODE, CollectiveError, StopRequest, as_collective_error
from vjepa_fast.run.metrics import MetricsLog, Progress
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.models.protocol import PretrainModel
from vjepa_fast.parallel import DistInfo, init_distributed, local_tensor, parallelize, shutdown_distributed
from vjepa_fast.run.plots import finish_outputs
from vjepa_fast.profiling import enable_nvtx, maybe_profile, nvtx_range
from vjepa_fast.run.rundir import ResumeDecision, RunDir, RunDirError
from vjepa_fast.run.runlog import RunLog
from vjepa_fast.run.schedules import Schedules
from vjepa_fast.run.step_guard import NonFiniteLossError, finite_flag, guarded_optimizer_step, read_back
from vjepa_fast.run.tb_log import TensorBoardLog
from vjepa_fast.user_errors import exit_code, translated
from vjepa_fast.weights import CheckpointFormatError, load_into, model_config

log = logging.getLogger("vjepa_fast.train")

DEFAULT_RECIPE = "tiny"  # what a bare `train.py` runs: the packaged configs/tiny.yaml
MIN_ATTEMPTS_FOR_ERROR_LIMIT = 100  # judge the broken-sample fraction only once it means something


class DataErrorLimit(RuntimeError):
    pass


# Failures a user causes and can fix: main() prints their one line (no traceback unless --debug).
USER_ERRORS = (preflight.RunError, NonFiniteLossError, DataErrorLimit, DataLoadError, CheckpointFormatError,
               FileNotFoundError, RunDirError, CheckpointError, ConfigError, CollectiveError)
# Already the user's one line: a failed collective underneath one of these does not replace it.
OWN_ERRORS = (CheckpointError, RunDirError, NonFiniteLossError, DataErrorLimit, preflight.RunError)


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


@dataclass(frozen=True)
class GlobalCounts:
    """A batch's counts summed over the ranks (the loss weights need global counts), kept in one fp64 device tensor
    so that one all-reduce sums them all."""
    summed: torch.Tensor  # [target rows per mask configuration..., data errors, clips]
    num_masks: int

    @property
    def target_rows(self) -> torch.Tensor:
        """Target rows per mask configuration, over every rank's batch."""
        return self.summed[:self.num_masks]

    @property
    def data(self) -> torch.Tensor:
        """(samples that failed to load, clips) over every rank's batch."""
        return self.summed[self.num_masks:]


@dataclass
class Window:
    """Clips and FLOPs since the last logged step: the next logged step's throughput and MFU."""
    start: float = field(default_factory=time.perf_counter)
    clips: int = 0
    flops: float = 0.0

    def add(self, out: dict) -> None:
        self.clips += out["clips"]
        self.flops += out["flops"] or 0.0


@dataclass
class Loop:
    """What the step loop reads from and writes to; every part is closed by the loop's ExitStack."""
    batches: Iterator
    metrics: Optional[MetricsLog]  # main process only, as TensorBoard
    tb: Optional[TensorBoardLog]
    progress: Progress
    profiler: Any
    window: Window

    def write(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(row)
        if self.tb is not None:
            self.tb.scalars(row)


def held(stack: contextlib.ExitStack, resource):
    """`resource`, closed when `stack` closes (None: nothing to close)."""
    if resource is not None:
        stack.callback(resource.close)
    return resource


def data_ranged(batches: Iterator) -> Iterator:
    """The batches, each fetch inside an NVTX "data" range."""
    while True:
        with nvtx_range("data"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


class Trainer:
    def __init__(self, cfg: Config, di: DistInfo):
        self.cfg, self.di, self.device = cfg, di, di.device
        t = cfg.train
        torch.manual_seed(t.seed)  # identical initial weights on every rank (FSDP2 shards what each rank built)
        ops.configure(cfg.backends)  # every op, so a backend forced by an earlier Trainer in this process does not linger
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        preflight.check_backends(cfg, self.device, torch.bfloat16 if use_bf16 else torch.float32)
        enable_nvtx(t.nvtx)
        ops._backend.set_check_indices(t.check_indices)
        self.model: PretrainModel = self.make_model()
        self.num_tokens = math.prod(self.model.grid)
        self.masker = build_masker(cfg, self.model.grid)
        self.schedules = Schedules(cfg.optim, t.steps)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        self.distribute(use_bf16)
        self.build_optimizer()
        self.peak = device_peak_flops(self.device, t.peak_tflops)
        self.start_step, self.data_errors, self.data_attempts = 0, 0, 0
        self.nonfinite_in_a_row = 0
        self.checkpointer = checkpoint.Checkpointer(cfg.run_dir, t.keep_checkpoints, di.is_main, t.async_checkpoint,
                                                    di.control_group, every=t.ckpt_every, last_step=t.steps)
        self.config_yaml = ""
        self.preempted = False  # stopped by SIGTERM/SIGUSR1 after saving: main exits with REQUEUE_EXIT_CODE
        self.unread: list[dict] = []  # steps whose device numbers were not read back yet (read_back)
        self.collapse = CollapseWatch(t.collapse_std, t.collapse_rank, t.batch_size * cfg.data.clips_per_video)
        self.phase = "start-up"  # what this rank is doing, for the one line of a failed collective

    # ---- set-up -------------------------------------------------------------------------------------------------
    def make_model(self) -> PretrainModel:
        model = build_model(self.cfg)
        init_from = self.cfg.train.init_from
        if init_from:  # before sharding: every rank loads the full weights, then FSDP2 keeps its shard
            preflight.check_init_from(init_from)
            loaded = load_into(model, init_from)
            if self.di.is_main:
                log.info("initialised %s from %s", ", ".join(loaded), init_from)
        return model.to(self.device)

    def distribute(self, use_bf16: bool) -> None:
        """float8 linears, activation checkpointing, per-block compile and FSDP2, as the config asks."""
        t, di = self.cfg.train, self.di
        if t.float8:  # before compile and FSDP2, the order torchao composes in
            float8.convert(self.model, sharded=di.world_size > 1, emulate=self.device.type != "cuda")
        parallelize(self.model, world_size=di.world_size, compile=t.compile,
                    activation_checkpointing=t.activation_checkpointing, compile_backend=t.compile_backend,
                    mixed_precision=use_bf16 and self.device.type == "cuda", device_type=self.device.type,
                    mesh_shape=(self.cfg.parallel.replicate, self.cfg.parallel.shard))

    def build_optimizer(self) -> None:
        self.groups = param_groups(self.model.trainable_modules(), self.cfg.optim.weight_decay)
        self.params = [p for g in self.groups for p in g["params"]]
        # clipped one module at a time (encoder, predictor), as the original does
        self.module_params = [[p for p in m.parameters() if p.requires_grad] for m in self.model.trainable_modules()]
        self.optimizer = make_optimizer(self.groups, self.cfg, self.device)

    # ---- the run ------------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """The run, its resources held in one ExitStack and released in reverse order however it ends: the run dir
        (lock + one resume decision for every rank), the stop-signal handling, the one-line form of a failed
        collective; inside, the step loop's own (loader, metrics, TensorBoard, progress, profiler)."""
        dataset = preflight.open_dataset(self.cfg)  # a bad data path fails before the run dir is touched
        notes: list[str] = []
        with contextlib.ExitStack() as run:
            decision = self.hold_run_dir(run, notes)
            self.stop = run.enter_context(StopRequest(self.di.control_group))
            self.phase = "start-up"
            run.enter_context(translated((RuntimeError,), self.collective_error, keep=OWN_ERRORS, chain=True))
            self.resume(decision)
            self.write_config()
            rows = self.train(dataset, notes)
            self.phase = "the last checkpoint write"
            self.checkpointer.wait()
            return rows

    def hold_run_dir(self, run: contextlib.ExitStack, notes: list[str]) -> ResumeDecision:
        """Lock the run dir until `run` closes; every rank gets rank 0's resume decision. Rank 0 checks the dir
        first, before the lock (a refused start leaves it as it was), adding deliberate changes to `notes`."""
        run_dir = Path(self.cfg.run_dir)

        def precheck() -> Optional[str]:
            try:
                notes.extend(self.preflight_run_dir(run_dir))
            except preflight.RunError as e:
                return str(e)
            return None

        hold = RunDir(run_dir, self.di.is_main, self.di.control_group)
        decision = hold.open(self.cfg.train.resume, precheck)
        run.callback(hold.close)
        return decision

    def preflight_run_dir(self, run_dir: Path) -> list[str]:
        """Checks on the run dir before anything is written (main process); returns deliberate changes to log."""
        cfg = self.cfg
        notes = []
        if cfg.train.resume is True and checkpoint.list_checkpoints(run_dir):
            stored, stored_world = preflight.stored_run(run_dir)
            if stored is not None:
                notes = preflight.check_resume_compatible(stored, cfg, stored_world, self.di.world_size)
        preflight.check_writable(run_dir)
        return notes

    def resume(self, decision: ResumeDecision) -> None:
        """Load the checkpoint rank 0 chose for every rank (None: a fresh start), or say in one line that it does
        not fit this model (every rank failed to load it)."""
        self.phase = "resuming"
        if decision.path is None:
            return
        with translated((RuntimeError, KeyError, ValueError), self.misfit_checkpoint, keep=(preflight.RunError,)):
            loop = self.checkpointer.load(decision.path, self.model, self.optimizer)
            self.start_step = int(loop["step"])
            self.data_errors = int(loop.get("data_errors", 0))
            self.data_attempts = int(loop.get("data_attempts", 0))
        if self.di.is_main:
            log.info("resuming at step %d from %s", self.start_step, decision.path)

    def write_config(self) -> None:
        """config.yaml, written only once the resume succeeded and under the lock: a failed or refused start leaves
        an existing run's files as they were."""
        if not self.di.is_main:
            return
        path = Path(self.cfg.run_dir) / "config.yaml"
        with translated((OSError,), lambda e: preflight.save_error(path, e)):
            save_config(self.cfg, path)
        self.config_yaml = path.read_text()

    def train(self, dataset, notes: list[str]) -> list[dict]:
        """The steps left (none when the run already finished), between the run log's start block and summary."""
        t, is_main = self.cfg.train, self.di.is_main
        runlog = RunLog(self.cfg, self.di.world_size, self.device, is_main)
        if self.start_step >= t.steps:
            if is_main:
                log.info("run already finished (%d steps)", t.steps)
            return []
        runlog.start(self.model, self.num_tokens, self.model.grid, dataset, self.start_step, notes)
        with contextlib.ExitStack() as resources:  # closed before the summary reads metrics.jsonl
            rows = self.loop(self.open_loop(resources, dataset), runlog)
        if is_main:
            runlog.end(rows, self.data_errors, finish_outputs(Path(self.cfg.run_dir), t.plots))
        return rows

    def open_loop(self, resources: contextlib.ExitStack, dataset) -> Loop:
        cfg, di, t = self.cfg, self.di, self.cfg.train
        run_dir = Path(cfg.run_dir)
        tb = held(resources, TensorBoardLog.open(run_dir, t.tensorboard, self.start_step) if di.is_main else None)
        collate = MaskCollate(self.masker, self.num_tokens, cfg.masks.truncate_to_batch_min)
        loader = make_loader(dataset, collate, t.batch_size, di.rank, di.world_size, self.start_step, t.steps,
                             t.seed, cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        metrics = held(resources, MetricsLog(run_dir / "metrics.jsonl", self.start_step) if di.is_main else None)
        progress = held(resources, Progress(t.steps, self.start_step, t.progress and di.is_main))
        window = Window()
        profiler = maybe_profile(run_dir, t.profile and di.is_main, t.profile_steps)
        stream = held(resources, BatchStream(loader))  # its workers leave the stop signals to this process
        resources.enter_context(profiler)
        return Loop(prefetch_to_device(stream, self.device), metrics, tb, progress, profiler, window)

    def loop(self, loop: Loop, runlog: RunLog) -> list[dict]:
        """Step, log, checkpoint when due, and stop (saved) at the step every rank agreed on after a signal."""
        rows = []
        for batch in data_ranged(loop.batches):
            step = batch.step
            if loop.tb is not None and step == self.start_step:
                loop.tb.masks(batch, self.model.grid, self.cfg)
            self.phase = f"step {step}"
            row = self.log_step(self.train_step(batch, step), step, loop, runlog)
            if row is not None:
                rows.append(row)
            loop.progress.update(row)
            stop = self.stop.agreed()
            self.checkpoint_if_due(step + 1, stop, runlog)
            self.checkpointer.poll()
            loop.profiler.step()
            if stop:
                self.stopped(step)
                break
        return rows

    def stopped(self, step: int) -> None:
        self.preempted = True
        log.warning("rank %d: stopped by %s after step %d (%s); exiting with code %d for a requeue", self.di.rank,
                    self.stop.signal_name or "a signal on another rank", step,
                    "not saved: non-finite streak" if self.checkpointer.deferred else "saved", REQUEUE_EXIT_CODE)

    def collective_error(self, e: BaseException) -> Optional[CollectiveError]:
        """A dead or stalled peer: one line naming this rank and what it was doing."""
        return as_collective_error(e, self.di.rank, self.phase, self.cfg.parallel.timeout_s)

    def misfit_checkpoint(self, e: BaseException) -> preflight.RunError:
        return preflight.RunError(f"the checkpoint in {checkpoint.checkpoint_dir(self.cfg.run_dir)} does not fit "
                                  f"this model ({preflight.one_line(e)[:300]}); resume with the run's own "
                                  f"config.yaml or use another run_dir")

    # ---- one step -----------------------------------------------------------------------------------------------
    def train_step(self, batch, step: int) -> Optional[dict]:
        """One step with no host sync: a non-finite loss or gradient norm masks the update on the device
        (vjepa_fast.run.step_guard). Returns the step's numbers, read back on log and checkpoint steps (then None if
        the step was skipped) and still on the device otherwise."""
        sched = self.set_schedules(step)
        flops = self.step_flops(batch)
        with nvtx_range("data"):  # a no-op when data/prefetch.py copied the batch ahead on a side stream
            dev = batch.device_copy or batch.to(self.device, non_blocking=True)
            counts = self.global_counts(batch, dev)
        loss = self.compute_loss(dev, self.model.row_weights(dev.masks, counts.target_rows, self.di.world_size))
        stats = self.model.step_stats()
        loss_values = self.global_loss(loss, stats.loss_terms)  # [loss, prediction loss, sigreg] with loss.sigreg
        grad_norm, finite = self.update(loss, loss_values[0], step, sched)
        # clips: every rank's batch has batch_size clips (broken samples are replaced), so no readback is needed
        out = {"step": step, "loss": loss_values[0], "grad_norm": grad_norm, **sched, "flops": flops,
               "clips": batch.video.shape[0] * self.di.world_size, "finite": finite, "data_stats": counts.data,
               "feature_stats": stats.feature_stats,  # V-JEPA only (collapse.py)
               "loss_terms": None if stats.loss_terms is None else loss_values[1:]}
        logged = self.is_log_step(step)
        # effective ranks on logged steps only: an eigenproblem per encoder (its sync comes with the log's anyway)
        out["ranks"] = self.collapse.ranks(stats.rank_rows) if logged and self.di.is_main else None
        if not logged and not self.checkpointer.on_cadence(step + 1):
            self.unread.append(out)
            return out
        return self.settle(out)

    def set_schedules(self, step: int) -> dict:
        sched = self.schedules(step)
        for g in self.optimizer.param_groups:
            g["lr"] = sched["lr"]
            g["weight_decay"] = sched["wd"] if g.get("decay", True) else 0.0
        return sched

    def step_flops(self, batch) -> float:
        return self.model.step_flops(batch.masks) * self.di.world_size

    def global_counts(self, batch, dev) -> GlobalCounts:
        """Built and summed on the device without a host sync: the target counts come from the batch's device copy,
        the two host numbers through pinned memory (a copy from pageable memory would wait for the GPU); the loss
        weights use the sums there and the data counts are read back with the step's other numbers."""
        tail = torch.tensor([len(batch.errors), batch.video.shape[0]], dtype=torch.float64)
        if self.device.type == "cuda":
            tail = tail.pin_memory().to(self.device, non_blocking=True)
        summed = torch.cat([dev.masks.tgt_counts.double(), tail])
        if self.di.world_size > 1:
            dist.all_reduce(summed)
        return GlobalCounts(summed, batch.masks.num_masks)

    def compute_loss(self, batch, row_weight: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.model(batch.video, batch.masks, row_weight, step=batch.step)

    def global_loss(self, loss: torch.Tensor, terms: Optional[torch.Tensor]) -> torch.Tensor:
        """[loss, its terms...], a detached copy; averaged over ranks so that every rank decides on the same
        (global) loss, in one collective with the terms."""
        values = torch.cat([loss.detach().reshape(1), *([] if terms is None else [terms])])
        if self.di.world_size > 1:
            dist.all_reduce(values, op=dist.ReduceOp.AVG)
        return values

    def update(self, loss: torch.Tensor, loss_value: torch.Tensor, step: int, sched: dict):
        """Backward, clipping, the guarded AdamW step and the EMA; returns (gradient norm, finite flag), on the
        device."""
        with nvtx_range("backward"):
            loss.backward()
        with nvtx_range("optimizer"):
            grad_norm = clip_per_module(self.module_params, clip_norm_at(self.cfg.optim, step))
            finite = finite_flag(loss_value, grad_norm)
            guarded_optimizer_step(self.optimizer, finite)
            self.optimizer.zero_grad(set_to_none=True)
        targets, sources = self.model.ema_pairs()
        if targets:
            with nvtx_range("ema"):
                ops.ema_update_([local_tensor(t) for t in targets], [local_tensor(s) for s in sources],
                                sched["ema_momentum"], apply=finite)  # a skipped step leaves the targets as they were
        return grad_norm, finite

    def is_log_step(self, step: int) -> bool:
        t = self.cfg.train
        return (step + 1) % t.log_every == 0 or step + 1 == t.steps

    # ---- the step's numbers on the host -------------------------------------------------------------------------
    def settle(self, out: dict) -> Optional[dict]:
        """Read back every unread step up to `out` (one host sync): count data errors, warn about skipped steps,
        stop after max_nonfinite in a row. Returns `out` with host numbers, or None if it was skipped."""
        steps, self.unread = read_back([*self.unread, out]), []
        for o in steps:
            errors, clips = o["data_stats"]
            self.data_errors += errors
            self.data_attempts += errors + clips
            self.check_data_errors()
            if o["finite"]:
                self.nonfinite_in_a_row = 0
            else:
                bad = ("loss", o["loss"]) if not math.isfinite(o["loss"]) else ("gradient norm", o["grad_norm"])
                self.skip(o["step"], f"{bad[0]} is {bad[1]}")
        last = steps[-1]
        return last if last["finite"] else None

    def settle_unread(self) -> None:
        """Read back the steps not read yet (before a checkpoint outside the log/checkpoint cadence, e.g. on a stop
        signal), so the save sees the current streak of non-finite steps."""
        if self.unread:
            self.settle(self.unread.pop())

    def skip(self, step: int, why: str) -> None:
        """Count a step whose update was masked; stop the run when it keeps happening."""
        self.nonfinite_in_a_row += 1
        limit = self.cfg.train.max_nonfinite
        warnings.warn(f"step {step}: {why}; update skipped ({self.nonfinite_in_a_row} in a row, limit {limit})")
        if self.nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(f"{self.nonfinite_in_a_row} consecutive steps with a non-finite loss or "
                                     f"gradient (last at step {step}): stopping; lower optim.lr or check the data")

    def check_data_errors(self) -> None:
        limit = self.cfg.data.max_error_fraction
        if self.data_attempts >= MIN_ATTEMPTS_FOR_ERROR_LIMIT and self.data_errors > limit * self.data_attempts:
            raise DataErrorLimit(f"{self.data_errors} of {self.data_attempts} samples failed to load, more than "
                                 f"data.max_error_fraction={limit}: check the data (paths are in the log)")

    def log_step(self, out: Optional[dict], step: int, loop: Loop, runlog: RunLog) -> Optional[dict]:
        """The metrics row of a logged step, written to metrics.jsonl and TensorBoard; None on other steps."""
        if out is None:
            return None
        loop.window.add(out)
        if not self.is_log_step(step):
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        w = loop.window
        row = {**self.metrics_row(out, time.perf_counter() - w.start, w.clips, w.flops), **runlog.stamp()}
        loop.write(row)
        loop.window = Window()
        return row

    def metrics_row(self, out: dict, elapsed: float, clips: int, flops: float) -> dict:
        clips_per_s = clips / max(elapsed, 1e-9)
        mfu = (flops / elapsed / self.peak) if (self.peak and flops) else None
        return {"step": out["step"], "loss": out["loss"], "lr": out["lr"], "wd": out["wd"],
                "ema_momentum": out["ema_momentum"], "grad_norm": out["grad_norm"],
                "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * self.num_tokens, "mfu": mfu,
                "max_mem_gb": max_mem_gb(self.device), "data_errors": self.data_errors,
                **self.collapse.fields(out["feature_stats"], out["step"], out["ranks"]),
                **loss_term_fields(out["loss_terms"])}

    # ---- checkpoints (the checkpointer says when) ---------------------------------------------------------------
    def checkpoint_if_due(self, next_step: int, stop: bool, runlog: RunLog) -> None:
        if not self.checkpointer.due(next_step, stop):
            return
        self.settle_unread()
        self.phase = f"the checkpoint save before step {next_step}"
        self.save_logged(next_step, runlog)

    def save_logged(self, next_step: int, runlog: RunLog) -> bool:
        """save() with a run-log line, and a one-line error for a save the user can fix (disk full, permissions)."""
        start = time.perf_counter()
        path = checkpoint.step_path(self.cfg.run_dir, next_step)
        with translated((OSError, RuntimeError), lambda e: preflight.save_error(path, e)):
            saved = self.save(next_step)
        if saved:
            runlog.checkpoint(next_step, path, time.perf_counter() - start)
        return saved

    def save(self, next_step: int) -> bool:
        """Checkpoint the state before `next_step`; False (deferred) while non-finite steps are being skipped."""
        if self.checkpointer.defer(next_step, self.nonfinite_in_a_row):
            return False
        if not checkpoint.params_finite(self.model):
            raise NonFiniteLossError(f"parameters are NaN/Inf before step {next_step}: checkpoint not written "
                                     f"(the previous one is intact); lower optim.lr or raise optim.eps")
        extra = {"data_errors": self.data_errors, "data_attempts": self.data_attempts,
                 "world_size": self.di.world_size, "model_config": model_config(self.cfg)}
        self.checkpointer.save(next_step, self.model, self.optimizer, extra, self.config_yaml)
        return True


def clip_norm_at(o, step: int) -> float:
    """Step `step`'s gradient-norm limit per module (inf: not clipped): optim.clip_grad from optim.clip_start_step
    (null: from optim.warmup_steps) on; docs/recipe.md states the original's rule in steps."""
    start = o.warmup_steps if o.clip_start_step is None else o.clip_start_step
    return o.clip_grad if (o.clip_grad > 0 and step >= start) else float("inf")


def clip_per_module(module_params: list[list[torch.Tensor]], max_norm: float) -> torch.Tensor:
    """Clip each module's gradients to `max_norm` of its own norm, as the original clips the encoder and the
    predictor separately (a large predictor gradient does not shrink the encoder's). Returns the norm of all the
    gradients before clipping (for the log and the non-finite guard), on the device: no host sync. FSDP2's DTensor
    gradients give DTensor norms, made whole (one small collective per module)."""
    norms = []
    for params in module_params:
        with_grad = [p for p in params if p.grad is not None]  # a module without gradients has nothing to clip
        if with_grad:
            norm = torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def loss_term_fields(terms: Optional[torch.Tensor]) -> dict:
    """The loss's parts when it has more than one (loss.sigreg > 0): the prediction loss and the SIGReg term."""
    if terms is None:
        return {}
    pred_loss, sigreg = terms.tolist()
    return {"pred_loss": pred_loss, "sigreg": sigreg}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (type, library default, meaning; the recipe given to --config sets some of them, e.g. tiny "
               "sets loss.sigreg=0.1); set any of them as key=value:\n" + help_table())
    parser.add_argument("--config", default=DEFAULT_RECIPE,
                        help="a YAML recipe: a path, or the name of a packaged one (" + ", ".join(packaged_configs())
                        + f"); default: {DEFAULT_RECIPE}, the CPU quick start")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg: Optional[Config] = None

    def load() -> int:
        nonlocal cfg
        cfg = load_config(args.config, args.overrides)
        return 0

    code = exit_code(load, debug=args.debug)
    if code:
        return code
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    finished: list[bool] = []  # this rank's run ended normally: wait for every rank before tearing the group down
    try:
        # a ConfigError from here on (e.g. the mesh against the process count) is an error of the run: exit 1
        return exit_code(lambda: train_here(cfg, finished), USER_ERRORS, debug=args.debug, config_errors=())
    finally:
        shutdown_distributed(wait_for_peers=bool(finished))


def train_here(cfg: Config, finished: list[bool]) -> int:
    """This process's part of the run (one of torchrun's, or the only one); REQUEUE_EXIT_CODE when a stop signal
    ended it after saving."""
    di = init_distributed(cfg.parallel.timeout_s)  # a peer that never comes: one line (CollectiveError)
    if not di.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    trainer = Trainer(cfg, di)
    trainer.run()
    finished.append(True)
    return REQUEUE_EXIT_CODE if trainer.preempted else 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A worker of a multi-process run leaves through os._exit once everything is written and flushed: at
        # interpreter teardown a torch C++ static could still hold a joinable thread and abort the process
        # ("terminate called without an active exception", seen about once in twenty 2-process gloo runs), which
        # torchrun reports as a failed run after a complete one.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)
