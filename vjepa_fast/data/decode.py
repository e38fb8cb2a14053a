"""Video decoding: open a file, read its metadata, decode only the frames a clip needs.

Backends: PyAV (always installed; the default), decord and torchcodec when importable. Every reader gives the same
interface: `num_frames`, `fps`, and `get_frames(indices) -> uint8 [K, H, W, 3]`. Every failure (missing, empty,
unreadable, truncated or undecodable file) is a `VideoDecodeError` or `FileNotFoundError` whose message starts with
the path, so the loader can log it, skip the file and count it.
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Optional, Sequence

import numpy as np
import torch

DECODERS = ("auto", "pyav", "decord", "torchcodec")
_STILL_IMAGE = 1024 | 1048576  # AV_DISPOSITION_ATTACHED_PIC | AV_DISPOSITION_STILL_IMAGE


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""


def available_decoders() -> list[str]:
    found = []
    for name, module in (("pyav", "av"), ("decord", "decord"), ("torchcodec", "torchcodec")):
        if importlib.util.find_spec(module) is not None:
            found.append(name)
    return found


def resolve_decoder(name: str) -> str:
    """"auto" is PyAV: it is always installed, so every machine decodes the same frames for the same run."""
    if name not in DECODERS:
        raise ValueError(f"data.decoder: unknown decoder {name!r}; choose one of {DECODERS}")
    if name == "auto":
        name = "pyav"
    if name not in available_decoders():
        module = {"pyav": "av"}.get(name, name)
        raise ValueError(f"data.decoder: {name!r} is not installed (no module {module!r}); "
                         f"installed: {available_decoders() or 'none'}")
    return name


def check_file(path: str) -> None:
    """Cheap checks before handing a file to a decoder, for clearer messages than the decoders give."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"{path}: empty file (0 bytes)")


def _shortfall_tolerance(num_frames: int) -> int:
    """Frames a stream may end early before it counts as truncated: container metadata (an estimate from duration x
    fps for mkv/webm) is often off by a frame or two; the missing tail repeats the last decoded frame."""
    return max(3, math.ceil(0.05 * num_frames))


def _check_indices(indices: Sequence[int], num_frames: int, path: str) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= num_frames):
        raise IndexError(f"{path}: frame indices must be in [0, {num_frames}), got {idx.min()}..{idx.max()}")
    return idx


