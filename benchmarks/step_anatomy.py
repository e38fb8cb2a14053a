"""Where one training step's time goes: the real Trainer's step broken into its phases.

    python benchmarks/step_anatomy.py [--config FILE] [--out DIR] [--steps N] [--warmup N] [key=value ...]

Builds the Trainer from the config (default: the built-in tiny one), draws a few real batches from the loader and
collate (cycled, so data loading itself is not in the time: benchmarks/test_bench_data.py measures that), runs
`--warmup` steps (compilation, kernel builds), then `--steps` timed steps, and prints one row per phase:

- the phases the loop already marks (vjepa_fast.profiling.nvtx_range): data (host-to-device copy), target forward,
  context forward, predictor forward, loss, backward, optimizer (clip + AdamW), ema;
- the backward split per module where the model allows it (loss, predictor, context encoder): hooks on the
  predictor's and the context encoder's outputs mark when their gradients arrive;
- "other": what runs outside every marked phase (schedules, batch statistics, the guard, Python between phases).

Timing: every phase boundary records a timestamp on the device's stream (a CUDA event on a GPU, perf_counter on
the CPU), so a phase's time is how long the GPU stream took from its start to its end, including any gaps inside
it where the GPU waited for the host. The rows therefore add up to the step. A second pass under torch.profiler
measures how much of the step the GPU was busy at all (kernels, copies); the rest is "GPU idle".

Per phase, where the work is known: achieved TFLOP/s (useful FLOPs, as vjepa_fast.models.flops counts them) or GB/s
(AdamW's and the EMA's memory traffic; the data phase's host-to-device bytes) and the fraction of this card's
measured roofline (benchmarks/roofline.py; VJEPA_FAST_ROOFLINE_JSON reuses a saved measurement).

--out DIR writes anatomy.json and anatomy.md there (with --tag T: anatomy_T.json / anatomy_T.md).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from vjepa_fast import ops  # noqa: E402
from vjepa_fast import profiling  # noqa: E402
from vjepa_fast.config import ConfigError, load_config  # noqa: E402
from vjepa_fast.data.loader import MaskCollate, build_dataset, make_loader  # noqa: E402
from vjepa_fast.models.flops import encoder_flops  # noqa: E402
from vjepa_fast.models.vit import stack_dims  # noqa: E402
from vjepa_fast.parallel import DistInfo  # noqa: E402
from vjepa_fast.train import Trainer  # noqa: E402

NUM_BATCHES = 3
QUIET_STEPS = 10**6
OTHER = "other (outside the marked phases)"
BACKWARD_SPLIT = ("backward: loss", "backward: predictor", "backward: context encoder")
# Printed order; phases that did not occur are left out.
ORDER = ("data", "target", "context", "predictor", "loss", "backward", *BACKWARD_SPLIT, "optimizer", "ema", OTHER)
ADAMW_ACCESSES = 7  # fused AdamW per element: reads param, grad, exp_avg, exp_avg_sq; writes the three states


def _sibling(name: str):
    """benchmarks/<name>.py, loaded by its path: the tests load this script too, without benchmarks/ on sys.path."""
    spec = importlib.util.spec_from_file_location(f"vjepa_fast_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_roofline(device: torch.device) -> dict:
    saved = os.environ.get("VJEPA_FAST_ROOFLINE_JSON")
    if saved and Path(saved).is_file():
        return json.loads(Path(saved).read_text())
    return _sibling("roofline").measure(device)


class Clock:
    """Timestamps on the device's timeline: CUDA events on a GPU (no sync when taken), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, marks: list) -> list[float]:
        """The marks as seconds since the first one (synchronises once on a GPU)."""
        if not self.cuda:
            return [t - marks[0] for t in marks]
        marks[-1].synchronize()
        return [marks[0].elapsed_time(ev) / 1e3 for ev in marks]


class PhaseRecorder:
    """Collects (timestamp, event, name) at every phase boundary and step start; splits the time into phases.

    Events: "begin"/"end" from the loop's ranges, "switch" from the backward hooks (replaces the running backward
    sub-phase), "step" between steps. Each interval between consecutive marks belongs to the innermost open phase
    (so nested phases are counted once, exclusively), or to OTHER when none is open."""

    def __init__(self, clock: Clock, split_backward: bool):
        self.clock, self.split_backward = clock, split_backward
        self.marks: list[tuple] = []

    def on_phase(self, name: str, begin: bool) -> None:
        self.marks.append((self.clock.now(), "begin" if begin else "end", name))

    def switch(self, name: str) -> None:
        self.marks.append((self.clock.now(), "switch", name))

    def step(self) -> None:
        self.marks.append((self.clock.now(), "step", None))

    def totals(self) -> tuple[dict[str, float], int, float]:
        """(seconds per phase summed over steps, steps, total seconds): from the first step mark to the last."""
        first = next(i for i, m in enumerate(self.marks) if m[1] == "step")
        last = max(i for i, m in enumerate(self.marks) if m[1] == "step")
        marks = self.marks[first:last + 1]
        times = self.clock.seconds([m[0] for m in marks])
        out: dict[str, float] = {}
        stack: list[str] = []
        for i in range(len(marks) - 1):
            _, event, name = marks[i]
            if event == "begin":
                stack.append("backward: loss" if name == "backward" and self.split_backward else name)
            elif event == "end":
                if stack:
                    stack.pop()
            elif event == "switch" and stack and stack[-1].startswith("backward"):
                stack[-1] = name
            elif event == "step":
                stack.clear()
            key = stack[-1] if stack else OTHER
            out[key] = out.get(key, 0.0) + times[i + 1] - times[i]
        steps = sum(1 for m in marks if m[1] == "step") - 1
        return out, steps, times[-1]


