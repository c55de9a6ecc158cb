"""The behaviour heads' count read-out (BehaviorVariable.count_bin): what it reads, how it starts,
how it survives vocabulary changes, save/load and packing."""

import dataclasses

import numpy as np
import torch

from neurofm.data.datasets import pack_spikes
from neurofm.models.neuroformer import N_SPECIAL, Neuroformer, window_count_features
from neurofm.testing import synthetic_batch
from tests.models.test_neuroformer import tiny_config

POS = dict(name="position", dim=2, target=True, count_bin=0.01)


def _setup(seed=0):
    c = tiny_config(behavior=[POS], contrastive=dict(enabled=False))
    data = dataclasses.replace(c, block_size=dict(id=12, prev_id=16))
    b = synthetic_batch(data, 6, rate_hz=40.0, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    return c, Neuroformer(c).eval(), b


def test_count_features_count_every_real_token_by_unit_and_bin():
    c, _, b = _setup()
    x = window_count_features(b, c.n_units, c.window, 0.01)  # 60 ms span / 10 ms = 6 bins, unit-major
    assert x.shape == (6, c.n_units * 6)
    for w in range(6):
        ids = torch.cat([b["id"][w], b["id_prev"][w]])
        units = ids[ids >= N_SPECIAL] - N_SPECIAL
        per_unit = x[w].view(c.n_units, 6).sum(1)
        np.testing.assert_array_equal(per_unit.numpy(), np.bincount(units.numpy(), minlength=c.n_units))
    # current-window spikes land in bins 0-2, previous-window spikes in bins 2-5 (dt resolution)
    cur = {"id": b["id"], "dt": b["dt"], "id_prev": torch.zeros_like(b["id_prev"]), "dt_prev": b["dt_prev"]}
    assert window_count_features(cur, c.n_units, c.window, 0.01).view(6, c.n_units, 6)[..., 3:].sum() == 0
    # packed batches give the same features
    torch.testing.assert_close(window_count_features(pack_spikes(b), c.n_units, c.window, 0.01), x)


def test_count_head_starts_at_zero_and_adds_a_linear_readout():
    c, m, b = _setup()
    assert "position" in m.count_heads and m.count_heads["position"].weight.abs().sum() == 0
    base = m(b)["behavior"]["position"]
    pooled_only = m.behavior_heads["position"](m(b)["pooled"])
    torch.testing.assert_close(base, pooled_only)  # zero count head: the pooled head alone (stats unset)
    with torch.no_grad():
        m.count_heads["position"].weight.fill_(0.5)
    x = window_count_features(b, c.n_units, c.window, 0.01)
    torch.testing.assert_close(m(b)["behavior"]["position"] - base, 0.5 * x.sum(1, keepdim=True).expand(-1, 2))
    assert any(p is m.count_heads["position"].weight for p in m.stage_parameters()["heads"])


def test_count_head_survives_extend_subset_and_save_load(tmp_path):
    c, m, b = _setup()
    with torch.no_grad():
        m.count_heads["position"].weight.normal_()
    before = m(b)["behavior"]["position"]
    n0 = m.config.n_units
    m.extend_vocab(3)
    assert m.count_heads["position"].weight.shape[1] == (n0 + 3) * 6
    torch.testing.assert_close(m(b)["behavior"]["position"], before)  # new units' columns are zero
    m.save_pretrained(tmp_path / "m")
    again = Neuroformer.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(again(b)["behavior"]["position"], before)
    m.subset_vocab(list(range(n0)))
    torch.testing.assert_close(m(b)["behavior"]["position"], before)


def test_add_behavior_with_count_bin_adds_a_count_head():
    c = tiny_config(contrastive=dict(enabled=False))
    m = Neuroformer(c)
    m.add_behavior([dict(name="speed", dim=1, target=True, count_bin=0.02)])
    assert m.count_heads["speed"].weight.shape == (1, c.n_units * 3)
    old = Neuroformer(tiny_config(behavior=[dict(name="speed", dim=1, target=True)], contrastive=dict(enabled=False)))
    assert len(old.count_heads) == 0  # count_bin 0 (old checkpoints): no count head, same keys as before