class VideoReader:
    """Base class: one open video file. Use as a context manager or call close()."""

    path: str
    backend: str

    @property
    def num_frames(self) -> int:
        raise NotImplementedError

    @property
    def fps(self) -> Optional[float]:
        raise NotImplementedError

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [len(indices), H, W, 3], frame indices[k] at row k. Indices lie in [0, num_frames) (an IndexError
        otherwise) and may repeat and come in any order."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PyAVReader(VideoReader):
    """PyAV reader that seeks to the clip's window instead of decoding the whole file.

    Frame k is the frame whose timestamp is k / fps after the stream's start. To read frames [a, b] it seeks to the
    last keyframe at or before frame a's timestamp and decodes forward until frame b; if seeking fails, or lands after
    frame a, it decodes from the start instead. Only the frames it returns are converted to RGB.
    """

    backend = "pyav"

    def __init__(self, path: str, threads: int = 1):
        import av

        self._av = av
        self.path = str(path)
        self.threads = threads
        check_file(self.path)
        self._open()
        s = self._stream
        rate = next((r for r in (s.average_rate, s.guessed_rate, s.base_rate) if r and 0 < float(r) < 1000), None)
        self._fps = float(rate) if rate is not None else None
        self._tb = float(s.time_base) if s.time_base else None
        self._start = s.start_time or 0
        self._fresh = True  # nothing decoded yet: the demuxer is at the start of the file
        duration = None
        if s.duration and self._tb:
            duration = s.duration * self._tb
        elif self._container.duration:
            duration = self._container.duration / 1e6  # container duration is in microseconds
        self.duration = duration
        self._num_frames = None
        if s.frames and s.frames > 0:
            self._num_frames = int(s.frames)
        elif duration and self._fps:
            self._num_frames = int(round(duration * self._fps)) or None

    def _open(self) -> None:
        try:
            self._container = self._av.open(self.path, metadata_errors="ignore")
        except Exception as e:  # PyAV raises a zoo of error types for unreadable files
            raise VideoDecodeError(f"{self.path}: cannot open ({type(e).__name__}: {e})") from e
        # Cover art (an "attached picture") is also a video stream: take the first stream that is real video.
        streams = [s for s in self._container.streams.video if not int(s.disposition) & _STILL_IMAGE]
        if not streams:
            self._container.close()
            raise VideoDecodeError(f"{self.path}: no video stream")
        self._stream = streams[0]
        cc = self._stream.codec_context
        # One thread per reader is best when many loader workers decode in parallel; 0 lets FFmpeg choose.
        cc.thread_count = self.threads
        if self.threads != 1:
            cc.thread_type = "AUTO"
        self._fresh = True

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    @property
    def num_frames(self) -> int:
        if self._num_frames is None:  # no usable metadata: count packets (demuxing only, no decoding)
            try:
                count = sum(1 for p in self._container.demux(self._stream) if p.size)
            except Exception as e:
                raise VideoDecodeError(f"{self.path}: cannot read packets ({type(e).__name__}: {e})") from e
            if count == 0:
                raise VideoDecodeError(f"{self.path}: no video frames")
            self._num_frames = count
            self._reopen()
        return self._num_frames

    def _reopen(self) -> None:
        self._container.close()
        self._open()

    def _ts_index(self, pts: Optional[int]) -> Optional[int]:
        if pts is None or self._fps is None or self._tb is None:
            return None
        return int(round((pts - self._start) * self._tb * self._fps))

    def _index(self, frame, previous: int) -> int:
        i = self._ts_index(frame.pts)
        return previous + 1 if i is None else i

    def _decode(self, wanted: Optional[set]):
        """Frames from the demuxer's position. The packet of a frame that is not wanted is decoded with
        skip_frame=NONREF: the decoder drops it when no other frame refers to it (most B-frames), which cuts the
        frames decoded for a strided clip by about a third. Packets without a timestamp are always decoded."""
        cc = self._stream.codec_context
        for packet in self._container.demux(self._stream):
            if wanted is not None:
                k = self._ts_index(packet.pts)
                cc.skip_frame = "NONREF" if k is not None and k not in wanted else "DEFAULT"
            yield from packet.decode()
        cc.skip_frame = "DEFAULT"

    def _seek_frames(self, first: int, wanted: set):
        """Frames from the keyframe before `first`, or None when seeking is impossible or overshoots."""
        if self._fps is None or self._tb is None:
            return None
        target = self._start + int(math.floor((first - 0.5) / self._fps / self._tb))
        try:
            self._container.seek(max(target, self._start), stream=self._stream, backward=True, any_frame=False)
            self._fresh = False
            frames = self._decode(wanted)
            head = next(frames, None)
        except Exception:
            return None
        if head is None or head.pts is None or self._index(head, -1) > first:
            return None

        def chain():
            yield head
            yield from frames
        return chain()

    def _frames_from(self, first: int, wanted: set):
        """(index, frame) pairs covering frame `first` onwards (frames not in `wanted` may be missing)."""
        frames = self._seek_frames(first, wanted) if first > 0 else None
        if frames is None:
            if not self._fresh:
                self._reopen()
            self._fresh = False
            frames = self._decode(wanted)
        i = -1
        for frame in frames:
            i = self._index(frame, i)
            yield i, frame

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(indices, self.num_frames, self.path)
        wanted = np.unique(idx)
        if wanted.size == 0:
            return torch.empty(0, self._stream.height, self._stream.width, 3, dtype=torch.uint8)
        got: dict[int, np.ndarray] = {}
        pending, p = wanted.tolist(), 0
        last_i, last_frame = -1, None
        try:
            for i, frame in self._frames_from(pending[0], set(pending)):
                last_i, last_frame = i, frame
                if pending[p] > i:
                    continue
                rgb = frame.to_ndarray(format="rgb24")
                # Every wanted index up to this frame's is served by it (a gap in the timestamps of a
                # variable-frame-rate stream takes the next frame shown).
                while p < len(pending) and pending[p] <= i:
                    got[pending[p]] = rgb
                    p += 1
                if p == len(pending):
                    break
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: decoding failed ({type(e).__name__}: {e})") from e
        if p < len(pending):
            if last_frame is None:
                raise VideoDecodeError(f"{self.path}: no frames could be decoded")
            expected = self._num_frames or 0
            if pending[-1] - last_i > _shortfall_tolerance(max(expected, pending[-1] + 1)):
                raise VideoDecodeError(
                    f"{self.path}: stream ends at frame {last_i} but frame {pending[-1]} was needed "
                    f"(metadata: {expected} frames); the file is truncated or corrupt")
            rgb = last_frame.to_ndarray(format="rgb24")  # metadata overestimated the length by a little
            for k in pending[p:]:
                got[k] = rgb
        shapes = {a.shape for a in got.values()}
        if len(shapes) != 1:
            raise VideoDecodeError(f"{self.path}: frame size changes within the clip ({sorted(shapes)})")
        out = np.stack([got[int(k)] for k in idx])
        return torch.from_numpy(out)

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


