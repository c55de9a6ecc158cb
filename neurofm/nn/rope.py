"""Rotary position embedding (RoPE; Su et al., 2021, arXiv 2104.09864).

Queries and keys are rotated, pair of features by pair of features, by an angle proportional
to the token's integer position. The dot product of a query at position ``m`` with a key at
position ``n`` then depends on ``m - n`` only, which is why BaRISTA uses it for the patch
(time) index: attention sees how far apart two patches are, and -- since every channel of a
patch shares the position -- nothing about the order in which channels were listed.

Convention: "rotate half" (feature ``i`` pairs with feature ``i + dim/2``), frequencies
``theta ** (-2i / dim)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension (split in two halves)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (..., dim) by precomputed ``cos``/``sin`` broadcastable to ``x``.

    The rotation runs in float32 and returns ``x``'s dtype, so bf16 activations keep exact
    angles.
    """
    dtype = x.dtype
    xf = x.float()
    return torch.addcmul(xf * cos, rotate_half(xf), sin).to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary embedding for head dimension ``dim`` (even).

    Args:
        dim: the per-head feature size the rotation acts on.
        theta: base of the frequency ladder (10,000 as in the RoPE paper).
        learned_freq: train the ``dim / 2`` frequencies. They are stored as a parameter in
            either case (frozen when False): BaRISTA's published parameter counts include
            them (8 per layer for head dimension 16), and keeping them in the ``state_dict``
            lets a checkpoint carry its own frequencies.
    """

    def __init__(self, dim: int, theta: float = 10_000.0, learned_freq: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RotaryEmbedding: dim must be even, got {dim}")
        self.dim, self.theta = dim, theta
        freqs = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (dim/2,)
        self.freqs = nn.Parameter(freqs, requires_grad=learned_freq)

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of shape ``(*positions.shape, dim)`` (float32) for integer positions."""
        angles = positions.to(torch.float32)[..., None] * self.freqs.float()  # (..., dim/2)
        angles = torch.cat((angles, angles), dim=-1)  # (..., dim)
        return angles.cos(), angles.sin()

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` (..., L, dim) by ``positions`` broadcastable to ``x.shape[:-1]``."""
        cos, sin = self.cos_sin(positions)
        return apply_rotary(x, cos, sin)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta}, learned_freq={self.freqs.requires_grad}"
