"""Neuroformer spike tokens: unit (ID) vocabulary, dt vocabulary and the window tokenizer.

A Neuroformer sample is one *current* window (e.g. 50 ms) of spikes, read as a sequence of
``(ID, dt)`` tokens, plus the *previous* window just before it (DESIGN.md 3)::

    previous window                 current window
    [end - curr - prev, end - curr) [end - curr, end)       end = the window's "interval"

Each spike becomes one token: its unit's ID and its time offset from the start of ITS OWN
window, quantised to ``dt`` (``round((t - window_start) / dt)``). Inside a window spikes are
ordered by dt bin, then by ascending unit index. The sequence is
``[SOS, spikes..., EOS, PAD...]`` of length ``block_size + 1``; the model input is that
sequence minus its last token and the next-token target is the sequence minus its first.

Two behaviours of the reference implementation are deliberately NOT copied (see
``../shared/golden/README.md``):

* bug 1 -- on overflow the reference puts the dt of the last dropped spike in the SOS slot;
  here the SOS slot always has dt index 0;
* bug 2 -- a window that starts before t = 0 is clipped and its dt measured from t = 0; here
  every window's dt is measured from its NOMINAL start, wherever that is.

Everything is vectorised over many windows at once (binary search for the window bounds,
one sort for the within-bin unit order, one scatter into the padded arrays); there is no
per-spike and no per-window Python loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from neurofm.tokens import BOUNDARY_EPS_S as _BOUNDARY_EPS_S
from neurofm.tokens import EOS, N_SPECIAL, PAD, SOS, window_sequences

if TYPE_CHECKING:  # pragma: no cover
    from neurofm.data.session import Session


class UnknownUnitError(KeyError):
    """A spike's unit is not in the unit vocabulary."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


# --------------------------------------------------------------------------------------------
# unit (ID) vocabulary
# --------------------------------------------------------------------------------------------


