"""The VQGAN against the upstream taming fixtures, checkpoint loading, and the codec bundle."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import shared_path, tiny_model
from safetensors import safe_open
from safetensors.torch import load_file

from vqnet.codec.bundle import Codebook, Codec, CodecError, load_codec, save_codec
from vqnet.codec.model import VQGANConfig, VQModel
from vqnet.codec.taming import load_taming_checkpoint
from vqnet.entropy import Prior
from vqnet.training.kmeans import kmeans


@pytest.fixture(scope="module")
def tiny():
    folder = shared_path("fixtures", "taming")
    meta = json.loads((folder / "tiny_vqgan.json").read_text())
    model = VQModel(VQGANConfig.from_dict(meta["config"])).eval()
    model.load_state_dict(load_file(str(folder / "tiny_vqgan.safetensors")), strict=True)
    return model, meta, load_file(str(folder / "tiny_vqgan_io.safetensors"))


@pytest.mark.parametrize("n_embed", [1024, 16384])
def test_state_dict_matches_official_f16_config(n_embed):
    official = json.loads(shared_path("fixtures", "taming", f"keys_vqgan_f16_{n_embed}.json").read_text())
    with torch.device("meta"):
        model = VQModel(VQGANConfig.from_dict(official["config"]))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in official["keys"]]


def test_state_dict_order_matches_tiny(tiny):
    model, meta, _ = tiny
    assert list(model.state_dict()) == [e["key"] for e in meta["state_dict_keys"]]


@pytest.mark.parametrize("case", ["square", "nonsquare"])
def test_forward_matches_upstream(tiny, case):
    model, _, io = tiny
    torch.set_num_threads(1)
    with torch.no_grad():
        enc = model.encoder(io[f"x_{case}"])
        h = model.quant_conv(enc)
        quant, emb_loss, idx = model.quantize(h)
        post = model.post_quant_conv(quant)
        dec = model.decoder(post)
    for name, got in [("enc_out", enc), ("h", h), ("quant", quant), ("post_quant", post), ("emb_loss", emb_loss)]:
        torch.testing.assert_close(got, io[f"{name}_{case}"], atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(dec, io[f"dec_{case}"], atol=5e-5, rtol=1e-4)
    assert torch.equal(idx, io[f"indices_{case}"])
    torch.testing.assert_close(model.decode_indices(idx), io[f"dec_{case}"], atol=5e-5, rtol=1e-4)


def test_legacy_beta_gradients(tiny):
    model, _, io = tiny
    h = model.quant_conv(model.encoder(io["x_square"])).detach().requires_grad_(True)
    _, emb_loss, _ = model.quantize(h)
    g_h, g_cb = torch.autograd.grad(emb_loss, [h, model.quantize.embedding.weight])
    torch.testing.assert_close(g_h, io["grad_emb_loss_wrt_h_square"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_cb, io["grad_emb_loss_wrt_codebook_square"], atol=1e-5, rtol=1e-5)


def test_taming_ckpt_with_loss_keys_loads(tiny, tmp_path):
    model, meta, io = tiny
    sd = dict(model.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.zeros(64, 3, 4, 4)  # what Lightning checkpoints carry
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"state_dict": sd, "global_step": 5}, tmp_path / "last.ckpt")
    loaded = load_taming_checkpoint(tmp_path / "last.ckpt", {"model": {"params": meta["config"]}})
    with torch.no_grad():
        _, _, idx = loaded.encode(io["x_square"])
    assert torch.equal(idx, io["indices_square"])


def test_taming_ckpt_wrong_config_is_refused(tiny, tmp_path):
    model, meta, _ = tiny
    torch.save({"state_dict": model.state_dict()}, tmp_path / "m.ckpt")
    cfg = dict(meta["config"], n_embed=64)
    with pytest.raises(CodecError, match="does not match|size mismatch"):
        load_taming_checkpoint(tmp_path / "m.ckpt", cfg)


def test_unsafe_pickle_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CodecError, match="weights_only"):
        load_taming_checkpoint(tmp_path / "evil.ckpt", VQGANConfig())


def _small_codec() -> Codec:
    model = tiny_model()
    base = Codebook.from_model(model)
    small = Codebook(
        8,
        kmeans(base.embedding, 8),
        base.quant_conv_weight,
        base.quant_conv_bias,
        base.post_quant_conv_weight,
        base.post_quant_conv_bias,
        Prior.from_counts(np.arange(1, 9)),
    )
    pairs = np.random.default_rng(3).integers(0, 20, (32, 32))
    return Codec(model, {32: replace(base, prior=Prior.uniform(32).with_context(pairs)), 8: small})


def test_bundle_roundtrip_and_codec_shapes(tmp_path):
    codec = _small_codec()
    sha = save_codec(codec, tmp_path / "c.safetensors")
    loaded = load_codec(tmp_path / "c.safetensors")
    assert loaded.ks == [32, 8] and loaded.model_id == sha[:16]
    assert np.allclose(loaded.codebooks[8].prior.probs, codec.codebooks[8].prior.probs, atol=1e-7)
    assert np.array_equal(loaded.codebooks[32].prior.context, codec.codebooks[32].prior.context)
    assert loaded.codebooks[8].prior.context is None  # a table is optional
    img = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)  # not a multiple of f=4
    for K in (32, 8):
        idx = loaded.encode(img, K)
        assert idx.shape == (10, 12) and idx.min() >= 0 and idx.max() < K
        out = loaded.decode(idx, K, img.shape[:2])
        assert out.shape == img.shape and out.dtype == np.uint8
    # fp16 storage: the reloaded model quantises (almost) like the original
    assert (loaded.encode(img, 32) == codec.encode(img, 32)).mean() > 0.9
    assert loaded.codebooks[32].prior.pair is None
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as fh:
        assert fh.metadata()["version"] == "1"  # what every reader reads


def test_bundle_with_a_pair_exponent_is_version_2(tmp_path):
    codec = _small_codec()
    codec.codebooks[32] = replace(codec.codebooks[32], prior=codec.codebooks[32].prior.with_pair(0.75))
    save_codec(codec, tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as fh:
        assert fh.metadata()["version"] == "2" and "priors.K32.pair" in set(fh.keys())
    loaded = load_codec(tmp_path / "c.safetensors")
    assert loaded.codebooks[32].prior.pair == 0.75 and loaded.codebooks[8].prior.pair is None


def test_bundle_keeps_raw_codebooks(tmp_path):
    codec = _small_codec()
    raw = codec.codebooks[8]
    codec.codebooks[8] = replace(
        raw,
        embedding=raw.embedding + 0.1,
        post_quant_conv_bias=raw.post_quant_conv_bias - 0.1,
        prior=Prior.from_counts(np.arange(8, 0, -1)),
        finetuned=True,
        raw=raw,
    )
    save_codec(codec, tmp_path / "c.safetensors")
    with safe_open(str(tmp_path / "c.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
    assert {"codebooks.K8.raw.embedding", "priors.K8.raw"} <= names and "codebooks.K32.raw.embedding" not in names
    loaded = load_codec(tmp_path / "c.safetensors")
    tuned = loaded.codebooks[8]
    assert tuned.finetuned and not tuned.raw.finetuned and loaded.codebooks[32].raw is None
    for field in (
        "embedding",
        "quant_conv_weight",
        "quant_conv_bias",
        "post_quant_conv_weight",
        "post_quant_conv_bias",
    ):
        assert torch.equal(getattr(tuned.raw, field), getattr(raw, field).half().float()), field
    assert not torch.equal(tuned.embedding, tuned.raw.embedding)
    assert np.allclose(tuned.raw.prior.probs, raw.prior.probs, atol=1e-7)
    assert not np.allclose(tuned.prior.probs, tuned.raw.prior.probs)
    ablation = loaded.raw_codec()
    assert ablation.codebooks[8] is tuned.raw and ablation.codebooks[32] is loaded.codebooks[32]
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert ablation.decode(ablation.encode(img, 8), 8).shape == img.shape


def test_bundle_errors(tmp_path):
    codec = _small_codec()
    with pytest.raises(CodecError, match="no codebook with K=64"):
        codec.codebook(64)
    with pytest.raises(CodecError, match=r"\[0, 8\)"):
        codec.decode(np.full((2, 2), 9), 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CodecError, match="not a readable"):
        load_codec(bad)
    with pytest.raises(CodecError, match="not found"):
        load_codec(tmp_path / "missing.safetensors")
    with pytest.raises(CodecError, match="no codebooks from before fine-tuning"):
        codec.raw_codec()


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    pts = torch.from_numpy(np.concatenate([c + rng.normal(0, 0.1, (50, 2)) for c in centers]).astype(np.float32))
    got = kmeans(pts, 3, seed=1).numpy()
    assert np.abs(np.sort(got, axis=0) - np.sort(centers, axis=0)).max() < 0.1
    with pytest.raises(ValueError):
        kmeans(pts, 0)


def test_default_model_ships_and_works():
    codec = load_codec()
    assert len(codec.ks) >= 3 and codec.model.config.ddconfig.downsample_factor == 16
    tuned = [K for K, cb in codec.codebooks.items() if cb.finetuned]
    assert tuned and all(codec.codebooks[K].raw is not None for K in tuned)  # the ablation ships too
    assert all(cb.prior.context is not None for cb in codec.codebooks.values())
    img = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    idx = codec.encode(img, codec.ks[-1])
    assert idx.shape == (4, 5)
    assert codec.decode(idx, codec.ks[-1], (64, 80)).shape == (64, 80, 3)


def test_neighbour_pairs_count_both_directions():
    from vqnet.training.ladder import neighbour_pairs

    grid = np.array([[0, 1], [2, 1]])
    pairs = neighbour_pairs(grid, 3)
    expected = np.zeros((3, 3))
    for a, b in [(0, 1), (2, 1), (0, 2), (1, 1)]:  # left->right twice, top->bottom twice
        expected[a, b] += 1
    np.testing.assert_array_equal(pairs, expected)


def test_swap_decoder_keeps_every_index_map(tmp_path):
    import copy

    from vqnet.restore.store import index_fingerprint
    from vqnet.training.ladder import swap_decoder

    codec = _small_codec()
    tuned = copy.deepcopy(codec.model)
    with torch.no_grad():
        for p in (*tuned.decoder.parameters(), *tuned.post_quant_conv.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    img = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    latents = [codec.encode_latent(img)]
    swapped = swap_decoder(codec, tuned, latents)
    for K in codec.ks:
        assert index_fingerprint(swapped, K) == index_fingerprint(codec, K)
        idx = codec.encode(img, K)
        assert np.array_equal(swapped.encode(img, K), idx)
        assert not np.array_equal(swapped.decode(idx, K), codec.decode(idx, K))  # the new decoder is used
        assert swapped.codebook(K).prior.context is not None
    with torch.no_grad():
        np.testing.assert_allclose(
            swapped.decode(codec.encode(img, 32), 32),
            Codec(tuned, {32: Codebook.from_model(tuned)}).decode(codec.encode(img, 32), 32),
            atol=1,
        )
    moved = copy.deepcopy(tuned)
    with torch.no_grad():
        next(moved.encoder.parameters()).add_(0.1)
    with pytest.raises(CodecError, match="encoder differs"):
        swap_decoder(codec, moved)
    codec.codebooks[8] = replace(codec.codebooks[8], finetuned=True)
    with pytest.raises(CodecError, match="fine-tuned"):
        swap_decoder(codec, tuned)


def _exercised_norms(model: VQModel) -> VQModel:
    """A random init's GroupNorm affines are 1/0: move them so that copying them wrong would show."""
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(("ch", "blocks"), [(64, None), (None, 3), (64, 2)])
def test_grown_decoder_computes_the_same_image(ch, blocks):
    from vqnet.codec.model import grow_decoder

    model = _exercised_norms(tiny_model())  # has attention (q is rescaled, new attn blocks added)
    big = grow_decoder(model, ch, blocks)
    assert big.config.decoder_ddconfig.ch == (ch or 32) and big.config.decoder_ddconfig.num_res_blocks == (blocks or 1)
    assert big.config.encoder_side == model.config
    assert sum(p.numel() for p in big.decoder.parameters()) > 1.5 * sum(p.numel() for p in model.decoder.parameters())
    z = torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(big.decode(z), model.decode(z), atol=2e-5, rtol=0)
        for part in ("encoder", "quant_conv", "quantize", "post_quant_conv"):
            for k, v in getattr(model, part).state_dict().items():
                assert torch.equal(getattr(big, part).state_dict()[k], v), (part, k)
    big.decode(z).square().mean().backward()
    if ch:  # the two copies of a channel start equal but must not stay equal: their gradients differ
        g = big.decoder.conv_in.weight.grad
        assert not torch.allclose(g[0::2], g[1::2])
    if blocks:  # an added block starts as the identity but learns: its zeroed conv gets a gradient
        added = big.decoder.up[0].block[blocks].conv2.weight
        assert not added.any() and added.grad.abs().sum() > 0


