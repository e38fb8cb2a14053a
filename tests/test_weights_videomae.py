"""The VideoMAE baseline against transformers' VideoMAEForPreTraining through the importers: encoder, decoder and
loss on the same random weights, and the VideoMAEModel export."""
import numpy as np
import pytest
import torch

from vjepa_fast.export import export
from vjepa_fast.masks import pack_masks
from vjepa_fast.models.videomae import VideoMAE
from vjepa_fast.weights import CheckpointFormatError, load_encoder, read_weights
from vjepa_fast.models.arch import build_decoder_from, build_encoder_from
from vjepa_fast.weights.load import load_part

transformers = pytest.importorskip("transformers", reason="the parity tests need transformers (the test extra)")

FRAMES, CROP, N, MASKED = 4, 48, 18, 12


@pytest.fixture(scope="module")
def hf_pretraining(tmp_path_factory):
    cfg = transformers.VideoMAEConfig(image_size=CROP, num_frames=FRAMES, hidden_size=48, num_attention_heads=4,
                                      num_hidden_layers=2, intermediate_size=96, decoder_hidden_size=24,
                                      decoder_num_attention_heads=2, decoder_num_hidden_layers=2,
                                      decoder_intermediate_size=48, use_mean_pooling=False, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    model = transformers.VideoMAEForPreTraining(cfg).eval()
    # transformers fixes the decoder's last LayerNorm at eps 1e-5; ours is 1e-6 everywhere: compare like with like
    model.decoder.norm.eps = 1e-6
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    d = tmp_path_factory.mktemp("videomae") / "pretraining"
    model.save_pretrained(d)
    return d, model


def ours(d):
    w = read_weights(d)
    assert w.format == "Hugging Face VideoMAEForPreTraining" and w.arch.pos_embed == "sincos_1d"
    encoder, decoder = build_encoder_from(w.arch), build_decoder_from(w.arch)
    load_part(encoder, "encoder", w.parts["encoder"], "test", w.arch.pos_embed)
    load_part(decoder, "decoder", w.parts["decoder"], "test", w.arch.pos_embed)
    return VideoMAE(encoder, decoder).eval()


def test_encoder_decoder_and_loss_match_transformers(hf_pretraining):
    d, model = hf_pretraining
    mine = ours(d)
    B = 2
    rng = np.random.default_rng(0)
    masked = [np.sort(rng.choice(N, MASKED, replace=False)) for _ in range(B)]
    visible = [np.setdiff1d(np.arange(N), m) for m in masked]
    bool_masked = torch.zeros(B, N, dtype=torch.bool)
    for b, m in enumerate(masked):
        bool_masked[b, torch.from_numpy(m)] = True
    masks = pack_masks([list(zip(visible, masked))], N)
    video = torch.randn(B, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values=video.permute(0, 2, 1, 3, 4), bool_masked_pos=bool_masked)
        enc_theirs = model.videomae(video.permute(0, 2, 1, 3, 4), bool_masked_pos=bool_masked).last_hidden_state
        ctx = mine.encoder(video, rows=masks.ctx_rows, cu_seqlens=masks.ctx_cu, max_seqlen=masks.ctx_max)
        logits = mine.decoder(ctx, masks)
        P = mine.decoder.out_dim
        loss = mine(video, masks, torch.full((masks.tgt_rows.numel(),), 1.0 / (masks.tgt_rows.numel() * P)))
    assert (ctx.reshape(B, N - MASKED, -1) - enc_theirs).abs().max().item() <= 1e-5
    assert (logits.reshape(B, MASKED, -1) - out.logits).abs().max().item() <= 1e-5
    assert abs(loss.item() - out.loss.item()) <= 1e-5


def test_encoder_exports_to_videomae_model(hf_pretraining, tmp_path):
    d, model = hf_pretraining
    enc = load_encoder(d)
    export(str(d), "hf", str(tmp_path / "vm"))
    theirs = transformers.VideoMAEModel.from_pretrained(tmp_path / "vm").eval()
    video = torch.randn(1, 3, FRAMES, CROP, CROP)
    with torch.no_grad():
        got = theirs(video.permute(0, 2, 1, 3, 4)).last_hidden_state
        assert (got - enc(video)).abs().max().item() <= 1e-5
        assert (got - model.videomae(video.permute(0, 2, 1, 3, 4)).last_hidden_state).abs().max().item() <= 1e-5
    again = load_encoder(tmp_path / "vm")  # and back: exact
    for (k, a), (_, b) in zip(enc.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(CheckpointFormatError, match="holds the encoder only"):
        export(str(d), "hf", str(tmp_path / "vm2"), predictor=True)


def test_sincos_1d_is_videomae_table_at_any_clip_size():
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    from vjepa_fast.models.vit import VisionTransformer

    enc = VisionTransformer("tiny", img_size=32, num_frames=4, pos_embed="sincos_1d")
    torch.testing.assert_close(enc.pos_embed, get_sinusoid_encoding_table(8, 96))
    torch.testing.assert_close(enc.pos_table((3, 2, 3)), get_sinusoid_encoding_table(18, 96)[0])
