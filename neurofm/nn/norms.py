"""Normalisation layers shared by the models.

* :class:`RMSNorm` -- root-mean-square norm with a learned gain (no bias, no centring), the
  pre-norm of BaRISTA's transformer blocks and its final norm.
* :func:`time_layer_norm` / :class:`TimeLayerNorm` -- parameter-free LayerNorm over the time
  axis of a ``(N, channels, time)`` signal, as in BaRISTA's CNN tokenizer: each feature map of
  each patch is standardised over its samples, so the tokenizer sees waveform shape rather
  than the patch's offset or gain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dimension.

    Args:
        dim: size of the normalised (last) dimension.
        eps: added to the mean square before the square root, so an all-zero vector (e.g. a
            padded token) maps to zero instead of NaN.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:  # (..., dim) -> (..., dim)
        # weight cast to the activations' dtype (bf16 under autocast) so the fused kernel applies
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def time_layer_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Parameter-free LayerNorm over the last (time) axis: ``(N, C, T) -> (N, C, T)``.

    A constant (e.g. all-zero, padded) series maps to zeros, never NaN.
    """
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


class TimeLayerNorm(nn.Module):
    """Module form of :func:`time_layer_norm` (no parameters)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # (N, C, T)
        return time_layer_norm(x, self.eps)
