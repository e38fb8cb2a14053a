"""V-JEPA (and VideoMAE baseline) pretraining: `torchrun vjepa_fast/train.py [--config FILE] [key=value ...]`.

With no arguments it trains the tiny model on built-in synthetic videos. Read top to bottom: config -> processes ->
model -> parallelism -> optimizer -> checks before the run dir is touched (data, run dir, stored run) -> resume ->
the step loop (forward, loss guard, backward, clip, AdamW, EMA, metrics, checkpoints) -> summary and plots.
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

from vjepa_fast import checkpoint, float8, ops, preflight
from vjepa_fast.checkpoint import CheckpointError
from vjepa_fast.collapse import CollapseWatch
from vjepa_fast.config import Config, ConfigError, dump_config, help_table, load_config, packaged_configs, save_config
from vjepa_fast.data.loader import BatchStream, DataLoadError, MaskCollate, make_loader
from vjepa_fast.data.prefetch import prefetch_to_device
from vjepa_fast.flops import device_peak_flops
from vjepa_fast.lifecycle import REQUEUE_EXIT_CODE, CollectiveError, StopRequest, as_collective_error
from vjepa_fast.metrics import MetricsLog, Progress
from vjepa_fast.models.build import build_masker, build_model
from vjepa_fast.models.protocol import PretrainModel
from vjepa_fast.parallel import DistInfo, init_distributed, local_tensor, parallelize, shutdown_distributed
from vjepa_fast.plots import finish_outputs
from vjepa_fast.profiling import enable_nvtx, maybe_profile, nvtx_range
from vjepa_fast.rundir import ResumeDecision, RunDir, RunDirError
from vjepa_fast.runlog import RunLog
from vjepa_fast.schedules import Schedules
from vjepa_fast.step_guard import NonFiniteLossError, finite_flag, guarded_optimizer_step, read_back
from vjepa_fast.tb_log import TensorBoardLog
from vjepa_fast.weights import CheckpointFormatError, load_into, model_config

log = logging.getLogger("vjepa_fast.train")

MIN_ATTEMPTS_FOR_ERROR_LIMIT = 100  # judge the broken-sample fraction only once it means something


class DataErrorLimit(RuntimeError):
    pass


# Failures a user causes and can fix: main() prints their one line (no traceback unless --debug).
USER_ERRORS = (preflight.RunError, NonFiniteLossError, DataErrorLimit, DataLoadError, CheckpointFormatError,
               FileNotFoundError, RunDirError, CheckpointError, ConfigError, CollectiveError)


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
        ops.configure(cfg.backends)  # every op, so a backend forced by an earlier Trainer in this process does not linger
        use_bf16 = t.precision == "bf16" or (t.precision == "auto" and self.device.type == "cuda")
        preflight.check_backends(cfg, self.device, torch.bfloat16 if use_bf16 else torch.float32)
        enable_nvtx(t.nvtx)
        ops._backend.set_check_indices(t.check_indices)
        self.model = build_model(cfg)
        if t.init_from:  # before sharding: every rank loads the full weights, then FSDP2 keeps its shard
            preflight.check_init_from(t.init_from)
            loaded = load_into(self.model, t.init_from)
            if di.is_main:
                log.info("initialised %s from %s", ", ".join(loaded), t.init_from)
        self.model: PretrainModel = self.model.to(self.device)
        self.num_tokens = math.prod(self.model.grid)
        self.masker = build_masker(cfg, self.model.grid)
        self.schedules = Schedules(cfg.optim, t.steps)
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        if t.float8:  # before compile and FSDP2, the order torchao composes in
            float8.convert(self.model, sharded=di.world_size > 1, emulate=self.device.type != "cuda")
        parallelize(self.model, world_size=di.world_size, compile=t.compile,
                    activation_checkpointing=t.activation_checkpointing, compile_backend=t.compile_backend,
                    mixed_precision=use_bf16 and self.device.type == "cuda", device_type=self.device.type,
                    mesh_shape=(cfg.parallel.replicate, cfg.parallel.shard))
        self.groups = param_groups(self.model.trainable_modules(), cfg.optim.weight_decay)
        self.params = [p for g in self.groups for p in g["params"]]
        # clipped one module at a time (encoder, predictor), as the original does
        self.module_params = [[p for p in m.parameters() if p.requires_grad] for m in self.model.trainable_modules()]
        self.optimizer = make_optimizer(self.groups, cfg, self.device)
        self.peak = device_peak_flops(self.device, t.peak_tflops)
        self.start_step, self.data_errors, self.data_attempts = 0, 0, 0
        self.nonfinite_in_a_row = 0
        self.checkpointer = checkpoint.Checkpointer(cfg.run_dir, t.keep_checkpoints, di.is_main,
                                                    t.async_checkpoint, di.control_group)
        self.config_yaml = ""
        self.preempted = False  # stopped by SIGTERM/SIGUSR1 after saving: main exits with REQUEUE_EXIT_CODE
        self.unread: list[dict] = []  # steps whose device numbers were not read back yet (read_back)
        self.collapse = CollapseWatch(t.collapse_std, t.collapse_rank, t.batch_size * cfg.data.clips_per_video)

    # ---- resume -----------------------------------------------------------------------------------------------
    def resume(self, decision: ResumeDecision) -> None:
        """Load the checkpoint rank 0 chose for every rank (None: a fresh start)."""
        if decision.path is None:
            return
        loop = self.checkpointer.load(decision.path, self.model, self.optimizer)
        self.start_step = int(loop["step"])
        self.data_errors = int(loop.get("data_errors", 0))
        self.data_attempts = int(loop.get("data_attempts", 0))
        if self.di.is_main:
            log.info("resuming at step %d from %s", self.start_step, decision.path)

    def save(self, next_step: int) -> bool:
        """Checkpoint the state before `next_step`; False (deferred) while non-finite steps are being skipped."""
        if self.nonfinite_in_a_row > 0:
            if self.di.is_main:
                log.warning("step %d: checkpoint deferred during a streak of non-finite steps", next_step)
            return False
        if not checkpoint.params_finite(self.model):
            raise NonFiniteLossError(f"parameters are NaN/Inf before step {next_step}: checkpoint not written "
                                     f"(the previous one is intact); lower optim.lr or raise optim.eps")
        extra = {"data_errors": self.data_errors, "data_attempts": self.data_attempts,
                 "world_size": self.di.world_size, "model_config": model_config(self.cfg)}
        self.checkpointer.save(next_step, self.model, self.optimizer, extra, self.config_yaml)
        return True

    # ---- one step ---------------------------------------------------------------------------------------------
    def batch_stats(self, batch, dev) -> torch.Tensor:
        """[per-mask target counts..., data errors, clips] summed over ranks (loss weights need global counts).

        Built and summed on the device without a host sync: the counts come from the batch's device copy, the two
        host numbers through pinned memory (a copy from pageable memory would wait for the GPU); the loss weights
        use the sums there and the data-error counts are read back with the step's other numbers."""
        tail = torch.tensor([len(batch.errors), batch.video.shape[0]], dtype=torch.float64)
        if self.device.type == "cuda":
            tail = tail.pin_memory().to(self.device, non_blocking=True)
        stats = torch.cat([dev.masks.tgt_counts.double(), tail])
        if self.di.world_size > 1:
            dist.all_reduce(stats)
        return stats

    def compute_loss(self, batch, row_weight: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            return self.model(batch.video, batch.masks, row_weight, step=batch.step)

    def step_flops(self, batch) -> float:
        return self.model.step_flops(batch.masks) * self.di.world_size

    def train_step(self, batch, step: int) -> Optional[dict]:
        """One step with no host sync: a non-finite loss or gradient norm masks the update on the device
        (vjepa_fast.step_guard). Returns the step's numbers, read back on log and checkpoint steps (then None if
        the step was skipped) and still on the device otherwise."""
        sched = self.schedules(step)
        for g in self.optimizer.param_groups:
            g["lr"] = sched["lr"]
            g["weight_decay"] = sched["wd"] if g.get("decay", True) else 0.0
        M = batch.masks.num_masks
        flops = self.step_flops(batch)
        with nvtx_range("data"):  # a no-op when data/prefetch.py copied the batch ahead on a side stream
            dev = batch.device_copy or batch.to(self.device, non_blocking=True)
            stats = self.batch_stats(batch, dev)
        loss = self.compute_loss(dev, self.model.row_weights(dev.masks, stats[:M], self.di.world_size))
        stats_of_step = self.model.step_stats()
        terms = stats_of_step.loss_terms  # [prediction loss, sigreg] with loss.sigreg > 0
        loss_values = torch.cat([loss.detach().reshape(1), *([] if terms is None else [terms])])  # a copy
        if self.di.world_size > 1:  # every rank decides on the same (global) loss; one collective for the terms too
            dist.all_reduce(loss_values, op=dist.ReduceOp.AVG)
        loss_value = loss_values[0]
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
        # clips: every rank's batch has batch_size clips (broken samples are replaced), so no readback is needed
        out = {"step": step, "loss": loss_value, "grad_norm": grad_norm, **sched, "flops": flops,
               "clips": batch.video.shape[0] * self.di.world_size, "finite": finite, "data_stats": stats[M:],
               "feature_stats": stats_of_step.feature_stats,  # V-JEPA only (collapse.py)
               "loss_terms": None if terms is None else loss_values[1:]}
        t = self.cfg.train
        logged = (step + 1) % t.log_every == 0 or step + 1 == t.steps
        # effective ranks on logged steps only: an eigenproblem per encoder (its sync comes with the log's anyway)
        out["ranks"] = (self.collapse.ranks(stats_of_step.rank_rows) if logged and self.di.is_main
                        else None)
        if not logged and (step + 1) % t.ckpt_every:
            self.unread.append(out)
            return out
        return self.settle(out)

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

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        """Hold the run dir (lock + one resume decision for every rank) for the whole run."""
        run_dir = Path(self.cfg.run_dir)
        dataset = preflight.open_dataset(self.cfg)  # a bad data path fails before the run dir is touched
        notes: list[str] = []

        def precheck() -> Optional[str]:  # rank 0, before the lock: a refused start leaves the run dir as it was
            try:
                notes.extend(self.preflight_run_dir(run_dir))
            except preflight.RunError as e:
                return str(e)
            return None

        hold = RunDir(run_dir, self.di.is_main, self.di.control_group)
        decision = hold.open(self.cfg.train.resume, precheck)
        self.stop = StopRequest(self.di.control_group)
        clean = False
        self.phase = "start-up"
        try:
            rows = self._run(decision, dataset, notes)
            self.phase = "the last checkpoint write"
            self.checkpointer.wait()
            clean = True
            return rows
        except RuntimeError as e:  # a dead or stalled peer: one line naming this rank and what it was doing
            one_line = as_collective_error(e, self.di.rank, self.phase, self.cfg.parallel.timeout_s)
            if one_line is None or isinstance(e, (CheckpointError, RunDirError, NonFiniteLossError, DataErrorLimit,
                                                    preflight.RunError)):
                raise
            raise one_line from e
        finally:
            self.stop.close(clean)
            hold.close()

    def _run(self, decision: ResumeDecision, dataset, notes: list[str]) -> list[dict]:
        cfg, di, t = self.cfg, self.di, self.cfg.train
        run_dir = Path(cfg.run_dir)
        # config.yaml is written only once the resume succeeded, so a failed start leaves an existing run as it was.
        try:
            self.phase = "resuming"
            self.resume(decision)
        except preflight.RunError:
            raise
        except (RuntimeError, KeyError, ValueError) as e:  # CheckpointError included: every rank failed to load it
            raise preflight.RunError(f"the checkpoint in {checkpoint.checkpoint_dir(run_dir)} does not fit this "
                                     f"model ({preflight.one_line(e)[:300]}); resume with the run's own config.yaml "
                                     f"or use another run_dir") from None
        if di.is_main:  # only now, under the lock: a refused launch never touches a running run's files
            try:
                save_config(cfg, run_dir / "config.yaml")
            except OSError as e:
                raise preflight.save_error(run_dir / "config.yaml", e) from None
            self.config_yaml = (run_dir / "config.yaml").read_text()
        runlog = RunLog(cfg, di.world_size, self.device, di.is_main)
        if self.start_step >= t.steps:
            if di.is_main:
                log.info("run already finished (%d steps)", t.steps)
            return []
        runlog.start(self.model, self.num_tokens, self.model.grid, dataset, self.start_step, notes)
        tb = TensorBoardLog.open(run_dir, t.tensorboard, self.start_step) if di.is_main else None
        collate = MaskCollate(self.masker, self.num_tokens, cfg.masks.truncate_to_batch_min)
        loader = make_loader(dataset, collate, t.batch_size, di.rank, di.world_size, self.start_step, t.steps,
                             t.seed, cfg.data.num_workers, pin_memory=self.device.type == "cuda")
        metrics = MetricsLog(run_dir / "metrics.jsonl", self.start_step) if di.is_main else None
        progress = Progress(t.steps, self.start_step, t.progress and di.is_main)
        rows, window_start, window_clips, window_flops = [], time.perf_counter(), 0, 0.0
        profiler = maybe_profile(run_dir, t.profile and di.is_main, t.profile_steps)
        stream = BatchStream(loader)  # its workers leave the stop signals to this process (lifecycle.py)
        batches = prefetch_to_device(stream, self.device)
        save_pending = False
        try:
            profiler.__enter__()
            while True:
                with nvtx_range("data"):
                    batch = next(batches, None)
                if batch is None:
                    break
                step = batch.step
                if tb is not None and step == self.start_step:
                    tb.masks(batch, self.model.grid, cfg)
                self.phase = f"step {step}"
                out = self.train_step(batch, step)
                if out is not None:
                    window_clips += out["clips"]
                    window_flops += out["flops"] or 0.0
                logged = None
                if out is not None and ((step + 1) % t.log_every == 0 or step + 1 == t.steps):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    elapsed = time.perf_counter() - window_start
                    logged = {**self.metrics_row(out, elapsed, window_clips, window_flops), **runlog.stamp()}
                    rows.append(logged)
                    if metrics is not None:
                        metrics.write(logged)
                    if tb is not None:
                        tb.scalars(logged)
                    window_start, window_clips, window_flops = time.perf_counter(), 0, 0.0
                progress.update(logged)
                stop = self.stop.agreed()
                due = (step + 1) % t.ckpt_every == 0 or step + 1 == t.steps or stop
                if due or save_pending:
                    self.settle_unread()
                    self.phase = f"the checkpoint save before step {step + 1}"
                    save_pending = not self.save_logged(step + 1, runlog)
                self.checkpointer.poll()
                profiler.step()
                if stop:
                    self.preempted = True
                    log.warning("rank %d: stopped by %s after step %d (%s); exiting with code %d for a requeue",
                                di.rank, self.stop.signal_name or "a signal on another rank", step,
                                "not saved: non-finite streak" if save_pending else "saved", REQUEUE_EXIT_CODE)
                    break
        finally:
            stream.close()
            profiler.__exit__(None, None, None)
            progress.close()
            if metrics is not None:
                metrics.close()
            if tb is not None:
                tb.close()
        if di.is_main:
            outputs = finish_outputs(run_dir, t.plots)
            runlog.end(rows, self.data_errors, outputs)
        return rows

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

    def save_logged(self, next_step: int, runlog: RunLog) -> bool:
        """save() with a run-log line, and a one-line error for a save the user can fix (disk full, permissions)."""
        start = time.perf_counter()
        path = checkpoint.step_path(self.cfg.run_dir, next_step)
        try:
            saved = self.save(next_step)
        except (OSError, RuntimeError) as e:
            err = preflight.save_error(path, e)
            if err is None:
                raise
            raise err from None
        if saved:
            runlog.checkpoint(next_step, path, time.perf_counter() - start)
        return saved

    def metrics_row(self, out: dict, elapsed: float, clips: int, flops: float) -> dict:
        clips_per_s = clips / max(elapsed, 1e-9)
        mfu = (flops / elapsed / self.peak) if (self.peak and flops) else None
        return {"step": out["step"], "loss": out["loss"], "lr": out["lr"], "wd": out["wd"],
                "ema_momentum": out["ema_momentum"], "grad_norm": out["grad_norm"],
                "clips_per_s": clips_per_s, "tokens_per_s": clips_per_s * self.num_tokens, "mfu": mfu,
                "max_mem_gb": max_mem_gb(self.device), "data_errors": self.data_errors,
                **self.collapse.fields(out["feature_stats"], out["step"], out["ranks"]),
                **loss_term_fields(out["loss_terms"])}


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
        epilog="config keys (type, default, meaning); set any of them as key=value:\n" + help_table())
    parser.add_argument("--config", help="a YAML recipe: a path, or the name of a packaged one ("
                        + ", ".join(packaged_configs()) + ")")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        if args.debug:
            raise
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    finished = False
    try:
        di = init_distributed(cfg.parallel.timeout_s)  # a peer that never comes: one line (CollectiveError)
        if not di.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        trainer = Trainer(cfg, di)
        trainer.run()
        finished = True
        if trainer.preempted:
            return REQUEUE_EXIT_CODE
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"error: {preflight.one_line(e)}", file=sys.stderr)
        return 1
    finally:
        shutdown_distributed(wait_for_peers=finished)
    return 0


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
