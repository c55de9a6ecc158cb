"""Neuroformer's token layout: the one place both the data side and the model read it.

The spike tokenizer (:class:`neurofm.data.tokenizer.SpikeTokenizer`) builds training windows
with :func:`window_sequences`; free-running generation
(:mod:`neurofm.models.neuroformer_generate`) builds the previous window of the next window
from generated spikes with the same function, so the two can never disagree. Packed spike
batches (:func:`pack_spikes` / :func:`unpack_spikes`) are read by the data module (collate) and
by generation (which decodes padded windows).

Layout (DESIGN.md 3): ID tokens ``PAD = 0, SOS = 1, EOS = 2``, unit ``k`` -> ``3 + k``; dt
tokens ``0..K`` offsets, then ``K + 1`` (SOS), ``K + 2`` (EOS), ``K + 3`` (PAD). A window is
``[SOS] spikes [EOS] PAD...``, spikes ordered by dt bin then ascending unit; overflow keeps the
latest spikes.

This module imports only NumPy, torch and :mod:`neurofm.nn.attention` (for the packed layout):
data and models both sit above it.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from neurofm.nn.attention import Packed, unpack

__all__ = ["PAD", "SOS", "EOS", "N_SPECIAL", "BOUNDARY_EPS_S", "window_sequences", "pack_spikes", "unpack_spikes",
           "packed_layout", "real_length"]

# ID vocabulary: specials first so that new units are an append (DESIGN.md 7).
PAD, SOS, EOS = 0, 1, 2
N_SPECIAL = 3

# Window bounds are moved this many seconds earlier before the binary search, so that a spike
# sitting exactly on a boundary lands in the window that starts there even when the bound was
# computed with float round-off (0.2 - 0.05 = 0.15000000000000002 > 0.15). 1 ns is far below
# any spike-time resolution (30 kHz sampling = 33 us).
BOUNDARY_EPS_S = 1e-9


def window_sequences(times: np.ndarray, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, block: int,
                     dt: float, k_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token sequences of the windows ``[starts, ends)`` of one sorted spike train.

    Args:
        times: ``(N,)`` float64 spike times (s), sorted ascending.
        tokens: ``(N,)`` int64 ID tokens (``3 + unit``).
        starts, ends: ``(W,)`` window bounds (s); dt is measured from each window's ``start``.
        block: the model's sequence length (``block_size.id`` or ``.prev_id``); a window holds
            at most ``block - 2`` spikes, the earliest are dropped.
        dt: the dt-token resolution (s).
        k_max: ``K``, the largest dt offset; offsets are clipped to ``0..K``.

    Returns:
        ``ids``, ``dts`` ``(W, block + 1)`` int64 full sequences (model input = ``[:, :block]``,
        next-token target = ``[:, 1:]``), and ``n_dropped`` ``(W,)``.

    Vectorised over windows: binary search for the bounds, one sort for the within-bin unit
    order, one scatter into the padded arrays; no per-spike or per-window Python loop.
    """
    eos_dt, pad_dt = k_max + 2, k_max + 3
    W, S, K = len(ends), block + 1, k_max
    cap = block - 2  # spikes that fit between SOS and EOS of the (block + 1)-long sequence
    i0 = np.searchsorted(times, starts - BOUNDARY_EPS_S, side="left").astype(np.int64)
    i1 = np.searchsorted(times, ends - BOUNDARY_EPS_S, side="left").astype(np.int64)
    n = i1 - i0  # (W,) spikes per window
    kept = np.minimum(n, cap)
    n_dropped = n - kept
    first = np.cumsum(n) - n  # (W,) offset of each window in the flat list of its spikes
    ar = np.arange(int(n.sum()), dtype=np.int64)  # (M,) flat position
    idx = np.repeat(i0 - first, n) + ar  # (M,) index into the spike train
    x = times[idx]
    x -= np.repeat(starts, n)
    x *= 1.0 / dt
    np.rint(x, out=x)
    np.clip(x, 0, K, out=x)
    d = x.astype(np.int64)  # (M,) dt index from the window's nominal start
    # Order within a window: dt bin, then unit. Spikes are time-sorted, so the (window, dt
    # bin) group number gd never decreases along the flat list; sorting the key
    # gd * V + token orders tokens inside each group and leaves every group where it was.
    V = int(tokens.max(initial=0)) + 1
    gv = np.repeat(np.arange(W, dtype=np.int64) * (K + 1), n)
    gv += d
    gv *= V
    key = tokens[idx]
    key += gv
    key.sort()
    key -= gv
    tok = key
    # scatter into the (W, S) sequences; overflow keeps the LATEST cap spikes of a window
    flat = np.repeat(np.arange(W, dtype=np.int64) * S + 1 - first - n_dropped, n) + ar
    if n_dropped.any():
        keep = ar >= np.repeat(first + n_dropped, n)
        flat, tok, d = flat[keep], tok[keep], d[keep]
    ids = np.full((W, S), PAD, dtype=np.int64)
    dts = np.full((W, S), pad_dt, dtype=np.int64)
    ids[:, 0] = SOS
    dts[:, 0] = 0  # SOS slot: dt index 0, also on overflow (reference bug 1 fixed)
    ids.reshape(-1)[flat] = tok
    dts.reshape(-1)[flat] = d
    eos = np.arange(W) * S + 1 + kept
    ids.reshape(-1)[eos] = EOS
    dts.reshape(-1)[eos] = eos_dt
    return ids, dts, n_dropped