class UnitVocab:
    """Global unit list shared by every session a model sees: ID token = ``3 + k``.

    Units are named ``"<session_id>/<unit_id>"``; specials come FIRST (``PAD = 0, SOS = 1,
    EOS = 2``) so that adding a new lab's units is an append: the tokens (and the embedding
    rows) of the units a checkpoint already knows never move. Store :meth:`to_dict` with the
    model; rebuild with :meth:`from_dict`.

    Per-session lookup tables (local ``/units`` index -> token) are built once with
    :meth:`bind` and used by :meth:`encode`; they are a cache, not part of the saved state.
    """

    PAD, SOS, EOS = PAD, SOS, EOS
    N_SPECIAL = N_SPECIAL
    SPECIALS = ("PAD", "SOS", "EOS")

    def __init__(self, units: Iterable[str] = ()):
        self._units: list[str] = []
        self._index: dict[str, int] = {}
        self._tables: dict[str, np.ndarray] = {}
        self.extend(units)

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def key(session_id: str, unit_id: str) -> str:
        """Global name of a unit."""
        return f"{session_id}/{unit_id}"

    @classmethod
    def from_sessions(cls, sessions: Iterable["Session"]) -> "UnitVocab":
        """A vocabulary of every unit of ``sessions`` (in session order, then unit order), bound to them."""
        vocab = cls()
        for s in sessions:
            ids = s.unit_ids
            vocab.extend(cls.key(s.session_id, u) for u in ids)
            vocab.bind(s.session_id, ids)  # ready for encode()
        return vocab

    def extend(self, new_units: Iterable[str]) -> list[int]:
        """Append units not yet known; returns the tokens of the ones added (maybe none).

        Existing units keep their tokens, so an embedding table grown by ``len(added)`` rows
        at the end keeps every trained row (DESIGN.md 7).
        """
        added = []
        for name in new_units:
            name = str(name)
            if name in self._index:
                continue
            self._index[name] = len(self._units)
            self._units.append(name)
            added.append(self.N_SPECIAL + len(self._units) - 1)
        return added

    def extend_from_sessions(self, sessions: Iterable["Session"]) -> list[int]:
        """Append the units of ``sessions`` that are new (a new lab's recordings); binds them."""
        added = []
        for s in sessions:
            ids = s.unit_ids
            added += self.extend(self.key(s.session_id, u) for u in ids)
            self.bind(s.session_id, ids)
        return added

    # -- lookup -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Vocabulary size (specials included): the number of embedding rows a model needs."""
        return self.N_SPECIAL + len(self._units)

    @property
    def units(self) -> list[str]:
        return list(self._units)

    @property
    def n_units(self) -> int:
        return len(self._units)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def token(self, name: str) -> int:
        """Token of the unit called ``name`` (``"<session_id>/<unit_id>"``)."""
        try:
            return self.N_SPECIAL + self._index[name]
        except KeyError:
            raise self._unknown([name]) from None

    def _unknown(self, names: Sequence[str]) -> UnknownUnitError:
        shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        what = f"unit {shown} is" if len(names) == 1 else f"units {shown} are"
        return UnknownUnitError(
            f"{what} not in the unit vocabulary ({self.n_units} units): a recording the "
            f"vocabulary was not built from. Extend the vocabulary with "
            f"vocab.extend_from_sessions([session]) (or vocab.extend([...names])) and grow the "
            f"model's ID embedding by the added rows (DESIGN.md 7, vocabulary extension)")

    def bind(self, session_id: str, unit_ids: Sequence[str]) -> np.ndarray:
        """Build (and cache) the table local ``/units`` index -> token for one session.

        Raises :class:`UnknownUnitError` naming the first units the vocabulary lacks.
        """
        names = [self.key(session_id, u) for u in unit_ids]
        missing = [n for n in names if n not in self._index]
        if missing:
            raise self._unknown(missing)
        table = np.fromiter((self._index[n] for n in names), dtype=np.int64, count=len(names))
        table += self.N_SPECIAL
        self._tables[str(session_id)] = table
        return table

    def encode(self, session_id: str, unit_index) -> np.ndarray:
        """ID tokens (int64) of spikes of session ``session_id``.

        ``unit_index``: indices into that session's ``/units`` (ints; the session must have
        been :meth:`bind`-ed, which every dataset does), or unit id strings.
        """
        unit_index = np.asarray(unit_index)
        if unit_index.dtype.kind in "OUS":
            return np.asarray([self.token(self.key(session_id, u)) for u in unit_index.ravel()],
                              dtype=np.int64).reshape(unit_index.shape)
        table = self._tables.get(str(session_id))
        if table is None:
            raise KeyError(f"session {session_id!r} is not bound to the unit vocabulary: call "
                           f"vocab.bind(session.session_id, session.unit_ids) first")
        if unit_index.size and (unit_index.min() < 0 or unit_index.max() >= len(table)):
            raise IndexError(f"session {session_id!r}: unit_index out of range [0, {len(table)})")
        return table[unit_index]

    def decode(self, tokens) -> list[str]:
        """Names of tokens (specials as ``"PAD"``, ``"SOS"``, ``"EOS"``)."""
        out = []
        for t in np.asarray(tokens).ravel().tolist():
            out.append(self.SPECIALS[t] if t < self.N_SPECIAL else self._units[t - self.N_SPECIAL])
        return out

    # -- state ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"specials": list(self.SPECIALS), "units": list(self._units)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "UnitVocab":
        specials = list(d.get("specials", cls.SPECIALS))
        if specials != list(cls.SPECIALS):
            raise ValueError(f"unit vocabulary has specials {specials}, expected {list(cls.SPECIALS)} "
                             f"(PAD=0, SOS=1, EOS=2): it was not written by neurofm")
        return cls(d["units"])

    def __eq__(self, other) -> bool:
        return isinstance(other, UnitVocab) and other._units == self._units

    def __repr__(self) -> str:
        return f"UnitVocab({self.n_units} units + PAD/SOS/EOS)"


# --------------------------------------------------------------------------------------------
# dt vocabulary
# --------------------------------------------------------------------------------------------


def _steps(window: float, dt: float, what: str) -> int:
    """``window / dt`` as an int, or a clear error when it is not a whole number of steps."""
    k = window / dt
    if not np.isfinite(k) or k < 1 or abs(k - round(k)) > 1e-6 * max(1.0, k):
        raise ValueError(f"{what} = {window} s is not a whole number of dt = {dt} s steps "
                         f"({k:.6g}); choose a window that is a multiple of dt")
    return int(round(k))


