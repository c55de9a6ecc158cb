"""Train/valid/test splits by contiguous time blocks with a gap, and blocked cross-validation.

Neighbouring windows of a recording are strongly correlated (shared slow drifts, the same
behavioural bout), so a random split of individual windows leaks the test set into training
(one of the reference's bugs, DESIGN.md 3 and 8). Here a split is a set of time blocks per
session; consecutive blocks of different splits are separated by ``gap`` seconds; and a
window belongs to a split only if EVERYTHING it reads (previous window, current window,
stimulus lead) lies wholly inside one of that split's blocks. Windows that straddle a
boundary or fall in a gap are dropped, so no window is in two splits.

Every splitter is a callable ``splitter(session) -> {split name: Intervals}``; datasets turn
those blocks into windows with :func:`grid_runs`. A splitter may also keep only some of a
split's windows by their end times (``select_windows(session, split, ends) -> (n,) bool``,
spike windows): blocks cannot express a set of windows whose histories overlap.
"""

from __future__ import annotations

import math
import pathlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from neurofm.data.session import Session

_TOL = 1e-9  # s; float slack when testing "window inside block"


@dataclass(frozen=True)
class Intervals:
    """Sorted, non-overlapping half-open time blocks ``[start[i], end[i])`` in seconds."""

    start: np.ndarray
    end: np.ndarray

    def __post_init__(self):
        start = np.atleast_1d(np.asarray(self.start, dtype=np.float64))
        end = np.atleast_1d(np.asarray(self.end, dtype=np.float64))
        if start.shape != end.shape or start.ndim != 1:
            raise ValueError(f"Intervals: start {start.shape} and end {end.shape} must be 1-D of one length")
        if np.any(end < start):
            raise ValueError("Intervals: every end must be >= its start")
        order = np.argsort(start, kind="stable")
        start, end = start[order], end[order]
        if start.size > 1 and np.any(start[1:] < end[:-1] - _TOL):
            i = int(np.argmax(start[1:] < end[:-1] - _TOL))
            raise ValueError(f"Intervals: blocks [{start[i]}, {end[i]}) and [{start[i + 1]}, {end[i + 1]}) overlap")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[float]]) -> "Intervals":
        pairs = [tuple(p) for p in pairs]
        if not pairs:
            return cls.empty()
        a = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
        return cls(a[:, 0], a[:, 1])

    @classmethod
    def empty(cls) -> "Intervals":
        return cls(np.zeros(0), np.zeros(0))

    def __len__(self) -> int:
        return len(self.start)

    @property
    def duration(self) -> float:
        return float(np.sum(self.end - self.start))

    def pairs(self) -> list[tuple[float, float]]:
        return list(zip(self.start.tolist(), self.end.tolist()))

    def contains(self, t0, t1) -> np.ndarray:
        """``True`` where ``[t0, t1]`` lies wholly inside ONE block (vectorised)."""
        t0, t1 = np.asarray(t0, dtype=np.float64), np.asarray(t1, dtype=np.float64)
        i = np.searchsorted(self.start, t0 + _TOL, side="right") - 1
        ok = i >= 0
        i = np.clip(i, 0, max(len(self) - 1, 0))
        if not len(self):
            return np.zeros(np.broadcast(t0, t1).shape, dtype=bool)
        return ok & (t0 >= self.start[i] - _TOL) & (t1 <= self.end[i] + _TOL)

    def clip(self, t0: float, t1: float) -> "Intervals":
        """The blocks cut to ``[t0, t1)`` (empty pieces dropped)."""
        s, e = np.maximum(self.start, t0), np.minimum(self.end, t1)
        keep = e > s
        return Intervals(s[keep], e[keep])

    def cut(self, times) -> "Intervals":
        """The blocks split at ``times`` (s): a window inside one piece spans none of them."""
        times = np.unique(np.asarray(times, dtype=np.float64).ravel())
        if not len(self) or not len(times):
            return self
        inside = times[((times[:, None] > self.start[None, :] + _TOL) & (times[:, None] < self.end[None, :] - _TOL)).any(1)]
        if not len(inside):
            return self
        edges = np.sort(np.concatenate([self.start, self.end, inside, inside]))
        return Intervals(edges[0::2], edges[1::2])

    def minus(self, start, end) -> "Intervals":
        """The blocks with the spans ``[start[i], end[i])`` (s; may overlap each other) taken out."""
        start, end = np.atleast_1d(np.asarray(start, np.float64)), np.atleast_1d(np.asarray(end, np.float64))
        s, e = self.start, self.end
        for a, b in zip(start[end > start], end[end > start]):
            keep_left, keep_right = (s < a) & (np.minimum(e, a) > s), (e > b) & (e > np.maximum(s, b))
            s, e = (np.concatenate([s[keep_left], np.maximum(s, b)[keep_right]]),
                    np.concatenate([np.minimum(e, a)[keep_left], e[keep_right]]))
            order = np.argsort(s, kind="stable")
            s, e = s[order], e[order]
        return Intervals(s, e)

    def distance_to(self, other: "Intervals") -> float:
        """Smallest gap (s) between a block of ``self`` and one of ``other`` (0 if they touch)."""
        if not len(self) or not len(other):
            return math.inf
        gaps = np.maximum(other.start[None, :] - self.end[:, None], self.start[:, None] - other.end[None, :])
        return float(max(gaps.min(), 0.0))


