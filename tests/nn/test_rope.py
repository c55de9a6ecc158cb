"""Rotary position embedding: relative-position property, identity at 0, frozen frequencies."""

import pytest
import torch

from neurofm.nn.rope import RotaryEmbedding, apply_rotary, rotate_half


def test_dot_product_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        return float(rope(q[None], torch.tensor([m])) @ rope(k[None], torch.tensor([n]))[0])

    for m, n in [(0, 3), (5, 1), (7, 7), (11, 2)]:
        ref = score(m, n)
        for shift in (1, 4, 9):
            assert score(m + shift, n + shift) == pytest.approx(ref, rel=1e-5, abs=1e-5)
    # and it does depend on the offset
    assert abs(score(0, 3) - score(0, 4)) > 1e-4


def test_position_zero_is_identity_and_norm_is_kept():
    torch.manual_seed(1)
    rope = RotaryEmbedding(8)
    x = torch.randn(3, 5, 8)
    pos = torch.arange(5)
    out = rope(x, pos)
    assert torch.allclose(out[:, 0], x[:, 0])
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(out[:, 1:], x[:, 1:])


def test_broadcast_positions_match_explicit_positions():
    """Patch-index RoPE: positions (n, 1) broadcast over channels equal per-token positions."""
    torch.manual_seed(2)
    rope = RotaryEmbedding(16)
    n, C = 4, 3
    x = torch.randn(2, n, C, 16)
    cos, sin = rope.cos_sin(torch.arange(n)[:, None])  # (n, 1, 16)
    a = apply_rotary(x, cos, sin)
    b = rope(x.reshape(2, n * C, 16), torch.arange(n).repeat_interleave(C)).view(2, n, C, 16)
    assert torch.allclose(a, b, atol=1e-6)


def test_frequencies_are_a_frozen_parameter_by_default():
    rope = RotaryEmbedding(16)
    assert rope.freqs.shape == (8,) and not rope.freqs.requires_grad
    assert sum(p.numel() for p in rope.parameters()) == 8
    assert rope.freqs[0] == 1.0 and rope.freqs[-1] < rope.freqs[0]
    assert RotaryEmbedding(16, learned_freq=True).freqs.requires_grad
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15)


def test_rotate_half_and_dtype():
    x = torch.arange(4.0)
    assert rotate_half(x).tolist() == [-2.0, -3.0, 0.0, 1.0]
    rope = RotaryEmbedding(4)
    out = rope(torch.randn(2, 3, 4, dtype=torch.bfloat16), torch.arange(3))
    assert out.dtype == torch.bfloat16