class DtVocab:
    """Time-offset tokens shared by the current and previous window.

    Offset ``k * dt`` -> index ``k`` for ``k = 0..K``, ``K = round(max(curr, prev) / dt)``;
    then ``SOS = K + 1``, ``EOS = K + 2``, ``PAD = K + 3`` (the reference's layout, kept). Built
    with integer arithmetic, so the list is exact. The SOS slot of a sequence uses index 0,
    like the reference; the ``SOS`` index exists but is never emitted.
    """

    def __init__(self, window_curr: float, window_prev: float, dt: float):
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}")
        self.window_curr, self.window_prev, self.dt = float(window_curr), float(window_prev), float(dt)
        self.K_curr = _steps(self.window_curr, self.dt, "window_curr")
        self.K_prev = _steps(self.window_prev, self.dt, "window_prev")
        self.K = max(self.K_curr, self.K_prev)

    @property
    def SOS(self) -> int:
        return self.K + 1

    @property
    def EOS(self) -> int:
        return self.K + 2

    @property
    def PAD(self) -> int:
        return self.K + 3

    def __len__(self) -> int:
        return self.K + 4

    def offsets(self) -> np.ndarray:
        """Offset in seconds of each non-special index ``0..K``."""
        return np.arange(self.K + 1) * self.dt

    def index(self, offset_s) -> np.ndarray:
        """dt index of time offsets (s) from a window's start, clipped to ``0..K``."""
        return np.clip(np.rint(np.asarray(offset_s) / self.dt), 0, self.K).astype(np.int64)

    def to_dict(self) -> dict:
        return {"window_curr": self.window_curr, "window_prev": self.window_prev, "dt": self.dt}

    @classmethod
    def from_dict(cls, d: Mapping) -> "DtVocab":
        return cls(d["window_curr"], d["window_prev"], d["dt"])

    def __repr__(self) -> str:
        return f"DtVocab(K={self.K}, dt={self.dt}, SOS={self.SOS}, EOS={self.EOS}, PAD={self.PAD})"


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


