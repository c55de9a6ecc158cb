"""The Trainer settings of a run, shared by every recipe (``cfg.trainer``) and read by
:func:`neurofm.experiment.build_trainer`.

Here, below both, so that recipes (which declare a run's config tree) and the experiment
runner (which runs any recipe) need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["TrainerConfig", "starting_margin"]


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
    from neurofm.report import r2_standard_error, time_blocks

    names = [k for k, (_, y, _) in windows.items() if len(y) >= 2]
    if not names:
        return 0.0
    times = [np.asarray(windows[k][2], dtype=np.float64).ravel() for k in names]
    ids = np.split(time_blocks(np.concatenate(times), block_s), np.cumsum([len(t) for t in times])[:-1])
    se = r2_standard_error({k: (windows[k][0], windows[k][1], b) for k, b in zip(names, ids)}, seed=seed)
    return se if np.isfinite(se) else 0.0


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets; the same config runs on a laptop and a cluster."""

    max_epochs: int = 10
    max_steps: int = -1
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: str = "auto"  # "auto", a count ("4") or a list ("0,1")
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | fsdp
    precision: str = "auto"  # auto = bf16-mixed on CUDA, 32-true elsewhere
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 1.0
    log_every_n_steps: int = 1  # every step: logs/metrics.csv as documented (measured: within noise of 10)
    # csv | tensorboard | wandb | mlflow, or several comma-separated (csv,tensorboard). CSV writes
    # run_dir/logs/metrics.csv; the others need their extra: pip install "neurofm[tensorboard]".
    logger: str = "csv"
    # CPU threads of torch's intra-op pool: auto = free cores (affinity minus load average), or N.
    threads: str = "auto"
    check_val_every_n_epoch: int = 1
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (GPU runs)
    progress_bar: bool = True
    early_stopping_patience: int = 0  # 0 = off; else epochs without improvement of the monitored metric
    checkpoint_every_n_steps: int = 0  # 0 = at the end of every epoch; else also every N optimizer steps
    # last.ckpt is also written when this many minutes of training passed since the last save
    # (0 = off): a crash loses at most this much work, and a save every 10 min costs well under
    # 1% of the time even for a 300 MB paper-size checkpoint (a few seconds to a local disk).
    checkpoint_every_minutes: float = 10.0
    # Diagnostics: every process writes run_dir/ranks/rank{r}.json with the (session, time) of each
    # training batch it trained on and a hash of its final weights (checks DDP sharding and sync).
    record_batches: bool = False
