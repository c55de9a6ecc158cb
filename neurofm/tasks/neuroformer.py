"""Lightning task for Neuroformer: pretraining and behaviour fine-tuning.

The model (:class:`neurofm.models.neuroformer.Neuroformer`) stays a plain ``nn.Module``; this
task adds the objectives, the optimiser (AdamW (0.9, 0.95), decay on Linear weights only), the
warm-up + cosine schedule sized from ``trainer.estimated_stepping_batches``, logging and the
NaN guard. Gradient clipping (norm 1.0, DESIGN.md 3) comes from the Trainer
(``gradient_clip_val``); if the Trainer sets none, :meth:`configure_gradient_clipping`
applies ``grad_clip`` itself, so the reference's clipping is never silently lost
(:func:`~neurofm.tasks.clipping.clip_gradients`: also with the fused AdamW under bf16).

Modes:

* ``"pretrain"``: next-ID + next-dt + contrastive + behaviour terms (whatever the batch has).
* ``"finetune"``: behaviour terms only (``objectives`` overrides), optionally with a frozen
  backbone (``freeze_backbone``) that is unfrozen stage by stage from the top every
  ``unfreeze_every`` epochs (gradual unfreezing). Frozen parameters stay in the optimizer
  with ``grad = None``, which AdamW skips, so unfreezing needs no new optimizer.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor

from neurofm.data.splits import LabelDraw
from neurofm.models.neuroformer import PAD, Neuroformer, NeuroformerConfig, batch_size, token_targets
from neurofm.report import time_blocks
from neurofm.tasks.callbacks import StartingPoint
from neurofm.tasks.clipping import clip_gradients
from neurofm.tasks.optim import NEUROFORMER_KNOBS, adamw, param_groups, warmup_cosine_scheduler

__all__ = ["NeuroformerTask"]

# Stages from the output down: the order gradual unfreezing releases them in.
_UNFREEZE_ORDER = ("self_att", "behavior", "stimulus", "state_history", "state", "embeddings")


class LabelSubset(LabelDraw):
    """Which training windows keep their behaviour labels (few-shot fine-tuning): the run's
    :class:`~neurofm.data.splits.LabelDraw` (the one definition, shared with the few-shot split
    and every baseline arm) for batches of tensors."""

    def __call__(self, session: torch.Tensor, interval: torch.Tensor) -> torch.Tensor:
        """``(B,)`` bool: which windows (session index, end time in s) are labelled."""
        keep = super().__call__(session.detach().cpu().numpy(), interval.detach().cpu().double().numpy())
        return torch.from_numpy(keep).to(session.device)


class NeuroformerTask(L.LightningModule):
    """Train a :class:`Neuroformer` on batches of the spike data module.

    Args:
        config: the model config (dataclass or dict); stored in the checkpoint's
            hyperparameters so ``NeuroformerTask.load_from_checkpoint(path)`` rebuilds it.
        model: an existing model (e.g. pretrained, possibly with an extended vocabulary) to
            train instead of a fresh one built from ``config``.
        mode: ``"pretrain"`` or ``"finetune"``.
        objectives: loss terms to train (``"id"``, ``"dt"``, ``"contrastive"``,
            ``"behavior"``); default: all in pretraining, ``("behavior",)`` in fine-tuning.
        lr, betas, weight_decay: AdamW (reference: 1e-4, (0.9, 0.95)); weight decay on
            ``nn.Linear`` weights only.
        warmup_fraction, max_warmup_steps, final_lr_ratio: linear warm-up over this fraction
            of the run's optimizer steps (capped), then cosine to ``final_lr_ratio * lr``.
        grad_clip: gradient-norm clip used when the Trainer sets no ``gradient_clip_val``.
        freeze_backbone: fine-tuning: train only the heads (and ``trainable`` prefixes).
        unfreeze_every: with ``freeze_backbone``, unfreeze one more stage (from the top) every
            this many epochs.
        trainable: parameter-name prefixes kept trainable under ``freeze_backbone`` (e.g.
            ``("tok_emb",)`` to learn the rows of newly added units).
        label_fraction, label_chunk_s, label_seed: few-shot decoding: only this fraction of the
            training windows keep their behaviour labels, in whole chunks of ``label_chunk_s``
            seconds (:class:`LabelSubset`); validation and test keep all labels.
        head_lr_ratio: the behaviour heads' learning rate is ``lr * head_lr_ratio`` (fine-tuning:
            a randomly initialised head on a pretrained backbone learns faster than the backbone
            may move, as BaRISTA fine-tunes with 1e-3 head / 1e-4 backbone; the Neuroformer
            fine-tuning recipe uses 1, as its heads start at the ridge solution, not at random).
        score_windows: ``(session, interval) -> bool`` per window, or None: the behaviour labels
            of training and validation windows (loss, R2) count only for these windows, the same
            kind the test scores (DESIGN.md 8; e.g. :class:`neurofm.recipes.neuroformer.MovingWindows`:
            trained on rest too, every decoder learns the rest position and scores below the null
            on moving test windows). Not saved.

    In fine-tuning with regression targets the task names its validation metric
    (:attr:`monitor`: ``val/behavior_r2``, the mean validation R2 over the regression targets),
    so the run checkpoints, early-stops and evaluates on decoding quality, not on the loss.
    """

    def __init__(
        self,
        config: NeuroformerConfig | Mapping[str, Any] | None = None,
        model: Neuroformer | None = None,
        *,
        mode: str = "pretrain",
        objectives: Sequence[str] | None = None,
        lr: float = NEUROFORMER_KNOBS["lr"],
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = NEUROFORMER_KNOBS["weight_decay"],
        warmup_fraction: float = NEUROFORMER_KNOBS["warmup_fraction"],
        max_warmup_steps: int = 2000,
        final_lr_ratio: float = NEUROFORMER_KNOBS["final_lr_ratio"],
        grad_clip: float = 1.0,
        freeze_backbone: bool = NEUROFORMER_KNOBS["freeze_backbone"],
        unfreeze_every: int | None = None,
        trainable: Sequence[str] = (),
        label_fraction: float = 1.0,
        label_chunk_s: float = 10.0,
        label_seed: int = 0,
        head_lr_ratio: float = NEUROFORMER_KNOBS["head_lr_ratio"],
        score_windows: Callable[[Tensor, Tensor], Tensor] | None = None,
    ):
        super().__init__()
        if model is None and config is None:
            raise ValueError("NeuroformerTask needs a config or a model")
        if model is None:
            model = Neuroformer(config)
        if mode not in ("pretrain", "finetune"):
            raise ValueError(f"mode must be 'pretrain' or 'finetune', got {mode!r}")
        if objectives is None:
            objectives = ("id", "dt", "contrastive", "behavior") if mode == "pretrain" else ("behavior",)
        unknown = set(objectives) - {"id", "dt", "contrastive", "behavior"}
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}; choose from id, dt, contrastive, behavior")
        # from_pretrained returns a model in eval mode, and Lightning keeps the modes it finds at the
        # start of fit: without this, fine-tuning a pretrained model would train with dropout off.
        self.model = model.train()
        self.objectives = tuple(objectives)
        self.save_hyperparameters({
            "config": model.config.to_dict(), "mode": mode, "objectives": list(self.objectives), "lr": lr,
            "betas": list(betas), "weight_decay": weight_decay, "warmup_fraction": warmup_fraction,
            "max_warmup_steps": max_warmup_steps, "final_lr_ratio": final_lr_ratio, "grad_clip": grad_clip,
            "freeze_backbone": freeze_backbone, "unfreeze_every": unfreeze_every, "trainable": list(trainable),
            "label_fraction": label_fraction, "label_chunk_s": label_chunk_s, "label_seed": label_seed,
            "head_lr_ratio": head_lr_ratio,
        })
        self.label_subset = LabelSubset(label_fraction, label_chunk_s, label_seed) if label_fraction < 1.0 else None
        self._val_behavior: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._val_times: dict[str, list[Tensor]] = {}
        self.validation_windows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.score_windows = score_windows
        if freeze_backbone:
            self._apply_freezing(n_unfrozen=0)

    # -- freezing ------------------------------------------------------------------------------
    def _apply_freezing(self, n_unfrozen: int) -> None:
        """Freeze the backbone except the top ``n_unfrozen`` stages, the heads and ``trainable``."""
        stages = self.model.stage_parameters()
        released = set(_UNFREEZE_ORDER[:n_unfrozen]) | {"heads"}
        trainable_ids = {id(p) for name in released for p in stages[name]}
        prefixes = tuple(self.hparams.trainable)
        for name, p in self.model.named_parameters():
            p.requires_grad_(id(p) in trainable_ids or (bool(prefixes) and name.startswith(prefixes)))

    def on_train_epoch_start(self) -> None:
        every = self.hparams.unfreeze_every
        if self.hparams.freeze_backbone and every:
            self._apply_freezing(n_unfrozen=self.current_epoch // every)

    @property
    def monitor(self) -> str | None:
        """``val/behavior_r2`` when fine-tuning regression targets (higher is better), else None."""
        if self.hparams.mode == "finetune" and "behavior" in self.objectives and any(
                v.task == "regression" for v in self.model.config.behavior_targets()):
            return "val/behavior_r2"
        return None

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        return self.model(batch)

    def _step(self, batch: Mapping[str, Any], stage: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
        out = self.model(batch)
        losses = self.model.loss(batch, out, terms=self.objectives)
        self._check_finite(losses, batch, stage)
        # no sync_dist: every rank validates on every window (neurofm.data.datamodule), so each
        # rank's epoch value already is the single-process one (a sum over ranks would double counts)
        opts = dict(batch_size=batch_size(batch), on_step=stage == "train", on_epoch=True)
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value.detach(), prog_bar=name == "total", **opts)
        for name, acc in _token_accuracy(batch, out, self.model.config).items():
            self.log(f"{stage}/{name}", acc, **opts)
        for key in ("n_dropped", "n_dropped_prev"):  # spikes lost to block overflow in this batch
            if key in batch:
                self.log(f"{stage}/{key}", batch[key].sum().float(), reduce_fx="sum", **opts)
        return losses, out

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        if (self.label_subset is not None or self.score_windows is not None) and batch.get("behavior_mask"):
            batch = {**batch, "behavior_mask": self._counted(batch)}
        losses, _ = self._step(batch, "train")
        return losses["total"]

    def _counted(self, batch: Mapping[str, Any], few_shot: bool = True) -> dict[str, Tensor]:
        """The behaviour masks with only the windows whose labels count: the few-shot subset
        and ``score_windows`` (e.g. moving windows only: the labels that count are the scored kind)."""
        keep = torch.ones(len(batch["interval"]), dtype=torch.bool, device=batch["id"].device)
        if few_shot and self.label_subset is not None:
            keep &= self.label_subset(batch["session"], batch["interval"]).to(keep.device)
        if self.score_windows is not None:
            keep &= self.score_windows(batch["session"], batch["interval"]).to(keep.device)
        return {k: m & keep for k, m in batch["behavior_mask"].items()}

    def _scored(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch with behaviour masks limited to ``score_windows`` (validation: the test's rule)."""
        if self.score_windows is None or not batch.get("behavior_mask"):
            return batch
        scored = self.score_windows(batch["session"], batch["interval"]).to(batch["id"].device)
        return {**batch, "behavior_mask": {k: m & scored for k, m in batch["behavior_mask"].items()}}

    def _regression_pairs(self, batch: Mapping[str, Any], out: Mapping[str, Any]):
        """``(name, prediction, target, counted)`` of each regression target on the batch's counted
        windows (``counted``: the (B,) bool mask of those windows, on the CPU)."""
        targets, masks = batch.get("behavior", {}), batch.get("behavior_mask", {})
        for v in self.model.config.behavior_targets():
            if v.task != "regression" or v.name not in targets:
                continue
            pred, y = out["behavior"][v.name].detach(), targets[v.name]
            keep = masks[v.name].bool() if v.name in masks else torch.ones(len(y), dtype=torch.bool, device=y.device)
            yield v.name, pred[keep].float().cpu(), y[keep].float().cpu(), keep.cpu()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        batch = self._scored(batch)
        _, out = self._step(batch, "val")
        t = _window_times(batch)
        for name, pred, y, counted in self._regression_pairs(batch, out):
            self._val_behavior.setdefault(name, []).append((pred, y))
            self._val_times.setdefault(name, []).append(t[counted])

    def on_validation_epoch_end(self) -> None:
        """R2 and Pearson r per behaviour target, pooled over all validation windows, and their
        mean R2 (``val/behavior_r2``, NaN when no target has 2 labelled windows: the monitor
        then counts this check as no improvement). The check's per-window predictions stay in
        :attr:`validation_windows` (model selection compares them with the start's)."""
        scores = _behavior_scores(self._val_behavior)
        for name, (r2, r) in scores.items():
            self.log(f"val/{name}_r2", r2)
            self.log(f"val/{name}_pearson", r)
        if self.monitor is not None and not self.trainer.sanity_checking:
            self.log("val/behavior_r2", _mean_r2(scores))
        self.validation_windows = _windows_of(self._val_behavior, self._val_times)
        self._val_behavior.clear()
        self._val_times.clear()

    def validation_blocks(self, times) -> np.ndarray:
        """Block id of each validation window (``times`` as :meth:`validation_scores` gives them):
        ``label_chunk_s`` blocks of the validation period, the decode report's block rule."""
        return time_blocks(times, self.hparams.get("label_chunk_s", 10.0))

    @torch.no_grad()
    def validation_scores(self, loader, windows: dict | None = None) -> dict[str, float]:
        """The validation metrics of :meth:`on_validation_epoch_end` (``val/<name>_r2``,
        ``val/<name>_pearson``, ``val/behavior_r2``) for the model as it is now, on ``loader``'s
        windows under the same scoring rule, outside Lightning's loop (eval mode, restored after):
        :class:`~neurofm.tasks.callbacks.StartingPoint` scores the state before the first optimizer step with it.
        ``windows``, when given, is filled with ``name -> (prediction, target, time)`` of the
        scored windows (time: window end, + 1e7 s per session), as model selection reads them
        (:func:`neurofm.tasks.callbacks.selection_windows`)."""
        was_training = self.training
        self.eval()
        pairs: dict[str, list[tuple[Tensor, Tensor]]] = {}
        times: dict[str, list[Tensor]] = {}
        try:
            for batch in loader:
                batch = self._scored(self.transfer_batch_to_device(batch, self.device, 0))
                out = self.model(batch)
                t = _window_times(batch)
                for name, pred, y, counted in self._regression_pairs(batch, out):
                    pairs.setdefault(name, []).append((pred, y))
                    times.setdefault(name, []).append(t[counted])
        finally:
            self.train(was_training)
        if windows is not None:
            windows.update(_windows_of(pairs, times))
        scores = _behavior_scores(pairs)
        out = {f"val/{n}_{k}": float(v) for n, (r2, r) in scores.items() for k, v in (("r2", r2), ("pearson", r))}
        out["val/behavior_r2"] = float(_mean_r2(scores))
        return out

    def configure_callbacks(self):
        # fine-tuning on a validation metric: score the starting point too (StartingPoint)
        return [StartingPoint()] if self.monitor is not None else []

    def _check_finite(self, losses: Mapping[str, Tensor], batch: Mapping[str, Any], stage: str) -> None:
        """Stop on a NaN/inf loss, before the optimizer writes it into the weights (so the last
        checkpoint written stays a good one), naming the step and the batch's windows."""
        total = losses["total"]
        if bool(torch.isfinite(total.detach())):
            return
        bad = {k: float(v) for k, v in losses.items() if not bool(torch.isfinite(v.detach()))}
        sessions = batch["session"].tolist() if "session" in batch else "?"
        intervals = [round(float(t), 6) for t in batch["interval"]] if "interval" in batch else "?"
        raise FloatingPointError(
            f"non-finite {stage} loss at global step {self.global_step} (epoch {self.current_epoch}): {bad}; "
            f"batch sessions {sessions}, window end times (s) {intervals}. Lower the learning rate or check these "
            "windows; training stopped before the bad step reached the weights, so resume from the last checkpoint")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The vocabulary may have grown since __init__ (extend_vocab): store the config the
        # weights actually have, so load_from_checkpoint rebuilds matching shapes.
        checkpoint.setdefault("hyper_parameters", {})["config"] = self.model.config.to_dict()

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay, include_frozen=True)
        ratio = hp.get("head_lr_ratio", 1.0)
        if ratio != 1.0:  # the behaviour heads in groups of their own at lr * head_lr_ratio
            head = {id(p) for p in self.model.behavior_heads.parameters()}
            split = []
            for g in groups:
                for is_head in (False, True):
                    ps = [p for p in g["params"] if (id(p) in head) == is_head]
                    if ps:
                        split.append({**g, "params": ps, **({"lr": hp.lr * ratio} if is_head else {})})
            groups = split
        opt = adamw(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = int(self.trainer.estimated_stepping_batches)
        sched = warmup_cosine_scheduler(opt, total, warmup_fraction=hp.warmup_fraction,
                                        max_warmup_steps=hp.max_warmup_steps, final_ratio=hp.final_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = gradient_clip_val if gradient_clip_val is not None else self.hparams.grad_clip
        clip_gradients(self, optimizer, clip, gradient_clip_algorithm)


def _window_times(batch: Mapping[str, Any]) -> Tensor:
    """(B,) float64 CPU time of each window: its end (s), + 1e7 s per session (blocks stay apart)."""
    return batch["interval"].double().cpu() + 1e7 * batch["session"].double().cpu()


def _windows_of(pairs: Mapping[str, list[tuple[Tensor, Tensor]]], times: Mapping[str, list[Tensor]]) -> dict:
    """``name -> (prediction, target, time)`` numpy arrays of the collected validation windows."""
    return {n: (torch.cat([p for p, _ in ps]).numpy(), torch.cat([y for _, y in ps]).numpy(),
                torch.cat(times[n]).numpy()) for n, ps in pairs.items() if ps}


def _behavior_scores(pairs: Mapping[str, list[tuple[Tensor, Tensor]]]) -> dict[str, tuple[Tensor, Tensor]]:
    """``name -> (R2, Pearson r)``, each the mean over the target's dimensions, pooled over the
    ``(prediction, target)`` pairs; targets with fewer than 2 windows are left out."""
    scores = {}
    for name, ps in pairs.items():
        pred = torch.cat([p for p, _ in ps])
        y = torch.cat([t for _, t in ps])
        if y.shape[0] < 2:
            continue
        ss_res = ((y - pred) ** 2).sum(0)
        ss_tot = ((y - y.mean(0)) ** 2).sum(0).clamp(min=1e-12)
        pc, yc = pred - pred.mean(0), y - y.mean(0)
        r = ((pc * yc).sum(0) / (pc.norm(dim=0) * yc.norm(dim=0)).clamp(min=1e-12)).mean()
        scores[name] = ((1 - ss_res / ss_tot).mean(), r)
    return scores


def _mean_r2(scores: Mapping[str, tuple[Tensor, Tensor]]) -> Tensor:
    return torch.stack([r2 for r2, _ in scores.values()]).mean() if scores else torch.tensor(float("nan"))


def _token_accuracy(batch: Mapping[str, Any], out: Mapping[str, Any], config: NeuroformerConfig) -> dict[str, Tensor]:
    """Top-1 next-ID and next-dt accuracy over the non-PAD targets (padded or packed batch)."""
    tid, tdt = token_targets(batch, out, config)
    keep_id, keep_dt = tid != PAD, tdt != config.pad_dt
    with torch.no_grad():
        acc_id = (out["id_logits"].argmax(-1) == tid)[keep_id].float().mean()
        acc_dt = (out["dt_logits"].argmax(-1) == tdt)[keep_dt].float().mean()
    return {"id_acc": acc_id, "dt_acc": acc_dt}
