"""Representation quality on the synthetic videos: `python -m vjepa_fast.bench_quality [--minutes M] [--out DIR]`.

Trains the same encoder four ways for the same wall-clock budget each: V-JEPA with its original objective
(loss.sigreg=0), V-JEPA with the SIGReg term (--sigreg), the VideoMAE baseline, and supervised on each label (the
ceiling: the encoder trained end to end on that label, vjepa_fast/supervised.py); then trains frozen attentive probes
on every encoder, and on a randomly initialised encoder of the same shape (the floor), for the motion and the
appearance labels, with several probe seeds. Per label, "gap closed" = (method - random) / (supervised - random), and
a label counts only where the ceiling beats the floor by COUNTED_MARGIN or more. Writes DIR/quality.json,
DIR/quality.md (the table) and DIR/quality.png (a bar chart, when matplotlib is installed). See docs/eval.md
"Representation quality benchmark".

The budget is met by a short calibration run just before each trained run (a pretraining method, or the supervised
ceiling on one label): it gives the cost of a run of n steps (vjepa_fast/wall_budget.py: start-up and end costs plus
the mean steady step; the ceiling's head phase, the same work whatever its step count, counts as start-up), and the
run gets as many steps as fit in the budget (known before it starts, so the schedules span the run, as in any run). So
each row gets the same time, not the same steps. Calibrating just before the run, not all up front, lets the
calibration see the load the run will see on a shared machine; it runs twice and keeps the faster estimate, so a load
spike during one calibration does not cut that row's steps. Each row's actual training seconds are recorded next to
its budget.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast import eval as ev
from vjepa_fast.config import Config, ConfigError, load_config
from vjepa_fast.data.probe_splits import SYNTHETIC_DEFAULT_SAMPLES
from vjepa_fast.eval.options import DEFAULT_EPOCHS
from vjepa_fast.parallel import DistInfo
from vjepa_fast.user_errors import exit_code
from vjepa_fast.wall_budget import RunCost

log = logging.getLogger("vjepa_fast.bench_quality")

# Overrides on top of the built-in default (the quick start) per preset; the GPU preset is wider, longer, larger.
PRESETS = {
    # 5 trainings x 3 min + 30 probes with the eval's synthetic defaults (5000 clips, 20 epochs; on 1000 clips a probe
    # memorises its split, docs/results.md); its run time is in docs/eval.md.
    "cpu": dict(minutes=3.0, overrides=[], probe=dict(train_samples=SYNTHETIC_DEFAULT_SAMPLES[0],
                                                      val_samples=SYNTHETIC_DEFAULT_SAMPLES[1], epochs=DEFAULT_EPOCHS)),
    "gpu": dict(minutes=10.0, overrides=["model.size=small", "data.num_frames=16", "data.crop_size=128",
                                         "train.batch_size=32", "data.num_workers=8", "optim.warmup_steps=200"],
                probe=dict(train_samples=4000, val_samples=1000, epochs=20)),
}
# Pretrained rows: name -> (method, overrides); the SIGReg weight of "vjepa_sigreg" comes from --sigreg, else from the
# bare run's recipe (configs/tiny.yaml), so that the row trains the quick start's objective.
# SIGReg is off outside its own row even where the base config turns it on (it exists for method vjepa only).
PRETRAINED = {"vjepa": ("vjepa", ["loss.sigreg=0"]), "vjepa_sigreg": ("vjepa", []),
              "videomae": ("videomae", ["loss.sigreg=0"])}
LABELS = ("motion", "appearance")
COUNTED_MARGIN = 0.30  # a label counts only where supervised beats random by this much top-1 (else no room to show)
# A calibration run (pretraining; the ceiling's end-to-end phase) runs CALIBRATION_WARMUP steps, whose start-up costs
# go to the run's fixed cost, then CALIBRATION_STEADY steps averaged into the step cost.
CALIBRATION_WARMUP = 4
CALIBRATION_STEADY = 12
CALIBRATION_ROUNDS = 2  # calibrations per run, the faster kept


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.bench_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--minutes", type=float, help="pretraining budget per method (default: the preset's)")
    p.add_argument("--out", default="runs/bench_quality", help="output folder (runs and results)")
    p.add_argument("--seeds", type=int, default=3, help="probe seeds per encoder and label")
    p.add_argument("--sigreg", type=float, help="SIGReg weight of the V-JEPA + SIGReg row (> 0; default: "
                                              "configs/tiny.yaml's loss.sigreg, the quick start's objective)")
    p.add_argument("--probe-epochs", type=int, help="default: the preset's")
    p.add_argument("--train-samples", type=int, help="probe training clips (default: the preset's)")
    p.add_argument("--val-samples", type=int, help="probe validation clips (default: the preset's)")
    p.add_argument("--device", help="default: cuda when available")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for both methods, e.g. train.batch_size=4")
    a = p.parse_intermixed_args(argv)
    for name in ("seeds", "probe_epochs", "train_samples", "val_samples"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
    if a.sigreg is not None and not 0 < a.sigreg < float("inf"):
        raise ConfigError(f"--sigreg: must be positive, got {a.sigreg}")
    if a.minutes is not None and not 0 < a.minutes < float("inf"):
        raise ConfigError(f"--minutes: must be positive, got {a.minutes}")
    return a


def row_overrides(name: str, a: argparse.Namespace) -> list[str]:
    """The config overrides of a pretrained row on top of the preset's and the user's."""
    method, extra = PRETRAINED[name]
    weight = load_config("tiny").loss.sigreg if a.sigreg is None else a.sigreg
    sigreg = [f"loss.sigreg={weight:g}"] if name == "vjepa_sigreg" else []
    return [*extra, *sigreg, f"method={method}"]


def method_config(name: str, run_dir: Path, overrides: list[str], steps: int, a: argparse.Namespace,
                  extra: tuple = ()) -> Config:
    return load_config(None, [*overrides, *row_overrides(name, a), f"run_dir={run_dir}", f"train.steps={steps}",
                              "train.progress=false", "train.resume=restart", f"train.ckpt_every={steps}", *extra])


def calibration_steps() -> int:
    return CALIBRATION_WARMUP + CALIBRATION_STEADY


def timed(fn, *args) -> tuple:
    """(fn(*args), its wall seconds): a calibration and the run it sizes are timed the same way, whole."""
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def train_pretrained(cfg: Config, di: DistInfo) -> list[dict]:
    from vjepa_fast.train import Trainer

    return Trainer(cfg, di).run()


def fastest(calibrate, budget: float, name: str) -> tuple[RunCost, int]:
    """The faster of CALIBRATION_ROUNDS calibrations (`calibrate()` -> RunCost) and the steps it fits in `budget`."""
    cost = max((calibrate() for _ in range(CALIBRATION_ROUNDS)), key=lambda c: c.steps_within(budget))
    steps = cost.steps_within(budget)
    log.info("%s: calibrated %.3f s/step + %.1f s fixed -> %d steps in %.0f s", name, cost.step, cost.fixed, steps,
             budget)
    return cost, steps


def trained_row(name: str, steps: int, seconds: float, budget: float, cost: RunCost) -> dict:
    """What every trained row records of its budget: its steps, the seconds it took next to the budget, and the
    calibrated cost that sized it."""
    log.info("%s: trained %d steps in %.1f s of a %.0f s budget (%+.0f%%)", name, steps, seconds, budget,
             100 * (seconds / budget - 1))
    return {"steps": steps, "train_seconds": seconds, "budget_seconds": budget, "calibration": dataclasses.asdict(cost)}


def pretrain(name: str, budget: float, out: Path, overrides: list[str], a: argparse.Namespace, di: DistInfo) -> dict:
    def calibrate() -> RunCost:
        cfg = method_config(name, out / f"calibrate_{name}", overrides, calibration_steps(), a, ("train.log_every=1",))
        rows, wall = timed(train_pretrained, cfg, di)  # one row a step: its window is that step's wall time
        return RunCost.measure([cfg.train.batch_size / r["clips_per_s"] for r in rows], wall,
                               warmup=CALIBRATION_WARMUP)

    cost, steps = fastest(calibrate, budget, name)
    run_dir = out / name
    rows, wall = timed(train_pretrained, method_config(name, run_dir, overrides, steps, a), di)
    return {"method": PRETRAINED[name][0], **trained_row(name, steps, wall, budget, cost),
            "first_loss": rows[0]["loss"] if rows else None, "last_loss": rows[-1]["loss"] if rows else None,
            "run_dir": str(run_dir)}


def supervise(label: str, budget: float, out: Path, overrides: list[str], di: DistInfo) -> dict:
    from vjepa_fast.supervised import train_supervised

    cfg = load_config(None, overrides)
    head_seconds = []  # the head phase's seconds in each calibration

    def calibrate() -> RunCost:
        # The head phase is the same work whatever the step count, so it is part of the fixed cost and measured in
        # full by the first calibration only; later ones run a one-batch, one-epoch head phase and count the first
        # one's seconds in its place.
        short = (cfg.train.batch_size, 1) if head_seconds else ()
        r, wall = timed(train_supervised, cfg, label, calibration_steps(), None, di.device, *short)
        head_seconds.append(r["head_seconds"])
        return RunCost.measure(r["step_seconds"], wall - r["head_seconds"] + head_seconds[0], CALIBRATION_WARMUP)

    name = f"supervised {label}"
    cost, steps = fastest(calibrate, budget, name)
    r, wall = timed(train_supervised, cfg, label, steps, out / f"supervised_{label}.pt", di.device)
    return {"method": "supervised", **trained_row(name, steps, wall, budget, cost),
            "train_accuracy": r["train_accuracy"], "last_loss": r["last_loss"], "checkpoint": r["checkpoint"],
            **{k: r[k] for k in ("head_clips", "head_epochs", "head_seconds", "head_train_accuracy")}}


def probe(cfg: Config, ckpt_file: Optional[Path], label: str, a: argparse.Namespace, preset: dict) -> dict:
    p = preset["probe"]
    e = ev.EvalConfig(label=label, seeds=a.seeds, epochs=a.probe_epochs or p["epochs"], device=a.device,
                      train_samples=a.train_samples or p["train_samples"],
                      val_samples=a.val_samples or p["val_samples"])
    ev.validate_eval(e)
    r = ev.evaluate(cfg, e, ckpt_file)
    return {"mean": r["accuracy"], "std": r["accuracy_std"], "accuracies": r["accuracies"], "seeds": r["seeds"],
            "plateau": r["plateau_per_seed"], "train_accuracy": r["history"][-1]["train_accuracy"],
            "seconds": r["seconds"]}


def gap_closed(method: float, floor: float, ceiling: float) -> Optional[float]:
    """(method - floor) / (ceiling - floor): 0 at the random encoder, 1 at the supervised one; None without a gap."""
    return (method - floor) / (ceiling - floor) if ceiling > floor else None


def summarize(encoders: dict) -> dict:
    """Per label: floor, ceiling, whether it counts (ceiling - floor >= COUNTED_MARGIN) and each pretrained row's gap
    closed."""
    out = {}
    for label in LABELS:
        floor, ceiling = encoders["random"][label]["mean"], encoders["supervised"][label]["mean"]
        out[label] = {"floor": floor, "ceiling": ceiling, "counted": ceiling - floor >= COUNTED_MARGIN,
                      "gap_closed": {name: gap_closed(encoders[name][label]["mean"], floor, ceiling)
                                     for name in PRETRAINED if name in encoders}}
    return out


def plateau_seeds(cell: dict) -> list[int]:
    """The probe seeds of a cell that ended on the probe's plateau (docs/eval.md, "The probe")."""
    return [seed for seed, stuck in zip(cell["seeds"], cell["plateau"]) if stuck]


