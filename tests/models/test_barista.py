"""BaRISTA model: published parameter counts, tokenizer, spatial masking, padding, EMA, export."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from neurofm.atlas import SpatialVocab
from neurofm.models.barista import (
    Barista, BaristaBackbone, BaristaConfig, BaristaEncoder, ChannelReconstructionHead, CNNTokenizer, PooledHead,
    TokenWeightingHead, spatial_mask,
)


def small(**kw) -> BaristaConfig:
    base = dict(d_model=16, n_layers=2, n_heads=2, patch_len=32, n_patches=3, n_parcels=12, dropout=0.0,
                predictor_dropout=0.0, cnn_chunk=5)
    base.update(kw)
    return BaristaConfig(**base)


def make_batch(cfg: BaristaConfig, B: int = 3, C: int = 8, n_real=None, seed: int = 0, n_parcels: int = 4):
    """A BaRISTA batch by the contract: padded channels are zeros / -1 / 0 and channel_mask False."""
    g = torch.Generator().manual_seed(seed)
    n_real = [C] * B if n_real is None else n_real
    mask = torch.zeros(B, C, dtype=torch.bool)
    for b, n in enumerate(n_real):
        mask[b, :n] = True
    x = torch.randn(B, C, cfg.segment_len, generator=g) * mask[..., None]
    coords = torch.randint(0, 200, (B, C, 3), generator=g).masked_fill(~mask[..., None], -1)
    parcel = torch.randint(1, n_parcels + 1, (B, C), generator=g) * mask
    lobe = torch.randint(1, 21, (B, C), generator=g) * mask
    return {"x": x, "channel_mask": mask, "coords": coords, "parcel": parcel, "lobe": lobe,
            "label": torch.randint(0, 2, (B,), generator=g), "session": torch.zeros(B, dtype=torch.long)}


# -- parameter counts (DESIGN.md 10) -----------------------------------------------------------

@pytest.mark.parametrize("scale, spatial, total", [("coords", 38_400, 869_896), ("parcel", 7_744, 839_240),
                                                   ("lobe", 1_344, 832_840)])
def test_published_parameter_counts(scale, spatial, total):
    enc = BaristaEncoder(BaristaConfig(encode_scale=scale))
    counts = enc.param_counts()
    assert counts == {"blocks": 798_048, "final_norm": 64, "cnn": 616, "projection": 32_768, "spatial": spatial,
                      "total": total}
    assert sum(p.numel() for p in enc.backbone.blocks[0].parameters()) == 66_504
    # the pretraining model adds the EMA tokenizer, the mask token and the predictor (4 Linear(64, 64))
    model = Barista(BaristaConfig(encode_scale=scale))
    assert sum(p.numel() for p in model.parameters()) == total + (616 + 32_768) + 64 + 4 * (64 * 64 + 64)


# -- config ------------------------------------------------------------------------------------

def test_config_json_round_trip_and_validation():
    vocab = SpatialVocab(["ctx_lh_G_front_sup", "Left-Hippocampus"])
    cfg = BaristaConfig.for_vocab(vocab, encode_scale="channel", mask_scale="coords", d_model=32)
    assert cfg.encode_scale == "coords" and cfg.mask_scale == "channel" and cfg.n_parcels == 3
    d = json.loads(json.dumps(cfg.to_dict()))
    again = BaristaConfig.from_dict(d)
    assert again == cfg and again.cnn_dilations == (1, 2, 4, 8, 16)
    assert BaristaEncoder(d).spatial_vocab == vocab
    with pytest.raises(ValueError, match="key 'n_embd': unknown field"):
        BaristaConfig.from_dict({**d, "n_embd": 3})
    with pytest.raises(ValueError, match="encode_scale"):
        BaristaConfig(encode_scale="region")
    with pytest.raises(ValueError, match="mask_scale"):
        BaristaConfig(mask_scale="hemisphere")
    with pytest.raises(ValueError, match="n_parcels"):
        BaristaConfig(n_parcels=2, spatial_vocab=vocab.to_dict())


# -- tokenizer ---------------------------------------------------------------------------------

def test_tokenizer_fast_kernels_equal_the_conv1d_reference_with_gradients():
    """The switch: fast_kernels (patch convolution, recomputed chunks) vs nn.Conv1d + torch
    checkpoint, same weights: same tokens, same gradients."""
    torch.manual_seed(0)
    cfg = BaristaConfig(d_model=8, patch_len=64, cnn_chunk=7)  # the published CNN on 64-sample patches
    tok = CNNTokenizer(cfg)
    plain = CNNTokenizer(cfg.replace(fast_kernels=False))
    plain.load_state_dict(tok.state_dict())
    assert sum(p.numel() for p in tok.blocks.parameters()) == 616
    p = torch.randn(20, 64)
    out = tok(p)
    ref = plain(p)
    assert out.shape == (20, 8)
    assert torch.allclose(out, ref, atol=1e-5)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, list(tok.parameters()), g)
    ref_grads = torch.autograd.grad(ref, list(plain.parameters()), g)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-4 * max(1.0, float(r.abs().max())))
    with pytest.raises(ValueError, match="patch_len"):
        tok(torch.randn(2, 63))


def test_tokenizer_runs_the_hand_kernels_on_cpu_only_and_larger_passes_on_cuda():
    """On CUDA the hand kernels' per-tap products were ~30,000 launches per paper-size step
    (bench/gpu.py on an H200): there the references run, CUDA_CHUNK_FACTOR x cnn_chunk patches
    at a time. CPU is unchanged."""
    from neurofm.models.barista import CUDA_CHUNK_FACTOR

    tok = CNNTokenizer(BaristaConfig(d_model=8, patch_len=64, cnn_chunk=7))
    assert tok._use_fast(torch.zeros(1, 64)) is True
    assert tok._use_fast(torch.zeros(1, 64, device="meta")) is False  # any non-CPU device
    assert not CNNTokenizer(BaristaConfig(fast_kernels=False))._use_fast(torch.zeros(1, 64))
    assert tok._chunk_size("cpu") == 7 and tok._chunk_size("cuda") == 7 * CUDA_CHUNK_FACTOR
    assert CNNTokenizer(BaristaConfig(cnn_chunk=0))._chunk_size("cuda") == 0  # 0: every patch in one pass


def test_token_scales_are_what_the_layernorms_remove_on_both_paths_and_off_by_default():
    """``token_scales``: the tokenizer keeps the log standard deviation each parameter-free
    LayerNorm removes (42 maps at widths 1-5-5-5-5-1) and the patch's log RMS, and adds
    Linear(43 -> d) of them to the token; fast and plain paths agree, frozen or not. Off (the
    published tokenizer) adds no parameter."""
    torch.manual_seed(0)
    cfg = BaristaConfig(d_model=8, patch_len=64, cnn_chunk=7, token_scales=True)
    assert CNNTokenizer(cfg.replace(token_scales=False)).scale_proj is None
    assert BaristaConfig().token_scales is False and "token_scales" in BaristaConfig.SHAPE_FIELDS
    tok = CNNTokenizer(cfg)
    assert torch.equal(tok.scale_proj.weight, torch.zeros(8, 43))  # zero at init (next test)
    with torch.no_grad():  # a trained projection, so the sum below is exercised
        tok.scale_proj.weight.normal_(std=0.2)
    plain = CNNTokenizer(cfg.replace(fast_kernels=False))
    plain.load_state_dict(tok.state_dict())
    p = torch.randn(20, 64) * torch.linspace(0.1, 3.0, 20)[:, None]
    h, scales = tok.cnn_and_scales(p)
    assert scales.shape == (20, 43) and tok.n_scales == 43
    block = tok.blocks[0]
    first = block.conv1(p[:, None])  # block 0's first LayerNorm input, (P, 5, L)
    assert torch.allclose(scales[:, :5], 0.5 * torch.log(first.var(-1, unbiased=False) + block.eps), atol=1e-5)
    assert torch.allclose(scales[:, -1], 0.5 * torch.log(p.pow(2).mean(-1) + block.eps), atol=1e-5)
    out = tok(p)
    assert torch.allclose(out, tok.proj(h) + tok.scale_proj(scales), atol=1e-5)
    assert torch.allclose(out, plain(p), atol=1e-5)
    g = torch.autograd.grad(out.sum(), tok.scale_proj.weight)[0]
    assert g.abs().sum() > 0
    tok.blocks.requires_grad_(False)  # fine-tuning: CNN frozen, both projections train
    assert torch.allclose(tok(p), out, atol=1e-6)


def _hg_patches(n: int = 1200, L: int = 64, fs: float = 256.0, seed: int = 0):
    """Patches of a 1/f-like background plus high gamma (70-120 Hz) of a random amplitude, each
    z-scored as BaRISTA's input is, and their own log high-gamma power."""
    import numpy as np
    from scipy import signal

    from neurofm.baselines import band_power

    rng = np.random.default_rng(seed)
    bg = signal.lfilter([1.0], [1.0, -0.95], rng.standard_normal((n, 3 * L)), axis=1)[:, -L:]
    sos = signal.butter(4, [70.0, 120.0], "bandpass", fs=fs, output="sos")
    hg = signal.sosfilt(sos, rng.standard_normal((n, 3 * L)), axis=1)[:, -L:]
    x = bg / bg.std() + np.exp(rng.uniform(-2.0, 1.0, (n, 1))) * hg / hg.std()
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return torch.tensor(x, dtype=torch.float32), band_power(x, fs, {"high_gamma": (70.0, 128.0)})[:, 0]


