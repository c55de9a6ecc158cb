"""Callbacks shared by the fine-tuning tasks of both model families."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from neurofm.progress import PROGRESS_EVERY_S
from neurofm.report import paired_gain, r2_standard_error

__all__ = ["EarlyStoppingAfterValidation", "LogProgress", "StartingPoint", "SELECTION_RULE", "SELECTION_SE", "selection_windows"]


class LogProgress(L.Callback):
    """Training progress as plain lines on stderr, for a run whose stderr is a log file, not a
    terminal (a progress bar's redraws land there as one final frame: a 15-min BaRISTA
    pretraining showed nothing until its end). Once training has run ``every_s`` seconds, a
    line every ``every_s`` seconds (default :data:`~neurofm.progress.PROGRESS_EVERY_S`; the step, of how many, the epoch, the last training loss,
    time so far and left) and one when training ends; a short run prints nothing. Rank 0 only."""

    def __init__(self, every_s: float | None = None):
        self.every_s = PROGRESS_EVERY_S if every_s is None else float(every_s)
        self._start = self._last = 0.0
        self._first_step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step

    def _line(self, trainer, now: float) -> str:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        done = step - self._first_step
        of = f" of {int(total):,}" if math.isfinite(total) else ""
        left = (f", about {(now - self._start) * (total - step) / done:.0f} s left"
                if done > 0 and math.isfinite(total) else "")
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        loss = f", loss {float(loss):.4g}" if loss is not None else ""
        epochs = f" of {trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return (f"neurofm: training: step {step:,}{of}, epoch {trainer.current_epoch + 1}{epochs}{loss}, "
                f"{now - self._start:.0f} s{left}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s and trainer.is_global_zero:
            self._last = now
            print(self._line(trainer, now), file=sys.stderr, flush=True)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._last > self._start and trainer.is_global_zero:
            now = time.monotonic()
            print(f"neurofm: training: done, {trainer.global_step:,} steps in {now - self._start:.0f} s"
                  + _early_stop_note(trainer), file=sys.stderr, flush=True)


def _early_stop_note(trainer) -> str:
    """`` (stopped early: ...)`` when early stopping ended the run before its step budget: a
    fine-tune's log read "step 91 of 300" and then "done, 150 steps" with no word why."""
    total = trainer.estimated_stepping_batches
    for cb in trainer.callbacks:
        if isinstance(cb, EarlyStopping) and cb.patience and cb.wait_count >= cb.patience:
            of = f"of {int(total):,} planned: " if math.isfinite(total) and trainer.global_step < total else ""
            return (f" ({of}stopped early, {cb.monitor} did not improve for {cb.wait_count} validation checks: "
                    f"trainer.early_stopping_patience)")
    return ""


class EarlyStoppingAfterValidation(EarlyStopping):
    """Lightning's EarlyStopping that waits for its metric until validation has run once (the
    rule Lightning's ModelCheckpoint follows): before any validation (e.g. a run that ends, or
    an epoch that passes, before the first check) there is nothing to compare. After one, a
    missing metric is still an error. The one early stopping of every run: what
    :func:`neurofm.experiment.build_trainer` adds, and what a fine-tuning task built with a
    patience brings itself (:meth:`neurofm.tasks.barista.BaristaFinetuneTask.configure_callbacks`)."""

    def on_train_start(self, trainer, pl_module) -> None:
        # Resumed from the checkpoint of a run this rule stopped (its state says so): that run is
        # finished. Lightning alone would train one more epoch, see no improvement and stop again,
        # so re-running a finished run (resume=auto) trained an epoch and moved its results.
        if self.stopped_epoch > 0:
            trainer.should_stop = True

    def _run_early_stopping_check(self, trainer) -> None:
        validated = getattr(trainer.fit_loop.epoch_loop.val_loop, "_has_run", True)  # Lightning 2.x
        if self.monitor not in trainer.callback_metrics and not validated:
            return
        super()._run_early_stopping_check(trainer)

#: How many paired standard errors the best check must gain over the start. It is the best of
#: ~20 checks (BUDGET_CHECKS): with no real gain the largest of 20 independent standard-normal
#: gains is ~1.87 SE on average, so a one-SE bar keeps a lucky check most of the time (the
#: issue-10 harness at one SE: place-dense-120 fold 2 kept a check +0.067 / SE 0.056 on
#: validation that scored 0.038 below its start's ridge on test).
SELECTION_SE = 2.0

#: the model-selection rule of fine-tuning (both families), as metrics.json and the docs state it
SELECTION_RULE = ("the validation check with the best score replaces the starting state only when its gain over "
                  f"the start exceeds {SELECTION_SE:g} paired block-bootstrap standard errors of that gain (both scored "
                  "on the same resampled validation blocks; the bar allows for picking the best of ~20 checks); only "
                  "that one check is compared with the start")


