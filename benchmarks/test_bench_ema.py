"""Fused EMA update of the target encoder (kernel 2): the fast backend vs torch._foreach_lerp_ vs the Python loop.

Rows (group "ema", parametrized by source dtype and variant), each one update target <- m * target + (1 - m) * source
over every parameter tensor of an encoder, m = 0.998 (the recipe's starting momentum):
- `cuda` on a GPU / `cpu` on the CPU: `vjepa_fast.ops.ema_update_` with that backend forced (one multi-tensor
  launch per source dtype / one parallel loop over chunks), called through the public function;
- `cuda-apply` / `cpu-apply`: the same with the device-side flag `apply` (true), as the training step calls it;
- `foreach`: the best PyTorch-native alternative, `torch._foreach_lerp_(targets, sources, 1 - m)` written as a user
  would, with bf16 sources first cast to fp32 (lerp needs one dtype; the cast is part of its cost);
- `reference` (the baseline): `ema_update_reference`, the original code's Python loop of mul_ / add_.

GPU: the parameters of the ViT-L/16 encoder (292 tensors, 304M values), built on the card in fp32; CPU: the tiny
encoder's (52 tensors, 0.6M values). Sources are the parameters themselves (fp32) or a bf16 copy of them; targets are
fp32 copies perturbed by noise, as a target encoder that has drifted from the online one (a plain copy would make
the correctness check compare x with x).

Bytes counted: every target read and written once, every source read once (4 + source size + 4 bytes a value), the
same for every variant. GB/s is that over the median time per call; `roofline` divides it by this machine's measured
copy bandwidth (the session `roofline` fixture, benchmarks/roofline.py). The ViT-L lists (3-3.6 GB) are far larger
than any cache, so no buffer rotation is needed.

Timing: each timed round runs CALLS updates back to back and synchronises after the last (pytest-benchmark divides
by the iterations, so the median is per update). Back to back, a variant whose CPU side (Python loop, ~600 launches
for the reference) is slower than its GPU side is timed by its CPU side, as it would be in a training step.

    PYTHONPATH=. pytest benchmarks/test_bench_ema.py --benchmark-only
"""
from __future__ import annotations

import itertools

import pytest
import torch

from vjepa_fast.models.vit import VisionTransformer  # noqa: E402
from vjepa_fast.ops import ema as E  # noqa: E402
from forced_backends import forced_backends  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
FAST = "cuda" if CUDA else "cpu"  # the op's fast backend for this device
FLAGGED = f"{FAST}-apply"
VARIANTS = [FAST, FLAGGED, "foreach", "reference"]
SOURCES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MOMENTUM = 0.998
if CUDA:
    MODEL, CALLS, WARMUP, ROUNDS = "large", 5, 2, 10
else:
    MODEL, CALLS, WARMUP, ROUNDS = "tiny", 3, 2, 10


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def params():
    """{'fp32': fp32 sources, 'bf16': bf16 sources, 'targets': fp32 targets}, lists over the encoder's parameters."""
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialise on the card: a ViT-L's 304M values are slow to draw on the CPU
        model = VisionTransformer(MODEL)
    sources = [p.detach() for p in model.parameters()]
    del model  # the detached tensors keep the storage
    out = {
        "fp32": sources,
        "bf16": [s.to(torch.bfloat16) for s in sources],
        "targets": [s + 0.01 * torch.randn_like(s) for s in sources],
    }
    yield out
    out.clear()
    if CUDA:
        torch.cuda.empty_cache()


def _update(variant: str):
    """A callable (targets, sources) -> None doing one EMA update the variant's way."""
    if variant == "foreach":
        def foreach(targets, sources):
            srcs = [s if s.dtype == t.dtype else s.to(t.dtype) for t, s in zip(targets, sources)]
            torch._foreach_lerp_(targets, srcs, 1.0 - MOMENTUM)  # t + w (s - t) = m t + (1 - m) s, w = 1 - m
        return foreach
    if variant == "reference":
        return lambda targets, sources: E.ema_update_reference(targets, sources, MOMENTUM)
    if variant == FLAGGED:
        apply = torch.tensor(True, device=DEVICE)
        return lambda targets, sources: E.ema_update_(targets, sources, MOMENTUM, apply=apply)
    return lambda targets, sources: E.ema_update_(targets, sources, MOMENTUM)  # backend forced by the test


def _timed_target(call, calls: int):
    """A benchmark target: call() each time; synchronises after every `calls`-th call (a round's last)."""
    counter = itertools.count()

    def target():
        i = next(counter)
        call()
        if i % calls == calls - 1:
            _sync()  # never time an unsynchronised launch: each round ends here

    return target


@pytest.mark.benchmark(group="ema")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("source", list(SOURCES))
def test_bench_ema_update(benchmark, roofline, params, source, variant):
    targets, sources = params["targets"], params[source]
    update = _update(variant)
    forced = variant in (FAST, FLAGGED)
    with forced_backends({E.OP: FAST} if forced else None):
        backend = E.EMA.choose((DEVICE, E._check(targets, sources, MOMENTUM))).name if forced else variant

        # One checked update on copies first: a fast wrong answer is no result. The tolerance allows for the
        # different roundings of lerp, FMA and separate multiply-add (a few ulp of the fp32 values).
        got = [t.clone() for t in targets]
        update(got, sources)
        expected = [t.clone() for t in targets]
        E.ema_update_reference(expected, sources, MOMENTUM)
        for i, (g, e) in enumerate(zip(got, expected)):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7, msg=lambda m, i=i: f"tensor {i}: {m}")
        del got, expected

        _sync()
        benchmark.pedantic(_timed_target(lambda: update(targets, sources), CALLS), warmup_rounds=WARMUP,
                           rounds=ROUNDS, iterations=CALLS)
        _sync()  # --benchmark-disable runs one call and no round end

    values = sum(t.numel() for t in targets)
    info = dict(
        variant=variant, source_dtype=source, backend=backend, model=MODEL,
        device=torch.cuda.get_device_name() if CUDA else "cpu", tensors=len(targets), values=values,
        momentum=MOMENTUM, calls_per_round=CALLS)
    if variant == "reference":
        info["baseline"] = True
    benchmark.extra_info.update(info)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed; nothing to report
        return
    nbytes = sum(t.numel() * (2 * t.element_size() + s.element_size()) for t, s in zip(targets, sources))
    gbps = nbytes / benchmark.stats.stats.median / 1e9
    copy = roofline["copy_gb_per_s"]
    benchmark.extra_info.update(bytes=nbytes, gb_per_s=round(gbps, 2), copy_gb_per_s=copy,
                                roofline=round(gbps / copy, 3) if copy else None)
