"""Real video data: decoding (which frames come back), clip sampling, transforms, index files, folders, mixtures,
and broken files. Videos are written with PyAV into a temporary folder; frame k's content encodes k, so the tests
can tell exactly which frames a clip holds."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.data.decode import (PyAVReader, VideoDecodeError, available_decoders, open_video,
                                    resolve_decoder)
from vjepa_fast.data.index import mixture_sizes, read_index_file, scan_folder
from vjepa_fast.data.loader import RobustDataset, StepSampler
from vjepa_fast.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize,
                                        random_resized_crop_box, short_side_resize, spatial_crop_offsets,
                                        train_transform)
from vjepa_fast.data.video_dataset import MixedDataset, PathTable, VideoDataset, build_video_dataset

# ---------------------------------------------------------------- writing and reading coded frames


def coded_frame(k: int, h: int, w: int) -> np.ndarray:
    """Frame k: left half grey (k // 16) * 16 + 8, right half (k % 16) * 16 + 8 (up to 256 distinct frames, 16 grey
    levels apart: far above the codec's error)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:, : w // 2] = (k // 16) * 16 + 8
    img[:, w // 2:] = (k % 16) * 16 + 8
    return img


def read_code(left: float, right: float) -> int:
    return int(round((left - 8) / 16)) * 16 + int(round((right - 8) / 16))


def frame_codes(frames: torch.Tensor) -> list[int]:
    """Codes of uint8 frames [K, H, W, 3], read from the middle of each half."""
    w = frames.shape[2]
    f = frames.float()
    left = f[:, :, w // 8: 3 * w // 8].mean(dim=(1, 2, 3))
    right = f[:, :, 5 * w // 8: 7 * w // 8].mean(dim=(1, 2, 3))
    return [read_code(a, b) for a, b in zip(left.tolist(), right.tolist())]


def clip_codes(video: torch.Tensor) -> list[int]:
    """Codes of a normalised clip [3, T, S, S] whose crop kept the whole frame unflipped."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    pixels = (video * std + mean) * 255  # [3, T, S, S]
    return frame_codes(pixels.permute(1, 2, 3, 0))


def write_video(path: Path, n: int, fps: int, h: int = 48, w: int = 64, gop: int = 8, codec: str = "libx264",
                faststart: bool = False) -> Path:
    # x264's default preset uses B-frames (some not referenced), so the reader's frame skipping is exercised
    options = {"crf": "12"} if codec == "libx264" else {}
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=container_options) as c:
        s = c.add_stream(codec, rate=fps, options=options)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = gop  # keyframes every `gop` frames, so reading a late window really seeks
        for k in range(n):
            for packet in s.encode(av.VideoFrame.from_ndarray(coded_frame(k, h, w), format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


# name -> (frames, fps, height, width, extension)
GOOD = {
    "long30": (90, 30, 48, 64, "mp4"),
    "wide24": (40, 24, 64, 96, "mp4"),
    "tall25": (70, 25, 80, 48, "mp4"),
    "mkv25": (50, 25, 48, 64, "mkv"),  # matroska stores no frame count: the reader estimates it
    "three": (3, 30, 48, 64, "mp4"),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    out = {name: write_video(root / f"{name}.{ext}", n, fps, h, w) for name, (n, fps, h, w, ext) in GOOD.items()}
    out["corrupt"] = root / "corrupt.mp4"
    out["corrupt"].write_bytes(np.random.default_rng().integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out["empty"] = root / "empty.mp4"
    out["empty"].write_bytes(b"")
    out["missing"] = root / "missing.mp4"
    # A default mp4 keeps its index (moov) at the end: cut in half, it cannot even be opened.
    data = out["long30"].read_bytes()
    out["truncated"] = root / "truncated.mp4"
    out["truncated"].write_bytes(data[: len(data) // 2])
    # With the index in front ("faststart"), a cut file opens and promises 64 frames but its data stops early.
    fast = write_video(root / "fast_full.mp4", 64, 30, faststart=True)
    data = fast.read_bytes()
    out["truncated_tail"] = root / "truncated_tail.mp4"
    out["truncated_tail"].write_bytes(data[: int(len(data) * 0.45)])
    out["not_video"] = root / "notes.mp4"
    out["not_video"].write_text("this is not a video\n" * 50)
    return out


BROKEN = ["corrupt", "empty", "missing", "truncated", "truncated_tail", "not_video"]


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("decoder", available_decoders())
@pytest.mark.parametrize("name", list(GOOD))
def test_decoder_returns_the_requested_frames(videos, name, decoder):
    n, fps, h, w, _ = GOOD[name]
    rng = np.random.default_rng()
    with open_video(str(videos[name]), decoder) as r:
        assert r.num_frames == n
        assert r.fps == pytest.approx(fps, rel=1e-3)
        # unsorted, repeated, first and last frames
        idx = np.concatenate([rng.integers(0, n, 7), [n - 1, 0, n - 1]])
        frames = r.get_frames(idx)
        assert frames.dtype == torch.uint8 and frames.shape == (len(idx), h, w, 3)
        assert frame_codes(frames) == idx.tolist()
        expected = np.stack([coded_frame(int(k), h, w) for k in idx]).astype(np.float32)
        err = np.abs(frames.numpy().astype(np.float32) - expected)
        assert err.mean() < 1.5 and np.percentile(err, 99) <= 8  # codec tolerance (edge pixels ring a little)


def keyframe_indices(path) -> list[int]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sorted(round(float(p.pts * s.time_base * s.average_rate)) for p in c.demux(s)
                      if p.pts is not None and p.is_keyframe)


def test_pyav_seeks_to_the_window_and_decodes_forward(videos, monkeypatch):
    keys = keyframe_indices(videos["long30"])
    r = PyAVReader(str(videos["long30"]))
    decoded = []
    real = r._index

    def spy(frame, previous):
        i = real(frame, previous)
        decoded.append(i)
        return i

    monkeypatch.setattr(r, "_index", spy)
    for idx in ([70, 74, 78], [9, 10], [40, 52]):  # forwards, backwards, forwards again in one reader
        decoded.clear()
        assert frame_codes(r.get_frames(idx)) == idx
        # decoding starts at the last keyframe before the window and stops at the last needed frame
        assert decoded[0] == max(k for k in keys if k <= idx[0]) and decoded[-1] == idx[-1]
        if idx[-1] - decoded[0] >= 8:  # unneeded non-reference B-frames were skipped on the way
            assert len(decoded) < idx[-1] - decoded[0] + 1
    r.close()


class SeekProxy:
    """Stands in for a PyAV container (whose methods cannot be patched) with a broken `seek`."""

    def __init__(self, container, mode):
        self._c, self._mode = container, mode

    def seek(self, offset, **kwargs):
        if self._mode == "fail":
            raise av.error.ValueError(22, "seek not supported")
        self._c.seek(offset + 40 * 512, **kwargs)  # "overshoot": lands 40 frames (at 1/15360 s ticks) too late

    def __getattr__(self, name):
        return getattr(self._c, name)


@pytest.mark.parametrize("mode", ["fail", "overshoot"])
def test_pyav_falls_back_to_decoding_from_the_start_when_seeking_fails(videos, mode):
    r = PyAVReader(str(videos["long30"]))
    r._container = SeekProxy(r._container, mode)
    idx = [40, 3, 50]
    assert frame_codes(r.get_frames(idx)) == idx
    r._container = SeekProxy(r._container, mode)
    assert frame_codes(r.get_frames([20, 21])) == [20, 21]  # again, after the reader has decoded
    r.close()


def test_pyav_counts_frames_when_metadata_is_missing(videos):
    for name in ("long30", "mkv25"):
        r = PyAVReader(str(videos[name]))
        r._num_frames = None  # as for a stream with neither a frame count nor a duration
        assert r.num_frames == GOOD[name][0]
        assert frame_codes(r.get_frames([5, 1])) == [5, 1]
        r.close()


@pytest.mark.parametrize("decoder", available_decoders())
def test_frame_indices_outside_the_video_are_index_errors(videos, decoder):
    path = str(videos["wide24"])
    with open_video(path, decoder) as r:
        for bad in ([0, 40], [-1], [5, 1000]):
            with pytest.raises(IndexError, match=path):
                r.get_frames(bad)
        assert r.get_frames([]).shape[0] == 0


def test_pyav_repeats_the_last_frame_when_metadata_overestimates_a_little(videos):
    r = PyAVReader(str(videos["mkv25"]))
    r._num_frames = 52  # duration x fps estimates are off by a frame or two
    assert frame_codes(r.get_frames([48, 49, 50, 51])) == [48, 49, 49, 49]
    r.close()


def test_pyav_stream_ending_far_before_the_metadata_is_an_error(videos):
    path = str(videos["mkv25"])
    r = PyAVReader(path)
    r._num_frames = 80  # promises 80 frames, holds 50: frames 60 and 79 cannot be served
    with pytest.raises(VideoDecodeError, match=f"{path}: stream ends at frame 49 but frame 79 was needed"):
        r.get_frames([10, 60, 79])
    r.close()


@pytest.mark.parametrize("name", BROKEN)
def test_broken_files_raise_errors_naming_the_path(videos, name):
    path = str(videos[name])
    with pytest.raises((VideoDecodeError, FileNotFoundError)) as info:
        with open_video(path) as r:
            r.get_frames(np.arange(r.num_frames))
    assert path in str(info.value)


def test_decoder_choice_errors():
    with pytest.raises(ValueError, match="unknown decoder"):
        resolve_decoder("ffmpeg-magic")
    assert resolve_decoder("auto") == "pyav"
    for name in ("decord", "torchcodec"):
        if name not in available_decoders():
            with pytest.raises(ValueError, match="not installed"):
                resolve_decoder(name)
    with pytest.raises(FileNotFoundError, match="missing.mp4: no such file"):
        open_video(str(Path(__file__).parent / "missing.mp4"))


# ---------------------------------------------------------------- clip sampling through the dataset


def full_frame_dataset(entries, **kw):
    """Crops that keep the whole 4:3 frame unflipped, so the output's content still encodes the frame index."""
    args = dict(num_frames=16, crop_size=32, frame_step=4, crop_scale=(1.0, 1.0), crop_aspect=(4 / 3, 4 / 3),
                hflip_prob=0.0)
    args.update(kw)
    return VideoDataset(entries, **args)


def check_clip(codes, n, t, step):
    start = codes[0]
    assert 0 <= start <= max(0, n - t * step)
    expected = [min(start + k * step, n - 1) for k in range(t)]
    assert codes == expected


def test_clips_are_evenly_spaced_windows_at_random_positions(videos):
    n = GOOD["long30"][0]
    ds = full_frame_dataset([(str(videos["long30"]), 3)] * 6, seed=int(np.random.default_rng().integers(1 << 30)))
    starts = []
    for i in range(len(ds)):
        s = ds[i]
        assert s["label"] == 3
        assert s["video"].shape == (3, 16, 32, 32) and s["video"].dtype == torch.float32
        codes = clip_codes(s["video"])
        check_clip(codes, n, 16, 4)
        starts.append(codes[0])
    assert len(set(starts)) > 1  # 6 draws over 27 possible starts


def test_short_videos_repeat_their_last_frame(videos):
    ds = full_frame_dataset([(str(videos["three"]), 0), (str(videos["wide24"]), 0)], crop_aspect=(1.3, 1.6))
    assert clip_codes(ds[0]["video"]) == [0, 2] + [2] * 14
    ds1 = full_frame_dataset([(str(videos["three"]), 0)], frame_step=1, num_frames=6)
    assert clip_codes(ds1[0]["video"]) == [0, 1, 2, 2, 2, 2]
    codes = clip_codes(ds[1]["video"])  # 40 frames < 64-frame window: from 0, step 4, last frame 39 repeated
    assert codes == [min(4 * k, 39) for k in range(16)]


def test_sampling_is_deterministic_per_seed_and_index(videos):
    entries = [(str(videos["long30"]), 0), (str(videos["tall25"]), 1)]
    seed = int(np.random.default_rng().integers(1 << 30))
    a = VideoDataset(entries, num_frames=8, crop_size=32, seed=seed)
    b = VideoDataset(entries, num_frames=8, crop_size=32, seed=seed)
    for i in (1, 0, 1):
        assert torch.equal(a[i]["video"], b[i]["video"])
    others = [VideoDataset(entries, num_frames=8, crop_size=32, seed=seed + k)[0]["video"] for k in range(1, 4)]
    assert any(not torch.equal(o, a[0]["video"]) for o in others)


def test_target_fps_sets_the_frame_step(videos):
    ds = full_frame_dataset([(str(videos["long30"]), 0), (str(videos["mkv25"]), 0)], num_frames=8, target_fps=15,
                            seed=5)
    check_clip(clip_codes(ds[0]["video"]), 90, 8, 2)  # 30 fps / 15 = step 2
    ds = full_frame_dataset([(str(videos["mkv25"]), 0)], num_frames=8, target_fps=5, seed=5)
    check_clip(clip_codes(ds[0]["video"]), 50, 8, 5)  # 25 / 5


def test_several_clips_from_one_decode(videos):
    ds = full_frame_dataset([(str(videos["long30"]), 0)], num_frames=4, frame_step=3, clips_per_video=3, seed=2)
    v = ds[0]["video"]
    assert v.shape == (3, 3, 4, 32, 32)
    for clip in v:
        check_clip(clip_codes(clip), 90, 4, 3)


def test_eval_mode_is_deterministic_with_spatial_views(videos):
    ds = VideoDataset([(str(videos["long30"]), 0)], num_frames=8, crop_size=32, train=False, clips_per_video=2,
                      spatial_views=3, seed=1)
    v = ds[0]["video"]
    assert v.shape == (6, 3, 8, 32, 32)
    assert torch.equal(v, VideoDataset([(str(videos["long30"]), 0)], num_frames=8, crop_size=32, train=False,
                                       clips_per_video=2, spatial_views=3, seed=99)[0]["video"])
    # centre crop of one clip: windows centred in the 90 - 32 = 58 frames of slack
    one = VideoDataset([(str(videos["long30"]), 0)], num_frames=8, crop_size=32, train=False)[0]["video"]
    assert clip_codes(one) == [29 + 4 * k for k in range(8)]


@pytest.mark.parametrize("name", BROKEN)
def test_dataset_raises_on_broken_files_and_the_loader_skips_them(videos, name):
    path = str(videos[name])
    ds = VideoDataset([(str(videos["three"]), 0), (path, 1)], num_frames=16, crop_size=32)
    assert ds.describe(1) == path
    with pytest.raises((VideoDecodeError, FileNotFoundError), match=path.replace(".", r"\.")):
        ds[1]
    sample = RobustDataset(ds)[(0, 0, 1)]
    assert sample["video"].shape == (3, 16, 32, 32)
    assert len(sample["errors"]) >= 1 and sample["errors"][0].startswith(path)


def test_a_broken_file_is_logged_once_per_process_and_counted_every_time(videos, caplog):
    broken = str(videos["corrupt"])
    ds = RobustDataset(VideoDataset([(str(videos["three"]), 0), (broken, 1)], num_frames=4, crop_size=16))
    with caplog.at_level(logging.WARNING, logger="vjepa_fast.data.loader"):
        samples = [ds[(step, 0, 1)] for step in range(5)]  # the broken file asked for at five steps
    errors = [e for s in samples for e in s["errors"]]
    assert len(errors) >= 5 and all(e.startswith(broken) for e in errors)
    logged = [r.getMessage() for r in caplog.records if "skipping unreadable sample" in r.getMessage()]
    assert len(logged) == 1 and broken in logged[0]


def test_path_table_round_trips_any_path(videos, tmp_path):
    names = ["", "a", "/x/clé ü/vidéo 1.mp4", "\u6f22\u5b57.mkv", "/tmp/" + "z" * 300]
    table = PathTable(names)
    assert len(table) == len(names) and [table[i] for i in range(len(names))] == names
    odd = tmp_path / "clé ü vidéo.mp4"
    odd.write_bytes(videos["three"].read_bytes())
    index = tmp_path / "list.csv"
    index.write_text(f"path,label\n{odd.name},4\n", encoding="utf-8")
    ds = VideoDataset(read_index_file(index), num_frames=2, crop_size=16)
    assert ds.describe(0) == str(odd) and ds[0]["label"] == 4


def _stack(samples):
    return torch.stack([s["video"] for s in samples]), [e for s in samples for e in s["errors"]]


def test_works_in_loader_workers(videos):
    entries = [(str(videos[n]), 0) for n in ("long30", "corrupt", "mkv25", "three")]
    ds = RobustDataset(VideoDataset(entries, num_frames=4, crop_size=16, seed=7))
    sampler = StepSampler(batch_size=4, rank=0, world_size=1, start_step=0, num_steps=2, dataset_len=4, seed=7)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=_stack, num_workers=1)
    batches = list(loader)
    assert [b[0].shape for b in batches] == [(4, 3, 4, 16, 16)] * 2
    assert sum(len(b[1]) for b in batches) >= 2  # the corrupt file, once per pass, reported with its path
    assert all(str(videos["corrupt"]) in e for b in batches for e in b[1])
    # the same samples in the main process (the worker saw the same data)
    again = [_stack([ds[k] for k in keys]) for keys in sampler]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_index_out_of_range(videos):
    ds = VideoDataset([(str(videos["three"]), 0)], num_frames=2, crop_size=16)
    with pytest.raises(IndexError):
        ds[1]


# ---------------------------------------------------------------- index files and folders


def test_index_file_space_separated_with_relative_paths(tmp_path):
    sub = tmp_path / "lists"
    sub.mkdir()
    index = sub / "train.txt"
    index.write_text("clips/a.mp4 3\n\n/abs/b.mp4 0\n../c.mkv 12\n")
    entries = read_index_file(index)
    assert [e.label for e in entries] == [3, 0, 12]
    assert entries[0].path == str(sub.resolve() / "clips/a.mp4")
    assert entries[1].path == "/abs/b.mp4"
    assert Path(entries[2].path) == sub.resolve() / ".." / "c.mkv"


def test_index_file_csv(tmp_path):
    index = tmp_path / "train.csv"
    index.write_text("path,label\nx/a.mp4,1\n\"/abs/with,comma.mp4\",2\n")
    entries = read_index_file(index)
    assert entries == [(str(tmp_path.resolve() / "x/a.mp4"), 1), ("/abs/with,comma.mp4", 2)]


@pytest.mark.parametrize("body, bad_line, what", [
    ("a.mp4 1\nb.mp4 1 extra\n", 2, "3"),
    ("a.mp4 1\n\nb.mp4 one\n", 3, "not an integer"),
    ("a.mp4\n", 1, "1"),
    ("path,label\na.mp4,1\nb.mp4\n", 3, "1"),
    ("path,label\na.mp4,x\n", 2, "not an integer"),
])
def test_malformed_index_lines_name_file_and_line(tmp_path, body, bad_line, what):
    index = tmp_path / ("bad.csv" if body.startswith("path") else "bad.txt")
    index.write_text(body)
    with pytest.raises(ValueError, match=f"{index}:{bad_line}:.*{what}"):
        read_index_file(index)


def test_folder_labels_follow_sorted_subfolders(tmp_path):
    for rel in ("top.mp4", "zebra/z1.webm", "apple/x/deep.MOV", "apple/a1.mp4", "mango/m.avi", "mango/m2.mkv",
                "empty_dir/readme.txt", ".hidden/h.mp4", "apple/.skip.mp4", "notes.txt"):
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    entries, classes = scan_folder(tmp_path)
    assert classes == ["apple", "mango", "zebra"]
    got = {os.path.relpath(e.path, tmp_path): e.label for e in entries}
    assert got == {"top.mp4": 0, "apple/a1.mp4": 0, "apple/x/deep.MOV": 0, "mango/m.avi": 1, "mango/m2.mkv": 1,
                   "zebra/z1.webm": 2}


def test_empty_and_missing_sources_are_errors(tmp_path):
    cfg = load_config(overrides=[f"data.path={tmp_path}"]).data
    with pytest.raises(ValueError, match="no videos"):
        build_video_dataset(cfg, 0)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cfg.path = str(empty)
    with pytest.raises(ValueError, match="lists no videos"):
        build_video_dataset(cfg, 0)
    cfg.path = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="neither a folder nor an index file"):
        build_video_dataset(cfg, 0)
    cfg.path = f"{empty},,{empty}"
    with pytest.raises(ValueError, match="empty source"):
        build_video_dataset(cfg, 0)


# ---------------------------------------------------------------- mixtures


def test_mixture_sizes_follow_weights_and_cover_every_source():
    rng = np.random.default_rng()
    for _ in range(50):
        k = int(rng.integers(1, 5))
        lengths = rng.integers(1, 200, k).tolist()
        weights = rng.uniform(0.1, 5.0, k).tolist()
        sizes = mixture_sizes(lengths, weights, max_growth=1e9)
        total = sum(sizes)
        assert all(s >= n for s, n in zip(sizes, lengths))  # every video fits in its share
        for s, w in zip(sizes, weights):
            assert abs(s - total * w / sum(weights)) <= 1.0 + 1e-9
        assert mixture_sizes(lengths) == lengths  # no weights: plain concatenation
    capped = mixture_sizes([1000, 10], [1.0, 1000.0], max_growth=2.0)
    assert sum(capped) == 2020 and capped[0] < 1000  # a down-weighted source past the cap sees a subset
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="data.weights"):
            mixture_sizes([3, 4], bad)


def test_mixed_dataset_partitions_the_index_space(videos):
    a = VideoDataset([(str(videos["long30"]), 0), (str(videos["wide24"]), 1)], num_frames=2, crop_size=16)
    b = VideoDataset([(str(videos["three"]), 5)], num_frames=2, crop_size=16)
    mix = MixedDataset([a, b], weights=[1.0, 3.0])
    assert mix.sizes == [2, 6] and len(mix) == 8
    located = [mix.locate(i) for i in range(len(mix))]
    assert located == [(0, 0), (0, 1)] + [(1, 0)] * 6
    assert [mix.describe(i) for i in range(2)] == [str(videos["long30"]), str(videos["wide24"])]
    assert [mix[i]["label"] for i in (0, 1, 2, 7)] == [0, 1, 5, 5]
    # repeats of one video are different draws; the same position is the same draw
    assert not torch.equal(mix[2]["video"], mix[3]["video"])
    assert torch.equal(mix[4]["video"], mix[4]["video"])
    with pytest.raises(IndexError):
        mix.locate(8)


def test_build_from_config_with_mixed_sources(videos, tmp_path):
    folder = tmp_path / "tree"
    (folder / "b").mkdir(parents=True)
    (folder / "a").mkdir()
    os.symlink(videos["long30"], folder / "a" / "x.mp4")
    os.symlink(videos["tall25"], folder / "b" / "y.mp4")
    index = tmp_path / "list.txt"
    index.write_text(f"{videos['wide24']} 7\n{videos['mkv25']} 8\n{videos['three']} 9\n")
    cfg = load_config(overrides=[f"data.path={folder},{index}", "data.weights=[1,2]", "data.num_frames=4",
                                 "data.crop_size=32"]).data
    ds = build_video_dataset(cfg, seed=3)
    assert isinstance(ds, MixedDataset) and ds.sizes == [2, 4]  # 2 and 3 videos, shares 1:2
    labels = sorted({ds[i]["label"] for i in range(len(ds))})
    assert labels == [0, 1, 7, 8, 9]
    cfg = load_config(overrides=[f"data.path={index}", "data.num_frames=4", "data.crop_size=32"]).data
    single = build_video_dataset(cfg, seed=3)
    assert len(single) == 3 and single[2]["video"].shape == (3, 4, 32, 32)


def test_config_validates_new_data_fields():
    for override, field in ((["data.weights=[1,2]"], "data.weights"), (["data.decoder=vlc"], "data.decoder"),
                            (["data.target_fps=-1"], "data.target_fps"),
                            (["data.clips_per_video=0"], "data.clips_per_video"),
                            (["data.crop_scale=[0.5,0.2]"], "data.crop_scale"),
                            (["data.crop_aspect=[0,1]"], "data.crop_aspect"),
                            (["data.hflip_prob=2"], "data.hflip_prob")):
        with pytest.raises(ConfigError, match=field):
            load_config(overrides=override)


# ---------------------------------------------------------------- transforms


def random_clip(t, h, w, rng):
    return torch.from_numpy(rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8))


