"""Samplers: window runs, seeded block shuffles, rank x worker shards that partition every epoch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from neurofm.data.samplers import BlockShuffleSampler, WindowIndex, rank_share, shard_bounds, stream_pieces


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
