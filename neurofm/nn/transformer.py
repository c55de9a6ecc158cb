"""The transformer block both models are built from: MLP, attention, pre-norm block, KV caches.

One :class:`Block` serves every stage of the Neuroformer stack (DESIGN.md 3, 9) and every
layer of BaRISTA's backbone (DESIGN.md 4, 10)::

    x = x + attn(ln1(x), kv)      # self-attention (kv = x) or cross-attention (kv = a source)
    x = x + mlp(ln2(x))

The models differ only in options of this one block:

=================  ==========================  ==========================================
option             Neuroformer                 BaRISTA
=================  ==========================  ==========================================
``norm``           ``"layer"`` (LayerNorm)     ``"rms"`` (:class:`~neurofm.nn.norms.RMSNorm`)
``mlp``            ``"gelu"`` (fc, GELU, proj) ``"gated"`` (fc -> value, gate; proj(value * GELU(gate)))
``rope``           off                         on, positions = each token's patch index
``cross``          the cross-attention stages  never
``recompute_mlp``  off                         ``config.fast_kernels`` (:mod:`neurofm.nn.kernels`)
=================  ==========================  ==========================================

The state-dict keys are the same for both: ``ln1``, ``attn.qkv`` (or ``attn.q`` + ``attn.kv``),
``attn.proj``, ``attn.rope.freqs`` (with RoPE), ``ln2``, ``mlp.fc``, ``mlp.proj`` (``ln`` names
the block's norm whichever kind it is).

Keys and values of a cross-attention enter **as given**: the block does not normalise them.
Every key/value source in Neuroformer is already normalised once by the final LayerNorm of its
own encoder (previous-window encoder, stimulus encoder, behaviour embedding), which is the
same function as a per-block ``ln_kv`` with tied weights, and lets generation project a
source's keys/values once per window instead of once per generated token. (The reference
passed raw, unnormalised sources and added one more LayerNorm on every block's output; the
extra per-block norm is dropped here, the stack ends with one final norm instead.)

All attention goes through :func:`neurofm.nn.attention.attention` (SDPA or flash-attn).
Shapes: ``B`` batch, ``L`` query length, ``S`` key length, ``d`` = n_embd, ``H`` heads,
``Dh = d / H``.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurofm.nn.attention import Packed, attention, varlen_attention
from neurofm.nn.dropout import Dropout, dropout, keep_mask  # noqa: F401 (re-exported: this module's API)
from neurofm.nn.kernels import gated_mlp
from neurofm.nn.norms import RMSNorm
from neurofm.nn.rope import RotaryEmbedding, apply_rotary

__all__ = ["MLP", "Attention", "Block", "KVCache", "CrossKVCache", "Dropout", "dropout", "keep_mask"]


MLP_KINDS = ("gelu", "gated")
NORM_KINDS = ("layer", "rms")


class MLP(nn.Module):
    """Position-wise feed-forward with hidden width ``h = expansion * d``, then dropout.

    * ``kind="gelu"``: ``proj(GELU(fc(x)))``, ``fc`` d -> h (GPT; Neuroformer).
    * ``kind="gated"``: ``fc`` d -> 2h split into ``value, gate``, ``proj(value * GELU(gate))``
      (BaRISTA). With ``recompute`` (and gradients on) the hidden layer is recomputed in the
      backward pass instead of stored (:class:`~neurofm.nn.kernels.RecomputedGatedMLP`; the
      same numbers).
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, expansion: int = 4, *, kind: str = "gelu",
                 recompute: bool = False):
        super().__init__()
        if kind not in MLP_KINDS:
            raise ValueError(f"MLP kind must be one of {MLP_KINDS}, got {kind!r}")
        if recompute and kind != "gated":
            raise ValueError("MLP: recompute is the gated MLP's kernel (kind='gated')")
        self.kind, self.recompute = kind, recompute
        hidden = expansion * n_embd
        self.fc = nn.Linear(n_embd, (2 if kind == "gated" else 1) * hidden)
        self.proj = nn.Linear(hidden, n_embd)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (..., d) -> (..., d)
        if self.kind == "gated":
            y = gated_mlp(x, self.fc.weight, self.fc.bias, self.proj.weight, self.proj.bias,
                          recompute=self.recompute)
        else:
            y = self.proj(F.gelu(self.fc(x)))
        return self.drop(y)


