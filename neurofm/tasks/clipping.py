"""Gradient clipping that works with the fused AdamW under mixed precision.

Every task trains with :func:`neurofm.tasks.optim.adamw`, which is fused wherever the device has
the kernel (CUDA), and clips gradients (``trainer.gradient_clip_val``, 1.0 by default). Lightning's
mixed-precision plugin refuses that pair: it raises for any optimizer that unscales its own
gradients, also under ``bf16-mixed``, where there is no loss scaler and the gradients are
already true. Every GPU run with the default ``precision: auto`` (bf16-mixed) stopped at its first
step (seen on an H200, 2026-12-04). :class:`ClipGradients` clips those gradients itself:

* ``bf16-mixed``: no scaler; the gradients are clipped as they are.
* ``16-mixed``: Lightning leaves a fused optimizer's gradients scaled, so the scaler unscales
  them first; its ``step`` then sees them unscaled and skips a step with infinite values, as it
  would have.
* anything else (fp32, FSDP's or DeepSpeed's own precision, a non-fused optimizer): Lightning's
  own clipping, unchanged.
"""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

__all__ = ["ClipGradients", "clip_gradients"]


def clip_gradients(task, optimizer: torch.optim.Optimizer, clip_val: float | None,
                   algorithm: str | None = None) -> None:
    """Clip the gradients of ``optimizer``'s parameters to ``clip_val`` (norm, or ``"value"``)
    as ``task.clip_gradients`` would, also for a fused optimizer under mixed precision.
    ``clip_val`` None or 0: no clipping."""
    if not clip_val:
        return
    algorithm = str(algorithm or "norm")
    plugin = task.trainer.precision_plugin
    if not (isinstance(plugin, MixedPrecision) and getattr(optimizer, "_step_supports_amp_scaling", False)):
        task.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
        return
    if plugin.scaler is not None:
        plugin.scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, clip_val)


class ClipGradients:
    """LightningModule mixin: the Trainer's ``gradient_clip_val`` through :func:`clip_gradients`."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
