"""Frozen evaluation: the attentive probe, frozen feature layout, checkpoint loading and the eval entry point."""
import contextlib
import json
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from vjepa_fast import eval as ev
from vjepa_fast.data.probe_splits import Split
from vjepa_fast.eval import features as ev_features, options as ev_options, probe as ev_probe
from vjepa_fast.run.checkpoint import load_payload
from vjepa_fast import train
from vjepa_fast.config import load_config
from vjepa_fast.models.build import build_encoder
from vjepa_fast.models.probe import AttentiveProbe
from vjepa_fast.models.vit import VisionTransformer
from vjepa_fast.parallel import DistInfo
from vjepa_fast.weights.reference import export_reference

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_frames=4", "data.crop_size=32", "data.num_workers=0"]


# ---- the probe ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("B, N, depth", [(1, 1, 1), (3, 7, 1), (2, 13, 2)])
def test_probe_shapes_and_init(B, N, depth):
    torch.manual_seed(B * 100 + N)
    probe = AttentiveProbe(embed_dim=24, num_classes=5, num_heads=3, depth=depth)
    out = probe(torch.randn(B, N, 24))
    assert out.shape == (B, 5) and torch.isfinite(out).all()
    assert len(probe.blocks) == depth
    linears = [m for m in probe.modules() if isinstance(m, torch.nn.Linear)]
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    w = torch.cat([m.weight.flatten() for m in linears])
    assert 0.015 < w.std() < 0.025 and w.abs().max() <= 0.04 + 1e-6  # trunc normal, std 0.02 cut at 2 std
    assert 0 < probe.query.abs().max() <= 0.04 + 1e-6
    # the one query pools: permuting tokens changes nothing (no positions inside the probe)
    x = torch.randn(B, N, 24)
    torch.testing.assert_close(probe(x), probe(x[:, torch.randperm(N)]))