def test_grow_decoder_refuses_what_it_cannot_do_exactly():
    from vqnet.codec.model import grow_decoder

    model = tiny_model()
    with pytest.raises(ValueError, match="multiple"):
        grow_decoder(model, 48)
    with pytest.raises(ValueError, match="cannot shrink"):
        grow_decoder(grow_decoder(model, res_blocks=2), res_blocks=1)


def test_grown_decoder_config_round_trips_and_stays_taming_shaped(tmp_path):
    from vqnet.codec.model import grow_decoder
    from vqnet.restore.store import index_fingerprint
    from vqnet.training.ladder import swap_decoder

    cfg = tiny_model().config
    assert set(cfg.to_dict()) == {"embed_dim", "n_embed", "ddconfig"}  # upstream's keys: fingerprints hold
    big_cfg = replace(cfg, decoder_ch=96, decoder_res_blocks=2)
    assert VQGANConfig.from_dict(json.loads(json.dumps(big_cfg.to_dict()))) == big_cfg
    codec = _small_codec()
    big = grow_decoder(codec.model, 64, 2)
    with torch.no_grad():
        for p in big.decoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    swapped = swap_decoder(codec, big)
    save_codec(swapped, tmp_path / "w.safetensors")
    loaded = load_codec(tmp_path / "w.safetensors")
    assert loaded.model.config == big.config
    img = np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for K in codec.ks:
        idx = codec.encode(img, K)
        assert index_fingerprint(loaded, K) == index_fingerprint(codec, K)
        assert np.array_equal(loaded.encode(img, K), idx)
        np.testing.assert_allclose(loaded.decode(idx, K).astype(int), swapped.decode(idx, K).astype(int), atol=2)
    with pytest.raises(CodecError, match="other than its decoder's size"):
        swap_decoder(codec, VQModel(replace(cfg, n_embed=16, decoder_ch=64)))
