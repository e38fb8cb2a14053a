"""Write synthetic clips as mp4 files plus a reference-format index, to exercise the real video-decoding path.

    python -m vjepa_fast.data.export_synthetic OUT_DIR --num 8 --frames 16 --size 64

writes OUT_DIR/clip_00000.mp4 ... (H.264 via libx264 when PyAV has it, else MPEG-4 Part 2; yuv420p) and
OUT_DIR/index.txt with one "absolute/path label" per line, space separated, as the original code reads it.
"""
from __future__ import annotations

import argparse
import os
import sys
from fractions import Fraction

from vjepa_fast.data.synthetic import SyntheticVideos

LABEL_KINDS = ("appearance", "motion")


def _pick_codec(av) -> str:
    for name in ("libx264", "mpeg4"):
        if name in av.codecs_available:
            return name
    raise RuntimeError("PyAV has neither the libx264 nor the mpeg4 encoder; cannot write mp4 files")


def _progress(total: int):
    """tqdm when installed, else a plain counter on stderr; returns update() and close()."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc="export", unit="clip")
        return bar.update, bar.close
    step = max(1, total // 20)
    done = [0]

    def update(n: int = 1):
        done[0] += n
        if done[0] % step == 0 or done[0] == total:
            print(f"export: {done[0]}/{total} clips", file=sys.stderr, flush=True)

    return update, lambda: None


def write_mp4(path: str, frames, fps: int, codec: str) -> None:
    """Encode uint8 frames [T, H, W, 3] (numpy) to an mp4 file, one frame per 1/fps seconds."""
    import av

    with av.open(path, mode="w") as container:
        # libx264 at crf 16 is near-lossless, so decoded clips stay close to the rendered frames.
        options = {"crf": "16", "preset": "fast"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec != "libx264":  # mpeg4 has no crf: a generous bit rate (about 8 bits per pixel per second)
            stream.bit_rate = max(2_000_000, 8 * frames.shape[1] * frames.shape[2] * fps)
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def export_synthetic(
    out_dir: str,
    num: int,
    num_frames: int = 16,
    size: int = 224,
    fps: int = 15,
    seed: int = 0,
    num_shapes: int = 1,
    label: str = "appearance",
) -> str:
    """Render clips 0..num-1 of SyntheticVideos(num_frames, size, seed=seed) to out_dir; return the index path.

    `label` picks which label the index carries ("appearance" or "motion")."""
    try:
        import av
    except ImportError as e:
        raise RuntimeError("export_synthetic needs PyAV (pip install av)") from e
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if isinstance(fps, bool) or not isinstance(fps, int) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    if label not in LABEL_KINDS:
        raise ValueError(f"label must be one of {LABEL_KINDS}, got {label!r}")
    ds = SyntheticVideos(num_frames, size, length=num, seed=seed, num_shapes=num_shapes, normalize=False)
    if size % 2:
        raise ValueError(f"size must be even for yuv420p video (chroma is subsampled 2x2), got {size}")
    out_dir = os.path.abspath(out_dir)
    if any(c.isspace() for c in out_dir):
        # The index format is "path label" split on whitespace: a path with spaces could not be read back.
        raise ValueError(f"out_dir must not contain whitespace (the index is space separated): {out_dir!r}")
    os.makedirs(out_dir, exist_ok=True)
    codec = _pick_codec(av)
    lines = []
    update, close = _progress(num)
    try:
        for i in range(num):
            spec = ds.clip(i)
            path = os.path.join(out_dir, f"clip_{i:05d}.mp4")
            write_mp4(path, ds.frames(i).numpy(), fps, codec)
            lines.append(f"{path} {spec.appearance if label == 'appearance' else spec.motion}\n")
            update(1)
    finally:
        close()
    index_path = os.path.join(out_dir, "index.txt")
    tmp = index_path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(lines)
    os.replace(tmp, index_path)  # readers never see a half-written index
    return index_path


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m vjepa_fast.data.export_synthetic", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="output folder (created if missing)")
    p.add_argument("--num", type=int, required=True, help="number of clips")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", type=int, default=224, help="frame height and width (even)")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-shapes", type=int, default=1, help="objects per clip")
    p.add_argument("--label", choices=LABEL_KINDS, default="appearance", help="which label the index carries")
    a = p.parse_args(argv)
    index = export_synthetic(a.out_dir, a.num, a.frames, a.size, a.fps, a.seed, a.num_shapes, a.label)
    print(index)
    return index


if __name__ == "__main__":
    main()