@pytest.mark.parametrize("features", ["token", "scales"])
def test_a_patch_high_gamma_power_is_linearly_readable_only_from_the_scales_token_scales_adds(features):
    """Why the option exists (bench/barista_token_power.py): every LayerNorm of the faithful
    tokenizer sets each map's variance to 1 inside the patch, so a ridge from a random-init
    token to its z-scored patch's log high-gamma power finds nothing (R2 ~0.01-0.04 over seeds);
    from the removed scales, which the option's projection reads, it finds it (R2 0.83-0.92)."""
    from neurofm.baselines import Ridge
    from neurofm.metrics import r2_score

    x, y = _hg_patches()
    torch.manual_seed(0)
    tok = CNNTokenizer(BaristaConfig(patch_len=64, n_patches=1, token_scales=True)).eval()
    with torch.no_grad():
        _, scales = tok.cnn_and_scales(x)
        feats = (tok(x) if features == "token" else scales).numpy()
    h = len(y) // 2
    r2 = r2_score(y[h:], Ridge().fit(feats[:h], y[:h]).predict(feats[h:]))
    assert (r2 > 0.6) if features == "scales" else (r2 < 0.2), r2


def test_token_scales_start_as_the_published_model_exactly():
    """The option's projection starts at zero (also after the encoder's weight init) and draws
    nothing from the random generator, so under the same seed every other weight equals the
    published model's, and tokens, encoder outputs and the pretraining loss at init are the
    faithful ones bit for bit; training then moves only what helps."""
    cfg = small()
    torch.manual_seed(0)
    faithful = Barista(cfg)
    torch.manual_seed(0)
    model = Barista(cfg.replace(token_scales=True))
    for m in (model.encoder.tokenizer, model.target_tokenizer):
        assert torch.equal(m.scale_proj.weight, torch.zeros_like(m.scale_proj.weight))
    mine, theirs = model.state_dict(), faithful.state_dict()
    assert sorted(set(mine) - set(theirs)) == ["encoder.tokenizer.scale_proj.weight",
                                              "target_tokenizer.scale_proj.weight"]
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    assert torch.equal(torch.rand(3), (torch.manual_seed(0), Barista(cfg), torch.rand(3))[-1])  # same draws after
    batch = make_batch(cfg)
    faithful.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(model.encoder(batch), faithful.encoder(batch))
        a = faithful.pretrain_loss(batch, generator=torch.Generator().manual_seed(0))
        b = model.pretrain_loss(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["loss"], b["loss"])
    assert torch.equal(BaristaEncoder(cfg.replace(token_scales=True)).tokenizer.scale_proj.weight,
                       torch.zeros(cfg.d_model, model.encoder.tokenizer.n_scales))