def selection_windows(windows: Mapping[str, tuple[Any, Any, Any]], blocks_of: Callable[[np.ndarray], np.ndarray]
                      ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``name -> (prediction, target, block id)`` of a validation check, in a fixed order.

    ``windows`` maps each target to ``(prediction (n, ...), target (n, ...), time (n,))`` (times in
    s; windows of different sessions offset so their blocks stay apart), in whatever order the
    loader gave them; each target's windows are put in time order (ties by target value) so two
    checks of the same windows line up row for row, and ``blocks_of`` (the task's block rule)
    numbers the blocks of all targets' times together (the same id is the same block for every
    target). Targets with fewer than 2 windows are left out.
    """
    names = [k for k, (_, y, _) in windows.items() if len(y) >= 2]
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if not names:
        return out
    sorted_ = []
    for k in names:
        p, y, t = (np.asarray(a) for a in windows[k])
        t = t.astype(np.float64).ravel()
        order = np.lexsort((y.reshape(len(y), -1)[:, 0], t)) if y.size else np.arange(len(t))
        sorted_.append((p[order], y[order], t[order]))
    ids = np.split(np.asarray(blocks_of(np.concatenate([t for *_, t in sorted_]))),
                   np.cumsum([len(t) for *_, t in sorted_])[:-1])
    for k, (p, y, _), b in zip(names, sorted_, ids):
        out[k] = (p, y, b)
    return out


def _to_state(w: Mapping[str, tuple] | None) -> dict | None:
    """Windows as tensors (what a checkpoint loaded with ``weights_only=True`` may hold)."""
    return None if w is None else {k: tuple(torch.as_tensor(np.ascontiguousarray(a)) for a in v) for k, v in w.items()}


def _from_state(w: Mapping[str, tuple] | None) -> dict | None:
    return None if w is None else {k: tuple(a.numpy() for a in v) for k, v in w.items()}


class StartingPoint(L.Callback):
    """Model selection of fine-tuning (both families): the starting state, or the best later
    check when it truly improves on it.

    Lightning validates only after training steps, so a checkpoint-on-best run always returns a
    trained state, even when every step made the validation score worse than the start (a
    pretrained backbone whose read-out starts at the closed-form probe: Neuroformer's count
    heads at ridge, issue 10; BaRISTA's head at the linear probe on the frozen encoder's
    features). Before the first optimizer step of a fresh run (not a resumed one) this scores
    the starting state on the validation block with the task's ``validation_scores(loader,
    windows=...)`` (the metrics its validation checks log, on the same windows under the same
    rule), logs them at step 0 (``pl_module.starting_scores`` too), saves the state as the
    monitor's best checkpoint (and as ``start.ckpt`` beside it) and makes it early stopping's
    best score: a later check must beat it to become the best, and patience counts from it.

    The best check is not kept on its score alone (:data:`SELECTION_RULE`): the validation block
    is small, and the best of ~20 noisy checks beats the start by luck. Each check's per-window
    validation predictions (the task's ``validation_windows``, set by its validation epoch end)
    are compared with the start's on the same windows (:func:`neurofm.report.paired_gain`: the
    same block-bootstrap resamples score both, so the between-block variance they share cancels);
    each check logs ``val/paired_gain`` and ``val/paired_se``. When training ends, the check with
    the best validation score (the one checkpointing picked) is kept only if its paired gain
    exceeds :data:`SELECTION_SE` (2) paired standard errors; otherwise the starting state is what
    is restored, evaluated and exported. Only that one check is compared with the start, but its
    gain is that of the best of ~20 checks, which under no real gain averages ~1.87 SE: hence
    two, not one. With fewer than 2 validation blocks (no standard
    error) the plain comparison decides. The decision goes to ``pl_module.selection`` (metrics.json
    ``training.selection``) and one stderr line. The start's and the best check's windows travel
    in the callback's checkpoint state (a resumed run decides the same way); nothing is written
    per check.
    """

    def __init__(self, n_boot: int = 1000, seed: int = 0):
        self.n_boot, self.seed = int(n_boot), int(seed)
        self._start: dict | None = None  # name -> (prediction, target, block)
        self._best: dict | None = None  # the best check's windows, once one beats the start
        self.start_score = float("nan")
        self.best_score = float("nan")
        self.best_step = 0
        self.start_path = ""

    # -- state (a resumed run compares with the same start) ----------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"start": _to_state(self._start), "best": _to_state(self._best), "start_score": self.start_score,
                "best_score": self.best_score, "best_step": self.best_step, "start_path": self.start_path}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._start, self._best = _from_state(state.get("start")), _from_state(state.get("best"))
        self.start_score = float(state.get("start_score", float("nan")))
        self.best_score = float(state.get("best_score", float("nan")))
        self.best_step = int(state.get("best_step", 0))
        self.start_path = str(state.get("start_path", ""))

    def _task(self, pl_module) -> str:
        return "classification" if getattr(pl_module, "monitor", None) == "val/auroc" else "regression"

    def _windows(self, pl_module, windows: Mapping[str, tuple]) -> dict:
        return selection_windows(windows, pl_module.validation_blocks)

    # -- hooks -------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if trainer.global_step > 0 or monitor is None or trainer.datamodule is None:
            return
        windows: dict = {}
        scores = pl_module.validation_scores(trainer.datamodule.val_dataloader(), windows=windows)
        pl_module.starting_scores = scores
        for logger in trainer.loggers:
            logger.log_metrics(scores, step=0)
        score = torch.tensor(scores.get(monitor, float("nan")))
        if not bool(torch.isfinite(score)):
            return  # nothing to compare with: the first check decides
        self._start = self._windows(pl_module, windows)
        self.start_score = self.best_score = float(score)
        self._best, self.best_step = None, 0
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and cb.dirpath and cb.save_top_k == 1:
                path = cb.format_checkpoint_name({})
                trainer.save_checkpoint(path)
                # the start, apart from the file checkpointing overwrites with each new best
                self.start_path = str(Path(path).with_name("start.ckpt"))
                trainer.save_checkpoint(self.start_path)
                cb.best_k_models = {path: score}
                cb.best_model_path = cb.kth_best_model_path = path
                cb.kth_value = score
                cb.best_model_score = cb.current_score = score
            elif isinstance(cb, EarlyStopping) and cb.monitor == monitor:
                cb.best_score = score
                cb.wait_count = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if trainer.sanity_checking or monitor is None or self._start is None:
            return
        value = trainer.callback_metrics.get(monitor)
        windows = getattr(pl_module, "validation_windows", None)
        if value is None or windows is None:
            return
        score = float(value)
        check = self._windows(pl_module, windows)
        paired = paired_gain(self._start, check, task=self._task(pl_module), n_boot=self.n_boot, seed=self.seed)
        # at the step Lightning logs this check's metrics at (one before global_step mid-epoch)
        step = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped",
                       trainer.global_step)
        for logger in trainer.loggers:
            logger.log_metrics({"val/paired_gain": paired["gain"], "val/paired_se": paired["paired_se"]}, step=step)
        # the check checkpointing would keep: strictly better than every earlier one (and the start)
        if math.isfinite(score) and score > self.best_score:
            self.best_score, self.best_step, self._best = score, int(trainer.global_step), check

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if monitor is None or self._start is None:
            return
        sel: dict[str, Any] = {"rule": SELECTION_RULE, "monitor": monitor, "start_score": self.start_score}
        if self._best is None:
            sel.update(best_check_step=None, best_check_score=None, gain=None, paired_se=None,
                       kept="start", selected_step=0, why="no validation check scored above the start")
        else:
            p = paired_gain(self._start, self._best, task=self._task(pl_module), n_boot=self.n_boot, seed=self.seed)
            gain, se = p["gain"], p["paired_se"]
            keep = gain > SELECTION_SE * se if math.isfinite(se) else gain > 0
            # for reference: the start's own (unpaired) SE, the margin the rule before this one used
            unpaired = r2_standard_error(self._start, seed=self.seed) if self._task(pl_module) == "regression" \
                else float("nan")
            sel.update(best_check_step=self.best_step, best_check_score=self.best_score, gain=gain,
                       paired_se=se if math.isfinite(se) else None, n_blocks=p["n_blocks"],
                       start_unpaired_se=unpaired if math.isfinite(unpaired) else None,
                       kept="check" if keep else "start", selected_step=self.best_step if keep else 0)
            if not math.isfinite(se):
                sel["why"] = f"{p['n_blocks']} validation block(s): no paired standard error, the plain comparison"
            else:
                sel["why"] = (f"paired gain {gain:+.3g} {'>' if keep else '<='} {SELECTION_SE:g} x paired SE {se:.2g} "
                              f"({p['n_blocks']} validation blocks)")
            if not keep:
                self._restore_start(trainer, monitor)
            else:
                ckpt = next((cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor
                             and cb.best_model_score is not None), None)
                if ckpt is not None and abs(float(ckpt.best_model_score) - self.best_score) > 1e-6:
                    sel["why"] += (f"; note: the best checkpoint on disk scored {float(ckpt.best_model_score):.4f}, "
                                   f"not the compared check's {self.best_score:.4f}")
        pl_module.selection = sel
        if trainer.is_global_zero:
            what = (f"kept step {sel['selected_step']}" if sel["kept"] == "check"
                    else "kept the starting state (step 0)")
            best = "" if self._best is None else f", best check step {self.best_step} {self.best_score:.4f}"
            print(f"neurofm: model selection: {what}: {monitor} start {self.start_score:.4f}{best}; {sel['why']}",
                  file=sys.stderr)

    def _restore_start(self, trainer: L.Trainer, monitor: str) -> None:
        """Point the monitor's checkpoint at the starting state (what ``_restore_best`` loads)."""
        for cb in trainer.callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and self.start_path \
                    and Path(self.start_path).exists():
                cb.best_model_path = self.start_path
                cb.best_model_score = torch.tensor(self.start_score)
