"""Window indices, shuffling and sharding across distributed ranks and dataloader workers.

Kept apart from the datasets (like torch_brain) so that the order of the data is one small,
testable piece: every epoch's order is a pure function of ``(seed, epoch)``, so a resumed run
sees the same data in the same order.

* :class:`WindowIndex` -- the windows of many sessions as runs on regular time grids (a
  few numbers per split block, never one entry per window, so 1,000 hours of recordings
  cost kilobytes).
* :class:`BlockShuffleSampler` -- a distributed sampler for the map-style datasets that
  shuffles blocks of consecutive windows (file reads stay local) and then the windows
  inside each block.
* :func:`stream_pieces` -- what one (rank, worker) of a streaming dataset reads in an
  epoch: each window exactly once across all ranks x workers.
* :func:`shuffle_buffer_plan` -- how a streaming worker's blocks become batches through its
  shuffle buffer, as index operations only, so a resumed run can fast-forward past the
  batches it already trained on without reading them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def distributed_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def worker_info() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker (``(0, 1)`` outside one)."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous share ``[lo, hi)`` of ``n`` items for shard ``index`` of ``count`` (sizes differ by <= 1)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} not in [0, {count})")
    return n * index // count, n * (index + 1) // count


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The one random generator of an epoch: same ``(seed, epoch)``, same order, on every rank."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF, 0x6E66])


def _ns(t):
    """Times rounded to the nanosecond, so grid anchors read 0.15, not 0.15000000000000002."""
    return np.round(t, 9)


@dataclass
class WindowIndex:
    """Windows as runs: run ``r`` holds ``count[r]`` windows of session ``session[r]`` anchored at
    ``origin[r] + (k0[r] + j) * stride[r]`` for ``j < count[r]``, with an optional ``label[r]``
    (-1 for none; event-locked windows carry their event's class here).

    The anchor is the window's END for spike windows and its START for iEEG segments.
    """

    session: np.ndarray  # (R,) int64
    origin: np.ndarray  # (R,) float64
    stride: np.ndarray  # (R,) float64
    k0: np.ndarray  # (R,) int64
    count: np.ndarray  # (R,) int64
    label: np.ndarray  # (R,) int64

    def __post_init__(self):
        self.session = np.asarray(self.session, dtype=np.int64)
        self.origin = np.asarray(self.origin, dtype=np.float64)
        self.stride = np.asarray(self.stride, dtype=np.float64)
        self.k0 = np.asarray(self.k0, dtype=np.int64)
        self.count = np.asarray(self.count, dtype=np.int64)
        self.label = np.asarray(self.label, dtype=np.int64)
        self.cum = np.concatenate([[0], np.cumsum(self.count)]).astype(np.int64)

    @classmethod
    def concat(cls, parts: list["WindowIndex"]) -> "WindowIndex":
        if not parts:
            return cls(*(np.zeros(0) for _ in range(6)))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("session", "origin", "stride", "k0", "count", "label")))

    @classmethod
    def grid(cls, session: int, origin: float, stride: float, k0, count, label: int = -1) -> "WindowIndex":
        k0 = np.asarray(k0, dtype=np.int64)
        n = len(k0)
        return cls(np.full(n, session), np.full(n, origin), np.full(n, stride), k0, count, np.full(n, label))

    def __len__(self) -> int:
        return int(self.cum[-1])

    @property
    def n_runs(self) -> int:
        return len(self.count)

    def anchors(self, r: int, j0: int = 0, j1: int | None = None) -> np.ndarray:
        """Anchor times (s) of windows ``j0..j1`` of run ``r``."""
        j1 = int(self.count[r]) if j1 is None else j1
        return _ns(self.origin[r] + (self.k0[r] + np.arange(j0, j1)) * self.stride[r])

    def locate(self, i: int) -> tuple[int, float, int]:
        """``(session, anchor time, label)`` of flat window ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"window index {i} out of range [0, {len(self)})")
        r = int(np.searchsorted(self.cum, i, side="right") - 1)
        j = i - int(self.cum[r])
        return int(self.session[r]), float(_ns(self.origin[r] + (self.k0[r] + j) * self.stride[r])), int(self.label[r])

    def split_runs(self, max_windows: int) -> "WindowIndex":
        """The same windows with every run cut into blocks of at most ``max_windows``."""
        max_windows = max(int(max_windows), 1)
        n_pieces = np.maximum(-(-self.count // max_windows), 1) * (self.count > 0)
        rep = np.repeat(np.arange(self.n_runs), n_pieces)
        piece = np.arange(len(rep)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        k0 = self.k0[rep] + piece * max_windows
        count = np.minimum(self.count[rep] - piece * max_windows, max_windows)
        return WindowIndex(self.session[rep], self.origin[rep], self.stride[rep], k0, count, self.label[rep])

    def subset(self, keep: np.ndarray) -> "WindowIndex":
        """The windows where ``keep`` ((len(self),) bool, flat order) is True, as runs of
        consecutive grid windows (same sessions, grids and labels; empty runs left out)."""
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (len(self),):
            raise ValueError(f"WindowIndex.subset: keep has shape {keep.shape}, expected ({len(self)},)")
        run = np.repeat(np.arange(self.n_runs), self.count)[keep]
        k = (np.repeat(self.k0, self.count) + np.arange(len(self)) - np.repeat(self.cum[:-1], self.count))[keep]
        new = np.ones(len(k), dtype=bool)  # a kept window starts a run unless it follows its run's previous one
        new[1:] = (run[1:] != run[:-1]) | (k[1:] != k[:-1] + 1)
        first = np.flatnonzero(new)
        count = np.diff(np.append(first, len(k)))
        r = run[first]
        return WindowIndex(self.session[r], self.origin[r], self.stride[r], k[first], count, self.label[r])

    def take_runs(self, order: np.ndarray) -> "WindowIndex":
        return WindowIndex(self.session[order], self.origin[order], self.stride[order], self.k0[order],
                           self.count[order], self.label[order])

    def pieces(self, lo: int, hi: int) -> Iterator[tuple[int, int, int]]:
        """``(run, j0, j1)`` pieces covering flat windows ``[lo, hi)`` in order."""
        if hi <= lo:
            return
        r = int(np.searchsorted(self.cum, lo, side="right") - 1)
        while lo < hi:
            j0 = lo - int(self.cum[r])
            j1 = min(int(self.count[r]), hi - int(self.cum[r]))
            if j1 > j0:
                yield r, j0, j1
            lo = int(self.cum[r]) + j1
            r += 1


class BlockShuffleSampler(DistributedSampler):
    """Distributed sampler over a map-style window dataset, shuffled in blocks.

    Consecutive indices are consecutive windows of one session, so shuffling ``block``-long
    runs of indices and then the indices inside each run keeps file reads local (the HDF5
    chunk cache stays warm) while the batches still mix sessions and times. ``block=1`` is a
    plain random permutation. Each rank takes a contiguous share of the permuted order.

    Subclasses :class:`~torch.utils.data.DistributedSampler`, so Lightning leaves it in place
    and calls :meth:`set_epoch` every epoch. ``drop_last=False`` pads the ranks to equal
    length by repeating the first indices of the order (as torch's sampler does);
    ``drop_last=True`` drops the last ``< world_size`` instead. :meth:`set_start` makes an
    iteration begin part-way through this rank's share (mid-epoch resume); ``len()`` stays
    the whole share, because the trainer counts the batches it already ran.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, block: int = 64):
        n = len(dataset)
        if num_replicas is None or rank is None:
            r, w = distributed_info()
            rank = r if rank is None else rank
            num_replicas = w if num_replicas is None else num_replicas
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        # DistributedSampler's own __init__ insists on an initialised process group when the
        # rank is not given; set the same fields ourselves.
        self.dataset, self.num_replicas, self.rank = dataset, int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, int(seed), drop_last, 0
        self.block = max(int(block), 1)
        self.start = 0
        self.n = n
        if drop_last:
            self.num_samples = n // self.num_replicas
        else:
            self.num_samples = -(-n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_start(self, start: int) -> None:
        """Iterations yield this rank's share from its ``start``-th index on (0 = the whole share).

        Set by :class:`~neurofm.data.datasets.ResumableDataLoader` before every iteration:
        ``batches already trained * batch_size`` when resuming mid-epoch, else 0. The skipped
        indices are never handed to the dataset, so their windows are not read.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = int(start)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The full permutation of this epoch (identical on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        idx = np.arange(self.n)
        if not self.shuffle:
            return idx
        rng = epoch_rng(self.seed, epoch)
        n_blocks = -(-self.n // self.block)
        starts = rng.permutation(n_blocks) * self.block
        lens = np.minimum(self.n - starts, self.block)
        out = np.repeat(starts, lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
        # shuffle inside each block: sort by (block position, random key)
        block_id = np.repeat(np.arange(n_blocks), lens)
        inner = np.lexsort((rng.random(len(out)), block_id))
        return out[inner]

    def __iter__(self):
        order = self.order()
        if self.total_size > len(order):  # pad to equal shares
            reps = -(-self.total_size // max(len(order), 1))
            order = np.tile(order, reps)[: self.total_size]
        else:
            order = order[: self.total_size]
        lo, hi = self.rank * self.num_samples, (self.rank + 1) * self.num_samples
        return iter(order[min(lo + self.start, hi):hi].tolist())

    def __len__(self) -> int:
        return self.num_samples


def stream_pieces(index: WindowIndex, *, seed: int, epoch: int, shuffle: bool, rank: int, world_size: int,
                  worker: int, n_workers: int, block: int, even_ranks: bool
                  ) -> tuple[WindowIndex, list[tuple[int, int, int]]]:
    """The windows one (rank, worker) of a streaming dataset reads in an epoch.

    Runs are cut into blocks of ``block`` windows; with ``shuffle`` the block order is a
    permutation drawn from ``(seed, epoch)`` (the same on every rank). The resulting flat
    order is cut into ``world_size`` contiguous shares (``even_ranks=True`` drops the last
    ``< world_size`` windows so every rank yields the same number, which DDP needs), and each
    rank's share into ``n_workers`` contiguous shares. Every window of the epoch order goes to
    exactly one (rank, worker). Returns the block index and its ``(run, j0, j1)`` pieces.
    """
    blocks = index.split_runs(block)
    if shuffle and blocks.n_runs:
        blocks = blocks.take_runs(epoch_rng(seed, epoch).permutation(blocks.n_runs))
    n = len(blocks)
    if even_ranks:
        n -= n % world_size
    lo, hi = shard_bounds(n, rank, world_size)
    wlo, whi = shard_bounds(hi - lo, worker, n_workers)
    return blocks, list(blocks.pieces(lo + wlo, lo + whi))


def rank_share(n: int, rank: int, world_size: int, even_ranks: bool) -> int:
    """Number of windows rank ``rank`` yields in a streaming epoch of ``n`` windows."""
    if even_ranks:
        n -= n % world_size
    lo, hi = shard_bounds(n, rank, world_size)
    return hi - lo


def shuffle_buffer_plan(sizes: Sequence[int], batch_size: int, keep: int, rng: np.random.Generator | None,
                        drop_last: bool = False) -> Iterator[tuple]:
    """The batches one streaming worker makes of its blocks, as operations on block rows only.

    Blocks (``sizes[p]`` rows each, in reading order) enter a buffer of ``(block, row)``
    pairs; once it holds ``keep + batch_size`` rows, ``batch_size`` random rows (``rng``;
    ``None`` = in order) leave it as one batch; at the end the rest leave in a random order.
    Holding whole blocks and drawing rows keeps each batch a few gathers. Rows left behind in
    blocks that are less than half full are copied into one new block before the next read,
    so a stray row never pins a whole block (memory stays ~ ``keep`` rows + one block).

    Nothing here touches data: the plan is a function of ``sizes`` and the ``rng`` seed, so a
    resumed worker can replay it up to where it stopped and read only the blocks still in the
    buffer. Yields, in order (block ids ``bid`` count up from 0):

    * ``("read", bid, p)`` -- read block ``p`` and hold it as ``bid``;
    * ``("merge", bid, [(old_bid, rows), ...])`` -- hold the given rows of older blocks, in
      that order, as ``bid``; the older blocks are dropped;
    * ``("batch", [(bid, rows), ...])`` -- one batch: those rows of those held blocks, the
      blocks in the order their first row was drawn (without ``rng``: reading order); every
      row of every block is in exactly one batch (``drop_last`` leaves out a short last one);
    * ``("free", [bid, ...])`` -- blocks with no rows left in the buffer.
    """
    B = int(batch_size)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    size: dict[int, int] = {}  # held block id -> rows
    pool_b = np.zeros(0, np.int64)  # (P,) block id of each buffered row
    pool_r = np.zeros(0, np.int64)  # (P,) its row in the block
    next_id = 0

    def batch(pick: np.ndarray) -> tuple:
        bids, rows = pool_b[pick], pool_r[pick]
        ub, first = np.unique(bids, return_index=True)
        return "batch", [(int(b), rows[bids == b]) for b in ub[np.argsort(first)]]

    for p, n in enumerate(sizes):
        stale = [b for b in size if 2 * int(np.count_nonzero(pool_b == b)) < size[b]]
        if len(stale) > 1 or (stale and len(size) > 2):
            parts, offset = [], 0
            for b in stale:
                where = np.flatnonzero(pool_b == b)
                parts.append((b, pool_r[where]))
                pool_b[where] = next_id
                pool_r[where] = offset + np.arange(len(where))
                offset += len(where)
                del size[b]
            size[next_id] = offset
            yield "merge", next_id, parts
            next_id += 1
        n = int(n)
        size[next_id] = n
        yield "read", next_id, p
        pool_b = np.concatenate([pool_b, np.full(n, next_id)])
        pool_r = np.concatenate([pool_r, np.arange(n)])
        next_id += 1
        while len(pool_b) >= keep + B:
            pick = rng.choice(len(pool_b), B, replace=False) if rng is not None else np.arange(B)
            yield batch(pick)
            pool_b, pool_r = np.delete(pool_b, pick), np.delete(pool_r, pick)
            gone = sorted(set(size) - set(np.unique(pool_b).tolist()))
            if gone:
                for b in gone:
                    del size[b]
                yield "free", gone
    order = rng.permutation(len(pool_b)) if rng is not None else np.arange(len(pool_b))
    for i in range(0, len(order), B):
        pick = order[i:i + B]
        if len(pick) < B and drop_last:
            break
        yield batch(pick)