def _cell(row: dict, label: str) -> str:
    c = row.get(label)
    # `*`: the mean includes seeds whose probe never left its plateau (they measure the probe's seed, not the encoder).
    return "-" if c is None else f"{c['mean']:.3f} +- {c['std']:.3f}{'*' if plateau_seeds(c) else ''}"


def markdown(result: dict) -> str:
    s = result["summary"]
    head = " | ".join(f"{label} | gap closed" for label in LABELS)
    lines = [f"Frozen attentive probe, top-1 on {result['val_samples']} validation clips, mean +- std over "
             f"{result['seeds']} probe seeds; training {result['minutes']:g} min ({result['minutes'] * 60:.0f} s) per "
             f"method and label (preset {result['preset']}, {result['device']}); train s: the seconds each training "
             "actually took. Gap closed = (method - random) / (supervised - random); n/c: the label does not count.",
             "", f"| encoder | steps | train s | {head} |", "|---|---|---|" + "---|---|" * len(LABELS)]
    for name, row in result["encoders"].items():
        cells = []
        for label in LABELS:
            g = s[label]["gap_closed"].get(name)
            # A gap closed on a label that does not count divides by a ceiling - floor too small to mean anything.
            shown = "-" if g is None else (f"{g:+.2f}" if s[label]["counted"] else "n/c")
            cells += [_cell(row, label), shown]
        trained = [row[label] for label in LABELS] if name == "supervised" else [row] if "steps" in row else []
        steps = " / ".join(f"{t['steps']}" for t in trained) or "-"
        seconds = " / ".join(f"{t['train_seconds']:.0f}" for t in trained) or "-"
        lines.append(f"| {name} | {steps} | {seconds} | " + " | ".join(cells) + " |")
    stuck = [f"{name} {label} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
             for name, row in result["encoders"].items() for label in LABELS
             if (seeds := plateau_seeds(row[label]))]
    if stuck:
        lines += ["", "`*` the mean includes probes that ended on their plateau (final training loss within "
                  f"{ev.PLATEAU_MARGIN:.0%} of the chance loss; more --probe-epochs): {'; '.join(stuck)}."]
    counted = [label for label in LABELS if s[label]["counted"]]
    lines += ["", f"Counted labels (supervised - random >= {COUNTED_MARGIN:.2f}): "
              f"{', '.join(counted) if counted else 'none'}; "
              + "; ".join(f"{label}: ceiling - floor = {s[label]['ceiling'] - s[label]['floor']:+.3f}"
                          for label in LABELS) + ".",
              f"Chance: motion {1 / 9:.3f} (9 classes), appearance {1 / 18:.3f} (18 classes). "
              f"Total wall time {result['seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def bar_chart(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no bar chart (pip install matplotlib)", file=sys.stderr)
        return False
    names = list(result["encoders"])
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        row = result["encoders"][name]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(LABELS))]
        ax.bar(xs, [row[label]["mean"] for label in LABELS], width, yerr=[row[label]["std"] for label in LABELS],
               capsize=3, label=name)
    for j, chance in enumerate((1 / 9, 1 / 18)):
        ax.hlines(chance, j - 0.4, j + 0.4, colors="grey", linestyles="dotted")
    ax.set_xticks(range(len(LABELS)),
                  [f"{label}{'' if result['summary'][label]['counted'] else ' (not counted)'}" for label in LABELS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("probe top-1")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(a: argparse.Namespace) -> dict:
    preset = PRESETS[a.preset]
    minutes = a.minutes or preset["minutes"]
    overrides = [*preset["overrides"], *a.overrides]
    for name in PRETRAINED:  # bad overrides fail here, before any training
        load_config(None, [*overrides, *row_overrides(name, a)])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    di = DistInfo(0, 1, 0, device)
    t0 = time.perf_counter()
    budget = minutes * 60
    # All training first, back to back, so the time budgets see the machine at about the same time; then probes.
    runs = {name: pretrain(name, budget, out, overrides, a, di) for name in PRETRAINED}
    supervised = {label: supervise(label, budget, out, overrides, di) for label in LABELS}
    encoders: dict[str, dict] = {}
    for name, run_info in runs.items():
        cfg = load_config(str(Path(run_info["run_dir"]) / "config.yaml"))
        ckpt_file, _ = ev.resolve_checkpoint(run_info["run_dir"])
        encoders[name] = {**run_info, **{label: probe(cfg, ckpt_file, label, a, preset) for label in LABELS}}
    base_cfg = load_config(None, overrides)
    # Each supervised encoder is probed on the label it was trained on (the ceiling of that label).
    encoders["supervised"] = {label: {**supervised[label],
                                      **probe(base_cfg, Path(supervised[label]["checkpoint"]), label, a, preset)}
                              for label in LABELS}
    encoders["random"] = {label: probe(base_cfg, None, label, a, preset) for label in LABELS}
    sigreg = load_config(str(Path(runs["vjepa_sigreg"]["run_dir"]) / "config.yaml")).loss.sigreg
    result = {"preset": a.preset, "minutes": minutes, "overrides": overrides, "sigreg": sigreg, "seeds": a.seeds,
              "val_samples": a.val_samples or preset["probe"]["val_samples"], "device": str(device),
              "counted_margin": COUNTED_MARGIN, "encoders": encoders, "summary": summarize(encoders),
              "seconds": time.perf_counter() - t0}
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "quality.md").write_text(markdown(result))
    bar_chart(result, out / "quality.png")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def body() -> int:
        print(markdown(run(parse_args(argv))), end="")
        return 0

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
