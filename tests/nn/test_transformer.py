"""Shared GPT pieces: block semantics, masking, KV caches, dropout."""

import pytest
import torch

from neurofm.nn.transformer import MLP, Block, CrossKVCache, Dropout, KVCache, dropout, keep_mask

D, H = 16, 4


def test_mlp_is_4x_gelu_and_keeps_shape():
    mlp = MLP(D)
    assert mlp.fc.out_features == 4 * D and mlp.proj.in_features == 4 * D
    x = torch.randn(2, 5, D)
    assert mlp(x).shape == (2, 5, D)


def test_block_is_pre_ln_residual():
    torch.manual_seed(0)
    blk = Block(D, H).eval()
    x = torch.randn(2, 5, D)
    a = x + blk.attn(blk.ln1(x))
    expected = a + blk.mlp(blk.ln2(a))
    torch.testing.assert_close(blk(x), expected)


def test_barista_options_are_rmsnorm_gated_mlp_and_rope_on_given_positions():
    """The BaRISTA kind of block, written out: pre-RMSNorm, value * GELU(gate) MLP, queries and
    keys rotated by the positions given at call time (not by token order)."""
    import torch.nn.functional as F

    from neurofm.nn.attention import attention
    from neurofm.nn.norms import RMSNorm
    from neurofm.nn.rope import apply_rotary

    torch.manual_seed(0)
    blk = Block(D, H, norm="rms", norm_eps=1e-6, mlp="gated", rope=True).eval()
    assert isinstance(blk.ln1, RMSNorm) and blk.mlp.fc.out_features == 2 * 4 * D
    x, pos = torch.randn(2, 6, D), torch.tensor([0, 0, 1, 1, 2, 2])  # 3 patches x 2 channels
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
        h = blk.ln1(x)
        q, k, v = blk.attn.qkv(h).view(2, 6, 3, H, D // H).permute(2, 0, 3, 1, 4)
        cos, sin = blk.attn.rope.cos_sin(pos)
        o = attention(apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v)
        a = x + blk.attn.proj(o.transpose(1, 2).reshape(2, 6, D))
        value, gate = blk.mlp.fc(blk.ln2(a)).chunk(2, dim=-1)
        expected = a + blk.mlp.proj(value * F.gelu(gate))
        torch.testing.assert_close(blk(x, positions=pos), expected)
        torch.testing.assert_close(blk(x, positions=pos.expand(2, 6)), expected)  # (B, L) positions
        assert not torch.allclose(blk(x, positions=torch.arange(6)), expected)
    with pytest.raises(ValueError, match="positions"):
        blk(x)


def test_block_options_are_checked():
    with pytest.raises(ValueError, match="RoPE is for self-attention"):
        Block(D, H, cross=True, rope=True)
    with pytest.raises(ValueError, match="norm must be one of"):
        Block(D, H, norm="batch")
    with pytest.raises(ValueError, match="MLP kind"):
        Block(D, H, mlp="swiglu")
    with pytest.raises(ValueError, match="recompute"):
        Block(D, H, recompute_mlp=True)  # the recomputing kernel is the gated MLP's


def test_cross_block_reads_source_and_shapes():
    torch.manual_seed(0)
    blk = Block(D, H, cross=True, kv_dim=8).eval()
    x, kv = torch.randn(2, 5, D), torch.randn(2, 7, 8)
    y = blk(x, kv)
    assert y.shape == (2, 5, D)
    assert not torch.allclose(y, blk(x, kv + 1.0))
    with pytest.raises(ValueError, match="cannot be causal"):
        Block(D, H, cross=True, causal=True)


def test_causal_block_future_does_not_change_past():
    torch.manual_seed(0)
    blk = Block(D, H, causal=True).eval()
    x = torch.randn(2, 6, D)
    y = blk(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, D)
    y2 = blk(x2)
    torch.testing.assert_close(y[:, :4], y2[:, :4])
    assert not torch.allclose(y[:, 4:], y2[:, 4:])


def test_cross_attention_ignores_padded_keys():
    torch.manual_seed(0)
    blk = Block(D, H, cross=True).eval()
    x, kv = torch.randn(2, 5, D), torch.randn(2, 7, D)
    kpm = torch.tensor([[True] * 4 + [False] * 3, [True] * 7])
    y = blk(x, kv, key_padding_mask=kpm)
    kv2 = kv.clone()
    kv2[0, 4:] = 100 * torch.randn(3, D)
    torch.testing.assert_close(blk(x, kv2, key_padding_mask=kpm), y)


def test_kv_cache_matches_full_causal_pass():
    torch.manual_seed(0)
    blocks = [Block(D, H, causal=True).eval() for _ in range(2)]
    x = torch.randn(3, 7, D)
    full = x
    for b in blocks:
        full = b(full)
    caches = [KVCache(7) for _ in blocks]
    outs = []
    # a prefill of 3 positions, then one at a time
    for sl in (slice(0, 3), slice(3, 4), slice(4, 5), slice(5, 6), slice(6, 7)):
        h = x[:, sl]
        for b, c in zip(blocks, caches):
            h = b(h, cache=c)
        outs.append(h)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
    assert caches[0].length == 7
    with pytest.raises(RuntimeError, match="full"):
        blocks[0](x[:, :1], cache=caches[0])


def test_cross_cache_projects_source_once():
    torch.manual_seed(0)
    blk = Block(D, H, cross=True).eval()
    x, kv = torch.randn(2, 1, D), torch.randn(2, 5, D)
    cache = CrossKVCache()
    y1 = blk(x, kv, cache=cache)
    assert cache.filled
    # later steps reuse the stored keys/values, whatever source is passed
    y2 = blk(x, kv * 0 + 3.0, cache=cache)
    torch.testing.assert_close(y1, y2)
    cache.reset()
    assert not cache.filled


def test_keep_mask_rate_and_seed():
    torch.manual_seed(3)
    m = keep_mask((1000, 1000), 0.2)
    assert m.dtype == torch.bool
    assert abs(m.float().mean().item() - 0.8) < 0.003
    torch.manual_seed(3)
    assert torch.equal(m, keep_mask((1000, 1000), 0.2))
    # independent entries: neighbouring 16-bit draws of one 64-bit word are uncorrelated
    a, b = m[:, ::2].float(), m[:, 1::2].float()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item()) < 0.01


def test_dropout_is_inverted_and_off_in_eval():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.25, True)
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0.0
    torch.testing.assert_close(values[1], torch.tensor(1 / 0.75))
    assert abs(y.mean().item() - 1.0) < 0.01
    assert dropout(x, 0.25, False) is x
    mod = Dropout(0.5).eval()
    assert mod(x) is x
    # gradient flows through the kept entries only
    xg = torch.ones(1000, requires_grad=True)
    out = dropout(xg, 0.5, True)
    out.sum().backward()
    torch.testing.assert_close(xg.grad, out.detach())


def test_attention_dropout_active_in_training_only():
    torch.manual_seed(0)
    blk = Block(D, H, attn_dropout=0.5)
    x = torch.randn(2, 6, D)
    blk.train()
    assert not torch.allclose(blk(x), blk(x))
    blk.eval()
    torch.testing.assert_close(blk(x), blk(x))


def test_bf16_autocast_matches_fp32_closely():
    """Under CPU autocast the projections run in bf16 and attention in fp32 (faster on CPU)."""
    torch.manual_seed(0)
    blk = Block(D, H, causal=True).eval()
    x = torch.randn(2, 6, D)
    ref = blk(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blk(x)
        assert blk.attn(blk.ln1(x), causal=True).dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)
