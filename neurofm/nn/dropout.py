"""Dropout with cheap CPU random draws, and the mask it draws (:func:`keep_mask`).

Used on every residual branch and embedding, and by :func:`neurofm.nn.attention.attention`
for attention dropout.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["keep_mask", "dropout", "Dropout"]


def keep_mask(shape: Sequence[int], p: float, device: torch.device | str | None = None) -> Tensor:
    """Bool tensor of ``shape``, each entry True with probability ``1 - p`` (independently).

    On CPU, one 64-bit draw from torch's default generator gives four 16-bit uniforms, compared
    against ``p`` quantised to 1/65536 (0.2 -> 0.19999): several times cheaper than
    ``bernoulli_``, which draws one number per element (~18 ns/element on the 2-core benchmark
    machine, more than the matmuls around it). ``torch.manual_seed`` makes draws repeatable.
    """
    n = math.prod(shape)
    if torch.device(device or "cpu").type != "cpu":
        return torch.rand(tuple(shape), device=device) >= p
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    r = bits.view(torch.int16)[:n].view(tuple(shape))  # uniform in [-32768, 32767]
    return r >= round(p * 65536) - 32768  # P(r < threshold) = p


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout, the distribution of :func:`torch.nn.functional.dropout`, with the
    cheap CPU random draws of :func:`keep_mask` (about 3x faster end to end on CPU); other
    devices use ``F.dropout`` (a fused kernel)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * (keep_mask(x.shape, p, x.device) * (1.0 / (1.0 - p))).to(x.dtype)


class Dropout(nn.Module):
    """:func:`dropout` as a module (drop-in for ``nn.Dropout``)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
