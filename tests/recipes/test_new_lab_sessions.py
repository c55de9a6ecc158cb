"""What a new lab's own recordings hold that the shipped samples do not, with the defaults a
user gets: tracking with NaN gaps, ... Tiny hand-made sessions, no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from neurofm.config import from_dict
from neurofm.data.session import Session, SessionWriter
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
from neurofm.recipes import neuroformer as recipe
from tests.recipes.test_neuroformer_defaults import DURATION, FEW, SMALL


def _session_with_tracking_gaps(path: Path) -> str:
    """Poisson spikes and a 2-D position (cm, 30 Hz) moving throughout, with tracking lost
    (NaN rows) for 2 s every 10 s, as camera tracking does."""
    rng = np.random.default_rng(3)
    n = rng.poisson(5.0 * DURATION * 4)
    times, units = np.sort(rng.uniform(0.0, DURATION, n)), rng.integers(0, 4, n)
    ts = np.arange(0.0, DURATION, 1 / 30)
    xy = np.stack([100 + 50 * np.sin(ts / 2), 100 + 50 * np.cos(ts / 3)], axis=1)
    xy[(ts % 10.0) < 2.0] = np.nan
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, units, t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, xy, unit="cm")
    return str(path)


def test_finetuning_on_position_with_tracking_gaps_standardises_on_finite_samples(tmp_path):
    """NaN rows in /behavior/position made the standardising mean and std NaN, so every target
    was NaN and `neurofm finetune` stopped at the count head's ridge with 'Ridge.fit: X or y
    contains NaN/inf'. The fine-tuning defaults, up to the task the trainer would fit."""
    path = _session_with_tracking_gaps(tmp_path / "gaps.h5")
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": 4, "units": [f"gaps/u{i}" for i in range(4)],
                                           "block_size": {"id": 12, "prev_id": 20}})
    folder = str(Neuroformer(config).save_pretrained(tmp_path / "pre"))
    cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], overrides=FEW))
    dm = recipe.datamodule(cfg)
    model = recipe.task(cfg, dm).model  # standardises, starts the count read-out at ridge
    var = next(v for v in model.config.behavior if v.name == "position")
    mean, std = var.mean, var.std
    with Session(path) as s:
        ts, xy = s.behavior("position")
        train = dm.splits(s)["train"].contains(ts, ts) & np.isfinite(xy).all(1)
    np.testing.assert_allclose(mean, xy[train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, xy[train].std(0), rtol=1e-5)
    assert torch.isfinite(model.count_heads["position"].weight).all()
    assert model.count_heads["position"].weight.abs().sum() > 0
