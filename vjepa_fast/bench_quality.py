"""Representation quality on the synthetic videos: `python -m vjepa_fast.bench_quality [--minutes M] [--out DIR]`.

Trains the same encoder four ways for the same wall-clock budget each: V-JEPA with its original objective
(loss.sigreg=0), V-JEPA with the SIGReg term (--sigreg), the VideoMAE baseline, and supervised on each label (the
ceiling: the encoder trained end to end on that label, vjepa_fast/supervised.py); then trains frozen attentive probes
on every encoder, and on a randomly initialised encoder of the same shape (the floor), for the motion and the
appearance labels, with several probe seeds. Per label, "gap closed" = (method - random) / (supervised - random), and
a label counts only where the ceiling beats the floor by COUNTED_MARGIN or more. Writes DIR/quality.json,
DIR/quality.md (the table) and DIR/quality.png (a bar chart, when matplotlib is installed). See docs/eval.md
"Representation quality benchmark".

The budget is met by timing a few calibration steps of each method first and then running as many steps as fit in
the budget (the schedules then span the run, as in any run), so each method gets the same time, not the same steps.
The methods are calibrated in turn, twice, and each keeps its faster estimate, so a load spike on a shared machine
during one calibration does not cut that method's steps. The supervised ceiling is calibrated and budgeted the same
way, once per label.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from vjepa_fast import eval as ev
from vjepa_fast.config import Config, ConfigError, load_config
from vjepa_fast.parallel import DistInfo
from vjepa_fast.user_errors import exit_code

log = logging.getLogger("vjepa_fast.bench_quality")

# Overrides on top of the built-in default (the quick start) per preset; the GPU preset is wider, longer, larger.
PRESETS = {
    # 5 trainings x 3 min + 30 probes of 50 epochs (they level off by epoch 40-60): under an hour on 2 quiet cores.
    "cpu": dict(minutes=3.0, overrides=[], probe=dict(train_samples=1000, val_samples=500, epochs=50)),
    "gpu": dict(minutes=10.0, overrides=["model.size=small", "data.num_frames=16", "data.crop_size=128",
                                         "train.batch_size=32", "data.num_workers=8", "optim.warmup_steps=200"],
                probe=dict(train_samples=4000, val_samples=1000, epochs=20)),
}
# Pretrained rows: name -> (method, overrides); the SIGReg weight of "vjepa_sigreg" comes from --sigreg.
# SIGReg is off outside its own row even where the base config turns it on (it exists for method vjepa only).
PRETRAINED = {"vjepa": ("vjepa", ["loss.sigreg=0"]), "vjepa_sigreg": ("vjepa", []),
              "videomae": ("videomae", ["loss.sigreg=0"])}
ROWS = (*PRETRAINED, "supervised")  # the trained rows, each given the same wall-clock
LABELS = ("motion", "appearance")
COUNTED_MARGIN = 0.30  # a label counts only where supervised beats random by this much top-1 (else no room to show)
CALIBRATION_STEPS = 12  # the first CALIBRATION_WARMUP carry start-up costs and are not counted
CALIBRATION_WARMUP = 4
CALIBRATION_ROUNDS = 2


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.bench_quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--minutes", type=float, help="pretraining budget per method (default: the preset's)")
    p.add_argument("--out", default="runs/bench_quality", help="output folder (runs and results)")
    p.add_argument("--seeds", type=int, default=3, help="probe seeds per encoder and label")
    p.add_argument("--sigreg", type=float, default=0.1, help="SIGReg weight of the V-JEPA + SIGReg row (> 0)")
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
    if not 0 < a.sigreg < float("inf"):
        raise ConfigError(f"--sigreg: must be positive, got {a.sigreg}")
    if a.minutes is not None and not 0 < a.minutes < float("inf"):
        raise ConfigError(f"--minutes: must be positive, got {a.minutes}")
    return a


def row_overrides(name: str, a: argparse.Namespace) -> list[str]:
    """The config overrides of a pretrained row on top of the preset's and the user's."""
    method, extra = PRETRAINED[name]
    sigreg = [f"loss.sigreg={a.sigreg:g}"] if name == "vjepa_sigreg" else []
    return [*extra, *sigreg, f"method={method}"]


def method_config(name: str, run_dir: Path, overrides: list[str], steps: int, a: argparse.Namespace,
                  extra: tuple = ()) -> Config:
    return load_config(None, [*overrides, *row_overrides(name, a), f"run_dir={run_dir}", f"train.steps={steps}",
                              "train.progress=false", "train.resume=restart", f"train.ckpt_every={steps}", *extra])


def seconds_per_step(name: str, out: Path, overrides: list[str], a: argparse.Namespace, di: DistInfo) -> float:
    """The median wall time of a step (data wait included) in a short throw-away run."""
    if name == "supervised":
        from vjepa_fast.supervised import train_supervised

        r = train_supervised(load_config(None, overrides), LABELS[0], CALIBRATION_STEPS, device=di.device)
        return statistics.median(r["step_seconds"][CALIBRATION_WARMUP:])
    from vjepa_fast.train import Trainer

    cfg = method_config(name, out / f"calibrate_{name}", overrides, CALIBRATION_STEPS, a, ("train.log_every=1",))
    rows = Trainer(cfg, di).run()[CALIBRATION_WARMUP:]
    return statistics.median(cfg.train.batch_size / r["clips_per_s"] for r in rows)


def budget_steps(name: str, per_step: float, minutes: float) -> int:
    steps = max(1, int(minutes * 60 / per_step))
    log.info("%s: %.3f s/step calibrated -> %d steps in %.1f minutes", name, per_step, steps, minutes)
    return steps


def pretrain(name: str, per_step: float, minutes: float, out: Path, overrides: list[str], a: argparse.Namespace,
             di: DistInfo) -> dict:
    from vjepa_fast.train import Trainer

    steps = budget_steps(name, per_step, minutes)
    run_dir = out / name
    cfg = method_config(name, run_dir, overrides, steps, a)
    t0 = time.perf_counter()
    rows = Trainer(cfg, di).run()
    wall = time.perf_counter() - t0
    return {"method": PRETRAINED[name][0], "steps": steps, "seconds": wall, "seconds_per_step_calibrated": per_step,
            "first_loss": rows[0]["loss"] if rows else None, "last_loss": rows[-1]["loss"] if rows else None,
            "run_dir": str(run_dir)}


def supervise(label: str, per_step: float, minutes: float, out: Path, overrides: list[str], di: DistInfo) -> dict:
    from vjepa_fast.supervised import train_supervised

    steps = budget_steps(f"supervised {label}", per_step, minutes)
    r = train_supervised(load_config(None, overrides), label, steps, out / f"supervised_{label}.pt", di.device)
    return {"method": "supervised", "steps": steps, "seconds": r["seconds"], "seconds_per_step_calibrated": per_step,
            "train_accuracy": r["train_accuracy"], "last_loss": r["last_loss"], "checkpoint": r["checkpoint"],
            "head_steps": r["head_steps"], "head_train_accuracy": r["head_train_accuracy"]}


def probe(cfg: Config, ckpt_file: Optional[Path], label: str, a: argparse.Namespace, preset: dict) -> dict:
    p = preset["probe"]
    e = ev.EvalConfig(label=label, seeds=a.seeds, epochs=a.probe_epochs or p["epochs"], device=a.device,
                      train_samples=a.train_samples or p["train_samples"],
                      val_samples=a.val_samples or p["val_samples"])
    ev.validate_eval(e)
    r = ev.evaluate(cfg, e, ckpt_file)
    return {"mean": r["accuracy"], "std": r["accuracy_std"], "accuracies": r["accuracies"],
            "train_accuracy": r["history"][-1]["train_accuracy"], "seconds": r["seconds"]}


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


def _cell(row: dict, label: str) -> str:
    c = row.get(label)
    return "-" if c is None else f"{c['mean']:.3f} +- {c['std']:.3f}"


def markdown(result: dict) -> str:
    s = result["summary"]
    head = " | ".join(f"{label} | gap closed" for label in LABELS)
    lines = [f"Frozen attentive probe, top-1 on {result['val_samples']} validation clips, mean +- std over "
             f"{result['seeds']} probe seeds; training {result['minutes']:g} min per method and label (preset "
             f"{result['preset']}, {result['device']}). Gap closed = (method - random) / (supervised - random); "
             "n/c: the label does not count.", "",
             f"| encoder | steps | {head} |", "|---|---|" + "---|---|" * len(LABELS)]
    for name, row in result["encoders"].items():
        cells = []
        for label in LABELS:
            g = s[label]["gap_closed"].get(name)
            # A gap closed on a label that does not count divides by a ceiling - floor too small to mean anything.
            shown = "-" if g is None else (f"{g:+.2f}" if s[label]["counted"] else "n/c")
            cells += [_cell(row, label), shown]
        steps = row.get("steps")
        if name == "supervised":
            steps = " / ".join(f"{row[label]['steps']}" for label in LABELS)
        lines.append(f"| {name} | {steps if steps is not None else '-'} | " + " | ".join(cells) + " |")
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
    per_step = {m: float("inf") for m in ROWS}
    for _ in range(CALIBRATION_ROUNDS):  # in turn, so all see the machine at about the same times
        for m in ROWS:
            per_step[m] = min(per_step[m], seconds_per_step(m, out, overrides, a, di))
    # All training first, back to back, so the time budgets see the machine at about the same time; then probes.
    runs = {name: pretrain(name, per_step[name], minutes, out, overrides, a, di) for name in PRETRAINED}
    supervised = {label: supervise(label, per_step["supervised"], minutes, out, overrides, di) for label in LABELS}
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
    result = {"preset": a.preset, "minutes": minutes, "overrides": overrides, "sigreg": a.sigreg, "seeds": a.seeds,
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