def test_checkpointed_chunks_match_plain_backprop():
    """Recomputed chunks (the memory-saving path) give the same gradients, input's included."""
    torch.manual_seed(0)
    a = CNNTokenizer(small(cnn_chunk=4, checkpoint_cnn=True))
    b = CNNTokenizer(small(cnn_chunk=0, checkpoint_cnn=False))
    b.load_state_dict(a.state_dict())
    p = torch.randn(10, 32)
    pa, pb = p.clone().requires_grad_(), p.clone().requires_grad_()
    g = torch.randn(10, 16)
    ga = torch.autograd.grad(a(pa), [pa] + list(a.parameters()), g)
    gb = torch.autograd.grad(b(pb), [pb] + list(b.parameters()), g)
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5)
    b.blocks.requires_grad_(False)  # frozen CNN (fine-tuning): only the projection gets a gradient
    a.blocks.requires_grad_(False)
    a(p).sum().backward()
    assert a.proj.weight.grad is not None and all(q.grad is None for q in a.blocks.parameters())


def test_recomputed_mlp_matches_plain_mlp():
    torch.manual_seed(0)
    cfg = small()
    a, b = BaristaBackbone(cfg).blocks[0].mlp, BaristaBackbone(cfg).blocks[0].mlp  # fast_kernels: recomputed
    assert a.kind == "gated" and a.recompute
    b.load_state_dict(a.state_dict())
    b.recompute = False
    x = torch.randn(2, 7, 16)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    assert torch.allclose(ya, yb, atol=1e-6)
    g = torch.randn_like(ya)
    for u, v in zip(torch.autograd.grad(ya, [xa] + list(a.parameters()), g),
                    torch.autograd.grad(yb, [xb] + list(b.parameters()), g)):
        assert torch.allclose(u, v, atol=1e-5)


def test_fast_kernels_switch_keeps_the_pretraining_loss_and_gradients():
    """The whole model with fast_kernels on (default) and off (plain PyTorch): same loss, same
    gradient for every parameter, with the CNN checkpointed as in training."""
    cfg = small(checkpoint_cnn=True)
    torch.manual_seed(0)
    fast = Barista(cfg)
    plain = Barista(cfg.replace(fast_kernels=False))
    plain.load_state_dict(fast.state_dict())
    batch = make_batch(cfg, n_real=[8, 5, 6])
    mask = fast.choose_mask(batch, torch.Generator().manual_seed(1))
    lf, lp = fast.pretrain_loss(batch, mask)["loss"], plain.pretrain_loss(batch, mask)["loss"]
    assert torch.allclose(lf, lp, rtol=1e-5)
    lf.backward()
    lp.backward()
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        if a.grad is None:
            assert b.grad is None, name
            continue
        assert torch.allclose(a.grad, b.grad, atol=1e-5 * max(1.0, float(b.grad.abs().max()))), name


def test_tokenizer_is_univariate_per_patch():
    """A patch's token depends only on that patch (shared CNN, 'same' padding inside the patch)."""
    torch.manual_seed(0)
    tok = CNNTokenizer(small())
    p = torch.randn(6, 32)
    q = p.clone()
    q[3] += torch.randn(32)
    a, b = tok(p), tok(q)
    assert torch.allclose(a[[0, 1, 2, 4, 5]], b[[0, 1, 2, 4, 5]], atol=1e-6)
    assert not torch.allclose(a[3], b[3])


# -- masking -----------------------------------------------------------------------------------

def test_channel_scale_mask_ratio_is_closest_to_target():
    g = torch.Generator().manual_seed(0)
    cat = torch.arange(1, 21).expand(50, 20)
    m = spatial_mask(cat, None, 0.3, g)
    assert (m.sum(1) == 6).all()  # 30% of 20 channels, every sample
    real = torch.ones(4, 20, dtype=torch.bool)
    real[1, 10:] = False  # 10 real channels -> 3 masked
    m = spatial_mask(torch.arange(1, 21).expand(4, 20), real, 0.3, g)
    assert m.sum(1).tolist() == [6, 3, 6, 6] and not (m & ~real).any()


@pytest.mark.parametrize("scale", ["parcel", "lobe"])
def test_whole_categories_are_masked(scale):
    g = torch.Generator().manual_seed(1)
    B, C = 200, 24
    real = torch.rand(B, C, generator=g) < 0.85
    real[:, :3] = True
    n_cat = 8 if scale == "parcel" else 5
    cat = torch.randint(1, n_cat + 1, (B, C), generator=g)
    cat[:, 0] = 0  # unknown channels are masked alone
    cat[:, 1] = 0
    m = spatial_mask(cat * real, real, 0.3, g)
    assert not (m & ~real).any()  # padding never chosen
    for b in range(B):
        r = real[b]
        assert m[b][r].any() and (~m[b][r]).any()  # >= 1 masked and >= 1 observed
        for k in range(1, n_cat + 1):  # a category is masked whole or not at all
            members = m[b][(cat[b] == k) & r]
            assert members.all() or not members.any()
    ratio = (m.sum(1).float() / real.sum(1)).mean()
    assert 0.22 < float(ratio) < 0.38
    # unknown channels are their own categories: sometimes one is masked without the other
    assert (m[:, 0] != m[:, 1]).any()


