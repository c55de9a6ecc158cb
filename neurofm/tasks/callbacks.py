"""Callbacks shared by the fine-tuning tasks of both model families."""

from __future__ import annotations

import lightning as L
import torch

__all__ = ["StartingPoint"]


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
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        monitor = getattr(pl_module, "monitor", None)
        if trainer.global_step > 0 or monitor is None or trainer.datamodule is None:
            return
        scores = pl_module.validation_scores(trainer.datamodule.val_dataloader())
        pl_module.starting_scores = scores
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=0)
        score = torch.tensor(scores.get(monitor, float("nan")))
        if not bool(torch.isfinite(score)):
            return  # nothing to compare with: the first check decides
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and cb.dirpath and cb.save_top_k == 1:
                path = cb.format_checkpoint_name({})
                trainer.save_checkpoint(path)
                cb.best_k_models = {path: score}
                cb.best_model_path = cb.kth_best_model_path = path
                cb.best_model_score = cb.kth_value = cb.current_score = score
            elif isinstance(cb, EarlyStopping) and cb.monitor == monitor:
                cb.best_score = score
                cb.wait_count = 0
