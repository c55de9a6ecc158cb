"""Neuroformer: a multimodal, multitask GPT over spike tokens (Antoniades et al., 2023,
arXiv 2311.00136), faithful to the reference with its known bugs fixed (DESIGN.md 3, 9).

Tokens. A window's spikes become ``[SOS] spikes [EOS] PAD...``: one ID token per spike (unit
``k`` -> ``3 + k``; ``PAD = 0, SOS = 1, EOS = 2``) and, aligned with it, a dt token: the spike's
offset from the window start in units of ``window.dt``. The current window (``window.curr``
seconds ending at the batch's ``interval``) is predicted token by token; the previous window
(``window.prev`` seconds before it) is context.

Stack (each stage optional except the first)::

    current tokens --emb--> causal self-attention  (layers.state)        -> neural features
                             cross-attention to the previous window       (layers.state_history;
                                 the previous window is encoded first by   layers.prev_encoder
                                 non-causal self-attention layers)
                             cross-attention to the stimulus               (layers.stimulus; frames
                                 -> Conv3d patches -> LayerNorm -> ReLU     encoded by
                                 + 3-D positional encoding -> self-attn     layers.stimulus_encoder)
                             cross-attention to each behaviour group      (layers.behavior)
                             causal self-attention                         (layers.self_att)
                             LayerNorm -> next-ID head, next-dt head, behaviour heads (pooled)

Losses: next-ID and next-dt cross-entropy (PAD ignored, EOS trained), behaviour regression
(MSE) / classification (CE) on the padding-masked mean of the final states, and a symmetric
InfoNCE between the pooled neural features and each other input modality.

Reference bugs fixed here, each with a test in ``tests/models/test_neuroformer.py``:
the 3-D positional encoding of the stimulus was computed and then discarded; a LayerNorm over
a single behaviour feature zeroed every behaviour input; pooling averaged over PAD positions;
``clip_embd`` was never read (projections stayed ``n_embd`` wide); "free-running" generation
read the true previous window.

Choices where the reference is loose or the paper silent:

* The contrastive neural feature is the padding-masked mean of the ``state`` stage output,
  *before* any fusion (the paper's contrastive feature encoder): after cross-attending to the
  stimulus, the neural state could solve the alignment by copying it.
* Cross-attention keys/values come from each source's own encoder, normalised once by its final
  LayerNorm (see :mod:`neurofm.nn.transformer`); the stack ends with one LayerNorm.
* Attention dropout is dropout on the attention weights after the softmax, the same on every
  device and layout (see :func:`neurofm.nn.attention.attention`).
* ``forward`` drops trailing positions that are PAD in every window of the batch before
  computing (outputs at real positions are unchanged): a 700-token previous-window block that
  holds ~65 spikes costs ~65 tokens, not 700.

Modules here are plain ``nn.Module``s; training lives in :mod:`neurofm.tasks.neuroformer`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurofm.config import from_dict
from neurofm.hub import PretrainedMixin
from neurofm.models import neuroformer_generate
from neurofm.models.neuroformer_generate import GeneratedSpikes
from neurofm.nn.attention import Packed, pack
from neurofm.nn.embedding import UnitEmbedding
from neurofm.nn.transformer import Block, CrossKVCache, Dropout, KVCache
from neurofm.tokens import EOS, N_SPECIAL, PAD, SOS, packed_layout, real_length

__all__ = [
    "PAD", "SOS", "EOS", "N_SPECIAL",
    "WindowConfig", "BlockSizeConfig", "LayerConfig", "DropoutConfig", "ContrastiveConfig",
    "LossWeights", "BehaviorVariable", "StimulusConfig", "NeuroformerConfig",
    "Neuroformer", "GeneratedSpikes", "DecodeState",
    "info_nce", "masked_mean", "sinusoidal_embedding", "positional_encoding_3d",
    "token_targets", "batch_size", "packed_layout",
]

# ID vocabulary (PAD, SOS, EOS, N_SPECIAL): neurofm.tokens, shared with the tokenizer.


# --------------------------------------------------------------------------------------------
# Configuration: plain nested dataclasses of JSON types (save_pretrained writes config.json).
# --------------------------------------------------------------------------------------------
@dataclass
class WindowConfig:
    """Window lengths and dt resolution, in seconds (reference ``window`` / ``resolution``)."""

    curr: float = 0.05
    prev: float = 0.05
    dt: float = 0.01


@dataclass
class BlockSizeConfig:
    """Token capacity of the current (``id``) and previous (``prev_id``) window sequences,
    specials included (reference ``block_size``). ``0`` = auto: a run config leaves it to the
    recipe, which chooses it from the training data before a model is built
    (:func:`neurofm.recipes.neuroformer.resolve_block_sizes`); a model needs it set."""

    id: int = 100
    prev_id: int = 700


@dataclass
class LayerConfig:
    """Layers per stage.

    ``state``: causal self-attention over the current window. ``prev_encoder``: non-causal
    self-attention encoding the previous window. ``state_history``: cross-attention to it.
    ``stimulus_encoder``: self-attention over the stimulus patches. ``stimulus``:
    cross-attention to them. ``behavior``: cross-attention layers per behaviour input group.
    ``self_att``: the final causal self-attention. The reference had no previous-window
    encoder (its cross-attention read raw token embeddings); one layer lets every previous
    token see the whole previous window for ~0.8 M parameters (paper size 25.0 M instead of
    24.2 M).
    """

    state: int = 6
    prev_encoder: int = 1
    state_history: int = 6
    stimulus_encoder: int = 6
    stimulus: int = 6
    behavior: int = 4
    self_att: int = 6


@dataclass
class DropoutConfig:
    """Dropout rates (reference: 0.2 everywhere)."""

    embd: float = 0.2  # on the summed input embeddings (all modalities)
    attn: float = 0.2  # attention dropout, after the softmax (see neurofm.nn.attention.attention)
    resid: float = 0.2  # on every residual branch


@dataclass
class ContrastiveConfig:
    """Symmetric InfoNCE between pooled neural features and each other input modality.

    ``modalities``: which to align (``"stimulus"`` and/or behaviour group names); empty = every
    input modality the model has. ``clip_embd``: width of the shared contrastive space.
    """

    enabled: bool = True
    temperature: float = 0.5
    clip_embd: int = 512
    modalities: list[str] = field(default_factory=list)


@dataclass
class LossWeights:
    """Weights of the loss terms. When no contrastive term is computed, ``id`` and ``dt`` are
    rescaled to keep their share (0.45/0.30 -> 0.6/0.4), as the reference does."""

    id: float = 0.45
    dt: float = 0.30
    contrastive: float = 0.25
    behavior: float = 1.0  # per behaviour target


@dataclass
class BehaviorVariable:
    """One behaviour variable (e.g. ``speed``, ``position`` with ``dim=2``).

    ``group``: name of the input group it joins (a cross-attention stage per group, reading the
    batch's ``behavior_seq[name]``), or ``None`` if it is not an input. ``target``: decode it
    from the pooled neural state (batch ``behavior[name]``). ``task``: ``"regression"`` (MSE
    over ``dim`` outputs) or ``"classification"`` (CE over ``n_classes``; the batch holds the
    class index as a float in column 0). Inputs should be roughly standardised by the dataset.
    """

    name: str
    dim: int = 1
    task: str = "regression"
    n_classes: int = 0
    group: str | None = None
    target: bool = False
    mean: list[float] = field(default_factory=list)  # per-feature training mean ([] = 0)
    std: list[float] = field(default_factory=list)  # per-feature training std ([] = 1)
    # > 0 (seconds): the target's head also reads a linear map of every unit's spike counts in bins
    # of this width over the previous + current window (:func:`window_count_features`: what a
    # ridge decoder reads), added to the pooled-state head. The pooled state is a mean over the
    # current window's tokens and, on sparse recordings, keeps little of the counts (issue 10).
    count_bin: float = 0.0

    def scale(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as tensors like ``like``, ``(dim,)`` each: inputs are standardised
        with them and regression heads predict in standardised units, so one checkpoint decodes
        in the recording's own units (cm, px, ...)."""
        mean = torch.tensor(self.mean or [0.0] * self.dim, dtype=like.dtype, device=like.device)
        std = torch.tensor(self.std or [1.0] * self.dim, dtype=like.dtype, device=like.device)
        return mean, std


@dataclass
class StimulusConfig:
    """Frames of the stimulus window (batch ``stimulus``: ``(B, n_frames, height, width)``) and
    the Conv3d patch (kernel = stride, ``[time, height, width]``)."""

    n_frames: int = 6
    height: int = 30
    width: int = 50
    patch: list[int] = field(default_factory=lambda: [3, 5, 5])

    @property
    def grid(self) -> tuple[int, int, int]:
        pt, ph, pw = self.patch
        return self.n_frames // pt, self.height // ph, self.width // pw

    @property
    def n_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


_NESTED = {
    "window": WindowConfig, "block_size": BlockSizeConfig, "layers": LayerConfig,
    "dropout": DropoutConfig, "contrastive": ContrastiveConfig, "loss": LossWeights,
}


def _build(cls, value, where: str):
    """A nested config field as dataclass ``cls``: kept if it is one, else read from its dict
    by the one config loader (:func:`neurofm.config.from_dict`: unknown keys are errors)."""
    return value if isinstance(value, cls) else from_dict(cls, value, where=f"NeuroformerConfig.{where}")


@dataclass
class NeuroformerConfig:
    """Everything that defines a Neuroformer's shape and objectives; JSON-serialisable.

    Vocabulary sizes are derived, never stored twice: ``id_vocab_size = 3 + n_units``;
    ``dt_vocab_size = K + 4`` with ``K = round(max(window.curr, window.prev) / window.dt)``
    (offsets ``0..K``, then ``SOS_dt = K+1``, ``EOS_dt = K+2``, ``PAD_dt = K+3``).

    Fields that fix parameter shapes (transfer to a new dataset must keep them, except
    ``n_units``/``units`` which :meth:`Neuroformer.extend_vocab` changes) are listed in
    :attr:`SHAPE_FIELDS`; the rest (dropout, loss weights, contrastive temperature) may change.
    """

    #: Fields that fix parameter shapes (dotted paths): fine-tuning takes them from the
    #: checkpoint, and a run that sets one to another value is an error naming it. ``n_units`` /
    #: ``units`` grow by :meth:`Neuroformer.extend_vocab` and ``behavior`` by
    #: :meth:`Neuroformer.add_behavior` (the checkpoint's variables kept, new ones appended).
    SHAPE_FIELDS: ClassVar[tuple[str, ...]] = (
        "n_units", "units", "n_embd", "n_head", "temporal_hidden", "window", "block_size", "layers",
        "contrastive.enabled", "contrastive.clip_embd", "contrastive.modalities", "behavior", "stimulus")

    n_units: int = 1
    units: list[str] = field(default_factory=list)  # optional "<session_id>/<unit_id>" per unit
    n_embd: int = 256
    n_head: int = 8
    temporal_hidden: int = 128
    window: WindowConfig = field(default_factory=WindowConfig)
    block_size: BlockSizeConfig = field(default_factory=BlockSizeConfig)
    layers: LayerConfig = field(default_factory=LayerConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    behavior: list[BehaviorVariable] = field(default_factory=list)
    stimulus: StimulusConfig | None = None

    def __post_init__(self) -> None:
        for name, cls in _NESTED.items():
            setattr(self, name, _build(cls, getattr(self, name), name))
        self.behavior = [_build(BehaviorVariable, v, f"behavior[{i}]") for i, v in enumerate(self.behavior)]
        if self.stimulus is not None:
            self.stimulus = _build(StimulusConfig, self.stimulus, "stimulus")
        self.units = list(self.units)
        self.validate()

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def id_vocab_size(self) -> int:
        return N_SPECIAL + self.n_units

    @property
    def dt_max(self) -> int:
        """K: the largest dt offset index of either window."""
        return round(max(self.window.curr, self.window.prev) / self.window.dt)

    @property
    def dt_max_curr(self) -> int:
        """Largest dt offset index inside the current window."""
        return round(self.window.curr / self.window.dt)

    @property
    def sos_dt(self) -> int:
        return self.dt_max + 1

    @property
    def eos_dt(self) -> int:
        return self.dt_max + 2

    @property
    def pad_dt(self) -> int:
        return self.dt_max + 3

    @property
    def dt_vocab_size(self) -> int:
        return self.dt_max + 4

    def behavior_groups(self) -> dict[str, list[BehaviorVariable]]:
        """Input groups in config order: group name -> its variables."""
        groups: dict[str, list[BehaviorVariable]] = {}
        for v in self.behavior:
            if v.group is not None:
                groups.setdefault(v.group, []).append(v)
        return groups

    def behavior_targets(self) -> list[BehaviorVariable]:
        return [v for v in self.behavior if v.target]

    def validate(self) -> None:
        def bad(fieldname: str, problem: str) -> ValueError:
            return ValueError(f"NeuroformerConfig.{fieldname}: {problem}")

        if self.n_units < 1:
            raise bad("n_units", f"must be >= 1, got {self.n_units}")
        if self.units and len(self.units) != self.n_units:
            raise bad("units", f"has {len(self.units)} names for n_units={self.n_units}")
        if self.n_embd % self.n_head:
            raise bad("n_embd", f"{self.n_embd} is not divisible by n_head={self.n_head}")
        w = self.window
        if min(w.curr, w.prev, w.dt) <= 0:
            raise bad("window", f"curr, prev and dt must be > 0, got {w}")
        if any(b != 0 and b < 2 for b in (self.block_size.id, self.block_size.prev_id)):
            raise bad("block_size", f"need room for SOS and EOS (>= 2, or 0 = auto), got {self.block_size}")
        for f in dataclasses.fields(self.layers):
            if getattr(self.layers, f.name) < 0:
                raise bad(f"layers.{f.name}", "must be >= 0")
        if self.contrastive.temperature <= 0:
            raise bad("contrastive.temperature", "must be > 0")
        names = [v.name for v in self.behavior]
        if len(set(names)) != len(names):
            raise bad("behavior", f"variable names are not unique: {names}")
        for v in self.behavior:
            if not v.name or "." in v.name or "/" in v.name:
                raise bad("behavior", f"variable name {v.name!r} must be non-empty without '.' or '/'")
            if v.group is not None and (not v.group or "." in v.group or "/" in v.group):
                raise bad("behavior", f"group name {v.group!r} of {v.name!r} must be non-empty without '.' or '/'")
            if v.task not in ("regression", "classification"):
                raise bad("behavior", f"{v.name}.task must be 'regression' or 'classification', got {v.task!r}")
            if v.task == "classification" and v.target and v.n_classes < 2:
                raise bad("behavior", f"{v.name} is a classification target: set n_classes >= 2")
            if v.dim < 1:
                raise bad("behavior", f"{v.name}.dim must be >= 1")
            if v.group is not None and v.target:
                warnings.warn(f"behaviour variable {v.name!r} is both an input (group {v.group!r}) and a target: "
                              "the model can read the answer from its input window", stacklevel=3)
        if self.stimulus is not None:
            s = self.stimulus
            if len(s.patch) != 3 or min(s.patch) < 1:
                raise bad("stimulus.patch", f"must be 3 positive ints [time, height, width], got {s.patch}")
            if min(s.grid) < 1:
                raise bad("stimulus", f"frames ({s.n_frames}, {s.height}, {s.width}) are smaller than one "
                                      f"patch {s.patch}")
        known = ({"stimulus"} if self.stimulus is not None else set()) | set(self.behavior_groups())
        unknown = set(self.contrastive.modalities) - known
        if unknown:
            raise bad("contrastive.modalities",
                      f"{sorted(unknown)} are not input modalities of this model ({sorted(known)})")

    # -- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of JSON types (``json.dumps`` works on it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NeuroformerConfig":
        """Inverse of :meth:`to_dict`, through the one config loader (unknown keys are errors)."""
        return from_dict(cls, d, where="NeuroformerConfig")

    # -- presets -------------------------------------------------------------------------------
    @classmethod
    def paper(cls, n_units: int, **overrides: Any) -> "NeuroformerConfig":
        """The published size (lateral config): n_embd 256, 8 heads, 6 layers per stage
        (4 per behaviour group), block 100 / 700, windows 50 ms / 50 ms, dt 10 ms."""
        return cls(n_units=n_units, **overrides)

    @classmethod
    def small(cls, n_units: int, **overrides: Any) -> "NeuroformerConfig":
        """n_embd 64, 4 heads, 1 layer per stage (the benchmark's small size)."""
        layers = dict(state=1, prev_encoder=1, state_history=1, stimulus_encoder=1, stimulus=1, behavior=1, self_att=1)
        layers.update(overrides.pop("layers", {}))
        return cls(n_units=n_units, n_embd=64, n_head=4, layers=layers, **overrides)


# --------------------------------------------------------------------------------------------
# Small functional pieces
# --------------------------------------------------------------------------------------------
def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over dim 1 of ``x`` (B, L, d) counting only ``mask`` (B, L) True positions -> (B, d).

    The reference averaged over PAD too, so a window's pooled state depended on how much
    padding the batch happened to carry.
    """
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def sinusoidal_embedding(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer sin/cos features of real-valued positions: (...) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / max(half, 1))
    ang = pos.float().unsqueeze(-1) * freqs  # (..., half)
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def positional_encoding_3d(t: int, h: int, w: int, dim: int) -> Tensor:
    """Sinusoidal encoding of a (time, height, width) patch grid -> (t*h*w, dim), row-major.

    Each axis gets ``2*ceil(dim/6)`` channels (sin/cos of its own index); the three are
    concatenated and cut to ``dim``. Unlike the reference, this is *added* to the patch
    features (the reference computed it and then used the frames without it).
    """
    c = 2 * math.ceil(dim / 6)
    et = sinusoidal_embedding(torch.arange(t), c)[:, None, None, :].expand(t, h, w, c)
    eh = sinusoidal_embedding(torch.arange(h), c)[None, :, None, :].expand(t, h, w, c)
    ew = sinusoidal_embedding(torch.arange(w), c)[None, None, :, :].expand(t, h, w, c)
    return torch.cat([et, eh, ew], dim=-1)[..., :dim].reshape(t * h * w, dim).contiguous()


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE (CLIP) between matched rows of ``a`` and ``b`` (B, c): the positive of
    row ``i`` is row ``i`` of the other modality, every other row of the batch a negative."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def _right_padded(mask: Tensor) -> bool:
    """True if every row is real tokens then PAD (no real token after a PAD)."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) if mask.shape[1] > 1 else True


# --------------------------------------------------------------------------------------------
# Modality encoders
# --------------------------------------------------------------------------------------------
class TemporalEmbedding(nn.Module):
    """Learned embedding of a dt index used as a float: MLP 1 -> hidden -> n_embd (reference).

    dt indices take few values (``dt_vocab_size``), so the MLP is evaluated once per call on
    all of them and looked up: the same function, a fraction of the work.
    """

    def __init__(self, n_embd: int, hidden: int, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.mlp = nn.Sequential(nn.Linear(1, hidden), nn.GELU(), nn.Linear(hidden, n_embd))

    def table(self) -> Tensor:
        """The embedding of every dt index, (V_dt, d)."""
        values = torch.arange(self.vocab_size, device=self.mlp[0].weight.device, dtype=self.mlp[0].weight.dtype)
        return self.mlp(values.unsqueeze(-1))

    def forward(self, dt: Tensor, table: Tensor | None = None) -> Tensor:  # (B, L) int64 -> (B, L, d)
        return F.embedding(dt, self.table() if table is None else table)


class StimulusEncoder(nn.Module):
    """Frames ``(B, T, H, W)`` -> stimulus tokens ``(B, N, d)``, N = (T/pt)(H/ph)(W/pw).

    Conv3d(1 -> d, kernel = stride = patch) -> LayerNorm -> ReLU (reference), plus a 3-D
    sinusoidal positional encoding that is really added (reference bug fixed), then
    ``layers.stimulus_encoder`` self-attention blocks and a final LayerNorm (the keys/values
    the cross-attention stage reads). The convolution is computed as patch-reshape + matmul,
    which equals Conv3d with kernel = stride and is much faster on CPU.
    """

    def __init__(self, config: NeuroformerConfig):
        super().__init__()
        s, d = config.stimulus, config.n_embd
        self.frame_shape = (s.n_frames, s.height, s.width)
        self.patch = tuple(s.patch)
        self.grid = s.grid
        self.conv = nn.Conv3d(1, d, kernel_size=self.patch, stride=self.patch)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("pos", positional_encoding_3d(*self.grid, d), persistent=False)  # (N, d)
        self.drop = Dropout(config.dropout.embd)
        self.blocks = nn.ModuleList(
            Block(d, config.n_head, attn_dropout=config.dropout.attn, resid_dropout=config.dropout.resid)
            for _ in range(config.layers.stimulus_encoder))
        self.ln_out = nn.LayerNorm(d)

    def patchify(self, frames: Tensor) -> Tensor:
        """(B, T, H, W) -> (B, N, d): the Conv3d, as a matmul over non-overlapping patches."""
        if tuple(frames.shape[1:]) != self.frame_shape:
            raise ValueError(
                f"batch['stimulus'] has frames of shape {tuple(frames.shape[1:])} (T, H, W), but the model was "
                f"built for {self.frame_shape} (NeuroformerConfig.stimulus n_frames, height, width); make the "
                "dataset's frame window match the config or build the model with the dataset's shape")
        b = frames.shape[0]
        (gt, gh, gw), (pt, ph, pw) = self.grid, self.patch
        x = frames[:, :gt * pt, :gh * ph, :gw * pw].to(self.conv.weight.dtype)
        x = x.reshape(b, gt, pt, gh, ph, gw, pw).permute(0, 1, 3, 5, 2, 4, 6).reshape(b, gt * gh * gw, pt * ph * pw)
        return F.linear(x, self.conv.weight.flatten(1), self.conv.bias)

    def forward(self, frames: Tensor, *, positional: bool = True) -> Tensor:
        x = F.relu(self.norm(self.patchify(frames)))  # (B, N, d)
        if positional:
            x = x + self.pos.to(x.dtype)
        x = self.drop(x)
        for blk in self.blocks:
            x = blk(x)
        return self.ln_out(x)


class BehaviorEncoder(nn.Module):
    """One behaviour input group -> tokens ``(B, n_vars * Tb, d)`` and their mask.

    Each sample of each variable becomes a token: value projection (MLP dim -> 2d -> d, no
    normalisation before it: the reference's LayerNorm over a single feature output 0 for every
    input) + sinusoidal embedding of its time (in units of ``window.dt``) + a learned
    per-variable embedding; the sum is normalised over ``n_embd`` (a real normalisation).
    """

    def __init__(self, variables: Sequence[BehaviorVariable], config: NeuroformerConfig):
        super().__init__()
        d = config.n_embd
        self.names = [v.name for v in variables]
        self.dims = {v.name: v.dim for v in variables}
        self.variables = {v.name: v for v in variables}
        self.dt = config.window.dt
        self.value = nn.ModuleDict({
            v.name: nn.Sequential(nn.Linear(v.dim, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for v in variables})
        self.var_emb = nn.Parameter(torch.randn(len(variables), d) * 0.02)
        self.ln = nn.LayerNorm(d)
        self.drop = Dropout(config.dropout.embd)

    def forward(self, seq: Mapping[str, Tensor], t: Tensor,
                masks: Mapping[str, Tensor] | None) -> tuple[Tensor, Tensor]:
        """``seq[name]`` (B, Tb, D), ``t`` (B, Tb) s from the window start, ``masks[name]`` (B, Tb)."""
        time = sinusoidal_embedding(t / self.dt, self.var_emb.shape[1]).to(self.var_emb.dtype)  # (B, Tb, d)
        tokens, keep = [], []
        for i, name in enumerate(self.names):
            x = seq[name]
            if x.dim() == 2:
                x = x.unsqueeze(-1)
            if x.shape[-1] != self.dims[name]:
                raise ValueError(f"batch['behavior_seq'][{name!r}] has {x.shape[-1]} features per sample, the "
                                 f"config says dim={self.dims[name]} (NeuroformerConfig.behavior)")
            x = x.to(self.var_emb.dtype)
            mean, std = self.variables[name].scale(x)
            tokens.append(self.value[name]((x - mean) / std) + time + self.var_emb[i])
            m = masks.get(name) if masks is not None else None
            keep.append(m.bool() if m is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
        return self.drop(self.ln(torch.cat(tokens, dim=1))), torch.cat(keep, dim=1)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
@dataclass
class _Sources:
    """Encoded key/value sources of one batch of windows (computed once, read by every layer)."""

    prev: Tensor | None = None  # (B, Sp, d), or (Np, d) packed
    prev_mask: Tensor | None = None  # (B, Sp) bool (padded)
    prev_seqs: Packed | None = None  # layout of a packed previous window
    stimulus: Tensor | None = None  # (B, Ns, d)
    behavior: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # group -> ((B, Sb, d), (B, Sb))


@dataclass
class DecodeState:
    """Everything incremental decoding carries between steps (see :meth:`Neuroformer.init_decode`)."""

    sources: _Sources
    caches: dict[str, list]
    pos: int = 0
    dt_table: Tensor | None = None  # the current window's dt embeddings, computed once


class Neuroformer(nn.Module, PretrainedMixin):
    """Neuroformer over the batch dict of the spike dataset (DESIGN.md shared contracts).

    ``forward(batch)`` returns logits and features; ``loss(batch, out)`` the loss terms and
    their weighted ``total``; ``generate(batch)`` samples spikes window by window. Every
    modality except the current window is optional: a stage runs only when its batch keys are
    present and the config built it.
    """

    config_class = NeuroformerConfig

    def __init__(self, config: NeuroformerConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, NeuroformerConfig):
            config = NeuroformerConfig.from_dict(config)
        self.config = config
        c, d = config, config.n_embd
        if 0 in (c.block_size.id, c.block_size.prev_id):
            raise ValueError(f"NeuroformerConfig.block_size: {c.block_size} leaves a size to the data (0 = auto); "
                             f"a model needs both set (neurofm.recipes.neuroformer.resolve_block_sizes chooses them)")
        dropout = dict(attn_dropout=c.dropout.attn, resid_dropout=c.dropout.resid)

        # -- embeddings: one token table for both windows, per-window position and dt embedding
        self.tok_emb = UnitEmbedding(c.id_vocab_size, d)
        self.pos_emb = nn.Parameter(torch.zeros(1, c.block_size.id, d))
        self.pos_emb_prev = nn.Parameter(torch.zeros(1, c.block_size.prev_id, d))
        self.temp_emb = TemporalEmbedding(d, c.temporal_hidden, c.dt_vocab_size)
        self.temp_emb_prev = TemporalEmbedding(d, c.temporal_hidden, c.dt_vocab_size)
        self.drop = Dropout(c.dropout.embd)

        # -- stages
        def blocks(n: int, **kind) -> nn.ModuleList:
            return nn.ModuleList(Block(d, c.n_head, **kind, **dropout) for _ in range(n))

        self.state_blocks = blocks(c.layers.state, causal=True)
        self.prev_blocks = blocks(c.layers.prev_encoder)
        self.ln_prev = nn.LayerNorm(d)
        self.history_blocks = blocks(c.layers.state_history, cross=True)
        if c.stimulus is not None:
            self.stimulus_encoder = StimulusEncoder(c)
            self.stimulus_blocks = blocks(c.layers.stimulus, cross=True)
        else:
            self.stimulus_encoder = None
            self.stimulus_blocks = nn.ModuleList()
        groups = c.behavior_groups()
        self.behavior_embed = nn.ModuleDict({g: BehaviorEncoder(vs, c) for g, vs in groups.items()})
        self.behavior_blocks = nn.ModuleDict({g: blocks(c.layers.behavior, cross=True) for g in groups})
        self.self_att_blocks = blocks(c.layers.self_att, causal=True)
        self.ln_f = nn.LayerNorm(d)

        # -- heads
        self.head_id = nn.Linear(d, c.id_vocab_size, bias=False)
        self.head_dt = nn.Linear(d, c.dt_vocab_size, bias=False)
        self.behavior_heads = nn.ModuleDict({
            v.name: nn.Linear(d, v.n_classes if v.task == "classification" else v.dim) for v in c.behavior_targets()})
        modalities = self.contrastive_modalities()
        self.contrastive_proj = nn.ModuleDict()
        if modalities:
            for name in ["neural", *modalities]:
                self.contrastive_proj[name] = nn.Sequential(
                    nn.LayerNorm(d), nn.Linear(d, c.contrastive.clip_embd, bias=False))

        self.count_heads = nn.ModuleDict()  # target name -> Linear(n_units * n_bins -> out), see count_bin
        self.apply(self._init_weights)
        #: Validate batches in :meth:`forward` (:meth:`check_batch`). ``None`` (default): every
        #: batch on CPU, where the check is a few cheap reductions, and the first batch on an
        #: accelerator, where each check is a host sync; ``True``: every batch; ``False``: never.
        self.check_inputs: bool | None = None
        self._checked_devices: set[str] = set()
        for v in c.behavior_targets():
            if v.count_bin > 0:
                self._add_count_head(v)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Reference init: N(0, 0.02) weights, zero biases, unit LayerNorms; positional
        # embeddings stay zero; the token table initialises itself the same way.
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- bookkeeping ---------------------------------------------------------------------------
    def contrastive_modalities(self) -> list[str]:
        """Input modalities aligned with the neural features (empty if contrastive is off)."""
        c = self.config
        if not c.contrastive.enabled:
            return []
        available = (["stimulus"] if c.stimulus is not None else []) + list(c.behavior_groups())
        wanted = c.contrastive.modalities or available
        return [m for m in available if m in wanted]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def stage_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by stage, from the input up (for freezing and gradual unfreezing).

        Stages: ``embeddings``, ``state``, ``state_history``, ``stimulus``, ``behavior``,
        ``self_att`` (with the final norm and the next-token heads), ``heads`` (behaviour
        and contrastive heads).
        """
        def params(*mods) -> list[nn.Parameter]:
            out: list[nn.Parameter] = []
            for m in mods:
                if m is None:
                    continue
                out.extend([m] if isinstance(m, nn.Parameter) else m.parameters())
            return out

        return {
            "embeddings": params(self.tok_emb, self.pos_emb, self.pos_emb_prev, self.temp_emb, self.temp_emb_prev),
            "state": params(self.state_blocks),
            "state_history": params(self.prev_blocks, self.ln_prev, self.history_blocks),
            "stimulus": params(self.stimulus_encoder, self.stimulus_blocks),
            "behavior": params(self.behavior_embed, self.behavior_blocks),
            "self_att": params(self.self_att_blocks, self.ln_f, self.head_id, self.head_dt),
            "heads": params(self.behavior_heads, self.count_heads, self.contrastive_proj),
        }

    def _count_bins(self, v: BehaviorVariable) -> int:
        w = self.config.window
        return max(1, int(math.ceil((w.curr + w.prev) / v.count_bin - 1e-9)))

    def _add_count_head(self, v: BehaviorVariable) -> None:
        """A zero-initialised count read-out for target ``v`` (it adds nothing until trained or set)."""
        out = v.n_classes if v.task == "classification" else v.dim
        head = nn.Linear(self.config.n_units * self._count_bins(v), out)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.count_heads[v.name] = head.to(self.head_id.weight.device)

    # -- vocabulary ----------------------------------------------------------------------------
    @torch.no_grad()
    def extend_vocab(self, n_new: int, names: Sequence[str] | None = None) -> None:
        """Add ``n_new`` units (new ID tokens ``3 + n_units ...``): new rows in the token table
        and the next-ID head, existing rows kept bit for bit. Build the optimizer afterwards
        (the resized parameters are new tensors; see :class:`UnitEmbedding`)."""
        if self.config.units and (names is None or len(names) != n_new):
            raise ValueError(f"extend_vocab: this model names its units (config.units); pass names= with {n_new} "
                             "names for the new units")
        if not self.config.units and names is not None:
            raise ValueError("extend_vocab: this model's units are unnamed (config.units is empty); names= cannot "
                             "be attached to only the new ones")
        self.tok_emb.extend_vocab(n_new)
        old = self.head_id.weight
        new_rows = torch.empty(n_new, old.shape[1], dtype=old.dtype, device=old.device).normal_(0.0, 0.02)
        self.head_id.weight = nn.Parameter(torch.cat([old.detach(), new_rows]), requires_grad=old.requires_grad)
        self.head_id.out_features = self.head_id.weight.shape[0]
        for name, head in self.count_heads.items():  # unit-major columns: a new unit's bins come last, zero
            v = next(v for v in self.config.behavior if v.name == name)
            w = head.weight
            extra = torch.zeros(w.shape[0], n_new * self._count_bins(v), dtype=w.dtype, device=w.device)
            head.weight = nn.Parameter(torch.cat([w.detach(), extra], dim=1), requires_grad=w.requires_grad)
            head.in_features = head.weight.shape[1]
        self.config.n_units += n_new
        if names is not None:
            self.config.units = [*self.config.units, *names]

    def _behavior_output(self, name: str, z: Tensor) -> Tensor:
        """Regression heads predict standardised values; return them in the data's units."""
        v = next(v for v in self.config.behavior if v.name == name)
        if v.task != "regression":
            return z
        mean, std = v.scale(z)
        return z * std + mean

    def _count_readout(self, name: str, batch: Mapping[str, Any]) -> Tensor | float:
        """The count head's term for target ``name`` (0 without one)."""
        if name not in self.count_heads:
            return 0.0
        v = next(v for v in self.config.behavior if v.name == name)
        head = self.count_heads[name]
        x = window_count_features(batch, self.config.n_units, self.config.window, v.count_bin)
        return head(x.to(head.weight.dtype))

    def set_behavior_stats(self, stats: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
        """Set each behaviour variable's training ``(mean, std)`` (per feature), e.g. from the
        training split. Stored in the config, so ``save_pretrained`` keeps them."""
        for v in self.config.behavior:
            if v.name in stats:
                mean, std = (list(map(float, x)) for x in stats[v.name])
                if len(mean) != v.dim or len(std) != v.dim or min(std) <= 0:
                    raise ValueError(f"set_behavior_stats: {v.name!r} needs {v.dim} means and {v.dim} positive stds, "
                                     f"got {mean} / {std}")
                v.mean, v.std = mean, std

    def add_behavior(self, variables: Sequence[BehaviorVariable]) -> None:
        """Add behaviour TARGETS (new decoding heads) to a pretrained model, e.g. to fine-tune it
        on a variable it never saw. New input groups would need new layers: build a new model."""
        for v in variables:
            v = _build(BehaviorVariable, v, "behavior")
            if v.group is not None or not v.target:
                raise ValueError(f"add_behavior: {v.name!r} must be a target without an input group")
            if any(old.name == v.name for old in self.config.behavior):
                raise ValueError(f"add_behavior: the model already has a behaviour variable {v.name!r}")
            head = nn.Linear(self.config.n_embd, v.n_classes if v.task == "classification" else v.dim)
            self._init_weights(head)
            self.behavior_heads[v.name] = head.to(self.head_id.weight.device)
            self.config.behavior.append(v)
            if v.count_bin > 0:
                self._add_count_head(v)
        self.config.validate()

    @torch.no_grad()
    def subset_vocab(self, units: Sequence[int]) -> None:
        """Keep only ``units`` (unit indices, not tokens), renumbered ``0..len(units)-1`` in that
        order; the specials are kept. Build the optimizer afterwards."""
        units = [int(u) for u in units]
        if not units or min(units) < 0 or max(units) >= self.config.n_units:
            raise IndexError(f"subset_vocab: unit indices must be in [0, {self.config.n_units})")
        rows = list(range(N_SPECIAL)) + [N_SPECIAL + u for u in units]
        self.tok_emb.subset_vocab(rows)
        old = self.head_id.weight
        self.head_id.weight = nn.Parameter(old.detach()[rows].clone(), requires_grad=old.requires_grad)
        self.head_id.out_features = len(rows)
        for name, head in self.count_heads.items():
            v = next(v for v in self.config.behavior if v.name == name)
            nb = self._count_bins(v)
            cols = [u * nb + b for u in units for b in range(nb)]
            w = head.weight
            head.weight = nn.Parameter(w.detach()[:, cols].clone(), requires_grad=w.requires_grad)
            head.in_features = len(cols)
        if self.config.units:
            self.config.units = [self.config.units[u] for u in units]
        self.config.n_units = len(units)

    # -- input checks --------------------------------------------------------------------------
    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Fail early, and clearly, on tokens the model cannot embed."""
        c = self.config
        v_id = c.id_vocab_size
        for key in ("id", "target_id", "id_prev"):
            if key not in batch:
                continue
            t = batch[key]
            if t.numel() == 0:
                continue
            hi, lo = int(t.max()), int(t.min())
            if lo < 0:
                raise ValueError(f"batch[{key!r}] holds a negative token ({lo}); ID tokens are PAD=0, SOS=1, "
                                 "EOS=2, unit k -> 3+k")
            if hi >= v_id:
                raise ValueError(
                    f"batch[{key!r}] holds token {hi} = unit index {hi - N_SPECIAL}, but this model's vocabulary has "
                    f"{c.n_units} units (unit indices 0..{c.n_units - 1}, tokens 0..{v_id - 1}). The data has units "
                    f"the model has not seen: call model.extend_vocab({hi - v_id + 1}) to append embedding rows for "
                    "them, then build a new optimizer")
        for key in ("dt", "target_dt", "dt_prev"):
            if key in batch and batch[key].numel() and int(batch[key].max()) >= c.dt_vocab_size:
                raise ValueError(
                    f"batch[{key!r}] holds dt token {int(batch[key].max())} >= dt vocabulary size {c.dt_vocab_size} "
                    f"(window curr={c.window.curr}, prev={c.window.prev}, dt={c.window.dt}); the dataset and the "
                    "model disagree on NeuroformerConfig.window")
        for key, size, name in (("id", c.block_size.id, "id"), ("id_prev", c.block_size.prev_id, "prev_id")):
            if key not in batch:
                continue
            seqs = packed_layout(batch, key)
            longest = batch[key].shape[1] if seqs is None else seqs.max_seqlen
            if longest > size:
                raise ValueError(f"batch[{key!r}] has {longest} positions > block_size.{name}={size} "
                                 f"(NeuroformerConfig.block_size.{name} must match the dataset's)")

    def _maybe_check(self, batch: Mapping[str, Any]) -> None:
        """:meth:`check_batch` as :attr:`check_inputs` says."""
        if self.check_inputs is False:
            return
        device = batch["id"].device.type
        if self.check_inputs or device == "cpu" or device not in self._checked_devices:
            self.check_batch(batch)
            self._checked_devices.add(device)

    # -- encoders ------------------------------------------------------------------------------
    def _embed(self, ids: Tensor, dts: Tensor, pos: Tensor, temp: TemporalEmbedding) -> Tensor:
        return self.drop(self.tok_emb(ids) + pos + temp(dts))  # (B, L, d)

    def encode_prev(self, id_prev: Tensor, dt_prev: Tensor, mask_prev: Tensor | None,
                    seqs: Packed | None = None) -> Tensor:
        """Previous window -> keys/values (non-causal encoder + LayerNorm).

        Padded: ``id_prev``, ``dt_prev``, ``mask_prev`` (B, Sp) -> ``(B, Sp, d)``. Packed
        (``seqs`` given): ``(Np,)`` tokens -> ``(Np, d)``, attention within each window.
        """
        pos = self.pos_emb_prev[:, :id_prev.shape[1]] if seqs is None else self.pos_emb_prev[0, seqs.positions]
        x = self._embed(id_prev, dt_prev, pos, self.temp_emb_prev)
        for blk in self.prev_blocks:
            x = blk(x, key_padding_mask=mask_prev, seqs=seqs)
        return self.ln_prev(x)

    def encode_sources(self, batch: Mapping[str, Any], *, trim_padding: bool = True) -> _Sources:
        """Encode every context modality present in ``batch`` and built into the model."""
        src = _Sources()
        if self.history_blocks and "id_prev" in batch:
            id_prev, dt_prev = batch["id_prev"], batch["dt_prev"]
            src.prev_seqs = packed_layout(batch, "id_prev")
            if src.prev_seqs is None:
                mask_prev = batch["mask_prev"] if "mask_prev" in batch else id_prev != PAD
                if trim_padding:
                    n = max(real_length(mask_prev), 1)
                    id_prev, dt_prev, mask_prev = id_prev[:, :n], dt_prev[:, :n], mask_prev[:, :n]
                src.prev_mask = mask_prev.bool()
            src.prev = self.encode_prev(id_prev, dt_prev, src.prev_mask, src.prev_seqs)
        if "stimulus" in batch:
            if self.stimulus_encoder is None:
                _warn_once("the batch has 'stimulus' but the model was built without NeuroformerConfig.stimulus: "
                           "ignored")
            else:
                src.stimulus = self.stimulus_encoder(batch["stimulus"])
        seq = batch.get("behavior_seq")
        for group, encoder in self.behavior_embed.items():
            if seq is None or not all(name in seq for name in encoder.names):
                continue
            src.behavior[group] = encoder(seq, batch["behavior_seq_t"], batch.get("behavior_seq_mask"))
        return src

    def _run_stack(self, x: Tensor, src: _Sources, self_mask: Tensor | None = None,
                   caches: dict[str, list] | None = None, seqs: Packed | None = None) -> tuple[Tensor, Tensor]:
        """The fusion stack on embedded current tokens ``x`` (B, L, d), or (N, d) packed as
        ``seqs`` (every source is then packed too, once, before the layers).

        Returns the output of the causal ``state`` stage (the neural features) and of the whole
        stack (before the final norm). ``caches`` switches on incremental decoding.
        """
        def cache(stage: str, i: int):
            return caches[stage][i] if caches is not None else None

        # (kv, key padding mask, packed layout) of each cross-attention source
        prev = (src.prev, src.prev_mask, src.prev_seqs)
        stimulus = (src.stimulus, None, None)
        behavior = {group: (kv, kv_mask, None) for group, (kv, kv_mask) in src.behavior.items()}
        if seqs is not None:
            if src.prev is not None and src.prev_seqs is None:
                kv, layout = pack(src.prev, src.prev_mask)
                prev = (kv, None, layout)
            if src.stimulus is not None:
                b, ns, _ = src.stimulus.shape
                stimulus = (src.stimulus.reshape(b * ns, -1), None,
                            Packed.from_lengths(torch.full((b,), ns, device=x.device)))
            for group, (kv, kv_mask) in src.behavior.items():
                if kv_mask is None:
                    kv_mask = torch.ones(kv.shape[:2], dtype=torch.bool, device=kv.device)
                kv, layout = pack(kv, kv_mask)
                behavior[group] = (kv, None, layout)

        for i, blk in enumerate(self.state_blocks):
            x = blk(x, key_padding_mask=self_mask, cache=cache("state", i), seqs=seqs)
        state = x
        if src.prev is not None:
            kv, kv_mask, kv_seqs = prev
            for i, blk in enumerate(self.history_blocks):
                x = blk(x, kv, key_padding_mask=kv_mask, cache=cache("state_history", i), seqs=seqs, seqs_kv=kv_seqs)
        if src.stimulus is not None:
            kv, _, kv_seqs = stimulus
            for i, blk in enumerate(self.stimulus_blocks):
                x = blk(x, kv, cache=cache("stimulus", i), seqs=seqs, seqs_kv=kv_seqs)
        for group, (kv, kv_mask, kv_seqs) in behavior.items():
            for i, blk in enumerate(self.behavior_blocks[group]):
                x = blk(x, kv, key_padding_mask=kv_mask, cache=cache(f"behavior/{group}", i), seqs=seqs,
                        seqs_kv=kv_seqs)
        for i, blk in enumerate(self.self_att_blocks):
            x = blk(x, key_padding_mask=self_mask, cache=cache("self_att", i), seqs=seqs)
        return state, x

    # -- forward and loss ----------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any], *, trim_padding: bool = True) -> dict[str, Any]:
        """Run the model on a batch (keys of the spike dataset's collate).

        ``trim_padding`` drops the trailing positions that are PAD in every window of the batch
        before computing anything (the outputs at real positions are the same, padding never
        reaches them); logits then cover the first ``Lt <= L`` positions.

        A packed batch (:func:`neurofm.data.datasets.pack_spikes`: windows concatenated, with
        ``cu_seqlens`` / ``max_seqlen``) gives the same numbers at every real token, with the
        token axes flattened: ``id_logits`` (N, V_id), ``dt_logits`` (N, V_dt), ``hidden``
        (N, d), ``mask`` None; the per-window outputs keep their shapes.

        Returns:
            ``id_logits`` (B, Lt, V_id), ``dt_logits`` (B, Lt, V_dt), ``hidden`` (B, Lt, d) final
            normalised states, ``mask`` (B, Lt), ``pooled`` (B, d) padding-masked mean of
            ``hidden`` (behaviour heads read it), ``neural_features`` (B, d) padding-masked mean
            of the ``state`` stage output, ``behavior`` {name: (B, dim or n_classes)},
            ``contrastive`` {modality: (neural (B, clip_embd), modality (B, clip_embd))}.
        """
        self._maybe_check(batch)
        ids, dts = batch["id"], batch["dt"]
        seqs = packed_layout(batch, "id")
        if seqs is None:
            mask = batch["mask"].bool() if "mask" in batch else ids != PAD
            if trim_padding:
                n = max(real_length(mask), 1)
                ids, dts, mask = ids[:, :n], dts[:, :n], mask[:, :n]
            pos = self.pos_emb[:, :ids.shape[1]]
        else:
            mask, pos = None, self.pos_emb[0, seqs.positions]
        src = self.encode_sources(batch, trim_padding=trim_padding)
        x = self._embed(ids, dts, pos, self.temp_emb)
        # Right-padded sequences need no key mask under causal attention: no real query can see a
        # later PAD key. Anything else (left padding, holes) gets an explicit mask.
        self_mask = None if mask is None or _right_padded(mask) else mask
        state, h = self._run_stack(x, src, self_mask, seqs=seqs)
        h = self.ln_f(h)
        if seqs is None:
            pooled, neural = masked_mean(h, mask), masked_mean(state, mask)
        else:
            pooled, neural = seqs.mean(h), seqs.mean(state)
        out: dict[str, Any] = {
            "id_logits": self.head_id(h),
            "dt_logits": self.head_dt(h),
            "hidden": h,
            "mask": mask,
            "pooled": pooled,
            "neural_features": neural,
            "behavior": {name: self._behavior_output(name, head(pooled) + self._count_readout(name, batch))
                         for name, head in self.behavior_heads.items()},
            "contrastive": {},
        }
        if self.contrastive_proj:
            z_neural = self.contrastive_proj["neural"](neural)
            feats = {}
            if src.stimulus is not None:
                feats["stimulus"] = src.stimulus.mean(1)
            for group, (kv, kv_mask) in src.behavior.items():
                feats[group] = masked_mean(kv, kv_mask)
            for name, f in feats.items():
                if name in self.contrastive_proj:
                    out["contrastive"][name] = (z_neural, self.contrastive_proj[name](f))
        return out

    def loss(self, batch: Mapping[str, Any], out: Mapping[str, Any],
             terms: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Loss terms and their weighted ``total``.

        Args:
            terms: which objectives to compute among ``"id"``, ``"dt"``, ``"contrastive"``,
                ``"behavior"`` (default: all that the batch and model allow).

        Returns:
            ``id``, ``dt`` (token cross-entropy, PAD targets ignored, EOS trained),
            ``contrastive`` (mean symmetric InfoNCE over the aligned modalities),
            ``behavior/<name>`` (MSE or CE averaged over the windows where ``behavior_mask`` is
            True), and ``total``.
        """
        c = self.config
        terms = {"id", "dt", "contrastive", "behavior"} if terms is None else set(terms)
        losses: dict[str, Tensor] = {}
        if "id" in terms or "dt" in terms:
            tid, tdt = token_targets(batch, out, c)
            if "id" in terms:
                losses["id"] = F.cross_entropy(out["id_logits"].reshape(tid.numel(), -1).float(), tid.flatten(),
                                               ignore_index=PAD)
            if "dt" in terms:
                losses["dt"] = F.cross_entropy(out["dt_logits"].reshape(tdt.numel(), -1).float(), tdt.flatten(),
                                               ignore_index=c.pad_dt)
        if "contrastive" in terms and out["contrastive"]:
            pairs = [info_nce(a, b, c.contrastive.temperature) for a, b in out["contrastive"].values()]
            losses["contrastive"] = torch.stack(pairs).mean()
        if "behavior" in terms:
            targets, masks = batch.get("behavior", {}), batch.get("behavior_mask", {})
            for v in c.behavior_targets():
                if v.name not in targets:
                    continue
                pred, y = out["behavior"][v.name].float(), targets[v.name]
                if y.dim() == 1:
                    y = y.unsqueeze(-1)
                if v.task == "regression":  # MSE in standardised units (std from the training data)
                    _, std = v.scale(pred)
                    per_window = (((pred - y.float()) / std) ** 2).mean(-1)
                else:
                    per_window = F.cross_entropy(pred, y[:, 0].round().long(), reduction="none")
                m = masks.get(v.name)
                m = torch.ones_like(per_window) if m is None else m.to(per_window.dtype)
                losses[f"behavior/{v.name}"] = (per_window * m).sum() / m.sum().clamp(min=1.0)

        w = c.loss
        scale = 1.0
        if "contrastive" not in losses and ("id" in losses or "dt" in losses) and w.id + w.dt > 0:
            scale = (w.id + w.dt + w.contrastive) / (w.id + w.dt)
        total = torch.zeros((), device=out["id_logits"].device)
        for name, value in losses.items():
            weight = {"id": w.id * scale, "dt": w.dt * scale, "contrastive": w.contrastive}.get(name, w.behavior)
            total = total + weight * value
        losses["total"] = total
        return losses

    # -- incremental decoding ------------------------------------------------------------------
    def init_decode(self, batch: Mapping[str, Any] | _Sources, max_len: int | None = None) -> DecodeState:
        """Encode a batch's context once and allocate the KV caches for decoding its windows."""
        src = batch if isinstance(batch, _Sources) else self.encode_sources(batch)
        src = _without_full_masks(src)
        max_len = max_len or self.config.block_size.id
        caches: dict[str, list] = {
            "state": [KVCache(max_len) for _ in self.state_blocks],
            "state_history": [CrossKVCache() for _ in self.history_blocks],
            "stimulus": [CrossKVCache() for _ in self.stimulus_blocks],
            "self_att": [KVCache(max_len) for _ in self.self_att_blocks],
        }
        for group, blocks in self.behavior_blocks.items():
            caches[f"behavior/{group}"] = [CrossKVCache() for _ in blocks]
        return DecodeState(src, caches, 0, self.temp_emb.table())

    def decode_step(self, state: DecodeState, ids: Tensor, dts: Tensor) -> tuple[Tensor, Tensor]:
        """Feed the next ``n`` tokens ``(B, n)`` of every window; return their logits
        ``(B, n, V_id)``, ``(B, n, V_dt)`` -- equal to a full forward's at those positions."""
        n = ids.shape[1]
        if state.pos + n > self.config.block_size.id:
            raise ValueError(f"decoding past block_size.id={self.config.block_size.id}")
        x = self.drop(self.tok_emb(ids) + self.pos_emb[:, state.pos:state.pos + n]
                      + self.temp_emb(dts, state.dt_table))
        _, h = self._run_stack(x, state.sources, None, caches=state.caches)
        state.pos += n
        h = self.ln_f(h)
        return self.head_id(h), self.head_dt(h)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, batch: Mapping[str, Any], **kwargs: Any) -> GeneratedSpikes:
        """Sample the spikes of the batch's current windows, one token at a time (KV cache,
        all windows in step; ``mode="free_running"`` chains consecutive windows). The sampler
        and the scheduler live in :mod:`neurofm.models.neuroformer_generate`; see
        :func:`~neurofm.models.neuroformer_generate.generate` for the arguments."""
        return neuroformer_generate.generate(self, batch, **kwargs)


# --------------------------------------------------------------------------------------------
# Helpers of the model and its callers
# --------------------------------------------------------------------------------------------
def _without_full_masks(src: _Sources) -> _Sources:
    """``src`` with every all-True key padding mask replaced by None (a shallow copy).

    The same attention with one mask fewer to check and apply on every decoding step. A lone
    window's previous window never has padding left after encode_sources trims it, and the
    previous windows of a batch often have none either.
    """
    def full(mask: Tensor | None) -> bool:
        return mask is not None and bool(mask.all())

    behavior = {g: (kv, None if full(mask) else mask) for g, (kv, mask) in src.behavior.items()}
    return dataclasses.replace(src, prev_mask=None if full(src.prev_mask) else src.prev_mask, behavior=behavior)


def token_targets(batch: Mapping[str, Any], out: Mapping[str, Any], config: NeuroformerConfig) -> tuple[Tensor, Tensor]:
    """Next-ID and next-dt targets aligned with ``out``'s logits: ``(B, Lt)`` cut to the
    positions a padded forward kept (the cut positions must be PAD), or ``(N,)`` packed."""
    tid, tdt = batch["target_id"], batch["target_dt"]
    if packed_layout(batch, "id") is not None:
        return tid, tdt
    n = out["id_logits"].shape[1]
    if tid.shape[1] > n:
        if bool((tid[:, n:] != PAD).any()):
            raise ValueError("batch['target_id'] has non-PAD targets at positions whose inputs are all PAD; "
                             "targets must be the input sequence shifted left by one")
        tid, tdt = tid[:, :n], tdt[:, :n]
    return tid, tdt


def window_count_features(batch: Mapping[str, Any], n_units: int, window: WindowConfig, bin_s: float) -> Tensor:
    """``(B, n_units * n_bins)`` spike counts per unit in ``bin_s`` bins over the span a window's
    tokens cover (previous + current window, ``n_bins = ceil((prev + curr) / bin_s)``), from the
    batch's tokens (so exactly the spikes the model reads, at dt resolution). Unit-major columns
    (``unit * n_bins + b``; bin ``b`` holds offsets in ``(b * bin_s, (b + 1) * bin_s]`` before the
    window end, ``b = 0`` the latest), so new units append columns. Padded or packed batches."""
    span = window.curr + window.prev
    n_bins = max(1, int(math.ceil(span / bin_s - 1e-9)))
    B = batch_size(batch)
    device = batch["id"].device
    out = torch.zeros(B * n_units * n_bins, device=device)
    for key, dkey, back in (("id", "dt", window.curr), ("id_prev", "dt_prev", span)):
        ids, dts = batch[key], batch[dkey]
        seqs = packed_layout(batch, key)
        if seqs is None:
            row = torch.arange(ids.shape[0], device=device)[:, None].expand_as(ids)
        else:
            ids, dts = ids.reshape(-1), dts.reshape(-1)
            row = torch.bucketize(torch.arange(ids.numel(), device=device), seqs.cu_seqlens[1:].to(device), right=True)
        real = ids >= N_SPECIAL
        offset = back - dts.double() * window.dt  # seconds before the window end
        b = torch.clamp(torch.ceil(offset / bin_s - 1e-9).long() - 1, 0, n_bins - 1)
        col = (ids - N_SPECIAL).clamp(min=0, max=n_units - 1) * n_bins + b
        flat = (row * (n_units * n_bins) + col)[real]
        out.index_add_(0, flat, torch.ones(flat.shape, device=device))
    return out.view(B, n_units * n_bins)


def batch_size(batch: Mapping[str, Any]) -> int:
    """Number of windows in a padded or packed spike batch."""
    seqs = packed_layout(batch, "id")
    return batch["id"].shape[0] if seqs is None else seqs.num_seqs


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