def test_single_category_sample_falls_back_to_channels():
    cat = torch.ones(2, 10, dtype=torch.long)
    cat[1, 5:] = 2
    with pytest.warns(UserWarning, match="one category"):
        m = spatial_mask(cat, None, 0.3, torch.Generator().manual_seed(0))
    assert m[0].sum() == 3  # channel scale for the single-parcel sample
    assert m[1, :5].all() != m[1, 5:].all()  # whole parcels for the other
    with pytest.raises(ValueError, match="at least 2 real channels"):
        spatial_mask(cat, torch.tensor([[True] + [False] * 9, [True] * 10]), 0.3)


@pytest.mark.parametrize("mask_scale", ["channel", "parcel", "lobe"])
def test_masked_channels_are_hidden_at_every_patch(mask_scale):
    """Changing a masked channel's signal (any patch) changes no encoder output: every patch of
    it entered as the mask token. Changing it does change the targets."""
    torch.manual_seed(0)
    cfg = small(mask_scale=mask_scale)
    model = Barista(cfg).eval()
    batch = make_batch(cfg)
    mask = model.choose_mask(batch, torch.Generator().manual_seed(3))
    assert mask.any()
    h = model.encoder(batch, mask=mask, mask_token=model.mask_token)
    other = dict(batch, x=batch["x"] + 5.0 * mask[..., None] * torch.randn_like(batch["x"]))
    h2 = model.encoder(other, mask=mask, mask_token=model.mask_token)
    assert torch.allclose(h, h2, atol=1e-6)
    l1 = model.pretrain_loss(batch, mask=mask)["loss"]
    l2 = model.pretrain_loss(other, mask=mask)["loss"]
    assert not torch.isclose(l1, l2)


def test_pretrain_loss_outputs():
    torch.manual_seed(0)
    cfg = small()
    model = Barista(cfg)
    out = model.pretrain_loss(make_batch(cfg, n_real=[8, 5, 3]), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "latent_mse", "pred_std", "target_std", "latent_r2", "mask_ratio"}
    assert torch.equal(out["loss"].detach(), out["latent_mse"])  # power_target 0: the published objective
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"] > 0
    assert out["pred_std"] > 0 and out["target_std"] > 0
    assert 0.15 < float(out["mask_ratio"]) < 0.45
    assert float(out["latent_r2"]) < 1.0


