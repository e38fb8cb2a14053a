"""The supervised ceiling of the quality benchmark: it learns, it trains the encoder too, its file loads in eval."""
import pytest
import torch

from vjepa_fast import eval as ev
from vjepa_fast import supervised as sup
from vjepa_fast.config import ConfigError, load_config
from vjepa_fast.data.synthetic import SyntheticVideos
from vjepa_fast.models.build import build_encoder
from vjepa_fast.models.probe import AttentiveProbe
from vjepa_fast.models.vit import VisionTransformer

TINY = ["data.num_frames=2", "data.crop_size=32", "data.num_workers=0", "train.batch_size=4", "optim.warmup_steps=2"]


def toy_batches(seed: int, n: int, batch: int = 16):
    """Clips whose class is the sign of a constant brightness offset on noise: separable by any mean."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        y = torch.randint(0, 2, (batch,), generator=g)
        video = torch.randn(batch, 3, 2, 32, 32, generator=g) * 0.3 + (2.0 * y - 1).view(-1, 1, 1, 1, 1)
        yield {"video": video, "y": y}


def test_learns_a_trivially_separable_label_and_trains_the_encoder():
    torch.manual_seed(0)
    encoder = VisionTransformer("tiny", img_size=32, num_frames=2)
    head = AttentiveProbe(encoder.embed_dim, 2, encoder.num_heads)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    o = load_config(None, ["optim.lr=1e-3", "optim.start_lr=1e-3", "optim.warmup_steps=0"]).optim
    r = sup.fit_classifier(encoder, head, toy_batches(1, 40), "y", 40, o, torch.device("cpu"))
    assert r["steps"] == 40 and len(r["step_seconds"]) == 40 and r["seconds"] > 0
    assert r["train_accuracy"] >= 0.95, r  # chance is 0.5
    # Fresh clips: the trained encoder + head generalise, so it is the rule that was learnt, not the samples.
    encoder.eval(), head.eval()
    with torch.no_grad():
        batch = next(toy_batches(99, 1, 64))
        acc = float((head(encoder(batch["video"])).argmax(-1) == batch["y"]).float().mean())
    assert acc >= 0.95
    changed = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert "patch_embed.proj.weight" in changed or len(changed) > len(before) // 2, changed


def test_the_head_phase_trains_the_head_on_cached_tokens_and_leaves_the_encoder_bit_identical():
    torch.manual_seed(1)
    encoder = VisionTransformer("tiny", img_size=32, num_frames=2)
    head = AttentiveProbe(encoder.embed_dim, 2, encoder.num_heads)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    tokens, labels = sup.cache_tokens(encoder, toy_batches(2, 5), "y", 5, torch.device("cpu"))
    assert tokens.shape[0] == labels.shape[0] == 80 and tokens.dtype == torch.float32
    r = sup.fit_head(head, tokens, labels, epochs=15, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in head.state_dict().items())
    assert r["epochs"] == 15 and r["train_accuracy"] >= 0.9, r  # the tokens carry the brightness; chance is 0.5
    # The shuffle is seeded: the same head from the same start on the same tokens ends the same.
    again = AttentiveProbe(encoder.embed_dim, 2, encoder.num_heads)
    again.load_state_dict(head_before)
    sup.fit_head(again, tokens, labels, epochs=15, seed=0)
    assert all(torch.allclose(v, again.state_dict()[k], atol=1e-5) for k, v in head.state_dict().items())


def test_phases_share_one_stream_so_no_batch_is_skipped_or_seen_twice():
    seen = []

    def batches():
        for i, item in enumerate(toy_batches(3, 10, 2)):
            seen.append(i)
            yield item

    encoder = VisionTransformer("tiny", img_size=32, num_frames=2)
    head = AttentiveProbe(encoder.embed_dim, 2, encoder.num_heads)
    o = load_config(None, []).optim
    stream = batches()
    assert sup.cache_tokens(encoder, stream, "y", 3, torch.device("cpu"))[1].numel() == 3 * 2
    assert sup.fit_classifier(encoder, head, stream, "y", 4, o, torch.device("cpu"))["steps"] == 4
    assert seen == list(range(7))


def test_a_run_reads_every_clip_of_its_stream_once_head_phase_first(monkeypatch):
    read = []
    get = SyntheticVideos.__getitem__
    monkeypatch.setattr(SyntheticVideos, "__getitem__", lambda self, i: (read.append(i), get(self, i))[1])
    # 5 head clips at batch 4: the head phase takes 2 whole batches (8 clips), then 3 end-to-end steps the next 12.
    r = sup.train_supervised(load_config(None, TINY), "motion", 3, None, torch.device("cpu"), head_clips=5,
                             head_epochs=1)
    assert read == list(range(20)) and r["head_clips"] == 8 and r["steps"] == 3


def test_stops_after_the_given_steps():
    encoder = VisionTransformer("tiny", img_size=32, num_frames=2)
    head = AttentiveProbe(encoder.embed_dim, 2, encoder.num_heads)
    o = load_config(None, []).optim
    assert sup.fit_classifier(encoder, head, toy_batches(0, 10, 2), "y", 3, o, torch.device("cpu"))["steps"] == 3


def test_synthetic_run_writes_an_encoder_file_that_eval_loads(tmp_path):
    cfg = load_config(None, TINY)
    r = sup.train_supervised(cfg, "motion", 4, tmp_path / "sup.pt", torch.device("cpu"), head_clips=8, head_epochs=2)
    assert r["steps"] == 4 and r["label"] == "motion" and 0 <= r["train_accuracy"] <= 1
    assert r["head_clips"] == 8 and r["head_epochs"] == 2 and r["head_seconds"] > 0 and len(r["step_seconds"]) == 4
    assert 0 <= r["head_train_accuracy"] <= 1
    saved = torch.load(tmp_path / "sup.pt", weights_only=True)["encoder"]
    torch.manual_seed(cfg.train.seed)
    assert set(saved) == set(build_encoder(cfg).state_dict())
    # Same shape as the config's encoder, so the benchmark's frozen probe measures it like any other encoder.
    e = ev.EvalConfig(label="motion", epochs=1, train_samples=4, val_samples=4, device="cpu")
    result = ev.evaluate(cfg, e, tmp_path / "sup.pt")
    assert result["encoder"] in ("online", "target") and 0 <= result["accuracy"] <= 1


@pytest.mark.parametrize("label, steps, extra, head, match", [
    ("colour", 2, [], {}, "label"),
    ("motion", 0, [], {}, "steps"),
    ("motion", 2, ["data.path=/nonexistent"], {}, "synthetic"),
    ("motion", 2, [], {"head_clips": 0}, "head_clips"),
    ("motion", 2, [], {"head_epochs": 0}, "head_epochs"),
])
def test_bad_inputs_are_one_line_config_errors(label, steps, extra, head, match):
    with pytest.raises(ConfigError, match=match):
        sup.train_supervised(load_config(None, TINY + extra), label, steps, **head)