# --------------------------------------------------------------------------------------------
# splitters
# --------------------------------------------------------------------------------------------

DEFAULT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def _session_span(session: "Session") -> tuple[float, float]:
    t0, t1 = float(session.t_start), float(session.t_end)
    if not t1 > t0:
        raise ValueError(f"{session.path}: recording spans [{t0}, {t1}] s, nothing to split")
    return t0, t1


def check_disjoint(blocks: Mapping[str, Intervals], gap: float, where: str) -> None:
    names = list(blocks)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            d = blocks[names[a]].distance_to(blocks[names[b]])
            pa, pb = blocks[names[a]], blocks[names[b]]
            overlap = any(s < e2 - _TOL and s2 < e - _TOL for s, e in pa.pairs() for s2, e2 in pb.pairs())
            if overlap:
                raise ValueError(f"{where}: split blocks {names[a]!r} and {names[b]!r} overlap in time "
                                 f"(a window could then be in both); make the blocks disjoint")
            if d < gap - _TOL:
                warnings.warn(f"{where}: split blocks {names[a]!r} and {names[b]!r} are only {d:.3f} s apart, "
                              f"less than the gap of {gap} s", stacklevel=3)


def time_blocks(t_start: float, t_end: float, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                gap: float = 1.0) -> dict[str, Intervals]:
    """Cut ``[t_start, t_end)`` into one contiguous block per split, in the order given.

    The boundary between consecutive splits sits at the cumulative fraction and a gap of
    ``gap`` seconds is centred on it (half taken from each side). Fractions are normalised
    to sum to 1; a fraction of 0 gives an empty split.
    """
    names = list(fractions)
    f = np.asarray([float(fractions[n]) for n in names])
    if np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all 0, got {dict(fractions)}")
    if gap < 0:
        raise ValueError(f"gap must be >= 0 s, got {gap}")
    edges = t_start + (t_end - t_start) * np.concatenate([[0.0], np.cumsum(f / f.sum())])
    active = [i for i in range(len(names)) if f[i] > 0]
    out = {}
    for i, name in enumerate(names):
        if f[i] == 0:
            out[name] = Intervals.empty()
            continue
        a = edges[i] + (gap / 2 if i != active[0] else 0.0)
        b = edges[i + 1] - (gap / 2 if i != active[-1] else 0.0)
        out[name] = Intervals([a], [b]) if b > a else Intervals.empty()
    return out


