"""The one attention function both models use.

Backends, chosen per call from the inputs (never from a global switch):

* ``flash_attn`` -- on CUDA, fp16/bf16 inputs, with the optional ``flash-attn`` package
  (``pip install neurofm[gpu]``). Padded batches go through ``flash_attn_func`` when no mask
  is needed; packed variable-length batches through ``flash_attn_varlen_func``.
* ``sdpa`` -- :func:`torch.nn.functional.scaled_dot_product_attention` everywhere else. On CUDA
  it picks its own flash / memory-efficient kernel when the mask allows; on CPU it has a fused
  kernel too.

All paths compute the same thing (a test compares them), so models never branch on backend.
Shapes follow SDPA: ``(B, H, L, Dh)``.

Attention dropout (``dropout_p``) means one thing on every backend and layout: dropout on the
attention weights after the softmax, each weight zeroed with probability ``p`` and the others
scaled by ``1 / (1 - p)``, with one draw per (sample, head, key) shared by the queries. For
any one query that is exactly the distribution of SDPA's / flash-attn's ``dropout_p``; sharing
the draw across queries lets it be applied to the values (:func:`_drop_values`) before any
fused kernel (CPU SDPA, flash-attn, varlen), which then runs without a dropout of its own:
the same distribution on the padded and packed layouts and on every device, and no unfused
path on CPU (where SDPA's own dropout is several times slower).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from neurofm.nn.dropout import keep_mask

log = logging.getLogger(__name__)

try:  # optional GPU extra
    from flash_attn import flash_attn_func, flash_attn_varlen_func  # type: ignore

    HAS_FLASH_ATTN = True
except Exception:  # ImportError, or a CUDA/ABI mismatch on import
    flash_attn_func = flash_attn_varlen_func = None
    HAS_FLASH_ATTN = False

_logged_backends: set[str] = set()


def _log_backend_once(name: str) -> None:
    if name not in _logged_backends:
        _logged_backends.add(name)
        log.info("neurofm attention backend: %s", name)


def attention_backend(q: Tensor, needs_mask: bool = False) -> str:
    """Name of the backend :func:`attention` uses for a query tensor like ``q``."""
    if (
        HAS_FLASH_ATTN
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and not needs_mask
        and q.shape[-1] <= 256
    ):
        return "flash_attn"
    return "sdpa"


def varlen_is_free(x: Tensor) -> bool:
    """Whether :func:`varlen_attention` on activations like ``x`` runs flash-attn's varlen
    kernel (CUDA, flash-attn installed, half precision or CUDA autocast), where packing
    sequences saves all the work padding would cost; elsewhere it pads internally."""
    half = x.dtype in (torch.float16, torch.bfloat16) or (x.is_cuda and torch.is_autocast_enabled("cuda"))
    return HAS_FLASH_ATTN and x.is_cuda and half


def _drop_values(v: Tensor, p: float) -> Tensor:
    """Post-softmax attention dropout as a mask on the values: ``v`` ``(B, H, S, Dh)`` or packed
    ``(N, H, Dh)``; each (sample, head, key) row kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``. ``sum_j w_ij m_j v_j / (1 - p)`` is the output of dropping weight
    ``w_ij`` (after the softmax) with the key's draw ``m_j``."""
    keep = keep_mask((*v.shape[:-1], 1), p, v.device)
    return v * (keep * (1.0 / (1.0 - p))).to(v.dtype)


