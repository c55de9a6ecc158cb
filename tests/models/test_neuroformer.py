"""Neuroformer model: contract, masking, caching, generation and the reference-bug fixes.

Batches are built by hand following the collate contract (DESIGN.md shared contracts), with
``neurofm.tokens.window_sequences`` / ``neurofm.testing.synthetic_batch`` for the token layout.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurofm.data.datasets import pack_spikes
from neurofm.models import neuroformer_generate
from neurofm.models.neuroformer import (
    EOS, PAD, SOS, Neuroformer, NeuroformerConfig, StimulusConfig, info_nce, masked_mean,
)
from neurofm.testing import synthetic_batch
from neurofm.tokens import window_sequences

N_UNITS = 12


def tiny_config(**overrides) -> NeuroformerConfig:
    """n_embd 32, 1 layer per stage, 30 ms windows at 10 ms (dt vocab 0..3 + 3 specials)."""
    base = dict(
        n_units=N_UNITS, n_embd=32, n_head=4, temporal_hidden=16,
        window=dict(curr=0.03, prev=0.03, dt=0.01), block_size=dict(id=20, prev_id=24),
        layers=dict(state=1, prev_encoder=1, state_history=1, stimulus_encoder=1, stimulus=1, behavior=1, self_att=1),
        dropout=dict(embd=0.0, attn=0.0, resid=0.0),
        contrastive=dict(enabled=True, clip_embd=24),
    )
    base.update(overrides)
    return NeuroformerConfig(**base)


def full_config(**overrides) -> NeuroformerConfig:
    """Every modality: stimulus, a behaviour input group, a regression and a class target."""
    return tiny_config(
        stimulus=dict(n_frames=3, height=10, width=10, patch=[3, 5, 5]),
        behavior=[
            dict(name="speed", dim=1, group="motion"),
            dict(name="position", dim=2, target=True),
            dict(name="running", task="classification", n_classes=2, target=True),
        ],
        **overrides,
    )


def batch_for(config, b=4, seed=0):
    """Windows of up to 12 / 16 tokens: shorter than the model's blocks (20 / 24), so tests
    can add padding."""
    data = dataclasses.replace(config, block_size=dict(id=12, prev_id=16))
    return synthetic_batch(data, b, rate_hz=40.0, generator=torch.Generator().manual_seed(seed))


def model_for(config, seed=0):
    torch.manual_seed(seed)
    return Neuroformer(config).eval()


def pad_more(batch, extra=5, extra_prev=3, config=None):
    """The same windows with more trailing PAD."""
    out = dict(batch)
    pad_dt = config.pad_dt
    for key, fill in (("id", PAD), ("dt", pad_dt), ("target_id", PAD), ("target_dt", pad_dt), ("mask", False)):
        out[key] = F.pad(batch[key], (0, extra), value=fill)
    for key, fill in (("id_prev", PAD), ("dt_prev", pad_dt), ("mask_prev", False)):
        out[key] = F.pad(batch[key], (0, extra_prev), value=fill)
    return out


# -- config ------------------------------------------------------------------------------------
def test_config_json_roundtrip_and_derived_vocab():
    c = full_config()
    text = json.dumps(c.to_dict())
    c2 = NeuroformerConfig.from_dict(json.loads(text))
    assert c2 == c
    assert c.id_vocab_size == N_UNITS + 3
    # K = round(0.03 / 0.01) = 3: offsets 0..3, SOS 4, EOS 5, PAD 6
    assert (c.dt_max, c.sos_dt, c.eos_dt, c.pad_dt, c.dt_vocab_size) == (3, 4, 5, 6, 7)
    assert c.loss.id == 0.45 and c.loss.dt == 0.30 and c.loss.contrastive == 0.25 and c.loss.behavior == 1.0
    assert c.contrastive.temperature == 0.5


def test_config_rejects_unknown_and_invalid_fields():
    with pytest.raises(ValueError, match="unknown field"):
        NeuroformerConfig.from_dict({"n_units": 3, "n_layers": 2})
    with pytest.raises(ValueError, match="NeuroformerConfig.layers: key 'cross': unknown field"):
        tiny_config(layers={"cross": 1})
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(n_embd=30)
    with pytest.raises(ValueError, match="n_classes"):
        tiny_config(behavior=[dict(name="x", task="classification", target=True)])
    with pytest.raises(ValueError, match="not input modalities"):
        tiny_config(contrastive=dict(modalities=["stimulus"]))


def test_paper_preset_size():
    c = NeuroformerConfig.paper(200, stimulus=StimulusConfig(n_frames=6, height=30, width=50))
    assert (c.n_embd, c.n_head, c.block_size.id, c.block_size.prev_id) == (256, 8, 100, 700)
    assert c.stimulus.n_tokens == 120
    n = Neuroformer(c).num_parameters()
    assert 24e6 < n < 26e6, n


# -- forward -----------------------------------------------------------------------------------
def test_forward_shapes_all_modalities():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    out = m(b, trim_padding=False)
    B, L = b["id"].shape
    assert out["id_logits"].shape == (B, L, c.id_vocab_size)
    assert out["dt_logits"].shape == (B, L, c.dt_vocab_size)
    assert out["pooled"].shape == out["neural_features"].shape == (B, c.n_embd)
    assert out["behavior"]["position"].shape == (B, 2) and out["behavior"]["running"].shape == (B, 2)
    assert set(out["contrastive"]) == {"stimulus", "motion"}
    losses = m.loss(b, out)
    assert {"id", "dt", "contrastive", "behavior/position", "behavior/running", "total"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("config_fn", [full_config, tiny_config])
def test_packed_batch_gives_the_same_losses_and_gradients(config_fn):
    """pack_spikes' batch (no PAD token, cu_seqlens) = the padded batch: same logits at every
    real token, same pooled features, same loss terms, same gradients (float32)."""
    c = config_fn()
    m = model_for(c).train()
    b = pad_more(batch_for(c, b=5, seed=3), config=c)
    if "behavior_seq_mask" in b:  # a missing behaviour input sample must stay masked when packed
        b["behavior_seq_mask"] = {k: v.clone() for k, v in b["behavior_seq_mask"].items()}
        b["behavior_seq_mask"]["speed"][1, -3:] = False
    p = pack_spikes(b)
    assert p["id"].dim() == 1 and int(p["cu_seqlens"][-1]) == int(b["mask"].sum()) and "mask" not in p
    assert p["id_prev"].numel() == int(b["mask_prev"].sum())

    out_b, out_p = m(b, trim_padding=False), m(p)
    mask = b["mask"]
    torch.testing.assert_close(out_p["id_logits"], out_b["id_logits"][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p["dt_logits"], out_b["dt_logits"][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_p["pooled"], out_b["pooled"], atol=1e-5, rtol=1e-5)
    for name in out_b["behavior"]:
        torch.testing.assert_close(out_p["behavior"][name], out_b["behavior"][name], atol=1e-5, rtol=1e-5)
    loss_b, loss_p = m.loss(b, out_b), m.loss(p, out_p)
    assert set(loss_b) == set(loss_p)
    for name in loss_b:
        torch.testing.assert_close(loss_p[name], loss_b[name], atol=1e-5, rtol=1e-5)
    params = [q for q in m.parameters() if q.requires_grad]
    g_b = torch.autograd.grad(loss_b["total"], params, allow_unused=True)
    g_p = torch.autograd.grad(loss_p["total"], params, allow_unused=True)
    for (name, _), gb, gp in zip(m.named_parameters(), g_b, g_p):
        if gb is None:
            assert gp is None, name
            continue
        torch.testing.assert_close(gp, gb, atol=1e-5, rtol=1e-4, msg=name)


def test_pack_spikes_refuses_holes():
    c = tiny_config()
    b = batch_for(c)
    b["mask"] = b["mask"].clone()
    b["mask"][0, 0] = False
    with pytest.raises(ValueError, match="not right-padded"):
        pack_spikes(b)


def test_spikes_alone_train():
    c = tiny_config(contrastive=dict(enabled=False))
    m = model_for(c).train()
    full = batch_for(c)
    b = {k: full[k] for k in ("id", "dt", "target_id", "target_dt", "mask")}
    losses = m.loss(b, m(b))
    assert set(losses) == {"id", "dt", "total"}
    losses["total"].backward()
    assert m.tok_emb.weight.grad is not None and m.head_id.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.history_blocks.parameters())  # no previous window given


def test_causal_future_token_changes_no_earlier_logit():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    out = m(b, trim_padding=False)
    b2 = dict(b)
    b2["id"] = b["id"].clone()
    b2["dt"] = b["dt"].clone()
    t = 5
    b2["id"][:, t] = (b["id"][:, t] + 1 - 3) % N_UNITS + 3
    b2["dt"][:, t] = (b["dt"][:, t] + 1) % (c.dt_max + 1)
    out2 = m(b2, trim_padding=False)
    torch.testing.assert_close(out2["id_logits"][:, :t], out["id_logits"][:, :t])
    torch.testing.assert_close(out2["dt_logits"][:, :t], out["dt_logits"][:, :t])
    assert not torch.allclose(out2["id_logits"][:, t:], out["id_logits"][:, t:])


def test_padding_invariance_of_logits_and_pooled_features():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    ref = m(b, trim_padding=False)
    for trim in (True, False):
        out = m(pad_more(b, config=c), trim_padding=trim)
        n = min(out["id_logits"].shape[1], ref["id_logits"].shape[1])
        real = b["mask"][:, :n]
        assert not b["mask"][:, n:].any()  # trimming never cuts a real token
        for key in ("id_logits", "dt_logits"):
            torch.testing.assert_close(out[key][:, :n][real], ref[key][:, :n][real], atol=1e-5, rtol=1e-5)
        for key in ("pooled", "neural_features"):
            torch.testing.assert_close(out[key], ref[key], atol=1e-5, rtol=1e-5)
        for name in ("position", "running"):
            torch.testing.assert_close(out["behavior"][name], ref["behavior"][name], atol=1e-5, rtol=1e-5)
    l1, l2 = m.loss(b, ref), m.loss(pad_more(b, config=c), m(pad_more(b, config=c)))
    torch.testing.assert_close(l1["total"], l2["total"], atol=1e-5, rtol=1e-5)


def test_pooling_ignores_pad_reference_bug():
    """Reference: x.mean(dim=1) over every position, PAD included. Here the pooled state of a
    window must not move when the batch carries more padding (the reference's mean does)."""
    c = full_config()
    m, b = model_for(c), batch_for(c)
    out = m(b, trim_padding=False)
    out_more = m(pad_more(b, extra=8, config=c), trim_padding=False)
    torch.testing.assert_close(out_more["pooled"], out["pooled"], atol=1e-5, rtol=1e-5)
    reference_style = out["hidden"].mean(1), out_more["hidden"].mean(1)
    assert not torch.allclose(*reference_style, atol=1e-3)
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0


def test_unknown_unit_error_points_to_extend_vocab():
    c = tiny_config()
    m, b = model_for(c), batch_for(c)
    b["id"] = b["id"].clone()
    b["id"][0, 1] = c.id_vocab_size + 4  # unit index N_UNITS + 4
    with pytest.raises(ValueError, match=rf"unit index {N_UNITS + 4}.*extend_vocab\(5\)"):
        m(b)
    m.extend_vocab(5)
    assert m.config.n_units == N_UNITS + 5
    assert m(b)["id_logits"].shape[-1] == c.id_vocab_size  # config updated in place


def test_extend_and_subset_vocab_keep_learned_rows():
    c = tiny_config()
    m = model_for(c)
    emb, head = m.tok_emb.weight.detach().clone(), m.head_id.weight.detach().clone()
    m.extend_vocab(3)
    assert torch.equal(m.tok_emb.weight[:N_UNITS + 3], emb) and torch.equal(m.head_id.weight[:N_UNITS + 3], head)
    assert m.head_id.weight.shape[0] == m.tok_emb.num_embeddings == N_UNITS + 6
    m.subset_vocab([4, 0])
    assert torch.equal(m.tok_emb.weight, emb[[0, 1, 2, 7, 3]])
    assert m.config.n_units == 2 and m.head_id.out_features == 5
    named = model_for(tiny_config(n_units=2, units=["s/a", "s/b"]))
    with pytest.raises(ValueError, match="names"):
        named.extend_vocab(1)
    named.extend_vocab(1, names=["t/c"])
    assert named.config.units == ["s/a", "s/b", "t/c"]


def test_dt_and_block_size_errors():
    c = tiny_config()
    m, b = model_for(c), batch_for(c)
    bad = dict(b, dt=b["dt"].clone())
    bad["dt"][0, 0] = c.dt_vocab_size
    with pytest.raises(ValueError, match="window"):
        m(bad)
    long = pad_more(b, extra=9, config=c)
    with pytest.raises(ValueError, match="block_size.id"):
        m(long)


# -- losses ------------------------------------------------------------------------------------
def test_token_losses_ignore_pad_and_train_eos():
    c = tiny_config(contrastive=dict(enabled=False))
    m, b = model_for(c), batch_for(c)
    out = m(b, trim_padding=False)
    losses = m.loss(b, out)
    tid, logits = b["target_id"], out["id_logits"]
    keep = tid != PAD
    assert (tid == EOS).sum() == b["id"].shape[0]  # every window has one EOS target...
    manual = F.cross_entropy(logits[keep], tid[keep])  # ...and it is counted with the spikes
    torch.testing.assert_close(losses["id"], manual)
    tdt = b["target_dt"]
    torch.testing.assert_close(losses["dt"], F.cross_entropy(out["dt_logits"][tdt != c.pad_dt], tdt[tdt != c.pad_dt]))
    # no contrastive term: id/dt keep their share, 0.45/0.30 -> 0.6/0.4 (reference)
    torch.testing.assert_close(losses["total"], 0.6 * losses["id"] + 0.4 * losses["dt"])


def test_behavior_loss_masked_by_behavior_mask():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    b["behavior_mask"] = dict(b["behavior_mask"], position=torch.tensor([True, False, True, True]))
    out = m(b)
    l1 = m.loss(b, out, terms=["behavior"])
    b2 = dict(b, behavior=dict(b["behavior"]))
    b2["behavior"]["position"] = b["behavior"]["position"].clone()
    b2["behavior"]["position"][1] = 1e6  # a window with no samples: must not count
    l2 = m.loss(b2, out, terms=["behavior"])
    torch.testing.assert_close(l1["behavior/position"], l2["behavior/position"])
    keep = torch.tensor([0, 2, 3])
    manual = ((out["behavior"]["position"][keep] - b["behavior"]["position"][keep]) ** 2).mean()
    torch.testing.assert_close(l1["behavior/position"], manual)
    assert set(l1) == {"behavior/position", "behavior/running", "total"}


def test_info_nce_symmetric_and_temperature():
    torch.manual_seed(0)
    a = torch.randn(6, 8)
    aligned = info_nce(a, a, 0.5)
    shuffled = info_nce(a, a[torch.randperm(6)], 0.5)
    assert aligned < shuffled
    torch.testing.assert_close(info_nce(a, a * 2 + 0.01, 0.5), info_nce(a * 2 + 0.01, a, 0.5))
    assert not torch.allclose(info_nce(a, a, 0.5), info_nce(a, a, 0.1))


def test_clip_embd_sets_contrastive_width_reference_bug():
    """Reference: clip_embd was looked up on the wrong object and the projection stayed
    n_embd wide. Here the contrastive space is clip_embd wide, and changing it changes it."""
    for width in (24, 40):
        c = full_config(contrastive=dict(clip_embd=width))
        m, b = model_for(c), batch_for(c)
        out = m(b)
        for z_neural, z_other in out["contrastive"].values():
            assert z_neural.shape == z_other.shape == (4, width)
        assert m.contrastive_proj["neural"][1].out_features == width != c.n_embd


# -- modality encoders: reference-bug fixes --------------------------------------------------
def test_stimulus_3d_position_encoding_is_added_reference_bug():
    """Reference: the 3-D positional encoding was computed and then dropped, so identical
    patches at different places gave identical tokens."""
    c = full_config()
    m = model_for(c)
    enc = m.stimulus_encoder
    frames = torch.ones(2, 3, 10, 10)  # every patch identical
    with_pos = enc(frames)
    without = enc(frames, positional=False)
    assert torch.allclose(without[:, 0], without[:, 1], atol=1e-6)  # position lost without it
    assert not torch.allclose(with_pos[:, 0], with_pos[:, 1], atol=1e-3)
    assert enc.pos.abs().sum() > 0 and enc.pos.shape == (c.stimulus.n_tokens, c.n_embd)
    # and it reaches the model's outputs
    b = batch_for(c)
    out = m(b)
    enc.pos.zero_()
    assert not torch.allclose(m(b)["id_logits"], out["id_logits"], atol=1e-6)


def test_patchify_equals_conv3d():
    c = full_config()
    enc = model_for(c).stimulus_encoder
    frames = torch.randn(2, 3, 10, 10)
    conv = enc.conv(frames[:, None])  # (B, d, t, h, w)
    torch.testing.assert_close(enc.patchify(frames), conv.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="stimulus"):
        enc.patchify(torch.randn(2, 4, 10, 10))


def test_single_feature_behavior_input_is_not_zeroed_reference_bug():
    """Reference: LayerNorm over one feature outputs 0 for any input, so a scalar behaviour
    variable (speed) never reached the model."""
    assert torch.equal(torch.nn.LayerNorm(1)(torch.randn(5, 1)), torch.zeros(5, 1))
    c = full_config()
    m, b = model_for(c), batch_for(c)
    enc = m.behavior_embed["motion"]
    t, mask = b["behavior_seq_t"], b["behavior_seq_mask"]
    slow = enc({"speed": torch.zeros(4, 5, 1)}, t, mask)[0]
    fast = enc({"speed": torch.ones(4, 5, 1)}, t, mask)[0]
    assert not torch.allclose(slow, fast, atol=1e-3)
    b2 = dict(b, behavior_seq=dict(b["behavior_seq"]))
    b2["behavior_seq"]["speed"] = b["behavior_seq"]["speed"] + 1.0
    assert not torch.allclose(m(b)["id_logits"], m(b2)["id_logits"], atol=1e-6)


# -- incremental decoding and generation -------------------------------------------------------
def test_kv_cache_logits_equal_full_forward():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    out = m(b, trim_padding=False)
    state = m.init_decode(b)
    L = b["id"].shape[1]
    id_logits, dt_logits = [], []
    ids, dts = b["id"], b["dt"]
    li, ld = m.decode_step(state, ids[:, :3], dts[:, :3])  # prefill
    id_logits.append(li), dt_logits.append(ld)
    for t in range(3, L):
        li, ld = m.decode_step(state, ids[:, t:t + 1], dts[:, t:t + 1])
        id_logits.append(li), dt_logits.append(ld)
    torch.testing.assert_close(torch.cat(id_logits, 1), out["id_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(dt_logits, 1), out["dt_logits"], atol=1e-5, rtol=1e-5)


def test_generation_reproducible_and_valid():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    g1 = m.generate(b, seed=7)
    g2 = m.generate(b, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(g1.tokens, g2.tokens))
    assert all(np.array_equal(x, y) for x, y in zip(g1.times, g2.times))
    g3 = m.generate(b, seed=8)
    assert any(not np.array_equal(x, y) for x, y in zip(g1.tokens, g3.tokens))
    for w in range(len(g1)):
        assert len(g1.tokens[w]) <= c.block_size.id - 2
        assert (g1.tokens[w] >= 3).all() and (g1.tokens[w] < c.id_vocab_size).all()
        start = float(b["interval"][w]) - c.window.curr
        assert ((g1.times[w] >= start) & (g1.times[w] < float(b["interval"][w]))).all()
        assert (g1.dt[w] <= c.dt_max_curr).all()


def test_generation_stops_at_block_size_or_cap():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    full = m.generate(b, seed=0, stop_at_eos=False)
    assert all(len(t) == c.block_size.id - 2 for t in full.tokens)
    capped = m.generate(b, seed=0, max_spikes=3, stop_at_eos=False)
    assert all(len(t) == 3 for t in capped.tokens)
    # EOS stops a window: make every final state the same vector v and only EOS read it
    with torch.no_grad():
        m.ln_f.weight.zero_()
        m.ln_f.bias.fill_(1.0)
        m.head_id.weight.zero_()
        m.head_id.weight[EOS] = 10.0
    early = m.generate(b, seed=0)
    assert all(len(t) == 0 for t in early.tokens)


def test_cached_and_uncached_generation_agree():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    greedy = dict(temperature_id=0.0, temperature_dt=0.0, max_spikes=6, stop_at_eos=False)
    a = m.generate(b, use_cache=True, **greedy)
    u = m.generate(b, use_cache=False, **greedy)
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, u.tokens))
    assert all(np.array_equal(x, y) for x, y in zip(a.dt, u.dt))


def test_top_k_one_is_greedy():
    c = full_config()
    m, b = model_for(c), batch_for(c)
    g = m.generate(b, seed=3, top_k_id=1, top_k_dt=1, top_p_id=None, top_p_dt=None, max_spikes=5, stop_at_eos=False)
    greedy = m.generate(b, temperature_id=0.0, temperature_dt=0.0, max_spikes=5, stop_at_eos=False)
    assert all(np.array_equal(x, y) for x, y in zip(g.tokens, greedy.tokens))


def test_sampler_frequencies_top_p_and_top_k():
    from neurofm.models.neuroformer_generate import _sample

    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = p.log().expand(20_000, 4)
    g = torch.Generator().manual_seed(0)
    free = torch.bincount(_sample(logits, 1.0, None, None, g), minlength=4) / 20_000
    torch.testing.assert_close(free, p, atol=0.015, rtol=0)
    # nucleus 0.9: 0.5 + 0.3 < 0.9, so the third token stays and the fourth goes
    nucleus = torch.bincount(_sample(logits, 1.0, None, 0.9, g), minlength=4) / 20_000
    torch.testing.assert_close(nucleus, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.015, rtol=0)
    top2 = torch.bincount(_sample(logits, 1.0, 2, None, g), minlength=4) / 20_000
    torch.testing.assert_close(top2, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)
    masked = logits.clone()
    masked[:, 0] = -float("inf")
    assert (_sample(masked, 1.0, None, 0.95, g) != 0).all()
    assert (_sample(logits, 0.0, None, None, g) == 0).all()  # temperature 0: greedy


def _corrupt_past(b, c, rows):
    b2 = dict(b)
    b2["id_prev"], b2["dt_prev"] = b["id_prev"].clone(), b["dt_prev"].clone()
    real = b["mask_prev"].clone()
    real[:, 0] = False
    for r in rows:
        n = int(real[r].sum())
        b2["id_prev"][r, 1:n] = torch.randint(3, c.id_vocab_size, (n - 1,))  # random units, same layout
    return b2


def test_free_running_never_reads_the_true_past_reference_bug(monkeypatch):
    """Reference "free-running" fed the true previous window. Here the previous window of every
    window after the first of its chain comes from the model's own spikes."""
    c = full_config()
    m, b = model_for(c), batch_for(c, b=4)
    corrupted = _corrupt_past(b, c, rows=[1, 2, 3])
    free = m.generate(b, mode="free_running", seed=1)
    free_c = m.generate(corrupted, mode="free_running", seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(free.tokens, free_c.tokens))
    # teacher forcing, by contrast, reads the batch's previous windows as they are
    seen = []
    original = neuroformer_generate.sample_windows
    with monkeypatch.context() as patch:
        patch.setattr(neuroformer_generate, "sample_windows",
                      lambda model, sub, **kw: (seen.append(sub["id_prev"]), original(model, sub, **kw))[1])
        m.generate(corrupted, mode="teacher_forced", seed=1)
    assert torch.equal(seen[0][:, :seen[0].shape[1]], corrupted["id_prev"][:, :seen[0].shape[1]])
    # without the seed past, even the first window ignores the batch's previous windows
    all_c = _corrupt_past(b, c, rows=[0, 1, 2, 3])
    a = m.generate(b, mode="free_running", seed=2, seed_prev=False)
    z = m.generate(all_c, mode="free_running", seed=2, seed_prev=False)
    assert all(np.array_equal(x, y) for x, y in zip(a.tokens, z.tokens))


def test_free_running_previous_window_is_the_generated_window(monkeypatch):
    c = full_config()
    m, b = model_for(c), batch_for(c, b=3)
    seen = []
    original = neuroformer_generate.sample_windows

    def spy(model, sub, **kw):
        seen.append({k: sub[k].clone() for k in ("id_prev", "dt_prev", "interval")})
        return original(model, sub, **kw)

    monkeypatch.setattr(neuroformer_generate, "sample_windows", spy)
    out = m.generate(b, mode="free_running", seed=4)
    assert len(seen) == 3  # one chain of three consecutive windows: three waves of one window
    for w in (1, 2):
        prev = seen[w]
        real = prev["id_prev"][0] >= 3
        # window w-1 spans exactly window w's previous window (curr == prev): same offsets, in
        # the token order (dt bin, then unit), the latest block - 2 kept
        dts, toks = np.asarray(out.dt[w - 1]), np.asarray(out.tokens[w - 1])
        order = np.lexsort((toks, dts))[-(c.block_size.prev_id - 2):]
        assert prev["id_prev"][0][real].tolist() == toks[order].tolist()
        assert prev["dt_prev"][0][real].tolist() == dts[order].tolist()


def test_generated_spikes_write_a_session(tmp_path):
    from neurofm.data.session import Session
    from neurofm.recipes.neuroformer import write_generated

    c = tiny_config()
    m, b = model_for(c), batch_for(c)
    g = m.generate(b, seed=0)
    units = [f"u{i}" for i in range(N_UNITS)]
    path = write_generated(g, tmp_path / "gen.h5", units, session_id="generated")
    times, unit_index = g.spikes()
    with Session(path) as s:
        t, u = s.spikes()
        np.testing.assert_allclose(t, times)
        np.testing.assert_array_equal(u, unit_index)
        assert s.unit_ids[0] == "u0"


# -- bookkeeping -------------------------------------------------------------------------------
def test_stage_parameters_cover_every_parameter_once():
    m = model_for(full_config())
    stages = m.stage_parameters()
    ids = [id(p) for ps in stages.values() for p in ps]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in m.parameters()}


def test_window_sequences_layout_and_overflow():
    """The one window construction (tokenizer, generation, synthetic batches) in the model's
    vocabulary: SOS with dt 0, time order then unit order, EOS with EOS_dt, latest spikes kept."""
    c = tiny_config()
    offsets = np.array([2, 0, 0, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    units = np.array([5, 9, 4, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11]) + 3
    order = np.argsort(offsets, kind="stable")
    ids, dts, n_dropped = window_sequences(offsets[order] * c.window.dt, units[order], np.zeros(1),
                                           np.array([c.window.curr + c.window.dt]), 12, c.window.dt, c.dt_max)
    ids, dts = ids[0], dts[0]  # (13,): input [:12], target [1:]
    assert n_dropped[0] == 3  # 13 spikes, room for 10: the 3 earliest go
    assert ids[0] == SOS and dts[0] == 0 and ids[11] == EOS and dts[11] == c.eos_dt
    assert dts[1:11].tolist() == [2] + [3] * 9  # time order kept, latest spikes kept
    assert ids[4:11].tolist() == [u + 3 for u in (5, 6, 7, 8, 9, 10, 11)]  # unit order inside a bin
    assert ids[12] == PAD and dts[12] == c.pad_dt
