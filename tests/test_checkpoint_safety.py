"""Checkpoint files that would run code, damaged shards and unreadable files, in one process, through every entry point
that opens a checkpoint: resume, eval --checkpoint, load_encoder, export and train.init_from."""
import errno
import io
import logging
import os
import pickle
import pickletools
import shutil

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from vjepa_fast.run import checkpoint as ckpt
from vjepa_fast import export, train
from vjepa_fast.weights import dcp_safe, shard_sums
from vjepa_fast import eval as ev
from vjepa_fast.run.rundir import RunDirError
from vjepa_fast.weights import CheckpointFormatError, load_encoder

from test_checkpoint_faults import assert_same_state, finished  # noqa: F401 (finished: a fixture)
from test_train import SMALL, make_trainer


class Marker:
    """Unpickled without restriction, this creates the file `path`: proof that code from the file ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def craft_metadata(step_dir, marker):
    """Replace a checkpoint's index by the same index with a Marker inside it (planner_data is DCP's own free slot)."""
    metadata = FileSystemReader(step_dir).read_metadata()
    metadata.planner_data = {"model.x": Marker(marker)}
    (step_dir / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.fixture
def crafted(finished, tmp_path):
    """A copy of the finished run whose newest checkpoint's index would create `marker` if unpickled plainly."""
    d, _ = finished
    run = tmp_path / "run"
    shutil.copytree(d, run)
    marker = tmp_path / "marker"
    craft_metadata(ckpt.step_path(run, 8), marker)
    return run, marker


def one_error_line(text):
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# ---- what the restricted unpickler admits --------------------------------------------------------------------------
def test_the_index_of_a_real_checkpoint_reads_as_dcp_reads_it(finished):
    d, _ = finished
    path = ckpt.step_path(d, 8)
    ours, theirs = dcp_safe.read_metadata(path / ".metadata"), FileSystemReader(path).read_metadata()
    assert ours.state_dict_metadata == theirs.state_dict_metadata and ours.storage_data == theirs.storage_data
    assert ours.planner_data == theirs.planner_data
    # every global the file names is one the allowlist names, and none beyond DCP's own classes is needed
    data = (path / ".metadata").read_bytes()
    strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    assert "torch.distributed.checkpoint.metadata" in strings and "os" not in strings


@pytest.mark.parametrize("payload, named", [
    ((os.system, ("true",)), "system"),
    ((eval, ("1",)), "builtins.eval"),
    ((shutil.rmtree, ("/nonexistent",)), "shutil.rmtree"),
    ((torch.save, ({}, "/nonexistent")), "torch"),
    ((torch.load, ("/nonexistent",)), "torch"),
])
def test_the_index_unpickler_refuses_every_other_global(tmp_path, payload, named):
    class Evil:
        def __reduce__(self):
            return payload

    path = tmp_path / ".metadata"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(dcp_safe.UnsafeMetadata, match=named):
        dcp_safe.read_metadata(path)


@pytest.mark.parametrize("module, name", [("torch", "onnx"), ("torch", "save"), ("torch", "Size.__new__"),
                                          ("pathlib", "PosixPath.touch"), ("torch.serialization", "load")])
def test_the_index_unpickler_resolves_no_other_name(tmp_path, module, name):
    """Names next to admitted ones (a torch submodule its import would load, a method of an admitted class)."""
    def text(s):
        return b"\x8c" + bytes([len(s)]) + s.encode()

    path = tmp_path / ".metadata"
    path.write_bytes(b"\x80\x04" + text(module) + text(name) + b"\x93.")  # protocol 4: STACK_GLOBAL, STOP
    with pytest.raises(dcp_safe.UnsafeMetadata, match=f"{module}.{name}"):
        dcp_safe.read_metadata(path)


