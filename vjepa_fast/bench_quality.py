"""Representation quality on the synthetic videos: `python -m vjepa_fast.bench_quality [--minutes M] [--out DIR]`.

Pretrains V-JEPA and the VideoMAE baseline (the same encoder) for the same wall-clock budget each, then trains frozen
attentive probes on both encoders, and on a randomly initialised encoder of the same shape, for the motion and the
appearance labels, with several probe seeds; writes DIR/quality.json, DIR/quality.md (the table) and DIR/quality.png
(a bar chart, when matplotlib is installed). See docs/eval.md "Representation quality benchmark".

The budget is met by timing a few calibration steps of each method first and then running as many steps as fit in
the budget (the schedules then span the run, as in any run), so each method gets the same time, not the same steps.
The methods are calibrated in turn, twice, and each keeps its faster estimate, so a load spike on a shared machine
during one calibration does not cut that method's steps.
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
from vjepa_fast.config import METHODS, Config, ConfigError, load_config
from vjepa_fast.parallel import DistInfo

log = logging.getLogger("vjepa_fast.bench_quality")

# Overrides on top of the built-in default (the quick start) per preset; the GPU preset is wider, longer, larger.
PRESETS = {
    "cpu": dict(minutes=5.0, overrides=[], probe=dict(train_samples=1000, val_samples=500, epochs=None)),  # eval.DEFAULT_EPOCHS
    "gpu": dict(minutes=10.0, overrides=["model.size=small", "data.num_frames=16", "data.crop_size=128",
                                         "train.batch_size=32", "data.num_workers=8", "optim.warmup_steps=200"],
                probe=dict(train_samples=4000, val_samples=1000, epochs=20)),
}
LABELS = ("motion", "appearance")
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
    if a.minutes is not None and not 0 < a.minutes < float("inf"):
        raise ConfigError(f"--minutes: must be positive, got {a.minutes}")
    return a


def method_config(method: str, run_dir: Path, overrides: list[str], steps: int, extra: tuple = ()) -> Config:
    return load_config(None, [*overrides, f"method={method}", f"run_dir={run_dir}", f"train.steps={steps}",
                              "train.progress=false", "train.resume=restart", f"train.ckpt_every={steps}", *extra])


def seconds_per_step(method: str, out: Path, overrides: list[str], di: DistInfo) -> float:
    """The median wall time of a step (data wait included) in a short throw-away run logged every step."""
    from vjepa_fast.train import Trainer

    cfg = method_config(method, out / f"calibrate_{method}", overrides, CALIBRATION_STEPS, ("train.log_every=1",))
    rows = Trainer(cfg, di).run()[CALIBRATION_WARMUP:]
    return statistics.median(cfg.train.batch_size / r["clips_per_s"] for r in rows)


def pretrain(method: str, per_step: float, minutes: float, out: Path, overrides: list[str], di: DistInfo) -> dict:
    from vjepa_fast.train import Trainer

    steps = max(1, int(minutes * 60 / per_step))
    run_dir = out / method
    log.info("%s: %.3f s/step calibrated -> %d steps in %.1f minutes", method, per_step, steps, minutes)
    cfg = method_config(method, run_dir, overrides, steps)
    t0 = time.perf_counter()
    rows = Trainer(cfg, di).run()
    wall = time.perf_counter() - t0
    return {"method": method, "steps": steps, "seconds": wall, "seconds_per_step_calibrated": per_step,
            "first_loss": rows[0]["loss"] if rows else None, "last_loss": rows[-1]["loss"] if rows else None,
            "run_dir": str(run_dir)}


def probe(cfg: Config, ckpt_file: Optional[Path], label: str, a: argparse.Namespace, preset: dict) -> dict:
    p = preset["probe"]
    e = ev.EvalConfig(label=label, seeds=a.seeds, epochs=a.probe_epochs or p["epochs"], device=a.device,
                      train_samples=a.train_samples or p["train_samples"],
                      val_samples=a.val_samples or p["val_samples"])
    ev.validate_eval(e)
    r = ev.evaluate(cfg, e, ckpt_file)
    return {"mean": r["accuracy"], "std": r["accuracy_std"], "accuracies": r["accuracies"],
            "train_accuracy": r["history"][-1]["train_accuracy"], "seconds": r["seconds"]}


def markdown(result: dict) -> str:
    lines = [f"Frozen attentive probe, top-1 on {result['val_samples']} validation clips, mean +- std over "
             f"{result['seeds']} probe seeds; pretraining {result['minutes']:g} min per method "
             f"(preset {result['preset']}, {result['device']}).", "",
             "| encoder | steps | " + " | ".join(LABELS) + " |", "|---|---|" + "---|" * len(LABELS)]
    for name, row in result["encoders"].items():
        cells = [f"{row[label]['mean']:.3f} +- {row[label]['std']:.3f}" for label in LABELS]
        lines.append(f"| {name} | {row.get('steps', '-')} | " + " | ".join(cells) + " |")
    lines += ["", f"Chance: motion {1 / 9:.3f} (9 classes), appearance {1 / 18:.3f} (18 classes). "
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
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        row = result["encoders"][name]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(LABELS))]
        ax.bar(xs, [row[label]["mean"] for label in LABELS], width, yerr=[row[label]["std"] for label in LABELS],
               capsize=3, label=name)
    for j, chance in enumerate((1 / 9, 1 / 18)):
        ax.hlines(chance, j - 0.4, j + 0.4, colors="grey", linestyles="dotted")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probe top-1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(a: argparse.Namespace) -> dict:
    preset = PRESETS[a.preset]
    minutes = a.minutes or preset["minutes"]
    overrides = [*preset["overrides"], *a.overrides]
    load_config(None, overrides)  # bad overrides fail here, before any training
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    di = DistInfo(0, 1, 0, device)
    t0 = time.perf_counter()
    encoders: dict[str, dict] = {}
    per_step = {m: float("inf") for m in METHODS}
    for _ in range(CALIBRATION_ROUNDS):  # in turn, so both see the machine at about the same times
        for m in METHODS:
            per_step[m] = min(per_step[m], seconds_per_step(m, out, overrides, di))
    # Both pretrainings first, back to back, so their time budgets see the machine at about the same time; then probes.
    runs = {method: pretrain(method, per_step[method], minutes, out, overrides, di) for method in METHODS}
    for method, run_info in runs.items():
        cfg = load_config(str(Path(run_info["run_dir"]) / "config.yaml"))
        ckpt_file, _ = ev.resolve_checkpoint(run_info["run_dir"])
        encoders[method] = {**run_info, **{label: probe(cfg, ckpt_file, label, a, preset) for label in LABELS}}
    random_cfg = load_config(None, overrides)
    encoders["random"] = {label: probe(random_cfg, None, label, a, preset) for label in LABELS}
    result = {"preset": a.preset, "minutes": minutes, "overrides": overrides, "seeds": a.seeds,
              "val_samples": a.val_samples or preset["probe"]["val_samples"], "device": str(device),
              "encoders": encoders, "seconds": time.perf_counter() - t0}
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "quality.md").write_text(markdown(result))
    bar_chart(result, out / "quality.png")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(parse_args(argv))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
