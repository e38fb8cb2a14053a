"""What a run tells its user: a start block, a line per checkpoint, warnings, an end summary, and `starts.jsonl`.

The start block and the summary are plain log lines (logger `vjepa_fast.run`, main process only) so they appear in
the console and in any log file a launcher collects. `<run_dir>/starts.jsonl` gets one JSON object per start of the
run (time, processes, device, step it started at): the record a later resume compares its process count with.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast.config import Config

log = logging.getLogger("vjepa_fast.run")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def mask_summary(cfg: Config) -> str:
    k = cfg.masks
    if cfg.method == "videomae":
        return f"tubes, {k.tube_ratio:.0%} of the spatial positions masked"
    trunc = ", truncated to the batch minimum" if k.truncate_to_batch_min else ""
    return (f"multi-block: short {k.short_blocks} x {k.short_scale:g}, long {k.long_blocks} x {k.long_scale:g} of "
            f"the frame, aspect {k.aspect_min:g}-{k.aspect_max:g}{trunc}")


def backend_summary(cfg: Config) -> str:
    """What the config asks of each op (`auto`: the registry chooses per input kind on first use)."""
    from vjepa_fast.ops import _backend

    return ", ".join(f"{op}={getattr(cfg.backends, op)}" for op in _backend.op_names())


def chosen_summary() -> str:
    """What the registry chose, per op and input kind (key), during this run."""
    from vjepa_fast.ops import chosen_backends

    chosen = chosen_backends()
    return "; ".join(f"{op}: " + ", ".join(f"{name} for {key}" for key, name in keys.items())
                     for op, keys in chosen.items()) or "-"


def data_summary(cfg: Config, dataset) -> str:
    if cfg.data.path == "synthetic":
        return "synthetic videos (built in, unbounded)"
    try:
        return f"{cfg.data.path} ({len(dataset)} videos, decoder {cfg.data.decoder})"
    except TypeError:
        return cfg.data.path


class RunLog:
    """One per run start; silent on processes other than the main one."""

    def __init__(self, cfg: Config, world_size: int, device: torch.device, is_main: bool):
        self.cfg, self.world, self.device, self.is_main = cfg, world_size, device, is_main
        self.t0 = time.time()
        self.start_step = 0
        self.clips, self.seconds = 0, 0.0

    def stamp(self) -> dict:
        """The wall-clock fields of a metrics.jsonl row: unix time and seconds since this start."""
        now = time.time()
        return {"time": round(now, 3), "elapsed_s": round(now - self.t0, 3)}

    def start(self, model, num_tokens: int, grid, dataset, start_step: int, notes: list[str]) -> None:
        self.start_step = start_step
        if not self.is_main:
            return
        cfg, d, t, o = self.cfg, self.cfg.data, self.cfg.train, self.cfg.optim
        parts = [(name, count_params(part)) for name, part in model.parts().items()]
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        resumed = f"step {start_step} (checkpoint in {Path(cfg.run_dir) / 'checkpoints'})" if start_step else "-"
        lines = [
            ("device", f"{device_name(self.device)} x {self.world} process{'es' if self.world > 1 else ''}"),
            ("model", f"{cfg.method} ViT-{cfg.model.size}/{cfg.model.patch_size}: "
                      + ", ".join(f"{n} {_millions(c)}" for n, c in parts if c)
                      + f"; trainable {_millions(trainable)}"),
            ("data", data_summary(cfg, dataset)),
            ("clip", f"3 x {d.num_frames} x {d.crop_size} x {d.crop_size} (frame step {d.frame_step}), "
                     f"{num_tokens} tokens = {grid[0]} x {grid[1]} x {grid[2]}"),
            ("masks", mask_summary(cfg)),
            ("batch", f"{t.batch_size * self.world} clips per step ({t.batch_size} per process)"),
            ("steps", f"{t.steps} (warm-up {o.warmup_steps}, schedules over {round(t.steps * o.schedule_scale)})"),
            ("run dir", str(Path(cfg.run_dir).resolve())),
            ("resumed from", resumed),
            ("backends asked", backend_summary(cfg)),
        ]
        width = max(len(k) for k, _ in lines)
        log.info("run start\n%s", "\n".join(f"  {k:<{width}}  {v}" for k, v in lines))
        for note in notes:
            log.warning("deliberate change on resume: %s%s", note,
                        " (the lr, weight-decay and EMA schedules are rescaled to the new length)"
                        if note.startswith(("train.steps ", "optim.schedule_scale ")) else "")
        if t.steps <= o.warmup_steps:
            log.warning("train.steps=%d <= optim.warmup_steps=%d: the run never leaves warm-up (the learning rate "
                        "stays below optim.lr); lower optim.warmup_steps for a short run", t.steps, o.warmup_steps)
        self._record_start()

    def _record_start(self) -> None:
        entry = {"time": round(self.t0, 3), "world_size": self.world, "device": device_name(self.device),
                 "start_step": self.start_step, "argv": sys.argv[1:]}
        with open(Path(self.cfg.run_dir) / "starts.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def checkpoint(self, step: int, path: Optional[Path], seconds: float) -> None:
        if self.is_main:
            log.info("checkpoint step %d written to %s in %.1f s", step, path, seconds)

    def end(self, rows: list[dict], data_errors: int, outputs: list[str]) -> None:
        if not self.is_main:
            return
        wall = time.time() - self.t0
        cfg = self.cfg
        steps = (rows[-1]["step"] + 1 - self.start_step) if rows else 0
        clips = steps * cfg.train.batch_size * self.world
        mfus = [r["mfu"] for r in rows if r.get("mfu") is not None]
        lines = [
            ("steps", f"{steps} this start ({self.start_step} -> {self.start_step + steps} of {cfg.train.steps})"),
            ("wall time", f"{wall:.1f} s"),
            ("clips/s", f"{clips / wall:.1f}" if wall > 0 else "-"),
            ("MFU", f"{sum(mfus) / len(mfus):.1%}" if mfus else "- (unknown peak: set train.peak_tflops)"),
            ("final loss", f"{rows[-1]['loss']:.4f}" if rows else "-"),
            ("data errors", str(data_errors)),
            ("backends chosen", chosen_summary()),
            ("outputs", ", ".join(outputs)),
            ("next", eval_command(cfg)),
        ]
        width = max(len(k) for k, _ in lines)
        log.info("run end\n%s", "\n".join(f"  {k:<{width}}  {v}" for k, v in lines))


def eval_command(cfg: Config) -> str:
    label = " --label motion" if cfg.data.path == "synthetic" else ""
    return f".venv/bin/python -m vjepa_fast.eval --checkpoint {cfg.run_dir}{label}"
