"""Backend choice shared by the ops: automatic order, forcing by call or environment, clear errors."""
import pytest
import torch

from vjepa_fast.ops import _backend


def backends():
    return {"fast": lambda d: None if d.type == "cuda" else "needs CUDA", "slow": _backend.always}


def test_first_available_backend_is_chosen():
    assert _backend.choose("demo", torch.device("cpu"), backends()) == "slow"
    assert _backend.choose("demo", torch.device("cuda"), backends()) == "fast"


def test_forced_backend_and_its_errors(monkeypatch):
    try:
        _backend.set_backend("demo", "slow")
        assert _backend.choose("demo", torch.device("cuda"), backends()) == "slow"
        _backend.set_backend("demo", "fast")
        with pytest.raises(RuntimeError, match="forced but cannot run on cpu: needs CUDA"):
            _backend.choose("demo", torch.device("cpu"), backends())
        _backend.set_backend("demo", "nope")
        with pytest.raises(ValueError, match="unknown backend 'nope'"):
            _backend.choose("demo", torch.device("cpu"), backends())
    finally:
        _backend.set_backend("demo", None)
    monkeypatch.setenv("VJEPA_FAST_DEMO_BACKEND", "fast")
    with pytest.raises(RuntimeError, match="forced"):
        _backend.choose("demo", torch.device("cpu"), backends())


def test_index_checks_always_on_cpu_and_in_debug_mode_on_gpu(monkeypatch):
    monkeypatch.delenv("VJEPA_FAST_CHECK_INDICES", raising=False)
    cuda = torch.device("cuda", 0)
    assert _backend.check_indices_by_default(torch.device("cpu"))
    assert not _backend.check_indices_by_default(cuda)
    try:
        _backend.set_check_indices(True)
        assert _backend.check_indices_by_default(cuda)
    finally:
        _backend.set_check_indices(False)
    monkeypatch.setenv("VJEPA_FAST_CHECK_INDICES", "1")
    assert _backend.check_indices_by_default(cuda)
