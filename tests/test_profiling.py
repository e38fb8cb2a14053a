"""Profiling helpers: NVTX ranges only when enabled and balanced, Chrome traces with the phase labels."""
import json

import pytest
import torch

from vjepa_fast import profiling


@pytest.fixture
def calls(monkeypatch):
    log = []
    monkeypatch.setattr(profiling, "_push", lambda name: log.append(("push", name)) or True)
    monkeypatch.setattr(profiling, "_pop", lambda: log.append(("pop",)))
    yield log
    profiling.enable_nvtx(False)


def test_nvtx_range_is_a_no_op_until_enabled(calls):
    with profiling.nvtx_range("data"):
        pass
    assert calls == []
    profiling.enable_nvtx(True)
    assert profiling.nvtx_enabled()
    with profiling.nvtx_range("target"):
        with profiling.nvtx_range("context"):
            pass
    assert calls == [("push", "target"), ("push", "context"), ("pop",), ("pop",)]
    # an exception inside still closes the range
    with pytest.raises(KeyError):
        with profiling.nvtx_range("loss"):
            raise KeyError("boom")
    assert calls[-2:] == [("push", "loss"), ("pop",)]
    profiling.enable_nvtx(False)
    with profiling.nvtx_range("ema"):
        pass
    assert calls[-1] == ("pop",) and len(calls) == 6


def test_real_nvtx_calls_do_not_fail():
    profiling.enable_nvtx(True)
    try:
        with profiling.nvtx_range("optimizer"):
            torch.ones(3).sum()
    finally:
        profiling.enable_nvtx(False)


def test_bad_names_and_arguments():
    with pytest.raises(ValueError, match="name"):
        with profiling.nvtx_range(""):
            pass
    with pytest.raises(ValueError, match="steps"):
        profiling.maybe_profile("unused", True, steps=0)
    with pytest.raises(ValueError, match="wait"):
        profiling.maybe_profile("unused", True, wait=-1)


def test_disabled_profile_is_a_stand_in(tmp_path):
    with profiling.maybe_profile(tmp_path, False, steps=2) as prof:
        for _ in range(4):
            prof.step()
    assert not (tmp_path / "profile").exists()


def test_profile_writes_a_chrome_trace_with_phase_labels(tmp_path):
    w = torch.randn(32, 32, requires_grad=True)
    with profiling.maybe_profile(tmp_path, True, steps=2, wait=1, warmup=1) as prof:
        for _ in range(5):
            with profiling.nvtx_range("predictor"):
                loss = (torch.randn(8, 32) @ w).square().mean()
            with profiling.nvtx_range("backward"):
                loss.backward()
            prof.step()
    files = profiling.trace_files(tmp_path)
    assert len(files) == 1, files
    events = json.loads(files[0].read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"predictor", "backward"} <= names
    # labels only while recording: after the context closes nvtx_range is a no-op again
    assert not profiling._RECORDING
