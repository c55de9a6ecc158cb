"""BaRISTA input segments from intracranial EEG: preprocess, cut, z-score, patch.

A BaRISTA sample is a fixed-length segment of every channel (reference: 3 s at 2048 Hz), each
channel z-scored over that segment, cut into ``n_patches`` non-overlapping patches of
``patch_len`` samples (DESIGN.md 4)::

    recording (T, C) --preprocess--> (T', C') --segment--> x (S, C', n * L) --patch--> (S, C', n, L)

Preprocessing follows the paper's Brain Treebank pipeline, each step optional:

* notch filter at the line-noise frequency and its harmonics (50 Hz or 60 Hz by site);
* Laplacian re-reference: each contact minus the mean of its neighbouring contacts on the same
  shaft (``LA3 - (LA2 + LA4) / 2``), neighbours found from the channel names (``LA1, LA2``,
  ``L'1, L'2``, ``RH 03``); a contact with no usable neighbour cannot be re-referenced and is
  dropped;
* dropping channels that are marked bad, are not neural (ECG, markers...), or whose atlas
  labels all say white matter or ventricle;
* resampling to a target rate when the model was trained at another one (DESIGN.md 7).

Segment and patch lengths can be given in seconds or samples; the segmenter checks that they
come out as whole numbers of samples at the (target) rate and says how to fix it if not.
Segments with NaN/inf samples are skipped and counted, never returned.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy.signal import iirnotch, resample_poly, sosfiltfilt, tf2sos, welch

from neurofm.data.session import Channels, Session, non_neural

if TYPE_CHECKING:  # pragma: no cover
    from neurofm.atlas import SpatialVocab

# Labels (any atlas) that mean "not grey matter": white matter and ventricles.
_NON_GREY = re.compile(r"white[-_ ]?matter|(^|[-_ ])wm([-_ ]|$)|ventric|(^|[-_])vent([-_]|$)|"
                       r"lat[-_ ]?vent|cerebral[-_ ]white", re.IGNORECASE)
# "LA1", "L'12", "RH 03", "A-2": shaft = everything before the trailing contact number.
_CONTACT = re.compile(r"^(?P<shaft>.*?)[\s_\-]*(?P<num>\d+)$")


def parse_contact(name: str) -> tuple[str, int] | None:
    """``(shaft, contact number)`` of an sEEG/ECoG contact name, or ``None`` without a number."""
    m = _CONTACT.match(str(name).strip())
    if not m or not m.group("shaft"):
        return None
    return m.group("shaft").upper(), int(m.group("num"))


def is_white_matter_or_ventricle(labels: Sequence[str]) -> bool:
    """``True`` when a channel's atlas labels that say anything all say white matter/ventricle."""
    said = [str(v).strip() for v in labels if str(v).strip().lower() not in ("", "n/a", "unknown", "nan", "none")]
    return bool(said) and all(_NON_GREY.search(v) for v in said)


def subset_channels(channels: Channels, keep: np.ndarray) -> Channels:
    """The metadata of channels ``keep`` (indices), in that order."""
    keep = np.asarray(keep, dtype=np.int64)
    types = getattr(channels, "types", None)
    kw = {"types": np.asarray(types)[keep]} if types is not None else {}
    return replace(channels, names=[channels.names[i] for i in keep], xyz=np.asarray(channels.xyz)[keep],
                   regions={k: np.asarray(v)[keep] for k, v in channels.regions.items()},
                   bad=np.asarray(channels.bad)[keep], **kw)


