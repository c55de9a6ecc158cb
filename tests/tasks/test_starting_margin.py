"""Fine-tuning leaves its starting state only for a validation gain above the start's noise
(issue 10): :func:`neurofm.tasks.callbacks.starting_margin` and how :class:`StartingPoint` uses it."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from neurofm.report import r2_standard_error, time_blocks
from neurofm.tasks.callbacks import StartingPoint, starting_margin

MONITOR = "val/behavior_r2"


def _windows(noise: float, seconds: float = 300.0, seed: int = 0):
    """2-D targets on 0.1 s windows; predictions = target + noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.1, seconds, 0.1)
    y = np.stack([np.sin(t / 7.0), np.cos(t / 11.0)], 1) + 0.1 * rng.standard_normal((len(t), 2))
    return {"position": (y + noise * rng.standard_normal(y.shape), y, t)}


def test_margin_is_the_block_bootstrap_standard_error_of_the_start():
    w = _windows(0.5)
    pred, y, t = w["position"]
    margin = starting_margin(w, block_s=10.0)
    assert margin == pytest.approx(r2_standard_error({"position": (pred, y, time_blocks(t, 10.0))}))
    assert 0 < margin < 0.5
    assert starting_margin(_windows(1.5), block_s=10.0) > margin  # a noisier start needs a larger gain
    assert starting_margin(w, block_s=1e4) == 0.0  # one block: no noise estimate, the plain comparison
    assert starting_margin({}) == 0.0


def _start(tmp_path, start_r2: float, w):
    """StartingPoint.on_train_start on a stand-in trainer with the run's real checkpoint and
    early-stopping callbacks; the module's starting state scores ``start_r2`` on ``w``."""

    def validation_scores(loader, windows=None):
        if windows is not None:
            windows.update(w)
        return {MONITOR: start_r2}

    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
    stop = EarlyStopping(monitor=MONITOR, mode="max", patience=2)
    trainer = SimpleNamespace(global_step=0, datamodule=SimpleNamespace(val_dataloader=lambda: None), loggers=[],
                              callbacks=[ckpt, stop], save_checkpoint=lambda p: open(p, "w").close(),
                              strategy=SimpleNamespace(reduce_boolean_decision=lambda b: b))
    module = SimpleNamespace(monitor=MONITOR, validation_scores=validation_scores, hparams={"label_chunk_s": 10.0})
    StartingPoint().on_train_start(trainer, module)
    return trainer, module, ckpt, stop


def test_a_later_check_replaces_the_start_only_by_more_than_the_margin(tmp_path):
    w, start = _windows(0.5), 0.40
    trainer, module, ckpt, stop = _start(tmp_path, start, w)
    margin = module.starting_scores["val/starting_margin"]
    assert margin == pytest.approx(starting_margin(w, 10.0)) and margin > 0.01
    assert float(ckpt.best_model_score) == pytest.approx(start)  # the start's own score is what is recorded

    small = torch.tensor(start + 0.5 * margin)  # better than the start, within its noise: keep the start
    assert not ckpt.check_monitor_top_k(trainer, small)
    assert stop._evaluate_stopping_criteria(small)[0] is False and stop.wait_count == 1  # patience counts

    large = torch.tensor(start + 1.5 * margin)  # beats the start by more than its noise: the later state
    assert ckpt.check_monitor_top_k(trainer, large)
    stop._evaluate_stopping_criteria(large)
    assert stop.wait_count == 0 and float(stop.best_score) == pytest.approx(float(large))