def test_a_marker_index_runs_code_when_unpickled_plainly_and_not_here(tmp_path, finished):
    d, _ = finished
    step = tmp_path / "step_00000008"
    shutil.copytree(ckpt.step_path(d, 8), step)
    marker = tmp_path / "marker"
    craft_metadata(step, marker)
    with pytest.raises(dcp_safe.UnsafeMetadata, match="io.open"):
        dcp_safe.read_metadata(step / ".metadata")
    assert not marker.exists()
    pickle.loads((step / ".metadata").read_bytes())  # the test's own check that the file is a real threat
    assert marker.exists()


def test_shard_paths_outside_the_checkpoint_are_refused(tmp_path, finished):
    d, _ = finished
    step = tmp_path / "step_00000008"
    shutil.copytree(ckpt.step_path(d, 8), step)
    metadata = FileSystemReader(step).read_metadata()
    index = next(iter(metadata.storage_data))
    metadata.storage_data[index].relative_path = "../../etc/passwd"
    (step / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(dcp_safe.UnsafeMetadata, match="outside its directory"):
        dcp_safe.read_metadata(step / ".metadata")


def test_a_shard_value_that_would_run_code_is_refused(tmp_path):
    """The non-tensor values in shards (optimizer settings) load weights-only too (DCP's own planner does not)."""
    step = tmp_path / "checkpoints" / "step_00000001"
    marker = tmp_path / "marker"
    dcp.save({"model": {"encoder.w": torch.randn(3)}, "optim": {"lr": Marker(marker)}},
             storage_writer=FileSystemWriter(step), no_dist=True)
    torch.save({"step": 1}, step / "loop.pt")
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_payload(step)
    assert "\n" not in str(e.value) and "io.open" in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


# ---- a crafted index through every entry point ---------------------------------------------------------------------
def test_resume_falls_back_over_a_crafted_index_without_running_it(finished, crafted, caplog):
    _, final = finished
    run, marker = crafted
    with caplog.at_level(logging.WARNING, logger="vjepa_fast.run.rundir"):
        make_trainer(run).run()
    assert not marker.exists()
    warned = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0], warned
    assert str(ckpt.step_path(run, 8) / ".metadata") in warned[0] and "io.open" in warned[0]
    assert_same_state(final, ckpt.load_payload(ckpt.step_path(run, 8)))  # steps 4..7 redone from step 4


def test_resume_over_only_crafted_indexes_is_one_line(crafted):
    run, marker = crafted
    craft_metadata(ckpt.step_path(run, 4), marker)
    with pytest.raises(RunDirError, match="none of the 2 checkpoints") as e:
        make_trainer(run).run()
    assert "\n" not in str(e.value) and "io.open" in str(e.value) and not marker.exists()


