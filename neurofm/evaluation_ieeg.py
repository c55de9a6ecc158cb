"""The iEEG evaluation protocols of DESIGN.md 8 and 10, as reusable code.

Two protocols, each with its baselines, both reading their segments through the same
dataset code a BaRISTA model is trained with (:class:`neurofm.data.datasets.StreamingIEEGDataset`
with an :class:`~neurofm.data.segmenter.IEEGSegmenter` and a
:class:`~neurofm.data.splits.TimeBlockSplit`), so a baseline and a model are scored on exactly
the same held-out samples:

**Held-out channel reconstruction** (:class:`ReconstructionProtocol`). Depth contacts on one
shaft see overlapping tissue, so a contact's signal is partly predictable from its
neighbours; a model earns credit only for what it reconstructs beyond that. Every contact
with BOTH same-shaft neighbours usable (contact numbers ``n - 1`` and ``n + 1``) is an
evaluation channel. Per evaluation channel and test segment the channel's signal is hidden
(zeros in ``x``, ``held_out_mask`` True) and a predictor reconstructs its z-scored samples
from everything else. Scores pool all held-out (channel, segment, sample) values into one R2
(:func:`reconstruction_r2`). Baselines: the z-scored mean of the two neighbours
(:func:`neighbour_mean_baseline`), least-squares weights of the two neighbours fitted on the
training block, and least squares on every other channel (:class:`LeastSquaresBaseline`).

    data = reconstruction_data("session.h5", ReconstructionProtocol(segment_s=1.0, n_patches=4))
    score_reconstruction(neighbour_mean_baseline, data)["r2"]
    score_reconstruction(lambda batch: model_reconstruct(batch), data)["r2"]   # same samples

**Event detection** (:class:`EventProtocol`). Segments start at each ``/events/<name>`` onset
(+ offset) and carry the event's label; the recording is split into contiguous train / valid /
test blocks with a gap (events whose segment crosses a block edge are dropped). The
:class:`~neurofm.baselines.BandPowerRidge` baseline is fitted on train, its penalty chosen by
validation AUROC, and scored by test AUROC (:func:`score_auroc`).

**Test-period blocks** (:func:`test_period_blocks`): the contiguous blocks of the test period
that the decode report of a BaRISTA run (:func:`neurofm.report.decode_report`) resamples for
its confidence intervals (neighbouring segments share slow fluctuations, so resampling single
segments would make the intervals too narrow).

Units: times in seconds, segments per-channel per-segment z-scored (unitless), shapes ``S``
segments, ``C`` channels (after the segmenter's channel plan), ``T`` samples per segment,
``E`` evaluation channels, ``B`` batch rows.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from neurofm import metrics
from neurofm.atlas import SpatialVocab
from neurofm.baselines import DEFAULT_ALPHAS, BandPowerRidge
from neurofm.data.datasets import StreamingIEEGDataset, event_classes
from neurofm.data.segmenter import IEEGSegmenter, SegmentPlan, parse_contact, zscore
from neurofm.data.session import NON_NEURAL_NAMES as _SESSION_NON_NEURAL_NAMES
from neurofm.data.session import Channels, Session, channel_types_from_names
from neurofm.data.splits import Intervals, TimeBlockSplit
from neurofm.report import test_period_blocks  # noqa: F401 (re-exported: the test-period block rule)

__all__ = [
    "NON_NEURAL_NAMES", "SegmentSet", "ReconstructionProtocol", "ReconstructionData", "EventProtocol", "EventData",
    "non_neural_names", "evaluation_channels", "reconstruction_data", "reconstruction_batches",
    "reconstruction_r2", "score_reconstruction", "neighbour_mean_baseline", "LeastSquaresBaseline",
    "reconstruction_baselines", "event_data", "event_batches", "score_auroc", "score_classifier",
    "band_power_baseline", "test_period_blocks",
]

#: Channel names that carry no neural signal even when a file types them "eeg" (the sample
#: sEEG's DC01..DC08 analogue inputs and EKG1/2 are typed EEG by its EDF). The one rule the
#: iEEG converter also types channels by (:data:`neurofm.data.session.NON_NEURAL_NAMES`): a
#: known prefix at the start of the name, case-insensitively, not followed by another letter
#: ("DC03" yes, "DCA1" no). Sessions converted since then carry those channels typed
#: (``ecg``, ``misc``, ...) and the segmenter drops them before this is consulted; the name
#: rule still covers files converted before, or written by other tools.
NON_NEURAL_NAMES = _SESSION_NON_NEURAL_NAMES

Predictor = Callable[[Mapping[str, Any]], Any]


# --------------------------------------------------------------------------------------------
# segments
# --------------------------------------------------------------------------------------------


@dataclass
class SegmentSet:
    """The segments of one split, in time order.

    ``x`` (S, C, T) float32 per-channel per-segment z-scored; ``channel_mask`` (S, C) bool,
    False where a channel is flat in a segment; ``t0`` (S,) segment start (s, session time);
    ``label`` (S,) int64 class index (event protocol) or None; ``n_skipped`` segments left
    out for NaN/inf samples.
    """

    x: np.ndarray
    channel_mask: np.ndarray
    t0: np.ndarray
    label: np.ndarray | None = None
    n_skipped: int = 0

    def __len__(self) -> int:
        return len(self.x)


def _segmenter(segment_s: float, n_patches: int, line_noise: float | None, sampling_rate: float | None
               ) -> IEEGSegmenter:
    # Never the Laplacian here: it subtracts each contact's neighbours from it, so it would mix a
    # held-out contact into the very channels that are meant to predict it.
    return IEEGSegmenter(segment_s, n_patches, sampling_rate=sampling_rate, line_noise=line_noise,
                         laplacian=False, drop_non_grey=False, drop_bad=True)


def _load_split(session: Session, segmenter: IEEGSegmenter, splits: TimeBlockSplit, split: str, *,
                stride_s: float | None = None, events: str | None = None, event_offset: float = 0.0,
                label_map: Mapping[str, int] | None = None) -> tuple[SegmentSet, StreamingIEEGDataset]:
    """Every segment of ``split``, read in time order by the dataset a model trains on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*adds nothing to the split.*")
        ds = StreamingIEEGDataset(session, segmenter, split, splits=splits, stride_s=stride_s, spatial_vocab=None,
                                  events=events, event_locked=events is not None, event_offset=event_offset,
                                  label_map=label_map, batch_size=256, shuffle=False, rank=0, world_size=1)
    plan = ds.reader.plans[0]
    C = ds.reader.n_channels(0)
    parts = list(ds)
    if parts:
        x = torch.cat([b["x"] for b in parts]).numpy()
        mask = torch.cat([b["channel_mask"] for b in parts]).numpy()
        t0 = torch.cat([b["t0"] for b in parts]).numpy()
        label = torch.cat([b["label"] for b in parts]).numpy() if "label" in parts[0] else None
    else:
        x, mask = np.zeros((0, C, plan.segment_samples), np.float32), np.zeros((0, C), bool)
        t0, label = np.zeros(0), (np.zeros(0, np.int64) if events is not None else None)
    order = np.argsort(t0, kind="stable")
    seg = SegmentSet(x[order], mask[order], t0[order], None if label is None else label[order], ds.skipped)
    return seg, ds


