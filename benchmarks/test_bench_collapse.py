"""What the collapse watch's effective ranks and the SIGReg term cost beside one training step.

Rows (group "collapse_cost"):
- train_step: one step of the real Trainer (the default objective), as test_bench_train_step.py's
  vjepa_fast_compiled row on a GPU (the recipe runs compiled: the smaller step, so the larger fraction) and its
  vjepa_fast row on the CPU;
- train_step_sigreg: the same with loss.sigreg=0.1 (the term inside the step: its forward, backward and all-reduce);
- rankme: the two effective ranks a logged step adds (target and context subsamples of 256 rows, collapse.py),
  synchronised;
- sigreg: the SIGReg term alone, forward and backward, on random rows of the step's context-token shape (the encoder's
  output dtype: bf16 on a GPU).

GPU: ViT-L/16 at 16 x 224 (configs/vitl16.yaml), bf16, batch 24 or the largest of 16, 8, 4 that fits. CPU: the tiny
model on a 4 x 6 x 6 grid, batch 4 (a smoke test of the same code; the claim is about the GPU).
extra_info of the later rows: `fraction_of_step`, the row's median over train_step's (when it ran earlier in the
session); rankme also `fraction_of_step_amortised`, over train.log_every steps (it runs on logged steps only).

    PYTHONPATH=. pytest benchmarks/test_bench_collapse.py --benchmark-only
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from vjepa_fast.models.collapse_stats import RANK_ROWS  # noqa: E402
from vjepa_fast.run.collapse import CollapseWatch  # noqa: E402
from vjepa_fast.models.sigreg import SIGReg  # noqa: E402
from forced_backends import forced_backends  # noqa: E402
from test_bench_train_step import CUDA, ROUNDS, _free, _runner  # noqa: E402

_MEDIANS: dict[str, float] = {}  # row -> median seconds, measured earlier in this session
_SHAPES: dict[str, object] = {}  # the step's shapes: context rows, width, log_every


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_row(benchmark, device, tmp_path, row: str, monkeypatch) -> None:
    if row == "train_step_sigreg":  # the runner's config, with the term on
        from test_bench_train_step import _config as base_config

        monkeypatch.setattr(sys.modules["test_bench_train_step"], "_config",
                            lambda v, b, d: _with_sigreg(base_config(v, b, d)))
    with forced_backends():  # the Trainer applies its config's backends, process-wide: not past this row
        runner = _runner("vjepa_fast_compiled" if CUDA else "vjepa_fast", device, tmp_path)
        try:
            benchmark.pedantic(runner.step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
            assert runner.skipped == 0
            batch = runner.batches[0]
            _SHAPES.update(ctx_rows=int(batch.masks.ctx_rows.numel()), width=runner.trainer.model.encoder.embed_dim,
                           log_every=runner.cfg.train.log_every, batch_size=runner.cfg.train.batch_size)
            _record(benchmark, row, runner.cfg.model.size)
        finally:
            del runner
            _free()


def _with_sigreg(cfg):
    cfg.loss.sigreg = 0.1
    return cfg


def _record(benchmark, row: str, model: str) -> None:
    info = {"row": row, "model": model, "batch_size": _SHAPES.get("batch_size"),
            "context_rows": _SHAPES.get("ctx_rows"), "width": _SHAPES.get("width"), "fraction_of_step": None}
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        median = stats.stats.median
        _MEDIANS[row] = median
        base = _MEDIANS.get("train_step")
        if base and row != "train_step":
            info["fraction_of_step"] = round(median / base, 5)
            if row == "rankme":
                info["fraction_of_step_amortised"] = round(median / base / _SHAPES["log_every"], 6)
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="collapse_cost")
@pytest.mark.parametrize("row", ["train_step", "train_step_sigreg"])
def test_bench_step(benchmark, device, tmp_path, row, monkeypatch):
    _step_row(benchmark, device, tmp_path, row, monkeypatch)


def _shapes(device) -> tuple[int, int]:
    """(context rows, width) of the step measured earlier, or of the recipe's typical batch when run alone."""
    if _SHAPES:
        return _SHAPES["ctx_rows"], _SHAPES["width"]
    return (24 * (584 + 294), 1024) if CUDA else (4 * 2 * 100, 96)


@pytest.mark.benchmark(group="collapse_cost")
def test_bench_rankme(benchmark, device):
    _, width = _shapes(device)
    gen = torch.Generator(device=device).manual_seed(0)
    rows = tuple(torch.randn(RANK_ROWS, width, generator=gen, device=device) for _ in range(2))

    def ranks():
        out = CollapseWatch.ranks(rows)
        _sync(device)
        return out

    got = benchmark.pedantic(ranks, rounds=ROUNDS * 3, iterations=1, warmup_rounds=2)
    assert got.shape == (2,) and bool((got > 1).all())  # random rows: far from one direction
    _record(benchmark, "rankme", "")


@pytest.mark.benchmark(group="collapse_cost")
def test_bench_sigreg(benchmark, device):
    ctx_rows, width = _shapes(device)
    dtype = torch.bfloat16 if CUDA else torch.float32
    x = torch.randn(ctx_rows, width, device=device, dtype=dtype, requires_grad=True)
    term = SIGReg().to(device)
    count = [0]

    def forward_backward():
        count[0] += 1
        value = term(x, count[0])
        value.backward()
        _sync(device)
        return value

    value = benchmark.pedantic(forward_backward, rounds=ROUNDS * 3, iterations=1, warmup_rounds=2)
    assert 0 <= value.item() < 0.05  # Gaussian rows
    _record(benchmark, "sigreg", "")