def _causal_mask(lq: int, lk: int, device: torch.device) -> Tensor:
    """Bottom-right aligned causal mask (True = may attend), shape (lq, lk).

    Query ``i`` sits at absolute position ``lk - lq + i``, which is what a KV cache needs: the
    new queries come after the ``lk - lq`` cached keys.
    """
    q_pos = torch.arange(lk - lq, lk, device=device)[:, None]
    k_pos = torch.arange(lk, device=device)[None, :]
    return k_pos <= q_pos


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Scaled dot-product attention.

    Args:
        q: ``(B, H, Lq, Dh)`` queries.
        k, v: ``(B, H, Lk, Dh)`` keys and values.
        causal: query ``i`` sees keys up to its own position, aligned bottom-right so that
            ``Lq < Lk`` (a KV cache) works: the queries are the *last* ``Lq`` positions.
        key_padding_mask: ``(B, Lk)`` bool, True where the key is real, False for padding.
            A query row whose keys are all padding returns zeros (never NaN).
        attn_mask: ``(B or 1, H or 1, Lq, Lk)`` or ``(Lq, Lk)`` bool, True = may attend.
        dropout_p: attention dropout after the softmax (module docstring; pass 0 in eval).

    Returns:
        ``(B, H, Lq, Dh)``.
    """
    if dropout_p > 0.0:
        v, dropout_p = _drop_values(v, dropout_p), 0.0
    needs_mask = key_padding_mask is not None or attn_mask is not None or (
        causal and q.shape[-2] != k.shape[-2]
    )
    if attention_backend(q, needs_mask) == "flash_attn":
        _log_backend_once("flash_attn")
        out = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=causal
        )
        return out.transpose(1, 2)

    _log_backend_once("sdpa")
    if not needs_mask:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)

    lq, lk = q.shape[-2], k.shape[-2]
    if key_padding_mask is not None and attn_mask is None and not causal:
        # Padding only: a broadcast (B, 1, 1, Lk) mask, never a (B, 1, Lq, Lk) one (BaRISTA's
        # padded batches would otherwise keep one full mask per layer for the backward pass).
        kpm = key_padding_mask.bool()
        empty_b = ~kpm.any(-1)  # samples without a single real key
        # on CUDA, always mend (cheap) rather than ask: bool() would stall the launch queue every layer
        has_empty = True if q.is_cuda else bool(empty_b.any())
        if has_empty:
            kpm = kpm | empty_b[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=kpm[:, None, None, :], dropout_p=dropout_p)
        return out.masked_fill(empty_b[:, None, None, None], 0.0) if has_empty else out
    mask = torch.ones(1, 1, lq, lk, dtype=torch.bool, device=q.device)
    if causal:
        mask = mask & _causal_mask(lq, lk, q.device)
    if attn_mask is not None:
        mask = mask & (attn_mask if attn_mask.dim() == 4 else attn_mask[None, None])
    if key_padding_mask is not None:
        mask = mask & key_padding_mask[:, None, None, :].bool()
    # Rows with no visible key would give NaN; let them see everything and zero them after.
    empty = ~mask.any(-1, keepdim=True)
    if bool(empty.any()):
        mask = mask | empty
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if bool(empty.any()):
        out = out.masked_fill(empty, 0.0)
    return out


@dataclass
class Packed:
    """Layout of ``S`` variable-length sequences concatenated along one axis (no padding).

    Sequence ``i`` holds rows ``cu_seqlens[i]:cu_seqlens[i+1]`` of a packed tensor -- the
    ``cu_seqlens`` / ``max_seqlen`` pair flash-attn's varlen kernels take.

    Attributes:
        cu_seqlens: ``(S + 1,)`` int32 cumulative lengths, starting at 0.
        max_seqlen: the longest sequence (a Python int: kernels size their grids with it).
    """

    cu_seqlens: Tensor
    max_seqlen: int

    @classmethod
    def from_lengths(cls, lengths: Tensor) -> "Packed":
        """From ``(S,)`` sequence lengths (any integer dtype)."""
        lengths = lengths.to(torch.int32)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=lengths.device)
        torch.cumsum(lengths, 0, out=cu[1:])
        return cls(cu, int(lengths.max()) if len(lengths) else 0)

    @property
    def lengths(self) -> Tensor:  # (S,) int64
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.shape[0] - 1

    @property
    def total(self) -> int:
        return int(self.cu_seqlens[-1])

    @property
    def seq_ids(self) -> Tensor:
        """``(N,)`` int64: the sequence each packed row belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_seqs, device=self.cu_seqlens.device), self.lengths,
                                       output_size=self.total)

    @property
    def positions(self) -> Tensor:
        """``(N,)`` int64: each packed row's position inside its own sequence."""
        n = self.total
        return torch.arange(n, device=self.cu_seqlens.device) - self.cu_seqlens[:-1].long().repeat_interleave(
            self.lengths, output_size=n)

    def mean(self, x: Tensor) -> Tensor:
        """Per-sequence mean of packed rows ``(N, ...)`` -> ``(S, ...)`` (0 for an empty sequence)."""
        sums = x.new_zeros((self.num_seqs, *x.shape[1:])).index_add_(0, self.seq_ids, x)
        shape = (self.num_seqs,) + (1,) * (x.dim() - 1)
        return sums / self.lengths.clamp(min=1).to(x.dtype).view(shape)


