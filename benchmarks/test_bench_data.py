"""Data-loading throughput: decoded + augmented training clips per second, per installed decoder, in one process.

The videos are generated once per session with PyAV: 3 files of 10 s at 30 fps, 320 x 568 (short side 320, 16:9),
H.264 (x264 "veryfast", keyframe every 2 s, as web-transcoded video typically has), with textured, panning content
so the bitrate is realistic for 320p web video (about 0.5 Mbit/s). Each round reads one sample through the real
dataset path: open, seek, decode the 16 x 4 = 64-frame window, random resized crop to 224, flip, normalise. One
process, with one decoder thread (what each of many loader workers should use) and with FFmpeg's automatic count.

    PYTHONPATH=. pytest benchmarks/test_bench_data.py --benchmark-only
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from vjepa_fast.data.decode import available_decoders  # noqa: E402
from vjepa_fast.data.video_dataset import VideoDataset  # noqa: E402

NUM_FILES, SECONDS, FPS, HEIGHT, WIDTH = 3, 10, 30, 320, 568


def _write(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # A smooth random texture larger than the frame; the camera pans across it and a bright block moves on top.
    coarse = rng.integers(0, 256, (HEIGHT // 8 + 8, (WIDTH + 2 * SECONDS * FPS) // 8 + 8, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    texture = (texture.astype(np.uint16) + rng.integers(0, 24, texture.shape, dtype=np.uint16)).clip(0, 255)
    texture = texture.astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "18"})
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.codec_context.gop_size = 2 * FPS
        for k in range(SECONDS * FPS):
            img = np.ascontiguousarray(texture[:HEIGHT, 2 * k: 2 * k + WIDTH])
            y, x = (40 + 3 * k) % (HEIGHT - 60), (7 * k) % (WIDTH - 60)
            img[y:y + 60, x:x + 60] = 255 - img[y:y + 60, x:x + 60]
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


@pytest.fixture(scope="session")
def bench_videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_videos")
    paths = []
    for i in range(NUM_FILES):
        path = root / f"video_{i}.mp4"
        _write(path, seed=i)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("threads", [1, 0], ids=["1thread", "auto_threads"])
@pytest.mark.parametrize("decoder", available_decoders())
def test_bench_decode_augment(benchmark, bench_videos, decoder, threads):
    ds = VideoDataset([(p, i) for i, p in enumerate(bench_videos)], num_frames=16, crop_size=224, frame_step=4,
                      seed=0, decoder=decoder, decode_threads=threads)
    counter = iter(range(10**9))

    def one_clip():
        # Every round a different sample: other file, window and crop, as in training.
        i = next(counter)
        return ds.get(i % len(ds), key=(i,))

    out = benchmark.pedantic(one_clip, rounds=24, iterations=1, warmup_rounds=2)
    assert out["video"].shape == (3, 16, 224, 224)
    if benchmark.stats is None:  # --benchmark-disable: the body ran once, untimed; nothing to report
        return
    median = benchmark.stats.stats.median
    mb = sum(Path(p).stat().st_size for p in bench_videos) / len(bench_videos) / 1e6
    benchmark.extra_info.update(clips_per_s=1.0 / median, decoder=decoder, workers=1, decode_threads=threads,
                                video=f"{WIDTH}x{HEIGHT} {SECONDS}s {FPS}fps h264 gop {2 * FPS}",
                                mbit_per_s=round(mb * 8 / SECONDS, 2), clip="16 frames step 4 -> 224")