def _require(seg: SegmentSet, session: Session, split: str, blocks: Mapping[str, Intervals], plan: SegmentPlan,
             fix: str, minimum: int = 1) -> None:
    if len(seg) < minimum:
        raise ValueError(f"{session.path}: split {split!r} (blocks {blocks[split].pairs()} s) holds {len(seg)} "
                         f"segment(s) of {plan.segment_s:g} s, fewer than {minimum}; {fix}")


def _spatial(channels: Channels | None, C: int, spatial_vocab) -> dict[str, np.ndarray]:
    """``coords`` (C, 3), ``parcel``/``lobe`` (C,) int64 from a SpatialVocab; unknown (-1 / 0)
    without channel metadata, with ``spatial_vocab=None``, or when "auto" finds no known channel."""
    unknown = {"coords": np.full((C, 3), -1, np.int64), "parcel": np.zeros(C, np.int64),
               "lobe": np.zeros(C, np.int64)}
    if channels is None or spatial_vocab is None:
        return unknown
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown labels are expected (index 0)
        if isinstance(spatial_vocab, str):
            if spatial_vocab != "auto":
                raise ValueError(f"spatial_vocab must be a SpatialVocab, 'auto' or None, got {spatial_vocab!r}")
            spatial_vocab = SpatialVocab.from_channels([channels])
            try:
                return IEEGSegmenter.spatial(channels, spatial_vocab)
            except ValueError:  # no coordinates and no atlas labels at all
                return unknown
        return IEEGSegmenter.spatial(channels, spatial_vocab)


def _torch_batch(x: np.ndarray, channel_mask: np.ndarray, t0: np.ndarray, spatial: Mapping[str, np.ndarray],
                 **extra: np.ndarray) -> dict[str, Any]:
    """The BaRISTA batch dict of the brief (torch tensors) for B rows of one session."""
    B = len(x)
    out = {"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
           "channel_mask": torch.from_numpy(np.ascontiguousarray(channel_mask, dtype=bool)),
           "coords": torch.from_numpy(np.broadcast_to(spatial["coords"], (B,) + spatial["coords"].shape).copy()),
           "parcel": torch.from_numpy(np.broadcast_to(spatial["parcel"], (B,) + spatial["parcel"].shape).copy()),
           "lobe": torch.from_numpy(np.broadcast_to(spatial["lobe"], (B,) + spatial["lobe"].shape).copy()),
           "session": torch.zeros(B, dtype=torch.int64),
           "t0": torch.from_numpy(np.asarray(t0, dtype=np.float64))}
    for k, v in extra.items():
        out[k] = torch.from_numpy(np.ascontiguousarray(v))
    return out


def _channel_names(ds: StreamingIEEGDataset) -> list[str]:
    """Names of the channels on the batch axis (after the segmenter's channel plan)."""
    cplan = ds.reader.cplans[0]
    return list(cplan.channels.names) if cplan.channels is not None else [f"ch{i}" for i in cplan.keep]


