"""bench/multiday.py: sibling days of one simulated animal, pooled block sizes, the table's counts."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import generalisation as G  # noqa: E402
from bench import multiday as M  # noqa: E402
from neurofm.data.session import Session  # noqa: E402

SPEC = dict(kind="place", behavior="position",
            args=dict(n_units=15, rate_hz=1.0, duration=120.0, run_s=20.0, rest_s=10.0, seed=5))


def test_sibling_days_same_units_other_days(tmp_path):
    path = G.make_session("tiny", SPEC, tmp_path)
    days = M.sibling_days("tiny", SPEC, tmp_path, 2)
    assert [d.name for d in days] == ["tiny-day1.h5", "tiny-day2.h5"]
    assert M.sibling_days("tiny", SPEC, tmp_path, 2) == days  # reused, not rewritten
    with Session(path) as s, Session(days[0]) as d1, Session(days[1]) as d2:
        assert {s.session_id, d1.session_id, d2.session_id} == {"tiny", "tiny-day1", "tiny-day2"}
        for d in (d1, d2):
            np.testing.assert_array_equal(s.ground_truth()["place_center"], d.ground_truth()["place_center"])
            assert list(d.unit_ids) == list(s.unit_ids) and d.subject_id == s.subject_id
            assert not np.array_equal(s.behavior("position")[1], d.behavior("position")[1])
            assert d.t_end == s.t_end  # the session's other arguments (duration) unchanged
        assert not np.array_equal(d1.behavior("position")[1], d2.behavior("position")[1])


def test_block_sizes_pool_the_files(tmp_path):
    path = G.make_session("tiny", SPEC, tmp_path)
    dense = G.make_session("dense", dict(SPEC, args=dict(SPEC["args"], rate_hz=6.0, seed=6)), tmp_path)

    def rule(*paths):
        out = []
        for w in (G.WINDOW["curr"], G.WINDOW["prev"]):
            counts = []
            for p in paths:
                with Session(p) as s:
                    counts.append(np.histogram(s.spikes()[0], bins=np.arange(s.t_start, s.t_end, w))[0])
            out.append(int(np.ceil(np.percentile(np.concatenate(counts), 99.9))) + 2)
        return tuple(out)

    assert G.block_sizes(path) == rule(path)
    both = G.block_sizes(path, dense)
    assert both == rule(path, dense)
    assert both[0] > G.block_sizes(path)[0]  # the denser day raises the pooled percentile


def test_wins_ties_losses_band():
    assert M._wtl([0.1, 0.2, 0.3], [0.1004, 0.19, 0.31]) == "1/1/1"
    assert M._wtl([0.5], [0.5]) == "0/1/0"