def test_latent_r2_is_zero_for_the_mean_target_and_one_for_the_target():
    """The collapse watch: a predictor that outputs the batch's mean target (the trivial
    solution) scores latent R2 0 whatever the targets' scale; the exact targets score 1."""
    torch.manual_seed(0)
    cfg = small()
    model = Barista(cfg).eval()
    batch = make_batch(cfg, n_real=[8, 5, 3])
    mask = model.choose_mask(batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        patches = model.encoder.patches(batch["x"])[mask]
        target = model.target_tokenizer(patches.reshape(-1, cfg.patch_len)).view(*patches.shape[:2], -1)
    for scale in (1.0, 100.0):
        with torch.no_grad():
            model.target_tokenizer.proj.weight.mul_(scale)
        t = target * scale
        for pred, want in ((t.reshape(-1, t.shape[-1]).mean(0).expand_as(t), 0.0), (t, 1.0)):
            model.predictor.forward = lambda h, pred=pred: pred  # noqa: B023
            out = model.pretrain_loss(batch, mask=mask)
            assert float(out["latent_r2"]) == pytest.approx(want, abs=1e-4)
            if want == 0.0:
                assert float(out["pred_std"]) == pytest.approx(0.0, abs=1e-4)
        with torch.no_grad():
            model.target_tokenizer.proj.weight.div_(scale)


# -- the band-power pretraining target (power_target) ----------------------------------------

def power_small(**kw) -> BaristaConfig:
    """``small`` at a rate whose 32-sample patches resolve bands (8 Hz bins at 256 Hz)."""
    return small(sampling_rate=256.0, **kw)


def test_resolved_bands_are_the_canonical_bands_a_window_resolves():
    from neurofm.nn.spectral import BANDS, resolved_bands

    # 64 samples at 256 Hz: 4 Hz bins 4..124 (DC and Nyquist excluded); delta [1, 4) holds none
    assert resolved_bands(256.0, 64) == {"theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0),
                                         "gamma": (30.0, 70.0), "high_gamma": (70.0, 128.0)}
    assert list(resolved_bands(2048.0, 2048)) == list(BANDS)  # 1 Hz bins: every band
    assert list(resolved_bands(256.0, 32)) == ["alpha", "beta", "gamma", "high_gamma"]  # 8 Hz bins: 8 in alpha
    assert resolved_bands(100.0, 4) == {"beta": (13.0, 30.0)}  # one bin, 25 Hz
    assert resolved_bands(2.0, 4) == {}  # one bin, 0.5 Hz: below every band
    with pytest.raises(ValueError, match="power_target.*resolves none"):
        Barista(small(patch_len=4, n_patches=3, sampling_rate=2.0, power_target=1.0))
    with pytest.raises(ValueError, match="power_target must be a finite weight"):
        BaristaConfig(power_target=-0.1)


def test_power_target_zero_is_the_published_objective_and_the_term_changes_no_other_draw():
    """Off (default): no head, ``loss`` is the published masked-latent MSE. On: under the same
    seed every other weight is the published model's, the random stream after construction and
    after a training-mode step (dropout, mask) is the same, the latent MSE is the published loss
    bit for bit, and ``loss = latent_mse + power_target * power_mse``."""
    cfg = power_small(dropout=0.1, predictor_dropout=0.1)
    torch.manual_seed(0)
    faithful = Barista(cfg)
    after_faithful = torch.rand(3)
    torch.manual_seed(0)
    model = Barista(cfg.replace(power_target=0.5))
    assert torch.equal(torch.rand(3), after_faithful)  # the head's init drew on a forked generator
    assert faithful.power_head is None and faithful.power_bands == {}
    mine, theirs = model.state_dict(), faithful.state_dict()
    assert sorted(set(mine) - set(theirs)) == ["power_head.bias", "power_head.weight"]
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    batch = make_batch(cfg, n_real=[8, 5, 3])
    # the published loss, written out: MSE of the predictor at the masked tokens to the EMA tokens
    mask = faithful.choose_mask(batch, torch.Generator().manual_seed(1))
    faithful.eval()
    with torch.no_grad():
        h = faithful.encoder(batch, mask=mask, mask_token=faithful.mask_token).transpose(1, 2)[mask]
        tgt = faithful.target_tokenizer(faithful.encoder.patches(batch["x"])[mask].reshape(-1, cfg.patch_len))
        want = F.mse_loss(faithful.predictor(h).reshape(-1, cfg.d_model), tgt)
        assert torch.equal(faithful.pretrain_loss(batch, mask=mask)["loss"], want)
    faithful.train(), model.train()
    outs, states = [], []
    for m in (faithful, model):
        torch.manual_seed(7)
        outs.append(m.pretrain_loss(batch))
        states.append(torch.get_rng_state())
    a, b = outs
    assert torch.equal(states[0], states[1])
    assert torch.equal(a["loss"], a["latent_mse"]) and torch.equal(b["latent_mse"], a["loss"].detach())
    assert {"power_mse", "power_r2"} <= set(b) and "power_mse" not in a
    assert torch.allclose(b["loss"], b["latent_mse"] + 0.5 * b["power_mse"])
    assert float(b["power_r2"]) == pytest.approx(1.0 - float(b["power_mse"]), abs=1e-6)  # unit-variance targets


def test_power_target_gradient_reaches_the_tokenizer_and_backbone_not_the_ema_targets():
    """The masked channel's input is hidden, so the power term can only be met through the
    observed channels' tokens: its gradient reaches the online CNN, the projection and the
    backbone (and the head), never the EMA target tokenizer."""
    torch.manual_seed(0)
    cfg = power_small(power_target=1.0)
    model = Barista(cfg)
    batch = make_batch(cfg)
    mask = model.choose_mask(batch, torch.Generator().manual_seed(0))
    out = model.pretrain_loss(batch, mask=mask)
    (out["loss"] - out["latent_mse"]).backward()  # latent_mse is detached: this is the latent term's graph too
    latent = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    torch.manual_seed(0)
    faithful = Barista(cfg.replace(power_target=0.0))
    faithful.pretrain_loss(batch, mask=mask)["loss"].backward()
    grads = {n: p.grad for n, p in faithful.named_parameters() if p.grad is not None}
    # the power term's own gradient: total (power model) minus latent-only (faithful, same weights)
    for name in ("encoder.tokenizer.blocks.0.conv1.weight", "encoder.tokenizer.proj.weight",
                 "encoder.backbone.blocks.0.attn.qkv.weight", "encoder.backbone.blocks.1.mlp.fc.weight"):
        assert not torch.allclose(latent[name], grads[name]), name
    assert latent["power_head.weight"].abs().sum() > 0
    assert not any(n.startswith("target_tokenizer") for n in latent)


def test_power_positions_all_reads_every_real_token_and_masked_only_the_masked():
    """"masked": the head's targets are the masked patches' powers; "all": every real (channel,
    patch) token's, padding never. Same latent term either way."""
    torch.manual_seed(0)
    cfg = power_small(power_target=1.0)
    model = Barista(cfg).eval()
    batch = make_batch(cfg, n_real=[8, 5, 3])
    mask = model.choose_mask(batch, torch.Generator().manual_seed(0))
    seen = []
    model.power_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    with torch.no_grad():
        a = model.pretrain_loss(batch, mask=mask)
        model.config = cfg.replace(power_positions="all")
        b = model.pretrain_loss(batch, mask=mask)
    assert seen == [int(mask.sum()) * cfg.n_patches, 16 * cfg.n_patches]  # masked tokens; all 8 + 5 + 3 real
    assert torch.equal(a["latent_mse"], b["latent_mse"]) and not torch.equal(a["power_mse"], b["power_mse"])
    with pytest.raises(ValueError, match="power_positions"):
        power_small(power_positions="observed")


def test_power_target_config_round_trip_reload_and_export(tmp_path):
    """The weight round-trips through the config (JSON and a saved folder, head included); the
    exported encoder has the published encoder's weights and shapes (the head stays in
    Barista) and loads into an encoder built without the option, and from its folder."""
    from neurofm.hub import load_pretrained

    cfg = power_small(power_target=0.25)
    assert BaristaConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert BaristaConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "power_target"}).power_target == 0
    torch.manual_seed(0)
    model = Barista(cfg).eval()
    model.save_pretrained(tmp_path / "pre")
    back = load_pretrained(tmp_path / "pre").eval()
    assert back.config.power_target == 0.25 and torch.equal(back.power_head.weight, model.power_head.weight)
    batch = make_batch(cfg)
    with torch.no_grad():
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        a, b = model.pretrain_loss(batch, generator=g()), back.pretrain_loss(batch, generator=g())
    assert torch.allclose(a["loss"], b["loss"]) and torch.allclose(a["power_mse"], b["power_mse"])
    enc = model.export_encoder().eval()
    plain = BaristaEncoder(cfg.replace(power_target=0.0))
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(enc.state_dict())  # strict
    enc.save_pretrained(tmp_path / "enc")
    again = BaristaEncoder.from_pretrained(tmp_path / "enc").eval()
    plain.eval()
    with torch.no_grad():
        assert torch.allclose(again(batch), enc(batch), atol=1e-6)
        assert torch.allclose(plain(batch), enc(batch), atol=1e-6)


