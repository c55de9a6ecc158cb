"""Datasets over session files: Neuroformer spike windows and BaRISTA iEEG segments.

Two access patterns, one reading code path each:

* map-style (:class:`SpikeWindowDataset`, :class:`IEEGSegmentDataset`): ``dataset[i]`` reads
  window ``i`` lazily from its session file (``Session.spikes(t0, t1)`` /
  ``Session.continuous_samples``). Use them with :class:`~neurofm.data.samplers.BlockShuffleSampler`
  and :func:`collate_spikes` / :func:`collate_ieeg`. Good for validation, small data and
  random access.
* streaming (:class:`StreamingSpikeDataset`, :class:`StreamingIEEGDataset`): walk many
  sessions block by block (one file read per block of consecutive windows), shard by
  distributed rank AND dataloader worker so each window is read exactly once per epoch
  across all of them, shuffle blocks by ``(seed, epoch)`` and windows through a bounded
  buffer, and yield collated batches. Memory is one block plus the buffer, whatever the
  number or length of the sessions. Use with ``DataLoader(ds, batch_size=None)`` or
  :class:`EpochDataLoader`.

The training loaders, :class:`ResumableDataLoader` (map-style, over a
:class:`~neurofm.data.samplers.BlockShuffleSampler`) and :class:`EpochDataLoader`
(streaming), keep their position inside the epoch in Lightning checkpoints, so a run resumed
from a mid-epoch checkpoint skips the batches it already trained on without reading them and
then sees exactly the batches the uninterrupted run would have seen.

Windows come from :mod:`neurofm.data.splits`: a window is in a split only if everything it
reads lies inside one of that split's time blocks.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from neurofm.atlas import SpatialVocab
from neurofm.data.samplers import (WindowIndex, distributed_info, rank_share, shard_bounds, shuffle_buffer_plan,
                                   stream_pieces, worker_info)
from neurofm.data.segmenter import IEEGSegmenter
from neurofm.data.session import BAD_SEGMENTS, DISCONTINUITIES, Session
from neurofm.data.splits import Intervals, TimeBlockSplit, grid_runs
from neurofm.data.tokenizer import _BOUNDARY_EPS_S, SpikeTokenizer, shuffle_within_bins
from neurofm.tokens import pack_spikes, unpack_spikes

__all__ = ["BACKGROUND_LABEL", "EpochDataLoader", "IEEGSegmentDataset", "ResumableDataLoader",
           "SpikeWindowDataset", "StreamingIEEGDataset", "StreamingSpikeDataset", "behavior_features",
           "collate_ieeg", "collate_packed_spikes", "collate_spikes", "open_sessions", "WithinBinShuffle",
           "pack_spikes", "split_blocks", "unpack_spikes"]  # pack/unpack_spikes: the packed-batch API, from neurofm.tokens


def open_sessions(sessions) -> list[Session]:
    """Session objects for paths (or Sessions, kept as they are)."""
    if isinstance(sessions, (str, os.PathLike, Session)):
        sessions = [sessions]
    out = [s if isinstance(s, Session) else Session(s) for s in sessions]
    if not out:
        raise ValueError("no session files given")
    return out


def _warn_if_empty(session: Session, split: str | None, n: int, what: str) -> None:
    if n == 0:
        warnings.warn(f"{session.path}: no {what} fits wholly inside split {split!r} "
                      f"(recording {session.t_start:.3f}..{session.t_end:.3f} s); this session adds nothing "
                      f"to the split", stacklevel=3)


def split_blocks(session: Session, split: str | None, splits) -> Intervals:
    """The time blocks of ``split`` in ``session`` (the whole recording for ``split=None``), cut
    at the recording's discontinuities (``/intervals/discontinuities``: where a BrainVision
    recording resumed after a pause), so that no window or segment spans one, and without the
    spans annotated ``BAD*`` (``/intervals/bad_segments``), so that none overlaps one. ``splits``: a
    splitter (``splits(session) -> {name: Intervals}``; None = :class:`TimeBlockSplit`)."""
    if split is None:
        blocks = Intervals([session.t_start], [session.t_end])
    else:
        by_split = (splits or TimeBlockSplit())(session)
        if split not in by_split:
            raise KeyError(f"{session.path}: no split {split!r}; the splitter gives {list(by_split)}")
        blocks = by_split[split]
    if DISCONTINUITIES in session.interval_names:
        blocks = blocks.cut(session.intervals(DISCONTINUITIES)["start"])
    if BAD_SEGMENTS in session.interval_names:  # BAD* annotations: nothing overlapping one is read
        bad = session.intervals(BAD_SEGMENTS)
        blocks = blocks.minus(bad["start"], bad["end"])
    return blocks


# --------------------------------------------------------------------------------------------
# behaviour and stimulus per window
# --------------------------------------------------------------------------------------------


def sample_weights(ts: np.ndarray, max_gap: float) -> np.ndarray:
    """``(T,)`` the time each sample at sorted times ``ts`` stands for: half the interval to each
    neighbour. An interval over ``max_gap`` s is a gap (tracking lost), not the sample's: that side
    takes the other side's half instead (a sample with gaps both sides, the typical interval).
    Regular samples weigh alike, so a window's weighted mean is the plain mean; irregular ones (a
    wheel logged on change, video with dropped frames) would otherwise weigh a densely sampled
    stretch of a window more than a sparse one."""
    ts = np.asarray(ts, dtype=np.float64)
    if len(ts) < 2:
        return np.ones(len(ts))
    step = np.diff(ts) / 2
    step = np.where(step <= max_gap / 2, step, np.nan)
    before, after = np.r_[np.nan, step], np.r_[step, np.nan]
    before, after = np.where(np.isnan(before), after, before), np.where(np.isnan(after), before, after)
    typical = np.nanmedian(step) if np.isfinite(step).any() else 0.5
    return np.nan_to_num(before + after, nan=2 * typical)


def behavior_features(ts: np.ndarray, values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                      seq_len: int = 0, max_gap: float = 0.25) -> dict[str, np.ndarray]:
    """Per-window behaviour target and input samples, vectorised over windows.

    ``ts`` (T,) s sorted, ``values`` (T,) or (T, D) (rows with NaN are ignored);
    ``starts``/``ends`` (W,) window bounds. Returns ``mean`` (W, D) float32 (the time-weighted
    mean of the samples in ``[start, end)``, 0 where none), ``mask`` (W,) bool (there were
    samples), and when
    ``seq_len > 0``: ``seq`` (W, Tb, D) float32 linearly interpolated at ``Tb`` evenly spaced
    times (bin centres) inside each window, ``seq_t`` (W, Tb) those times relative to the
    window start, ``seq_mask`` (W, Tb) True where the two samples around a time are at most
    ``max_gap`` s apart (zeros elsewhere). The mean weighs each sample by the time it stands for
    (:func:`sample_weights`).
    """
    ts = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    # (T,) -> (T, 1); (T, D, ...) -> (T, D'); also for T = 0 (a window inside a tracking gap),
    # where reshape(0, -1) cannot infer D
    v = v[:, None] if v.ndim == 1 else v.reshape(len(ts), int(np.prod(v.shape[1:])))
    D = v.shape[1]
    ok = np.isfinite(v).all(axis=1)
    if not ok.all():
        ts, v = ts[ok], v[ok]
    starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
    lo = np.searchsorted(ts, starts - _BOUNDARY_EPS_S, side="left")  # same window edges as the tokens
    hi = np.searchsorted(ts, ends - _BOUNDARY_EPS_S, side="left")
    cnt = hi - lo
    weight = sample_weights(ts, max_gap)[:, None]
    cs = np.concatenate([np.zeros((1, D)), np.cumsum(weight * v, axis=0)], axis=0)
    cw = np.concatenate([[0.0], np.cumsum(weight[:, 0])])
    mean = (cs[hi] - cs[lo]) / np.where(cnt > 0, cw[hi] - cw[lo], 1.0)[:, None]
    out = {"mean": mean.astype(np.float32), "mask": cnt > 0}
    if seq_len > 0:
        W, n = len(starts), len(ts)
        rel = (np.arange(seq_len) + 0.5)[None, :] * ((ends - starts) / seq_len)[:, None]  # (W, Tb)
        q = starts[:, None] + rel
        r = np.searchsorted(ts, q, side="right")
        left = r - 1
        lc, rc = np.clip(left, 0, max(n - 1, 0)), np.clip(r, 0, max(n - 1, 0))
        if n:
            exact = (left >= 0) & (ts[lc] == q)
            both = (left >= 0) & (r < n) & (ts[rc] - ts[lc] <= max_gap)
            span = np.where(both, ts[rc] - ts[lc], 1.0)
            w = np.where(both, (q - ts[lc]) / span, 0.0)[..., None]
            seq = v[lc] + w * (v[rc] - v[lc])
            valid = exact | both
            seq[~valid] = 0.0
        else:
            seq, valid = np.zeros((W, seq_len, D)), np.zeros((W, seq_len), bool)
        out.update(seq=seq.astype(np.float32), seq_t=rel.astype(np.float32), seq_mask=valid)
    return out


def _frames_float(frames: np.ndarray) -> np.ndarray:
    """Frames as float32; integer frames scaled to [0, 1] by their dtype's maximum."""
    if frames.dtype.kind in "ui":
        return frames.astype(np.float32) / float(np.iinfo(frames.dtype).max)
    return frames.astype(np.float32)


