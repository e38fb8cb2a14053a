"""The collapse watch: target / prediction spread across tokens and effective ranks (RankMe) in metrics.jsonl, one
warning under either threshold."""
import json
import warnings

import torch

from vjepa_fast import train
from vjepa_fast.models.collapse_stats import RANK_ROWS, rank_rows, token_std
from vjepa_fast.run.collapse import CollapseWatch, rankme
from vjepa_fast.config import load_config
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.build import build_masker
from vjepa_fast.parallel import DistInfo

SMALL = ["train.steps=4", "train.batch_size=2", "train.log_every=2", "train.progress=false", "data.num_workers=0",
         "data.num_frames=4", "data.crop_size=32", "optim.warmup_steps=1"]


def test_token_std_is_the_per_channel_std_across_tokens_averaged():
    x = torch.randn(50, 7, dtype=torch.float64) * torch.arange(1, 8)
    expect = sum(x[:, c].std().item() for c in range(7)) / 7
    assert abs(token_std(x).item() - expect) < 1e-5
    assert token_std(torch.ones(10, 3) * torch.randn(3)).item() == 0.0  # every token the same vector
    # Batched: the spread within each clip, averaged over clips; one vector per clip is a collapse.
    per_clip = torch.randn(4, 1, 3).expand(4, 10, 3)
    assert token_std(per_clip).item() == 0.0 and token_std(per_clip.reshape(40, 3)).item() > 0.1


def _run(tmp_path, extra=()):
    cfg = load_config(None, [f"run_dir={tmp_path}", *SMALL, *extra])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return trainer, rows, [w for w in caught if "collapsing" in str(w.message)]


def test_metrics_carry_the_spreads_and_a_low_spread_warns_once(tmp_path):
    trainer, rows, collapse_warnings = _run(tmp_path, ["train.collapse_std=100"])  # a threshold every step is under
    assert [r["step"] for r in rows] == [1, 3]
    assert len(collapse_warnings) == 1 and "train.collapse_std=100" in str(collapse_warnings[0].message)
    for r in rows:
        # After the target encoder's final LayerNorm the tokens of a young encoder differ: well above 0.
        assert 0.05 < r["target_std"] < 10 and 0 < r["pred_std"] < 10, r
    # The model's statistics are those of its own target features, recomputed here.
    model = trainer.model
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        h = model.target_encoder(video)  # [B, N, D]
    masker = build_masker(trainer.cfg, model.encoder.grid)
    pm = pack_masks(masker.sample(0, [0, 1]), model.encoder.num_tokens)
    with torch.no_grad():
        model(video, pm, torch.ones(pm.tgt_rows.numel()))
    assert abs(model.feature_stats[0].item() - token_std(h).item()) < 1e-5


def test_watch_without_stats_adds_nothing():
    assert CollapseWatch(0.1).fields(None, 3) == {}


def test_rankme_counts_equally_used_orthonormal_directions():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
    for k in (1, 3, 10, 40):
        basis = q[:k]  # k orthonormal rows
        assert abs(rankme(basis).item() - k) < 1e-9, k  # k equal singular values: exactly k
        # 256 rows in their span with isotropic coefficients: close to k (sampling makes the spectrum uneven)
        rows = torch.randn(256, k, generator=gen, dtype=torch.float64) @ basis
        assert 0.85 * k <= rankme(rows).item() <= k + 1e-6, k
    one = torch.randn(64, generator=gen).expand(256, 64)
    assert abs(rankme(one).item() - 1.0) < 1e-6  # a full collapse: every token the same vector


def test_rankme_is_the_entropy_of_the_normalised_singular_values():
    gen = torch.Generator().manual_seed(1)
    for shape in ((256, 96), (40, 128)):  # the two Gram-matrix orientations
        x = torch.randn(*shape, generator=gen) * torch.linspace(0.01, 3, shape[1])
        s = torch.linalg.svdvals(x.double())
        p = s / s.sum()
        want = torch.exp(-(p * p.log()).sum()).item()
        assert abs(rankme(x).item() - want) < 1e-6 * want
        rot, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=gen))
        assert abs(rankme(5.0 * x @ rot).item() - want) < 1e-4 * want  # scale and rotation do not change it


def test_rank_rows_are_evenly_spaced_and_deterministic():
    x = torch.arange(1000, dtype=torch.float32).reshape(1000, 1).expand(1000, 3)
    rows = rank_rows(x, 256)
    assert rows.shape == (256, 3) and rows[0, 0] == 0 and rows[-1, 0] == 999
    gaps = rows[1:, 0] - rows[:-1, 0]
    assert gaps.min() >= 3 and gaps.max() <= 5  # 999 / 255 apart, rounded
    assert torch.equal(rows, rank_rows(x, 256))
    assert torch.equal(rank_rows(x[:100], 256), x[:100])  # fewer rows than asked: all of them


def test_metrics_carry_the_effective_ranks_of_that_step(tmp_path):
    trainer, rows, _ = _run(tmp_path)
    width = trainer.model.encoder.embed_dim
    for r in rows:
        assert 1.0 < r["target_rank"] <= width and 1.0 < r["context_rank"] <= width, r
    # The last row is the last step's, whose subsamples the model still holds.
    target, context = trainer.model.rank_rows
    assert abs(rows[-1]["target_rank"] - rankme(target).item()) < 1e-9
    assert abs(rows[-1]["context_rank"] - rankme(context).item()) < 1e-9
    assert target.shape[0] == min(RANK_ROWS, 2 * trainer.num_tokens)  # 2 clips of target tokens


def test_a_low_rank_warns_once(tmp_path):
    _, rows, collapse_warnings = _run(tmp_path, ["train.collapse_rank=500"])  # 1000 for 2 clips: every step under
    assert len(collapse_warnings) == 1 and "train.collapse_rank=500 per clip x 2 clips" in str(
        collapse_warnings[0].message)
    for ranks, warned in (([30.0, 20.0], False), ([30.0, 15.0], True), ([15.0, 30.0], True)):
        watch = CollapseWatch(0.0, 2.0, clips=8)  # under 16 directions for 8 clips
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fields = watch.fields(torch.tensor([0.5, 0.5]), 7, torch.tensor(ranks))
            watch.fields(torch.tensor([0.5, 0.5]), 8, torch.tensor(ranks))  # once only
        assert [fields["target_rank"], fields["context_rank"]] == ranks
        assert len(caught) == warned, ranks


def test_tensorboard_gets_the_ranks():
    from vjepa_fast.run.tb_log import TensorBoardLog

    class Writer:
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append(tag)

    writer = Writer()
    TensorBoardLog(writer).scalars({"step": 4, "loss": 0.5, "target_rank": 12.0, "context_rank": 9.5})
    assert {"target_rank", "context_rank"} <= set(writer.tags)
