"""The collapse watch: target / prediction spread across tokens in metrics.jsonl, one warning under the threshold."""
import json
import warnings

import torch

from vjepa_fast import train
from vjepa_fast.collapse import CollapseWatch, token_std
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
