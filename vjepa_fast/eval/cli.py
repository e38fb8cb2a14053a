"""Frozen evaluation: `python -m vjepa_fast.eval --checkpoint RUN_DIR [options] [--config FILE] [key=value ...]`.

The encoder of a training run (its EMA target encoder unless --use-online-encoder) is frozen, an attentive probe
(vjepa_fast/models/probe.py) is trained on its output tokens with AdamW and a cosine learning rate, and the top-1
accuracy on the validation split is printed and written as JSON. Without --checkpoint it evaluates a randomly
initialised encoder: the baseline a pretrained encoder has to beat. --checkpoint also takes any weights file or
directory of docs/weights.md (V-JEPA / V-JEPA 2 reference files, Hugging Face VJEPA2Model or VideoMAE directories,
exported safetensors); without a run config or --config the architecture is the file's. See docs/eval.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional

from vjepa_fast.weights import training_checkpoint as ckpt
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.eval.checkpoint import resolve_checkpoint
from vjepa_fast.eval.options import LABELS, EvalConfig, EvalError, validate_eval
from vjepa_fast.eval.pipeline import evaluate
from vjepa_fast.user_errors import exit_code
from vjepa_fast.weights import CheckpointFormatError

log = logging.getLogger("vjepa_fast.eval")


def parse_args(argv: Optional[list[str]]) -> tuple[Optional[str], list[str], EvalConfig]:
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="model/data config (default: the run's config.yaml when --checkpoint is a run)")
    p.add_argument("--checkpoint", help="run dir, training checkpoint or any weights file / dir (docs/weights.md)")
    p.add_argument("--use-online-encoder", action="store_true", help="probe the online encoder, not the EMA target")
    p.add_argument("--label", choices=LABELS, help="synthetic data: which label to predict (default appearance)")
    d = EvalConfig()
    for name, typ in (("epochs", int), ("lr", float), ("weight_decay", float), ("batch_size", int),
                      ("train_samples", int), ("val_samples", int), ("val_path", str), ("spatial_views", int),
                      ("num_classes", int), ("probe_depth", int), ("probe_heads", int), ("probe_qk_std", float),
                      ("seed", int),
                      ("device", str), ("out", str), ("labels_per_class", int), ("label_fraction", float),
                      ("seeds", int)):
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=getattr(d, name))
    p.add_argument("overrides", nargs="*", help="dotted model/data overrides, e.g. data.num_workers=0")
    a = p.parse_intermixed_args(argv)
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    ecfg = EvalConfig(**{k: v for k, v in vars(a).items() if k in fields})
    return a.config, a.overrides, ecfg


def write_result(result: dict, path: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_path, overrides, e = parse_args(argv)

    def body() -> int:
        validate_eval(e)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("eval runs in one process: launch it with --nproc_per_node=1 or python -m")
        ckpt_file, run_cfg = resolve_checkpoint(e.checkpoint) if e.checkpoint else (None, None)
        path = config_path
        if path is None and run_cfg is not None:
            path = str(run_cfg)
            log.info("model/data config from %s", run_cfg)
        # no run config and no --config: the weights file says what the model is (V-JEPA 2, Hugging Face, ...)
        arch_from_file = ckpt_file is not None and path is None
        result = evaluate(load_config(path, overrides), e, ckpt_file, arch_from_file)
        if e.out:
            write_result(result, e.out)
            log.info("wrote %s", e.out)
        stuck = sum(result["plateau_per_seed"])
        if e.seeds > 1:
            spread = f" +- {result['accuracy_std']:.4f} over {e.seeds} seeds, {stuck} on the probe's plateau"
        else:
            spread = " on the probe's plateau" if stuck else ""
        print(f"top-1 accuracy {result['accuracy']:.4f}{spread} ({result['label']}, {result['val_samples']} val "
              f"clips, {result['encoder']} encoder{' - random-init baseline' if result['baseline'] else ''})")
        return 0

    return exit_code(body, (CheckpointFormatError, ckpt.CheckpointError, FileNotFoundError, EvalError))