# --------------------------------------------------------------------------------------------
# packed spike batches
# --------------------------------------------------------------------------------------------

# padded token keys -> (their mask key, cu_seqlens key, max_seqlen key) in a packed batch
_PACK_GROUPS = (
    (("id", "dt", "target_id", "target_dt"), "mask", "cu_seqlens", "max_seqlen"),
    (("id_prev", "dt_prev"), "mask_prev", "cu_seqlens_prev", "max_seqlen_prev"),
)


def pack_spikes(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A padded Neuroformer batch as a packed one: no PAD token left anywhere.

    The real tokens of all windows are concatenated window after window: ``id``, ``dt``,
    ``target_id``, ``target_dt`` become ``(N,)`` with ``cu_seqlens`` ``(B + 1,)`` int32 and
    ``max_seqlen`` (int); ``id_prev``, ``dt_prev`` become ``(Np,)`` with ``cu_seqlens_prev``
    and ``max_seqlen_prev``. ``mask`` / ``mask_prev`` are dropped; per-window keys
    (``interval``, ``behavior``...) are unchanged. :class:`~neurofm.models.neuroformer.Neuroformer`
    gives the same loss on either form; with flash-attn the packed one costs nothing for padding.
    """
    out = dict(batch)
    for keys, mask_key, cu_key, max_key in _PACK_GROUPS:
        if keys[0] not in batch:
            continue
        mask = batch[mask_key].bool() if mask_key in batch else batch[keys[0]] != 0
        lengths = mask.sum(1)
        if not bool((mask == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all()):
            raise ValueError(f"pack_spikes: batch[{mask_key!r}] is not right-padded (a PAD before a real token); "
                             "windows from the spike tokenizer always are")
        for key in keys:
            if key in batch:
                out[key] = batch[key][mask]
        layout = Packed.from_lengths(lengths)
        out[cu_key], out[max_key] = layout.cu_seqlens, layout.max_seqlen
        out.pop(mask_key, None)
    return out


def unpack_spikes(batch: Mapping[str, Any], pad_dt: int) -> dict[str, Any]:
    """Inverse of :func:`pack_spikes`: each window's tokens padded to the batch's longest
    (``PAD`` = 0 for IDs, ``pad_dt`` for dt tokens) and the masks rebuilt. A padded batch is
    returned as it is."""
    out = dict(batch)
    for keys, mask_key, cu_key, max_key in _PACK_GROUPS:
        if cu_key not in batch:
            continue
        seqs = Packed(batch[cu_key], int(batch[max_key]))
        mask = torch.arange(seqs.max_seqlen, device=seqs.cu_seqlens.device) < seqs.lengths[:, None]
        for key in keys:
            if key in batch:
                out[key] = unpack(batch[key], seqs).masked_fill(~mask, pad_dt if "dt" in key else 0)
        out[mask_key] = mask
        del out[cu_key], out[max_key]
    return out


def packed_layout(batch: Mapping[str, Any], key: str = "id") -> Packed | None:
    """The :class:`~neurofm.nn.attention.Packed` layout of ``batch[key]`` (``"id"``: the
    current windows, ``"id_prev"``: the previous ones) in a packed batch, else None."""
    group = next(g for g in _PACK_GROUPS if g[0][0] == key)
    cu, longest = group[2], group[3]
    if cu not in batch:
        return None
    return Packed(batch[cu], int(batch[longest]))


def real_length(mask: torch.Tensor) -> int:
    """1 + the last position that is real in any row of a ``(B, L)`` token mask (0 for an
    all-PAD batch): the positions a batch needs once trailing padding is cut."""
    if mask.shape[1] == 0:
        return 0
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return int((mask.long() * pos).amax())
