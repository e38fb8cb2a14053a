"""The backend registry shared by the ops: automatic order, forcing, caching, clear errors, no environment reads
on any op's call path, and what a run chose."""
import os

import pytest
import torch

from vjepa_fast import ops
from vjepa_fast.ops import _backend


@pytest.fixture
def demo():
    """A registered demo op: `fast` runs on CUDA keys only, `interp` runs anywhere but is never picked on its own."""
    calls = []

    def check_fast(key):
        calls.append(key)
        return None if key[0] == "cuda" else "needs CUDA"

    op = _backend.Op("demo", _backend.Backend("fast", lambda: "fast", check_fast),
                     _backend.Backend("interp", lambda: "interp", auto=lambda key: "only when forced"),
                     _backend.Backend("slow", lambda: "slow"))
    yield op, calls
    del _backend._OPS["demo"]


def test_first_available_backend_is_chosen_once_per_key(demo):
    op, calls = demo
    assert op.choose(("cpu", torch.float32)).name == "slow"
    assert op.choose(("cuda", torch.float32)).name == "fast"
    assert op.choose(("cpu", torch.float32)).name == "slow"
    assert calls == [("cpu", torch.float32), ("cuda", torch.float32)]  # resolved once per key, then cached
    assert _backend.chosen_backends()["demo"] == {"('cpu', torch.float32)": "slow", "('cuda', torch.float32)": "fast"}


def test_forced_backend_and_its_errors(demo):
    op, _ = demo
    _backend.set_backend("demo", "interp")
    assert op.choose(("cuda",)).name == "interp"  # forcing skips the automatic-only condition
    _backend.set_backend("demo", "fast")
    with pytest.raises(RuntimeError, match=r"'fast' was forced but cannot run on \('cpu',\): needs CUDA"):
        op.choose(("cpu",))
    _backend.set_backend("demo", "auto")
    assert op.choose(("cpu",)).name == "slow"  # the cache was cleared by each change


def test_unknown_op_or_backend_names_list_the_valid_ones(demo):
    with pytest.raises(ValueError, match="unknown backend 'nope'; choose one of auto, fast, interp, slow"):
        _backend.set_backend("demo", "nope")
    with pytest.raises(ValueError, match="unknown op 'atention'; choose one of .*attention.*gather"):
        ops.set_backend("atention", "reference")
    assert set(_backend.op_names()) >= {"gather", "attention", "dense_attention", "l1_loss", "ema"}


def test_index_checks_always_on_cpu_and_in_debug_mode_on_gpu(monkeypatch):
    monkeypatch.setattr(_backend, "_CHECK_INDICES_ENV", False)
    monkeypatch.setattr(_backend, "_check_indices", False)
    cuda = torch.device("cuda", 0)
    assert _backend.check_indices_by_default(torch.device("cpu"))
    assert not _backend.check_indices_by_default(cuda)
    _backend.set_check_indices(True)
    assert _backend.check_indices_by_default(cuda)
    monkeypatch.setattr(_backend, "_CHECK_INDICES_ENV", True)  # VJEPA_FAST_CHECK_INDICES=1 at import
    _backend.set_check_indices(False)
    assert _backend.check_indices_by_default(cuda)


def test_index_checks_run_under_torch_compile():
    def f(src, rows):
        return ops.indexed_gather_add(src, rows, None, None, check_range=True, unique_rows=True) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    src = torch.randn(5, 3)
    torch.testing.assert_close(compiled(src, torch.tensor([0, 4])), src[[0, 4]] * 2)
    with pytest.raises(RuntimeError, match="src_rows index out of range"):
        compiled(src, torch.tensor([0, 7]))
    torch._dynamo.reset()


def test_configure_applies_a_config_section():
    from vjepa_fast.config import load_config

    cfg = load_config(None, ["backends.gather=reference", "backends.attention_backward=atomic"])
    try:
        ops.configure(cfg.backends)
        assert _backend._op("gather").forced == "reference" and _backend.attention_backward == "atomic"
    finally:
        ops.configure(load_config(None, []).backends)
    assert _backend._op("gather").forced is None and _backend.attention_backward == "split"


def _ops_calls():
    """One call of every public op (and backend) that runs on this machine, as the model makes them."""
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(12, 3, 2, 8, generator=g, requires_grad=True)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    src, pos = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(4, 8, generator=g)
    rows = torch.tensor([0, 5, 5, 2])
    z, h, w = torch.randn(4, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g), torch.rand(4)
    targets, sources = [torch.randn(3, 4, generator=g)], [torch.randn(3, 4, generator=g)]
    return [
        lambda: ops.varlen_attention(qkv, cu, 7).sum().backward(),
        lambda: ops.varlen_attention(qkv, torch.tensor([0, 6, 12], dtype=torch.int32), 6, 6).sum().backward(),
        lambda: ops.indexed_gather_add(src, rows, pos, rows % 4).sum().backward(),
        lambda: ops.indexed_gather_add(src, rows, pos, rows % 4, unique_rows=True).sum().backward(),
        lambda: ops.l1_target_loss(z, h, rows, w).backward(),
        lambda: ops.ema_update_(targets, sources, 0.99),
    ]


class _CountingEnviron(dict):
    reads = 0

    def __getitem__(self, key):
        type(self).reads += 1
        return super().__getitem__(key)

    def get(self, key, default=None):
        type(self).reads += 1
        return super().get(key, default)

    def __contains__(self, key):
        type(self).reads += 1
        return super().__contains__(key)


@pytest.mark.parametrize("forced", [None, "reference"])
def test_no_environment_reads_on_any_op_call_path(monkeypatch, forced):
    calls = _ops_calls()
    from conftest import set_backend_for_test

    if forced:
        for op in ("gather", "attention", "dense_attention", "l1_loss", "ema"):
            set_backend_for_test(op, forced, monkeypatch)
    for call in calls:  # first calls: lazy imports and backend resolution may look around
        call()
    counting = _CountingEnviron(os.environ)
    _CountingEnviron.reads = 0
    monkeypatch.setattr(os, "environ", counting)
    monkeypatch.setattr(os, "getenv", lambda key, default=None: counting.get(key, default))
    for call in calls:
        call()
    assert _CountingEnviron.reads == 0