class _BatchReader(VideoReader):
    """Readers whose library decodes a list of frame indices in one call (decord, torchcodec): they set
    self.path, self._n and self._fps when opening and implement _read_batch."""

    @property
    def fps(self) -> Optional[float]:
        return self._fps

    @property
    def num_frames(self) -> int:
        return self._n

    def _read_batch(self, idx: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(indices, self._n, self.path)
        if idx.size == 0:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8)
        try:
            return self._read_batch(idx)
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: decoding failed ({type(e).__name__}: {e})") from e


class DecordReader(_BatchReader):
    backend = "decord"

    def __init__(self, path: str, threads: int = 1):
        import decord

        self.path = str(path)
        check_file(self.path)
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
            self._n = len(self._vr)
            fps = float(self._vr.get_avg_fps())
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot open ({type(e).__name__}: {e})") from e
        if self._n <= 0:
            raise VideoDecodeError(f"{self.path}: no video frames")
        self._fps = fps if 0 < fps < 1000 else None

    def _read_batch(self, idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self._vr.get_batch(idx.tolist()).asnumpy()))

    def close(self) -> None:
        self._vr = None


class TorchCodecReader(_BatchReader):
    backend = "torchcodec"

    def __init__(self, path: str, threads: int = 1):
        from torchcodec.decoders import VideoDecoder

        self.path = str(path)
        check_file(self.path)
        try:
            # "approximate" trusts the header instead of scanning the whole file; files without a frame count in
            # their header need the scan.
            self._dec = VideoDecoder(self.path, dimension_order="NHWC", num_ffmpeg_threads=threads,
                                     seek_mode="approximate")
            if not self._dec.metadata.num_frames:
                self._dec = VideoDecoder(self.path, dimension_order="NHWC", num_ffmpeg_threads=threads,
                                         seek_mode="exact")
            md = self._dec.metadata
            self._n = int(md.num_frames or 0)
            fps = float(md.average_fps or 0)
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot open ({type(e).__name__}: {e})") from e
        if self._n <= 0:
            raise VideoDecodeError(f"{self.path}: no video frames")
        self._fps = fps if 0 < fps < 1000 else None

    def _read_batch(self, idx: np.ndarray) -> torch.Tensor:
        return self._dec.get_frames_at(idx.tolist()).data.contiguous()

    def close(self) -> None:
        self._dec = None


_READERS = {"pyav": PyAVReader, "decord": DecordReader, "torchcodec": TorchCodecReader}


def open_video(path: str, decoder: str = "auto", threads: int = 1) -> VideoReader:
    """Open `path` with the named backend ("auto": PyAV). Raises FileNotFoundError / VideoDecodeError naming it."""
    return _READERS[resolve_decoder(decoder)](path, threads=threads)