# -- encoding scale, padding, batching ---------------------------------------------------------

def test_encoding_scale_changes_only_the_spatial_embedding():
    torch.manual_seed(0)
    encs = {s: BaristaEncoder(small(encode_scale=s)).eval() for s in ("coords", "parcel", "lobe")}
    ref = encs["parcel"]
    shared = {k: v for k, v in ref.state_dict().items() if not k.startswith("spatial.")}
    for s, enc in encs.items():
        keys = set(enc.state_dict())
        assert {k for k in keys if not k.startswith("spatial.")} == set(shared)
        enc.load_state_dict({**enc.state_dict(), **shared})
    batch = make_batch(small())
    outs = {s: e(batch) for s, e in encs.items()}
    assert not torch.allclose(outs["parcel"], outs["lobe"]) and not torch.allclose(outs["coords"], outs["lobe"])
    with torch.no_grad():
        for e in encs.values():
            for p in e.spatial.parameters():
                p.zero_()
    outs = [e(batch) for e in encs.values()]
    assert all(torch.allclose(outs[0], o) for o in outs[1:])


def test_unknown_categories_get_a_zero_embedding():
    for scale, key, unknown in (("coords", "coords", -1), ("parcel", "parcel", 0), ("lobe", "lobe", 0)):
        enc = BaristaEncoder(small(encode_scale=scale))
        batch = make_batch(small())
        batch[key][0, 2] = unknown
        emb = enc.spatial(batch)
        assert torch.equal(emb[0, 2], torch.zeros(16)) and emb[0, 1].abs().sum() > 0
    enc = BaristaEncoder(small(encode_scale="parcel"))
    batch = make_batch(small())
    batch["parcel"][0, 0] = 99
    with pytest.raises(IndexError, match="n_parcels"):
        enc(batch)


@pytest.mark.parametrize("scale", ["coords", "parcel", "lobe"])
def test_padded_channels_change_no_real_output(scale):
    torch.manual_seed(0)
    cfg = small(encode_scale=scale)
    model = Barista(cfg).eval()
    enc = model.encoder
    batch = make_batch(cfg, B=2, C=5)
    padded = make_batch(cfg, B=2, C=9, seed=1)  # 4 extra channels per sample, garbage in them
    for key in ("x", "coords", "parcel", "lobe"):
        padded[key][:, :5] = batch[key]
    padded["channel_mask"][:] = False
    padded["channel_mask"][:, :5] = True
    h = enc(batch)
    hp = enc(padded)
    assert torch.allclose(h, hp[:, :, :5], atol=1e-5)
    # same with masking: a fixed mask on the real channels, padding never masked
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[:, 1] = True
    mask_p = torch.zeros(2, 9, dtype=torch.bool)
    mask_p[:, 1] = True
    la = model.pretrain_loss(batch, mask=mask)
    lb = model.pretrain_loss(padded, mask=mask_p)
    assert torch.allclose(la["loss"], lb["loss"], atol=1e-6)
    # pooled head ignores padding too
    head = PooledHead(16, 3).eval()
    assert torch.allclose(head(h, batch["channel_mask"]), head(hp, padded["channel_mask"]), atol=1e-5)


def test_attention_never_crosses_samples():
    torch.manual_seed(0)
    cfg = small()
    enc = BaristaEncoder(cfg).eval()
    batch = make_batch(cfg, n_real=[8, 6, 8])
    other = copy.deepcopy(batch)
    other["x"][1:] = torch.randn_like(other["x"][1:]) * other["channel_mask"][1:, :, None]
    assert torch.allclose(enc(batch)[0], enc(other)[0], atol=1e-6)