def test_crop_boxes_stay_in_bounds_and_ranges():
    rng = np.random.default_rng()
    scale, ratio = (0.3, 1.0), (0.75, 1.35)
    for _ in range(300):
        h, w = int(rng.integers(20, 400)), int(rng.integers(20, 400))
        top, left, ch, cw = random_resized_crop_box(h, w, scale, ratio, rng)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch >= 1 and cw >= 1
        if 0.8 < w / h < 1.3:  # a box that fits is always found for near-square frames: check the ranges
            # rounding each side to an integer moves area and aspect by at most about one pixel per side
            assert scale[0] * h * w - (ch + cw + 1) <= ch * cw <= scale[1] * h * w + (ch + cw + 1)
            assert ratio[0] * (1 - 1.5 / min(ch, cw)) <= cw / ch <= ratio[1] * (1 + 1.5 / min(ch, cw))
    # a frame far wider than any allowed aspect: the fallback is a centred box with the aspect clamped
    top, left, ch, cw = random_resized_crop_box(10, 300, (0.9, 1.0), ratio, rng)
    assert (top, ch) == (0, 10) and cw == round(10 * ratio[1]) and left == (300 - cw) // 2


def test_train_transform_shapes_flip_and_determinism():
    rng = np.random.default_rng()
    clip = random_clip(5, 37, 53, rng)
    seed = int(rng.integers(1 << 30))
    out0 = train_transform(clip, 24, np.random.default_rng(seed), hflip_prob=0.0)
    out1 = train_transform(clip, 24, np.random.default_rng(seed), hflip_prob=1.0)
    assert out0.shape == (3, 5, 24, 24) and out0.dtype == torch.float32 and out0.is_contiguous()
    assert torch.isfinite(out0).all()
    assert torch.equal(out1, out0.flip(-1)) and not torch.equal(out1, out0)
    # a left-to-right ramp: unflipped output rises along the width, flipped falls
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).view(1, 1, 64, 1).expand(3, 48, 64, 3).contiguous()
    a = train_transform(ramp, 16, np.random.default_rng(seed), hflip_prob=0.0)
    b = train_transform(ramp, 16, np.random.default_rng(seed), hflip_prob=1.0)
    assert (a[..., 1:] >= a[..., :-1]).all() and (a[..., -1] > a[..., 0]).all()
    assert (b[..., 1:] <= b[..., :-1]).all()
    # every frame of the clip gets the same crop: identical frames stay identical
    same = clip[:1].expand(4, -1, -1, -1).contiguous()
    out = train_transform(same, 16, np.random.default_rng(seed))
    assert all(torch.equal(out[:, 0], out[:, k]) for k in range(4))