def initial_attention(probe, x):
    """Attention weights [B, H, N] of the probe's first block on tokens x [B, N, D], as initialised."""
    block, (B, N, D), H = probe.blocks[0], x.shape, probe.blocks[0].attn.num_heads
    with torch.no_grad():
        q = block.attn.q(block.norm_q(probe.query))[0, 0].reshape(H, D // H)
        k = block.attn.kv(block.norm_x(x))[..., :D].reshape(B, N, H, D // H)
        return (torch.einsum("hd,bnhd->bhn", q, k) * (D // H) ** -0.5).softmax(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_qk_init_std_breaks_the_uniform_attention_of_the_start(seed):
    # The reference's 0.02 gives a width-96 probe attention logits of about 0.04 std: every token weighted alike
    # (entropy ln N). At qk_init_std = 96 ** -0.5 each head prefers some tokens. Only q and k change; a seed draws the
    # same numbers either way, so every other weight is identical.
    D, H, N = 96, 4, 144
    x = torch.randn(8, N, D, generator=torch.Generator().manual_seed(100 + seed))
    probes = {}
    for std in (0.02, D ** -0.5):
        torch.manual_seed(seed)
        probes[std] = AttentiveProbe(D, 9, H, qk_init_std=std)
    entropy = {std: float(-(a * a.log()).sum(-1).mean()) for std, a in
               ((std, initial_attention(p, x)) for std, p in probes.items())}
    assert entropy[0.02] > math.log(N) - 0.01
    assert entropy[D ** -0.5] < math.log(N) - 0.2
    ref, wide = (dict(p.named_parameters()) for p in probes.values())
    gain = D ** -0.5 / 0.02
    for name, w in ref.items():
        if name.endswith("attn.q.weight"):
            torch.testing.assert_close(wide[name], w * gain)
        elif name.endswith("attn.kv.weight"):
            torch.testing.assert_close(wide[name], torch.cat([w[:D] * gain, w[D:]]))
        else:
            assert torch.equal(wide[name], w), name
    with pytest.raises(ValueError, match="qk_init_std"):
        AttentiveProbe(D, 9, H, qk_init_std=0.0)


def test_probe_rejects_bad_input():
    probe = AttentiveProbe(16, 3, 4)
    for bad in (torch.randn(2, 5, 15), torch.randn(5, 16), torch.randn(2, 0, 16)):
        with pytest.raises(ValueError, match="tokens must be"):
            probe(bad)
    with pytest.raises(ValueError, match="divisible"):
        AttentiveProbe(18, 3, 4)
    with pytest.raises(ValueError, match="num_classes"):
        AttentiveProbe(16, 0, 4)


def tiny_encoder(seed=0):
    torch.manual_seed(seed)
    return ev.freeze(VisionTransformer("tiny", img_size=32, num_frames=4))


def test_only_the_probe_gets_gradients():
    enc = tiny_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    probe = AttentiveProbe(enc.embed_dim, 6, enc.num_heads, depth=2)
    feats = ev_features.encode(enc, torch.randn(3, 3, 4, 32, 32))
    assert feats.shape == (3, 1, enc.num_tokens, enc.embed_dim) and not feats.requires_grad
    opt = ev_probe.make_optimizer(probe, 1e-3, 0.01)
    loss, acc, step = ev_probe.train_epoch(probe, opt, [(feats, torch.tensor([0, 5, 2]))], 0, 1, 1e-3)
    assert step == 1 and math.isfinite(loss) and 0 <= acc <= 1
    assert not enc.training and all(p.grad is None and not p.requires_grad for p in enc.parameters())
    for name, p in probe.named_parameters():  # every probe parameter, the query and both blocks included
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_encode_concatenates_segments_and_keeps_views_apart():
    enc = tiny_encoder(1)
    B, S, V = 2, 2, 3
    video = torch.randn(B, S * V, 3, 4, 32, 32)
    feats = ev_features.encode(enc, video, segments=S, views=V, chunk=5)  # chunk straddles samples
    N = enc.num_tokens
    assert feats.shape == (B, V, S * N, enc.embed_dim)
    with torch.no_grad():
        per_clip = enc(video.reshape(-1, 3, 4, 32, 32)).reshape(B, S, V, N, -1)
    for b in range(B):
        for v in range(V):
            for s in range(S):
                torch.testing.assert_close(feats[b, v, s * N:(s + 1) * N], per_clip[b, s, v])
    with pytest.raises(ValueError, match="segments"):
        ev_features.encode(enc, video, segments=4, views=1)


def test_probe_learns_a_separable_problem():
    torch.manual_seed(0)
    C, N, D = 4, 7, 32
    means = torch.randn(C, D)

    def data(n):
        y = torch.randint(0, C, (n,))
        return (torch.randn(n, 1, N, D) * 1.5 + means[y][:, None, None]), y  # [n, V=1, N, D]

    x, y = data(512)
    probe = AttentiveProbe(D, C, num_heads=4)
    opt = ev_probe.make_optimizer(probe, 1e-3, 0.01)
    epochs, bs, step = 8, 32, 0
    total = epochs * (len(y) // bs)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        batches = [(x[perm[i:i + bs]], y[perm[i:i + bs]]) for i in range(0, len(y), bs)]
        _, _, step = ev_probe.train_epoch(probe, opt, batches, step, total, 1e-3)
    xv, yv = data(256)
    acc, n = ev_probe.accuracy(probe, [(xv[i:i + 64], yv[i:i + 64]) for i in range(0, 256, 64)])
    assert n == 256 and acc > 0.9


def cached_features(x, y, seed, shuffle):
    """Features of a split whose cache already holds (x [n, V, N, D], y [n]): the probe trains on these directly."""
    enc = types.SimpleNamespace(num_tokens=x.shape[2], embed_dim=x.shape[3])
    feats = ev_features.Features(enc, Split(list(range(len(y))), 1, 1, False), batch_size=32,
                                 device=torch.device("cpu"), autocast=contextlib.nullcontext, num_workers=0,
                                 seed=seed, shuffle=shuffle, name="train" if shuffle else "val")
    feats.cache = (x, y)
    return feats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_without_label_information_ends_on_its_plateau(seed):
    # Every clip has the same tokens, so the probe can learn the label frequencies and nothing else. The labels are
    # unbalanced: the best it can do (their entropy) is more than PLATEAU_MARGIN below ln C, so comparing with ln C
    # alone would miss it. The same clips with the label one-hot encoded in one token's features: it leaves.
    C, N, D, n = 9, 8, 32, 384
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor([8.0, 4, 2, 1, 1, 1, 1, 1, 1]), n, replacement=True, generator=g)
    blank = torch.randn(1, 1, N, D, generator=g).repeat(n, 1, 1, 1)
    readable = blank.clone()
    readable[:, 0, 0, :C] += 3 * torch.nn.functional.one_hot(y, C)
    enc = types.SimpleNamespace(embed_dim=D, num_heads=4)
    e = ev.EvalConfig(epochs=12, seed=seed)
    counts = torch.bincount(y, minlength=C).double()
    entropy = float(-(counts / n * (counts / n).clamp_min(1e-30).log()).sum())
    runs = {name: ev_probe.train_probe(cached_features(x, y, seed, True), cached_features(x, y, seed, False), enc, C,
                                       e, torch.device("cpu"))
            for name, x in (("blank", blank), ("readable", readable))}
    for r in runs.values():
        assert r["chance_loss"] == pytest.approx(entropy, rel=1e-6)
        assert r["train_loss"] == r["history"][-1]["train_loss"]
    assert entropy < (1 - ev.PLATEAU_MARGIN) * math.log(C)
    blank_run, readable_run = runs["blank"], runs["readable"]
    # On the plateau the loss is the chance loss (the reference is right), and the flag says so.
    assert blank_run["train_loss"] == pytest.approx(entropy, rel=0.02) and blank_run["plateau"] is True
    assert readable_run["train_loss"] < 0.8 * entropy and readable_run["plateau"] is False
    assert readable_run["accuracy"] > blank_run["accuracy"] + 0.2
    with pytest.raises(ev.EvalError, match="out of range for 9 classes"):
        list(ev_probe.counting([(blank[:2], torch.tensor([3, 9]))], torch.zeros(C, dtype=torch.long)))


def test_cosine_lr():
    assert ev_probe.cosine_lr(0, 10, 1e-3) == pytest.approx(1e-3)
    assert ev_probe.cosine_lr(5, 10, 1e-3) == pytest.approx(5e-4)
    assert ev_probe.cosine_lr(10, 10, 1e-3) == pytest.approx(0.0)


# ---- checkpoints and the entry point ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f"run_dir={d}", "train.steps=4", "train.batch_size=2", "train.progress=false",
                             "train.log_every=2", "optim.warmup_steps=1", *TINY])
    trainer = train.Trainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    trainer.run()
    export_reference(trainer.model, d / "reference.pth.tar")
    return d


def run_main(argv, capsys):
    rc = ev.main([str(a) for a in argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return rc, err


def test_loads_target_or_online_encoder_from_every_format(run_dir):
    ckpt_file = run_dir / "checkpoints" / "step_00000004"
    model = load_payload(ckpt_file)["model"]
    cfg = load_config(str(run_dir / "config.yaml"))
    loaded = {}
    for path in (ckpt_file, run_dir / "reference.pth.tar"):
        for online in (False, True):
            enc = build_encoder(cfg)
            which = ev.load_encoder_weights(enc, path, online)
            assert which == ("online" if online else "target")
            prefix = "encoder." if online else "target_encoder."
            for k, v in enc.state_dict().items():
                assert torch.equal(v, model[prefix + k]), (path.name, k)
            loaded[(path.name, online)] = enc.blocks[0].attn.qkv.weight
    # after 4 EMA steps the target and online encoders differ: the switch really picks another tensor
    assert not torch.equal(loaded[(ckpt_file.name, False)], loaded[(ckpt_file.name, True)])
    # evaluating at another clip size: the file's sin-cos table is resized to it (as the model that wrote it does for
    # such clips), every trained weight is loaded
    enc = build_encoder(load_config(str(run_dir / "config.yaml"), ["data.crop_size=48", "data.num_frames=6"]))
    ev.load_encoder_weights(enc, ckpt_file, False)
    assert enc.pos_embed.shape[1] == 3 * 3 * 3 != model["target_encoder.pos_embed"].shape[1]
    trained = VisionTransformer("tiny", img_size=32, num_frames=4)
    target = "target_encoder."
    trained.load_state_dict({k[len(target):]: v for k, v in model.items() if k.startswith(target)})
    torch.testing.assert_close(enc.pos_embed[0], trained.pos_table((3, 3, 3)), rtol=0, atol=0)
    for k, v in enc.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(v, model["target_encoder." + k]), k
    assert ev.resolve_checkpoint(str(run_dir)) == (ckpt_file, run_dir / "config.yaml")
    assert ev.resolve_checkpoint(str(ckpt_file)) == (ckpt_file, run_dir / "config.yaml")
    assert ev.resolve_checkpoint(str(run_dir / "checkpoints")) == (ckpt_file, run_dir / "config.yaml")


def test_eval_run_dir_end_to_end_as_a_file(run_dir, tmp_path, subprocess_env):
    out = tmp_path / "res" / "probe.json"
    proc = subprocess.run([sys.executable, str(ROOT / "vjepa_fast" / "eval" / "__main__.py"), "--checkpoint", str(run_dir),
                           "--epochs", "2", "--train-samples", "24", "--val-samples", "12", "--batch-size", "8",
                           "--label", "motion", "--out", str(out), "data.num_workers=0"],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert 0.0 <= res["accuracy"] <= 1.0
    assert res["epochs"] == 2 and len(res["history"]) == 2 and res["label"] == "motion"
    assert res["num_classes"] == 9 and res["val_samples"] == 12 and res["train_samples"] == 24
    assert res["encoder"] == "target" and res["baseline"] is False
    assert res["checkpoint"].endswith("step_00000004")
    assert res["crop_size"] == 32 and res["num_frames"] == 4  # the run's config.yaml was used
    assert all(0 <= h["val_accuracy"] <= 1 and math.isfinite(h["train_loss"]) for h in res["history"])
    assert "top-1 accuracy" in proc.stdout


def test_probe_epochs_default_is_the_recipes(tmp_path, capsys):
    assert ev_options.probe_epochs(ev.EvalConfig()) == ev_options.DEFAULT_EPOCHS == 20
    assert ev_options.probe_epochs(ev.EvalConfig(epochs=3)) == 3
    # end to end: no --epochs on the synthetic videos trains (and records) the default
    out = tmp_path / "default_epochs.json"
    rc, _ = run_main(["--train-samples", "4", "--val-samples", "2", "--batch-size", "4", "--out", out, *TINY], capsys)
    res = json.loads(out.read_text())
    assert rc == 0 and res["epochs"] == 20 and len(res["history"]) == 20


def test_probe_qk_std_option_reaches_the_probe_and_the_json(tmp_path, capsys, monkeypatch):
    assert ev_options.probe_qk_std(ev.EvalConfig()) == 0.02  # the reference's init unless asked
    built = []
    monkeypatch.setattr(ev_probe, "AttentiveProbe", lambda *a, **k: built.append(k) or AttentiveProbe(*a, **k))
    out = tmp_path / "qk.json"
    rc, _ = run_main(["--epochs", "1", "--train-samples", "4", "--val-samples", "2", "--probe-qk-std", "0.1",
                      "--out", out, *TINY], capsys)
    assert rc == 0 and json.loads(out.read_text())["probe_qk_std"] == 0.1 and built[0]["qk_init_std"] == 0.1
    for bad in ("0", "-1", "nan", "inf"):
        rc, err = run_main(["--probe-qk-std", bad, *TINY], capsys)
        assert rc == 2 and err == [f"config error: --probe-qk-std: must be positive, got {float(bad)}"]


def test_random_baseline_says_so(tmp_path, capsys, caplog):
    out = tmp_path / "baseline.json"
    rc, _ = run_main(["--epochs", "1", "--train-samples", "8", "--val-samples", "5", "--out", out, *TINY], capsys)
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["baseline"] is True and res["encoder"] == "random" and res["checkpoint"] is None
    assert res["label"] == "appearance" and res["num_classes"] == 18 and res["val_samples"] == 5
    assert "randomly initialised" in caplog.text


def test_plateau_seeds_are_warned_counted_and_recorded(tmp_path, capsys, caplog):
    # One optimizer step per seed: no probe leaves its plateau in one step.
    out = tmp_path / "plateau.json"
    rc = ev.main([str(a) for a in ["--epochs", "1", "--seeds", "2", "--train-samples", "8", "--val-samples", "4",
                                   "--out", out, *TINY]])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["plateau_per_seed"] == [True, True] and len(res["train_loss_per_seed"]) == 2
    for loss, chance in zip(res["train_loss_per_seed"], res["chance_loss_per_seed"]):
        assert 0 < chance <= math.log(18) + 1e-9 and loss > (1 - ev.PLATEAU_MARGIN) * chance
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "plateau" in r.getMessage()]
    assert len(warnings) == 2
    for seed, msg in zip((0, 1), warnings):
        loss = res["train_loss_per_seed"][seed]
        assert msg.startswith(f"seed {seed}: the probe ended on its plateau (final training loss {loss:.3f}")
        assert f"ln 18 = {math.log(18):.3f}" in msg and "--epochs" in msg and "--lr" in msg
        assert "--probe-qk-std 0.102, the width's ** -0.5; 0.02 here" in msg  # the tiny width, 96
    assert "over 2 seeds, 2 on the probe's plateau" in capsys.readouterr().out


def test_real_videos_with_segments_and_views(tmp_path, capsys):
    from vjepa_fast.data.export_synthetic import export_synthetic

    index = export_synthetic(str(tmp_path / "vids"), num=4, num_frames=8, size=48)
    out = tmp_path / "real.json"
    rc, err = run_main(["--epochs", "1", "--batch-size", "3", "--val-path", index, "--out", out,
                        f"data.path={index}", "data.clips_per_video=2", *TINY], capsys)
    assert rc == 0, err
    res = json.loads(out.read_text())
    assert res["segments"] == 2 and res["views"] == 3 and res["label"] == "index"
    assert res["val_samples"] == 4 and 0 <= res["accuracy"] <= 1 and res["skipped_samples"] == 0
    rc, err = run_main(["--label", "motion", "--val-path", index, f"data.path={index}", *TINY], capsys)
    assert rc == 2 and "--label" in err[-1]
    rc, err = run_main([f"data.path={index}", *TINY], capsys)
    assert rc == 2 and "--val-path" in err[-1]


def test_bad_checkpoint_path_is_one_line(tmp_path, subprocess_env):
    missing = tmp_path / "nope" / "step_00000001.pt"
    proc = subprocess.run([sys.executable, "-m", "vjepa_fast.eval", "--checkpoint", str(missing)],
                          capture_output=True, text=True, env=subprocess_env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "checkpoint not found" in lines[0] and str(missing) in lines[0]


def test_checkpoint_errors_name_the_problem(run_dir, tmp_path, capsys):
    no_encoder = tmp_path / "no_encoder.pt"
    torch.save({"model": {"predictor.x": torch.randn(2)}, "step": 3}, no_encoder)
    rc, err = run_main(["--checkpoint", no_encoder, *TINY], capsys)
    assert rc == 1 and "no encoder weights" in err[-1] and str(no_encoder) in err[-1]

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    rc, err = run_main(["--checkpoint", garbage, *TINY], capsys)
    assert rc == 1 and "cannot be loaded" in err[-1]

    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    rc, err = run_main(["--checkpoint", empty_run, *TINY], capsys)
    assert rc == 1 and "no step_* checkpoints" in err[-1]

    rc, err = run_main(["--checkpoint", run_dir, "model.size=small"], capsys)  # 384 wide vs the run's 96
    assert rc == 1 and "shape mismatches" in err[-1] and "(96,) vs model (384,)" in err[-1]

    rc, err = run_main(["--checkpoint", run_dir, "--epochs", "0"], capsys)
    assert rc == 2 and "--epochs" in err[-1]