def _as_numpy(a) -> np.ndarray:
    """float64 NumPy copy of an array or tensor (any device or dtype, bf16 included)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# channel reconstruction: protocol and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReconstructionProtocol:
    """Every choice behind a held-out channel reconstruction R2 (DESIGN.md 10).

    Attributes
    ----------
    segment_s, n_patches : segment length (s) and patches per segment (BaRISTA: 3 s, 12
        patches); the segment must be a whole number of samples that splits into the
        patches at the recording's (or ``sampling_rate``'s) rate.
    stride_s : step between segment starts (s); None = the segment length (no overlap).
    test_fraction : the test block is the last ``test_fraction`` of the recording; training
        (for baselines that fit weights) is everything before it.
    gap_s : seconds between the training and test blocks (centred on the boundary), so no
        segment of one touches the other.
    line_noise : notch at 50 or 60 Hz and harmonics before cutting (None: none).
    sampling_rate : resample to this rate (Hz) first (None: the recording's own).
    exclude_names : regex of channel names that are not neural (:data:`NON_NEURAL_NAMES`);
        they are never evaluated, never a neighbour, and are zeroed with ``channel_mask``
        False in every batch, like padding. Channels ``/channels/bad`` or of a non-neural type
        are dropped by the segmenter before that.
    ridge : relative L2 penalty of the least-squares baselines (times the mean input energy).

    The data are used as recorded (monopolar or however referenced): a Laplacian re-reference
    would subtract the held-out contact from its neighbours and leak it into the inputs.
    """

    segment_s: float = 3.0
    n_patches: int = 12
    stride_s: float | None = None
    test_fraction: float = 0.2
    gap_s: float = 1.0
    line_noise: float | None = None
    sampling_rate: float | None = None
    exclude_names: str = NON_NEURAL_NAMES
    ridge: float = 1e-3

    def __post_init__(self):
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"ReconstructionProtocol.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.gap_s < 0 or self.ridge < 0:
            raise ValueError("ReconstructionProtocol: gap_s and ridge must be >= 0")
        if not self.segment_s > 0 or self.n_patches < 1:
            raise ValueError("ReconstructionProtocol: segment_s must be > 0 and n_patches >= 1")
        if self.stride_s is not None and not self.stride_s > 0:
            raise ValueError(f"ReconstructionProtocol.stride_s must be > 0 s or None, got {self.stride_s}")
        re.compile(self.exclude_names)

    def replace(self, **changes) -> "ReconstructionProtocol":
        return dataclasses.replace(self, **changes)

    def segmenter(self) -> IEEGSegmenter:
        return _segmenter(self.segment_s, self.n_patches, self.line_noise, self.sampling_rate)

    def splitter(self) -> TimeBlockSplit:
        return TimeBlockSplit({"train": 1.0 - self.test_fraction, "test": self.test_fraction}, gap=self.gap_s,
                              from_file=False)

    def describe(self, rate: float | None = None) -> str:
        """The protocol in one line, to print next to every number it produced."""
        rate = self.sampling_rate or rate
        patches = f"{self.n_patches} patches"
        if rate:
            patches += f" x {self.segment_s * rate / self.n_patches:g} samples at {rate:g} Hz"
        stride = self.segment_s if self.stride_s is None else self.stride_s
        notch = f"notch {self.line_noise:g} Hz + harmonics" if self.line_noise else "no notch"
        return (f"channel reconstruction: each contact with both same-shaft neighbours (n-1, n+1) held out in turn "
                f"(zeroed, held_out_mask), its per-segment z-scored signal predicted from the rest; "
                f"{self.segment_s:g} s segments ({patches}), stride {stride:g} s; as recorded (no Laplacian), "
                f"{notch}; test = last {self.test_fraction:.0%} of the recording, train = the rest, {self.gap_s:g} s "
                f"gap; non-neural names excluded; R2 pooled over all held-out (channel, segment, sample) values, "
                f"(channel, segment) scored where it and both neighbours are non-flat")


def non_neural_names(names: Sequence[str], pattern: str = NON_NEURAL_NAMES) -> np.ndarray:
    """``(C,) bool``: names matching ``pattern`` (case-insensitive, at the start).

    With the default pattern this is :func:`neurofm.data.session.channel_types_from_names`
    (the converter's rule) saying the name is of a non-neural type.
    """
    if pattern == NON_NEURAL_NAMES:
        return np.asarray(channel_types_from_names(names) != "", dtype=bool).reshape(len(names))
    rx = re.compile(pattern, re.IGNORECASE)
    return np.array([bool(rx.search(str(n).strip())) for n in names], dtype=bool)


def evaluation_channels(names: Sequence[str], usable=None) -> tuple[np.ndarray, np.ndarray]:
    """Contacts whose two same-shaft neighbours are both present and usable.

    Shaft and contact number come from :func:`neurofm.data.segmenter.parse_contact` (the
    parsing the Laplacian re-reference uses: ``LA3`` -> ("LA", 3), ``L'12`` -> ("L'", 12)).
    Channel ``i`` = (shaft, n) qualifies when (shaft, n - 1) and (shaft, n + 1) are channels
    too and all three are ``usable``.

    Returns ``(eval_idx (E,) int64, neighbours (E, 2) int64)``: indices into ``names``, the
    neighbours as (n - 1, n + 1).
    """
    C = len(names)
    usable = np.ones(C, bool) if usable is None else np.asarray(usable, dtype=bool)
    if usable.shape != (C,):
        raise ValueError(f"evaluation_channels: usable must be ({C},), got {usable.shape}")
    contacts = [parse_contact(n) if usable[i] else None for i, n in enumerate(names)]
    where = {c: i for i, c in enumerate(contacts) if c is not None}
    idx, nb = [], []
    for i, c in enumerate(contacts):
        if c is None:
            continue
        lo, hi = (c[0], c[1] - 1), (c[0], c[1] + 1)
        if lo in where and hi in where:
            idx.append(i)
            nb.append((where[lo], where[hi]))
    return np.asarray(idx, dtype=np.int64), np.asarray(nb, dtype=np.int64).reshape(-1, 2)


@dataclass
class ReconstructionData:
    """Segments, evaluation channels and blocks of one session under a :class:`ReconstructionProtocol`.

    ``channels``: metadata of the C channels on the batch's channel axis; ``usable`` (C,)
    False for non-neural names; ``eval_channels`` (E,) and ``neighbours`` (E, 2) indices into
    the C channels; ``train``/``test``: :class:`SegmentSet`; ``spatial``: ``coords`` (C, 3),
    ``parcel``/``lobe`` (C,) int64.
    """

    protocol: ReconstructionProtocol
    path: Path
    channel_names: list[str]
    channels: Channels | None
    usable: np.ndarray
    eval_channels: np.ndarray
    neighbours: np.ndarray
    blocks: dict[str, Intervals]
    plan: SegmentPlan
    train: SegmentSet
    test: SegmentSet
    spatial: dict[str, np.ndarray]

    def split(self, name: str) -> SegmentSet:
        if name not in ("train", "test"):
            raise KeyError(f"ReconstructionData has splits 'train' and 'test', not {name!r}")
        return getattr(self, name)

    def describe(self) -> str:
        """The protocol line plus this session's counts."""
        return (f"{self.protocol.describe(self.plan.rate)}; {self.path.name}: {len(self.eval_channels)} of "
                f"{len(self.channel_names)} channels evaluated, {len(self.train)} train / {len(self.test)} test "
                f"segments, test block {self.blocks['test'].pairs()} s")


def reconstruction_data(session, protocol: ReconstructionProtocol | None = None, *, spatial_vocab="auto"
                        ) -> ReconstructionData:
    """Read one session's train and test segments and find its evaluation channels.

    ``session``: a session file path or :class:`Session`. ``spatial_vocab``: the
    :class:`~neurofm.atlas.SpatialVocab` whose indices fill ``coords``/``parcel``/``lobe``
    (pass the model's, ``model.spatial_vocab``); ``"auto"`` builds one from this session;
    None leaves them unknown. :func:`reconstruction_batches` can re-encode with another.
    """
    protocol = protocol or ReconstructionProtocol()
    session = session if isinstance(session, Session) else Session(session)
    if "continuous" not in session.kinds:
        raise ValueError(f"{session.path}: /continuous: missing; channel reconstruction needs continuous data")
    segmenter, splits = protocol.segmenter(), protocol.splitter()
    blocks = splits(session)
    fix = (f"use shorter segments (segment_s, e.g. {protocol.segment_s / 3:g} s with fewer patches), a larger "
           f"test_fraction or a smaller gap_s")
    train, ds = _load_split(session, segmenter, splits, "train", stride_s=protocol.stride_s)
    test, _ = _load_split(session, segmenter, splits, "test", stride_s=protocol.stride_s)
    plan = ds.reader.plans[0]
    _require(test, session, "test", blocks, plan, fix)
    channels = ds.reader.cplans[0].channels
    names = _channel_names(ds)
    usable = ~non_neural_names(names, protocol.exclude_names)
    eval_idx, nb = evaluation_channels(names, usable)
    if not eval_idx.size:
        raise ValueError(f"{session.path}: /channels/name: no contact has both same-shaft neighbours (n-1, n+1) "
                         f"among {len(names)} usable channels (e.g. {names[:5]}); channel reconstruction needs "
                         f"depth-shaft names like LA1, LA2, LA3 (shaft letters + contact number)")
    return ReconstructionData(protocol, Path(session.path), names, channels, usable, eval_idx, nb, blocks, plan,
                              train, test, _spatial(channels, len(names), spatial_vocab))


def reconstruction_batches(data: ReconstructionData, split: str = "test", batch_size: int = 64, *,
                           spatial_vocab=None) -> Iterator[dict[str, Any]]:
    """BaRISTA batches in which each row hides one evaluation channel of one segment.

    Rows are the (evaluation channel, segment) pairs of ``split``, channel-major (channels in
    ``data.eval_channels`` order, segments in time order), ``batch_size`` rows per batch (a
    batch may mix channels). Keys as the brief's BaRISTA batch, plus what a reconstruction needs:

    - ``x`` (B, C, T) float32: the row's z-scored segment with its held-out channel ``c`` and
      the non-neural channels set to 0;
    - ``channel_mask`` (B, C) bool: real, non-flat, neural channels. ``c`` stays True (a real
      channel whose signal is hidden; a flat ``c`` is False and its row is not scored);
    - ``coords`` (B, C, 3), ``parcel``/``lobe`` (B, C) int64, ``session`` (B,), ``t0`` (B,);
    - ``held_out`` (B,) int64 = ``c``; ``held_out_mask`` (B, C) bool, True only at ``c`` (pass
      it as the encoder's ``mask`` so ``c`` enters as the mask token);
    - ``segment`` (B,) int64: the row's segment index in ``data.<split>``;
    - ``neighbours`` (B, 2) int64: ``c``'s same-shaft neighbours (for baselines);
    - ``scored`` (B,) bool: whether the row counts (``c`` and both neighbours non-flat).

    The true signal of ``c`` is not in the batch: :func:`score_reconstruction` keeps it.
    """
    seg = data.split(split)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = data.spatial if spatial_vocab is None else _spatial(data.channels, len(data.channel_names),
                                                                  spatial_vocab)
    S, C, _ = seg.x.shape
    E = len(data.eval_channels)
    base_mask = seg.channel_mask & data.usable[None, :]  # (S, C)
    pair_e = np.repeat(np.arange(E), S)  # (E * S,) channel-major
    pair_s = np.tile(np.arange(S), E)
    for i0 in range(0, E * S, batch_size):
        e, s = pair_e[i0:i0 + batch_size], pair_s[i0:i0 + batch_size]
        c = data.eval_channels[e]  # (B,)
        nb = data.neighbours[e]  # (B, 2)
        B = len(e)
        rows = np.arange(B)
        x = seg.x[s] * base_mask[s][:, :, None]  # (B, C, T) zero on flat / non-neural channels
        x[rows, c] = 0.0
        held = np.zeros((B, C), bool)
        held[rows, c] = True
        m = seg.channel_mask[s]  # (B, C)
        scored = m[rows, c] & m[rows, nb[:, 0]] & m[rows, nb[:, 1]]
        yield _torch_batch(x, base_mask[s], seg.t0[s], spatial, held_out=c.astype(np.int64), held_out_mask=held,
                           segment=s.astype(np.int64), neighbours=nb.astype(np.int64), scored=scored)


def reconstruction_r2(pred, true, scored=None) -> float:
    """R2 pooled over every held-out value: ``1 - sum (y - y_hat)^2 / sum (y - mean y)^2``.

    ``pred`` and ``true`` (..., T) (e.g. (E, S, T) or (N, T)); ``scored`` (...) bool selects the
    (channel, segment) rows that count. All selected samples are pooled into one sum (not an
    average of per-channel R2s), as :func:`neurofm.metrics.r2_score` does for decoding.
    """
    pred, true = _as_numpy(pred), _as_numpy(true)
    if pred.shape != true.shape:
        raise ValueError(f"reconstruction_r2: pred {pred.shape} and true {true.shape} differ")
    if scored is not None:
        scored = np.asarray(scored, dtype=bool)
        if scored.shape != pred.shape[:-1]:
            raise ValueError(f"reconstruction_r2: scored must be {pred.shape[:-1]}, got {scored.shape}")
        pred, true = pred[scored], true[scored]
    return float(metrics.r2_score(true.reshape(-1), pred.reshape(-1)))


def score_reconstruction(predict: Predictor, data: ReconstructionData, split: str = "test", batch_size: int = 64,
                         *, spatial_vocab=None, return_predictions: bool = False) -> dict[str, Any]:
    """Score a reconstruction predictor on every held-out (channel, segment) of a split.

    ``predict(batch) -> (B, T)`` (numpy or torch) the reconstruction of ``batch["held_out"]``'s
    z-scored signal, given a batch of :func:`reconstruction_batches`. A BaRISTA model wraps its
    encoder + :class:`~neurofm.models.barista.ChannelReconstructionHead` with
    ``mask=batch["held_out_mask"]``.

    Returns ``{"r2": pooled R2, "pearson_r": pooled r, "r2_per_channel": (E,), "channels": names,
    "n_channels": E, "n_segments": S, "n_scored": scored (channel, segment) pairs, "protocol": line}``,
    plus ``pred``/``true`` (E, S, T) and ``scored`` (E, S) with ``return_predictions``.

    A BaRISTA predictor (``encoder`` a trained encoder, ``head`` its reconstruction head)::

        @torch.no_grad()
        def predict(batch):
            m = batch["held_out_mask"]  # (B, C), one True per row
            h = encoder(batch, mask=m, mask_token=head.mask_token)  # (B, n, C, d)
            return head(h, m).reshape(len(m), -1)  # (B, n, L) in row order -> (B, T)
    """
    seg = data.split(split)
    S, C, T = seg.x.shape
    E = len(data.eval_channels)
    pooled = metrics.RegressionMoments()  # every scored sample, all channels pooled
    per = [metrics.RegressionMoments() for _ in range(E)]
    row = np.full(C, -1, np.int64)
    row[data.eval_channels] = np.arange(E)  # channel index -> evaluation row
    keep = {}
    if return_predictions:
        keep = {"pred": np.full((E, S, T), np.nan, np.float32), "true": np.zeros((E, S, T), np.float32),
                "scored": np.zeros((E, S), bool)}
    for batch in reconstruction_batches(data, split, batch_size, spatial_vocab=spatial_vocab):
        B = batch["x"].shape[0]
        pred = _as_numpy(predict(batch))
        if pred.shape != (B, T):
            raise ValueError(f"score_reconstruction: predict returned shape {pred.shape} for a batch of {B} "
                             f"segments of {T} samples; return (B, T), the held-out channel's reconstruction")
        if not np.isfinite(pred).all():
            raise ValueError("score_reconstruction: predict returned NaN/inf")
        c, s = batch["held_out"].numpy(), batch["segment"].numpy()
        e = row[c]  # (B,)
        ok = batch["scored"].numpy()
        true = seg.x[s, c].astype(np.float64)  # (B, T)
        pooled.add(true[ok].ravel(), pred[ok].ravel())
        for k in np.unique(e[ok]):
            sel = ok & (e == k)
            per[k].add(true[sel].ravel(), pred[sel].ravel())
        if return_predictions:
            keep["pred"][e, s] = pred
            keep["true"][e, s] = true
            keep["scored"][e, s] = ok
    if pooled.n == 0:
        raise ValueError(f"score_reconstruction: no scored (channel, segment) in {data.path}'s {split} block: every "
                         f"evaluation channel or a neighbour is flat there")
    out = {"r2": float(pooled.r2()[0]), "pearson_r": float(pooled.pearson()[0]),
           "r2_per_channel": np.array([float(p.r2()[0]) if p.n else np.nan for p in per]),
           "channels": [data.channel_names[c] for c in data.eval_channels],
           "n_channels": E, "n_segments": S, "n_scored": int(round(pooled.n / T)),
           "protocol": data.describe()}
    out.update(keep)
    return out


# --------------------------------------------------------------------------------------------
# channel reconstruction: baselines
# --------------------------------------------------------------------------------------------


def neighbour_mean_baseline(batch: Mapping[str, Any]) -> np.ndarray:
    """The held-out channel as the z-scored mean of its two same-shaft neighbours: ``(B, T)``.

    Works on a batch of :func:`reconstruction_batches` (``x`` (B, C, T), ``neighbours`` (B, 2)).
    The neighbours are already z-scored per segment; their mean is z-scored again so the
    prediction has the target's scale. It is exact when the contact is the mean of two
    neighbours of equal variance, and otherwise scores ``R2 = 2 r - 1`` for correlation ``r``.
    """
    x = _as_numpy(batch["x"])  # (B, C, T)
    nb = np.asarray(batch["neighbours"], dtype=np.int64)  # (B, 2)
    rows = np.arange(len(x))
    mean = 0.5 * (x[rows, nb[:, 0]] + x[rows, nb[:, 1]])  # (B, T)
    return zscore(mean, axis=-1)[0].astype(np.float64)


class LeastSquaresBaseline:
    """Linear reconstruction of each evaluation channel, weights fitted on the training block.

    ``inputs="neighbours"``: ``y_c = w1 x_{n-1} + w2 x_{n+1}`` (the stronger neighbour baseline:
    it learns unequal weights and shrinks toward 0 when neighbours predict little);
    ``inputs="all"``: ``y_c = sum_{d != c} w_d x_d`` over every usable channel (the linear
    spatial filter a model must beat to claim non-linear or temporal gains).

    All weights come from one Gram matrix ``G = sum_{s,t} x x^T`` (C, C) of the training
    segments (flat and non-neural channels zero): channel ``c`` solves
    ``(G_II + lambda I) w = G_Ic`` over its inputs ``I`` with ``lambda = ridge * trace(G_II) / |I|``.
    Call as a predictor: ``baseline(batch) -> (B, T)``.
    """

    def __init__(self, inputs: str = "neighbours", ridge: float | None = None):
        if inputs not in ("neighbours", "all"):
            raise ValueError(f"LeastSquaresBaseline: inputs must be 'neighbours' or 'all', got {inputs!r}")
        self.inputs, self.ridge = inputs, ridge

    def fit(self, data: ReconstructionData, split: str = "train") -> "LeastSquaresBaseline":
        seg = data.split(split)
        if len(seg) == 0:
            raise ValueError(f"LeastSquaresBaseline.fit: {data.path} has no {split} segment to fit on; "
                             f"lower test_fraction or use shorter segments")
        ridge = data.protocol.ridge if self.ridge is None else float(self.ridge)
        S, C, _ = seg.x.shape
        live = (seg.channel_mask & data.usable[None, :]).astype(np.float32)  # (S, C)
        G = np.zeros((C, C))
        for i0 in range(0, S, 32):
            xs = seg.x[i0:i0 + 32] * live[i0:i0 + 32, :, None]  # (b, C, T)
            G += np.einsum("bct,bdt->cd", xs, xs, dtype=np.float64)
        W = np.zeros((C, C))  # row c: weights that reconstruct channel c
        for c, nb in zip(data.eval_channels.tolist(), data.neighbours):
            if self.inputs == "neighbours":
                idx = np.asarray(nb)
            else:
                idx = np.flatnonzero(data.usable & (np.arange(C) != c))
            A = G[np.ix_(idx, idx)]
            lam = ridge * max(np.trace(A) / len(idx), 1e-12)
            W[c, idx] = np.linalg.solve(A + lam * np.eye(len(idx)), G[idx, c])
        self.weights_ = W
        return self

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        if not hasattr(self, "weights_"):
            raise RuntimeError("LeastSquaresBaseline: call fit(data) before predicting")
        x = _as_numpy(batch["x"])  # (B, C, T)
        w = self.weights_[np.asarray(batch["held_out"], dtype=np.int64)]  # (B, C)
        return np.einsum("bc,bct->bt", w, x)


def reconstruction_baselines(data: ReconstructionData, split: str = "test", batch_size: int = 64
                             ) -> dict[str, dict[str, Any]]:
    """Scores of the three baselines on ``split``: ``{"neighbour mean", "LS neighbours", "LS all channels"}``."""
    predictors: dict[str, Predictor] = {
        "neighbour mean": neighbour_mean_baseline,
        "LS neighbours": LeastSquaresBaseline("neighbours").fit(data),
        "LS all channels": LeastSquaresBaseline("all").fit(data),
    }
    return {name: score_reconstruction(p, data, split, batch_size) for name, p in predictors.items()}


# --------------------------------------------------------------------------------------------
# event detection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventProtocol:
    """Every choice behind an event-detection AUROC (DESIGN.md 8).

    Attributes
    ----------
    events : name under ``/events`` (the simulator's ``word_onset``: speech / nonspeech).
    labels : class names in class-index order (binary: negative, positive); events with other
        labels are left out. None: the file's labels, sorted (``nonspeech`` 0, ``speech`` 1).
    segment_s, n_patches : segment length (s) and patches, as the model's.
    event_offset : segment start relative to the onset (s); negative starts before it.
    fractions : (train, valid, test) shares of the recording, contiguous and in that order.
    gap_s : seconds between consecutive blocks; an event whose segment crosses a block edge or
        falls in a gap is dropped.
    line_noise, sampling_rate : notch (Hz) and resampling as in :class:`ReconstructionProtocol`.
    alphas : ridge penalties for the band-power baseline, chosen by validation AUROC.
    """

    events: str = "word_onset"
    labels: tuple[str, ...] | None = None
    segment_s: float = 3.0
    n_patches: int = 12
    event_offset: float = 0.0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    gap_s: float = 5.0
    line_noise: float | None = None
    sampling_rate: float | None = None
    alphas: tuple[float, ...] = tuple(float(a) for a in DEFAULT_ALPHAS)

    def __post_init__(self):
        if len(self.fractions) != 3 or min(self.fractions) <= 0:
            raise ValueError(f"EventProtocol.fractions must be three positive (train, valid, test) shares, "
                             f"got {self.fractions}")
        if self.gap_s < 0:
            raise ValueError(f"EventProtocol.gap_s must be >= 0, got {self.gap_s}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"EventProtocol.labels must be distinct, got {self.labels}")

    def replace(self, **changes) -> "EventProtocol":
        return dataclasses.replace(self, **changes)

    def segmenter(self) -> IEEGSegmenter:
        return _segmenter(self.segment_s, self.n_patches, self.line_noise, self.sampling_rate)

    def splitter(self) -> TimeBlockSplit:
        return TimeBlockSplit(dict(zip(("train", "valid", "test"), self.fractions)), gap=self.gap_s,
                              from_file=False)

    def describe(self) -> str:
        f = self.fractions
        notch = f"notch {self.line_noise:g} Hz" if self.line_noise else "no notch"
        labels = "sorted file labels" if self.labels is None else "/".join(self.labels)
        return (f"event detection /events/{self.events} ({labels}): {self.segment_s:g} s segments ({self.n_patches} "
                f"patches) starting {self.event_offset:+g} s from onset, per-channel z-scored, as recorded, {notch}; "
                f"contiguous train/valid/test blocks {f[0]:g}/{f[1]:g}/{f[2]:g} of the recording, {self.gap_s:g} s "
                f"gaps, segments wholly inside a block; penalty by valid AUROC; ROC-AUC on the test block")


@dataclass
class EventData:
    """Event-locked segments of one session split into train / valid / test (:class:`SegmentSet`)."""

    protocol: EventProtocol
    path: Path
    label_map: dict[str, int]
    channel_names: list[str]
    channels: Channels | None
    blocks: dict[str, Intervals]
    plan: SegmentPlan
    train: SegmentSet
    valid: SegmentSet
    test: SegmentSet
    spatial: dict[str, np.ndarray]

    def split(self, name: str) -> SegmentSet:
        if name not in ("train", "valid", "test"):
            raise KeyError(f"EventData has splits 'train', 'valid' and 'test', not {name!r}")
        return getattr(self, name)

    def describe(self) -> str:
        K = len(self.label_map)
        counts = ", ".join(f"{k} {np.bincount(self.split(k).label, minlength=K).tolist()}"
                           for k in ("train", "valid", "test"))
        classes = "/".join(sorted(self.label_map, key=self.label_map.get))
        return f"{self.protocol.describe()}; {self.path.name}: segments per class ({classes}) {counts}"


def event_data(session, protocol: EventProtocol | None = None, *, spatial_vocab="auto") -> EventData:
    """Read one session's event-locked segments for the train, valid and test blocks."""
    protocol = protocol or EventProtocol()
    session = session if isinstance(session, Session) else Session(session)
    if protocol.events not in session.event_names:
        raise KeyError(f"{session.path}: /events/{protocol.events}: missing (available: {session.event_names}); "
                       f"set EventProtocol(events=...)")
    file_labels = event_classes([session.events(protocol.events)["label"]])
    if protocol.labels is None:
        label_map = {lab: i for i, lab in enumerate(file_labels)}
    else:
        absent = [lab for lab in protocol.labels if lab not in file_labels]
        if absent:
            raise ValueError(f"{session.path}: /events/{protocol.events}/label: no event labelled {absent} "
                             f"(labels in the file: {file_labels}); fix EventProtocol(labels=...)")
        label_map = {lab: i for i, lab in enumerate(protocol.labels)}
    if len(label_map) < 2:
        raise ValueError(f"{session.path}: /events/{protocol.events}/label: one class only ({file_labels}); "
                         f"event detection needs at least two labels")
    segmenter, splits = protocol.segmenter(), protocol.splitter()
    blocks = splits(session)
    parts, ds = {}, None
    for name in ("train", "valid", "test"):
        parts[name], ds = _load_split(session, segmenter, splits, name, events=protocol.events,
                                      event_offset=protocol.event_offset, label_map=label_map)
    plan = ds.reader.plans[0]
    fix = "use a longer recording, larger fractions for that block, shorter segments or a smaller gap_s"
    for name in ("train", "valid", "test"):
        _require(parts[name], session, name, blocks, plan, fix, minimum=2)
    channels = ds.reader.cplans[0].channels
    names = _channel_names(ds)
    return EventData(protocol, Path(session.path), label_map, names, channels, blocks, plan, parts["train"],
                     parts["valid"], parts["test"], _spatial(channels, len(names), spatial_vocab))


def event_batches(data: EventData, split: str = "test", batch_size: int = 64, *, spatial_vocab=None
                  ) -> Iterator[dict[str, Any]]:
    """BaRISTA batches (``x``, ``channel_mask``, ``coords``/``parcel``/``lobe``, ``label``, ``session``,
    ``t0``) of the event-locked segments of ``split``, in time order."""
    seg = data.split(split)
    spatial = data.spatial if spatial_vocab is None else _spatial(data.channels, len(data.channel_names),
                                                                  spatial_vocab)
    for i0 in range(0, len(seg), batch_size):
        r = slice(i0, i0 + batch_size)
        yield _torch_batch(seg.x[r], seg.channel_mask[r], seg.t0[r], spatial, label=seg.label[r].astype(np.int64))


def score_auroc(scores, labels) -> float:
    """ROC-AUC of ``scores`` (n,) (higher = class 1) or (n, K) (macro one-vs-rest) against
    ``labels`` (n,) class indices, by :func:`neurofm.metrics.auroc`."""
    labels = np.asarray(labels)
    scores = _as_numpy(scores)
    present = np.unique(labels)
    if present.size < 2:
        raise ValueError(f"score_auroc: the labels hold one class only ({present.tolist()}); AUROC needs "
                         f"positives and negatives (use a longer test block)")
    if scores.ndim == 2 and scores.shape[1] == 2:
        scores = scores[:, 1] - scores[:, 0]  # two-class logits -> one score
    return float(metrics.auroc(labels, scores))


def score_classifier(predict: Predictor, data: EventData, split: str = "test", batch_size: int = 64, *,
                     spatial_vocab=None) -> dict[str, Any]:
    """AUROC of ``predict(batch) -> scores (B,) or (B, K)`` on the event segments of ``split``."""
    scores, labels = [], []
    for batch in event_batches(data, split, batch_size, spatial_vocab=spatial_vocab):
        s = _as_numpy(predict(batch))
        if len(s) != len(batch["label"]):
            raise ValueError(f"score_classifier: predict returned {len(s)} scores for {len(batch['label'])} segments")
        scores.append(s)
        labels.append(batch["label"].numpy())
    y = np.concatenate(labels)
    return {"auroc": score_auroc(np.concatenate(scores), y), "n_segments": len(y),
            "n_per_class": np.bincount(y, minlength=len(data.label_map)).tolist(), "protocol": data.describe()}


def band_power_baseline(data: EventData) -> dict[str, Any]:
    """:class:`~neurofm.baselines.BandPowerRidge` fitted on train, penalty by valid AUROC, scored on test.

    Returns ``{"auroc": test AUROC, "auroc_valid", "alpha", "n_train", "n_valid", "n_test",
    "model", "protocol"}``. The baseline reads the same z-scored segments a model gets, so its
    band powers are relative (each channel's spectrum shape within a segment).
    """
    rate = data.plan.rate
    tr, va, te = data.train, data.valid, data.test
    best = None
    for alpha in data.protocol.alphas:
        clf = BandPowerRidge(rate, alphas=alpha).fit(tr.x, tr.label)
        try:
            score = score_auroc(clf.decision_function(va.x), va.label)
        except ValueError:
            raise ValueError(f"{data.path}: the valid block holds one class only; change EventProtocol.fractions "
                             f"or use a longer recording") from None
        if best is None or score > best[0]:
            best = (score, alpha, clf)
    score_valid, alpha, clf = best
    return {"auroc": score_auroc(clf.decision_function(te.x), te.label), "auroc_valid": score_valid,
            "alpha": float(alpha), "n_train": len(tr), "n_valid": len(va), "n_test": len(te), "model": clf,
            "protocol": data.describe()}


# --------------------------------------------------------------------------------------------
# blocks of the test period (for the decode report's block bootstrap)
# --------------------------------------------------------------------------------------------


def block_span_s(t0, session, blocks, segment_s: float) -> float:
    """Mean length (s) of the test-period blocks :func:`neurofm.report.test_period_blocks` cut: per block, from
    its first segment's start to its last segment's end within each session (summed over the
    sessions a block spans). The decode report states it as ``block_s`` (equal-count blocks
    differ in length; this is their mean). NaN without segments."""
    t0 = np.asarray(t0, dtype=np.float64).ravel()
    sess = np.asarray(session, np.int64).ravel()
    blocks = np.asarray(blocks, np.int64).ravel()
    spans = []
    for b in np.unique(blocks):
        k = blocks == b
        spans.append(sum(float(t0[k][sess[k] == s].max() - t0[k][sess[k] == s].min()) + segment_s
                         for s in np.unique(sess[k])))
    return float(np.mean(spans)) if spans else float("nan")