class TimeBlockSplit:
    """Contiguous train/valid/test blocks per session, separated by ``gap`` seconds.

    ``fractions``: ``{name: fraction}`` in time order (default 0.8 / 0.1 / 0.1). With
    ``from_file=True`` a session that has ``/intervals/<name>`` for EVERY split name uses those
    blocks instead (checked to be disjoint; a warning when closer than ``gap``).
    ``blocks`` gives explicit blocks instead of fractions: ``{name: [(t0, t1), ...]}`` for all
    sessions, or ``{session_id: {name: [...]}}`` per session.
    """

    def __init__(self, fractions: Mapping[str, float] | Sequence[float] = DEFAULT_FRACTIONS, gap: float = 1.0,
                 from_file: bool = True, blocks: Mapping | None = None):
        if not isinstance(fractions, Mapping):
            fractions = dict(zip(DEFAULT_FRACTIONS, fractions))
        self.fractions = dict(fractions)
        self.gap = float(gap)
        self.from_file = from_file
        self.blocks = blocks

    @property
    def names(self) -> list[str]:
        if self.blocks is not None:
            first = next(iter(self.blocks.values()), {})
            return list(first) if isinstance(first, Mapping) else list(self.blocks)
        return list(self.fractions)

    def __call__(self, session: "Session") -> dict[str, Intervals]:
        where = str(session.path)
        if self.blocks is not None:
            if all(isinstance(v, Mapping) for v in self.blocks.values()):  # {session_id: {name: pairs}}
                if session.session_id not in self.blocks:
                    raise KeyError(f"{where}: no explicit split blocks for session {session.session_id!r}; "
                                   f"blocks are given for {list(self.blocks)}")
                spec = self.blocks[session.session_id]
            else:  # {name: pairs}, the same for every session
                spec = self.blocks
            out = {name: Intervals.from_pairs(pairs) for name, pairs in spec.items()}
            check_disjoint(out, self.gap, where)
            return out
        names = list(self.fractions)
        in_file = [n for n in names if n in session.interval_names] if self.from_file else []
        if in_file and len(in_file) < len(names):
            warnings.warn(f"{where}: /intervals has {in_file} but not {sorted(set(names) - set(in_file))}; "
                          f"splitting by fractions {self.fractions} instead (write all split names, or none)",
                          stacklevel=2)
        if self.from_file and names and len(in_file) == len(names):
            out = {}
            for n in names:
                iv = session.intervals(n)
                out[n] = Intervals(iv["start"], iv["end"])
            check_disjoint(out, self.gap, f"{where}: /intervals")
            return out
        return time_blocks(*_session_span(session), self.fractions, self.gap)

    def __repr__(self) -> str:
        return f"TimeBlockSplit(fractions={self.fractions}, gap={self.gap}, from_file={self.from_file})"


class BlockedKFold:
    """Blocked K-fold cross-validation: ``n_folds`` contiguous blocks; fold ``i`` tests block ``i``.

    The training set is the rest of the recording minus ``gap`` seconds on each side of the
    held-out blocks. ``splitter(session)`` gives ``{"train", "test"}`` for ``self.fold``
    (with ``valid`` > 0 also ``"valid"``); :meth:`folds` gives all of them.

    ``valid``: a validation block of that fraction of the recording, for model selection inside
    the fold, taken right after the test block (``gap`` seconds after it), or right before it
    when the test block is the last one; training keeps ``gap`` seconds from both. Every
    moment of the recording is then a test moment in exactly one fold, as in the
    ``evaluation.blocked_folds`` layout. A session's own ``/intervals`` are not read: the folds
    are the split.
    """

    def __init__(self, n_folds: int = 5, fold: int = 0, gap: float = 5.0, valid: float = 0.0):
        if n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {n_folds}")
        if not 0 <= fold < n_folds:
            raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
        if not 0 <= valid < 1 - 1 / n_folds:
            raise ValueError(f"valid must be a fraction in [0, {1 - 1 / n_folds:g}) with {n_folds} folds (the test "
                             f"block takes 1/{n_folds}), got {valid}")
        self.n_folds, self.fold, self.gap, self.valid = int(n_folds), int(fold), float(gap), float(valid)

    @property
    def names(self) -> tuple[str, ...]:
        return ("train", "valid", "test") if self.valid > 0 else ("train", "test")

    def split_span(self, t_start: float, t_end: float, fold: int) -> dict[str, Intervals]:
        edges = np.linspace(t_start, t_end, self.n_folds + 1)
        a, b = edges[fold], edges[fold + 1]
        out = {"test": Intervals([a], [b])}
        lo, hi = a, b  # the held-out stretch training keeps clear of
        if self.valid > 0:
            v = self.valid * (t_end - t_start)
            if b + self.gap + v <= t_end + _TOL:
                va, vb = b + self.gap, min(b + self.gap + v, t_end)
            else:
                va, vb = a - self.gap - v, a - self.gap
            out["valid"] = Intervals([va], [vb])
            lo, hi = min(a, va), max(b, vb)
        train = [(t_start, lo - self.gap), (hi + self.gap, t_end)]
        out["train"] = Intervals.from_pairs([(s, e) for s, e in train if e > s])
        return {name: out[name] for name in self.names}

    def folds(self, session: "Session") -> list[dict[str, Intervals]]:
        span = _session_span(session)
        return [self.split_span(*span, k) for k in range(self.n_folds)]

    def __call__(self, session: "Session") -> dict[str, Intervals]:
        return self.split_span(*_session_span(session), self.fold)

    def __repr__(self) -> str:
        return f"BlockedKFold(n_folds={self.n_folds}, fold={self.fold}, gap={self.gap}, valid={self.valid})"


