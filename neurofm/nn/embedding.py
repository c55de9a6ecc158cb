"""Embedding table of the unit (ID) vocabulary, resizable for new neurons.

A new lab's recording brings neurons the pretrained model has never seen. Their ID tokens are
appended to the vocabulary (specials first, unit ``k`` -> token ``3 + k``, DESIGN.md 3), so
fine-tuning needs new embedding rows *without touching the learned ones*. The rows live in an
ordinary ``nn.Parameter`` (``weight``), hence in the ``state_dict``: a checkpoint saved after
an extension reloads into a model built with the larger vocabulary.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["UnitEmbedding"]


class UnitEmbedding(nn.Module):
    """Token -> vector table for the unit (ID) vocabulary, with :meth:`extend_vocab` and
    :meth:`subset_vocab`.

    What: a ``(num_embeddings, dim)`` table, initialised ``N(0, init_std)`` (the Neuroformer
    reference initialises every embedding this way).

    When to resize: call :meth:`extend_vocab` before fine-tuning on recordings with new units
    (existing rows are kept bit for bit, new rows are drawn like the originals), and
    :meth:`subset_vocab` to drop units (e.g. to serve a model on one session's units only).

    The trap: both methods *replace* ``self.weight`` with a new ``nn.Parameter``. An optimizer
    built earlier still holds the old tensor (and Adam moments of the old shape): it would keep
    updating a parameter the model no longer uses, and the new rows would never train. Resize
    first, then build the optimizer (and any EMA copy, DDP wrapper or ``torch.compile``
    graph). Likewise, the output head over the same vocabulary must be resized in step --
    :meth:`neurofm.models.neuroformer.Neuroformer.extend_vocab` does both.
    """

    def __init__(self, num_embeddings: int, dim: int, init_std: float = 0.02):
        super().__init__()
        if num_embeddings < 1:
            raise ValueError(f"num_embeddings must be >= 1, got {num_embeddings}")
        self.init_std = init_std
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.reset_parameters()

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, tokens: Tensor) -> Tensor:  # (...) int64 -> (..., dim)
        return nn.functional.embedding(tokens, self.weight)

    @torch.no_grad()
    def extend_vocab(self, n_new: int, generator: torch.Generator | None = None) -> None:
        """Append ``n_new`` rows drawn ``N(0, init_std)``; rows ``0..num_embeddings-1`` are kept
        unchanged. Rebuild the optimizer afterwards (see the class docstring)."""
        if n_new < 0:
            raise ValueError(f"n_new must be >= 0, got {n_new}")
        old = self.weight
        new_rows = torch.empty(n_new, self.dim, dtype=old.dtype, device=old.device)
        new_rows.normal_(0.0, self.init_std, generator=generator)
        self.weight = nn.Parameter(torch.cat([old.detach(), new_rows], dim=0), requires_grad=old.requires_grad)

    @torch.no_grad()
    def subset_vocab(self, indices: Sequence[int] | Tensor) -> None:
        """Keep only the rows ``indices``, in that order (row ``i`` of the result is old row
        ``indices[i]``). Rebuild the optimizer afterwards (see the class docstring)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.weight.device).ravel()
        if idx.numel() == 0:
            raise ValueError("subset_vocab needs at least one index")
        if int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings:
            raise IndexError(f"subset_vocab indices must be in [0, {self.num_embeddings}), "
                             f"got [{int(idx.min())}, {int(idx.max())}]")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("subset_vocab indices contain duplicates")
        old = self.weight
        self.weight = nn.Parameter(old.detach()[idx].clone(), requires_grad=old.requires_grad)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.dim}"
