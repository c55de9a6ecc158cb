"""The Trainer settings of a run, shared by every recipe (``cfg.trainer``) and read by
:func:`neurofm.experiment.build_trainer`.

Here, below both, so that recipes (which declare a run's config tree) and the experiment
runner (which runs any recipe) need not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainerConfig"]


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
    # 0 = validation at the end of every check_val_every_n_epoch-th epoch; N > 0: every N optimizer
    # steps instead, across epoch boundaries (a step budget's ~20 checks whatever the epoch length)
    val_check_every_n_steps: int = 0
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
