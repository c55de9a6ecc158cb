"""Callbacks shared by the fine-tuning tasks of both model families."""

from __future__ import annotations

from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from neurofm.report import r2_standard_error, time_blocks

__all__ = ["EarlyStoppingAfterValidation", "StartingPoint", "starting_margin"]


class EarlyStoppingAfterValidation(EarlyStopping):
    """Lightning's EarlyStopping that waits for its metric until validation has run once (the
    rule Lightning's ModelCheckpoint follows): before any validation (e.g. a run that ends, or
    an epoch that passes, before the first check) there is nothing to compare. After one, a
    missing metric is still an error. The one early stopping of every run: what
    :func:`neurofm.experiment.build_trainer` adds, and what a fine-tuning task built with a
    patience brings itself (:meth:`neurofm.tasks.barista.BaristaFinetuneTask.configure_callbacks`)."""

    def _run_early_stopping_check(self, trainer) -> None:
        validated = getattr(trainer.fit_loop.epoch_loop.val_loop, "_has_run", True)  # Lightning 2.x
        if self.monitor not in trainer.callback_metrics and not validated:
            return
        super()._run_early_stopping_check(trainer)


def starting_margin(windows: Mapping[str, tuple[Any, Any, Any]], block_s: float = 10.0, seed: int = 0) -> float:
    """How much a later validation check must beat the fine-tuning starting state by to replace it.

    ``windows`` maps each regression target to ``(prediction (n, D), target (n, D), time (n,))``
    of the starting state on the validation windows (times in s; windows of different sessions
    offset so their blocks stay apart). The margin is the noise of the start's own validation
    score: one block-bootstrap standard error of its R2 over ``block_s`` blocks of the validation
    period (:func:`neurofm.report.r2_standard_error`, the decode report's bootstrap). Model
    selection takes the best of ~20 noisy checks on one validation block, which favours lucky
    ones; a later check within one standard error of the start is not evidence that training
    helped (issue 10: 4 of 15 harness folds lost to ridge that way). 0 when the noise cannot be
    estimated (fewer than 2 blocks): the plain comparison.
    """
    names = [k for k, (_, y, _) in windows.items() if len(y) >= 2]
    if not names:
        return 0.0
    times = [np.asarray(windows[k][2], dtype=np.float64).ravel() for k in names]
    ids = np.split(time_blocks(np.concatenate(times), block_s), np.cumsum([len(t) for t in times])[:-1])
    se = r2_standard_error({k: (windows[k][0], windows[k][1], b) for k, b in zip(names, ids)}, seed=seed)
    return se if np.isfinite(se) else 0.0


class StartingPoint(L.Callback):
    """Model selection that can keep the state fine-tuning starts from.

    Lightning validates only after training steps, so a checkpoint-on-best run always returns a
    trained state, even when every step made the validation score worse than the start (a
    pretrained backbone whose read-out starts at the closed-form probe: Neuroformer's count
    heads at ridge, issue 10; BaRISTA's head at the linear probe on the frozen encoder's
    features). Before the first optimizer step of a fresh run (not a resumed one) this scores
    the starting state on the validation block with the task's ``validation_scores(loader)``
    (the metrics its validation checks log, on the same windows under the same rule), logs them
    at step 0 (``pl_module.starting_scores`` too), saves the state as the monitor's best
    checkpoint and makes it early stopping's best score: a later check must beat it to replace
    it, patience counts from it, and when none does, the starting state is what is restored,
    evaluated and exported. The task names its metric in ``monitor`` (higher is better).
    "Beat" means by more than :func:`starting_margin` (one block-bootstrap standard error of the
    start's validation score, logged as ``val/starting_margin``) when the task reports its scored
    windows through ``validation_scores(loader, windows=...)``; the checkpoint and early-stopping
    thresholds start at start + margin.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if trainer.global_step > 0 or monitor is None or trainer.datamodule is None:
            return
        windows: dict = {}
        scores = pl_module.validation_scores(trainer.datamodule.val_dataloader(), windows=windows)
        scores["val/starting_margin"] = starting_margin(windows, pl_module.hparams.get("label_chunk_s", 10.0))
        pl_module.starting_scores = scores
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=0)
        score = torch.tensor(scores.get(monitor, float("nan")))
        if not bool(torch.isfinite(score)):
            return  # nothing to compare with: the first check decides
        threshold = score + scores["val/starting_margin"]  # a later check must beat this
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and cb.dirpath and cb.save_top_k == 1:
                path = cb.format_checkpoint_name({})
                trainer.save_checkpoint(path)
                cb.best_k_models = {path: threshold}
                cb.best_model_path = cb.kth_best_model_path = path
                cb.kth_value = threshold
                cb.best_model_score = cb.current_score = score
            elif isinstance(cb, EarlyStopping) and cb.monitor == monitor:
                cb.best_score = threshold
                cb.wait_count = 0