# --------------------------------------------------------------------------------------------
# spike windows
# --------------------------------------------------------------------------------------------


class _SpikeReader:
    """Reads and tokenizes windows of one session at a time (shared by both dataset kinds)."""

    def __init__(self, sessions: list[Session], tokenizer: SpikeTokenizer, behavior: Sequence[str] = (),
                 behavior_seq_len: int = 8, behavior_max_gap: float = 0.25, stimulus: str | None = None,
                 stimulus_frames: int = 3, stimulus_window: float = 0.15):
        self.sessions, self.tokenizer = sessions, tokenizer
        self.behavior = [behavior] if isinstance(behavior, str) else list(behavior or ())
        self.behavior_seq_len, self.behavior_max_gap = int(behavior_seq_len), float(behavior_max_gap)
        self.stimulus, self.stimulus_frames, self.stimulus_window = stimulus, int(stimulus_frames), float(stimulus_window)
        vocab = tokenizer.vocab
        for s in sessions:
            if "spikes" not in s.kinds:
                raise ValueError(f"{s.path}: /spikes: missing; a spike dataset needs spike sessions "
                                 f"(this one holds {s.kinds})")
            vocab.bind(s.session_id, s.unit_ids)  # raises UnknownUnitError naming missing units
            for name in self.behavior:
                if name not in s.behavior_names:
                    raise KeyError(f"{s.path}: /behavior/{name}: missing (available: {s.behavior_names})")
            if stimulus is not None and stimulus not in s.stimulus_names:
                raise KeyError(f"{s.path}: /stimulus/{stimulus}: missing (available: {s.stimulus_names})")
        self._check_shapes()

    def _check_shapes(self) -> None:
        """Every session must give a variable the same width (stimulus: the same frame shape).

        Windows of different sessions share batches (and the streaming shuffle buffer); a
        variable that is ``(T, 2)`` in one file and ``(T,)`` in another would otherwise fail
        mid-epoch inside the collate with a bare numpy error. ``(T,)`` and ``(T, 1)`` are the
        same width (one value per sample).
        """
        def check(group: str, name: str, key: str, width) -> None:
            first = None
            for s in self.sessions:
                shape = tuple(s.h5[f"{group}/{name}/{key}"].shape)
                if first is None:
                    first = (s, shape)
                elif width(shape) != width(first[1]):
                    raise ValueError(
                        f"/{group}/{name}: {first[0].path} has shape {first[1]} but {s.path} has shape {shape}; "
                        f"sessions batched together need the same {'width' if group == 'behavior' else 'frame shape'}"
                        f" per variable. Convert them to one layout (e.g. position as (T, 2) in every file), rename "
                        f"the variable where it means something else, or leave it out of "
                        f"{'behavior=' if group == 'behavior' else 'stimulus='}")

        for name in self.behavior:
            check("behavior", name, "values", lambda shape: int(np.prod(shape[1:], dtype=np.int64)))
        if self.stimulus is not None:
            check("stimulus", self.stimulus, "frames", lambda shape: shape[1:])

    @property
    def before(self) -> float:
        """Seconds a window reads before its end (previous + current window, stimulus too)."""
        tk = self.tokenizer
        b = tk.window_curr + tk.window_prev
        if self.stimulus is not None:
            b = max(b, self.stimulus_window - tk.window_curr)
        return b

    @property
    def after(self) -> float:
        """Seconds after its end a window reads (the stimulus leads the spikes by one window)."""
        return self.tokenizer.window_curr if self.stimulus is not None else 0.0

    def read(self, s: int, ends: np.ndarray) -> dict[str, Any]:
        """Batch-shaped numpy arrays (leading dim W) for windows of session ``s`` ending at ``ends``."""
        session, tk = self.sessions[s], self.tokenizer
        ends = np.asarray(ends, dtype=np.float64)
        out: dict[str, Any] = tk.tokenize_session(session, ends)
        out["session"] = np.full(len(ends), s, dtype=np.int64)
        starts = ends - tk.window_curr
        if self.behavior:
            out.update(behavior={}, behavior_mask={})
            if self.behavior_seq_len:
                out.update(behavior_seq={}, behavior_seq_mask={})
            g = self.behavior_max_gap
            for name in self.behavior:
                ts, vals = session.behavior(name, float(starts.min()) - g, float(ends.max()) + g)
                f = behavior_features(ts, vals, starts, ends, self.behavior_seq_len, g)
                out["behavior"][name], out["behavior_mask"][name] = f["mean"], f["mask"]
                if self.behavior_seq_len:
                    out["behavior_seq"][name], out["behavior_seq_mask"][name] = f["seq"], f["seq_mask"]
                    out["behavior_seq_t"] = f["seq_t"]
        if self.stimulus is not None:
            out["stimulus"] = self._stimulus(session, ends + tk.window_curr)
        return out

    def _stimulus(self, session: Session, stim_end: np.ndarray) -> np.ndarray:
        """The last ``stimulus_frames`` frames in ``[end - stimulus_window, end)`` per window, zero-padded."""
        n, win = self.stimulus_frames, self.stimulus_window
        eps = _BOUNDARY_EPS_S
        ts, frames = session.stimulus(self.stimulus, float(stim_end.min()) - win - eps, float(stim_end.max()))
        W = len(stim_end)
        out = np.zeros((W, n) + tuple(frames.shape[1:]), dtype=np.float32)
        if not len(ts):
            return out
        hi = np.searchsorted(ts, stim_end - eps, side="left")  # (W,)
        lo = np.searchsorted(ts, stim_end - win - eps, side="left")
        idx = hi[:, None] - n + np.arange(n)[None, :]  # (W, n) newest frame last
        valid = idx >= lo[:, None]
        fr = _frames_float(frames)
        out[valid] = fr[idx[valid]]
        return out


