"""BaRISTA: a spatiotemporal transformer for intracranial EEG (NeurIPS 2025, arXiv 2512.12135).

Written from the paper and DESIGN.md 4 / 10 (the reference code is non-commercial and was not
read). Data flow for a batch of segments ``x`` (B, C, T), ``T = n_patches * patch_len``::

    patches (B, C, n, L) --CNN tokenizer + Linear(L -> d)--> tokens (B, n, C, d)   time-major
    tokens [masked channels -> mask token] + spatial embedding of each channel's category
    --> joint attention over all n*C tokens (RoPE on the patch index) --> (B, n, C, d)

Pretraining (:class:`Barista`) masks whole spatial categories at the MASK scale, predicts the
EMA tokenizer's tokens of the masked positions, and exports :class:`BaristaEncoder` (EMA
tokenizer + backbone + spatial table) for fine-tuning with the heads at the end of the file.

Shapes: ``B`` batch, ``C`` channels (padded to the batch's largest), ``n`` patches, ``L``
samples per patch, ``d`` model width, ``H`` heads, ``N = n * C`` tokens per sample.
Padded channels (``channel_mask`` False) are never attended to, never masked and never
pooled, so they change no real token's output.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from neurofm.atlas import SpatialVocab
from neurofm.config import from_dict
from neurofm.hub import PretrainedMixin
from neurofm.nn.attention import Packed, pack, varlen_is_free
from neurofm.nn.kernels import Recompute, patch_conv1d
from neurofm.nn.norms import RMSNorm, time_layer_norm
from neurofm.nn.spectral import band_power, resolved_bands
from neurofm.nn.transformer import Block

__all__ = [
    "BaristaConfig", "CNNTokenizer", "SpatialEmbedding", "BaristaBackbone", "BaristaEncoder", "Barista",
    "Predictor", "TokenWeightingHead", "PooledHead", "BandPowerReadout", "WaveformReadout", "WAVEFORM_BINS",
    "evoked_waveform", "ChannelReconstructionHead", "BaristaFinetunedConfig", "BaristaFinetuned", "finetune_heads",
    "head_output", "spatial_mask",
    "STATE_VERSION", "upgrade_state_dict",
]

ENCODE_SCALES = ("coords", "parcel", "lobe")
MASK_SCALES = ("channel", "parcel", "lobe")
POWER_POSITIONS = ("masked", "all")
#: CNN tokenizer on CUDA: patches per pass = this x ``cnn_chunk``. A paper-size training step on an
#: H200 (bf16, 200 channels): 564 ms at 256 patches per pass, 100 ms at 4,096 (batch 8, peak memory
#: 0.56 -> 1.06 GiB); 3.96 s vs 0.48 s at batch 64 (3.4 GiB either way). CPU passes stay at
#: ``cnn_chunk``: there the transient activations, not the launches, set the cost.
CUDA_CHUNK_FACTOR = 16
_SCALE_ALIASES = {"channel": "coords", "coord": "coords", "coordinates": "coords", "parcels": "parcel",
                  "lobes": "lobe"}
_MASK_ALIASES = {"coords": "channel", "coord": "channel", "coordinates": "channel", "channels": "channel",
                 "parcels": "parcel", "lobes": "lobe"}


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


@dataclass
class BaristaConfig:
    """Everything that defines a BaRISTA model; JSON-serialisable (:meth:`to_dict`).

    Defaults are the published encoder (DESIGN.md 10): d 64, 12 layers, 4 heads, 12 patches
    of 512 samples (3 s at 2048 Hz), parcel encoding with channel masking (the paper's best
    pairing), 30% of tokens masked.

    Spatial scales: ``encode_scale`` picks the table added to tokens (``coords`` = channel
    coordinates, ``parcel``, ``lobe``); ``mask_scale`` picks the categories masked whole
    (``channel``, ``parcel``, ``lobe``). ``"channel"`` is accepted for ``encode_scale`` and
    ``"coords"`` for ``mask_scale`` (the channel scale is encoded by coordinates).

    ``cnn_chunk``, ``checkpoint_cnn`` and ``checkpoint_blocks`` trade speed for memory, and
    ``fast_kernels`` picks the hand-written CPU kernels of :mod:`neurofm.nn.kernels` or their
    plain PyTorch references; none changes a number the model computes beyond round-off.
    """

    # shape
    d_model: int = 64
    n_layers: int = 12
    n_heads: int = 4
    mlp_ratio: int = 4
    patch_len: int = 512
    n_patches: int = 12
    cnn_channels: int = 5
    cnn_kernel: int = 3
    cnn_dilations: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_coord_bins: int = 200
    n_parcels: int = 121
    n_lobes: int = 21
    encode_scale: str = "parcel"
    # off (faithful): a token is Linear(L -> d) of the CNN's output only. On: plus a learned
    # Linear(n -> d, no bias) of the n log scales the tokenizer's LayerNorms remove (and the
    # patch's log RMS); see CNNTokenizer and bench/barista_token_power.py
    token_scales: bool = False
    # pretraining
    mask_scale: str = "channel"
    mask_ratio: float = 0.3
    predictor_layers: int = 3
    predictor_final_gelu: bool = False
    mask_token_std: float = 0.02
    # 0 (faithful): the published objective. > 0: plus this weight x the MSE of a linear read of
    # each masked token that predicts its patch's standardised log band power (an extension
    # beyond DESIGN.md 4; see Barista.pretrain_loss). Pretraining only: no encoder weight changes.
    # Measured on simulated subjects (bench/barista_quality.py): alone it did not help; with
    # power_positions "all" and token_scales it helped force (not events). Off: the published one
    power_target: float = 0.0
    # which tokens the power head reads: "masked" (their power from the context) or "all" (also
    # every observed token, its own patch's power: the direct way to keep amplitude in the tokens)
    power_positions: str = "masked"
    # regularisation and numerics
    dropout: float = 0.1
    attn_dropout: float = 0.0
    predictor_dropout: float = 0.1
    norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_learned_freq: bool = False
    init_std: float | None = None  # None: fan_in ** -0.5 (see _init_weights)
    sampling_rate: float = 2048.0  # Hz of the data the model was trained on (for re-patching)
    # memory / speed (no effect on results)
    cnn_chunk: int = 256  # patches per CNN pass on CPU; CUDA_CHUNK_FACTOR x on CUDA; 0 = all at once
    checkpoint_cnn: bool = True
    checkpoint_blocks: bool = False
    fast_kernels: bool = True  # CPU only; False: plain PyTorch (nn.Conv1d, autograd, torch checkpoint), the reference
    # the category vocabulary the parcel indices refer to (SpatialVocab.to_dict())
    spatial_vocab: dict[str, Any] | None = None
    # what the input went through beyond its rate and patch shape (notch, re-reference, channel
    # selection, z-scoring): neurofm.data.segmenter.Preprocessing as a dict; fine-tuning and
    # evaluation apply it (None: not recorded, folders of older versions)
    preprocessing: dict[str, Any] | None = None

    #: Fields that fix parameter shapes; a checkpoint loads only into a config that agrees on them.
    SHAPE_FIELDS = ("d_model", "n_layers", "n_heads", "mlp_ratio", "patch_len", "cnn_channels", "cnn_kernel",
                    "cnn_dilations", "n_coord_bins", "n_parcels", "n_lobes", "encode_scale", "predictor_layers",
                    "token_scales")

    def __post_init__(self):
        self.cnn_dilations = tuple(int(d) for d in self.cnn_dilations)
        self.encode_scale = _SCALE_ALIASES.get(self.encode_scale, self.encode_scale)
        self.mask_scale = _MASK_ALIASES.get(self.mask_scale, self.mask_scale)
        if self.encode_scale not in ENCODE_SCALES:
            raise ValueError(f"BaristaConfig.encode_scale must be one of {ENCODE_SCALES}, got {self.encode_scale!r}")
        if self.mask_scale not in MASK_SCALES:
            raise ValueError(f"BaristaConfig.mask_scale must be one of {MASK_SCALES}, got {self.mask_scale!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"BaristaConfig: d_model {self.d_model} must split into {self.n_heads} heads of "
                             "even size (RoPE rotates feature pairs)")
        if self.cnn_kernel % 2 == 0:
            raise ValueError(f"BaristaConfig.cnn_kernel must be odd ('same' padding), got {self.cnn_kernel}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"BaristaConfig.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if not (math.isfinite(self.power_target) and self.power_target >= 0.0):
            raise ValueError(f"BaristaConfig.power_target must be a finite weight >= 0 (0 = the published "
                             f"objective), got {self.power_target}")
        if self.power_positions not in POWER_POSITIONS:
            raise ValueError(f"BaristaConfig.power_positions must be one of {POWER_POSITIONS}, got "
                             f"{self.power_positions!r}")
        if self.spatial_vocab is not None:
            vocab = SpatialVocab.from_dict(self.spatial_vocab)
            if vocab.n_parcels > self.n_parcels:
                raise ValueError(f"BaristaConfig: the spatial vocabulary has {vocab.n_parcels} parcel rows "
                                 f"(unknown included) but n_parcels is {self.n_parcels}; build the config with "
                                 "BaristaConfig.for_vocab(vocab, ...) or raise n_parcels")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def segment_len(self) -> int:
        """Samples per segment, ``n_patches * patch_len``."""
        return self.n_patches * self.patch_len

    @classmethod
    def for_vocab(cls, vocab, **kwargs) -> "BaristaConfig":
        """Config whose parcel table fits ``vocab`` (a :class:`~neurofm.atlas.SpatialVocab`)."""
        return cls(n_parcels=vocab.n_parcels, n_lobes=vocab.n_lobes, n_coord_bins=vocab.n_coord_bins,
                   spatial_vocab=vocab.to_dict(), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["cnn_dilations"] = list(self.cnn_dilations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BaristaConfig":
        """Inverse of :meth:`to_dict`, through the one config loader: unknown keys are an error
        (never silently dropped)."""
        return from_dict(cls, d, where="BaristaConfig")

    def replace(self, **changes) -> "BaristaConfig":
        return dataclasses.replace(self, **changes)


def _as_config(config) -> BaristaConfig:
    if isinstance(config, BaristaConfig):
        return config
    if isinstance(config, Mapping):
        return BaristaConfig.from_dict(config)
    raise TypeError(f"expected a BaristaConfig or its dict, got {type(config).__name__}")


# --------------------------------------------------------------------------------------------
# tokenizer: shared univariate dilated residual CNN + Linear(L -> d)
# --------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Dilated residual block (TCN-style): two convolutions, each followed by a parameter-free
    LayerNorm over time and GELU; a 1x1 projector on the skip path when the width changes.

    ``out = GELU(LN(conv2(GELU(LN(conv1(x))))) + skip(x))``. The convolution biases are kept
    for the published parameter count although the LayerNorm that follows removes them.
    :meth:`forward` is the plain ``nn.Conv1d`` block on ``(P, C, L)``; :meth:`forward_fast`
    the same function on channel-major ``(C, P, L)`` activations with the hand-written
    :func:`~neurofm.nn.kernels.patch_conv1d`.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, eps: float = 1e-5):
        super().__init__()
        self.dilation, self.eps = dilation, eps
        pad = dilation * (kernel - 1) // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=pad)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, dilation=dilation, padding=pad)
        self.proj = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def _norm(self, a: Tensor, scales: list | None) -> Tensor:
        """The parameter-free LayerNorm over time; with ``scales`` (a list) also keeps the log
        standard deviation it removes, ``0.5 log(var + eps)`` per map, ``(P, C)`` whatever the layout."""
        if scales is not None:
            log_sd = 0.5 * torch.log(a.var(-1, unbiased=False) + self.eps)
            scales.append(log_sd)
        return time_layer_norm(a, self.eps)

    def forward(self, x: Tensor, scales: list | None = None) -> Tensor:  # (P, C_in, L) -> (P, C_out, L)
        h = F.gelu(self._norm(self.conv1(x), scales))
        h = self._norm(self.conv2(h), scales)
        return F.gelu(h + (x if self.proj is None else self.proj(x)))

    def forward_fast(self, x: Tensor, scales: list | None = None) -> Tensor:  # (C_in, P, L) -> (C_out, P, L)
        inplace = not torch.is_grad_enabled()  # no graph: reuse buffers (less memory traffic)
        gelu = torch.ops.aten.gelu_ if inplace else F.gelu
        sc = None if scales is None else []
        h = gelu(self._norm(patch_conv1d(x, self.conv1.weight, self.conv1.bias, self.dilation), sc))
        h = self._norm(patch_conv1d(h, self.conv2.weight, self.conv2.bias, self.dilation), sc)
        if scales is not None:  # channel-major (C, P) -> (P, C)
            scales.extend(t.transpose(0, 1) for t in sc)
        if self.proj is None:
            skip = x
        else:
            c_in, P, L = x.shape
            skip = torch.addmm(self.proj.bias[:, None].to(x.dtype), self.proj.weight[:, :, 0].to(x.dtype),
                               x.reshape(c_in, P * L)).view(-1, P, L)
        return gelu(h.add_(skip) if inplace else h + skip)


class CNNTokenizer(nn.Module):
    """Patch -> token: a univariate dilated residual CNN shared by every channel, then
    ``Linear(L -> d, no bias)``.

    Widths ``1-5-5-5-5-1`` (``cnn_channels`` = 5), kernel 3, dilations 1, 2, 4, 8, 16: 616
    parameters; the projection ``L * d`` (32,768 at L 512, d 64).

    Patches are processed ``cnn_chunk`` at a time. With ``checkpoint_cnn`` and gradients on,
    a chunk keeps only its patches for the backward pass and recomputes the rest: the CNN's
    activations are ~150 K floats per token (some 30 planes of L samples per convolution,
    ten convolutions), about 20x what the transformer keeps per token. With the convolutions
    frozen (fine-tuning) they run without a graph and only the projection is trained.
    ``config.fast_kernels`` picks the hand-written convolution and recomputation
    (:mod:`neurofm.nn.kernels`, on CPU; CUDA always runs the references, cuDNN's convolution and
    torch's checkpoint) or their plain PyTorch references.

    ``config.token_scales`` (off by default, an extension beyond DESIGN.md 4): each
    convolution's output is LayerNorm'd over the patch without parameters, which sets every
    map's variance to 1 inside every patch, and the input segment is z-scored per channel, so
    how strong a filtered component (e.g. high gamma) was in the patch reaches the token only
    through the residual skips, and little of it does (``bench/barista_token_power.py``: a
    ridge from the token to its patch's log high-gamma power scores R2 0.00-0.14, from the
    log scales the LayerNorms remove 0.76-0.87). With the option the tokenizer keeps those
    ``n_scales`` log standard deviations (two per block per output map: 42 at widths
    1-5-5-5-5-1) and the patch's log RMS, and adds ``Linear(n_scales -> d, no bias)`` of them
    to the token. That projection starts at zero and draws nothing from the random generator,
    so under one seed the option's model starts as the published one bit for bit and only
    training moves it away. The published path is untouched (same 616 + L*d parameters, same
    tokens) when it is off, which is why it stays off by default: the published encoder is what
    the default reproduces, and the option's benefit is measured on simulated data only
    (``bench/barista_quality.py``, its ``model.token_scales`` table).
    """

    def __init__(self, config: BaristaConfig):
        super().__init__()
        c = config.cnn_channels
        widths = [1] + [c] * (len(config.cnn_dilations) - 1) + [1]
        self.blocks = nn.ModuleList(ResidualBlock(widths[i], widths[i + 1], config.cnn_kernel, d)
                                    for i, d in enumerate(config.cnn_dilations))
        self.proj = nn.Linear(config.patch_len, config.d_model, bias=False)
        # token_scales: one log scale per LayerNorm'd map (two convolutions per block) + the patch's log RMS
        self.n_scales = 2 * sum(widths[1:]) + 1
        # zero at init, drawing nothing from the random generator: under the same seed the model
        # with the option starts as the published one bit for bit (every other weight, every mask
        # draw), and the option can only add what training finds useful
        self.scale_proj = None
        if config.token_scales:
            with torch.random.fork_rng(devices=[]):
                self.scale_proj = nn.Linear(self.n_scales, config.d_model, bias=False)
            nn.init.zeros_(self.scale_proj.weight)
        self.patch_len = config.patch_len
        self.chunk = config.cnn_chunk
        self.checkpoint = config.checkpoint_cnn
        self.fast = config.fast_kernels

    def _use_fast(self, patches: Tensor) -> bool:
        """The hand-written kernels on CPU only: on CUDA each of their per-tap products is a kernel
        launch, and a paper-size step launched ~30,000 of them in fp32 (1.3 s on an H200, 0.15 s
        of it on the GPU), where cuDNN's convolution runs under autocast in a few."""
        return self.fast and patches.device.type == "cpu"

    def _chunk_size(self, device_type: str) -> int:
        """Patches per CNN pass: ``cnn_chunk`` on CPU, :data:`CUDA_CHUNK_FACTOR` times as many on
        CUDA, where a pass costs a few kernel launches whatever its size (measured on an H200)."""
        chunk = self.chunk if self.chunk and self.chunk > 0 else 0
        return chunk * CUDA_CHUNK_FACTOR if chunk and device_type == "cuda" else chunk

    def _cnn(self, patches: Tensor, scales: list | None = None) -> Tensor:  # (P, L) -> (P, L)
        if not self._use_fast(patches):
            h = patches[:, None]  # (P, 1, L)
            for block in self.blocks:
                h = block(h, scales)
            return h[:, 0]
        h = patches.reshape(1, *patches.shape)  # (1, P, L) channel-major
        for block in self.blocks:
            h = block.forward_fast(h, scales)
        return h.view(h.shape[1], h.shape[2])

    def cnn_and_scales(self, patches: Tensor) -> tuple[Tensor, Tensor | None]:
        """The CNN's output ``(P, L)`` and, with ``token_scales``, the log scales ``(P, n_scales)``:
        the log standard deviation each parameter-free LayerNorm removes (one per map, in block
        order), then the patch's own log RMS (``0.5 log(mean x^2 + eps)``)."""
        if self.scale_proj is None:
            return self._cnn(patches), None
        scales: list[Tensor] = []
        h = self._cnn(patches, scales)
        eps = self.blocks[0].eps
        rms = 0.5 * torch.log(patches.pow(2).mean(-1, keepdim=True) + eps)
        return h, torch.cat(scales + [rms], 1)

    def _project(self, h: Tensor, scales: Tensor | None) -> Tensor:
        return self.proj(h) if scales is None else self.proj(h) + self.scale_proj(scales.to(h.dtype))

    def _tokens(self, patches: Tensor) -> Tensor:  # (P, L) -> (P, d)
        return self._project(*self.cnn_and_scales(patches))

    def forward(self, patches: Tensor) -> Tensor:
        """``(P, L)`` patches (any leading shape flattened by the caller) -> ``(P, d)`` tokens."""
        if patches.shape[-1] != self.patch_len:
            raise ValueError(f"CNNTokenizer: patches of {patches.shape[-1]} samples, model expects "
                             f"{self.patch_len} (config.patch_len)")
        if patches.shape[0] == 0:
            return patches.new_zeros(0, self.proj.out_features)
        chunk = self._chunk_size(patches.device.type) or patches.shape[0]
        params = tuple(self.parameters())
        grad = torch.is_grad_enabled() and (patches.requires_grad or any(p.requires_grad for p in params))
        if grad and not patches.requires_grad and not any(p.requires_grad for p in self.blocks.parameters()):
            with torch.no_grad():  # frozen CNN: no graph, no recomputation; the projection still trains
                parts = [self.cnn_and_scales(part) for part in patches.split(chunk)]
            h = torch.cat([p[0] for p in parts])
            return self._project(h, None if parts[0][1] is None else torch.cat([p[1] for p in parts]))
        outs = []
        for part in patches.split(chunk):
            if grad and self.checkpoint and self._use_fast(part):
                outs.append(Recompute.apply(part, self._tokens, *params))
            elif grad and self.checkpoint:
                outs.append(checkpoint(self._tokens, part, use_reentrant=False))
            else:
                outs.append(self._tokens(part))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


# --------------------------------------------------------------------------------------------
# spatial embedding
# --------------------------------------------------------------------------------------------


class SpatialEmbedding(nn.Module):
    """Where each channel is, at the encoding scale, as a ``d`` vector added to its tokens.

    * ``coords``: three 200-row tables (x, y, z 1-mm bins) summed; a bin of -1 (unknown)
      contributes zero.
    * ``parcel`` / ``lobe``: one table; row 0 (unknown) is fixed at zero (``padding_idx``).
    """

    def __init__(self, config: BaristaConfig):
        super().__init__()
        self.scale = config.encode_scale
        d = config.d_model
        if self.scale == "coords":
            self.x = nn.Embedding(config.n_coord_bins, d)
            self.y = nn.Embedding(config.n_coord_bins, d)
            self.z = nn.Embedding(config.n_coord_bins, d)
        elif self.scale == "parcel":
            self.parcel = nn.Embedding(config.n_parcels, d, padding_idx=0)
        else:
            self.lobe = nn.Embedding(config.n_lobes, d, padding_idx=0)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``(B, C, d)`` from ``batch["coords"]`` (B, C, 3) or ``batch["parcel"|"lobe"]`` (B, C)."""
        key = self.scale
        if key not in batch:
            raise KeyError(f"BaRISTA encodes at the {key!r} scale but the batch has no {key!r} entry "
                           "(see the BaRISTA batch contract; SpatialVocab.encode gives it)")
        idx = batch[key].long()
        if self.scale == "coords":
            known = (idx >= 0).all(-1, keepdim=True)  # (B, C, 1)
            self._check(idx, self.x.num_embeddings, "coords", "n_coord_bins")
            i = idx.clamp(min=0)
            return (self.x(i[..., 0]) + self.y(i[..., 1]) + self.z(i[..., 2])) * known
        table = getattr(self, key)
        self._check(idx, table.num_embeddings, key, f"n_{key}s")
        return table(idx.clamp(min=0))

    @staticmethod
    def _check(idx: Tensor, rows: int, key: str, field: str) -> None:
        if idx.numel() and int(idx.max()) >= rows:
            raise IndexError(f"batch[{key!r}] holds index {int(idx.max())} but the {key} table has {rows} rows "
                             f"(config.{field}); build the model from BaristaConfig.for_vocab(vocab) with the "
                             "vocabulary that encoded this data")


# --------------------------------------------------------------------------------------------
# backbone
# --------------------------------------------------------------------------------------------


def _block(config: BaristaConfig) -> Block:
    """One backbone layer: :class:`~neurofm.nn.transformer.Block` with pre-RMSNorm, a gated-GELU
    MLP (recomputed in the backward pass with ``fast_kernels``), RoPE on the patch index and
    residual dropout.

    Parameters at d 64, 4 heads: qkv 12,480 + proj 4,160 + gated MLP 49,728 + two norms 128 +
    RoPE frequencies 8 = 66,504 (DESIGN.md 10).
    """
    return Block(config.d_model, config.n_heads, attn_dropout=config.attn_dropout, resid_dropout=config.dropout,
                 norm="rms", norm_eps=config.norm_eps, mlp="gated", mlp_ratio=config.mlp_ratio,
                 recompute_mlp=config.fast_kernels, rope=True, rope_theta=config.rope_theta,
                 rope_learned_freq=config.rope_learned_freq)


class BaristaBackbone(nn.Module):
    """``n_layers`` blocks of joint attention over all ``n * C`` tokens, then a final RMSNorm.

    Batches of sessions with different channel counts arrive padded on the channel axis.
    With ``pack`` the real tokens are packed (no padded channel) before the blocks and put back
    in place after the final norm: attention runs through
    :func:`~neurofm.nn.attention.varlen_attention`, so with flash-attn padding costs nothing,
    and the MLPs never see a padded token either. ``pack = None`` (default) packs when the
    batch has padding and flash-attn serves its device; ``True`` / ``False`` force it. The
    outputs are the same either way (a test compares them).
    """

    def __init__(self, config: BaristaConfig):
        super().__init__()
        self.blocks = nn.ModuleList(_block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.checkpoint = config.checkpoint_blocks
        self.pack: bool | None = None

    def forward(self, tokens: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        """``tokens`` (B, n, C, d) time-major, ``channel_mask`` (B, C) True = real -> (B, n, C, d)
        (padded channels' outputs are zero when packed, undefined otherwise: never read them)."""
        B, n, C, d = tokens.shape
        real = None
        if channel_mask is not None and not bool(channel_mask.all()):
            real = channel_mask[:, None, :].expand(B, n, C).reshape(B, n * C)  # (B, N)
        h = tokens.reshape(B, n * C, d)
        pack_tokens = self.pack if self.pack is not None else (real is not None and varlen_is_free(tokens))
        patch_index = torch.arange(n * C, device=tokens.device) // C  # (N,) time-major: the RoPE position
        if not pack_tokens:
            return self.norm(self._blocks(h, real, patch_index)).view(B, n, C, d)
        if real is None:
            real = torch.ones(B, n * C, dtype=torch.bool, device=tokens.device)
        packed, seqs = pack(h, real)  # (Ntot, d), one sequence per sample
        packed = self.norm(self._blocks(packed, None, patch_index.expand(B, n * C)[real], seqs))
        where = real.reshape(-1).nonzero().squeeze(1)
        return packed.new_zeros(B * n * C, d).index_copy(0, where, packed).view(B, n, C, d)

    def _blocks(self, h: Tensor, key_padding: Tensor | None, positions: Tensor, seqs: Packed | None = None) -> Tensor:
        for block in self.blocks:
            if self.checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, key_padding_mask=key_padding, seqs=seqs, positions=positions,
                               use_reentrant=False)
            else:
                h = block(h, key_padding_mask=key_padding, seqs=seqs, positions=positions)
        return h


#: State-dict key layout of the BaRISTA classes (``PretrainedMixin.state_version``). 2: the
#: backbone layers are :class:`~neurofm.nn.transformer.Block` (``ln1``, ``ln2``, ``attn.proj``,
#: ``mlp.fc``, ``mlp.proj``); 1 (neurofm up to cfbc09f): BaRISTA's own block (``norm1``,
#: ``norm2``, ``attn.out``, ``mlp.w_in``, ``mlp.w_out``), same tensors in the same order.
#: At any version, a :class:`BandPowerReadout` saved before its ``feature_mean`` / ``feature_std``
#: buffers (it read raw features) gets identity statistics: only those two buffers were added,
#: so the layout number (and older readers of unchanged encoder folders) stay as they were.
STATE_VERSION = 2
_V1_BLOCK_KEYS = {"norm1": "ln1", "norm2": "ln2", "attn.out": "attn.proj", "mlp.w_in": "mlp.fc",
                  "mlp.w_out": "mlp.proj"}
_READOUT_WEIGHT = re.compile(r"((?:.*\.)?band_power\.)out\.weight")
_V1_BLOCK_KEY = re.compile(r"((?:^|\.)backbone\.blocks\.\d+\.)(norm1|norm2|attn\.out|mlp\.w_in|mlp\.w_out)\.")


def upgrade_state_dict(state: Mapping[str, Tensor], version: int) -> dict[str, Tensor]:
    """A state dict (of a BaRISTA model, or of a module holding one under any prefix, e.g. a
    Lightning task's ``model.encoder.``) saved with key layout ``version`` -> the current layout
    (:data:`STATE_VERSION`)."""
    if version > STATE_VERSION:
        raise ValueError(f"BaRISTA state-dict layout {version} is newer than this neurofm reads ({STATE_VERSION})")
    state = dict(state) if version >= STATE_VERSION else \
        {_V1_BLOCK_KEY.sub(lambda m: m.group(1) + _V1_BLOCK_KEYS[m.group(2)] + ".", k): v for k, v in state.items()}
    for key, weight in list(state.items()):  # a band-power read-out from before its statistics: raw features
        m = _READOUT_WEIGHT.fullmatch(key)
        if m and m.group(1) + "feature_mean" not in state and m.group(1) + "feature_std" not in state:
            state[m.group(1) + "feature_mean"] = torch.zeros(weight.shape[1], dtype=torch.float64)
            state[m.group(1) + "feature_std"] = torch.ones(weight.shape[1], dtype=torch.float64)
    return state


class _BaristaState:
    """The BaRISTA classes' state-dict layout version and its migration (see :mod:`neurofm.hub`)."""

    state_version = STATE_VERSION

    @classmethod
    def upgrade_state(cls, state: dict[str, Tensor], version: int) -> dict[str, Tensor]:
        return upgrade_state_dict(state, version)


# --------------------------------------------------------------------------------------------
# encoder (what fine-tuning uses)
# --------------------------------------------------------------------------------------------


def _init_weights(module: nn.Module, std: float | None, n_layers: int = 1) -> None:
    """Linear weights truncated-normal with ``std`` (default ``fan_in ** -0.5``: variance
    preserving, since at d 64 the GPT value 0.02 would make every layer a near-identity),
    biases zero; the output projections of residual branches scaled by ``(2 n_layers) ** -0.5``
    (GPT-2) so the residual stream keeps its scale over depth; embeddings N(0, d ** -0.5) with
    the unknown row at zero. Convolutions keep PyTorch's default; the tokenizer's
    ``scale_proj`` keeps its zeros (:class:`CNNTokenizer`)."""
    for name, m in module.named_modules():
        if name.endswith("scale_proj"):
            continue
        if isinstance(m, nn.Linear):
            s = std if std is not None else m.in_features ** -0.5
            if name.endswith(("attn.proj", "mlp.proj")):
                s = s / math.sqrt(2 * n_layers)
            nn.init.trunc_normal_(m.weight, std=s, a=-2 * s, b=2 * s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std if std is not None else m.embedding_dim ** -0.5)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


class BaristaEncoder(nn.Module, _BaristaState, PretrainedMixin):
    """Tokenizer + spatial table (encoding scale) + backbone: segment -> contextual tokens.

    Parameters at the default size: 869,896 (coords), 839,240 (parcels), 832,840 (lobes).
    """

    config_class = BaristaConfig

    def __init__(self, config: BaristaConfig | Mapping[str, Any]):
        super().__init__()
        self.config = _as_config(config)
        self.tokenizer = CNNTokenizer(self.config)
        self.spatial = SpatialEmbedding(self.config)
        self.backbone = BaristaBackbone(self.config)
        _init_weights(self, self.config.init_std, self.config.n_layers)

    @property
    def spatial_vocab(self):
        """The :class:`~neurofm.atlas.SpatialVocab` this model's parcel rows refer to, if stored."""
        if self.config.spatial_vocab is None:
            return None
        return SpatialVocab.from_dict(self.config.spatial_vocab)

    def patches(self, x: Tensor) -> Tensor:
        """``(B, C, T)`` -> ``(B, C, n, L)`` (a view)."""
        cfg = self.config
        if x.dim() != 3:
            raise ValueError(f"BaRISTA: batch['x'] must be (B, C, T), got shape {tuple(x.shape)}")
        if x.shape[-1] != cfg.segment_len:
            raise ValueError(f"BaRISTA: segments of {x.shape[-1]} samples, the model expects n_patches x patch_len "
                             f"= {cfg.n_patches} x {cfg.patch_len} = {cfg.segment_len}; cut segments of that "
                             "length (resample, or re-patch with a config whose n_patches/patch_len fit)")
        return x.view(x.shape[0], x.shape[1], cfg.n_patches, cfg.patch_len)

    def tokenize(self, x: Tensor, keep: Tensor | None = None, tokenizer: CNNTokenizer | None = None) -> Tensor:
        """Tokens ``(B, n, C, d)`` time-major; only channels with ``keep`` (B, C) are computed,
        the rest are zero (they are masked or padding and their tokens are replaced/ignored)."""
        tokenizer = self.tokenizer if tokenizer is None else tokenizer
        patches = self.patches(x)  # (B, C, n, L)
        B, C, n, L = patches.shape
        if keep is None or bool(keep.all()):
            tok = tokenizer(patches.reshape(B * C * n, L)).view(B, C, n, -1)
        else:
            idx = keep.reshape(-1).nonzero().squeeze(1)  # rows of (B*C)
            sel = tokenizer(patches.reshape(B * C, n * L).index_select(0, idx).view(-1, L))
            tok = sel.new_zeros(B * C, n, sel.shape[-1]).index_copy(0, idx, sel.view(-1, n, sel.shape[-1]))
            tok = tok.view(B, C, n, -1)
        return tok.transpose(1, 2)  # (B, n, C, d)

    def forward(self, batch: Mapping[str, Tensor], mask: Tensor | None = None,
                mask_token: Tensor | None = None) -> Tensor:
        """Contextual tokens ``(B, n, C, d)``.

        Args:
            batch: the BaRISTA batch (``x``, ``channel_mask``, and the encoding scale's indices).
            mask: ``(B, C)`` True where the channel's tokens are replaced by ``mask_token`` (d,).
        """
        x = batch["x"]
        channel_mask = batch.get("channel_mask")
        if channel_mask is not None:
            channel_mask = channel_mask.bool()
        keep = channel_mask
        if mask is not None:
            if mask_token is None:
                raise ValueError("BaristaEncoder: a mask needs a mask_token")
            keep = ~mask if keep is None else keep & ~mask
        tokens = self.tokenize(x, keep)  # (B, n, C, d)
        if mask is not None:
            tokens = torch.where(mask[:, None, :, None], mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.spatial(batch)[:, None].to(tokens.dtype)  # (B, 1, C, d) over patches
        return self.backbone(tokens, channel_mask)

    def param_counts(self) -> dict[str, int]:
        """Parameter counts by part, as DESIGN.md 10 lists them."""
        def count(m):
            return sum(p.numel() for p in m.parameters())
        return {"blocks": count(self.backbone.blocks), "final_norm": count(self.backbone.norm),
                "cnn": count(self.tokenizer.blocks), "projection": count(self.tokenizer.proj),
                "spatial": count(self.spatial), "total": count(self)}


# --------------------------------------------------------------------------------------------
# pretraining
# --------------------------------------------------------------------------------------------


class Predictor(nn.Sequential):
    """MLP from a contextual token to a target: ``layers`` x (Linear(d, d), GELU, dropout),
    then ``Linear(d, out)`` (+ GELU when ``final_gelu``; off by default because the targets
    are unbounded)."""

    def __init__(self, d: int, out: int, layers: int = 3, dropout: float = 0.1, final_gelu: bool = False):
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout)]
        mods.append(nn.Linear(d, out))
        if final_gelu:
            mods.append(nn.GELU())
        super().__init__(*mods)


