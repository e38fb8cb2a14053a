"""Frozen evaluation (`python -m vjepa_fast.eval`, docs/eval.md): an attentive probe trained on a frozen encoder.

Read in the order a run goes: `options.py` (EvalConfig, its checks and defaults) -> `checkpoint.py` (which weights,
the encoder loaded) -> `splits.py` (the train / validation splits; their datasets are data/probe_splits.py) ->
`features.py` (frozen features, cached when they fit) -> `probe.py` (probe training and accuracy) -> `pipeline.py`
(`evaluate`: one evaluation start to result) -> `cli.py` (the command line, the JSON file, exit codes).

The names below are what the other entry points (bench_quality, feature_stats) and the tests import from it.
"""
from vjepa_fast.eval.checkpoint import load_encoder_weights, resolve_checkpoint
from vjepa_fast.eval.cli import main, parse_args
from vjepa_fast.eval.features import freeze
from vjepa_fast.eval.options import EvalConfig, EvalError, validate_eval
from vjepa_fast.eval.pipeline import evaluate
from vjepa_fast.eval.probe import PLATEAU_MARGIN
from vjepa_fast.eval.splits import build_splits

__all__ = ["PLATEAU_MARGIN", "EvalConfig", "EvalError", "build_splits", "evaluate", "freeze", "load_encoder_weights",
           "main", "parse_args", "resolve_checkpoint", "validate_eval"]
