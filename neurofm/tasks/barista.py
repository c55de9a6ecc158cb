"""Lightning tasks for BaRISTA: spatially masked pretraining and fine-tuning.

The models (:mod:`neurofm.models.barista`) stay plain ``nn.Module``\\ s; these tasks add the
objectives, optimisers, schedules and logging (DESIGN.md 4, 10).

* :class:`BaristaPretrainTask` -- masked latent reconstruction. AdamW (lr 1e-3, weight decay
  1e-2 on Linear weights), linear warm-up over 5 epochs then x0.99 per epoch (stepped every
  optimizer step, so the warm-up is smooth); the EMA target tokenizer's momentum rises
  linearly from 0 to 0.996 over the first 10 epochs and is applied after every optimizer
  step. Logs, every step, the loss, the spread of predictions and targets (``pred_std``,
  ``target_std``), the latent R2 (``latent_r2``: 1 - loss / the loss of predicting the mean
  target) and the EMA momentum: ``pred_std`` far below ``target_std`` with ``latent_r2``
  near 0 is the trivial solution (the predictor outputs the mean target), a ``target_std``
  falling towards zero a collapsing tokenizer. With ``model.power_target`` > 0 also the
  band-power term's ``power_mse`` and ``power_r2`` (``loss`` is then the weighted sum).
* :class:`BaristaFinetuneTask` -- segment classification (cross-entropy, validation AUROC),
  continuous-behaviour regression (MSE, validation R2) or channel reconstruction (masked
  channels' raw samples from the others, validation R2) on an exported
  :class:`~neurofm.models.barista.BaristaEncoder`. The CNN is frozen by default, the
  backbone trains at 1e-4, the head at 1e-3, the spatial tables stay trainable (a new
  subject's categories need their rows learned) at ``lr_spatial``. The state fine-tuning
  starts from is validated before the first step and kept as the best checkpoint unless a
  check truly improves on it (:class:`~neurofm.tasks.callbacks.StartingPoint`: by more than two
  paired block-bootstrap SEs of the gain, ``SELECTION_SE``; the recipe starts the head
  at the band-power fit, with the token mean when it gains on blocked CV, or at the linear
  probe without a band-power read-out: :func:`neurofm.recipes.barista.init_probe_head`). The
  head and read-outs are the exported model's (:func:`~neurofm.models.barista.finetune_heads`,
  :func:`~neurofm.models.barista.head_output`): with ``band_power_bands`` a
  :class:`~neurofm.models.barista.BandPowerReadout` (each channel's log band power, linearly
  mapped) is added to the head's output and trains at the head's lr, and with ``waveform_bins`` a
  :class:`~neurofm.models.barista.WaveformReadout` (each channel's evoked waveform, linearly
  mapped) likewise. Early stopping on the
  monitored metric (patience 15) comes with the task (:meth:`configure_callbacks`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from neurofm.metrics import auroc, r2_score
from neurofm.models.barista import (
    Barista,
    BaristaConfig,
    BaristaEncoder,
    BaristaFinetuned,
    BaristaFinetunedConfig,
    STATE_VERSION,
    finetune_heads,
    head_output,
    spatial_mask,
    upgrade_state_dict,
)
from neurofm.report import test_period_blocks
from neurofm.tasks.callbacks import EarlyStoppingAfterValidation, StartingPoint
from neurofm.tasks.clipping import ClipGradients
from neurofm.tasks.optim import BARISTA_FINETUNE_KNOBS as _FT
from neurofm.tasks.optim import BARISTA_PRETRAIN_KNOBS as _PRE
from neurofm.tasks.optim import adamw, param_groups, warmup_then_exponential_scheduler

__all__ = ["BaristaPretrainTask", "BaristaFinetuneTask"]


def _batch_size(batch: Mapping[str, Any]) -> int:
    return int(batch["x"].shape[0])


def _validation_generator(batch_idx: int) -> torch.Generator:
    """The masks of validation batch ``batch_idx``: the same every check (seeded by batch index),
    so validation scores compare across checks and with the starting state's."""
    return torch.Generator(device="cpu").manual_seed(1_000_003 * (batch_idx + 1))