@contextlib.contextmanager
def backward_markers(model, recorder: PhaseRecorder):
    """Mark the arrival of the predictor's and the context encoder's output gradients (the backward's module
    boundaries) with tensor hooks; yields whether the model has both modules."""
    parts = model.parts()
    predictor, encoder = parts.get("predictor"), parts.get("encoder")
    if predictor is None or encoder is None:
        yield False
        return

    def marker(name):
        def forward_hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: recorder.switch(name))
        return forward_hook

    handles = [predictor.register_forward_hook(marker("backward: predictor")),
               encoder.register_forward_hook(marker("backward: context encoder"))]
    try:
        yield True
    finally:
        for h in handles:
            h.remove()


def phase_work(trainer: Trainer, batch) -> dict[str, dict]:
    """Useful FLOPs and bytes per phase for this batch: {'phase': {'flops': F} or {'bytes': B}}."""
    model, masks, work = trainer.model, batch.masks, {}
    params = sum(p.numel() for p in trainer.params)
    work["optimizer"] = {"bytes": ADAMW_ACCESSES * 4 * params}
    targets, sources = model.ema_pairs()
    # reads target and source, writes target
    work["ema"] = {"bytes": sum(t.numel() * (2 * t.element_size() + s.element_size())
                                for t, s in zip(targets, sources))}
    video_bytes = batch.video.numel() * batch.video.element_size()
    mask_bytes = sum(v.numel() * v.element_size() for v in vars(masks).values() if isinstance(v, torch.Tensor))
    work["data"] = {"bytes": video_bytes + mask_bytes}
    enc, pred = model.parts().get("encoder"), model.parts().get("predictor")
    if enc is None or pred is None:  # V-JEPA's phases only
        return work
    (ew, ed, eh), (pw, pd, ph) = stack_dims(enc.repeated_blocks()), stack_dims(pred.repeated_blocks())
    patch = 2 * masks.batch_size * masks.num_tokens * enc.patch_values * ew
    ctx_lens = (masks.ctx_cu[1:] - masks.ctx_cu[:-1]).tolist()
    pred_lens = (masks.pred_cu[1:] - masks.pred_cu[:-1]).tolist()
    context = patch + encoder_flops(ctx_lens, ew, ed, eh)
    predictor = (2 * sum(ctx_lens) * ew * pw + encoder_flops(pred_lens, pw, pd, ph)
                 + 2 * int(masks.tgt_rows.numel()) * pw * ew)
    work["target"] = {"flops": patch + encoder_flops([masks.num_tokens] * masks.batch_size, ew, ed, eh)}
    work["context"] = {"flops": context}
    work["predictor"] = {"flops": predictor}
    work["backward"] = {"flops": 2 * (context + predictor)}
    work["backward: predictor"] = {"flops": 2 * predictor}
    work["backward: context encoder"] = {"flops": 2 * context}
    return work


def gpu_busy_seconds(trainer: Trainer, batches: list, steps: int, device: torch.device) -> Optional[float]:
    """Seconds per step the GPU spent in kernels, copies and memsets (torch.profiler); None on the CPU."""
    if device.type != "cuda":
        return None
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(steps):
            trainer.train_step(batches[i % len(batches)], i)
        torch.cuda.synchronize(device)
    busy_us = sum(e.self_device_time_total for e in prof.key_averages())
    return busy_us / 1e6 / steps


