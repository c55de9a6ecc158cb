"""Samplers: window runs, seeded block shuffles, rank x worker shards that partition every epoch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neurofm.data.samplers import (BlockShuffleSampler, WindowIndex, rank_share, shard_bounds, shuffle_buffer_plan,
                                   stream_pieces)


def test_window_index_runs_locate_and_split():
    idx = WindowIndex.concat([WindowIndex.grid(0, 0.0, 0.05, [3, 40], [4, 2]), WindowIndex.grid(1, 10.0, 0.5, [0], [3])])
    assert len(idx) == 9
    assert idx.locate(0) == (0, 0.15, -1) and idx.locate(4) == (0, 2.0, -1) and idx.locate(8) == (1, 11.0, -1)
    with pytest.raises(IndexError):
        idx.locate(9)
    parts = idx.split_runs(3)
    assert parts.count.tolist() == [3, 1, 2, 3] and len(parts) == 9
    flat = [t for r in range(parts.n_runs) for t in parts.anchors(r).tolist()]
    assert flat == [idx.locate(i)[1] for i in range(9)]
    assert [(r, a, b) for r, a, b in idx.pieces(2, 7)] == [(0, 2, 4), (1, 0, 2), (2, 0, 1)]


def test_window_index_subset_keeps_the_chosen_windows_as_runs():
    """subset: a flat keep mask -> the same windows (session, anchor, label) in order, in runs of
    consecutive grid windows; a run that spans two original runs is never made."""
    idx = WindowIndex.concat([WindowIndex.grid(0, 0.0, 0.05, [3, 7], [4, 2]),
                              WindowIndex.grid(1, 10.0, 0.5, [0], [3], label=2)])
    keep = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], dtype=bool)  # idx runs: k 3..6 | k 7..8 | session 1
    sub = idx.subset(keep)
    assert [sub.locate(i) for i in range(len(sub))] == [idx.locate(i) for i in np.flatnonzero(keep)]
    # k 6 (end of run 0) and k 7 (start of run 1) are consecutive on the grid, but stay two runs
    assert sub.k0.tolist() == [3, 6, 7, 1] and sub.count.tolist() == [2, 1, 2, 2]
    assert len(idx.subset(np.zeros(9, bool))) == 0
    with pytest.raises(ValueError):
        idx.subset(np.ones(8, bool))


def test_shard_bounds_and_rank_share():
    assert [shard_bounds(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [rank_share(11, r, 2, even_ranks=True) for r in range(2)] == [5, 5]
    assert [rank_share(11, r, 2, even_ranks=False) for r in range(2)] == [5, 6]


def test_block_shuffle_sampler_is_seeded_sharded_and_local():
    ds = list(range(103))
    orders = {}
    for epoch in (0, 1):
        shards = []
        for rank in range(2):
            s = BlockShuffleSampler(ds, num_replicas=2, rank=rank, seed=7, block=8)
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len(shards[0]) == len(shards[1]) == 52
        allidx = shards[0] + shards[1]
        assert set(allidx) == set(range(103)) and len(allidx) == 104  # one index padded
        orders[epoch] = allidx
        again = BlockShuffleSampler(ds, num_replicas=2, rank=0, seed=7, block=8)
        again.set_epoch(epoch)
        assert list(again) == shards[0]  # reproducible
    assert orders[0] != orders[1]
    # a mid-epoch resume starts part-way through the share; the length stays the whole share
    s = BlockShuffleSampler(ds, num_replicas=2, rank=1, seed=7, block=8)
    s.set_epoch(1)
    whole = list(s)
    s.set_start(20)
    assert list(s) == whole[20:] and len(s) == 52
    # blocks stay together: consecutive draws come from the same block of 8 most of the time
    o = BlockShuffleSampler(ds, num_replicas=1, rank=0, seed=7, block=8).order(0)
    assert np.mean(np.asarray(o[1:]) // 8 == np.asarray(o[:-1]) // 8) > 0.8


def test_stream_pieces_partition_every_epoch():
    idx = WindowIndex.concat([WindowIndex.grid(0, 0.0, 0.05, [3, 40], [30, 21]), WindowIndex.grid(1, 0.0, 0.05, [0], [50])])
    for epoch in range(3):
        got = []
        for rank, worker in itertools.product(range(3), range(2)):
            blocks, pieces = stream_pieces(idx, seed=0, epoch=epoch, shuffle=True, rank=rank, world_size=3,
                                           worker=worker, n_workers=2, block=7, even_ranks=False)
            got += [(int(blocks.session[r]), round(t, 6)) for r, j0, j1 in pieces for t in blocks.anchors(r, j0, j1)]
        assert len(got) == len(set(got)) == len(idx) == 101


def _play(sizes, batch_size, keep, seed, drop_last=False):
    """Run a plan on (block, row) labels; also the most rows ever held."""
    rng = None if seed is None else np.random.default_rng(seed)
    held, batches, peak = {}, [], 0
    for op in shuffle_buffer_plan(sizes, batch_size, keep, rng, drop_last):
        if op[0] == "read":
            held[op[1]] = [(op[2], j) for j in range(sizes[op[2]])]
        elif op[0] == "merge":
            held[op[1]] = [held[b][j] for b, rows in op[2] for j in rows.tolist()]
            for b, _ in op[2]:
                del held[b]
        elif op[0] == "free":
            for b in op[1]:
                del held[b]
        else:
            batches.append([held[b][j] for b, rows in op[1] for j in rows.tolist()])
        peak = max(peak, sum(map(len, held.values())))
    return batches, peak


def test_shuffle_buffer_plan_uses_every_row_once_in_bounded_memory():
    sizes = np.random.default_rng(0).integers(1, 11, 60).tolist()
    batches, peak = _play(sizes, 8, 24, seed=3)
    rows = [r for b in batches for r in b]
    assert sorted(rows) == [(p, j) for p, n in enumerate(sizes) for j in range(n)]
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches) == -(-sum(sizes) // 8)
    assert peak <= 2 * (24 + 8 + 10)  # blocks are let go (or compacted) as their rows leave
    assert _play(sizes, 8, 24, seed=3)[0] == batches and _play(sizes, 8, 24, seed=4)[0] != batches
    in_order, _ = _play(sizes, 8, 0, seed=None)
    assert [r for b in in_order for r in b] == [(p, j) for p, n in enumerate(sizes) for j in range(n)]
    dropped, _ = _play(sizes, 8, 24, seed=3, drop_last=True)
    assert len(dropped) == sum(sizes) // 8 and all(len(b) == 8 for b in dropped)