class TrialSplit:
    """Whole trials (``/intervals/<trials>``) to splits, in contiguous groups in time order.

    Windows must lie inside one trial. A trial that starts less than ``gap`` seconds after
    the previous group's last trial ends is dropped, so groups stay ``gap`` apart.
    """

    def __init__(self, fractions: Mapping[str, float] = DEFAULT_FRACTIONS, gap: float = 1.0,
                 trials: str = "trials"):
        self.fractions, self.gap, self.trials = dict(fractions), float(gap), trials

    @property
    def names(self) -> list[str]:
        return list(self.fractions)

    def __call__(self, session: "Session") -> dict[str, Intervals]:
        if self.trials not in session.interval_names:
            raise KeyError(f"{session.path}: /intervals/{self.trials}: missing; TrialSplit needs the trials "
                           f"as intervals (available: {session.interval_names})")
        iv = session.intervals(self.trials)
        order = np.argsort(iv["start"], kind="stable")
        s, e = iv["start"][order], iv["end"][order]
        f = np.asarray(list(self.fractions.values()), dtype=np.float64)
        cuts = np.rint(np.concatenate([[0.0], np.cumsum(f / f.sum())]) * len(s)).astype(int)
        out, last_end = {}, -np.inf
        for i, name in enumerate(self.fractions):
            ss, ee = s[cuts[i]:cuts[i + 1]], e[cuts[i]:cuts[i + 1]]
            keep = ss >= last_end + self.gap - _TOL if i else np.ones(len(ss), bool)
            out[name] = Intervals(ss[keep], ee[keep])
            if len(ee):
                last_end = float(ee.max())
        return out


# --------------------------------------------------------------------------------------------
# windows inside blocks
# --------------------------------------------------------------------------------------------