class KVCache:
    """Keys and values of the positions already decoded, for one causal self-attention layer.

    litgpt-style: a buffer of the final length is allocated once (on the first append, with the
    keys' batch, heads, dtype and device), each decoding step writes its new keys/values in
    place and attention reads the filled prefix (a strided view, no copy). All sequences of the
    batch advance together, one position per step, so one ``length`` serves the whole batch.

    Args:
        max_len: the most positions the cache will hold (the block size).
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``(B, H, n, Dh)`` new keys/values; return all filled ``(B, H, length, Dh)``."""
        if self.k is None:
            b, h, _, dh = k.shape
            self.k = k.new_zeros(b, h, self.max_len, dh)
            self.v = v.new_zeros(b, h, self.max_len, dh)
        n = k.shape[2]
        end = self.length + n
        if end > self.max_len:
            raise RuntimeError(f"KVCache is full: {self.length} + {n} positions > max_len {self.max_len}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        self.length = 0


class CrossKVCache:
    """Projected keys/values of a fixed cross-attention source (previous window, stimulus,
    behaviour), computed on the first decoding step and reused on every later one."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.k is not None

    def store(self, k: Tensor, v: Tensor) -> None:
        """Keep ``(B, H, S, Dh)`` keys/values as contiguous copies: the projection hands over
        strided head views, which the CPU SDPA kernel reads more slowly on every later step."""
        self.k, self.v = k.contiguous(), v.contiguous()

    def reset(self) -> None:
        self.k = self.v = None


def _attend(fn, q: Tensor, k: Tensor, v: Tensor, *args, **kwargs) -> Tensor:
    """``fn(q, k, v, *args, **kwargs)`` (an attention function), returned in ``q``'s dtype.

    CPU SDPA kernels are ~10x slower in bf16 than in fp32 (forward + backward) at these sizes,
    while the projections gain from bf16 (AMX): on CPU, attention runs in fp32 (autocast off,
    it would cast back) and the result returns to the projections' dtype.
    """
    if q.device.type == "cpu" and (q.dtype != torch.float32 or torch.is_autocast_enabled("cpu")):
        with torch.autocast("cpu", enabled=False):
            return fn(q.float(), k.float(), v.float(), *args, **kwargs).to(q.dtype)
    return fn(q, k, v, *args, **kwargs)


class Attention(nn.Module):
    """Multi-head attention with fused projections.

    Self-attention projects q, k, v with one ``(d -> 3d)`` matmul; cross-attention projects q
    from the queries and k, v from the source with one ``(d_kv -> 2d)`` matmul.

    ``attn_dropout``: dropout on the attention weights after the softmax, the same on every
    device and layout (see :func:`neurofm.nn.attention.attention`).

    ``rope`` (self-attention only): queries and keys are rotated by the integer ``positions``
    given at call time (:class:`~neurofm.nn.rope.RotaryEmbedding`, ``rope_theta``,
    ``rope_learned_freq``); BaRISTA passes each token's patch index.
    """

    def __init__(self, n_embd: int, n_head: int, *, cross: bool = False, kv_dim: int | None = None,
                 attn_dropout: float = 0.0, resid_dropout: float = 0.0, rope: bool = False,
                 rope_theta: float = 10_000.0, rope_learned_freq: bool = False):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if rope and cross:
            raise ValueError("RoPE is for self-attention: a cross-attention source has no shared positions")
        self.n_head = n_head
        self.head_dim = n_embd // n_head
        self.cross = cross
        self.attn_dropout = attn_dropout
        if cross:
            self.q = nn.Linear(n_embd, n_embd)
            self.kv = nn.Linear(kv_dim or n_embd, 2 * n_embd)
        else:
            self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = Dropout(resid_dropout)
        self.rope = RotaryEmbedding(self.head_dim, rope_theta, rope_learned_freq) if rope else None

    def _rotary(self, positions: Tensor | None, batch_dims: int) -> tuple[Tensor, Tensor]:
        """``cos, sin`` of ``positions`` shaped to broadcast over heads: ``positions`` (L,) or
        (B, L) for padded ``(..., B, H, L, Dh)`` (``batch_dims`` = 2) and (N,) for packed
        ``(N, H, Dh)`` (``batch_dims`` = 1)."""
        if positions is None:
            raise ValueError("attention with RoPE needs the tokens' integer `positions`")
        cos, sin = self.rope.cos_sin(positions)  # (*positions.shape, Dh)
        if positions.dim() == batch_dims:  # (B, L) padded or (N,) packed: insert the head axis
            cos, sin = cos.unsqueeze(-3 if batch_dims == 2 else -2), sin.unsqueeze(-3 if batch_dims == 2 else -2)
        return cos, sin

    def _heads(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """(B, L, n*d) -> n tensors (B, H, L, Dh)."""
        b, length, _ = x.shape
        x = x.view(b, length, n, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return x.unbind(0)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, causal: bool = False,
                key_padding_mask: Tensor | None = None,
                cache: KVCache | CrossKVCache | None = None,
                seqs: Packed | None = None, seqs_kv: Packed | None = None,
                positions: Tensor | None = None) -> Tensor:
        """
        Args:
            x: ``(B, L, d)`` normalised queries, or ``(N, d)`` packed ones with ``seqs``.
            kv: ``(B, S, d_kv)`` cross-attention source (``(Nk, d_kv)`` packed with ``seqs_kv``);
                ignored for self-attention, and once a :class:`CrossKVCache` is filled.
            causal: query ``i`` sees keys ``<= i`` (bottom-right aligned with a cache).
            key_padding_mask: ``(B, S)`` bool, True for real keys (padded batches only).
            cache: :class:`KVCache` for self-attention decoding, :class:`CrossKVCache` for
                cross-attention decoding.
            seqs, seqs_kv: :class:`~neurofm.nn.attention.Packed` layouts of packed queries and
                of a packed cross-attention source: attention stays inside each sequence.
            positions: with RoPE, the integer position of each query/key: ``(L,)`` or ``(B, L)``
                padded, ``(N,)`` packed.

        Returns:
            ``(B, L, d)``, or ``(N, d)`` when packed.
        """
        if seqs is not None:
            return self._forward_packed(x, kv, causal, seqs, seqs_kv, positions)
        b, length, d = x.shape
        if self.cross:
            (q,) = self._heads(self.q(x), 1)
            if isinstance(cache, CrossKVCache) and cache.filled:
                k, v = cache.k, cache.v
            else:
                if kv is None:
                    raise ValueError("cross-attention needs a key/value source `kv`")
                k, v = self._heads(self.kv(kv), 2)
                if isinstance(cache, CrossKVCache):
                    cache.store(k, v)
        else:
            if self.rope is None:
                q, k, v = self._heads(self.qkv(x), 3)
            else:
                # (3, B, H, L, Dh): q and k rotated in one call
                qkv = self.qkv(x).view(b, length, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
                q, k = apply_rotary(qkv[:2], *self._rotary(positions, 2)).unbind(0)
                v = qkv[2].contiguous()  # so the (B, L, 3d) projection is not kept alive for v alone
            if isinstance(cache, KVCache):
                k, v = cache.append(k, v)
                # one new query sees every cached key: the causal mask is all-True, skip it
                if length == 1:
                    causal = False
        dropout_p = self.attn_dropout if self.training else 0.0
        y = _attend(attention, q, k, v, causal=causal, key_padding_mask=key_padding_mask,
                    dropout_p=dropout_p)  # (B, H, L, Dh)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, length, d)))

    def _forward_packed(self, x: Tensor, kv: Tensor | None, causal: bool, seqs: Packed,
                        seqs_kv: Packed | None, positions: Tensor | None) -> Tensor:
        """Packed sequences ``x`` (N, d) -> (N, d) through :func:`varlen_attention`."""
        n, d = x.shape
        if self.cross:
            if kv is None or seqs_kv is None:
                raise ValueError("packed cross-attention needs a packed source `kv` and its layout `seqs_kv`")
            q = self.q(x).view(n, self.n_head, self.head_dim)
            k, v = self.kv(kv).view(kv.shape[0], 2, self.n_head, self.head_dim).unbind(1)
        else:
            q, k, v = self.qkv(x).view(n, 3, self.n_head, self.head_dim).unbind(1)
            if self.rope is not None:
                cos, sin = self._rotary(positions, 1)  # (N, 1, Dh)
                q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            seqs_kv = seqs
        dropout_p = self.attn_dropout if self.training else 0.0
        y = _attend(varlen_attention, q, k, v, seqs, seqs_kv, causal=causal, dropout_p=dropout_p)  # (N, H, Dh)
        return self.resid_drop(self.proj(y.reshape(n, d)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln1(x), kv)`` then ``x + mlp(ln2(x))``.

    Args:
        n_embd, n_head: width and heads.
        cross: cross-attention to a source given at call time (else self-attention).
        causal: causal self-attention (a block property: the Neuroformer stages are either
            causal over the current window or bidirectional over a source).
        kv_dim: width of the cross-attention source (default ``n_embd``).
        attn_dropout, resid_dropout: dropout on attention weights / on each residual branch.
        norm: ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm, no bias); ``norm_eps`` its epsilon.
        mlp: ``"gelu"`` or ``"gated"`` (:class:`MLP`), hidden width ``mlp_ratio * n_embd``.
        recompute_mlp: the gated MLP's recomputing kernel while training (:class:`MLP`).
        rope, rope_theta, rope_learned_freq: rotary embedding of the self-attention's queries
            and keys by the ``positions`` given at call time (:class:`Attention`).
    """

    def __init__(self, n_embd: int, n_head: int, *, cross: bool = False, causal: bool = False,
                 kv_dim: int | None = None, attn_dropout: float = 0.0, resid_dropout: float = 0.0,
                 norm: str = "layer", norm_eps: float = 1e-5, mlp: str = "gelu", mlp_ratio: int = 4,
                 recompute_mlp: bool = False, rope: bool = False, rope_theta: float = 10_000.0,
                 rope_learned_freq: bool = False):
        super().__init__()
        if cross and causal:
            raise ValueError("a cross-attention block cannot be causal")
        if norm not in NORM_KINDS:
            raise ValueError(f"Block norm must be one of {NORM_KINDS}, got {norm!r}")
        self.causal = causal
        make_norm = RMSNorm if norm == "rms" else nn.LayerNorm
        self.ln1 = make_norm(n_embd, eps=norm_eps)
        self.attn = Attention(n_embd, n_head, cross=cross, kv_dim=kv_dim, attn_dropout=attn_dropout,
                              resid_dropout=resid_dropout, rope=rope, rope_theta=rope_theta,
                              rope_learned_freq=rope_learned_freq)
        self.ln2 = make_norm(n_embd, eps=norm_eps)
        self.mlp = MLP(n_embd, resid_dropout, mlp_ratio, kind=mlp, recompute=recompute_mlp)

    def forward(self, x: Tensor, kv: Tensor | None = None, *, key_padding_mask: Tensor | None = None,
                cache: KVCache | CrossKVCache | None = None, seqs: Packed | None = None,
                seqs_kv: Packed | None = None, positions: Tensor | None = None) -> Tensor:
        """``x`` (B, L, d); ``kv`` (B, S, d_kv) for cross-attention; returns (B, L, d).

        ``key_padding_mask`` (B, S) masks padded keys: the source's for cross-attention, the
        sequence's own for self-attention (a right-padded causal sequence needs none, since
        causality already hides the trailing padding from every real query). Packed input:
        ``x`` (N, d) laid out as ``seqs``, ``kv`` (Nk, d_kv) as ``seqs_kv`` (see
        :meth:`Attention.forward`). ``positions``: the tokens' RoPE positions (blocks with
        ``rope``).
        """
        x = x + self.attn(self.ln1(x), kv, causal=self.causal, key_padding_mask=key_padding_mask, cache=cache,
                          seqs=seqs, seqs_kv=seqs_kv, positions=positions)
        return x + self.mlp(self.ln2(x))
