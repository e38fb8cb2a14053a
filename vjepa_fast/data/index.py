"""Where the videos are: index files, folder trees and comma-separated lists of sources, turned into (path, label).

Nothing here opens a video: checking millions of files at start-up would be slow on network storage, and a file that
is missing or broken is found (and skipped, and counted) when the loader first reads it.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class VideoEntry(NamedTuple):
    path: str
    label: int


def _parse_label(text: str, where: str) -> int:
    try:
        label = int(text)
    except ValueError:
        raise ValueError(f"{where}: label {text[:40]!r} is not an integer") from None
    if not -2**63 <= label < 2**63:  # labels become int64 tensors in the loader
        raise ValueError(f"{where}: label {text[:40]} does not fit a 64-bit integer")
    return label


def _resolve(path_text: str, folder: Path) -> str:
    p = Path(os.path.expanduser(path_text))
    return str(p if p.is_absolute() else folder / p)


def read_index_file(index_path: str | os.PathLike) -> list[VideoEntry]:
    """Parse an index file: one `path label` per line (space separated, the reference's format), or a CSV whose first
    line is the header `path,label`. Relative paths are resolved against the index file's folder. Blank lines are
    skipped. A malformed line is a ValueError naming the file and line number."""
    index_path = Path(index_path)
    try:
        text = index_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{index_path}: cannot read index file ({e})") from None
    folder = index_path.resolve().parent
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    if first.replace(" ", "").lower() == "path,label":
        return _read_csv(index_path, lines, folder)
    entries = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"{index_path}:{lineno}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'path label' (2 space-separated fields), got {len(fields)}: "
                             f"{line.strip()[:120]!r}")
        entries.append(VideoEntry(_resolve(fields[0], folder), _parse_label(fields[1], where)))
    return entries


def _read_csv(index_path: Path, lines: list[str], folder: Path) -> list[VideoEntry]:
    entries = []
    header_seen = False
    # csv.reader over the raw lines keeps line numbers exact (quoted fields with newlines are not supported).
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not header_seen:
            header_seen = True
            continue
        fields = next(csv.reader([line]))
        where = f"{index_path}:{lineno}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 'path,label' (2 comma-separated fields), got {len(fields)}: "
                             f"{line.strip()[:120]!r}")
        entries.append(VideoEntry(_resolve(fields[0].strip(), folder), _parse_label(fields[1].strip(), where)))
    return entries


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def scan_folder(root: str | os.PathLike) -> tuple[list[VideoEntry], list[str]]:
    """Videos under `root`. Label = index of the top-level sub-folder among the sub-folders that hold videos, in
    sorted order (videos deeper down take their top-level folder's label); videos directly in `root` get label 0.
    Hidden files and folders are ignored. Returns (entries sorted by path, class names)."""
    root = Path(root)
    entries = [VideoEntry(str(p), 0) for p in sorted(root.iterdir()) if _is_video(p)]
    classes = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        videos = sorted(p for p in sub.rglob("*") if _is_video(p)
                        and not any(part.startswith(".") for part in p.relative_to(sub).parts))
        if not videos:  # folders without videos (e.g. notes, checkpoints) take no label
            continue
        label = len(classes)
        classes.append(sub.name)
        entries.extend(VideoEntry(str(p), label) for p in videos)
    return entries, classes


def load_source(spec: str) -> list[VideoEntry]:
    """One source: a folder tree of videos or an index file. An empty source is an error."""
    p = Path(os.path.expanduser(spec))
    if p.is_dir():
        entries, _ = scan_folder(p)
        if not entries:
            raise ValueError(f"data.path: folder {p} holds no videos ({', '.join(VIDEO_EXTENSIONS)})")
    elif p.is_file():
        entries = read_index_file(p)
        if not entries:
            raise ValueError(f"data.path: index file {p} lists no videos")
    else:
        raise ValueError(f"data.path: {spec!r} is neither a folder nor an index file (no such path)")
    return entries


def split_sources(path: str) -> list[str]:
    """`data.path` may list several sources separated by commas."""
    parts = [s.strip() for s in path.split(",")]
    if not path.strip() or any(not s for s in parts):
        raise ValueError(f"data.path: empty source in {path!r}")
    return parts


def mixture_sizes(lengths: Sequence[int], weights: Optional[Sequence[float]] = None,
                  max_growth: float = 8.0) -> list[int]:
    """How many positions of a mixture's index space each source gets.

    Without weights the sources are simply concatenated. With weights, source i gets a share proportional to
    weights[i], and the index space is the smallest in which every source's share holds all of its videos (so each
    video is seen at least once per pass, up-weighted sources repeat); it is capped at `max_growth` times the number
    of videos, past which a heavily down-weighted source sees an evenly spread subset of its videos. Shares are rounded
    by largest remainder; every source gets at least one position."""
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"data.path: every source needs at least one video, got sizes {list(lengths)}")
    if weights is None or len(weights) == 0:
        return list(lengths)
    if len(weights) != len(lengths):
        raise ValueError(f"data.weights: {len(weights)} weights for {len(lengths)} sources")
    if any(not (math.isfinite(w) and w > 0) for w in weights):
        raise ValueError(f"data.weights: weights must be positive and finite, got {list(weights)}")
    total_w = float(sum(weights))
    shares = [w / total_w for w in weights]
    size = max(math.ceil(n / p - 1e-9) for n, p in zip(lengths, shares))
    size = max(len(lengths), min(size, int(max_growth * sum(lengths))))
    exact = [size * p for p in shares]
    sizes = [max(1, math.floor(x)) for x in exact]
    # Hand out what rounding left over to the largest remainders (deterministic: ties go to the first source).
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    k = 0
    while sum(sizes) < size:
        sizes[order[k % len(order)]] += 1
        k += 1
    return sizes