class SpikeTokenizer:
    """Turn a sorted spike train and many window end times into padded token arrays.

    Parameters (names from the reference config): ``window_curr`` / ``window_prev`` (s),
    ``dt`` (s, the dt-token resolution), ``block_size`` / ``block_size_prev`` (sequence length
    ``L`` / ``Lp`` of the model inputs; a window holds at most ``L - 2`` spikes, the rest are
    dropped from its START), and the :class:`UnitVocab` whose specials fill the sequences.
    """

    def __init__(self, window_curr: float, window_prev: float, dt: float, block_size: int,
                 block_size_prev: int, vocab: UnitVocab | None = None):
        if block_size < 2 or block_size_prev < 2:
            raise ValueError(f"block sizes must be >= 2 (room for SOS and EOS), got "
                             f"block_size={block_size}, block_size_prev={block_size_prev}")
        self.window_curr, self.window_prev, self.dt = float(window_curr), float(window_prev), float(dt)
        self.block_size, self.block_size_prev = int(block_size), int(block_size_prev)
        self.dt_vocab = DtVocab(window_curr, window_prev, dt)
        self.vocab = vocab if vocab is not None else UnitVocab()

    # -- config -------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"window_curr": self.window_curr, "window_prev": self.window_prev, "dt": self.dt,
                "block_size": self.block_size, "block_size_prev": self.block_size_prev}

    def to_dict(self) -> dict:
        return {**self.config(), "vocab": self.vocab.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SpikeTokenizer":
        vocab = UnitVocab.from_dict(d["vocab"]) if "vocab" in d else None
        return cls(d["window_curr"], d["window_prev"], d["dt"], d["block_size"], d["block_size_prev"], vocab)

    @property
    def span_before(self) -> float:
        """Seconds of data a window reads before its end time (current + previous window)."""
        return self.window_curr + self.window_prev

    def __repr__(self) -> str:
        c = self.config()
        return "SpikeTokenizer(" + ", ".join(f"{k}={v}" for k, v in c.items()) + f", {self.vocab!r})"

    # -- core ---------------------------------------------------------------------------------
    def _sequences(self, times: np.ndarray, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                   block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full sequences ``(W, block + 1)`` of IDs and dt indices for windows ``[starts, ends)``,
        and ``n_dropped (W,)`` (:func:`neurofm.tokens.window_sequences`)."""
        return window_sequences(times, tokens, starts, ends, block, self.dt, self.dt_vocab.K)

    def tokenize(self, times, tokens, intervals) -> dict[str, np.ndarray]:
        """Tokenize the windows ending at ``intervals`` (s) of one spike train.

        ``times`` (N,) float64 s, sorted; ``tokens`` (N,) int ID tokens (from
        :meth:`UnitVocab.encode`); ``intervals`` (W,) window END times. Returns numpy arrays::

            id, dt, target_id, target_dt, mask      (W, L)  int64 / bool   L  = block_size
            id_prev, dt_prev, mask_prev             (W, Lp) int64 / bool   Lp = block_size_prev
            n_dropped, n_dropped_prev               (W,)    int64
            interval                                (W,)    float64

        The previous window's dt is measured from its own nominal start
        ``interval - curr - prev``, also when that is before the recording starts.
        """
        times = np.asarray(times, dtype=np.float64)
        tokens = np.asarray(tokens, dtype=np.int64)
        ends = np.atleast_1d(np.asarray(intervals, dtype=np.float64))
        if times.shape != tokens.shape or times.ndim != 1:
            raise ValueError(f"times {times.shape} and tokens {tokens.shape} must be 1-D of the same length")
        if times.size > 1 and times[-1] < times[0]:
            raise ValueError("spike times must be sorted (ascending)")
        if tokens.size and tokens.min() < UnitVocab.N_SPECIAL:
            raise ValueError("tokens must be unit tokens (>= 3), from UnitVocab.encode, not raw unit indices")
        curr_start = ends - self.window_curr
        full, full_dt, n_dropped = self._sequences(times, tokens, curr_start, ends, self.block_size)
        prev, prev_dt, n_dropped_prev = self._sequences(times, tokens, curr_start - self.window_prev,
                                                        curr_start, self.block_size_prev)
        L, Lp = self.block_size, self.block_size_prev
        return {
            "id": full[:, :L], "dt": full_dt[:, :L],
            "target_id": full[:, 1:], "target_dt": full_dt[:, 1:],
            "mask": full[:, :L] != UnitVocab.PAD,
            "id_prev": prev[:, :Lp], "dt_prev": prev_dt[:, :Lp],
            "mask_prev": prev[:, :Lp] != UnitVocab.PAD,
            "n_dropped": n_dropped, "n_dropped_prev": n_dropped_prev,
            "interval": ends,
        }

    def tokenize_session(self, session: "Session", intervals) -> dict[str, np.ndarray]:
        """Read the spikes the windows need from a session file (one read) and tokenize them.

        The session's units must be in :attr:`vocab` (it is bound on first use).
        """
        ends = np.atleast_1d(np.asarray(intervals, dtype=np.float64))
        times, unit_index = session.spikes(float(ends.min()) - self.span_before - _BOUNDARY_EPS_S,
                                           float(ends.max()))
        if session.session_id not in self.vocab._tables:
            self.vocab.bind(session.session_id, session.unit_ids)
        return self.tokenize(times, self.vocab.encode(session.session_id, unit_index), ends)


# --------------------------------------------------------------------------------------------
# within-bin order (a training-time option)
# --------------------------------------------------------------------------------------------


def shuffle_within_bins(ids: np.ndarray, dts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ids`` with the spike tokens of each dt bin of each row in a random order.

    ``ids`` / ``dts`` (W, S): token sequences as :meth:`SpikeTokenizer.tokenize` builds them
    (``[SOS] spikes [EOS] PAD...`` or a previous window's ``spikes [EOS]...``): the spike tokens
    (ID >= ``N_SPECIAL``) of a row are contiguous and sorted by dt bin, then by unit. Only the IDs
    move, and only among the spikes of one bin, which all carry the same dt: the dt array, every
    special token and the padding stay where they are, so the (ID, dt) pairs and the multiset of
    IDs per bin are unchanged. The canonical ascending-unit order inside a bin is a convention of
    the tokenizer, not of the data; a next-ID loss on canonical sequences is lowered by learning
    that convention ("after unit 40 in this bin, only units > 40"). Training on a fresh order per
    draw takes that shortcut away. Returns a new array; ``ids`` is not modified.
    """
    ids, dts = np.asarray(ids), np.asarray(dts)
    if ids.shape != dts.shape or ids.ndim != 2:
        raise ValueError(f"ids {ids.shape} and dts {dts.shape} must be 2-D arrays of the same shape")
    spike = ids >= N_SPECIAL
    pos = np.broadcast_to(np.arange(ids.shape[1], dtype=np.float64), ids.shape)
    prev_spike = np.zeros_like(spike)
    prev_spike[:, 1:] = spike[:, :-1]
    same_bin = np.zeros_like(spike)
    same_bin[:, 1:] = dts[:, 1:] == dts[:, :-1]
    new_run = spike & ~(prev_spike & same_bin)
    run_start = np.maximum.accumulate(np.where(new_run, pos, 0.0), axis=1)
    # spikes of the run starting at position a get keys in [a, a + 1): the next run starts at
    # >= a + 1 and every other token keeps its own position as key, so only runs are shuffled
    key = np.where(spike, run_start + rng.random(ids.shape), pos)
    return np.take_along_axis(ids, np.argsort(key, axis=1, kind="stable"), axis=1)


# --------------------------------------------------------------------------------------------
# spikes per window: the statistics block sizes are chosen from
# --------------------------------------------------------------------------------------------

#: The largest share of spikes a data-chosen block size may drop (see :func:`block_size_for`).
MAX_DROPPED_FRACTION = 0.005


def log_orderings(ids: np.ndarray, dts: np.ndarray) -> np.ndarray:
    """``(W,)`` natural log of the number of distinct orders of each row's spikes within their dt
    bins: ``log N = sum_b [log n_b! - sum_u log m_bu!]`` (``n_b`` spikes in bin ``b``, ``m_bu`` of
    them from unit ``u``), for token rows as :func:`shuffle_within_bins` takes them. A next-ID model
    that knows the tokenizer's within-bin order can gain at most ``log2 N`` bits per row from that
    knowledge alone; :func:`neurofm.recipes.neuroformer.order_free_bits` takes it out."""
    from scipy.special import gammaln

    ids, dts = np.asarray(ids), np.asarray(dts)
    out = np.zeros(len(ids))
    for w, (i, d) in enumerate(zip(ids, dts)):
        spike = i >= N_SPECIAL
        if not spike.any():
            continue
        _, n_b = np.unique(d[spike], return_counts=True)
        _, m_bu = np.unique(np.stack([d[spike], i[spike]]), axis=1, return_counts=True)
        out[w] = gammaln(n_b + 1).sum() - gammaln(m_bu + 1).sum()
    return out


def spikes_per_window(times, starts, ends) -> np.ndarray:
    """(W,) int64: spikes of the sorted ``times`` in each window ``[starts, ends)`` (s).

    Two binary searches, the tokenizer's own boundary rule: the count is exactly the number of
    spikes :class:`SpikeTokenizer` would put in the window before any overflow.
    """
    times = np.asarray(times, dtype=np.float64)
    starts, ends = np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64)
    i0 = np.searchsorted(times, starts - _BOUNDARY_EPS_S, side="left")
    i1 = np.searchsorted(times, ends - _BOUNDARY_EPS_S, side="left")
    return (i1 - i0).astype(np.int64)


def dropped_fraction(counts, block_size: int) -> float:
    """Share of the spikes in windows holding ``counts`` spikes that a sequence of
    ``block_size`` tokens drops (it holds ``block_size - 2`` spikes, SOS and EOS included).
    0.0 when there are no spikes."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    return float(np.maximum(counts - (int(block_size) - 2), 0).sum() / total)


def block_size_for(counts, max_dropped: float = MAX_DROPPED_FRACTION) -> int:
    """The smallest block size that drops at most ``max_dropped`` of the spikes in windows
    holding ``counts`` spikes (the training windows' spikes-per-window distribution).

    The rule: with capacity ``c = block_size - 2`` spikes, a window of ``n`` spikes loses
    ``max(n - c, 0)``; the overflow summed over windows falls as ``c`` grows, and the smallest
    ``c`` whose overflow is ``<= max_dropped`` of all spikes is chosen (0.5% by default: the
    sequence is as short as the data allows, attention cost grows with its square, and the
    rare dense windows lose their earliest few spikes). At least 4 (room for two spikes), so
    a silent training block still gives a usable model. One pass over a histogram of the
    counts: cheap for millions of windows.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return 4
    hist = np.bincount(counts)  # hist[n]: windows with n spikes
    n = np.arange(len(hist))
    # overflow(c) = sum_{n > c} (n - c) hist[n], for c = 0..max: suffix sums
    windows_above = np.concatenate([np.cumsum(hist[::-1])[::-1][1:], [0]])  # windows with n > c
    spikes_above = np.concatenate([np.cumsum((n * hist)[::-1])[::-1][1:], [0]])  # their spikes
    overflow = spikes_above - n * windows_above
    c = int(np.argmax(overflow <= max_dropped * total))  # overflow is non-increasing: the first c
    return max(c + 2, 4)


def window_count_percentiles(counts, q=(50, 90, 99, 99.9, 100)) -> dict[str, float]:
    """Spikes-per-window percentiles as ``{"p50": ..., "max": ...}`` (JSON-ready), plus the mean."""
    counts = np.asarray(counts, dtype=np.float64)
    if not len(counts):
        return {}
    out = {("max" if p == 100 else f"p{p:g}"): float(np.percentile(counts, p)) for p in q}
    out["mean"] = float(counts.mean())
    return out