def spatial_mask(category: Tensor, channel_mask: Tensor | None, ratio: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """Choose whole categories per sample until about ``ratio`` of the real channels are masked.

    Args:
        category: ``(B, C)`` int64 category of each channel at the masking scale; 0 = unknown,
            and each unknown channel is its own category (it is masked alone).
        channel_mask: ``(B, C)`` True for real channels; padding is never chosen.
        ratio: target fraction of real channels (= of tokens: all patches of a chosen channel
            are masked).

    Returns:
        ``(B, C)`` bool, True = masked. Categories are taken in random order while the running
        total gets closer to the target, so the masked fraction is the closest a prefix of
        that order can reach; at least one category is masked and at least one observed per
        sample. A sample with a single category falls back to channel-scale masking (warned).
    """
    B, C = category.shape
    device = category.device
    real = torch.ones(B, C, dtype=torch.bool, device=device) if channel_mask is None else channel_mask.bool()
    n_real = real.sum(1)
    if bool((n_real < 2).any()):
        raise ValueError("spatial_mask: every sample needs at least 2 real channels (one masked, one observed); "
                         f"samples {torch.nonzero(n_real < 2).flatten().tolist()} have fewer; drop such segments")
    channel_ids = torch.arange(C, device=device).expand(B, C)
    category = category.long()
    K = int(category.max()) + 1 if category.numel() else 1
    ids = torch.where(category > 0, category, K + channel_ids)  # unknown -> own category
    M = K + C

    def present_counts(ids):
        return torch.zeros(B, M, device=device).scatter_add_(1, ids, real.float())  # (B, M)

    size = present_counts(ids)
    single = (size > 0).sum(1) < 2
    if bool(single.any()):
        warnings.warn(f"spatial_mask: {int(single.sum())} sample(s) have one category at the masking scale; "
                      "masking channels instead for them", stacklevel=2)
        ids = torch.where(single[:, None], K + channel_ids, ids)
        size = present_counts(ids)
    present = size > 0
    priority = torch.rand(B, M, generator=generator, device=device if generator is None else generator.device)
    priority = priority.to(device).masked_fill(~present, 2.0)  # absent categories sort last
    order = priority.argsort(dim=1)
    s = size.gather(1, order)  # (B, M) sizes in random order
    before = s.cumsum(1) - s
    target = ratio * n_real.float()[:, None]
    chosen = present.gather(1, order) & (before + 0.5 * s < target)  # adding it gets closer to target
    chosen[:, 0] = True  # at least one masked (rank 0 is always present)
    n_present = present.sum(1)
    all_chosen = chosen.sum(1) >= n_present
    if bool(all_chosen.any()):  # keep at least one observed: drop the last chosen category
        last = (n_present - 1).clamp(min=1)
        chosen[all_chosen, last[all_chosen]] = False
    chosen_by_id = torch.zeros_like(chosen).scatter_(1, order, chosen)
    return chosen_by_id.gather(1, ids) & real


class Barista(nn.Module, _BaristaState, PretrainedMixin):
    """The pretraining model: online encoder, EMA target tokenizer, mask token, predictor.

    ``pretrain_loss(batch)`` masks whole categories at ``config.mask_scale``, replaces their
    tokens by the mask token (plus their spatial embedding), runs the backbone over all
    tokens and predicts, at the masked positions, the tokens the EMA tokenizer makes of the
    original patches (stop-gradient targets). :meth:`update_ema` after each optimizer step;
    :meth:`export_encoder` for fine-tuning.

    With ``config.power_target`` > 0 (an extension beyond DESIGN.md 4, off by default) a
    ``power_head`` (``Linear(d -> n_bands)``) also reads each masked token and predicts its
    patch's log band power in :attr:`power_bands`; see :meth:`pretrain_loss`. The head lives
    here, like the predictor, so the exported encoder has the published weights' shapes.
    Measured on simulated held-out subjects (``bench/barista_quality.py``): at the masked
    positions the target is met from the channel's spatial embedding
    (``bench/barista_power_lookup.py``), the masked-latent objective stayed on its plateau for
    all 1,520 steps and event AUROC fell (0.49-0.64 vs 0.86, seed 0); with
    ``power_positions = "all"`` and ``token_scales`` together the tokens carry their patch's
    band power and the grip-force fine-tune reaches band power's level (R2 0.53-0.76 over 3 seeds, band power
    0.72-0.82, faithful about 0), while
    event AUROC stays below the faithful encoder's. Off by default: the published objective.
    """

    config_class = BaristaConfig

    def __init__(self, config: BaristaConfig | Mapping[str, Any]):
        super().__init__()
        self.config = _as_config(config)
        cfg = self.config
        self.encoder = BaristaEncoder(cfg)
        self.target_tokenizer = copy.deepcopy(self.encoder.tokenizer).requires_grad_(False)
        self.mask_token = nn.Parameter(torch.randn(cfg.d_model) * cfg.mask_token_std)
        self.predictor = Predictor(cfg.d_model, cfg.d_model, cfg.predictor_layers, cfg.predictor_dropout,
                                   cfg.predictor_final_gelu)
        _init_weights(self.predictor, cfg.init_std)
        #: the bands of the power target: the canonical ones a patch resolves (one FFT bin or more)
        self.power_bands: dict[str, tuple[float, float]] = {}
        self.power_head: nn.Linear | None = None
        if cfg.power_target > 0:
            self.power_bands = resolved_bands(cfg.sampling_rate, cfg.patch_len)
            if not self.power_bands:
                raise ValueError(f"BaristaConfig.power_target: a patch of {cfg.patch_len} samples at "
                                 f"{cfg.sampling_rate:g} Hz resolves none of the canonical bands "
                                 "(neurofm.nn.spectral.BANDS); use longer patches or power_target 0")
            # its init draws on a forked generator: every other weight, dropout and mask draw is
            # the published model's under the same seed, so only the term's gradient differs
            with torch.random.fork_rng(devices=[]):
                self.power_head = nn.Linear(cfg.d_model, len(self.power_bands))
                _init_weights(self.power_head, cfg.init_std)

    def train(self, mode: bool = True) -> "Barista":
        super().train(mode)
        self.target_tokenizer.eval()
        return self

    def encode(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Contextual tokens ``(B, n, C, d)`` of unmasked input (online encoder)."""
        return self.encoder(batch)

    def mask_categories(self, batch: Mapping[str, Tensor]) -> Tensor:
        """``(B, C)`` category of each channel at the masking scale (0 = unknown)."""
        scale = self.config.mask_scale
        B, C = batch["x"].shape[:2]
        if scale == "channel":
            return torch.arange(1, C + 1, device=batch["x"].device).expand(B, C)
        if scale not in batch:
            raise KeyError(f"BaRISTA masks at the {scale!r} scale but the batch has no {scale!r} entry")
        return batch[scale].long()

    def choose_mask(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``(B, C)`` bool: the channels masked this step (whole categories, ~mask_ratio)."""
        return spatial_mask(self.mask_categories(batch), batch.get("channel_mask"), self.config.mask_ratio, generator)

    def pretrain_loss(self, batch: Mapping[str, Tensor], mask: Tensor | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Masked latent reconstruction (+ the optional band-power target).

        Returns ``{"loss", "latent_mse", "pred_std", "target_std", "latent_r2", "mask_ratio"}``:
        ``latent_mse``, the MSE over masked tokens and features (the published objective); the
        standard deviation over masked tokens of predictions and targets, averaged over
        features; ``latent_r2 = 1 - latent_mse / var``, with ``var`` the targets' variance over
        the masked tokens averaged over features, i.e. the loss of a predictor that outputs this
        batch's mean target (the trivial solution) -- near 0 (or below) while the predictor has
        learned nothing beyond the mean, whatever the targets' scale; the fraction of real
        tokens masked. ``loss`` is ``latent_mse`` when ``config.power_target`` is 0.

        ``power_target`` > 0 (an extension beyond DESIGN.md 4: the latent targets come from a
        tokenizer whose parameter-free LayerNorms remove each patch's amplitude, and that
        objective was measured not to put a channel's band power into its tokens): ``loss =
        latent_mse + power_target * power_mse``, where ``power_head`` reads each masked
        (channel, patch) token and predicts that patch's natural-log band power
        (:func:`neurofm.nn.spectral.band_power`, the baselines' features, on each patch) in each
        of :attr:`power_bands` -- the canonical bands holding at least one FFT bin of a patch
        (:func:`neurofm.nn.spectral.resolved_bands`) -- standardised per band with this batch's
        masked patches' mean and standard deviation (no running state; the scale of the loss is
        then the same in every band and batch). The power is that of ``batch["x"]``, the
        model's own input: per-segment z-scored when the data are (the default), so it is the
        patch's power relative to its channel's segment, which is all the model can see and
        what the band-power baselines read too. A masked channel's input is hidden, so the
        power has to come from the observed channels' tokens (or from where the channel is: its
        spatial embedding): the gradient reaches the tokenizer through them. With
        ``config.power_positions = "all"`` the head also reads every observed (channel, patch)
        token, whose own patch it sees, and the standardisation spans all real tokens. Also
        returns ``power_mse`` and ``power_r2 = 1 - power_mse / var`` (``var`` of the
        standardised targets, 1 per band: 0 = the batch's mean power).
        """
        if mask is None:
            mask = self.choose_mask(batch, generator)
        h = self.encoder(batch, mask=mask, mask_token=self.mask_token)  # (B, n, C, d)
        h_masked = h.transpose(1, 2)[mask]  # (M, n, d): masked channels, all patches
        pred = self.predictor(h_masked)
        with torch.no_grad():
            patches = self.encoder.patches(batch["x"])[mask]  # (M, n, L)
            target = self.target_tokenizer(patches.reshape(-1, patches.shape[-1])).view_as(pred)
        loss = F.mse_loss(pred.float(), target.float())
        channel_mask = batch.get("channel_mask")
        n_real = mask.numel() if channel_mask is None else int(channel_mask.sum())
        flat_p, flat_t = pred.detach().reshape(-1, pred.shape[-1]).float(), target.reshape(-1, pred.shape[-1]).float()
        trivial = flat_t.var(0, unbiased=False).mean()  # MSE of the batch's mean target
        tiny = torch.finfo(trivial.dtype).tiny
        r2 = 1.0 - loss.detach() / trivial.clamp(min=tiny)
        out = {"loss": loss, "latent_mse": loss.detach(), "pred_std": flat_p.std(0).mean(),
               "target_std": flat_t.std(0).mean(), "latent_r2": r2, "mask_ratio": mask.sum() / max(n_real, 1)}
        if self.power_head is None:
            return out
        h_read = h_masked
        if self.config.power_positions == "all":  # every real channel, masked or observed
            real = torch.ones_like(mask) if channel_mask is None else channel_mask.bool()
            h_read = h.transpose(1, 2)[real]  # (K, n, d)
            patches = self.encoder.patches(batch["x"])[real]  # (K, n, L)
        with torch.no_grad():
            power = band_power(patches.reshape(-1, patches.shape[-1]).float(), self.config.sampling_rate,
                               self.power_bands)  # (tokens read, n_bands), log10; one Welch segment per patch
            mean, sd = power.mean(0), power.std(0, unbiased=False)
            z = (power - mean) / sd.clamp(min=1e-6)
        power_pred = self.power_head(h_read.reshape(-1, h_read.shape[-1])).float()  # (tokens read, n_bands)
        power_mse = F.mse_loss(power_pred, z)
        out["loss"] = loss + self.config.power_target * power_mse
        out["power_mse"] = power_mse.detach()
        var = z.var(0, unbiased=False).mean()  # 1, or 0 when the batch masks a single patch
        out["power_r2"] = torch.where(var > 0, 1.0 - power_mse.detach() / var.clamp(min=tiny), torch.zeros_like(var))
        return out

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """``target = momentum * target + (1 - momentum) * online`` for the tokenizer."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"update_ema: momentum must be in [0, 1], got {momentum}")
        tgt = list(self.target_tokenizer.parameters())
        src = [p.detach() for p in self.encoder.tokenizer.parameters()]
        torch._foreach_mul_(tgt, momentum)
        torch._foreach_add_(tgt, src, alpha=1.0 - momentum)

    def export_encoder(self) -> BaristaEncoder:
        """A :class:`BaristaEncoder` with the EMA tokenizer, the backbone and the spatial table."""
        enc = BaristaEncoder(self.config)
        enc.load_state_dict(self.encoder.state_dict())
        enc.tokenizer.load_state_dict(self.target_tokenizer.state_dict())
        p = next(self.parameters())
        return enc.to(device=p.device, dtype=p.dtype)


# --------------------------------------------------------------------------------------------
# fine-tuning heads
# --------------------------------------------------------------------------------------------


def _real_tokens(h: Tensor, channel_mask: Tensor | None) -> Tensor:
    """``(B, n, C)`` bool of real tokens."""
    B, n, C, _ = h.shape
    if channel_mask is None:
        return torch.ones(B, n, C, dtype=torch.bool, device=h.device)
    return channel_mask.bool()[:, None, :].expand(B, n, C)


class TokenWeightingHead(nn.Module):
    """Faithful head for one fixed electrode layout: a learned weight per (patch, channel)
    token, a weighted mean over the real tokens, then ``Linear(d -> out_dim)``.

    ``pooled = sum_t w_t h_t / n_real``: the weights start at 1 (a plain mean) and are
    parameterised around 1 so that Adam's step size (~lr per step) is relative to their scale.
    The layout (``n_channels`` in a fixed order) must be the same in every batch; for layouts
    that differ across sessions use :class:`PooledHead`.
    """

    def __init__(self, d_model: int, n_channels: int, n_patches: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.n_channels, self.n_patches = n_channels, n_patches
        self.token_weight = nn.Parameter(torch.ones(n_patches, n_channels))
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, h: Tensor, channel_mask: Tensor | None = None) -> Tensor:  # (B, n, C, d) -> (B, out)
        B, n, C, d = h.shape
        if (n, C) != (self.n_patches, self.n_channels):
            raise ValueError(f"TokenWeightingHead was built for {self.n_patches} patches x {self.n_channels} channels, "
                             f"got {n} x {C}; use PooledHead (head='pooled') when layouts differ across sessions")
        real = _real_tokens(h, channel_mask)  # (B, n, C)
        w = self.token_weight * real / real.sum((1, 2), keepdim=True).clamp(min=1)
        pooled = torch.einsum("bnc,bncd->bd", w.to(h.dtype), h)
        return self.out(self.drop(pooled))


class PooledHead(nn.Module):
    """Layout-free head: attention pooling over the real tokens (a learned score per token's
    content, softmax over the sample's tokens; starts as a plain mean), then ``Linear``."""

    def __init__(self, d_model: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.score = nn.Linear(d_model, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, out_dim)

    def forward(self, h: Tensor, channel_mask: Tensor | None = None) -> Tensor:  # (B, n, C, d) -> (B, out)
        B = h.shape[0]
        logits = self.score(h).squeeze(-1).float()  # (B, n, C)
        logits = logits.masked_fill(~_real_tokens(h, channel_mask), float("-inf"))
        w = torch.softmax(logits.view(B, -1), dim=1).view_as(logits).to(h.dtype)
        pooled = torch.einsum("bnc,bncd->bd", w, h)
        return self.out(self.drop(pooled))


class _LinearReadout(nn.Module):
    """A linear map of standardised per-channel features of the model's input ``batch["x"]``,
    added to the token head's output (logits, or the standardised regression target).

    Subclasses give :meth:`features` (``(B, C, T)`` segments -> ``(B, n_features)`` float64, the
    decode report's features of that kind, padded channels zeroed). The features are standardised
    with the training segments' mean and standard deviation (``feature_mean`` / ``feature_std``
    buffers, saved with the weights; :meth:`set_statistics`), so AdamW's weight decay and the
    learning rate act alike on every feature, whatever its raw spread; :meth:`start_at` sets a fit
    made on the raw features, folded through them. Starts at zero (adds nothing) until the recipe
    sets it. One weight per (channel, feature): the layout (``n_channels`` in a fixed order) must
    be the same in every batch."""

    what = "read-out"

    def __init__(self, n_channels: int, n_features: int, out_dim: int):
        super().__init__()
        self.n_channels = int(n_channels)
        self.out = nn.Linear(n_features, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("feature_mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("feature_std", torch.ones(n_features, dtype=torch.float64))

    @torch.no_grad()
    def set_statistics(self, mean, std) -> None:
        """The training features' mean and standard deviation ``(n_features,)``; a feature without
        spread (a silent channel) keeps std 1, as the baselines' standardisation does."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(self.feature_mean.shape)
        std = torch.as_tensor(std, dtype=torch.float64).reshape(self.feature_std.shape)
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    @torch.no_grad()
    def start_at(self, W, b) -> None:
        """Predict ``features @ W + b`` (``W`` (n_features, out), ``b`` (out,): a fit on the raw
        features) through the standardisation: weights ``W * std``, bias ``b + mean @ W``."""
        W = torch.as_tensor(W, dtype=torch.float64).reshape(len(self.feature_mean), -1)
        b = torch.as_tensor(b, dtype=torch.float64).reshape(-1)
        self.out.weight.copy_((W * self.feature_std[:, None]).T.to(self.out.weight.dtype))
        self.out.bias.copy_((b + self.feature_mean @ W).to(self.out.bias.dtype))

    def _masked(self, x: Tensor, channel_mask: Tensor | None) -> Tensor:
        """``x`` in float64 with padded channels zeroed, after checking the layout."""
        if x.shape[1] != self.n_channels:
            raise ValueError(f"{type(self).__name__} was fitted on {self.n_channels} channels, got {x.shape[1]}; the "
                             f"{self.what} needs the electrode layout it was fine-tuned on")
        x = x.double()
        if channel_mask is not None:
            x = x * channel_mask.to(x.dtype)[..., None]
        return x

    def forward(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:  # (B, C, T) -> (B, out)
        z = (self.features(x, channel_mask) - self.feature_mean.double()) / self.feature_std.double()
        return (z @ self.out.weight.double().T + self.out.bias.double()).float()


class BandPowerReadout(_LinearReadout):
    """Each channel's log band power over the segment, linearly mapped (:class:`_LinearReadout`).

    The features are the decode report's band-power features (:func:`neurofm.nn.spectral.band_power`
    of ``batch["x"]``, padded channels zeroed, flattened channel-major to ``C * n_bands``, in
    float64), so a read-out set to that arm's fit predicts what the arm predicts. BaRISTA's
    tokenizer normalises every patch (parameter-free LayerNorms), so its tokens barely carry
    band power (``bench/barista_token_power.py``); this read-out keeps it. Folders and
    checkpoints written before the ``feature_mean`` / ``feature_std`` buffers (raw features) load
    with identity statistics (:func:`upgrade_state_dict`), so they predict what they were trained to.
    """

    what = "band-power read-out"

    def __init__(self, n_channels: int, sampling_rate: float, bands: Mapping[str, Any], out_dim: int):
        if n_channels < 1 or not bands:
            raise ValueError(f"BandPowerReadout needs a fixed layout (n_channels >= 1) and bands; got {n_channels} "
                             f"channels, bands {dict(bands)}")
        super().__init__(n_channels, int(n_channels) * len(bands), out_dim)
        self.sampling_rate = float(sampling_rate)
        self.bands = {str(k): (float(v[0]), float(v[1])) for k, v in bands.items()}

    def features(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        """``(B, C, T)`` segments -> ``(B, C * n_bands)`` float64 log band powers (raw: the
        decode report's features, before the standardisation)."""
        return band_power(self._masked(x, channel_mask), self.sampling_rate, self.bands).flatten(1)


#: Time bins of the evoked waveform (:func:`evoked_waveform`): a segment's time course per channel,
#: averaged in this many equal bins (an evoked potential's shape; 8 bins of a 0.5-1 s segment are
#: 60-125 ms).
WAVEFORM_BINS = 8


def evoked_waveform(x, n_bins: int = WAVEFORM_BINS):
    """``(B, C, T)`` segments (as the model reads them; a NumPy array or a tensor) -> ``(B, C,
    n_bins)`` float64 of the same kind: each channel's time course averaged in ``n_bins`` equal
    bins (samples past the last whole bin left out): the phase-locked evoked response that band
    power, a power per band over the whole segment, discards. The decode report's waveform arm
    and :class:`WaveformReadout` both read it."""
    B, C, T = x.shape
    per = max(T // n_bins, 1)
    n = min(n_bins, T)
    x = x.double() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    return x[..., :n * per].reshape(B, C, n, per).mean(-1)


class WaveformReadout(_LinearReadout):
    """Each channel's evoked waveform (:func:`evoked_waveform`: the model's input time course in
    ``n_bins`` bins, padded channels zeroed, flattened channel-major to ``C * n_bins``, float64),
    linearly mapped (:class:`_LinearReadout`): the decode report's waveform features, so a
    read-out set to a fit on them predicts what that fit predicts. Band power discards the
    phase-locked response; the tokens of a per-patch normalised tokenizer keep little of it."""

    what = "evoked-waveform read-out"

    def __init__(self, n_channels: int, n_bins: int, out_dim: int):
        if n_channels < 1 or n_bins < 1:
            raise ValueError(f"WaveformReadout needs a fixed layout (n_channels >= 1) and n_bins >= 1; got "
                             f"{n_channels} channels, {n_bins} bins")
        super().__init__(n_channels, int(n_channels) * int(n_bins), out_dim)
        self.n_bins = int(n_bins)

    def features(self, x: Tensor, channel_mask: Tensor | None = None) -> Tensor:
        """``(B, C, T)`` segments -> ``(B, C * n_bins)`` float64 binned time courses (raw)."""
        return evoked_waveform(self._masked(x, channel_mask), self.n_bins).flatten(1)


class ChannelReconstructionHead(nn.Module):
    """Reconstruct masked channels' raw samples from the other channels.

    The masked channels enter the encoder as ``mask_token`` (plus their spatial embedding);
    each of their contextual tokens goes through a predictor and ``Linear(d -> L)`` to the
    patch's ``L`` samples.
    """

    def __init__(self, config: BaristaConfig | Mapping[str, Any]):
        super().__init__()
        cfg = _as_config(config)
        self.mask_token = nn.Parameter(torch.randn(cfg.d_model) * cfg.mask_token_std)
        self.predictor = Predictor(cfg.d_model, cfg.d_model, cfg.predictor_layers, cfg.predictor_dropout,
                                   cfg.predictor_final_gelu)
        self.out = nn.Linear(cfg.d_model, cfg.patch_len)
        _init_weights(self, cfg.init_std)

    def init_from_pretraining(self, model: Barista) -> "ChannelReconstructionHead":
        """Start from the pretrained mask token and predictor (the output layer stays new)."""
        self.mask_token.data.copy_(model.mask_token.data)
        self.predictor.load_state_dict(model.predictor.state_dict())
        return self

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """``h`` (B, n, C, d), ``mask`` (B, C) -> ``(M, n, L)`` samples of the masked channels
        (in ``mask.nonzero()`` order)."""
        return self.out(self.predictor(h.transpose(1, 2)[mask]))


# --------------------------------------------------------------------------------------------
# a fine-tuned model as one from_pretrained folder
# --------------------------------------------------------------------------------------------


@dataclass
class BaristaFinetunedConfig:
    """Encoder config + which head sits on it (what ``from_pretrained`` needs to rebuild it)."""

    encoder: BaristaConfig = dataclasses.field(default_factory=BaristaConfig)
    task: str = "classification"  # classification | regression | reconstruction
    head: str = "pooled"  # pooled | token_weighting
    out_dim: int = 2  # classes, or regression outputs
    n_channels: int = 0  # token_weighting only: the fixed layout's channel count
    head_dropout: float = 0.1
    label_names: list[str] = dataclasses.field(default_factory=list)  # class index -> event label
    # regression: the training block's target mean / std (D,); outputs come back in the recording's units
    target_mean: list[float] = dataclasses.field(default_factory=list)
    target_std: list[float] = dataclasses.field(default_factory=list)
    # the band-power read-out's bands (name -> [low, high) Hz, at encoder.sampling_rate) over the
    # n_channels of the fixed layout (BandPowerReadout); empty: none (folders written before it)
    band_power_bands: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    # the evoked-waveform read-out's bins per channel over the n_channels of the fixed layout
    # (WaveformReadout); 0: none (folders written before it, or task.waveform=false)
    waveform_bins: int = 0

    def __post_init__(self):
        self.encoder = _as_config(self.encoder)


def finetune_heads(config: BaristaFinetunedConfig) -> tuple[nn.Module, BandPowerReadout | None,
                                                              WaveformReadout | None]:
    """What a fine-tuned BaRISTA puts on its encoder, built in this order: the head
    (:class:`ChannelReconstructionHead`, :class:`TokenWeightingHead` or :class:`PooledHead`), the
    :class:`BandPowerReadout` (``band_power_bands``) and the :class:`WaveformReadout`
    (``waveform_bins``); a read-out is None when the config has none or the task is
    reconstruction. The read-outs and the token-weighting head need ``n_channels``, one fixed layout."""
    enc, out_dim, n_channels = config.encoder, config.out_dim, config.n_channels
    if config.task == "reconstruction":
        return ChannelReconstructionHead(enc), None, None
    if config.head == "token_weighting":
        if not n_channels:
            raise ValueError("head='token_weighting' learns one weight per channel of a fixed layout: pass "
                             "n_channels (or use head='pooled' for layouts that differ across sessions)")
        head = TokenWeightingHead(enc.d_model, n_channels, enc.n_patches, out_dim, config.head_dropout)
    else:
        head = PooledHead(enc.d_model, out_dim, config.head_dropout)
    for name, wanted in (("band_power_bands", config.band_power_bands), ("waveform_bins", config.waveform_bins)):
        if wanted and not n_channels:
            raise ValueError(f"{name}: the {'band-power' if name == 'band_power_bands' else 'evoked-waveform'} "
                             f"read-out learns one weight per channel of a fixed layout: pass n_channels")
    band_power = (BandPowerReadout(n_channels, enc.sampling_rate, config.band_power_bands, out_dim)
                  if config.band_power_bands else None)
    waveform = WaveformReadout(n_channels, config.waveform_bins, out_dim) if config.waveform_bins else None
    return head, band_power, waveform


def head_output(encoder: BaristaEncoder, head: nn.Module, readouts: tuple[_LinearReadout | None, ...],
                batch: Mapping[str, Tensor]) -> Tensor:
    """The head's output on the encoder's tokens plus each read-out's on the input: logits
    (B, K), or the regression target standardised with the training statistics (B, D)."""
    out = head(encoder(batch), batch.get("channel_mask"))
    for readout in readouts:
        if readout is not None:
            out = out + readout(batch["x"], batch.get("channel_mask")).to(out.dtype)
    return out


class BaristaFinetuned(nn.Module, _BaristaState, PretrainedMixin):
    """A fine-tuned BaRISTA: encoder + classification / regression / reconstruction head (plus,
    with ``band_power_bands``, a :class:`BandPowerReadout`, and with ``waveform_bins``, a
    :class:`WaveformReadout`, added to the head's output: :func:`finetune_heads`).

    ``forward(batch)`` gives logits (B, K) or outputs (B, D) (regression: in the recording's
    units, from the training statistics in the config); for reconstruction,
    ``forward(batch, mask)`` gives the masked channels' samples (M, n, L).
    """

    config_class = BaristaFinetunedConfig

    def __init__(self, config: BaristaFinetunedConfig | Mapping[str, Any]):
        super().__init__()
        if isinstance(config, Mapping):
            config = from_dict(BaristaFinetunedConfig, config, where="BaristaFinetunedConfig")
        self.config = config
        self.encoder = BaristaEncoder(config.encoder)
        self.head, self.band_power, self.waveform = finetune_heads(config)

    def forward(self, batch: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        if self.config.task == "reconstruction":
            if mask is None:
                raise ValueError("BaristaFinetuned (reconstruction): pass mask (B, C) of the channels to predict")
            return self.head(self.encoder(batch, mask=mask, mask_token=self.head.mask_token), mask)
        out = head_output(self.encoder, self.head, (self.band_power, self.waveform), batch)
        if self.config.task == "regression" and self.config.target_std:  # standardised -> recording's units
            out = out * out.new_tensor(self.config.target_std) + out.new_tensor(self.config.target_mean)
        return out
