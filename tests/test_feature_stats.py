"""vjepa_fast.feature_stats: each statistic on features built to have (or lack) the property it measures, the token
object shares against a direct count, and the command on a random and a trained tiny encoder."""
import json

import pytest
import torch

from vjepa_fast import feature_stats as fs
from vjepa_fast import train
from vjepa_fast.config import load_config
from vjepa_fast.feature_stats import feature_stats, token_object_share
from vjepa_fast.parallel import DistInfo

B, N, D = 24, 30, 16


def _shares(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, N, generator=g) < 0.2).double()  # a random fifth of the tokens are object tokens


def test_features_of_the_position_alone_are_all_position_share():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(1, N, D, generator=g).expand(B, N, D) + 1e-3 * torch.randn(B, N, D, generator=g)
    s = feature_stats(feats, _shares(1))
    assert s["position_share"] > 0.99 and s["clip_share"] < 0.05
    assert s["object_gap"] < 0.05  # the position mean removed, nothing is left to tell objects apart


def test_features_of_the_clip_alone_are_all_clip_share():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(B, 1, D, generator=g).expand(B, N, D) + 1e-3 * torch.randn(B, N, D, generator=g)
    s = feature_stats(feats, _shares(2))
    assert s["clip_share"] > 0.99 and s["position_share"] < 0.1


def test_an_object_direction_shows_as_an_object_gap():
    g = torch.Generator().manual_seed(3)
    shares = _shares(3)
    noise = torch.randn(B, N, D, generator=g)
    direction = torch.zeros(D)
    direction[0] = 3.0
    marked = feature_stats(noise + shares[..., None].float() * direction, shares)["object_gap"]
    plain = feature_stats(noise, shares)["object_gap"]
    assert marked > 0.5 > 0.2 > plain


def test_no_object_tokens_gives_nan_gap_not_an_error():
    s = feature_stats(torch.randn(B, N, D), torch.zeros(B, N))
    assert s["object_gap"] != s["object_gap"] and s["object_tokens"] == 0.0


@pytest.mark.parametrize("rank", [1, 4])
def test_effective_rank_counts_equal_directions(rank):
    g = torch.Generator().manual_seed(10 + rank)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:rank]  # `rank` orthonormal directions
    feats = torch.randn(B, N, rank, generator=g) @ basis
    assert feature_stats(feats, _shares(rank))["effective_rank"] == pytest.approx(rank, rel=0.1)
    iso = feature_stats(torch.randn(B, N, D, generator=g), _shares(rank))["effective_rank"]
    assert D * 0.85 < iso <= D


def test_bad_shapes_are_one_clear_error():
    with pytest.raises(ValueError, match="object_share"):
        feature_stats(torch.randn(B, N, D), torch.zeros(B, N + 1))


def test_token_object_share_is_the_covered_fraction_of_each_token():
    g = torch.Generator().manual_seed(4)
    T, H, W, tub, p = 4, 12, 8, 2, 4
    cov = torch.rand(T, H, W, generator=g)
    shares = token_object_share(cov, tub, p)
    assert shares.shape == (T // tub * (H // p) * (W // p),)
    for t, h, w in [(0, 0, 0), (1, 2, 1), (1, 0, 1)]:
        n = (t * (H // p) + h) * (W // p) + w  # token order: time, row, column
        want = cov[t * tub:(t + 1) * tub, h * p:(h + 1) * p, w * p:(w + 1) * p].mean()
        torch.testing.assert_close(shares[n], want)


TINY = ["data.num_frames=4", "data.crop_size=32", "data.num_workers=0"]


def _main(argv, capsys):
    rc = fs.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_the_command_on_a_random_and_a_trained_encoder(tmp_path, capsys):
    out = tmp_path / "random.json"
    rc, _, err = _main(["--clips", "8", "--out", out, *TINY], capsys)
    assert rc == 0, err
    s = json.loads(out.read_text())
    assert s["encoder"] == "random" and s["clips"] == 8 and s["tokens_per_clip"] == 2 * 2 * 2
    assert 0 <= s["position_share"] <= 1 and 0 <= s["clip_share"] <= 1 and 1 <= s["effective_rank"] <= s["dim"]
    run = tmp_path / "run"
    cfg = load_config(None, [f"run_dir={run}", "train.steps=2", "train.batch_size=2", "train.progress=false",
                             "optim.warmup_steps=1", *TINY])
    train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu"))).run()
    rc, stdout, err = _main(["--checkpoint", run, "--use-online-encoder", "--clips", "4"], capsys)
    assert rc == 0, err
    assert "encoder online" in stdout and "step_00000002" in stdout


def test_real_data_missing_checkpoints_and_bad_clip_counts_are_one_line_errors(tmp_path, capsys):
    rc, _, err = _main(["--clips", "1", *TINY], capsys)
    assert rc == 2 and err[-1].startswith("config error: --clips")
    rc, _, err = _main(["data.path=" + str(tmp_path), *TINY[:2]], capsys)
    assert rc == 2 and "needs the synthetic videos" in err[-1]
    rc, _, err = _main(["--checkpoint", tmp_path / "missing"], capsys)
    assert rc == 1 and "checkpoint not found" in err[-1]