def zscore(x: np.ndarray, axis: int = -1, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Z-score along ``axis``; returns ``(z, flat)`` where ``flat`` marks constant series (z = 0)."""
    mean = x.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = x.std(axis=axis, keepdims=True, dtype=np.float64)
    flat = std <= eps * np.maximum(np.abs(mean), 1.0)
    z = ((x - mean) / np.where(flat, 1.0, std)).astype(np.float32)
    z[np.broadcast_to(flat, z.shape)] = 0.0
    return z, np.squeeze(flat, axis=axis)


@dataclass
class Preprocessing:
    """What a BaRISTA model's input went through, beyond its sampling rate and patch shape (the
    model config holds those: ``sampling_rate``, ``n_patches`` x ``patch_len``).

    Saved with the model (``BaristaConfig.preprocessing`` in the pretrained folder's
    config.json) so that fine-tuning and evaluation on a new lab's recording cut the same
    segments: a model pretrained on notched, Laplacian-referenced data sees mains and common
    reference signal it never saw when given raw data.

    ``line_noise``: notch frequency (Hz, harmonics too; 0 = none); ``notch_q``: its quality
    factor; ``laplacian``: same-shaft neighbour re-reference; ``drop_non_grey``: white-matter
    and ventricle contacts left out; ``drop_bad``: bad and non-neural channels left out;
    ``zscore``: how segments are normalised (``"channel_segment"``: each channel over each
    segment, the paper's and the only one implemented).
    """

    line_noise: float = 0.0
    notch_q: float = 30.0
    laplacian: bool = False
    drop_non_grey: bool = False
    drop_bad: bool = True
    zscore: str = "channel_segment"

    def __post_init__(self):
        if self.zscore != "channel_segment":
            raise ValueError(f"Preprocessing.zscore: {self.zscore!r} is not implemented (only 'channel_segment': "
                             "each channel z-scored over each segment)")

    def describe(self) -> str:
        parts = [f"notch {self.line_noise:g} Hz + harmonics" if self.line_noise else "no notch",
                 "Laplacian re-reference" if self.laplacian else "as recorded (no re-reference)"]
        if self.drop_non_grey:
            parts.append("white matter / ventricle contacts dropped")
        parts.append("z-scored per channel per segment")
        return ", ".join(parts)


@dataclass(frozen=True)
class SegmentPlan:
    """Lengths at the output rate: ``segment_samples = n_patches * patch_len``."""

    source_rate: float
    rate: float
    segment_samples: int
    n_patches: int
    patch_len: int
    up: int = 1
    down: int = 1

    @property
    def segment_s(self) -> float:
        return self.segment_samples / self.rate

    @property
    def resample(self) -> bool:
        return self.up != self.down


@dataclass(frozen=True)
class ChannelPlan:
    """Which input channels survive and how the kept ones are re-referenced.

    ``keep`` (C',) indices into the input channels; ``reference`` (C', C) float32 or None:
    output = input @ reference.T (Laplacian), applied before ``keep`` when not None;
    ``channels``: metadata of the kept channels; ``dropped``: {reason: [names]}.
    """

    keep: np.ndarray
    reference: np.ndarray | None
    channels: Channels | None
    dropped: dict


@dataclass
class Segments:
    """Output of :meth:`IEEGSegmenter.__call__`.

    ``x`` (S, C', T) float32 z-scored; ``t0`` (S,) start of each segment (s, relative to the
    first input sample); ``channel_mask`` (S, C') False where a channel is flat in a segment;
    ``channels`` metadata of the C' kept channels; ``n_skipped`` segments dropped for NaN/inf.
    """

    x: np.ndarray
    t0: np.ndarray
    channel_mask: np.ndarray
    channels: Channels | None
    plan: SegmentPlan
    n_skipped: int


class IEEGSegmenter:
    """Cut iEEG into BaRISTA segments.

    Lengths (give at most one of ``segment_s``, ``segment_samples``, ``patch_len``,
    ``patch_s``; default 3 s): the segment is ``n_patches`` patches. ``sampling_rate`` is the
    rate segments come out at (the model's); ``None`` keeps each recording's own rate.
    ``line_noise`` (50 or 60 Hz, or None) notches it and its harmonics below Nyquist;
    ``laplacian`` re-references over same-shaft neighbours; ``drop_non_grey`` drops channels
    whose atlas labels say white matter/ventricle; ``drop_bad`` drops ``/channels/bad``
    channels and non-neural channel types.
    """

    def __init__(self, segment_s: float | None = None, n_patches: int = 12, *, patch_len: int | None = None,
                 patch_s: float | None = None, segment_samples: int | None = None,
                 sampling_rate: float | None = None, line_noise: float | None = None, notch_q: float = 30.0,
                 laplacian: bool = False, drop_non_grey: bool = False, drop_bad: bool = True):
        given = [k for k, v in dict(segment_s=segment_s, patch_len=patch_len, patch_s=patch_s,
                                    segment_samples=segment_samples).items() if v is not None]
        if len(given) > 1:
            raise ValueError(f"give the segment length one way only; got {given}")
        if n_patches < 1:
            raise ValueError(f"n_patches must be >= 1, got {n_patches}")
        if line_noise is not None and line_noise <= 0:
            raise ValueError(f"line_noise must be a positive frequency (50 or 60 Hz) or None, got {line_noise}")
        self.segment_s = 3.0 if not given else segment_s
        self.n_patches, self.patch_len, self.patch_s = int(n_patches), patch_len, patch_s
        self.segment_samples = segment_samples
        self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
        self.line_noise, self.notch_q = line_noise, float(notch_q)
        self.laplacian, self.drop_non_grey, self.drop_bad = laplacian, drop_non_grey, drop_bad

    def config(self) -> dict:
        return {"segment_s": self.segment_s, "n_patches": self.n_patches, "patch_len": self.patch_len,
                "patch_s": self.patch_s, "segment_samples": self.segment_samples,
                "sampling_rate": self.sampling_rate, "line_noise": self.line_noise, "notch_q": self.notch_q,
                "laplacian": self.laplacian, "drop_non_grey": self.drop_non_grey, "drop_bad": self.drop_bad}

    # -- lengths -----------------------------------------------------------------------------
    def plan(self, source_rate: float) -> SegmentPlan:
        """Segment/patch lengths in samples for a recording at ``source_rate`` Hz."""
        if not source_rate or source_rate <= 0 or not math.isfinite(source_rate):
            raise ValueError(f"sampling rate must be a positive number of Hz, got {source_rate}")
        rate = self.sampling_rate or float(source_rate)
        up = down = 1
        if rate != source_rate:
            frac = Fraction(rate / source_rate).limit_denominator(10_000)
            if abs(frac.numerator / frac.denominator * source_rate - rate) > 1e-6 * rate:
                raise ValueError(f"cannot resample {source_rate} Hz to {rate} Hz by a rational factor; "
                                 f"choose a target rate with a simple ratio to {source_rate} Hz")
            up, down = frac.numerator, frac.denominator
        n = self.n_patches
        if self.segment_samples is not None:
            total, how = float(self.segment_samples), f"segment_samples = {self.segment_samples}"
        elif self.patch_len is not None:
            total, how = float(self.patch_len) * n, f"patch_len = {self.patch_len} samples x {n} patches"
        elif self.patch_s is not None:
            total, how = self.patch_s * n * rate, f"patch_s = {self.patch_s} s x {n} patches at {rate:g} Hz"
        else:
            total, how = self.segment_s * rate, f"{self.segment_s} s at {rate:g} Hz"
        T = int(round(total))
        if abs(total - T) > 1e-6 * max(total, 1.0) or T < n:
            raise ValueError(f"{how} is {total:.6g} samples, not a whole number (>= {n}); resample with "
                             f"IEEGSegmenter(sampling_rate=...) or choose a length that is whole at {rate:g} Hz")
        if T % n:
            ok = [k for k in range(max(1, n - 6), n + 7) if T % k == 0]
            raise ValueError(f"{how} is {T} samples, which does not split into {n} equal patches "
                             f"({T / n:.4g} samples each); use n_patches in {ok}, give patch_len in samples, "
                             f"or resample with IEEGSegmenter(sampling_rate=...)")
        return SegmentPlan(float(source_rate), rate, T, n, T // n, up, down)

    # -- channels ----------------------------------------------------------------------------
    def channel_plan(self, channels: Channels | None, n_channels: int | None = None) -> ChannelPlan:
        """Which channels to keep and the Laplacian reference matrix, from channel metadata."""
        if channels is None:
            if self.laplacian or self.drop_non_grey:
                raise ValueError("laplacian / drop_non_grey need channel metadata (names, atlas labels); "
                                 "pass channels=session.channels()")
            return ChannelPlan(np.arange(n_channels), None, None, {})
        C = len(channels.names)
        names = channels.names
        dropped: dict[str, list[str]] = {}
        usable = np.ones(C, dtype=bool)
        if self.drop_bad:
            bad = np.asarray(channels.bad, dtype=bool)
            types = getattr(channels, "types", None)
            other = non_neural(types) if types is not None else np.zeros(C, dtype=bool)
            for reason, m in (("bad", bad), ("non-neural type", other & ~bad)):
                if m.any():
                    dropped[reason] = [names[i] for i in np.flatnonzero(m)]
            usable &= ~bad & ~other
        keep = usable.copy()
        reference = None
        if self.laplacian:
            reference = np.zeros((C, C), dtype=np.float32)
            contacts = [parse_contact(nm) if usable[i] else None for i, nm in enumerate(names)]
            where = {c: i for i, c in enumerate(contacts) if c is not None}
            no_nb = []
            for i, c in enumerate(contacts):
                if c is None:
                    if usable[i]:
                        no_nb.append(i)
                    continue
                nb = [where[(c[0], c[1] + d)] for d in (-1, 1) if (c[0], c[1] + d) in where]
                if not nb:
                    no_nb.append(i)
                    continue
                reference[i, i] = 1.0
                reference[i, nb] = -1.0 / len(nb)
            if no_nb:
                dropped["no same-shaft neighbour for the Laplacian"] = [names[i] for i in no_nb]
                keep[no_nb] = False
        if self.drop_non_grey and channels.regions:
            labels = list(zip(*[np.asarray(v) for v in channels.regions.values()]))
            ng = np.array([is_white_matter_or_ventricle(lab) for lab in labels]) & keep
            if ng.any():
                dropped["white matter / ventricle"] = [names[i] for i in np.flatnonzero(ng)]
            keep &= ~ng
        idx = np.flatnonzero(keep)
        if not idx.size:
            raise ValueError(f"no channel is left after preprocessing ({ {k: len(v) for k, v in dropped.items()} } "
                             f"dropped of {C}); check /channels/bad, the channel names and the atlas labels")
        if reference is not None:
            reference = reference[idx]  # (C', C)
        return ChannelPlan(idx, reference, subset_channels(channels, idx), dropped)

    # -- signal ------------------------------------------------------------------------------
    def preprocess(self, data: np.ndarray, plan: SegmentPlan, channel_plan: ChannelPlan) -> np.ndarray:
        """Notch, re-reference, select channels and resample: ``(T, C)`` -> ``(T', C')`` float32.

        Filters work on the whole block given, so pass some context around the segments you
        want (the datasets do) to keep filter edge effects out of them.
        """
        x = np.asarray(data, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"iEEG data must be (time, channel), got shape {x.shape}")
        if self.line_noise:
            x = notch(x, plan.source_rate, self.line_noise, self.notch_q)
        if channel_plan.reference is not None:
            x = x @ channel_plan.reference.T  # (T, C) @ (C, C') -> (T, C')
        elif len(channel_plan.keep) != x.shape[1] or np.any(channel_plan.keep != np.arange(x.shape[1])):
            x = np.take(x, channel_plan.keep, axis=1)  # (T, C'), C-contiguous
        if plan.resample:
            x = resample_poly(x, plan.up, plan.down, axis=0).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def cut(self, x: np.ndarray, starts: np.ndarray, plan: SegmentPlan
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segments of ``x`` (T, C) at sample ``starts`` (S,): z-scored ``(S', C, T_seg)``.

        Returns ``(segments, kept (S',) indices into starts, channel_mask (S', C))``; a segment
        with any NaN/inf sample (or running past the data) is skipped.
        """
        T = plan.segment_samples
        starts = np.asarray(starts, dtype=np.int64)
        inside = (starts >= 0) & (starts + T <= x.shape[0])
        starts_in = starts[inside]
        if not starts_in.size:
            return np.zeros((0, x.shape[1], T), np.float32), np.zeros(0, np.int64), np.zeros((0, x.shape[1]), bool)
        view = np.lib.stride_tricks.sliding_window_view(x, T, axis=0)  # (T_all - T + 1, C, T)
        seg = view[starts_in]  # (S, C, T) copy
        finite = np.isfinite(seg).all(axis=(1, 2))
        seg = seg[finite]
        kept = np.flatnonzero(inside)[finite]
        z, flat = zscore(seg, axis=-1)
        return z, kept, ~flat

    def __call__(self, data: np.ndarray, sampling_rate: float, channels: Channels | None = None,
                 stride_s: float | None = None) -> Segments:
        """Preprocess a whole recording ``(T, C)`` and cut it into consecutive segments.

        ``stride_s`` (default: the segment length) sets the step between segment starts.
        """
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"iEEG data must be (time, channel), got shape {data.shape}")
        plan = self.plan(sampling_rate)
        cplan = self.channel_plan(channels, data.shape[1])
        if channels is not None and len(channels.names) != data.shape[1]:
            raise ValueError(f"data has {data.shape[1]} channels but the channel table has {len(channels.names)}")
        min_in = int(math.ceil(plan.patch_len * plan.source_rate / plan.rate))
        if data.shape[0] < min_in:
            raise ValueError(f"recording has {data.shape[0]} samples, fewer than one patch "
                             f"({plan.patch_len} samples at {plan.rate:g} Hz); nothing to segment")
        x = self.preprocess(data, plan, cplan)
        stride = plan.segment_samples if stride_s is None else int(round(stride_s * plan.rate))
        if stride < 1:
            raise ValueError(f"stride_s = {stride_s} s is less than one sample at {plan.rate:g} Hz")
        starts = np.arange(0, max(x.shape[0] - plan.segment_samples + 1, 0), stride)
        seg, kept, mask = self.cut(x, starts, plan)
        n_skipped = len(starts) - len(kept)
        return Segments(seg, starts[kept] / plan.rate, mask, cplan.channels, plan, n_skipped)

    # -- tokens ------------------------------------------------------------------------------
    def patch(self, x, plan: SegmentPlan | None = None):
        """``(..., C, n * L)`` -> ``(..., C, n, L)`` (numpy or torch; a view)."""
        n = self.n_patches if plan is None else plan.n_patches
        T = x.shape[-1]
        if T % n:
            raise ValueError(f"segment of {T} samples does not split into {n} patches")
        return x.reshape(*x.shape[:-1], n, T // n)

    @staticmethod
    def spatial(channels: Channels, vocab: "SpatialVocab", scale: str | None = None) -> dict[str, np.ndarray]:
        """``{"coords" (C, 3), "parcel" (C,), "lobe" (C,)}`` int64 category indices of ``channels``."""
        out = vocab.encode(channels, scale=scale) if scale is not None else vocab.encode(channels)
        C = len(channels.names)
        coords = np.asarray(out["coords"], dtype=np.int64).reshape(C, 3)
        return {"coords": coords, "parcel": np.asarray(out["parcel"], dtype=np.int64).reshape(C),
                "lobe": np.asarray(out["lobe"], dtype=np.int64).reshape(C)}


def notch(x: np.ndarray, rate: float, line_noise: float, q: float = 30.0) -> np.ndarray:
    """Zero-phase notch at ``line_noise`` Hz and every harmonic below Nyquist, along axis 0."""
    nyq = rate / 2.0
    freqs = [k * line_noise for k in range(1, int(nyq // line_noise) + 1) if k * line_noise < 0.98 * nyq]
    if not freqs:
        return x
    sos = np.concatenate([tf2sos(*iirnotch(f, q, fs=rate)) for f in freqs], axis=0)
    padlen = min(3 * (2 * len(sos) + 1), x.shape[0] - 1)
    return sosfiltfilt(sos, x, axis=0, padlen=max(padlen, 0)).astype(np.float32)


#: A mains peak counts when its 1 Hz bin holds this many times the median power of the bins
#: 2-6 Hz either side (6 dB): brain rhythms are never that narrow, mains always is.
MAINS_PEAK_RATIO = 4.0

#: The mains frequencies there are (Hz).
MAINS_FREQUENCIES = (50.0, 60.0)


def recording_mains(session: Session, seconds: float = 60.0) -> tuple[float, str]:
    """A session's mains frequency and where it comes from: ``(hz, source)``, ``(0.0, "")`` when
    nothing says and no peak stands out.

    In order: what the recording says (root attr ``mains_frequency``, which ``neurofm convert
    ieeg`` takes from a BIDS ``*_ieeg.json`` ``PowerLineFrequency`` or MNE's ``line_freq``), the
    mains a simulation added (``simulate_ieeg``'s ``line_noise``), else the frequency whose peak
    (:func:`mains_peaks` over the first ``seconds`` of the good neural channels) stands out by at
    least :data:`MAINS_PEAK_RATIO`, the taller of the two.
    """
    said = float(session.attrs.get("mains_frequency", 0.0) or 0.0)
    if said > 0:
        return said, str(session.attrs.get("mains_frequency_source", "") or "the session file's mains_frequency")
    if session.attrs.get("generator") == "neurofm.data.synthetic.simulate_ieeg":
        try:
            line = json.loads(session.attrs.get("generator_params", "{}")).get("line_noise")
        except (TypeError, ValueError):
            line = None
        return (float(line), "the simulation's mains") if line else (0.0, "")
    peaks = {f: r for f, r in session_mains_peaks(session, seconds).items() if r >= MAINS_PEAK_RATIO}
    if not peaks:
        return 0.0, ""
    line = max(peaks, key=peaks.get)
    return line, f"{peaks[line]:.0f}x the power beside it, median over channels"


def session_mains_peaks(session: Session, seconds: float = 60.0) -> dict[float, float]:
    """:func:`mains_peaks` at :data:`MAINS_FREQUENCIES` over the first ``seconds`` of a session's
    good neural channels (what :func:`recording_mains` weighs against :data:`MAINS_PEAK_RATIO`)."""
    rate = session.sampling_rate
    if not rate or not session.n_samples:
        return {}
    x = session.continuous_samples(0, min(session.n_samples, int(seconds * rate)))
    try:
        ch = session.channels()
        good = ~np.asarray(ch.bad, bool)
        if ch.types is not None:
            good &= ~non_neural(ch.types)
        x = x[:, good]
    except KeyError:
        pass
    return mains_peaks(x, rate, MAINS_FREQUENCIES)


def mains_peaks(samples: np.ndarray, rate: float, freqs: Sequence[float] = (50.0, 60.0)) -> dict[float, float]:
    """How far each mains frequency stands out of a recording: ``{f: ratio}``, the power in the
    1 Hz bin at ``f`` over the median power 2-6 Hz either side, median over channels (Welch,
    1 s Hann segments). ``samples`` (T, C); frequencies the rate cannot hold are left out."""
    x = np.asarray(samples, dtype=np.float64)
    n = int(round(rate))
    if x.ndim != 2 or x.shape[0] < 2 * n or not x.shape[1]:
        return {}
    x = x[:, np.isfinite(x).all(axis=0) & (x.std(axis=0) > 0)]
    if not x.shape[1]:
        return {}
    f, p = welch(x, fs=rate, nperseg=n, axis=0)  # (F, C), 1 Hz bins
    out = {}
    for line in freqs:
        if line + 7 > rate / 2:
            continue
        k = int(np.argmin(np.abs(f - line)))
        side = np.r_[k - 6:k - 1, k + 2:k + 7]
        out[float(line)] = float(np.median(p[k] / np.maximum(np.median(p[side], axis=0), 1e-30)))
    return out
