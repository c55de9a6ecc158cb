"""The attention function on CUDA: bf16 against a float64 reference on every path the models
use, and the backend choice with and without flash-attn. Skipped without a CUDA device."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurofm.nn.attention import (
    HAS_FLASH_ATTN, Packed, attention, attention_backend, flash_attn_varlen_func, pack, unpack, varlen_attention,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BF16_TOL = 1e-2
DEVICE = "cuda"


def _reference(q, k, v, allowed):
    """float64 attention with an explicit (B or 1, 1, Lq, Lk) boolean mask; rows without a key are 0."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    empty = ~allowed.any(-1, keepdim=True)
    w = torch.where(empty, 0.0, scores.softmax(-1).nan_to_num(0.0))
    return w @ v


def _rel(out, ref, q_real):
    """Relative error over real queries; (B, H, Lq, Dh) tensors, q_real (B, Lq)."""
    a, b = out.double().transpose(1, 2)[q_real], ref.double().transpose(1, 2)[q_real]
    return float((a - b).norm() / b.norm())


def _qkv(b, h, lq, lk, dh, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, dh, generator=g).to(DEVICE, torch.bfloat16) for n in (lq, lk, lk))


def _tri(lq, lk):
    return (torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None]).to(DEVICE)[None, None]


def _lengths_mask(lengths, length):
    return torch.arange(length, device=DEVICE)[None, :] < torch.as_tensor(lengths, device=DEVICE)[:, None]


@pytest.mark.parametrize("case", ["causal", "key padding", "cross", "cross key padding", "kv cache"])
def test_bf16_attention_matches_float64(case):
    b, h, dh = 3, 8, 32
    lq, lk = {"cross": (50, 120), "cross key padding": (50, 120), "kv cache": (4, 60)}.get(case, (80, 80))
    q, k, v = _qkv(b, h, lq, lk, dh)
    q_real = torch.ones(b, lq, dtype=torch.bool, device=DEVICE)
    kw: dict = {}
    allowed = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=DEVICE)
    if case in ("causal", "kv cache"):
        kw["causal"] = True
        allowed = _tri(lq, lk)
    if case in ("key padding", "cross key padding"):
        k_real = _lengths_mask([lk, lk // 2, 7], lk)
        kw["key_padding_mask"] = k_real
        allowed = k_real[:, None, None, :]
        if case == "key padding":
            q_real = k_real
    out = attention(q, k, v, **kw)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert _rel(out, _reference(q, k, v, allowed), q_real) < BF16_TOL


@pytest.mark.parametrize("causal, cross", [(True, False), (False, False), (False, True)])
def test_bf16_varlen_matches_float64_and_the_padded_path(causal, cross):
    s, h, dh = 5, 8, 32
    len_q = [64, 40, 17, 1, 50]
    len_k = [100, 3, 60, 20, 50] if cross else len_q
    lq, lk = max(len_q), max(len_k)
    q, k, v = _qkv(s, h, lq, lk, dh, seed=1)
    q_real, k_real = _lengths_mask(len_q, lq), _lengths_mask(len_k, lk)
    qp, seqs_q = pack(q.transpose(1, 2), q_real)
    kp, seqs_k = pack(k.transpose(1, 2), k_real)
    vp, _ = pack(v.transpose(1, 2), k_real)
    assert isinstance(seqs_q, Packed) and seqs_q.total == sum(len_q)
    out = varlen_attention(qp, kp, vp, seqs_q, seqs_k, causal=causal)  # (Nq, H, Dh)
    assert out.shape == qp.shape
    out_padded_layout = unpack(out, seqs_q, lq).transpose(1, 2)  # (S, H, Lq, Dh)
    allowed = k_real[:, None, None, :]
    if causal:
        allowed = allowed & _tri(lq, lk)
    ref = _reference(q, k, v, allowed)
    assert _rel(out_padded_layout, ref, q_real) < BF16_TOL
    padded = attention(q, k, v, causal=True) if causal else attention(q, k, v, key_padding_mask=k_real)
    assert _rel(out_padded_layout, padded, q_real) < BF16_TOL


def test_sdpa_backends_agree_with_float64_where_they_run():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(2, 8, 128, 128, 64, seed=2)
    ref = _reference(q, k, v, _tri(128, 128))
    q_real = torch.ones(2, 128, dtype=torch.bool, device=DEVICE)
    ran = 0
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        except RuntimeError:  # this GPU / build has no such kernel for these inputs
            continue
        ran += 1
        assert _rel(out, ref, q_real) < BF16_TOL, backend
    assert ran >= 1


@pytest.mark.skipif(not HAS_FLASH_ATTN, reason="flash-attn is not installed (pip install neurofm[gpu])")
def test_backend_is_flash_attn_when_installed():
    q = torch.randn(1, 2, 4, 32, device=DEVICE, dtype=torch.bfloat16)
    assert attention_backend(q) == "flash_attn"
    assert attention_backend(q.half()) == "flash_attn"
    assert attention_backend(q, needs_mask=True) == "sdpa"  # flash_attn_func takes no mask
    assert attention_backend(q.float()) == "sdpa"  # fp32 is not a flash-attn dtype
    assert attention_backend(q.cpu()) == "sdpa"
    # and the varlen path really goes through flash-attn: same numbers as its own function
    qp = torch.randn(10, 2, 32, device=DEVICE, dtype=torch.bfloat16)
    seqs = Packed.from_lengths(torch.tensor([4, 6], device=DEVICE))
    direct = flash_attn_varlen_func(qp, qp, qp, seqs.cu_seqlens, seqs.cu_seqlens, seqs.max_seqlen, seqs.max_seqlen,
                                    causal=True)
    torch.testing.assert_close(varlen_attention(qp, qp, qp, seqs, causal=True), direct, rtol=0, atol=0)


@pytest.mark.skipif(HAS_FLASH_ATTN, reason="flash-attn is installed: the fallback is not used")
def test_backend_is_sdpa_without_flash_attn():
    q = torch.randn(1, 2, 4, 32, device=DEVICE, dtype=torch.bfloat16)
    assert attention_backend(q) == "sdpa"
