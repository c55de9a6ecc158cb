"""Neuroformer generation speed-ups keep the results: the fast decoding loop, the sampler's
sort and the decoding-time shortcuts (contiguous cross-attention caches, dropped all-True key
masks) give the very spikes and logits of the straightforward versions.

The straightforward loop is written out below (one ``_sample`` call per head per step, drawing
its own uniforms, and per-window EOS bookkeeping at every step): fixed-seed generation must
match it bit for bit.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

from neurofm.models.neuroformer import EOS, PAD, SOS, Neuroformer, NeuroformerConfig
from neurofm.models.neuroformer_generate import _close_windows, _sample, _sort_descending
from neurofm.testing import synthetic_batch
from neurofm.nn.transformer import CrossKVCache


def config(n_units: int = 12, **overrides) -> NeuroformerConfig:
    """n_embd 32, 1 layer per stage, 30 ms windows at 10 ms, a stimulus (every cross stage)."""
    base = dict(
        n_units=n_units, n_embd=32, n_head=4, temporal_hidden=16,
        window=dict(curr=0.03, prev=0.03, dt=0.01), block_size=dict(id=16, prev_id=24),
        layers=dict(state=1, prev_encoder=1, state_history=1, stimulus_encoder=1, stimulus=1, behavior=1, self_att=1),
        dropout=dict(embd=0.0, attn=0.0, resid=0.0),
        stimulus=dict(n_frames=3, height=10, width=10, patch=[3, 5, 5]),
    )
    base.update(overrides)
    return NeuroformerConfig(**base)


def model(c: NeuroformerConfig, peaked: bool = False) -> Neuroformer:
    """``peaked``: heads scaled up, so the next-token distributions look trained (EOS wins in
    some windows early, and greedy picks win by a wide margin)."""
    torch.manual_seed(0)
    m = Neuroformer(c).eval()
    if peaked:
        with torch.no_grad():
            m.head_id.weight.mul_(40.0)
            m.head_dt.weight.mul_(40.0)
    return m


def batch(c: NeuroformerConfig, b: int, seed: int = 0) -> dict:
    """Windows of up to 12 / 16 tokens; previous windows of different lengths (padded)."""
    data = dataclasses.replace(c, block_size=dict(id=12, prev_id=16))
    return synthetic_batch(data, b, rate_hz=40.0, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def straightforward_generate(m: Neuroformer, batch: dict, *, seed: int, temperature_id: float = 1.0,
                             temperature_dt: float = 1.0, top_k_id=None, top_p_id=0.95, top_p_dt=0.95,
                             max_spikes=None, stop_at_eos: bool = True) -> tuple[list, list]:
    """The decoding loop before the speed-ups: per-step bookkeeping, one uniform draw per call."""
    c = m.config
    g = torch.Generator().manual_seed(seed)
    b = len(batch["interval"])
    max_len = (c.block_size.id - 2 if max_spikes is None else max_spikes) + 2
    ids = torch.full((b, max_len), PAD, dtype=torch.long)
    dts = torch.full((b, max_len), c.pad_dt, dtype=torch.long)
    ids[:, 0], dts[:, 0] = SOS, 0
    id_bias = torch.zeros(c.id_vocab_size)
    id_bias[[PAD, SOS]] = -math.inf
    if not stop_at_eos:
        id_bias[EOS] = -math.inf
    dt_bias = torch.full((c.dt_vocab_size,), -math.inf)
    dt_bias[:c.dt_max_curr + 1] = 0.0
    done = torch.zeros(b, dtype=torch.bool)
    lengths = torch.zeros(b, dtype=torch.long)
    state = m.init_decode(batch, max_len)
    for pos in range(max_len - 1):
        lid, ldt = m.decode_step(state, ids[:, pos:pos + 1], dts[:, pos:pos + 1])
        if pos + 2 == max_len:
            nid = torch.full((b,), EOS, dtype=torch.long)
        else:
            nid = _sample(lid[:, -1] + id_bias, temperature_id, top_k_id, top_p_id, g)
        ndt = _sample(ldt[:, -1] + dt_bias, temperature_dt, None, top_p_dt, g)
        eos = nid == EOS
        ndt = torch.where(eos, c.eos_dt, ndt)
        ids[:, pos + 1] = torch.where(done, PAD, nid)
        dts[:, pos + 1] = torch.where(done, c.pad_dt, ndt)
        lengths += (~done & ~eos).long()
        done = done | eos
        if bool(done.all()):
            break
    return ([ids[w, 1:n + 1].numpy() for w, n in enumerate(lengths.tolist())],
            [dts[w, 1:n + 1].numpy() for w, n in enumerate(lengths.tolist())])


SETTINGS = [
    dict(seed=1),
    dict(seed=2, stop_at_eos=False),
    dict(seed=3, max_spikes=4),
    dict(seed=4, temperature_id=0.7, temperature_dt=1.3),
    dict(seed=5, temperature_id=0.0),  # greedy IDs, sampled dts: one uniform per step, not two
    dict(seed=6, temperature_dt=0.0),
    dict(seed=7, top_k_id=3, top_p_id=None),
    dict(seed=8, top_p_id=None, top_p_dt=None),
]


@pytest.mark.parametrize("peaked", [False, True])
@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_generation_equals_the_straightforward_loop(kw, peaked):
    c = config()
    m, b = model(c, peaked), batch(c, 5)
    expected_tokens, expected_dt = straightforward_generate(m, b, **kw)
    got = m.generate(b, **kw)
    for w in range(5):
        np.testing.assert_array_equal(got.tokens[w], expected_tokens[w])
        np.testing.assert_array_equal(got.dt[w], expected_dt[w])


def test_windows_that_end_early_are_closed_like_before():
    """EOS mid-window in some windows of a batch: they keep decoding (unseen) until all end."""
    c = config()
    m, b = model(c, peaked=True), batch(c, 8, seed=3)
    expected, _ = straightforward_generate(m, b, seed=11)
    got = m.generate(b, seed=11)
    lengths = [len(t) for t in got.tokens]
    assert min(lengths) < max(lengths)  # some windows end while others go on decoding
    assert all(np.array_equal(x, y) for x, y in zip(got.tokens, expected))


def test_wide_vocabulary_batch_uses_the_fast_sort_and_is_reproducible():
    """43 ID tokens x 48 windows: the sampler sorts with NumPy; same spikes as the loop, and
    a fixed seed gives the same spikes twice."""
    c = config(n_units=40)
    m, b = model(c), batch(c, 48, seed=1)
    assert b["id"].shape[0] * c.id_vocab_size >= 2048 and c.id_vocab_size >= 32
    expected, _ = straightforward_generate(m, b, seed=3, max_spikes=5)
    one, two = m.generate(b, seed=3, max_spikes=5), m.generate(b, seed=3, max_spikes=5)
    assert all(np.array_equal(x, y) for x, y in zip(one.tokens, expected))
    assert all(np.array_equal(x, y) for x, y in zip(one.tokens, two.tokens))
    assert all(np.array_equal(x, y) for x, y in zip(one.times, two.times))


def test_batched_greedy_generation_equals_one_window_at_a_time():
    """Windows never see each other while decoding (and a lone window decodes without a key
    mask on its previous window, a batch with one)."""
    c = config()
    m, b = model(c, peaked=True), batch(c, 4, seed=2)
    assert not bool(b["mask_prev"].all())  # the batch's previous windows are padded
    greedy = dict(temperature_id=0.0, temperature_dt=0.0)
    together = m.generate(b, **greedy)
    for w in range(4):
        one = {k: v[w:w + 1] for k, v in b.items() if torch.is_tensor(v)}
        alone = m.generate(one, **greedy)
        np.testing.assert_array_equal(alone.tokens[0], together.tokens[w])
        np.testing.assert_array_equal(alone.dt[0], together.dt[w])


@pytest.mark.parametrize("b", [1, 4])
def test_cached_logits_equal_full_forward_with_and_without_key_masks(b):
    """Batch 1: the previous window's mask is all True and decoding drops it; batch 4 (padded
    previous windows): kept."""
    c = config()
    m, data = model(c), batch(c, b, seed=2)
    full = m(data, trim_padding=False)
    state = m.init_decode(data)
    assert (state.sources.prev_mask is None) == (b == 1)
    ids, dts = data["id"], data["dt"]
    logits = [m.decode_step(state, ids[:, t:t + 1], dts[:, t:t + 1]) for t in range(ids.shape[1])]
    torch.testing.assert_close(torch.cat([li for li, _ in logits], 1), full["id_logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([ld for _, ld in logits], 1), full["dt_logits"], atol=1e-5, rtol=1e-5)
    cache = state.caches["stimulus"][0]
    assert cache.k.is_contiguous() and cache.v.is_contiguous()


def test_cross_cache_stores_contiguous_copies():
    kv = torch.randn(2, 5, 2, 4, 8).permute(2, 0, 3, 1, 4)  # (2, B, H, S, Dh) strided head views
    k, v = kv.unbind(0)
    cache = CrossKVCache()
    cache.store(k, v)
    assert cache.filled and cache.k.is_contiguous() and cache.v.is_contiguous()
    assert torch.equal(cache.k, k) and torch.equal(cache.v, v)


@pytest.mark.parametrize("shape", [(3, 9), (4, 200), (64, 203), (20, 40)])
def test_sort_descending_matches_torch_sort(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    x[:, :2] = -math.inf  # the sampler's masked tokens
    values, order = _sort_descending(x)
    ref_values, ref_order = torch.sort(x, dim=-1, descending=True)
    assert torch.equal(values, ref_values)
    assert torch.equal(order[:, :-2], ref_order[:, :-2])  # the two -inf may come in either order
    assert torch.equal(x.gather(-1, order), values)


def test_sample_with_given_uniforms_equals_drawing_them():
    logits = torch.randn(64, 203, generator=torch.Generator().manual_seed(1))
    for temperature, top_k, top_p in ((1.0, None, 0.95), (0.5, None, 0.8), (1.0, 5, None), (2.0, None, None)):
        g = torch.Generator().manual_seed(7)
        drawn = _sample(logits, temperature, top_k, top_p, g)
        u = torch.rand(64, 1, generator=torch.Generator().manual_seed(7))
        assert torch.equal(_sample(logits, temperature, top_k, top_p, u=u), drawn)


def test_close_windows_ends_at_the_first_eos():
    c = config()
    u1, u2 = 3, 4  # unit tokens
    ids = torch.tensor([[SOS, u1, u2, EOS, u1, EOS],
                        [SOS, EOS, u2, u2, u2, EOS],
                        [SOS, u1, u1, u1, u1, EOS]])
    dts = torch.tensor([[0, 1, 2, 3, 1, 2],
                        [0, 1, 1, 1, 1, 1],
                        [0, 2, 2, 2, 2, 2]])
    lengths = _close_windows(ids, dts, c)
    assert lengths.tolist() == [2, 0, 4]
    assert ids.tolist() == [[SOS, u1, u2, EOS, PAD, PAD],
                            [SOS, EOS, PAD, PAD, PAD, PAD],
                            [SOS, u1, u1, u1, u1, EOS]]
    e, p = c.eos_dt, c.pad_dt
    assert dts.tolist() == [[0, 1, 2, e, p, p],
                            [0, e, p, p, p, p],
                            [0, 2, 2, 2, 2, e]]


def test_generation_from_a_packed_batch_equals_the_padded_one():
    """A packed training batch can be handed to generate: it is unpacked (unpack_spikes is
    pack_spikes' inverse on the real tokens) and gives the same spikes with the same seed."""
    from neurofm.data.datasets import pack_spikes, unpack_spikes

    c = config()
    m, b = model(c), batch(c, 5, seed=2)
    p = pack_spikes(b)
    u = unpack_spikes(p, c.pad_dt)
    for key, mask_key in (("id", "mask"), ("dt", "mask"), ("target_dt", "mask"), ("id_prev", "mask_prev")):
        n = u[key].shape[1]
        assert torch.equal(u[mask_key], b[mask_key][:, :n]) and not b[mask_key][:, n:].any()
        assert torch.equal(u[key], b[key][:, :n])  # the fill values too: PAD / pad_dt
    for mode in ("teacher_forced", "free_running"):
        g_pad = m.generate(b, mode=mode, seed=3)
        g_pack = m.generate(p, mode=mode, seed=3)
        assert len(g_pack.times) == len(g_pad.times) == 5
        for t_pad, t_pack, u_pad, u_pack in zip(g_pad.times, g_pack.times, g_pad.tokens, g_pack.tokens):
            assert np.array_equal(t_pad, t_pack) and np.array_equal(u_pad, u_pack)
