"""The one attention function: every path computes the same thing."""

import pytest
import torch
import torch.nn.functional as F

from neurofm.nn.attention import Packed, attention, attention_backend, pack, unpack, varlen_attention


def _reference(q, k, v, mask):
    """Plain float64 softmax attention with a boolean mask (True = may attend)."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1).nan_to_num(0.0)
    return w @ v


def test_backend_is_sdpa_on_cpu():
    assert attention_backend(torch.randn(1, 1, 4, 8)) == "sdpa"


@pytest.mark.parametrize("lq,lk", [(6, 6), (1, 9), (4, 9)])
def test_causal_is_bottom_right_aligned(lq, lk):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, lq, 8), torch.randn(2, 3, lk, 8), torch.randn(2, 3, lk, 8)
    mask = torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None]
    out = attention(q, k, v, causal=True)
    torch.testing.assert_close(out.double(), _reference(q, k, v, mask), atol=1e-5, rtol=1e-5)


def test_key_padding_and_empty_rows_are_zero_not_nan():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4)
    kpm = torch.tensor([[True, True, True, False, False], [False] * 5])
    out = attention(q, k, v, key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    assert out[1].abs().max() == 0  # sample 1 has no real key at all
    ref = _reference(q, k, v, kpm[:, None, None, :].expand(2, 2, 5, 5))
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    # padded keys carry no information: changing them changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 3:] = 100.0
    v2[0, :, 3:] = -100.0
    torch.testing.assert_close(attention(q, k2, v2, key_padding_mask=kpm), out)


def test_matches_sdpa_without_mask():
    torch.manual_seed(2)
    q, k, v = (torch.randn(3, 4, 7, 16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens_q,lens_k", [([3, 1, 5], [3, 4, 5]), ([3, 1, 5], [3, 1, 5]), ([2, 3, 1], [0, 4, 2])])
def test_varlen_equals_per_sequence_attention(causal, lens_q, lens_k):
    torch.manual_seed(3)
    sq_, sk_ = Packed.from_lengths(torch.tensor(lens_q)), Packed.from_lengths(torch.tensor(lens_k))
    q, k, v = torch.randn(sum(lens_q), 2, 8), torch.randn(sum(lens_k), 2, 8), torch.randn(sum(lens_k), 2, 8)
    out = varlen_attention(q, k, v, sq_, sk_, causal=causal)
    assert out.shape == q.shape
    cq, ck = sq_.cu_seqlens.tolist(), sk_.cu_seqlens.tolist()
    for i in range(3):
        sq, sk = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i + 1])
        if lens_k[i] == 0:  # no key to attend to: zeros, never NaN
            assert out[sq].abs().max() == 0
            continue
        one = attention(*(t[s].transpose(0, 1)[None] for t, s in ((q, sq), (k, sk), (v, sk))), causal=causal)
        torch.testing.assert_close(out[sq], one[0].transpose(0, 1), atol=1e-6, rtol=1e-5)


def test_varlen_never_mixes_sequences_and_gradients_match_padded():
    """Changing one sequence's keys changes no other sequence's output; packed and padded
    attention give the same outputs and the same input gradients."""
    torch.manual_seed(4)
    lens = torch.tensor([5, 2, 7])
    mask = torch.arange(7)[None, :] < lens[:, None]  # (S, L) right-padded
    xp = torch.randn(3, 7, 2, 8, requires_grad=True)  # padded (S, L, H, Dh), q = k = v
    xs, seqs = pack(xp, mask)
    out = varlen_attention(xs, xs, xs, seqs, causal=True)
    ref = attention(*(xp.transpose(1, 2),) * 3, causal=True).transpose(1, 2)[mask]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    (g1,) = torch.autograd.grad(out.square().sum(), xp)
    (g2,) = torch.autograd.grad(ref.square().sum(), xp)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)
    k2 = xs.detach().clone()
    k2[seqs.seq_ids == 1] += 10.0
    out2 = varlen_attention(xs.detach(), k2, k2, seqs, causal=True)
    keep = seqs.seq_ids != 1
    torch.testing.assert_close(out2[keep], out.detach()[keep])
    assert not torch.allclose(out2[~keep], out.detach()[~keep])


def test_pack_unpack_roundtrip_and_layout():
    lens = torch.tensor([2, 0, 3])
    mask = torch.arange(4)[None, :] < lens[:, None]
    x = torch.arange(12.0).view(3, 4)
    xs, seqs = pack(x, mask)
    assert xs.tolist() == [0.0, 1.0, 8.0, 9.0, 10.0]
    assert seqs.cu_seqlens.tolist() == [0, 2, 2, 5] and seqs.cu_seqlens.dtype == torch.int32
    assert seqs.max_seqlen == 3 and seqs.num_seqs == 3 and seqs.total == 5
    assert seqs.seq_ids.tolist() == [0, 0, 2, 2, 2] and seqs.positions.tolist() == [0, 1, 0, 1, 2]
    assert unpack(xs, seqs, 4).tolist() == (x * mask).tolist()
    assert seqs.mean(xs).tolist() == [0.5, 0.0, 9.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_matches_float64():
    torch.manual_seed(4)
    q, k, v = (torch.randn(2, 4, 128, 64, device="cuda") for _ in range(3))
    ref = _reference(q, k, v, torch.ones(128, 128, dtype=torch.bool, device="cuda").tril())
    out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal=True).double()
    assert ((out - ref).norm() / ref.norm()) < 1e-2


@pytest.mark.parametrize("batch", [1, 5])
def test_single_query_decoding_step_matches_full_attention(batch):
    """A KV-cache decoding step (one query against a strided prefix of the cache buffer, with
    padded keys and a row whose keys are all padding) equals that row of full attention."""
    torch.manual_seed(5)
    h, lmax, n, dh = 3, 12, 7, 8
    q_all = torch.randn(batch, h, n, dh)
    k_buf, v_buf = torch.randn(batch, h, lmax, dh), torch.randn(batch, h, lmax, dh)
    k, v = k_buf[:, :, :n], v_buf[:, :, :n]  # the cache's filled prefix: a view, not contiguous
    kpm = torch.rand(batch, n) > 0.3
    kpm[0] = False  # one window with no real key at all
    full = attention(q_all, k, v, causal=True, key_padding_mask=kpm)
    step = attention(q_all[:, :, -1:], k, v, causal=True, key_padding_mask=kpm)
    torch.testing.assert_close(step, full[:, :, -1:], atol=1e-6, rtol=1e-6)
    assert step[0].abs().max() == 0
    ref = _reference(q_all[:, :, -1:], k, v, kpm[:, None, None, :].expand(batch, h, 1, n))
    torch.testing.assert_close(step.double(), ref, atol=1e-6, rtol=1e-5)


def test_attention_dropout_has_the_same_statistics_padded_and_packed():
    """Attention dropout is post-softmax weight dropout on both layouts (and every backend):
    over many draws each output's mean is the dropout-free output and its variance the closed
    form ``p / (1 - p) * sum_j w_ij^2 v_j^2`` (each weight kept with probability 1 - p and
    scaled by 1 / (1 - p))."""
    from neurofm.nn.attention import Packed, attention, pack, varlen_attention

    torch.manual_seed(0)
    p, R, H, Dh = 0.3, 4000, 2, 3
    lengths = torch.tensor([5, 3, 4])
    S, L = len(lengths), int(lengths.max())
    real = torch.arange(L)[None, :] < lengths[:, None]  # (S, L)
    q, k, v = (torch.randn(S, H, L, Dh, dtype=torch.float64) for _ in range(3))
    w = torch.softmax((q @ k.transpose(-1, -2) / Dh ** 0.5).masked_fill(~real[:, None, None, :], -torch.inf), -1)
    mean = w @ v  # (S, H, L, Dh) dropout-free
    var = p / (1 - p) * (w ** 2) @ (v ** 2)
    # R independent draws at once: the batch repeated R times (one draw per sample, head, key)
    rep = lambda t: t.repeat(R, *([1] * (t.dim() - 1)))  # noqa: E731
    padded = attention(rep(q), rep(k), rep(v), key_padding_mask=rep(real), dropout_p=p).view(R, S, H, L, Dh)
    seqs = Packed.from_lengths(lengths.repeat(R))
    flat = [pack(rep(t).transpose(1, 2), rep(real))[0] for t in (q, k, v)]  # (N, H, Dh)
    packed_out = varlen_attention(*flat, seqs, dropout_p=p)
    packed = torch.zeros(R * S, L, H, Dh, dtype=torch.float64)
    packed[rep(real)] = packed_out
    packed = packed.view(R, S, L, H, Dh).transpose(2, 3)
    sel = real[:, None, :, None].expand(S, H, L, Dh)
    for name, draws in (("padded", padded), ("packed", packed)):
        m, s2 = draws.mean(0), draws.var(0)
        se = (var / R).sqrt()
        assert ((m - mean).abs() <= 5 * se + 1e-9)[sel].all(), name
        rel = (s2 - var).abs() / var.clamp(min=1e-12)
        assert rel[sel & (var > 1e-6)].max() < 0.15, (name, float(rel[sel].max()))