def test_eval_checkpoint_with_a_crafted_index_is_one_line(crafted, capsys):
    run, marker = crafted
    assert ev.main(["--checkpoint", str(run), "data.num_workers=0"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert ".metadata refused" in line and "io.open" in line and not marker.exists()


def test_load_encoder_with_a_crafted_index_is_one_line(crafted):
    run, marker = crafted
    with pytest.raises(CheckpointFormatError) as e:
        load_encoder(run)
    assert "\n" not in str(e.value) and ".metadata refused" in str(e.value) and not marker.exists()


def test_export_with_a_crafted_index_is_one_line(crafted, tmp_path, capsys):
    run, marker = crafted
    out = tmp_path / "out.safetensors"
    assert export.main([str(run), "--format", "safetensors", "--out", str(out)]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert ".metadata refused" in line and not marker.exists() and not out.exists()


def test_init_from_a_crafted_index_is_one_line(crafted, tmp_path, capsys):
    run, marker = crafted
    argv = [f"run_dir={tmp_path / 'new'}", *SMALL, f"train.init_from={ckpt.step_path(run, 8)}"]
    assert train.main(argv) == 1
    line = one_error_line(capsys.readouterr().err)
    assert ".metadata refused" in line and "io.open" in line and not marker.exists()


# ---- damaged shards, one process -----------------------------------------------------------------------------------
def damage_shard(path, how, seed=0):
    """Same-size random bytes, or the file cut to half its size."""
    size = path.stat().st_size
    if how == "random":
        path.write_bytes(torch.randint(0, 256, (size,), dtype=torch.uint8,
                                       generator=torch.Generator().manual_seed(seed)).numpy().tobytes())
    else:
        path.write_bytes(path.read_bytes()[:size // 2])


def test_save_records_a_checksum_of_every_file_it_reads(finished):
    d, _ = finished
    step = ckpt.step_path(d, 8)
    recorded = __import__("json").loads((step / shard_sums.SUMS_FILE).read_text())["files"]
    assert sorted(recorded) == [".metadata", "__0_0.distcp", "loop.pt"]
    for name, want in recorded.items():
        assert shard_sums.file_sum(step / name) == want
    assert not list(step.glob("*" + shard_sums.PARTIAL_SUFFIX))  # the per-rank sums were merged


def test_a_checkpoint_of_earlier_versions_without_checksums_still_loads(finished, tmp_path):
    d, final = finished
    step = tmp_path / "step_00000008"
    shutil.copytree(ckpt.step_path(d, 8), step)
    (step / shard_sums.SUMS_FILE).unlink()
    assert ckpt.unreadable_reason(step) is None
    assert_same_state(final, ckpt.load_payload(step))


@pytest.mark.parametrize("offset", [0, "middle", -1])
def test_one_changed_byte_anywhere_is_named_with_file_and_rank(finished, tmp_path, offset):
    d, _ = finished
    step = tmp_path / "step_00000008"
    shutil.copytree(ckpt.step_path(d, 8), step)
    shard = step / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    i = len(data) // 2 if offset == "middle" else offset
    data[i] ^= 0x01
    shard.write_bytes(bytes(data))
    why = ckpt.unreadable_reason(step)
    assert "shard __0_0.distcp (written by rank 0) is damaged (crc32" in why and "\n" not in why


@pytest.mark.parametrize("how", ["random", "half"])
def test_eval_and_load_encoder_name_a_damaged_shard_in_one_line(finished, tmp_path, capsys, how):
    d, _ = finished
    run = tmp_path / "run"
    shutil.copytree(d, run)
    damage_shard(ckpt.step_path(run, 8) / "__0_0.distcp", how)
    assert ev.main(["--checkpoint", str(run), "data.num_workers=0"]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "step_00000008" in line and "shard __0_0.distcp (written by rank 0)" in line, line
    with pytest.raises(CheckpointFormatError) as e:
        load_encoder(run)
    assert "\n" not in str(e.value) and "shard __0_0.distcp (written by rank 0)" in str(e.value)


def test_a_read_error_does_not_retire_the_checkpoint(finished, tmp_path, monkeypatch):
    """An I/O error is not damage: the start stops with one line and the checkpoint keeps its name."""
    d, _ = finished
    run = tmp_path / "run"
    shutil.copytree(d, run)
    real = shard_sums.file_sum

    def failing(path):
        if path.name == "__0_0.distcp" and path.parent.name == "step_00000008":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real(path)

    monkeypatch.setattr(shard_sums, "file_sum", failing)
    before = sorted(os.listdir(run / "checkpoints"))
    with pytest.raises(RunDirError) as e:
        make_trainer(run).run()
    msg = str(e.value)
    assert "\n" not in msg and "rank 0" in msg and "input/output error" in msg and "__0_0.distcp" in msg, msg
    assert sorted(os.listdir(run / "checkpoints")) == before


# ---- files that are not checkpoints ---------------------------------------------------------------------------------
def test_a_file_with_objects_is_refused_without_advice_to_load_it_unsafely(tmp_path):
    marker = tmp_path / "marker"
    for name, payload in (("module.pt", {"model": torch.nn.Linear(2, 2)}), ("marker.pt", {"x": Marker(marker)})):
        path = tmp_path / name
        buf = io.BytesIO()
        torch.save(payload, buf)
        path.write_bytes(buf.getvalue())
        with pytest.raises(CheckpointFormatError) as e:
            load_encoder(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg, msg
        for advice in ("weights_only", "trust", "add_safe_globals", "safe_globals"):
            assert advice not in msg, msg
    assert not marker.exists()