def _row(batch: dict[str, Any], i: int) -> dict[str, Any]:
    """Item ``i`` of a batch-shaped dict (nested dicts too)."""
    return {k: (_row(v, i) if isinstance(v, dict) else v[i]) for k, v in batch.items()}


def _spike_index(sessions: list[Session], reader: _SpikeReader, split: str | None, splits, stride: float | None
                 ) -> WindowIndex:
    """The windows of ``split``: the grid windows wholly inside its blocks, and, when the
    splitter has a ``select_windows(session, split, ends) -> (n,) bool`` method, only those it
    keeps by their end times (a window still reads its history from the recording, wherever
    its neighbours were dropped: e.g. fine-tuning only on the windows that carry a loss)."""
    stride = reader.tokenizer.window_curr if stride is None else float(stride)
    select = getattr(splits, "select_windows", None) if split is not None else None
    parts = []
    for s, session in enumerate(sessions):
        blocks = split_blocks(session, split, splits)
        k0, count = grid_runs(blocks, session.t_start, stride, reader.before, reader.after)
        part = WindowIndex.grid(s, session.t_start, stride, k0, count)
        if select is not None and len(part):
            ends = np.concatenate([part.anchors(r) for r in range(part.n_runs)])
            part = part.subset(select(session, split, ends))
        _warn_if_empty(session, split, len(part), "spike window")
        parts.append(part)
    return WindowIndex.concat(parts)


class SpikeWindowDataset(Dataset):
    """Map-style Neuroformer windows over many session files, read lazily.

    Window ``i`` is the current window ending at ``interval`` (on a per-session grid
    ``t_start + k * stride``, default stride = ``window_curr``) with its previous window;
    items are dicts of numpy arrays without a batch dimension (see :func:`collate_spikes`).

    Args:
        sessions: session file paths (or :class:`Session` objects); ``batch["session"]``
            indexes this list.
        tokenizer: the :class:`SpikeTokenizer`; its ``vocab`` must know every unit (build it
            with ``UnitVocab.from_sessions``, or extend it for a new lab).
        split: ``"train"``/``"valid"``/``"test"`` (names of ``splits``), or ``None`` for all.
        splits: a splitter (``TimeBlockSplit()`` by default; ``BlockedKFold``, ``TrialSplit``).
        behavior: behaviour variable names: per-window targets and input sequences.
        behavior_seq_len: samples per window of the behaviour input (0 = no input sequence).
        stimulus: stimulus stream name; ``stimulus_frames`` frames from the
            ``stimulus_window`` s ending at ``interval + window_curr``.
    """

    def __init__(self, sessions, tokenizer: SpikeTokenizer, split: str | None = None, *, splits=None,
                 stride: float | None = None, behavior: Sequence[str] = (), behavior_seq_len: int = 8,
                 behavior_max_gap: float = 0.25, stimulus: str | None = None, stimulus_frames: int = 3,
                 stimulus_window: float = 0.15):
        self.sessions = open_sessions(sessions)
        self.tokenizer, self.split = tokenizer, split
        self.reader = _SpikeReader(self.sessions, tokenizer, behavior, behavior_seq_len, behavior_max_gap,
                                   stimulus, stimulus_frames, stimulus_window)
        self.index = _spike_index(self.sessions, self.reader, split, splits, stride)

    def __len__(self) -> int:
        return len(self.index)

    def window(self, i: int) -> tuple[int, float]:
        """``(session index, interval)`` of window ``i`` without reading it."""
        s, t, _ = self.index.locate(i)
        return s, t

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, t, _ = self.index.locate(int(i))
        return _row(self.reader.read(s, np.array([t])), 0)


