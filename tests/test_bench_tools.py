"""The benchmark tooling: summary rendering (tables, baselines, merging) and the CPU roofline."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(name, group, median, params=None, **extra):
    return {"group": group, "name": name, "fullname": f"benchmarks/x.py::{name}", "params": params or {},
            "stats": {"median": median, "rounds": 5}, "extra_info": extra}


def _doc(rows, **machine):
    return {"machine_info": {"card": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "torch": "2.11.0", **machine},
            "commit_info": {"id": "0123456789abcdef", "branch": "main", "dirty": False},
            "datetime": "2025-01-02T03:04:05", "benchmarks": rows}


def test_summary_tables_ratios_and_per_shape_baselines(tmp_path):
    rs = _load("render_summary")
    rows = [
        _row("step[fast]", "train_step", 0.5, {"v": "fast"}, clips_per_s=48.0, mfu=0.4123, batch_size=24),
        _row("step[ref]", "train_step", 0.4, {"v": "ref"}, clips_per_s=20.0, batch_size=8, baseline=True),
        _row("op[big-ref]", None, 2e-3, {"shape": "big", "v": "ref"}, gb_per_s=1000.0, baseline=True),
        _row("op[big-fast]", None, 1e-3, {"shape": "big", "v": "fast"}, gb_per_s=2000.0, roofline=0.8),
        _row("op[small-ref]", None, 4e-6, {"shape": "small", "v": "ref"}, baseline=True),
        _row("op[small-fast]", None, 1e-6, {"shape": "small", "v": "fast"}),
    ]
    text = rs.render(_doc(rows, roofline={"copy_gb_per_s": 2500.0, "matmul_tflops": 700.0,
                                          "matmul_shape": "8192^3 bf16"}))
    assert "NVIDIA H100 80GB HBM3" in text and "0123456789ab" in text and "700 TFLOP/s" in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    # clips/s ratio (batch sizes differ), not the median ratio
    assert "2.40x" in lines["`step[fast]`"] and "41.2%" in lines["`step[fast]`"]
    assert "baseline" in lines["`step[ref]`"]
    # each op row against the baseline of its own shape
    assert "2.00x" in lines["`op[big-fast]`"] and "80.0%" in lines["`op[big-fast]`"]
    assert "4.00x" in lines["`op[small-fast]`"]
    assert "## train_step\n" in text and "## op\n" in text


def test_cli_merges_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_doc([_row("one", "g", 1e-3)])))
    b.write_text(json.dumps(_doc([_row("two", "h", 2e-3)], roofline={"copy_gb_per_s": 10.0, "matmul_tflops": None})))
    out, merged = tmp_path / "s.md", tmp_path / "m.json"
    subprocess.run([sys.executable, str(BENCH / "render_summary.py"), str(a), str(b), "--out", str(out),
                    "--merged-json", str(merged)], check=True, timeout=60)
    text = out.read_text()
    assert "## g" in text and "## h" in text and "1 ms" in text and "2 ms" in text
    assert "copy 10 GB/s" in text
    assert [r["name"] for r in json.loads(merged.read_text())["benchmarks"]] == ["one", "two"]
    bad, empty = tmp_path / "bad.json", tmp_path / "empty.json"
    bad.write_text("{}")
    empty.write_text("")  # what pytest-benchmark leaves when it selected no benchmark
    proc = subprocess.run([sys.executable, str(BENCH / "render_summary.py"), str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "not pytest-benchmark JSON" in proc.stderr
    # one unreadable file among good ones is skipped with a note, not the end of the summary
    proc = subprocess.run([sys.executable, str(BENCH / "render_summary.py"), str(a), str(empty), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "skipped" in proc.stderr and "empty.json" in proc.stderr
    assert "## g" in out.read_text()


def test_cpu_roofline():
    rf = _load("roofline")
    gbps = rf.copy_bandwidth_gbps("cpu", nbytes=1 << 22, repeats=3)
    assert 0.1 < gbps < 10_000
    assert rf.matmul_tflops("cpu") is None
    with pytest.raises(ValueError, match="nbytes"):
        rf.copy_bandwidth_gbps("cpu", nbytes=-1)


def test_tune_attention_smoke(tmp_path):
    """The on-GPU block-size tuner, run end to end on the CPU under the Triton interpreter: it writes a table the
    kernels accept, with every trial checked against the reference."""
    out = tmp_path / "tuned.json"
    r = subprocess.run([sys.executable, str(BENCH / "tune_attention.py"), "--smoke", "--head-dims", "24",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    table = data["smoke"]
    assert set(table) == {"fwd", "dkdv", "dq"} and all(set(v) == {"32"} for v in table.values())
    trials = data["_trials"]
    assert trials and all(t.get("ok") for t in trials), trials
    assert all(max(t["rel_err"].values()) < 1e-2 for t in trials)
    assert any(t["config"].get("EXP2_POLY") for t in trials if t["kernel"] == "fwd")  # the switch's path ran


def test_forced_backends_hands_the_next_row_the_process_as_it_found_it():
    """benchmarks/forced_backends.py: the choices hold inside the block; after it, however it ends, every op's forced
    choice and the attention settings are back, including those changed inside (as a Trainer's ops.configure does)."""
    from vjepa_fast.ops import _backend

    forced_backends = _load("forced_backends").forced_backends
    ops = _backend.op_names()
    before = {op: _backend.forced_backend(op) for op in ops}
    settings = (_backend.attention_backward, _backend.attention_tuning)
    with pytest.raises(KeyError, match="row failed"):
        with forced_backends({"gather": "reference", "l1_loss": "reference"}):
            assert _backend.forced_backend("gather") == _backend.forced_backend("l1_loss") == "reference"
            _backend.set_backend("attention", "reference")  # made inside the block, by whatever the row runs
            _backend.set_attention_backward("atomic" if settings[0] == "split" else "split")
            _backend.set_attention_tuning("elsewhere.json")
            raise KeyError("row failed")
    assert {op: _backend.forced_backend(op) for op in ops} == before
    assert (_backend.attention_backward, _backend.attention_tuning) == settings