@pytest.mark.parametrize("checkpoint_blocks", [False, True])
def test_packed_backbone_gives_the_same_outputs_losses_and_gradients(checkpoint_blocks):
    """Sessions with different channel counts: packing the real tokens (varlen attention, no
    padded token in the MLPs) = the padded batch with key masks; channels excluded in the middle
    of a layout (channel_mask False) are handled like trailing padding."""
    cfg = small(checkpoint_blocks=checkpoint_blocks)
    batch = make_batch(cfg, B=3, C=7, n_real=[7, 4, 5], seed=2)
    batch["channel_mask"][0, 2] = False  # an excluded channel inside sample 0
    masks = torch.zeros(3, 7, dtype=torch.bool)
    masks[0, 1], masks[1, 3], masks[2, 0] = True, True, True
    results = []
    for pack_tokens in (False, True):
        torch.manual_seed(0)
        model = Barista(cfg).train()
        model.encoder.backbone.pack = pack_tokens
        h = model.encoder(batch)
        out = model.pretrain_loss(batch, mask=masks)
        grads = torch.autograd.grad(out["loss"], [p for p in model.parameters() if p.requires_grad])
        results.append((h, out, grads))
    (h0, o0, g0), (h1, o1, g1) = results
    real = batch["channel_mask"][:, None, :].expand_as(h0[..., 0])
    torch.testing.assert_close(h1[real], h0[real], atol=1e-5, rtol=1e-5)
    assert h1[~real].abs().max() == 0  # packed: padded positions come back as zeros
    for key in ("loss", "pred_std", "target_std"):
        torch.testing.assert_close(o1[key], o0[key], atol=1e-6, rtol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_backbone_packs_only_where_flash_attn_serves():
    from neurofm.nn.attention import varlen_is_free

    assert not varlen_is_free(torch.zeros(2, 3))  # CPU: the varlen fallback pads anyway
    assert BaristaEncoder(small()).backbone.pack is None  # auto by default


def test_channel_order_carries_no_position():
    """RoPE is on the patch index only: permuting channels (with their metadata) permutes the output."""
    torch.manual_seed(0)
    cfg = small()
    enc = BaristaEncoder(cfg).eval()
    batch = make_batch(cfg, B=2, C=6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = {k: (v[:, perm] if k in ("x", "channel_mask", "coords", "parcel", "lobe") else v)
                for k, v in batch.items()}
    assert torch.allclose(enc(batch)[:, :, perm], enc(permuted), atol=1e-5)
    # while time order matters
    shifted = dict(batch, x=torch.roll(batch["x"], cfg.patch_len, dims=-1))
    assert not torch.allclose(enc(batch)[:, 1:], enc(shifted)[:, :-1], atol=1e-3)


def test_segment_length_error():
    enc = BaristaEncoder(small())
    batch = make_batch(small())
    batch["x"] = batch["x"][..., :-1]
    with pytest.raises(ValueError, match="n_patches x patch_len"):
        enc(batch)


# -- EMA and export ----------------------------------------------------------------------------

def test_ema_update_math_and_stop_gradient():
    torch.manual_seed(0)
    cfg = small()
    model = Barista(cfg)
    online, target = model.encoder.tokenizer, model.target_tokenizer
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), target.parameters()))
    assert not any(p.requires_grad for p in target.parameters())
    out = model.pretrain_loss(make_batch(cfg))
    out["loss"].backward()
    assert all(p.grad is None for p in target.parameters())  # no gradient reaches the targets
    assert online.proj.weight.grad is not None and online.proj.weight.grad.abs().sum() > 0
    assert model.mask_token.grad is not None
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in target.parameters()]
    model.update_ema(0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    model.update_ema(1.0)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    model.update_ema(0.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))
    with pytest.raises(ValueError, match="momentum"):
        model.update_ema(1.5)


def test_export_encoder_holds_ema_tokenizer_backbone_and_tables():
    torch.manual_seed(0)
    cfg = small(encode_scale="lobe")
    model = Barista(cfg)
    with torch.no_grad():
        for p in model.target_tokenizer.parameters():
            p.add_(1.0)  # make the EMA tokenizer differ from the online one
    enc = model.export_encoder()
    assert isinstance(enc, BaristaEncoder) and enc.config == cfg
    sd, online = enc.state_dict(), model.encoder.state_dict()
    for k, v in model.target_tokenizer.state_dict().items():
        assert torch.equal(sd[f"tokenizer.{k}"], v) and not torch.equal(online[f"tokenizer.{k}"], v)
    for k, v in online.items():
        if not k.startswith("tokenizer."):
            assert torch.equal(sd[k], v)
    assert any(k.startswith("spatial.lobe") for k in sd)
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in model.encoder.parameters())
    assert enc(make_batch(cfg)).shape == (3, cfg.n_patches, 8, cfg.d_model)


