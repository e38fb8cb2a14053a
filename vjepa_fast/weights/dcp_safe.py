"""Reading torch.distributed.checkpoint (DCP) files without running code from them.

DCP stores its index, `.metadata`, with plain `pickle.dump` and reads it back with plain `pickle.load`, and its
default planner loads the non-tensor values of a shard (optimizer hyper-parameters) with `torch.load(...,
weights_only=False)`: a crafted checkpoint directory would run code in every process that opens it. Here the index is
read by an unpickler that can only build the classes DCP itself writes there (its metadata dataclasses, torch.Size,
dtypes and layouts, a path), and every shard value through torch's weights-only unpickler. We keep DCP's own file
format rather than a metadata file of our own: existing checkpoints stay readable, DCP's tools still read ours, and
the list of admitted classes is short and fixed by DCP's format (`_ALLOWED` below).
"""
from __future__ import annotations

import io
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import filesystem as dcp_filesystem
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

# Every global a DCP `.metadata` refers to (checked against the files torch writes: tests/test_checkpoint_safety.py).
# Calling any of them only builds a value; none reads, writes or imports anything.
_ALLOWED = {
    **{("torch.distributed.checkpoint.metadata", n): getattr(dcp_metadata, n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")},
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): dcp_filesystem._StorageInfo,
    ("torch", "Size"): torch.Size,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,  # a name -> torch.strided etc.
    ("pathlib", "PosixPath"): pathlib.PurePosixPath,  # the checkpoint's own path, kept as text only
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib._local", "PosixPath"): pathlib.PurePosixPath,  # the same class, as Python 3.13 names it
}


# Looked up in the module's dict, never with getattr: torch's module __getattr__ would import submodules by name.
_DTYPES = {name: value for name, value in vars(torch).items() if isinstance(value, torch.dtype)}


class UnsafeMetadata(pickle.UnpicklingError):
    """A checkpoint index that refers to something other than DCP's metadata classes; nothing of it was run."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]  # pickled dtypes are globals: torch.float32, torch.bfloat16, ...
        raise UnsafeMetadata(f"it refers to {module}.{name}, which a checkpoint index never holds")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeMetadata("it holds a persistent reference, which a checkpoint index never holds")


def read_metadata(path: Path) -> dcp_metadata.Metadata:
    """A DCP `.metadata` file, unpickled with `_MetadataUnpickler` and checked for shape: shard paths are plain file
    names in the checkpoint's own directory. Raises UnsafeMetadata, OSError or a pickle/EOF error."""
    with open(path, "rb") as f:
        metadata = _MetadataUnpickler(f).load()
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.storage_data, dict):
        raise UnsafeMetadata(f"it holds a {type(metadata).__name__}, not DCP's Metadata")
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(info, dcp_filesystem._StorageInfo) or not isinstance(name, str) \
                or Path(name).name != name or name in ("", ".", ".."):
            raise UnsafeMetadata(f"it names a shard outside its directory ({name!r})")
    return metadata


class SafeReader(FileSystemReader):
    """FileSystemReader whose index (global or per-rank) is read by `read_metadata` above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        metadata = read_metadata(Path(self._get_metadata_path(kwargs.get("rank"))))
        if getattr(metadata, "storage_meta", None) is None:  # as FileSystemReader does
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyBytes:
    """DefaultLoadPlanner.load_bytes with torch.load(weights_only=True): a shard's non-tensor values are plain data."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, map_location="cpu", weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafeLoadPlanner(_WeightsOnlyBytes, DefaultLoadPlanner):
    """For dcp.load into a given state dict."""


class SafeKeysPlanner(_WeightsOnlyBytes, _EmptyStateDictLoadPlanner):
    """For loading (some top-level keys of) a checkpoint into an empty dict, in one process."""