def _steps_per_epoch(trainer) -> int:
    """Optimizer steps per epoch of the running fit (at least 1)."""
    n = getattr(trainer, "num_training_batches", float("inf"))
    accumulate = max(1, int(getattr(trainer, "accumulate_grad_batches", 1)))
    if isinstance(n, (int, float)) and math.isfinite(n) and n > 0:
        return max(1, math.ceil(n / accumulate))
    total, epochs = trainer.estimated_stepping_batches, trainer.max_epochs
    if math.isfinite(total) and epochs and epochs > 0:
        return max(1, int(total) // epochs)
    raise ValueError("BaRISTA schedules are per epoch but the epoch length is unknown (an iterable dataset "
                     "without __len__ and no max_epochs); pass steps_per_epoch= to the task")


#: Checkpoint entry holding the BaRISTA state-dict layout version (absent: layout 1, cfbc09f and older).
CHECKPOINT_STATE_VERSION = "neurofm_state_version"


class _VersionedCheckpoint:
    """Checkpoints record the model's state-dict layout version; an older layout is migrated
    (:func:`~neurofm.models.barista.upgrade_state_dict`) before Lightning loads the weights, on
    ``load_from_checkpoint`` and on resume alike."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_STATE_VERSION] = STATE_VERSION

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"],
                                                      int(checkpoint.get(CHECKPOINT_STATE_VERSION, 1)))


class BaristaPretrainTask(_VersionedCheckpoint, ClipGradients, L.LightningModule):
    """Pretrain a :class:`~neurofm.models.barista.Barista` on BaRISTA batches.

    Args:
        config: the model config (dataclass or dict); stored in the checkpoint so
            ``BaristaPretrainTask.load_from_checkpoint(path)`` rebuilds the model.
        model: an existing model to train instead of a fresh one from ``config``.
        lr, weight_decay, betas: AdamW (paper: 1e-3, 1e-2); decay on Linear weights only.
        warmup_epochs, lr_gamma: linear warm-up, then ``lr_gamma`` per epoch.
        ema_start, ema_end, ema_epochs: EMA momentum schedule of the target tokenizer.
        steps_per_epoch: optimizer steps per epoch; default from the trainer.
    """

    def __init__(self, config: BaristaConfig | Mapping[str, Any] | None = None, model: Barista | None = None, *,
                 lr: float = _PRE["lr"], weight_decay: float = _PRE["weight_decay"],
                 betas: tuple[float, float] = (0.9, 0.999), warmup_epochs: int = _PRE["warmup_epochs"],
                 lr_gamma: float = 0.99, ema_start: float = 0.0, ema_end: float = 0.996,
                 ema_epochs: int = _PRE["ema_epochs"], steps_per_epoch: int | None = None):
        super().__init__()
        if model is None:
            model = Barista(config if config is not None else BaristaConfig())
        self.model = model
        self.save_hyperparameters({
            "config": model.config.to_dict(), "lr": lr, "weight_decay": weight_decay, "betas": list(betas),
            "warmup_epochs": warmup_epochs, "lr_gamma": lr_gamma, "ema_start": ema_start, "ema_end": ema_end,
            "ema_epochs": ema_epochs, "steps_per_epoch": steps_per_epoch,
        })
        self._ema_updated_at = -1

    # -- schedules -----------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        return self.hparams.steps_per_epoch or _steps_per_epoch(self.trainer)

    def ema_momentum(self, step: int) -> float:
        """Momentum after optimizer step ``step`` (0-based): linear ``ema_start -> ema_end``
        over ``ema_epochs`` epochs, then constant."""
        hp = self.hparams
        ramp = hp.ema_epochs * self.steps_per_epoch()
        frac = 1.0 if ramp <= 0 else min(1.0, step / ramp)
        return hp.ema_start + (hp.ema_end - hp.ema_start) * frac

    # -- steps ---------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Contextual tokens ``(B, n, C, d)`` of an unmasked batch."""
        return self.model.encode(batch)

    def _log_out(self, out: Mapping[str, Tensor], stage: str, b: int) -> None:
        on_step = stage == "train"
        for name in ("loss", "pred_std", "target_std", "latent_r2", "mask_ratio", "power_mse", "power_r2"):
            if name in out:  # power_*: only with model.power_target > 0
                self.log(f"{stage}/{name}", out[name].detach().float(), batch_size=b, on_step=on_step,
                         on_epoch=True, prog_bar=name == "loss")

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model.pretrain_loss(batch)
        if not bool(torch.isfinite(out["loss"].detach())):
            raise FloatingPointError(
                f"non-finite pretraining loss at global step {self.global_step} (epoch {self.current_epoch}), "
                f"sessions {batch['session'].tolist() if 'session' in batch else '?'}; lower the learning rate or "
                "check these segments. The bad step did not reach the weights: resume from the last checkpoint")
        self._log_out(out, "train", _batch_size(batch))
        return out["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # After the optimizer step (skipped while gradients accumulate): one EMA update per step.
        step = self.global_step
        if step > 0 and step - 1 != self._ema_updated_at:
            self.model.update_ema(self.ema_momentum(step - 1))
            self._ema_updated_at = step - 1
            self.log("train/ema_momentum", self.ema_momentum(step - 1), on_step=True, on_epoch=False)

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        out = self.model.pretrain_loss(batch, generator=_validation_generator(batch_idx))
        self._log_out(out, "val", _batch_size(batch))

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        opt = adamw(param_groups(self.model, hp.weight_decay), lr=hp.lr, betas=tuple(hp.betas))
        sched = warmup_then_exponential_scheduler(opt, warmup_epochs=hp.warmup_epochs, gamma=hp.lr_gamma,
                                                  steps_per_epoch=self.steps_per_epoch())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def export_encoder(self) -> BaristaEncoder:
        return self.model.export_encoder()


TASKS = ("classification", "regression", "reconstruction")
HEADS = ("pooled", "token_weighting")


class BaristaFinetuneTask(_VersionedCheckpoint, ClipGradients, L.LightningModule):
    """Fine-tune an exported :class:`~neurofm.models.barista.BaristaEncoder`.

    Args:
        encoder: the encoder (e.g. ``pretrain_task.export_encoder()``), or its config (dict
            or dataclass) for a randomly initialised one (the paper's "random init" baseline;
            also how ``load_from_checkpoint`` rebuilds it before loading the weights).
        task: ``"classification"`` (``batch["label"]``), ``"regression"`` (``batch["target"]``
            (B, D), masked by ``batch["target_mask"]`` when present) or ``"reconstruction"``.
        n_classes: classes of the classification head.
        target_dim: outputs of the regression head.
        head: ``"pooled"`` (attention pooling, any electrode layout) or ``"token_weighting"``
            (the paper's head: one learned weight per (patch, channel) token; needs one fixed
            layout of ``n_channels`` channels).
        freeze_cnn: keep the tokenizer's convolutions fixed (the projection trains with the
            backbone).
        lr_backbone, lr_head, lr_spatial, weight_decay: AdamW groups.
        recon_mask_ratio, recon_mask_scale: channels hidden for reconstruction (default: the
            pretraining ratio, whole channels).
        pretrained_head: a :class:`~neurofm.models.barista.Barista` whose mask token and
            predictor start the reconstruction head.
        early_stopping_patience: epochs without improvement of the monitored metric before
            stopping (None: no early stopping).
        label_names: classification: the event label of each class index (stored in the
            checkpoint and exported with the model).
        band_power_bands: classification / regression: bands (name -> (low, high) Hz) of a
            :class:`~neurofm.models.barista.BandPowerReadout` (each channel's log band power,
            linearly mapped and added to the head's output; needs ``n_channels``, a fixed
            layout). None or empty: no read-out.
        waveform_bins: classification / regression: bins per channel of a
            :class:`~neurofm.models.barista.WaveformReadout` (each channel's evoked waveform,
            linearly mapped and added to the head's output; needs ``n_channels``). 0: none.
        target_mean, target_std: regression: the training block's mean and standard deviation
            of each target dimension (D,). The head learns the standardised target
            ``(y - mean) / std`` (a raw target in the recording's units, e.g. a force of 1e4,
            leaves the MSE flat at its variance), and predictions are returned in the
            recording's units. Stored in the checkpoint and exported with the model. None:
            the target is used as is (mean 0, std 1), with a warning when its scale is far
            from 1.
    """

    def __init__(self, encoder: BaristaEncoder | BaristaConfig | Mapping[str, Any], *, task: str = "classification",
                 n_classes: int = 2, target_dim: int = 1, head: str = "pooled", n_channels: int | None = None,
                 freeze_cnn: bool = _FT["freeze_cnn"], lr_backbone: float = _FT["lr_backbone"],
                 lr_head: float = _FT["lr_head"],
                 lr_spatial: float = 1e-3, weight_decay: float = 1e-2, head_dropout: float = 0.1,
                 recon_mask_ratio: float | None = None, recon_mask_scale: str = "channel",
                 pretrained_head: Barista | None = None, early_stopping_patience: int | None = 15,
                 label_names: Sequence[str] = (), target_mean: Sequence[float] | None = None,
                 target_std: Sequence[float] | None = None,
                 band_power_bands: Mapping[str, Sequence[float]] | None = None, waveform_bins: int = 0):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"BaristaFinetuneTask: task must be one of {TASKS}, got {task!r}")
        if head not in HEADS:
            raise ValueError(f"BaristaFinetuneTask: head must be one of {HEADS}, got {head!r}")
        if not isinstance(encoder, BaristaEncoder):
            encoder = BaristaEncoder(encoder)
        self.encoder = encoder
        cfg = encoder.config
        # the fine-tuned model this task trains and exports (export_model)
        self.model_config = BaristaFinetunedConfig(
            encoder=cfg, task=task, head=head, out_dim=n_classes if task == "classification" else target_dim,
            n_channels=n_channels or 0, head_dropout=head_dropout, label_names=list(label_names),
            target_mean=[float(v) for v in np.ravel(target_mean)] if target_mean is not None else [],
            target_std=[float(v) for v in np.ravel(target_std)] if target_std is not None else [],
            band_power_bands={str(k): [float(v[0]), float(v[1])] for k, v in (band_power_bands or {}).items()}
            if task != "reconstruction" else {},
            waveform_bins=int(waveform_bins or 0) if task != "reconstruction" else 0)
        self.head, self.band_power, self.waveform = finetune_heads(self.model_config)
        if pretrained_head is not None and task == "reconstruction":
            self.head.init_from_pretraining(pretrained_head)
        if recon_mask_scale not in ("channel", "parcel", "lobe"):
            raise ValueError(f"recon_mask_scale must be channel, parcel or lobe, got {recon_mask_scale!r}")
        self.save_hyperparameters({
            "encoder": cfg.to_dict(), "task": task, "n_classes": n_classes, "target_dim": target_dim, "head": head,
            "n_channels": n_channels, "freeze_cnn": freeze_cnn, "lr_backbone": lr_backbone, "lr_head": lr_head,
            "lr_spatial": lr_spatial, "weight_decay": weight_decay, "head_dropout": head_dropout,
            "recon_mask_ratio": recon_mask_ratio, "recon_mask_scale": recon_mask_scale,
            "early_stopping_patience": early_stopping_patience, "label_names": list(label_names),
            "target_mean": None if target_mean is None else [float(v) for v in np.ravel(target_mean)],
            "target_std": None if target_std is None else [float(v) for v in np.ravel(target_std)],
            "band_power_bands": self.model_config.band_power_bands or None,
            "waveform_bins": self.model_config.waveform_bins,
        })
        mean, std = self.target_scale()
        if task == "regression" and mean.numel() not in (1, target_dim):
            raise ValueError(f"BaristaFinetuneTask: target_mean/target_std have {mean.numel()} entries but the "
                             f"target has {target_dim} dimensions")
        if (std <= 0).any() or not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError(f"BaristaFinetuneTask: target_std must be positive and finite, got {std.tolist()}")
        self._scale_warned = target_mean is not None or task != "regression"
        self.encoder.tokenizer.blocks.requires_grad_(not freeze_cnn)
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self.validation_windows: dict[str, tuple] | None = None

    @classmethod
    def from_pretraining(cls, pretrained: "Barista | BaristaPretrainTask", **kwargs) -> "BaristaFinetuneTask":
        """Start from a pretrained model: its exported encoder (EMA tokenizer + backbone + spatial
        table), and for reconstruction its mask token and predictor."""
        model = pretrained.model if isinstance(pretrained, BaristaPretrainTask) else pretrained
        if kwargs.get("task") == "reconstruction":
            kwargs.setdefault("pretrained_head", model)
        return cls(model.export_encoder(), **kwargs)

    def target_scale(self) -> tuple[Tensor, Tensor]:
        """Regression: ``(mean, std)`` (D,) that map the head's standardised output to the
        recording's units (``y = mean + std * out``); (0, 1) when none were given."""
        hp = self.hparams
        mean = torch.tensor(hp.get("target_mean") or [0.0], dtype=torch.float32)
        std = torch.tensor(hp.get("target_std") or [1.0], dtype=torch.float32)
        return mean, std

    @property
    def monitor(self) -> str:
        """The validation metric early stopping and checkpointing should follow (higher is better)."""
        return "val/auroc" if self.hparams.task == "classification" else "val/r2"

    # -- forward -------------------------------------------------------------------------------
    def recon_mask(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """``(B, C)`` channels hidden for reconstruction."""
        scale = self.hparams.recon_mask_scale
        B, C = batch["x"].shape[:2]
        cat = (torch.arange(1, C + 1, device=batch["x"].device).expand(B, C) if scale == "channel"
               else batch[scale].long())
        ratio = self.hparams.recon_mask_ratio or self.encoder.config.mask_ratio
        return spatial_mask(cat, batch.get("channel_mask"), ratio, generator)

    def forward(self, batch: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Classification logits (B, K), regression outputs (B, D), or, for reconstruction,
        the masked channels' samples (M, n, L) (``mask`` (B, C) chosen if not given)."""
        if self.hparams.task == "reconstruction":
            mask = self.recon_mask(batch) if mask is None else mask
            h = self.encoder(batch, mask=mask, mask_token=self.head.mask_token)
            return self.head(h, mask)
        return head_output(self.encoder, self.head, (self.band_power, self.waveform), batch)

    def _loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, predictions, truth) of one batch; predictions/truth in the metric's form."""
        task = self.hparams.task
        if task == "classification":
            if "label" not in batch:
                raise KeyError("classification fine-tuning needs batch['label'] (segment labels from events)")
            logits = self(batch)
            y = batch["label"].long()
            return F.cross_entropy(logits.float(), y), logits.detach().float(), y
        if task == "regression":
            if "target" not in batch:
                raise KeyError("regression fine-tuning needs batch['target'] (B, D) (a behaviour variable)")
            out = self(batch).float()  # (B, D), standardised units
            y = batch["target"].float().reshape(out.shape)  # (B, D), the recording's units
            keep = batch.get("target_mask")
            if keep is not None:
                out, y = out[keep.bool()], y[keep.bool()]
            mean, std = (v.to(out.device) for v in self.target_scale())
            self._check_scale(y)
            loss = F.mse_loss(out, (y - mean) / std) if y.numel() else out.sum() * 0.0
            return loss, (out.detach() * std + mean), y
        mask = self.recon_mask(batch, generator)
        pred = self(batch, mask=mask).float()  # (M, n, L)
        y = self.encoder.patches(batch["x"])[mask].float()  # (M, n, L)
        return F.mse_loss(pred, y), pred.detach().reshape(-1, 1), y.reshape(-1, 1)

    def _check_scale(self, y: Tensor) -> None:
        """Warn once when an unstandardised regression target is far from unit scale."""
        if self._scale_warned or y.numel() < 2:
            return
        self._scale_warned = True
        rms = float(y.detach().float().pow(2).mean().sqrt())
        if not 0.01 < rms < 100:
            import warnings

            warnings.warn(f"BaristaFinetuneTask: the regression target's RMS is {rms:.3g} and no target_mean/"
                          "target_std were given, so the head must learn that scale and the MSE is dominated by "
                          "it; pass the training block's statistics (the BaRISTA recipe does)", stacklevel=3)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss.detach(), batch_size=_batch_size(batch), on_step=True, on_epoch=True,
                 prog_bar=True)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        loss, pred, y = self._loss(batch, _validation_generator(batch_idx))
        self.log("val/loss", loss, batch_size=_batch_size(batch), on_epoch=True)
        self._val.append((pred.cpu(), y.cpu(), self._row_times(batch, len(y), batch_idx)))

    def on_validation_epoch_end(self) -> None:
        """AUROC (classification) or R2 pooled over all validation predictions. The check's
        per-segment predictions stay in :attr:`validation_windows` (model selection compares them
        with the start's)."""
        if not self._val:
            return
        for name, value in self._val_metrics(self._val).items():
            self.log(name, value)
        self.validation_windows = self._windows(self._val)
        self._val.clear()

    def _row_times(self, batch: Mapping[str, Tensor], n_rows: int, batch_idx: int) -> Tensor | None:
        """(n_rows,) float64 time of each row :meth:`_loss` returns for validation batch ``batch_idx``:
        its segment's start (s), + 1e7 s per session (blocks stay apart). Regression keeps the rows
        ``target_mask`` keeps; reconstruction repeats a segment's time for every sample of its
        masked channels (the same mask: the same generator), so every row has one. None for a
        batch without ``t0``/``session``: the package's loaders always carry them
        (:func:`~neurofm.data.datasets.collate_ieeg`); a user's own batches may not, and their
        checks then have no per-row windows for model selection."""
        if "t0" not in batch or "session" not in batch:
            return None
        t = batch["t0"].double().cpu() + 1e7 * batch["session"].double().cpu()
        task = self.hparams.task
        if task == "regression" and batch.get("target_mask") is not None:
            t = t[batch["target_mask"].bool().cpu()]
        elif task == "reconstruction":
            t = t[self.recon_mask(batch, _validation_generator(batch_idx)).nonzero()[:, 0].cpu()]
        per_row, rest = divmod(n_rows, max(1, len(t)))
        if rest or (n_rows and not len(t)):
            raise RuntimeError(f"BaristaFinetuneTask: {n_rows} validation rows for {len(t)} segment times")
        return t.repeat_interleave(per_row)

    def _windows(self, pairs: Sequence[tuple[Tensor, Tensor, Tensor | None]]) -> dict[str, tuple]:
        """``{"target": (prediction, truth, time)}`` of the pooled validation rows, predictions as the
        metric scores them (class-1 probability or class probabilities; values in the recording's
        units), for :func:`neurofm.tasks.callbacks.selection_windows`. Empty when a batch had no
        times (:meth:`_row_times`)."""
        if any(t is None for _, _, t in pairs):
            return {}
        pred = torch.cat([p for p, _, _ in pairs]).numpy()
        y = torch.cat([t for _, t, _ in pairs]).numpy()
        t = torch.cat([t for _, _, t in pairs]).numpy()
        if self.hparams.task == "classification":
            probs = torch.softmax(torch.from_numpy(pred), -1).numpy()
            pred = probs[:, 1] if probs.shape[1] == 2 else probs
        return {"target": (pred, y, t)}

    def validation_blocks(self, times) -> np.ndarray:
        """Block id of each validation segment: contiguous runs of equal segment counts, the rule
        the decode report's test CIs use (:func:`neurofm.report.test_period_blocks`)."""
        return test_period_blocks(times)

    def _val_metrics(self, pairs: Sequence[tuple[Tensor, ...]]) -> dict[str, float]:
        """The validation metrics of ``(prediction, truth, ...)`` batches pooled: ``val/auroc`` and
        ``val/accuracy`` (classification; AUROC NaN with one class), else ``val/r2`` (none under 2
        windows)."""
        pred = torch.cat([p[0] for p in pairs]).numpy()
        y = torch.cat([p[1] for p in pairs]).numpy()
        if self.hparams.task == "classification":
            probs = torch.softmax(torch.from_numpy(pred), -1).numpy()
            scores = probs[:, 1] if probs.shape[1] == 2 else probs
            value = auroc(y, scores) if len(np.unique(y)) > 1 else float("nan")
            return {"val/auroc": float(value), "val/accuracy": float((pred.argmax(-1) == y).mean())}
        return {"val/r2": float(r2_score(y, pred))} if len(y) >= 2 else {}

    @torch.no_grad()
    def validation_scores(self, loader, windows: dict | None = None) -> dict[str, float]:
        """The metrics a validation check logs (:meth:`_val_metrics`: the same batches, masks and
        reconstruction masks), for the model as it is now, outside Lightning's loop (eval mode,
        restored after): :class:`~neurofm.tasks.callbacks.StartingPoint` scores the state before
        the first optimizer step with it. ``windows``, when given, is filled as
        :meth:`on_validation_epoch_end` fills :attr:`validation_windows` (model selection pairs them)."""
        was_training = self.training
        self.eval()
        pairs = []
        try:
            for i, batch in enumerate(loader):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                _, pred, y = self._loss(batch, _validation_generator(i))
                pairs.append((pred.cpu(), y.cpu(), self._row_times(batch, len(y), i)))
        finally:
            self.train(was_training)
        if windows is not None and pairs:
            windows.update(self._windows(pairs))
        return self._val_metrics(pairs) if pairs else {}

    # -- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        groups = []
        parts = ((self.encoder.tokenizer, hp.lr_backbone), (self.encoder.backbone, hp.lr_backbone),
                 (self.encoder.spatial, hp.lr_spatial), (self.head, hp.lr_head))
        parts += tuple((r, hp.lr_head) for r in (self.band_power, self.waveform) if r is not None)
        for module, lr in parts:
            for group in param_groups(module, hp.weight_decay):
                groups.append({**group, "lr": lr})
        return adamw(groups, lr=hp.lr_head)

    # -- export --------------------------------------------------------------------------------
    def export_model(self) -> BaristaFinetuned:
        """This task's encoder and head as one :class:`~neurofm.models.barista.BaristaFinetuned`
        (weights copied; what ``save_pretrained`` writes), described by the task's settings."""
        model = BaristaFinetuned(self.model_config)
        for name in ("encoder", "head", "band_power", "waveform"):
            if getattr(self, name) is not None:
                getattr(model, name).load_state_dict(getattr(self, name).state_dict())
        return model.to(next(self.parameters()).device)

    def configure_callbacks(self):
        # the starting state is scored at step 0 and kept unless a validation check beats it
        callbacks = [StartingPoint()]
        patience = self.hparams.early_stopping_patience
        if patience:  # the early stopping build_trainer gives runs: waits for the first validation
            callbacks.append(EarlyStoppingAfterValidation(monitor=self.monitor, mode="max", patience=patience,
                                                          check_finite=False))
        return callbacks