def test_token_scales_pretrain_export_and_reload(tmp_path):
    """With ``token_scales`` the pretraining loss trains the scales' projection, the EMA target
    tokenizer has its own copy, the exported encoder carries the EMA one, and a saved folder
    reloads to the same outputs (the option is a shape field of the config it stores)."""
    from neurofm.hub import load_pretrained

    torch.manual_seed(0)
    cfg = small(token_scales=True)
    model = Barista(cfg)
    batch = make_batch(cfg)
    out = model.pretrain_loss(batch, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert model.encoder.tokenizer.scale_proj.weight.grad.abs().sum() > 0
    assert model.target_tokenizer.scale_proj.weight.grad is None  # stop-gradient targets
    with torch.no_grad():
        model.target_tokenizer.scale_proj.weight.add_(1.0)
    enc = model.export_encoder()
    assert torch.equal(enc.tokenizer.scale_proj.weight, model.target_tokenizer.scale_proj.weight)
    enc.save_pretrained(tmp_path / "enc")
    back = load_pretrained(tmp_path / "enc")
    assert back.config.token_scales is True
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(back(batch), enc(batch), atol=1e-6)


@pytest.mark.parametrize("encode_scale", ["coords", "parcel", "lobe"])
@pytest.mark.parametrize("mask_scale", ["channel", "parcel", "lobe"])
def test_every_scale_pair_trains_from_config_alone(encode_scale, mask_scale):
    torch.manual_seed(0)
    cfg = BaristaConfig.from_dict(json.loads(json.dumps(small(encode_scale=encode_scale,
                                                              mask_scale=mask_scale).to_dict())))
    model = Barista(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = make_batch(cfg, n_real=[8, 6, 4])
    before = copy.deepcopy(model.state_dict())
    loss = model.pretrain_loss(batch)["loss"]
    loss.backward()
    opt.step()
    model.update_ema(0.5)
    assert torch.isfinite(loss)
    after = model.state_dict()
    qkv = "encoder.backbone.blocks.0.attn.qkv.weight"
    assert not torch.equal(before[qkv], after[qkv])
    assert not torch.equal(before["target_tokenizer.proj.weight"], after["target_tokenizer.proj.weight"])
    spatial_keys = [k for k in after if k.startswith("encoder.spatial.")]
    assert spatial_keys and any(not torch.equal(before[k], after[k]) for k in spatial_keys)


def test_bf16_autocast_training_step():
    torch.manual_seed(0)
    cfg = small()
    model = Barista(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.pretrain_loss(make_batch(cfg))
        out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for p in model.encoder.parameters():
        assert p.grad is None or (p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all())
    assert model.encoder.tokenizer.blocks[0].conv1.weight.grad.abs().sum() > 0


# -- heads -------------------------------------------------------------------------------------

def test_heads():
    torch.manual_seed(0)
    cfg = small()
    enc = BaristaEncoder(cfg)
    batch = make_batch(cfg, n_real=[8, 5, 8])
    h = enc(batch)
    tw = TokenWeightingHead(16, n_channels=8, n_patches=3, out_dim=2).eval()
    assert tw(h, batch["channel_mask"]).shape == (3, 2)
    # padded channels get zero weight
    h2 = h.clone()
    h2[1, :, 5:] = 100.0
    assert torch.allclose(tw(h, batch["channel_mask"])[1], tw(h2, batch["channel_mask"])[1])
    with pytest.raises(ValueError, match="PooledHead"):
        tw(h[:, :, :6], batch["channel_mask"][:, :6])
    pooled = PooledHead(16, 4)
    assert pooled(h, batch["channel_mask"]).shape == (3, 4)
    # starts as a plain mean over real tokens
    mean = (h * batch["channel_mask"][:, None, :, None]).sum((1, 2)) / (batch["channel_mask"].sum(1) * 3)[:, None]
    assert torch.allclose(pooled.eval()(h, batch["channel_mask"]), pooled.out(mean), atol=1e-5)
    recon = ChannelReconstructionHead(cfg)
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, 1] = mask[2, 3] = mask[2, 4] = True
    hm = enc(batch, mask=mask, mask_token=recon.mask_token)
    out = recon(hm, mask)
    assert out.shape == (3, cfg.n_patches, cfg.patch_len)
    model = Barista(cfg)
    recon.init_from_pretraining(model)
    assert torch.equal(recon.mask_token, model.mask_token)
    assert F.mse_loss(out, enc.patches(batch["x"])[mask]).item() > 0


def test_band_power_readout_standardises_with_training_statistics_and_starts_at_a_raw_fit(tmp_path):
    """The read-out trained on raw log band powers under AdamW decay: the decay pulled hardest on
    the bands with the smallest spread and one lr meant different steps per band. Its features
    are now standardised with the training statistics (buffers, saved with the weights); a fit
    on the raw features, folded through them, predicts exactly what it predicts on raw features.
    A folder written before the buffers (raw features) loads with identity statistics."""
    import json

    from safetensors.torch import load_file, save_file

    from neurofm.hub import load_pretrained
    from neurofm.models.barista import BandPowerReadout, BaristaFinetuned, BaristaFinetunedConfig

    torch.manual_seed(0)
    C, T, fs = 3, 256, 128.0
    x = torch.randn(16, C, T) * torch.tensor([1.0, 5.0, 0.2])[None, :, None]
    readout = BandPowerReadout(C, fs, {"theta": [4, 8], "beta": [13, 30]}, out_dim=2)
    raw = readout.features(x)  # (16, 6) float64
    assert torch.equal(readout.feature_mean, torch.zeros(6, dtype=torch.float64))  # identity until set
    readout.set_statistics(raw.mean(0), raw.std(0, unbiased=False))
    z = (raw - readout.feature_mean) / readout.feature_std
    torch.testing.assert_close(z.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(6, dtype=torch.float64))
    W, b = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    readout.start_at(W, b)  # the decode report's fit, on raw features
    torch.testing.assert_close(readout(x), (raw @ W + b).float(), atol=1e-5, rtol=1e-5)
    # a constant feature (a silent channel) keeps std 1, never a division by zero
    readout.set_statistics(raw.mean(0), torch.zeros(6, dtype=torch.float64))
    assert torch.equal(readout.feature_std, torch.ones(6, dtype=torch.float64))

    # saved with the weights, and a folder written before them loads as it was trained
    cfg = BaristaFinetunedConfig(encoder=BaristaConfig(d_model=16, n_layers=1, n_heads=2, cnn_channels=4,
                                                       sampling_rate=fs, n_patches=1, patch_len=T),
                                 out_dim=2, n_channels=C, band_power_bands={"theta": [4, 8], "beta": [13, 30]})
    model = BaristaFinetuned(cfg).eval()
    model.band_power.set_statistics(raw.mean(0), raw.std(0, unbiased=False))
    model.band_power.start_at(W, b)
    folder = model.save_pretrained(tmp_path / "ft")
    assert "band_power.feature_std" in load_file(str(folder / "model.safetensors"))
    assert torch.equal(load_pretrained(folder).band_power.feature_mean, model.band_power.feature_mean)
    old = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "feature_" not in k}
    old["band_power.out.weight"] = W.T.float().contiguous()  # trained on raw features
    old["band_power.out.bias"] = b.float()
    save_file(old, str(folder / "model.safetensors"))
    loaded = load_pretrained(folder)
    assert torch.equal(loaded.band_power.feature_std, torch.ones(6, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(loaded.band_power(x), (raw @ W + b).float(), atol=1e-4, rtol=1e-4)
    assert json.loads((folder / "config.json").read_text())["config"]["band_power_bands"]
    # a Lightning checkpoint's state (any prefix) the same way, on load and resume
    from neurofm.models.barista import upgrade_state_dict

    up = upgrade_state_dict({"band_power.out.weight": W.T.float(), "band_power.out.bias": b.float()}, 2)
    assert torch.equal(up["band_power.feature_std"], torch.ones(6, dtype=torch.float64))
