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
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

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
        dropout_p: attention dropout (pass 0 in eval).

    Returns:
        ``(B, H, Lq, Dh)``.
    """
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
        has_empty = bool(empty_b.any())
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


def varlen_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention over packed variable-length sequences (no padding).

    Args:
        q: ``(Nq, H, Dh)`` all sequences' queries concatenated; sequence ``i`` is rows
            ``cu_seqlens_q[i]:cu_seqlens_q[i+1]``.
        k, v: ``(Nk, H, Dh)`` likewise with ``cu_seqlens_k``.
        cu_seqlens_q, cu_seqlens_k: ``(S + 1,)`` int32 cumulative lengths starting at 0.
        max_seqlen_q, max_seqlen_k: longest sequence (flash-attn needs them up front).
        causal: bottom-right aligned within each sequence.

    Returns:
        ``(Nq, H, Dh)``. A token never attends outside its own sequence.
    """
    if attention_backend(q) == "flash_attn":
        _log_backend_once("flash_attn_varlen")
        return flash_attn_varlen_func(
            q, k, v, cu_seqlens_q.int(), cu_seqlens_k.int(), max_seqlen_q, max_seqlen_k,
            dropout_p=dropout_p, causal=causal,
        )
    # SDPA fallback: one block-diagonal mask over the whole pack. Memory O(Nq * Nk), fine for
    # the CPU sizes this path serves; the GPU path above is the fast one.
    _log_backend_once("sdpa_varlen")
    seq_q = _segment_ids(cu_seqlens_q, q.shape[0])
    seq_k = _segment_ids(cu_seqlens_k, k.shape[0])
    mask = seq_q[:, None] == seq_k[None, :]  # (Nq, Nk)
    if causal:
        lens_q = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
        lens_k = cu_seqlens_k[1:] - cu_seqlens_k[:-1]
        # bottom-right alignment: query j of a sequence sits at key position j + len_k - len_q
        pos_q = torch.arange(q.shape[0], device=q.device) - cu_seqlens_q[seq_q] + (lens_k - lens_q)[seq_q]
        pos_k = torch.arange(k.shape[0], device=k.device) - cu_seqlens_k[seq_k]
        mask = mask & (pos_k[None, :] <= pos_q[:, None])
    out = attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
        attn_mask=mask[None, None], dropout_p=dropout_p,
    )
    return out[0].transpose(0, 1)


def _segment_ids(cu_seqlens: Tensor, total: int) -> Tensor:
    """Sequence index of every packed row, ``(total,)`` long."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths, output_size=total)