class _Streaming(IterableDataset):
    """Shared epoch / shard / shuffle-buffer logic of the streaming datasets.

    A subclass reads one piece (consecutive windows of one session) into a *block* of
    ``j1 - j0`` rows with ``_read_piece``, takes rows of blocks with ``_take(block, rows)``,
    copies taken rows into a new block with ``_merge(parts)`` and joins taken rows into a
    batch with ``_join(parts)``. Which rows go into which batch is
    :func:`~neurofm.data.samplers.shuffle_buffer_plan`, a function of the block sizes and
    ``(seed, epoch, rank, worker)`` alone; that is what lets a resumed worker skip the batches
    it already yielded without reading them.
    """

    index: WindowIndex
    sessions: list[Session]

    def _init_stream(self, batch_size: int, shuffle: bool, seed: int, block_windows: int, shuffle_buffer: int | None,
                     rank: int | None, world_size: int | None, even_ranks: bool, num_workers: int,
                     drop_last: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, int(seed)
        self.block_windows = max(int(block_windows), 1)
        self.shuffle_buffer = 2 * self.block_windows if shuffle_buffer is None else max(int(shuffle_buffer), 0)
        self._rank, self._world = rank, world_size
        self.even_ranks, self.num_workers, self.drop_last = even_ranks, max(int(num_workers), 1), drop_last
        self.epoch = 0
        self._skip: list[int] | None = None
        self._first_worker = 0
        self._report_position = False

    def set_epoch(self, epoch: int, skip: Sequence[int] | None = None, first_worker: int = 0,
                  report_position: bool = False) -> None:
        """Select the next iteration's epoch (call before iterating; :class:`EpochDataLoader` does).

        For a mid-epoch resume: ``skip[w]`` batches that worker ``w`` already made in this
        epoch are planned but neither read nor yielded, and DataLoader worker ``i`` plays
        worker ``(first_worker + i) % num_workers``. The DataLoader takes batches from its
        workers in turn starting with worker 0, so starting the turn at the worker that was
        next when the run stopped keeps the order of batches. ``report_position`` adds
        ``batch["_position"] = (worker, batches this worker has made so far)``, which
        :class:`EpochDataLoader` takes out again to know where each worker stands.
        """
        self.epoch = int(epoch)
        self._skip = None if skip is None else [int(k) for k in skip]
        self._first_worker = int(first_worker)
        self._report_position = bool(report_position)

    def _ranks(self) -> tuple[int, int]:
        r, w = distributed_info()
        return (r if self._rank is None else self._rank), (w if self._world is None else self._world)

    def _worker_batches(self, n: int) -> int:
        b = self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        """Batches this rank yields in an epoch (over ``num_workers`` workers)."""
        rank, world = self._ranks()
        n = rank_share(len(self.index), rank, world, self.even_ranks)
        return sum(self._worker_batches(hi - lo) for lo, hi in
                   (shard_bounds(n, w, self.num_workers) for w in range(self.num_workers)))

    @property
    def n_windows(self) -> int:
        return len(self.index)

    def _read_piece(self, blocks: WindowIndex, r: int, j0: int, j1: int):
        """The ``j1 - j0`` windows of piece ``(r, j0, j1)`` as one block (one row per window)."""
        raise NotImplementedError

    @staticmethod
    def _take(block, rows: np.ndarray):
        raise NotImplementedError

    @staticmethod
    def _join(parts: list) -> dict[str, Any] | None:
        """One batch of taken rows (``None``: nothing to yield, e.g. every row was skipped)."""
        raise NotImplementedError

    @staticmethod
    def _merge(parts: list):
        """One block made of the taken ``parts``, sharing no memory with their source blocks."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # not a generator: the epoch and skip are read now, when the DataLoader (or its
        # worker) starts the iteration, and the one-shot skip is cleared at once
        rank, world = self._ranks()
        worker, n_workers = worker_info()
        worker = (worker + self._first_worker) % n_workers
        skip, self._skip = self._skip, None
        if skip is not None and len(skip) != n_workers:
            raise ValueError(f"resume state holds positions of {len(skip)} dataloader workers but this loader runs "
                             f"{n_workers}; resume with num_workers={len(skip) if len(skip) > 1 else 0}")
        blocks, pieces = stream_pieces(self.index, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                                       rank=rank, world_size=world, worker=worker, n_workers=n_workers,
                                       block=self.block_windows, even_ranks=self.even_ranks)
        rng = None
        if self.shuffle:
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, rank, worker, 0x5EED])
        plan = shuffle_buffer_plan([j1 - j0 for _, j0, j1 in pieces], self.batch_size,
                                   self.shuffle_buffer if self.shuffle else 0, rng, self.drop_last)
        return self._run(plan, blocks, pieces, worker, skip[worker] if skip else 0, self._report_position)

    def _run(self, plan, blocks: WindowIndex, pieces: list, worker: int, n_skip: int, report: bool):
        # held[bid] = (block, lut): plan row i of block bid is row lut[i] of block (lut None: row i)
        held = self._fast_forward(plan, blocks, pieces, n_skip) if n_skip else {}

        def take(b: int, rows: np.ndarray, pop: bool = False):
            block, lut = held.pop(b) if pop else held[b]
            return self._take(block, rows if lut is None else lut[rows])

        made = n_skip  # batches of the plan made so far (yielded or not)
        last_session = None
        for op in plan:
            if op[0] == "read":
                r, j0, j1 = pieces[op[2]]
                s = int(blocks.session[r])
                if last_session is not None and last_session != s:
                    self.sessions[last_session].close()  # one open file per worker at a time
                last_session = s
                held[op[1]] = (self._read_piece(blocks, r, j0, j1), None)
            elif op[0] == "merge":
                held[op[1]] = (self._merge([take(b, rows, pop=True) for b, rows in op[2]]), None)
            elif op[0] == "free":
                for b in op[1]:
                    del held[b]
            else:
                made += 1
                out = self._join([take(b, rows) for b, rows in op[1]])
                if out is not None:
                    if report:
                        out["_position"] = (worker, made)
                    yield out
        if last_session is not None:
            self.sessions[last_session].close()

    def _read_rows(self, blocks: WindowIndex, r: int, j0: int, j1: int, rows: np.ndarray):
        """Rows ``rows`` of piece ``(r, j0, j1)``, exactly as :meth:`_read_piece` makes them.

        This default reads the whole piece (right when a window's values depend on its
        neighbours' samples, e.g. filtering); a subclass may read just those windows.
        """
        return self._take(self._read_piece(blocks, r, j0, j1), rows)

    def _fast_forward(self, plan, blocks: WindowIndex, pieces: list, n_batches: int) -> dict[int, tuple]:
        """Run the plan past its first ``n_batches`` batches tracking only where rows come from
        and which are still in the buffer; then read just those rows and rebuild the buffer.

        Every window the worker has not yet put in a batch is either in the buffer now or in
        a piece still to be read, so a resumed worker reads each of its remaining windows once
        and nothing of the batches it skips.
        """
        source: dict[int, np.ndarray] = {}  # block id -> (rows, 2) [piece, row in piece]
        alive: dict[int, np.ndarray] = {}  # block id -> (rows,) bool, row still in the buffer
        done = 0
        for op in plan:
            if op[0] == "read":
                _, j0, j1 = pieces[op[2]]
                source[op[1]] = np.stack([np.full(j1 - j0, op[2]), np.arange(j1 - j0)], axis=1)
                alive[op[1]] = np.ones(j1 - j0, bool)
            elif op[0] == "merge":
                source[op[1]] = np.concatenate([source.pop(b)[rows] for b, rows in op[2]])
                alive[op[1]] = np.ones(len(source[op[1]]), bool)
                for b, _ in op[2]:
                    del alive[b]
            elif op[0] == "free":
                for b in op[1]:
                    del source[b], alive[b]
            else:
                for b, rows in op[1]:
                    alive[b][rows] = False
                done += 1
                if done == n_batches:
                    break
        wanted = np.concatenate([source[b][alive[b]] for b in source] or [np.zeros((0, 2), np.int64)])
        read: dict[int, tuple[Any, np.ndarray]] = {}  # piece -> (its wanted rows as a block, lut)
        for p in np.unique(wanted[:, 0]).tolist():
            r, j0, j1 = pieces[p]
            rows = np.unique(wanted[wanted[:, 0] == p, 1])
            lut = np.full(j1 - j0, -1, np.int64)
            lut[rows] = np.arange(len(rows))
            read[p] = (self._read_rows(blocks, r, j0, j1, rows), lut)
        for s in {int(blocks.session[pieces[p][0]]) for p in read}:
            self.sessions[s].close()
        held = {}
        for b, src in source.items():
            keep = np.flatnonzero(alive[b])
            lut = np.full(len(src), -1, np.int64)
            lut[keep] = np.arange(len(keep))
            runs = np.split(src[keep], np.flatnonzero(np.diff(src[keep, 0])) + 1) if len(keep) else []
            parts = [self._take(read[int(run[0, 0])][0], read[int(run[0, 0])][1][run[:, 1]]) for run in runs]
            held[b] = (self._merge(parts) if parts else None, lut)
        return held


def _auto_block(n_windows_per_s: float, items_per_s: float, target_items: float, lo: int, hi: int) -> int:
    """Windows per block so that one block reads about ``target_items`` spikes (or samples)."""
    if items_per_s <= 0 or n_windows_per_s <= 0:
        return lo
    return int(np.clip(round(target_items / items_per_s * n_windows_per_s), lo, hi))


def _take_rows(batch: dict, rows: np.ndarray) -> dict:
    return {k: (_take_rows(v, rows) if isinstance(v, dict) else v[rows]) for k, v in batch.items()}


def _merge_arrays(parts: list[dict]) -> dict:
    """Batch-shaped dicts joined along the window axis (new arrays)."""
    return {k: (_merge_arrays([p[k] for p in parts]) if isinstance(v, dict) else np.concatenate([p[k] for p in parts]))
            for k, v in parts[0].items()}


def _to_torch(batch: dict) -> dict[str, Any]:
    return {k: (_to_torch(v) if isinstance(v, dict) else torch.from_numpy(np.ascontiguousarray(v)))
            for k, v in batch.items()}


def _join_arrays(parts: list[dict]) -> dict[str, Any]:
    return _to_torch(parts[0] if len(parts) == 1 else _merge_arrays(parts))


class StreamingSpikeDataset(_Streaming):
    """Iterable Neuroformer windows streamed block by block; yields collated batches.

    Same windows and arguments as :class:`SpikeWindowDataset`, plus: ``batch_size``;
    ``shuffle`` and ``seed`` (the order is a function of ``(seed, epoch)``; call
    :meth:`set_epoch`); ``block_windows`` consecutive windows read with one file access
    (default: about 2^18 spikes' worth, from the sessions' mean rate); ``shuffle_buffer``
    windows held back for mixing (default two blocks); ``rank``/``world_size`` (default: from
    ``torch.distributed`` or ``RANK``/``WORLD_SIZE``); ``even_ranks`` drops the last
    ``< world_size`` windows of the epoch order so every rank yields the same number of batches
    (DDP needs it); ``num_workers`` only sizes ``len()``. Batches are the dicts of
    :func:`collate_spikes`.
    """

    def __init__(self, sessions, tokenizer: SpikeTokenizer, split: str | None = None, *, splits=None,
                 stride: float | None = None, behavior: Sequence[str] = (), behavior_seq_len: int = 8,
                 behavior_max_gap: float = 0.25, stimulus: str | None = None, stimulus_frames: int = 3,
                 stimulus_window: float = 0.15, batch_size: int = 32, shuffle: bool = True, seed: int = 0,
                 block_windows: int | None = None, shuffle_buffer: int | None = None, rank: int | None = None,
                 world_size: int | None = None, even_ranks: bool = True, num_workers: int = 0,
                 drop_last: bool = False):
        self.sessions = open_sessions(sessions)
        self.tokenizer, self.split = tokenizer, split
        self.reader = _SpikeReader(self.sessions, tokenizer, behavior, behavior_seq_len, behavior_max_gap,
                                   stimulus, stimulus_frames, stimulus_window)
        self.index = _spike_index(self.sessions, self.reader, split, splits, stride)
        if block_windows is None:  # about 2^18 spikes per read, and at most ~64 MB of tokenized windows
            rate = sum(s.n_spikes for s in self.sessions) / max(sum(s.duration for s in self.sessions), 1e-9)
            block_windows = _auto_block(1.0 / (stride or tokenizer.window_curr), rate, 2 ** 18, 64, 4096)
            per_window = 8 * 6 * (tokenizer.block_size + tokenizer.block_size_prev)  # bytes of int64 rows
            if stimulus is not None:
                frame = self.sessions[0].stimulus(stimulus, self.sessions[0].t_start, self.sessions[0].t_start)[1]
                per_window += 4 * stimulus_frames * int(np.prod(frame.shape[1:]))
            block_windows = int(max(16, min(block_windows, (64 << 20) // per_window)))
        self._init_stream(batch_size, shuffle, seed, block_windows, shuffle_buffer, rank, world_size,
                          even_ranks, num_workers, drop_last)

    def _read_piece(self, blocks, r, j0, j1):
        return self.reader.read(int(blocks.session[r]), blocks.anchors(r, j0, j1))

    def _read_rows(self, blocks, r, j0, j1, rows):
        # a window's tokens depend on its own spikes only: read just these windows
        return self.reader.read(int(blocks.session[r]), blocks.anchors(r, j0, j1)[rows])

    _take = staticmethod(_take_rows)
    _join = staticmethod(_join_arrays)
    _merge = staticmethod(_merge_arrays)


# --------------------------------------------------------------------------------------------
# iEEG segments
# --------------------------------------------------------------------------------------------


class _IEEGReader:
    """Reads, preprocesses and cuts segments of one session at a time."""

    def __init__(self, sessions: list[Session], segmenter: IEEGSegmenter, spatial_vocab=None,
                 spatial_scale: str | None = None, events: str | None = None, event_locked: bool = False,
                 event_offset: float = 0.0, label_map: Mapping[str, int] | None = None, target: str | None = None,
                 context_s: float | None = None):
        self.sessions, self.segmenter = sessions, segmenter
        self.events, self.event_locked, self.event_offset = events, event_locked, float(event_offset)
        self.target = target
        self.plans, self.cplans, self.spatial, self.t0 = [], [], [], []
        filtering = segmenter.line_noise or segmenter.sampling_rate
        self.context_s = (0.5 if filtering else 0.0) if context_s is None else float(context_s)
        for s in sessions:
            if "continuous" not in s.kinds:
                raise ValueError(f"{s.path}: /continuous: missing; an iEEG dataset needs continuous data "
                                 f"(this one holds {s.kinds})")
            plan = segmenter.plan(s.sampling_rate)
            try:
                channels = s.channels()
            except KeyError:
                channels = None
            cplan = segmenter.channel_plan(channels, s.n_channels)
            self.plans.append(plan)
            self.cplans.append(cplan)
            self.t0.append(s.continuous_t_start)
            if events is not None and events not in s.event_names:
                raise KeyError(f"{s.path}: /events/{events}: missing (available: {s.event_names})")
            if target is not None and target not in s.behavior_names:
                raise KeyError(f"{s.path}: /behavior/{target}: missing (available: {s.behavior_names})")
        if spatial_vocab == "auto":
            chans = [c.channels for c in self.cplans if c.channels is not None]
            spatial_vocab = SpatialVocab.from_channels(chans) if chans else None
        self.spatial_vocab = spatial_vocab
        for cplan in self.cplans:
            C = len(cplan.keep)
            if spatial_vocab is not None and cplan.channels is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # unknown labels are expected (index 0)
                    self.spatial.append(IEEGSegmenter.spatial(cplan.channels, spatial_vocab, spatial_scale))
            else:
                self.spatial.append({"coords": np.full((C, 3), -1, np.int64), "parcel": np.zeros(C, np.int64),
                                     "lobe": np.zeros(C, np.int64)})
        self.label_map = dict(label_map) if label_map is not None else None
        if events is not None and event_locked and self.label_map is None:
            labels = event_classes([s.events(events)["label"] for s in sessions])
            if len(labels) == 1:  # one kind of event: its segments against segments without one
                labels = [BACKGROUND_LABEL] + labels
            self.label_map = {lab: i for i, lab in enumerate(labels)}
        self._events_cache: dict[int, np.ndarray] = {}

    def n_channels(self, s: int) -> int:
        return len(self.cplans[s].keep)

    def _onsets(self, s: int) -> np.ndarray:
        if s not in self._events_cache:
            self._events_cache[s] = np.sort(self.sessions[s].events(self.events)["onset"])
        return self._events_cache[s]

    def read(self, s: int, t0s: np.ndarray, labels: np.ndarray) -> list[dict[str, Any] | None]:
        """Items for segments of session ``s`` starting at ``t0s`` (s), one per start; ``None``
        for a segment that is skipped (NaN/inf samples, or past the data), so positions stay
        those of the index whatever the data holds."""
        session, plan, cplan = self.sessions[s], self.plans[s], self.cplans[s]
        t0s = np.asarray(t0s, dtype=np.float64)
        sr, ct0 = plan.source_rate, self.t0[s]
        seg_s = plan.segment_s
        a = max(int(math.floor((float(t0s.min()) - ct0 - self.context_s) * sr)), 0)
        b = int(math.ceil((float(t0s.max()) + seg_s - ct0 + self.context_s) * sr)) + 1
        raw = session.continuous_samples(a, b)  # (T, C)
        x = self.segmenter.preprocess(raw, plan, cplan)  # (T', C') at plan.rate
        starts = np.rint((t0s - ct0 - a / sr) * plan.rate).astype(np.int64)
        seg, kept, cmask = self.segmenter.cut(x, starts, plan)
        sp = self.spatial[s]
        extra: dict[str, np.ndarray] = {}
        if self.events is not None:
            if self.event_locked:
                extra["label"] = labels.astype(np.int64)
            else:
                on = self._onsets(s)
                hit = np.searchsorted(on, t0s + seg_s, "left") - np.searchsorted(on, t0s, "left")
                extra["label"] = (hit > 0).astype(np.int64)
        if self.target is not None:
            ts, vals = session.behavior(self.target, float(t0s.min()), float(t0s.max()) + seg_s)
            f = behavior_features(ts, vals, t0s, t0s + seg_s)
            extra["target"], extra["target_mask"] = f["mean"], f["mask"]
        items: list[dict[str, Any] | None] = [None] * len(t0s)
        for j, i in enumerate(kept.tolist()):
            item = {"x": seg[j], "channel_mask": cmask[j], "coords": sp["coords"], "parcel": sp["parcel"],
                    "lobe": sp["lobe"], "session": s, "t0": float(t0s[i])}
            for k, v in extra.items():
                item[k] = v[i]
            items[i] = item
        return items


#: The second class of event-locked segments when the events carry one label only (e.g. every
#: onset labelled "grip"): segments that hold no event onset, so that a lab's single kind of
#: annotation can be classified (event vs. background) and scored by AUROC.
BACKGROUND_LABEL = "(no event)"


def event_classes(label_arrays) -> list[str]:
    """The classes an event-locked run learns when none are named: every label of the events,
    sorted, except the unknown label ``""`` (a BIDS events.tsv ``n/a``: a pause or block marker
    whose ``trial_type`` is not given) while other labels exist; those events are no class, so
    no segment starts at them (they still keep background segments away)."""
    labels = sorted({str(x) for arr in label_arrays for x in arr})
    named = [lab for lab in labels if lab != ""]
    return named or labels


def _background_starts(blocks: Intervals, origin: float, stride: float, seg_s: float, onsets: np.ndarray
                       ) -> np.ndarray:
    """Starts of the grid segments (``origin + k * stride``) inside ``blocks`` that overlap no
    event segment: no onset in ``(t0 - seg_s, t0 + seg_s)``, so a background segment holds
    neither an onset nor the first ``seg_s`` after one."""
    k0, count = grid_runs(blocks, origin, stride, 0.0, seg_s)
    if not len(count):
        return np.zeros(0)
    t0 = np.concatenate([origin + (k + np.arange(n)) * stride for k, n in zip(k0, count)])
    on = np.sort(onsets)
    near = np.searchsorted(on, t0 + seg_s, "left") - np.searchsorted(on, t0 - seg_s, "right")
    return t0[near == 0]


def _ieeg_index(sessions: list[Session], reader: _IEEGReader, split, splits, stride_s: float | None) -> WindowIndex:
    parts = []
    for s, session in enumerate(sessions):
        blocks = split_blocks(session, split, splits)
        seg_s = reader.plans[s].segment_s
        if reader.events is not None and reader.event_locked:
            ev = session.events(reader.events)
            t0 = np.asarray(ev["onset"], dtype=np.float64) + reader.event_offset
            lab = np.asarray([reader.label_map.get(str(x), -1) for x in ev["label"]], dtype=np.int64)
            keep = blocks.contains(t0, t0 + seg_s) & (lab >= 0)
            t0, lab = t0[keep], lab[keep]
            if BACKGROUND_LABEL in reader.label_map:
                bg = _background_starts(blocks, reader.t0[s], seg_s if stride_s is None else float(stride_s), seg_s,
                                        np.asarray(ev["onset"], dtype=np.float64) + reader.event_offset)
                t0 = np.concatenate([t0, bg])
                lab = np.concatenate([lab, np.full(len(bg), reader.label_map[BACKGROUND_LABEL], dtype=np.int64)])
            order = np.argsort(t0, kind="stable")
            t0, lab = t0[order], lab[order]
            n = len(t0)
            _warn_if_empty(session, split, n, f"event-locked segment ({seg_s:.3f} s)")
            parts.append(WindowIndex(np.full(n, s), t0, np.ones(n), np.zeros(n), np.ones(n), lab))
        else:
            stride = seg_s if stride_s is None else float(stride_s)
            k0, count = grid_runs(blocks, reader.t0[s], stride, 0.0, seg_s)
            _warn_if_empty(session, split, int(count.sum()), f"segment ({seg_s:.3f} s)")
            parts.append(WindowIndex.grid(s, reader.t0[s], stride, k0, count))
    return WindowIndex.concat(parts)


class IEEGSegmentDataset(Dataset):
    """Map-style BaRISTA segments over many session files, read lazily.

    Segments lie on a per-session grid (start ``t0 = t_start + k * stride``, default stride =
    segment length) inside the split's blocks; or, with ``events`` and ``event_locked=True``,
    start at each event onset + ``event_offset`` and carry the event's class (``label_map``,
    default: sorted labels -> 0, 1, ...; events of one label only get a second class,
    :data:`BACKGROUND_LABEL` = 0, of grid segments with no onset within a segment length). With ``events`` on the grid, ``label`` is 1 when an
    event onset falls in the segment. ``target`` names a behaviour variable: its mean over the
    segment (``target``, ``target_mask``).

    Channels are selected and re-referenced per session by ``segmenter``; ``spatial_vocab``
    (a :class:`~neurofm.atlas.SpatialVocab`, ``"auto"`` to build one from these sessions,
    or ``None`` for unknown everywhere) gives ``coords``/``parcel``/``lobe``. A segment with
    NaN/inf samples is skipped: ``dataset[i]`` is then ``None``, which :func:`collate_ieeg`
    leaves out and counts in ``batch["n_skipped"]``.
    """

    def __init__(self, sessions, segmenter: IEEGSegmenter | None = None, split: str | None = None, *, splits=None,
                 stride_s: float | None = None, spatial_vocab="auto", spatial_scale: str | None = None,
                 events: str | None = None, event_locked: bool = False, event_offset: float = 0.0,
                 label_map: Mapping[str, int] | None = None, target: str | None = None,
                 context_s: float | None = None):
        self.sessions = open_sessions(sessions)
        self.segmenter = segmenter or IEEGSegmenter()
        self.split = split
        self.reader = _IEEGReader(self.sessions, self.segmenter, spatial_vocab, spatial_scale, events, event_locked,
                                  event_offset, label_map, target, context_s)
        self.index = _ieeg_index(self.sessions, self.reader, split, splits, stride_s)

    @property
    def spatial_vocab(self):
        return self.reader.spatial_vocab

    def channel_names(self, s: int) -> list[str]:
        """Names of the channels session ``s`` contributes (after dropping/re-referencing)."""
        ch = self.reader.cplans[s].channels
        return list(ch.names) if ch is not None else [f"ch{i}" for i in self.reader.cplans[s].keep]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        s, t0, label = self.index.locate(int(i))
        return self.reader.read(s, np.array([t0]), np.array([label]))[0]


class StreamingIEEGDataset(_Streaming):
    """Iterable BaRISTA segments streamed block by block; yields collated batches.

    Arguments as :class:`IEEGSegmentDataset` plus the streaming ones of
    :class:`StreamingSpikeDataset`. ``block_windows`` consecutive segments share one read and
    one preprocessing pass. NaN segments are skipped: left out of their batch and counted in
    ``batch["n_skipped"]`` (as :func:`collate_ieeg` does for the map-style dataset) and in
    ``skipped`` (per process); a batch of skipped segments only is not yielded.
    """

    def __init__(self, sessions, segmenter: IEEGSegmenter | None = None, split: str | None = None, *, splits=None,
                 stride_s: float | None = None, spatial_vocab="auto", spatial_scale: str | None = None,
                 events: str | None = None, event_locked: bool = False, event_offset: float = 0.0,
                 label_map: Mapping[str, int] | None = None, target: str | None = None,
                 context_s: float | None = None, batch_size: int = 8, shuffle: bool = True, seed: int = 0,
                 block_windows: int | None = None, shuffle_buffer: int | None = None, rank: int | None = None,
                 world_size: int | None = None, even_ranks: bool = True, num_workers: int = 0,
                 drop_last: bool = False):
        self.sessions = open_sessions(sessions)
        self.segmenter = segmenter or IEEGSegmenter()
        self.split = split
        self.reader = _IEEGReader(self.sessions, self.segmenter, spatial_vocab, spatial_scale, events, event_locked,
                                  event_offset, label_map, target, context_s)
        self.index = _ieeg_index(self.sessions, self.reader, split, splits, stride_s)
        if block_windows is None:  # about 2^22 raw samples (16 MB of float32) per read
            seg = max(p.segment_samples * p.source_rate / p.rate * s.n_channels
                      for p, s in zip(self.reader.plans, self.sessions))
            block_windows = int(np.clip(2 ** 22 // max(seg, 1), 1, 64))
        self._init_stream(batch_size, shuffle, seed, block_windows, shuffle_buffer, rank, world_size,
                          even_ranks, num_workers, drop_last)
        self.skipped = 0

    @property
    def spatial_vocab(self):
        return self.reader.spatial_vocab

    def _read_piece(self, blocks, r, j0, j1):
        t0s = blocks.anchors(r, j0, j1)
        items = self.reader.read(int(blocks.session[r]), t0s, np.full(len(t0s), blocks.label[r]))
        self.skipped += sum(it is None for it in items)
        return items

    @staticmethod
    def _take(block, rows):
        return [block[i] for i in rows.tolist()]

    @staticmethod
    def _merge(parts):
        # items hold views of their block's segment array: copy them so the block can go
        return [None if it is None else {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in it.items()}
                for p in parts for it in p]

    @staticmethod
    def _join(parts):
        items = [it for p in parts for it in p]
        return collate_ieeg(items) if any(it is not None for it in items) else None


# --------------------------------------------------------------------------------------------
# collate
# --------------------------------------------------------------------------------------------


def _stack(values: list) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.from_numpy(np.stack([np.asarray(v) for v in values]))


def collate_spikes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack Neuroformer items into the batch dict of the brief (sequences are pre-padded).

    ``id``/``dt``/``target_*``/``*_prev`` int64, masks bool, ``interval`` float64, behaviour
    float32; nested dicts (``behavior`` ...) are stacked per variable.
    """
    items = [it for it in items if it is not None]
    if not items:
        raise ValueError("collate_spikes: empty batch")
    out: dict[str, Any] = {}
    for key, first in items[0].items():
        if isinstance(first, dict):
            out[key] = {name: _stack([it[key][name] for it in items]) for name in first}
        else:
            out[key] = _stack([it[key] for it in items])
    for key in ("session", "n_dropped", "n_dropped_prev"):
        if key in out:
            out[key] = out[key].long()
    if "interval" in out:
        out["interval"] = out["interval"].double()
    return out


def collate_packed_spikes(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`collate_spikes` then :func:`pack_spikes`."""
    return pack_spikes(collate_spikes(items))


def collate_ieeg(items: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
    """Batch BaRISTA items, padding the channel axis to the largest C in the batch.

    ``x`` (B, C, T) float32 (zeros on padding), ``channel_mask`` (B, C) bool (False on
    padding), ``coords`` (B, C, 3) int64 (-1 on padding), ``parcel``/``lobe`` (B, C) int64
    (0 on padding), ``session`` (B,) int64, ``t0`` (B,) float64, ``label`` (B,) int64 and
    ``target`` (B, D) float32 when present, ``n_skipped`` () int64 segments left out (NaN).
    """
    kept = [it for it in items if it is not None]
    if not kept:
        raise ValueError("collate_ieeg: every segment of the batch was skipped (NaN/inf samples)")
    B = len(kept)
    C = max(len(it["channel_mask"]) for it in kept)
    T = kept[0]["x"].shape[-1]
    if any(it["x"].shape[-1] != T for it in kept):
        raise ValueError("collate_ieeg: segments of different lengths in one batch; use one segmenter "
                         "(same sampling rate / patch length) for all sessions of a dataset")
    x = np.zeros((B, C, T), np.float32)
    mask = np.zeros((B, C), bool)
    coords = np.full((B, C, 3), -1, np.int64)
    parcel = np.zeros((B, C), np.int64)
    lobe = np.zeros((B, C), np.int64)
    for b, it in enumerate(kept):
        c = len(it["channel_mask"])
        x[b, :c] = it["x"]
        mask[b, :c] = it["channel_mask"]
        coords[b, :c] = it["coords"]
        parcel[b, :c] = it["parcel"]
        lobe[b, :c] = it["lobe"]
    out = {"x": torch.from_numpy(x), "channel_mask": torch.from_numpy(mask), "coords": torch.from_numpy(coords),
           "parcel": torch.from_numpy(parcel), "lobe": torch.from_numpy(lobe),
           "session": torch.tensor([int(it["session"]) for it in kept], dtype=torch.int64),
           "t0": torch.tensor([float(it["t0"]) for it in kept], dtype=torch.float64),
           "n_skipped": torch.tensor(len(items) - B, dtype=torch.int64)}
    if "label" in kept[0]:
        out["label"] = torch.tensor([int(it["label"]) for it in kept], dtype=torch.int64)
    if "target" in kept[0]:
        out["target"] = torch.from_numpy(np.stack([np.asarray(it["target"], np.float32) for it in kept]))
        out["target_mask"] = torch.tensor([bool(it["target_mask"]) for it in kept])
    return out


# --------------------------------------------------------------------------------------------
# loader
# --------------------------------------------------------------------------------------------


class WithinBinShuffle:
    """Training-batch transform: the spike IDs inside each dt bin in a fresh random order.

    ``data.shuffle_within_bin`` (off by default). Applied by the training loaders in the main
    process to each padded batch as it is handed out, with a generator seeded by ``(seed, epoch,
    batch index in the epoch, rank)``: the same run gives the same orders (also after a
    mid-epoch resume, whatever ``num_workers``), every epoch draws new ones. The current window
    (its input AND next-token targets, from the one reordered sequence) and the previous window
    are reordered with :func:`~neurofm.data.tokenizer.shuffle_within_bins`; dt tokens, masks,
    padding and every other key are untouched. ``then`` (e.g. ``pack_spikes``) runs after.
    Validation and test loaders never get it: they score the canonical order.
    """

    def __init__(self, seed: int, rank: int = 0, then: Callable[[dict], dict] | None = None):
        self.seed, self.rank, self.then = int(seed), int(rank), then

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch), int(index), self.rank, 0xB125])

    def __call__(self, batch: Mapping[str, Any], epoch: int, index: int) -> dict[str, Any]:
        if "cu_seqlens" in batch:
            raise ValueError("WithinBinShuffle: the batch is packed; shuffle the padded batch, then pack it (then=)")
        rng, out = self.rng(epoch, index), dict(batch)
        if "id" in batch:
            full = torch.cat([batch["id"][:, :1], batch["target_id"]], 1)  # [SOS] spikes [EOS] PAD ...
            full_dt = torch.cat([batch["dt"][:, :1], batch["target_dt"]], 1)
            ids = torch.from_numpy(shuffle_within_bins(full.numpy(), full_dt.numpy(), rng))
            out["id"], out["target_id"] = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        if "id_prev" in batch:
            out["id_prev"] = torch.from_numpy(shuffle_within_bins(batch["id_prev"].numpy(), batch["dt_prev"].numpy(),
                                                                  rng))
        return self.then(out) if self.then is not None else out


class _ResumablePosition:
    """Where a training loader stands in its epoch, for exact mid-epoch resume under Lightning.

    Lightning (2.x) puts ``state_dict()`` of every training loader that has
    ``state_dict``/``load_state_dict`` into its checkpoints
    (``loops["fit_loop"]["state_dict"]["combined_loader"]``) and, when
    ``trainer.fit(ckpt_path=...)`` resumes inside an epoch, calls ``load_state_dict`` before
    it iterates the loader again. The state is ``{"epoch", "batches"}`` -- batches handed
    out in that epoch -- plus the layout they assume (batch size, world size, workers). It
    does not prefetch from a loader with a length, so ``batches`` is what the trainer took.

    Iterating is lazy: nothing (not the epoch, not the workers) starts before the first
    batch is asked for. Lightning creates the training iterator before it calls
    ``set_epoch`` and before a resumed run settles its epoch counter; an eager start would
    pick the wrong epoch. A loaded position is used once, by the next iteration, and only if
    that iteration is of the saved epoch (a checkpoint taken at the end of an epoch is
    followed by a fresh one).
    """

    _position_epoch: int | None = None
    _position_batches: int = 0
    _resume: dict | None = None
    #: ``transform(batch, epoch, index in the epoch) -> batch`` applied to each batch handed
    #: out (e.g. :class:`WithinBinShuffle`); None: batches as the dataset makes them
    transform: Callable[[Any, int, int], Any] | None = None

    def _out(self, batch, epoch: int):
        return batch if self.transform is None else self.transform(batch, epoch, self._position_batches)

    def _layout(self) -> dict[str, int]:
        raise NotImplementedError

    def _current_epoch(self) -> int:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        if self._resume is not None:  # loaded and not yet used: keep it
            return dict(self._resume)
        epoch = self._current_epoch() if self._position_epoch is None else self._position_epoch
        return {"epoch": int(epoch), "batches": int(self._position_batches), **self._layout()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"epoch", "batches"} - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: the state lacks {sorted(missing)}; it must come "
                           f"from {type(self).__name__}.state_dict()")
        self._resume = dict(state)

    def _take_resume(self, epoch: int) -> dict | None:
        """The loaded state if it says where to resume ``epoch``; else ``None`` (used once)."""
        state, self._resume = self._resume, None
        if state is None or int(state["epoch"]) != epoch or int(state["batches"]) <= 0:
            return None
        diff = {k: (state[k], v) for k, v in self._layout().items() if k in state and state[k] != v}
        if diff:
            what = ", ".join(f"{k}={old} (now {new})" for k, (old, new) in diff.items())
            raise ValueError(f"cannot resume epoch {epoch} after batch {state['batches']}: the checkpoint's loader "
                             f"ran with {what}; resume with the same settings, or from a checkpoint taken at the "
                             f"end of an epoch")
        return state


class ResumableDataLoader(_ResumablePosition, DataLoader):
    """A map-style DataLoader that resumes exactly in the middle of an epoch.

    Give it a sampler with ``epoch`` and ``set_start`` (a
    :class:`~neurofm.data.samplers.BlockShuffleSampler`) and a ``batch_size``. After
    ``load_state_dict(state)`` the next iteration of ``state["epoch"]`` starts at the
    sampler's ``state["batches"] * batch_size``-th index: the windows of the batches already
    trained on are never read, and every following batch is the one the uninterrupted run
    would have made (any ``num_workers``: the sampler runs in the main process). Under DDP
    every rank skips inside its own share; ranks hold equal shares, so rank 0's state (the
    one in the checkpoint) fits all of them. ``transform``: see :class:`_ResumablePosition`.
    """

    def __init__(self, dataset, *args, transform: Callable[[Any, int, int], Any] | None = None, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.transform = transform

    def _current_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _layout(self) -> dict[str, int]:
        return {"batch_size": int(self.batch_size or 0), "world_size": int(getattr(self.sampler, "num_replicas", 1))}

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        epoch = self._current_epoch()
        state = self._take_resume(epoch)
        skip = int(state["batches"]) if state else 0
        if hasattr(self.sampler, "set_start"):
            self.sampler.set_start(skip * int(self.batch_size or 1))
        elif skip:
            raise ValueError(f"cannot resume epoch {epoch} after batch {skip}: the sampler "
                             f"{type(self.sampler).__name__} has no set_start(); use BlockShuffleSampler")
        self._position_epoch, self._position_batches = epoch, skip
        for batch in super().__iter__():
            batch = self._out(batch, epoch)
            self._position_batches += 1
            yield batch


class EpochDataLoader(_ResumablePosition, DataLoader):
    """A DataLoader for the streaming datasets: the epoch, and exact mid-epoch resume.

    Lightning calls ``set_epoch`` only on samplers, which iterable datasets do not have;
    ``epoch_fn()`` (e.g. ``lambda: trainer.current_epoch``) gives the epoch, else the loader
    counts its own iterations. Workers must not be persistent (they would keep the old epoch).

    Each batch of a streaming dataset carries, between its worker and this loader, which
    worker made it and how many that worker has made; the loader keeps the latest count per
    worker (``state_dict()["worker_batches"]``) and the worker whose turn is next
    (``"next_worker"``). After ``load_state_dict`` every worker of the next iteration of that
    epoch replays its shuffle plan without reading data up to its count, reads only the
    windows its shuffle buffer held at that point (for iEEG, whose filters span windows, the
    blocks they are in), and continues exactly as before; the turn
    starts at ``next_worker``, so the workers' batches interleave as they did. Resume needs
    the same ``num_workers``, batch size and world size. ``transform``: see
    :class:`_ResumablePosition`.
    """

    def __init__(self, dataset, *args, epoch_fn: Callable[[], int] | None = None,
                 transform: Callable[[Any, int, int], Any] | None = None, **kwargs):
        if kwargs.get("persistent_workers"):
            raise ValueError("EpochDataLoader: persistent_workers=True would freeze the epoch's shuffle")
        super().__init__(dataset, *args, **kwargs)
        self._epoch_fn = epoch_fn
        self.transform = transform
        self._iterations = 0
        self._worker_batches = [0] * max(self.num_workers, 1)
        self._next_worker = 0

    def _current_epoch(self) -> int:
        return int(self._epoch_fn()) if self._epoch_fn is not None else self._iterations

    def _layout(self) -> dict[str, int]:
        ds = self.dataset
        if not isinstance(ds, _Streaming):
            return {}
        return {"batch_size": ds.batch_size, "world_size": ds._ranks()[1], "num_workers": max(self.num_workers, 1)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.setdefault("worker_batches", list(self._worker_batches))
        state.setdefault("next_worker", self._next_worker)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self._epoch_fn is None:
            self._iterations = int(state["epoch"])

    def __iter__(self):
        return self._iterate()

    def _iterate(self):
        epoch = self._current_epoch()
        self._iterations = epoch + 1
        state = self._take_resume(epoch)
        ds = self.dataset
        n_workers = max(self.num_workers, 1)
        skip = [int(k) for k in state.get("worker_batches", ())] if state else None
        if isinstance(ds, _Streaming):
            if state and len(skip) != n_workers:
                raise ValueError(f"cannot resume epoch {epoch}: the checkpoint's loader state has no per-worker "
                                 f"positions for {n_workers} workers (it holds {skip})")
            ds.set_epoch(epoch, skip=skip, first_worker=int(state.get("next_worker", 0)) if state else 0,
                         report_position=True)
        elif state:
            raise ValueError(f"cannot resume epoch {epoch} after batch {state['batches']}: "
                             f"{type(ds).__name__} cannot skip batches; use a streaming dataset of neurofm")
        elif hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        self._position_epoch, self._position_batches = epoch, int(state["batches"]) if state else 0
        self._worker_batches = list(skip) if skip else [0] * n_workers
        self._next_worker = int(state.get("next_worker", 0)) if state else 0
        batches = super().__iter__()  # the workers (or the dataset's iterator) have taken the skip now
        if isinstance(ds, _Streaming):
            ds.set_epoch(epoch)  # no skip and no positions for anyone else iterating this dataset
        for batch in batches:
            position = batch.pop("_position", None) if isinstance(batch, dict) else None
            if position is not None:
                worker = int(position[0])
                self._worker_batches[worker] = int(position[1])
                self._next_worker = (worker + 1) % n_workers
            batch = self._out(batch, epoch)
            self._position_batches += 1
            yield batch