def test_train_transform_full_crop_equals_resize():
    rng = np.random.default_rng()
    clip = random_clip(3, 30, 40, rng)
    out = train_transform(clip, 40, rng, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), hflip_prob=0.0)
    # a 30x40 frame resized to 40x40: compare against float interpolation of the same frames
    ref = torch.nn.functional.interpolate(clip.permute(0, 3, 1, 2).float(), size=(40, 40), mode="bilinear",
                                          antialias=True, align_corners=False)
    ref = normalize(ref.round().clamp(0, 255).to(torch.uint8))
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    assert ((out - ref).abs() * std * 255).max() <= 1.01  # uint8 vs float resize: at most one grey level


def test_normalize_matches_the_formula():
    rng = np.random.default_rng()
    x = torch.from_numpy(rng.integers(0, 256, (4, 3, 5, 7), dtype=np.uint8))  # [T, C, H, W]
    out = normalize(x)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    ref = (x.permute(1, 0, 2, 3).double() / 255 - mean.double()) / std.double()
    assert out.shape == (3, 4, 5, 7)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_eval_transform_crops():
    rng = np.random.default_rng()
    wide = random_clip(2, 30, 50, rng)
    views = eval_transform(wide, 24, spatial_views=3)
    assert views.shape == (3, 3, 2, 24, 24)
    resized = short_side_resize(wide, 24)
    assert tuple(resized.shape) == (2, 3, 24, 40)
    assert spatial_crop_offsets(24, 40, 24, 3) == [(0, 0), (0, 8), (0, 16)]
    for v, (t, l) in zip(views, spatial_crop_offsets(24, 40, 24, 3)):
        assert torch.equal(v, normalize(resized[:, :, t:t + 24, l:l + 24]))
    tall = random_clip(2, 61, 30, rng)
    centre = eval_transform(tall, 20)
    assert centre.shape == (1, 3, 2, 20, 20)
    assert spatial_crop_offsets(41, 20, 20, 3) == [(0, 0), (10, 0), (21, 0)]
    with pytest.raises(ValueError):
        train_transform(wide.float(), 16, rng)
    with pytest.raises(ValueError):
        eval_transform(wide[..., :2].contiguous(), 16)