def pack(x: Tensor, mask: Tensor) -> tuple[Tensor, Packed]:
    """Keep the real entries of a padded batch, sequence after sequence.

    Args:
        x: ``(S, L, ...)`` padded sequences.
        mask: ``(S, L)`` bool, True for real entries. Real entries need not be contiguous: a
            sequence is its real entries in order.

    Returns:
        ``(N, ...)`` the real rows, and their :class:`Packed` layout.
    """
    mask = mask.bool()
    packed = Packed.from_lengths(mask.sum(1))
    return x[mask], packed


def unpack(x: Tensor, packed: Packed, length: int | None = None) -> Tensor:
    """Inverse of :func:`pack` for left-aligned sequences: ``(N, ...)`` -> ``(S, L, ...)``,
    zeros after each sequence's end; ``L = length`` or ``packed.max_seqlen``."""
    length = packed.max_seqlen if length is None else length
    flat = packed.seq_ids * length + packed.positions
    out = x.new_zeros((packed.num_seqs * length, *x.shape[1:]))
    return out.index_copy(0, flat, x).view(packed.num_seqs, length, *x.shape[1:])


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seqs_q: Packed,
    seqs_k: Packed | None = None,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention over packed variable-length sequences: sequence ``i`` of the queries attends
    to sequence ``i`` of the keys, never to another.

    Args:
        q: ``(Nq, H, Dh)`` every sequence's queries, concatenated as ``seqs_q`` says.
        k, v: ``(Nk, H, Dh)`` keys and values, laid out as ``seqs_k`` (default: ``seqs_q``,
            self-attention).
        causal: bottom-right aligned within each sequence (query ``j`` of a sequence with
            ``lq`` queries and ``lk`` keys sees keys ``<= j + lk - lq``).

    Returns:
        ``(Nq, H, Dh)``. A query whose sequence has no key returns zeros.

    On CUDA with flash-attn and fp16/bf16 inputs this is ``flash_attn_varlen_func``: padding
    costs nothing. Elsewhere the sequences are padded to the longest, attended with SDPA and
    packed again -- the same numbers, the padded cost.
    """
    seqs_k = seqs_q if seqs_k is None else seqs_k
    if seqs_q.num_seqs != seqs_k.num_seqs:
        raise ValueError(f"varlen_attention: {seqs_q.num_seqs} query sequences but {seqs_k.num_seqs} key sequences")
    if dropout_p > 0.0:  # the same dropout as the padded path's (module docstring)
        v, dropout_p = _drop_values(v, dropout_p), 0.0
    if attention_backend(q) == "flash_attn":
        _log_backend_once("flash_attn_varlen")
        out = flash_attn_varlen_func(
            q, k, v, seqs_q.cu_seqlens, seqs_k.cu_seqlens, seqs_q.max_seqlen, seqs_k.max_seqlen,
            dropout_p=dropout_p, causal=causal,
        )
        if bool((seqs_k.lengths == 0).any()):  # no key: zeros, as the SDPA path gives
            out = out.masked_fill((seqs_k.lengths == 0)[seqs_q.seq_ids][:, None, None], 0.0)
        return out
    _log_backend_once("sdpa_varlen")
    lq, lk = max(seqs_q.max_seqlen, 1), max(seqs_k.max_seqlen, 1)
    qp, kp, vp = (unpack(t, s, n).transpose(1, 2) for t, s, n in ((q, seqs_q, lq), (k, seqs_k, lk), (v, seqs_k, lk)))
    len_q, len_k = seqs_q.lengths, seqs_k.lengths
    key_real = torch.arange(lk, device=q.device)[None, :] < len_k[:, None]  # (S, Lk)
    if causal and bool((len_q == len_k).all()):
        # Right-padded and aligned: causality alone hides every padded key from every real query.
        out = attention(qp, kp, vp, causal=True, dropout_p=dropout_p)
    elif causal:
        shift = (len_k - len_q)[:, None, None]  # bottom-right alignment per sequence
        visible = torch.arange(lk, device=q.device)[None, None, :] <= torch.arange(lq, device=q.device)[None, :, None] + shift
        out = attention(qp, kp, vp, attn_mask=(visible & key_real[:, None, :])[:, None], dropout_p=dropout_p)
    else:
        out = attention(qp, kp, vp, key_padding_mask=key_real, dropout_p=dropout_p)
    out = out.transpose(1, 2).reshape(-1, *q.shape[1:])  # (S * Lq, H, Dh)
    return out.index_select(0, seqs_q.seq_ids * lq + seqs_q.positions)
