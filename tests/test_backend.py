"""The backend registry shared by the ops: automatic order, forcing, caching, clear errors, no environment reads
on any op's call path, and what a run chose."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vjepa_fast import ops
from vjepa_fast.ops import _backend


def _no_probe(device, dtype, head_dim):
    """The demo ops' probe: they have no public function to run."""


@pytest.fixture
def demo():
    """A registered demo op: `fast` runs on CUDA keys only, `interp` runs anywhere but is never picked on its own."""
    calls = []

    def check_fast(key):
        calls.append(key)
        return None if key[0] == "cuda" else "needs CUDA"

    op = _backend.Op("demo", _backend.Backend("fast", lambda: "fast", check_fast),
                     _backend.Backend("interp", lambda: "interp", auto=lambda key: "only when forced"),
                     _backend.Backend("slow", lambda: "slow"), probe=_no_probe)
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
    from conftest import force_backend

    if forced:
        for op in ("gather", "attention", "dense_attention", "l1_loss", "ema"):
            force_backend(op, forced, monkeypatch)
    for call in calls:  # first calls: lazy imports and backend resolution may look around
        call()
    counting = _CountingEnviron(os.environ)
    _CountingEnviron.reads = 0
    monkeypatch.setattr(os, "environ", counting)
    monkeypatch.setattr(os, "getenv", lambda key, default=None: counting.get(key, default))
    for call in calls:
        call()
    assert _CountingEnviron.reads == 0


# ---- environment defaults: what `auto` means (ops/_backend.py, docs/architecture.md "Backends") --------------------

def test_the_environment_backend_is_what_auto_means(monkeypatch):
    monkeypatch.setattr(_backend, "ENV", {"VJEPA_FAST_DEMO_BACKEND": "interp"})
    op = _backend.Op("demo", _backend.Backend("fast", lambda: "fast"), _backend.Backend("interp", lambda: "interp"),
                     probe=_no_probe)
    try:
        assert op.forced == "interp" and op.choose(("cpu",)).name == "interp"
        for auto in ("auto", None):  # a config's `auto` (ops.configure) keeps the environment's choice
            _backend.set_backend("demo", auto)
            assert _backend.forced_backend("demo") == "interp" and op.choose(("cpu",)).name == "interp"
        _backend.set_backend("demo", "fast")  # a config key naming a backend overrides it
        assert op.choose(("cpu",)).name == "fast"
        _backend.set_backend("demo", "auto")
        assert op.choose(("cpu",)).name == "interp"  # and back to the process default, not past it
    finally:
        del _backend._OPS["demo"]
    monkeypatch.setattr(_backend, "ENV", {"VJEPA_FAST_DEMO_BACKEND": "fats"})
    with pytest.raises(ValueError, match="VJEPA_FAST_DEMO_BACKEND: unknown backend 'fats'; choose one of auto, fast"):
        _backend.Op("demo", _backend.Backend("fast", lambda: "fast"), probe=_no_probe)
    assert "demo" not in _backend.op_names()


