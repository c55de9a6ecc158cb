"""bench/order_bits.py: the order-free bound counts each window's distinct within-bin orders."""

import itertools
import math
import sys
from pathlib import Path

import numpy as np

from neurofm.data.tokenizer import log_orderings
from neurofm.recipes import neuroformer as recipe
from neurofm.tokens import EOS, PAD, SOS

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import order_bits  # noqa: E402


def _brute(ids, dts):
    """log of the number of distinct sequences made by permuting spikes inside their dt bin."""
    total = 0.0
    for b in sorted(set(d for i, d in zip(ids, dts) if i >= 3)):
        units = [i for i, d in zip(ids, dts) if i >= 3 and d == b]
        total += math.log(len(set(itertools.permutations(units))))
    return total


def test_log_orderings_counts_distinct_orders_per_bin():
    # bin 1: units 3, 5, 5, 7 (4! / 2! = 12 orders); bin 2: 4, 9 (2); bin 3: one spike; then EOS, PAD
    ids = np.array([[SOS, 3, 5, 5, 7, 4, 9, 8, EOS, PAD], [SOS, EOS, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD]])
    dts = np.array([[0, 1, 1, 1, 1, 2, 2, 3, 11, 12], [0, 11, 12, 12, 12, 12, 12, 12, 12, 12]])
    got = log_orderings(ids, dts)
    np.testing.assert_allclose(got, [_brute(ids[0], dts[0]), 0.0])
    np.testing.assert_allclose(got[0], math.log(12 * 2))


def test_order_free_bits_takes_out_the_sort_and_keeps_the_rest():
    """A model that only knows the tokenizer's sort gains log2 N per window in the tokenizer's order
    and nothing order-free; an order-blind model's gain is order-free whole."""
    g = np.random.default_rng(0)
    log_n = g.uniform(0, 5, 50)  # nats per window
    null = g.uniform(-40, -10, 50)  # the firing-rate null's log p of each window's spikes
    n_spikes = 400
    sort_only = np.stack([null + log_n, null - 50.0, log_n], 1)  # canonical, one shuffle, log N
    free = recipe.order_free_bits(sort_only, null.sum(), n_spikes)
    assert abs(free["order_free"]) < 1e-12
    np.testing.assert_allclose(free["order_info"], log_n.sum() / (n_spikes * math.log(2)))
    gain = g.uniform(0, 2, 50)
    blind = np.stack([null + gain, null + gain, log_n], 1)
    np.testing.assert_allclose(recipe.order_free_bits(blind, null.sum(), n_spikes)["order_free"],
                               gain.sum() / (n_spikes * math.log(2)))


class _FakeDM:
    """Windows whose current spikes come from the unit that fired in the previous window
    (``coupled``), or from an independent unit."""

    splits = None

    def __init__(self, coupled: bool, n_units: int = 6):
        import torch

        self.batches = {}
        g = np.random.default_rng(0)
        for k, name in enumerate(("train", "valid", "test")):
            prev_unit = g.integers(0, n_units, 400)
            cur = prev_unit if coupled else g.integers(0, n_units, 400)
            id_prev = np.stack([prev_unit + 3, np.full(400, EOS)], 1)
            target = np.stack([cur + 3, cur + 3, np.full(400, EOS)], 1)
            self.batches[name] = [{"id_prev": torch.as_tensor(id_prev), "target_id": torch.as_tensor(target)}]

    def loader(self, name):
        return self.batches[name]


def test_history_glm_finds_what_the_previous_window_says_and_nothing_else():
    told = order_bits.history_glm_bits(_FakeDM(coupled=True), 6)
    assert told["history_glm_bits"] > 1.5  # log2(6) = 2.58 bits when the unit is fully told
    blind = order_bits.history_glm_bits(_FakeDM(coupled=False), 6)
    assert abs(blind["history_glm_bits"]) < 0.1