def grid_runs(blocks: Intervals, origin: float, stride: float, before: float, after: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Windows on the grid ``anchor_k = origin + k * stride`` that lie wholly inside a block.

    A window anchored at ``t`` reads ``[t - before, t + after]``. Returns ``(k_first (R,),
    count (R,))`` per block (blocks with no window left out): a run of ``count`` windows
    starting at grid index ``k_first``. Windows are on one grid per session whatever the
    split, so the same window means the same data in every split definition.
    """
    if stride <= 0:
        raise ValueError(f"window stride must be positive, got {stride}")
    k_lo = np.ceil((blocks.start + before - origin) / stride - 1e-6).astype(np.int64)
    k_hi = np.floor((blocks.end - after - origin) / stride + 1e-6).astype(np.int64)
    count = np.maximum(k_hi - k_lo + 1, 0)
    keep = count > 0
    return k_lo[keep], count[keep]


# --------------------------------------------------------------------------------------------
# few-shot labelling: the one definition every decoder arm uses
# --------------------------------------------------------------------------------------------


def labelled_windows(session, end, fraction: float, chunk_s: float, seed: int) -> np.ndarray:
    """Which training windows (or bins) keep their behaviour labels in few-shot decoding:
    ``(n,)`` bool for windows given by ``session`` (index, ``(n,)``) and ``end`` (end time in s,
    ``(n,)``).

    The recording is cut into chunks of ``chunk_s`` seconds and a window is labelled when the
    chunk its end falls in is. Whole chunks, not single windows, because behaviour is
    autocorrelated over seconds: labelled windows interleaved with unlabelled neighbours that
    share most of their spikes would make "10% of labels" nearly as good as all of them.

    The chunks are a stratified draw in time: the chunk axis is cut into strata of
    ``1 / fraction`` chunks and each stratum labels one of its chunks, drawn uniformly, so any
    stretch of ``N`` chunks holds ``fraction * N`` labelled ones, to within two (``fraction >
    1/2`` draws the unlabelled chunks the same way). Labels thus spread over the
    whole training block, its run and rest periods alike, at the share asked for; an
    independent draw per chunk (the draw before this one) labelled 1.4% to 19% of the windows
    that mattered when 10% was asked for, and could put every label in one part of a session.
    The draw depends only on (seed, session, chunk), so the model, the data split, ridge, the
    linear probe and Bayes label exactly the same windows, whatever order or subset they see.
    ``fraction >= 1`` labels everything.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled_windows: fraction must be in (0, 1], got {fraction}")
    if not chunk_s > 0:
        raise ValueError(f"labelled_windows: chunk_s must be > 0 s, got {chunk_s}")
    end = np.asarray(end, dtype=np.float64)
    if fraction >= 1:
        return np.ones(end.shape, dtype=bool)
    chunk = np.floor(end / chunk_s).astype(np.int64)
    session = np.broadcast_to(np.asarray(session, dtype=np.int64), chunk.shape)
    if fraction > 0.5:
        return ~_stratified_chunks(session, chunk, 1.0 - fraction, seed)
    return _stratified_chunks(session, chunk, fraction, seed)


def _stratified_chunks(session: np.ndarray, chunk: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each (session, chunk) is its stratum's drawn chunk: stratum ``j`` holds the chunks
    ``c`` with ``floor(c * fraction) == j`` (``1 / fraction`` of them, rounded down or up) and
    draws one of them uniformly."""
    j = np.floor(chunk * fraction + 1e-9).astype(np.int64)  # the guards: float fractions like 1 - 0.8
    first = np.ceil(j / fraction - 1e-9).astype(np.int64)
    size = np.ceil((j + 1) / fraction - 1e-9).astype(np.int64) - first
    # a fixed pseudo-random number in [0, 1) per (seed, session, stratum): splitmix64 chained
    # over the three, so every seed and session draws unrelated chunks
    h = _splitmix64(np.full(j.shape, int(seed), dtype=np.int64).view(np.uint64))
    h = _splitmix64(h ^ session.view(np.uint64))
    h = _splitmix64(h ^ j.view(np.uint64))
    u = (h >> np.uint64(11)).astype(np.float64) / float(2 ** 53)
    return chunk == first + np.floor(u * size).astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a well-mixed hash."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class LabelDraw:
    """The few-shot label draw of a run: :func:`labelled_windows` with this ``fraction``,
    ``chunk_s`` and ``seed`` (what :class:`FewShotSplit` cuts the training blocks to; for
    batches of tensors :class:`~neurofm.tasks.neuroformer.LabelSubset`)."""

    def __init__(self, fraction: float, chunk_s: float, seed: int):
        self.fraction, self.chunk_s, self.seed = float(fraction), float(chunk_s), int(seed)

    def __call__(self, session, end) -> np.ndarray:
        """``(n,)`` bool: which windows (session index, end time in s) are labelled."""
        return labelled_windows(session, end, self.fraction, self.chunk_s, self.seed)


class FewShotSplit:
    """Few-shot fine-tuning: the ``train`` split keeps only labelled windows (or segments).

    :func:`labelled_windows` labels a window when its end time falls in a drawn chunk
    (``subset``: a :class:`LabelDraw`). With behaviour (or a BaRISTA head's
    classification / regression loss) as the only objective every other training window carries no
    loss, yet costs a forward and backward pass and an optimizer step on zero gradients (in
    which AdamW still moves the weights, by momentum and decay). So ``train`` is the training
    blocks cut to the labelled chunks (the windows ending in chunk ``c`` read
    ``[c * chunk_s - before, (c + 1) * chunk_s + after)``), and the extra ``train_all`` keeps the
    whole training block for the baselines (ridge with every label) and the unigram null.
    ``paths``: the data module's session files, in order (the draw is per session index).
    ``before``: how far a window reaches back from its end (spikes: current + previous window;
    a BaRISTA segment: its length, so a segment is kept exactly when its end falls in a drawn
    chunk).
    """

    def __init__(self, base, subset, paths: list[str], *, before: float, after: float = 0.0):
        self.base, self.subset, self.before, self.after = base, subset, float(before), float(after)
        self.index = {str(pathlib.Path(p).resolve()): i for i, p in enumerate(paths)}

    @property
    def names(self) -> list[str]:
        return list(self.base.names)

    def __call__(self, session) -> dict:
        blocks = dict(self.base(session))
        train = blocks["train"]
        chunk_s = self.subset.chunk_s
        chunks = np.arange(math.floor(session.t_start / chunk_s), math.floor(session.t_end / chunk_s) + 1)
        s_idx = self.index[str(pathlib.Path(session.path).resolve())]
        keep = labelled_windows(np.full(len(chunks), s_idx), (chunks + 0.5) * chunk_s, self.subset.fraction, chunk_s,
                                self.subset.seed)
        c = chunks[keep]
        if len(c):  # one block per run of consecutive labelled chunks
            first = np.concatenate([[True], np.diff(c) != 1])
            last = np.concatenate([np.diff(c) != 1, [True]])
            lab_start, lab_end = c[first] * chunk_s - self.before, (c[last] + 1) * chunk_s - 1e-6 + self.after
        else:
            lab_start = lab_end = np.zeros(0)
        start = np.maximum(train.start[:, None], lab_start[None, :]).ravel()
        end = np.minimum(train.end[:, None], lab_end[None, :]).ravel()
        ok = end > start
        blocks["train_all"], blocks["train"] = train, Intervals(start[ok], end[ok])
        return blocks