def _child(code: str, env: dict) -> dict:
    """Run `code` in a fresh interpreter (the environment is read once, at import) and return the JSON it prints."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_trainer_keeps_the_environment_backend_under_auto(subprocess_env, tmp_path):
    """VJEPA_FAST_<OP>_BACKEND survives the Trainer's ops.configure(cfg.backends) for every op the config leaves at
    `auto`, and a config key naming a backend wins over it; the step then runs on those backends."""
    env = dict(subprocess_env, VJEPA_FAST_GATHER_BACKEND="reference", VJEPA_FAST_EMA_BACKEND="reference")
    got = _child(f"""
        import json, torch
        from vjepa_fast import ops, train
        from vjepa_fast.config import load_config
        from vjepa_fast.ops import _backend
        from vjepa_fast.parallel import DistInfo
        cfg = load_config(None, ["run_dir={tmp_path / 'run'}", "backends.ema=foreach", "train.steps=1",
                                 "train.batch_size=2", "train.progress=false", "data.num_workers=0",
                                 "data.num_frames=4", "data.crop_size=32", "optim.warmup_steps=1"])
        train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu"))).run()
        forced = {{op: _backend.forced_backend(op) for op in ("gather", "ema", "l1_loss")}}
        print(json.dumps({{"forced": forced, "chosen": ops.chosen_backends()}}))
        """, env)
    assert got["forced"] == {"gather": "reference", "ema": "foreach", "l1_loss": None}
    assert set(got["chosen"]["gather"].values()) == {"reference"}
    assert set(got["chosen"]["ema"].values()) == {"foreach"}


def test_preflight_names_the_environment_variable_whose_backend_cannot_run(monkeypatch):
    from vjepa_fast.run import preflight
    from vjepa_fast.config import load_config

    gather = _backend._op("gather")
    for attr in ("default", "forced", "chosen"):
        monkeypatch.setattr(gather, attr, getattr(gather, attr))
    gather.default = "cuda"  # as VJEPA_FAST_GATHER_BACKEND=cuda at import
    cfg = load_config(None, [])
    ops.configure(cfg.backends)
    words = r"VJEPA_FAST_GATHER_BACKEND=cuda \(what backends.gather=auto means here\) cannot run here .*; unset VJEPA"
    with pytest.raises(preflight.RunError, match=words):
        preflight.check_backends(cfg, torch.device("cpu"), torch.float32)


def test_every_op_carries_a_probe_that_runs_it(monkeypatch):
    """Preflight runs a forced backend through the probe its op registered with its backends (an op cannot be
    registered without one): each probe must call its op, i.e. ask the registry for a backend, on this machine."""
    assert set(_backend.op_names()) >= {"gather", "attention", "dense_attention", "l1_loss", "ema", "rope"}
    for op in _backend.op_names():
        registered = _backend._op(op)
        monkeypatch.setattr(registered, "chosen", {})
        _backend.run_probe(op, torch.device("cpu"), torch.float32, 64)
        assert registered.chosen, f"{op}: its probe never asked the registry for a backend"


# The kernel module of each op's `triton` backend: a new op with one must be listed (the test below fails until it is).
TRITON_KERNELS = {"attention": "vjepa_fast.ops.triton_flash_varlen",
                  "dense_attention": "vjepa_fast.ops.triton_flash_varlen",
                  "l1_loss": "vjepa_fast.ops.triton_l1_loss", "rope": "vjepa_fast.ops.triton_rope"}


@pytest.mark.parametrize("op", [op for op in _backend.op_names() if "triton" in _backend.backend_names(op)])
def test_a_triton_backend_forced_by_the_test_helper_launches_its_kernels(op, monkeypatch):
    """Issue 23's bug: a test switched the rope backend through an environment variable, which is read once at
    import, so it compared the torch path with itself and the Triton kernel never ran. A Triton backend forced
    through conftest.force_backend must launch its op's own kernels when the op runs (its probe), and on the CPU,
    where the automatic choice never interprets, only the forcing may bring them in."""
    from conftest import force_backend
    from kernel_hooks import launched_kernels

    pytest.importorskip("triton")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        force_backend(op, "auto", monkeypatch)
        with launched_kernels() as launched:
            _backend.run_probe(op, device, torch.float32, 64)
        assert launched == [], f"{op}: the automatic choice launched {launched} on the CPU"
    force_backend(op, "triton", monkeypatch)
    with launched_kernels() as launched:
        _backend.run_probe(op, device, torch.float32, 64)
    assert op in TRITON_KERNELS, f"{op} has a triton backend: add its kernel module to TRITON_KERNELS"
    assert launched and {k.rpartition(".")[0] for k in launched} == {TRITON_KERNELS[op]}, (op, launched)
    assert TRITON_KERNELS[op] in sys.modules


def test_every_forced_triton_backend_imports_its_kernels(subprocess_env):
    """In a fresh process no Triton kernel module is imported; forcing `triton` for every op that has it and running
    each once (the preflight probes) must choose it and import every kernel file of the package. An op whose forcing
    does not reach its kernel (a test comparing a path with itself) fails here."""
    pytest.importorskip("triton")
    got = _child("""
        import json, sys, torch
        from vjepa_fast import ops
        from vjepa_fast.run import preflight
        from vjepa_fast.config import load_config
        from vjepa_fast.ops import _backend
        def kernels():
            return sorted(m for m in sys.modules if m.startswith("vjepa_fast.ops.triton_"))
        triton_ops = [op for op in _backend.op_names() if "triton" in _backend.backend_names(op)]
        before = kernels()
        cfg = load_config(None, [f"backends.{op}=triton" for op in triton_ops])
        ops.configure(cfg.backends)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        preflight.check_backends(cfg, device, torch.float32)
        print(json.dumps({"ops": triton_ops, "before": before, "after": kernels(), "chosen": ops.chosen_backends()}))
        """, subprocess_env)
    files = sorted(f"vjepa_fast.ops.{p.stem}" for p in (Path(_backend.__file__).parent).glob("triton_*.py"))
    assert {"attention", "dense_attention", "l1_loss", "rope"} <= set(got["ops"])
    assert got["before"] == [] and got["after"] == files
    for op in got["ops"]:
        assert set(got["chosen"].get(op, {}).values()) == {"triton"}, (op, got["chosen"].get(op))