def measure(trainer: Trainer, batches: list, steps: int, warmup: int, device: torch.device) -> dict:
    for i in range(warmup):
        trainer.train_step(batches[i % len(batches)], i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    recorder = PhaseRecorder(Clock(device), split_backward=False)
    with backward_markers(trainer.model, recorder) as split:
        recorder.split_backward = split
        profiling.observe_phases(recorder.on_phase)
        try:
            for i in range(steps):
                recorder.step()
                trainer.train_step(batches[(warmup + i) % len(batches)], warmup + i)
            recorder.step()
        finally:
            profiling.observe_phases(None)
    totals, n, total = recorder.totals()
    busy = gpu_busy_seconds(trainer, batches, steps, device)
    return {"per_step_s": {k: v / n for k, v in totals.items()}, "steps": n, "step_s": total / n,
            "gpu_busy_s": busy}


def build_rows(measured: dict, work: dict, roofline: dict) -> list[dict]:
    step_s = measured["step_s"]
    matmul, copy = roofline.get("matmul_tflops"), roofline.get("copy_gb_per_s")
    per_step = dict(measured["per_step_s"])
    if any(k in per_step for k in BACKWARD_SPLIT):  # the split replaces the whole-backward row
        per_step.pop("backward", None)
    rows = []
    for name in ORDER:
        if name not in per_step:
            continue
        s = per_step[name]
        row = {"phase": name, "ms": s * 1e3, "share": s / step_s if step_s else 0.0}
        w = work.get(name, {})
        if "flops" in w and s > 0:
            row["tflop_per_s"] = w["flops"] / s / 1e12
            row["of_roofline"] = row["tflop_per_s"] / matmul if matmul else None
        elif "bytes" in w and s > 0:
            row["gb_per_s"] = w["bytes"] / s / 1e9
            # the data phase copies host to device: the device-to-device copy rate is no ceiling for it
            row["of_roofline"] = row["gb_per_s"] / copy if copy and name != "data" else None
        rows.append(row)
    return rows


def render(result: dict) -> str:
    lines = [f"# Step anatomy: {result['description']}", "",
             f"- device: {result['device']}; {result['steps']} timed steps after {result['warmup']} warm-up; "
             f"dense attention backend: {result['dense_attention']}",
             f"- step: {result['step_ms']:.2f} ms; rows are phases on the device's timeline and add up to it"]
    if result.get("gpu_busy_ms") is not None:
        lines.append(f"- GPU busy {result['gpu_busy_ms']:.2f} ms per step (kernels, copies; torch.profiler pass), "
                     f"idle {result['gpu_idle_ms']:.2f} ms ({result['gpu_idle_share']:.1%})")
    else:
        lines.append("- GPU idle: n/a (no GPU)")
    lines.append(f"- roofline: matmul {result['roofline'].get('matmul_tflops')} TFLOP/s, "
                 f"copy {result['roofline'].get('copy_gb_per_s')} GB/s")
    lines += ["", "| phase | ms | share | TFLOP/s | GB/s | of roofline |", "|---|---|---|---|---|---|"]

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in result["rows"]:
        lines.append(f"| {r['phase']} | {r['ms']:.3f} | {r['share']:.1%} | {fmt(r.get('tflop_per_s'), '.3g')} | "
                     f"{fmt(r.get('gb_per_s'), '.3g')} | {fmt(r.get('of_roofline'), '.1%')} |")
    return "\n".join(lines) + "\n"


def run(config: Optional[str], overrides: list[str], steps: int, warmup: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # The Trainer applies its config's backends, process-wide: forced_backends leaves the process as it was.
    with tempfile.TemporaryDirectory() as run_dir, _sibling("forced_backends").forced_backends():
        # No log or checkpoint step among the few measured ones (the loop reads numbers back only there, once per
        # train.log_every steps): the rows show the steady step. An override on the command line still wins.
        quiet = [f"train.log_every={QUIET_STEPS}", f"train.ckpt_every={QUIET_STEPS}"]
        cfg = load_config(config, [*quiet, *overrides, f"run_dir={run_dir}", "train.progress=false",
                                   "data.num_workers=0"])
        trainer = Trainer(cfg, DistInfo(0, 1, 0, device))
        t = cfg.train
        collate = MaskCollate(trainer.masker, trainer.num_tokens, cfg.masks.truncate_to_batch_min)
        loader = make_loader(build_dataset(cfg.data, t.seed), collate, t.batch_size, 0, 1, 0, NUM_BATCHES, t.seed,
                             0, pin_memory=device.type == "cuda")
        batches = list(loader)
        measured = measure(trainer, batches, steps, warmup, device)
        work = phase_work(trainer, batches[0])
        dense = ops._backend.forced_backend("dense_attention") or "auto"
    roofline = _load_roofline(device)
    step_s, busy = measured["step_s"], measured["gpu_busy_s"]
    return {
        "description": f"{cfg.method}, model {cfg.model.size}, batch {t.batch_size}, "
                       f"{cfg.data.num_frames}x{cfg.data.crop_size}, compile={t.compile}, "
                       f"truncate_to_batch_min={cfg.masks.truncate_to_batch_min}",
        "config": config, "overrides": overrides, "device": roofline.get("device", str(device)),
        # the dense target pass's attention: forced (config backends / VJEPA_FAST_DENSE_ATTENTION_BACKEND) or auto
        "dense_attention": dense,
        "steps": measured["steps"], "warmup": warmup, "step_ms": step_s * 1e3,
        "gpu_busy_ms": None if busy is None else busy * 1e3,
        "gpu_idle_ms": None if busy is None else max(step_s - busy, 0.0) * 1e3,
        "gpu_idle_share": None if busy is None else max(step_s - busy, 0.0) / step_s,
        "roofline": roofline, "rows": build_rows(measured, work, roofline),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file (default: the built-in tiny config)")
    parser.add_argument("--out", help="write anatomy.json and anatomy.md into this folder")
    parser.add_argument("--tag", default="", help="suffix for the output files (e.g. before / after)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.batch_size=24")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        print("error: --steps must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        result = run(args.config, args.overrides, args.steps, args.warmup)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    text = render(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"anatomy_{args.tag}" if args.tag else "anatomy"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{stem}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
