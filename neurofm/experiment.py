"""Runs: one config tree -> data module, task, Lightning Trainer, evaluation, export.

``python train.py [CONFIG.yaml] [key=value ...]`` and ``neurofm train`` both call :func:`main`.
A config tree has five parts (DESIGN.md 6)::

    family: neuroformer | barista          which recipe (neurofm.recipes.<family>)
    run_dir, seed, resume                  where, reproducibility, resume=auto|none|PATH
    data:    ...                           the recipe's data config
    model:   ...                           the model's config dataclass
    task:    ...                           objective, optimiser, schedule
    trainer: ...                           TrainerConfig (neurofm.tasks.trainer: devices, strategy, precision...)

Unknown keys and wrong types are errors naming the key (:mod:`neurofm.config`); ``main``
prints them, and other errors that name a file or key, without a traceback (exit status 2).
The resolved config is saved as ``run_dir/config.yaml`` beside the checkpoints; the run
writes ``run_dir/metrics.json``, ``run_dir/pretrained/`` (``from_pretrained`` folder + model
card) and ``run_dir/plots/``.

Checkpoints (``checkpoints/last.ckpt`` at the end of every epoch, every
``trainer.checkpoint_every_minutes`` (default 10) of training and, with
``trainer.checkpoint_every_n_steps``, every N steps too; ``best.ckpt`` by the recipe's
monitored metric) are written to a temporary file in the checkpoint folder, fsynced and
renamed (atomic on every filesystem; the replaced ``last.ckpt`` is kept as
``last.prev.ckpt``), and hold tensors and plain values only (``torch.load(weights_only=True)``
reads them). ``resume=auto`` continues from the newest checkpoint that loads (an empty or
truncated ``last.ckpt`` is reported and passed over), and appends to ``logs/metrics.csv``. Every training
step is seeded from ``(seed, rank, epoch, batch)`` and the training loader's position is
restored on resume, so a run killed at any point and restarted with ``resume=auto``
continues from the last checkpoint with the same step count, the same data order and the
same random draws, and ends with the same weights as an uninterrupted run. Resuming under a
different ``model``, ``data`` or ``task`` config is an error naming the keys
(:func:`check_resume_config`).

``trainer.record_batches=true`` makes every process write ``run_dir/ranks/rank{r}.json`` (the
windows of each training batch and a hash of its final weights) to check DDP sharding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from neurofm import jsonio, log_to_stderr, plain_warnings
from neurofm.atomic import OutputError, atomic_output, atomic_write
from neurofm.config import ConfigError, drop_retired, finetuning_run, from_dict, to_dict
from neurofm.cards import data_sources, render_card, run_session_paths
from neurofm.data.session import SessionFormatError
from neurofm.hub import PretrainedError, model_meta, pretrained_config
from neurofm.threads import available_cores, resolve_threads, torch_threads
from neurofm.tasks.trainer import TrainerConfig  # noqa: F401 (part of this module's API)

if TYPE_CHECKING:  # annotations only: Lightning is imported where a run needs it
    import lightning as L

log = logging.getLogger("neurofm")

FAMILIES = ("neuroformer", "barista")
#: the configs shipped inside the package: ``neurofm train NAME`` (e.g. ``demo``, ``barista/paper``)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "neuroformer" / "demo.yaml"


@dataclass
class RunResult:
    run_dir: Path
    pretrained_dir: Path | None
    metrics: dict


# -- config -------------------------------------------------------------------------------------


def recipe_for(family: str):
    """The recipe module for a family (``neurofm.recipes.<family>``)."""
    if family not in FAMILIES:
        raise ConfigError(f"family: {family!r} is not one of {FAMILIES}")
    return importlib.import_module(f"neurofm.recipes.{family}")


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
    """Read a YAML config (default: the Neuroformer CPU demo) plus ``key=value`` overrides.

    Returns the recipe's typed run config. The ``family`` key picks the recipe.
    """
    path = config_path(path)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    family = dict(OmegaConf.from_dotlist([o for o in overrides if o.startswith("family=")])).get(
        "family", raw.get("family", "neuroformer"))
    recipe = recipe_for(family)
    raw = drop_retired(raw, family, str(path))  # a run folder written by an older neurofm
    cfg = from_dict(recipe.RunConfig, raw, where=str(path))  # the file's own mistakes name the file
    if overrides:
        cfg = from_dict(recipe.RunConfig, raw, overrides=list(overrides), where=f"command line (over {path.name})")
    return cfg


def shipped_configs() -> list[str]:
    """Names of the configs shipped inside the package (``neuroformer/demo``, ``barista/paper``...)."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.glob("*/*.yaml"))


def config_path(config: str | os.PathLike | None = None) -> Path:
    """CONFIG as a user gives it -> a YAML file.

    An existing file is used as is; otherwise CONFIG names a shipped config: ``barista/paper``,
    or a Neuroformer one by its bare name (``demo``, ``paper``, ``finetune``), with or without
    ``.yaml`` and a leading ``configs/`` (the repository's old layout). None: the CPU demo.
    """
    if config is None or str(config) == "":
        return DEFAULT_CONFIG
    path = Path(config)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml").removesuffix(".yml").removeprefix("configs/")
    shipped = CONFIG_DIR / (name if "/" in name else f"neuroformer/{name}")
    if shipped.with_suffix(".yaml").is_file():
        return shipped.with_suffix(".yaml")
    raise FileNotFoundError(f"{config}: no such config file, nor a shipped config name (shipped: "
                            f"{', '.join(shipped_configs())}; a bare name means neuroformer/NAME)")


def run_dir_for(path: str | os.PathLike | None, overrides: Sequence[str], cfg) -> str:
    """The run folder of a config file plus command-line ``overrides``: one folder per config.

    An explicit ``run_dir=`` override is used as given. Otherwise overrides that change what a
    checkpoint means (``family``, ``seed`` and the ``model`` / ``data`` / ``task`` sections, the
    ones :func:`check_resume_config` compares) give the file's ``run_dir`` a suffix made of a
    short hash of the changed settings (``runs/neuroformer-demo-3f9a2c``), so two commands with
    different models never share, and refuse to resume, one folder. Overrides of ``trainer`` or
    ``eval`` only (more epochs, other devices) keep the file's folder, and resume continues it.
    """
    if any(o.split("=", 1)[0].strip().lstrip("+") == "run_dir" for o in overrides):
        return cfg.run_dir
    base = load_config(path)
    old, new = to_dict(base), to_dict(cfg)
    changed = []
    for section in ("family", "seed", *RESUME_SECTIONS):
        old_flat, new_flat = _flatten(old.get(section), section), _flatten(new.get(section), section)
        changed += [f"{k}={new_flat.get(k)!r}" for k in sorted(set(old_flat) | set(new_flat))
                    if old_flat.get(k) != new_flat.get(k)]
    if not changed:
        return base.run_dir
    digest = hashlib.sha1("\n".join(changed).encode()).hexdigest()[:6]
    return f"{base.run_dir.rstrip('/')}-{digest}"


def resolve_config(config: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
    """What ``neurofm train CONFIG key=value ...`` runs: :func:`load_config` plus the run
    folder rule of :func:`run_dir_for`."""
    cfg = load_config(config, overrides)
    cfg.run_dir = run_dir_for(config, overrides, cfg)
    return cfg


def save_config(cfg, path: Path) -> None:
    atomic_write(path, OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))


# -- trainer ------------------------------------------------------------------------------------


def _precision(tc: TrainerConfig) -> str:
    if tc.precision != "auto":
        return tc.precision
    if tc.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _devices(value: str):
    value = str(value)
    if value == "auto":
        return "auto"
    if "," in value:
        return [int(v) for v in value.split(",") if v != ""]
    return int(value)


def _exact_resume_callback(seed: int):
    """A callback that makes a run resumed from a checkpoint continue exactly as the
    uninterrupted run did: same batches, same random draws, same weights.

    * Randomness. Every training batch starts from Python / NumPy / torch RNG states derived
      from ``(seed, rank, epoch, batch index)``, so the dropout masks (and any other draw) of a
      step do not depend on what the process did before it: a fresh process, a loader that drew
      its base seed from the global RNG at the start of an epoch, validation. A resumed step
      therefore draws what the uninterrupted step drew, and no RNG state needs saving.
    * Loader position. Lightning (2.x) saves the training loader's position in the checkpoint
      (``loops.fit_loop.state_dict.combined_loader``) but hands it back only when it builds the
      training loader after restoring the checkpoint. A task whose ``configure_optimizers``
      reads ``trainer.estimated_stepping_batches`` (neurofm's tasks size their schedules by it)
      makes Lightning build the loader first, and the position is dropped: the resumed epoch
      would start again from its first batch. This callback keeps the positions from the
      checkpoint and loads them into the training loaders when training starts, before the
      first batch is drawn (neurofm's loaders start iterating lazily), in Lightning's order
      of the stateful loaders.
    """
    import lightning as L

    class _ExactResume(L.Callback):
        def __init__(self):
            self.loader_states: list[dict] = []

        def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
            loops = checkpoint.get("loops", {}).get("fit_loop", {})
            self.loader_states = list(loops.get("state_dict", {}).get("combined_loader", []))

        def on_train_start(self, trainer, pl_module) -> None:
            states, self.loader_states = self.loader_states, []
            if not states:
                return
            loaders = [dl for dl in _flat(trainer.train_dataloader)
                       if hasattr(dl, "state_dict") and hasattr(dl, "load_state_dict")]
            if len(loaders) != len(states):
                raise RuntimeError(f"resume: the checkpoint holds positions of {len(states)} training loaders, this "
                                   f"run has {len(loaders)}; resume with the same data config")
            for loader, state in zip(loaders, states):
                loader.load_state_dict(state)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            key = [seed, int(trainer.global_rank), int(trainer.current_epoch), int(batch_idx)]
            s = np.random.SeedSequence(key).generate_state(4, dtype=np.uint32)
            torch.manual_seed((int(s[0]) << 32) | int(s[1]))
            np.random.seed(int(s[2]))
            random.seed(int(s[3]))

    return _ExactResume()


def _flat(loaders) -> list:
    """The loaders of ``trainer.train_dataloader`` (one loader, or a list / dict of them)."""
    if isinstance(loaders, Mapping):
        return [dl for v in loaders.values() for dl in _flat(v)]
    if isinstance(loaders, (list, tuple)):
        return [dl for v in loaders for dl in _flat(v)]
    return [] if loaders is None else [loaders]


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict: names, dtypes, shapes and the exact bytes of every tensor.

    Two models hash equal only if every tensor is bit-identical (DDP replicas after training,
    a checkpoint and its export).
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _batch_recorder(out_dir: Path):
    """A callback (``trainer.record_batches``) that writes ``out_dir/rank{r}.json`` per process.

    The file lists, for every training batch this process trained on, its epoch, global step
    and the ``(session, time)`` of each window (``time``: a spike window's end, ``interval``, or
    an iEEG segment's start, ``t0``), and ends with ``weights_sha256`` (:func:`state_sha256`
    of the task's final state_dict). Under DDP the ranks' windows of an epoch should be
    disjoint and cover the epoch, and their hashes should match. A resumed run records only
    the batches it trained on itself.
    """
    import lightning as L

    class _BatchRecorder(L.Callback):
        def __init__(self):
            self.batches: list[dict] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            times = batch["interval"] if "interval" in batch else batch["t0"]
            self.batches.append({"epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
                                 "session": batch["session"].tolist(), "time": times.double().tolist()})

        def on_train_end(self, trainer, pl_module) -> None:
            record = {"rank": int(trainer.global_rank), "world_size": int(trainer.world_size),
                      "global_step": int(trainer.global_step), "batches": self.batches,
                      "weights_sha256": state_sha256(pl_module.state_dict())}
            atomic_write(out_dir / f"rank{trainer.global_rank}.json", json.dumps(record) + "\n")

    return _BatchRecorder()


LAST = "last.ckpt"


def previous_of(path: Path) -> Path:
    """Where the checkpoint ``path`` replaced last is kept (``last.ckpt`` -> ``last.prev.ckpt``)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _checkpoint_io():
    """Lightning's checkpoint writer, made atomic on every filesystem (:mod:`neurofm.atomic`).

    Lightning 2.x writes a checkpoint to the system temp folder and moves it into place; when
    the run folder is on another filesystem (usual on clusters) that move is a copy over the
    old file, so a kill during a save leaves a truncated ``last.ckpt``. Here the checkpoint is
    written to a temporary file in the checkpoint folder, fsynced and renamed over the old one;
    the replaced ``last.ckpt`` is kept as ``last.prev.ckpt`` (a hard link: no copy), which
    resume falls back to if ``last.ckpt`` is ever unreadable. Loading always uses
    ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain values, never
    pickled objects.
    """
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
            if storage_options is not None:
                raise TypeError("neurofm's checkpoint writer takes no storage_options")
            path = Path(path)
            keep = previous_of(path) if path.name == LAST else None
            with atomic_output(path, keep_previous=keep) as tmp:
                torch.save(checkpoint, tmp)

        def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None) -> dict:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    return AtomicCheckpointIO()


def _last_checkpoint(ckpt_dir: Path, every_n_steps: int = 0, every_minutes: float = 0.0):
    """The callback that writes ``ckpt_dir/last.ckpt`` (what ``resume=auto`` continues from).

    Saved at the end of every training epoch, after every ``every_n_steps`` optimizer steps
    (0 = off) and when ``every_minutes`` of training passed since the last save (0 = off; rank
    0's clock decides for all ranks). Lightning's own ``ModelCheckpoint(save_top_k=0,
    save_last=True)`` does not do this (2.6): it writes ``last.ckpt`` at an epoch end only when
    it also wrote a top-k checkpoint at that step, so with ``save_top_k=0`` nothing is written
    until training ends, and a crash loses the whole run.
    """
    from lightning.pytorch.callbacks import Checkpoint

    class _LastCheckpoint(Checkpoint):
        monitor = None  # not a "best" checkpoint (see _restore_best)
        best_model_path = ""

        def __init__(self):
            self.path = ckpt_dir / LAST
            self._saved_step = -1
            self._seen_step = -1
            self._since = time.monotonic()

        def on_train_start(self, trainer, pl_module) -> None:
            self._since = time.monotonic()
            self._saved_step = self._seen_step = int(trainer.global_step)  # a resumed run: already saved

        def _save(self, trainer) -> None:
            if trainer.global_step == self._saved_step or trainer.sanity_checking:
                return
            trainer.save_checkpoint(self.path, weights_only=False)  # the full state resume needs (and no log line)
            self._saved_step = int(trainer.global_step)
            self._since = time.monotonic()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == self._seen_step:  # accumulating gradients: no optimizer step yet
                return
            self._seen_step = int(trainer.global_step)
            due = every_n_steps > 0 and trainer.global_step % every_n_steps == 0
            if every_minutes > 0:
                late = time.monotonic() - self._since >= 60.0 * every_minutes
                due = bool(trainer.strategy.broadcast(due or late))  # every rank saves, or none
            if due:
                self._save(trainer)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._save(trainer)

        def on_train_end(self, trainer, pl_module) -> None:
            self._save(trainer)

    return _LastCheckpoint()


def _csv_logger(run_dir: Path, resume_step: int | None = None):
    """Lightning's CSVLogger (``run_dir/logs/metrics.csv``). A run resumed from a checkpoint
    of global step ``resume_step`` keeps the rows logged before that checkpoint and appends
    its own (Lightning deletes a non-empty log folder's metrics.csv when a logger starts
    there); rows of steps after the checkpoint, which the resumed run does again, are dropped
    so that no step appears twice."""
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class _AppendingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if resume_step is None:
                return super()._check_log_dir_exists()
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header, rows = list(reader.fieldnames or []), list(reader)
            kept = [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) < resume_step]
            if len(kept) < len(rows):
                with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(kept)
            self.metrics_keys = header

    class _CSVLogger(CSVLogger):
        @property
        def experiment(self):
            from lightning.pytorch.utilities.rank_zero import rank_zero_only

            if self._experiment is None and rank_zero_only.rank == 0:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _AppendingWriter(log_dir=self.log_dir)
            return super().experiment

    return _CSVLogger(run_dir, name="logs", version="")


#: trainer.logger names -> (module the logger needs, extra that installs it)
LOGGERS = {"csv": (None, None), "tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
           "mlflow": ("mlflow", "mlflow")}


def logger_names(tc: TrainerConfig) -> list[str]:
    """``trainer.logger`` as a list of names, checked: an unknown name or a logger whose package
    is not installed is a :class:`ConfigError` saying which extra to install."""
    import importlib.util

    names = [n.strip().lower() for n in str(tc.logger).split(",") if n.strip()]
    if not names:
        raise ConfigError(f"trainer.logger: empty; choose from {', '.join(LOGGERS)} (comma-separated for several)")
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"trainer.logger: {name!r} is not one of {', '.join(LOGGERS)} (comma-separated for "
                              f"several, e.g. trainer.logger=csv,tensorboard)")
        module, extra = LOGGERS[name]
        # TensorBoard logging also works through tensorboardX, as in Lightning
        found = module is None or any(importlib.util.find_spec(m) is not None
                                      for m in ([module, "tensorboardX"] if name == "tensorboard" else [module]))
        if not found:
            raise ConfigError(f"trainer.logger={name}: the {module} package is not installed; pip install "
                              f"\"neurofm[{extra}]\" (or pip install {module}), or use trainer.logger=csv")
    return names


def _loggers(tc: TrainerConfig, run_dir: Path, resume_step: int | None = None) -> list:
    """The Lightning loggers of ``trainer.logger``, all writing under ``run_dir``."""
    from lightning.pytorch import loggers

    out = []
    for name in logger_names(tc):
        if name == "csv":  # run_dir/logs/metrics.csv, appended to on resume
            out.append(_csv_logger(run_dir, resume_step))
        elif name == "tensorboard":  # run_dir/logs/events.out.tfevents.*
            out.append(loggers.TensorBoardLogger(run_dir, name="logs", version="", default_hp_metric=False))
        elif name == "wandb":  # project from WANDB_PROJECT (default neurofm); files under run_dir/wandb
            out.append(loggers.WandbLogger(save_dir=str(run_dir), name=run_dir.name,
                                           project=os.environ.get("WANDB_PROJECT", "neurofm")))
        elif name == "mlflow":  # MLFLOW_TRACKING_URI if set, else a file store in run_dir/mlruns
            uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
            out.append(loggers.MLFlowLogger(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "neurofm"),
                                            run_name=run_dir.name, tracking_uri=uri))
    return out


#: Lightning's lines that say nothing about a neurofm run: device availability, adverts for its
#: cloud products, notes that a limit of 1.0 uses all batches, and the note at every checkpoint
#: SAVE that "`weights_only` was not set" (it sounds like an unsafe load; neurofm always loads
#: with ``weights_only=True``, :func:`_checkpoint_io`).
_LIGHTNING_NOISE = ("GPU available:", "TPU available:", "HPU available:", "\U0001f4a1 Tip:", "`Trainer(limit_",
                    "Loading `train_dataloader` to estimate", "`weights_only` was not set, defaulting to")
_LIGHTNING_NOISY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                            "lightning.pytorch.trainer.connectors.checkpoint_connector")


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_LIGHTNING_NOISE)


def _quiet_lightning() -> None:
    """Drop :data:`_LIGHTNING_NOISE` from Lightning's own loggers, and the FutureWarning that
    Lightning's pytree helper triggers in recent torch (``LeafSpec``) from that module only."""
    import warnings

    for name in _LIGHTNING_NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


def _validate_when_steps_run_out():
    """A callback that validates at the step where ``trainer.max_steps`` ends training.

    Lightning validates at the end of an epoch; a user's step limit shorter than one epoch
    (``neurofm finetune ... trainer.max_steps=60``) ended training before any validation, so the
    checkpoint and early-stopping monitors never saw their metric (Lightning raised ``Early
    stopping conditioned on metric `val/r2` which is not available``). Asking the trainer to
    stop at that step makes Lightning run validation there first (its rule for a requested
    stop), so the final weights are validated and model selection has at least one score.
    """
    import lightning as L

    class _ValidateAtMaxSteps(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if 0 < trainer.max_steps <= trainer.global_step:
                trainer.should_stop = True

    return _ValidateAtMaxSteps()


def _validation_cadence(tc: TrainerConfig) -> dict:
    """Lightning's validation settings: every ``check_val_every_n_epoch`` epochs, or with
    ``val_check_every_n_steps = N > 0`` every N optimizer steps counted across epochs
    (Lightning counts batches: N x ``accumulate_grad_batches``)."""
    if tc.val_check_every_n_steps < 0:
        raise ConfigError(f"trainer.val_check_every_n_steps must be >= 0 (0 = by epochs), got {tc.val_check_every_n_steps}")
    if tc.val_check_every_n_steps:
        return {"check_val_every_n_epoch": None,
                "val_check_interval": tc.val_check_every_n_steps * max(1, tc.accumulate_grad_batches)}
    return {"check_val_every_n_epoch": tc.check_val_every_n_epoch}


def build_trainer(tc: TrainerConfig, run_dir: Path, monitor: str | None = None, mode: str = "min",
                  extra_callbacks: Sequence[Any] = (), seed: int = 0, resume_step: int | None = None):
    """A Lightning Trainer writing checkpoints and logs (``trainer.logger``) under ``run_dir``; ``seed`` seeds
    every training step (see :func:`_exact_resume_callback`)."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

    from neurofm.tasks.callbacks import EarlyStoppingAfterValidation, LogProgress  # lazy: Lightning

    _quiet_lightning()
    ckpt_dir = run_dir / "checkpoints"
    # last.ckpt: what resume=auto continues from (see _last_checkpoint)
    callbacks = [_last_checkpoint(ckpt_dir, tc.checkpoint_every_n_steps, tc.checkpoint_every_minutes)]
    callbacks += [_exact_resume_callback(seed), LearningRateMonitor(logging_interval="step")]
    if tc.record_batches:
        callbacks.append(_batch_recorder(run_dir / "ranks"))
    callbacks += list(extra_callbacks)
    # a progress bar on a terminal; into a log file (stderr redirected) plain lines instead (LogProgress)
    bar = tc.progress_bar and _is_terminal(sys.stderr)
    if tc.progress_bar and not bar:
        callbacks.append(LogProgress())
    if monitor:
        callbacks.insert(1, ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                            save_top_k=1, auto_insert_metric_name=False,
                                            enable_version_counter=False))
    if monitor:
        callbacks.append(_validate_when_steps_run_out())
    if monitor and tc.early_stopping_patience > 0:
        # check_finite=False: a validation block with one class gives AUROC NaN for that epoch;
        # it counts as no improvement instead of stopping the run.
        callbacks.append(EarlyStoppingAfterValidation(monitor=monitor, mode=mode, patience=tc.early_stopping_patience,
                                                      check_finite=False))
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=tc.max_epochs, max_steps=tc.max_steps,
        accelerator=tc.accelerator, devices=_devices(tc.devices), num_nodes=tc.num_nodes,
        strategy=tc.strategy, precision=_precision(tc),
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val or None,
        log_every_n_steps=tc.log_every_n_steps, **_validation_cadence(tc),
        limit_train_batches=tc.limit_train_batches, limit_val_batches=tc.limit_val_batches,
        deterministic=tc.deterministic, enable_progress_bar=bar,
        logger=_loggers(tc, run_dir, resume_step),
        callbacks=callbacks, plugins=[_checkpoint_io()],
        use_distributed_sampler=False,  # neurofm's samplers shard by rank themselves
    )


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def resume_path(resume: str, run_dir: Path) -> str | None:
    """``resume``: ``auto`` (the newest loadable checkpoint in ``run_dir/checkpoints`` if any),
    ``none``, or a checkpoint path.

    ``auto`` tries ``last.ckpt``, then ``last.prev.ckpt`` (the one it replaced), then any other
    checkpoint there, newest first; passing over an unreadable one (empty, truncated) is
    reported. Checkpoints exist but none loads, or an explicit path does not load: an error
    naming the path and the fix.
    """
    if resume in ("", "none", "never", None):
        return None
    if resume != "auto":
        path = Path(resume)
        if not path.exists():
            raise FileNotFoundError(f"resume={resume}: no such checkpoint")
        problem = _unloadable(path)
        if problem:
            raise ConfigError(f"resume={resume}: {path} cannot be loaded ({problem}); give another checkpoint, "
                              f"or resume=none to start over")
        return str(path)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / LAST
    found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if ckpt_dir.is_dir() else []
    order = [p for p in (last, previous_of(last)) if p in found] + [p for p in found if p not in (last, previous_of(last))]
    skipped = []
    for path in order:
        problem = _unloadable(path)
        if not problem:
            if skipped:
                log.warning("neurofm: %s; resuming from %s, the newest checkpoint that loads",
                            "; ".join(f"{p} cannot be loaded ({why})" for p, why in skipped), path)
            return str(path)
        skipped.append((path, problem))
    if skipped:
        raise ConfigError("resume=auto: no checkpoint in " + str(ckpt_dir) + " can be loaded: "
                          + "; ".join(f"{p.name}: {why}" for p, why in skipped)
                          + ". Start this run_dir over with resume=none (or give resume=PATH of a good checkpoint)")
    return None


def _global_step(checkpoint: str | None) -> int | None:
    """The global step a checkpoint was written at (None for no checkpoint)."""
    if not checkpoint:
        return None
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def _unloadable(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be loaded, or None if it loads (memory-mapped, with
    ``weights_only=True``: tensors are not read, a truncated or empty file still fails)."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # EOFError, RuntimeError (PytorchStreamReader...), UnpicklingError, OSError
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'truncated'}"
    if not isinstance(state, dict) or "state_dict" not in state:
        return "not a Lightning checkpoint (no state_dict)"
    return None


#: config sections that decide what a checkpoint's weights and data order mean; a resumed run
#: must match the run that wrote the checkpoint in all of them (trainer and eval may change,
#: e.g. more epochs or another device count).
RESUME_SECTIONS = ("model", "data", "task")


def check_resume_config(cfg, checkpoint: str | os.PathLike, given=None) -> None:
    """Refuse to resume ``checkpoint`` under a config that differs from the one that wrote it.

    The run that wrote ``RUN/checkpoints/X.ckpt`` saved its resolved config as
    ``RUN/config.yaml``; any difference in :data:`RESUME_SECTIONS` would continue a different
    model or data order from these weights (or fail later on a shape), so it is a
    :class:`ConfigError` naming every differing key. A key absent from the saved config (added to
    neurofm since) whose value is its default is no difference. No saved config: nothing to compare.

    ``given``: the config as the user gave it, before ``recipe.prepare`` filled keys from the
    data or a pretrained folder (BaRISTA's ``model.preprocessing``, ``model.patch_len``...).
    Such a derived key absent from the saved config (an older neurofm did not derive or save it)
    is no difference either: the user set nothing. A derived key the saved config has with
    another value is one (the data or the pretrained folder changed), and the error says so.
    """
    saved_path = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not saved_path.exists():
        return
    saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True) or {}
    saved = drop_retired(saved, str(saved.get("family", "neuroformer")), str(saved_path))
    new = _as_saved(cfg)
    # a key added to the config since the checkpoint's run wrote config.yaml is absent there; at
    # its default it changes nothing (the old code behaved as the default does)
    default = _as_saved(type(cfg)())
    user = _as_saved(given) if given is not None else None
    diffs, derived_diffs = [], []
    for section in RESUME_SECTIONS:
        old_flat, new_flat = _flatten(saved.get(section, {}), section), _flatten(new.get(section, {}), section)
        default_flat = _flatten(default.get(section, {}), section)
        user_flat = _flatten(user.get(section, {}), section) if user is not None else None
        for key in sorted(set(old_flat) | set(new_flat)):
            a, b = old_flat.get(key, "<absent>"), new_flat.get(key, "<absent>")
            if key not in old_flat and key in default_flat and b == default_flat[key]:
                continue
            derived = user_flat is not None and key in new_flat and _derived(key, user_flat, b)
            if derived and key not in old_flat:
                continue
            if a != b:
                (derived_diffs if derived else diffs).append(f"{key}: {a!r} -> {b!r}")
    if diffs or derived_diffs:
        every = diffs + [f"{d} (derived from the data or the pretrained folder, which changed since)"
                         for d in derived_diffs]
        shown = "; ".join(every[:10]) + (f" (+{len(every) - 10} more)" if len(every) > 10 else "")
        raise ConfigError(f"resume: {checkpoint} was written by a run with another config ({saved_path}): {shown}. "
                          f"A checkpoint only continues the run that wrote it: use a new run_dir, or resume=none "
                          f"to start this run_dir over")


def _derived(key: str, user_flat: dict[str, Any], value: Any) -> bool:
    """Whether the recipe, not the user, set ``key`` to ``value``: the user's config has another
    value there, or an unset leaf (``None``) above it (``model.preprocessing`` -> ``...line_noise``)."""
    if key in user_flat:
        return user_flat[key] != value
    parts = key.split(".")
    return any(".".join(parts[:i]) in user_flat for i in range(len(parts) - 1, 0, -1))


def _as_saved(cfg) -> dict:
    """``cfg`` as :func:`save_config` writes it and config.yaml reads back (tuples become lists,
    ...), so a resumed run's config compares equal to the saved one whatever its Python types."""
    text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)  # type: ignore[return-value]


def _flatten(tree: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}`` (lists are compared whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}"))
    return out


# -- the run ------------------------------------------------------------------------------------


def run(cfg, extra_callbacks: Sequence[Any] = ()) -> RunResult:
    """Train, evaluate and export as ``cfg`` says. Returns where everything went.

    Runs with ``trainer.threads`` CPU threads (:mod:`neurofm.threads`), restored afterwards.
    """
    logger_names(cfg.trainer)  # a missing logger package fails now, not after data preparation
    threads, before = resolve_threads(cfg.trainer.threads), torch.get_num_threads()
    how = (f"auto: {available_cores()} cores, load {os.getloadavg()[0]:.1f}, at most {before}"
           if str(cfg.trainer.threads).strip().lower() == "auto" and hasattr(os, "getloadavg") else "set")
    log.info(f"neurofm: {threads} CPU thread{'s' if threads > 1 else ''} (trainer.threads={cfg.trainer.threads}; "
             f"{how}), {os.environ.get('OMP_WAIT_POLICY', 'default')} OpenMP wait policy")
    with torch_threads(cfg.trainer.threads):
        return _run(cfg, extra_callbacks)


def _run(cfg, extra_callbacks: Sequence[Any] = ()) -> RunResult:
    import lightning as L

    recipe = recipe_for(cfg.family)
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    t_start = time.time()
    given = cfg
    cfg = recipe.prepare(cfg)  # simulate the demo session once; resolve a pretrained model's shape
    if hasattr(recipe, "preflight"):  # what the run needs after training, checked before it starts
        recipe.preflight(cfg, training=True)
    ckpt = resume_path(cfg.resume, run_dir)
    if ckpt:
        check_resume_config(cfg, ckpt, given=given)  # keys prepare derived are not the user's changes
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    if hasattr(recipe, "resolve_trainer"):  # Trainer settings sized from the data (e.g. a step budget)
        cfg = dataclasses.replace(cfg, trainer=recipe.resolve_trainer(cfg, dm))
    if cfg.trainer.compile:
        task.model.compile()
    # A task that names its own validation metric (BaRISTA fine-tuning: val/auroc or val/r2,
    # higher is better) is checkpointed and early-stopped on it; otherwise the recipe's.
    monitor, mode = (task.monitor, "max") if isinstance(getattr(task, "monitor", None), str) else recipe.MONITOR
    trainer = build_trainer(cfg.trainer, run_dir, monitor=monitor, mode=mode,
                            extra_callbacks=extra_callbacks, seed=cfg.seed, resume_step=_global_step(ckpt))
    if trainer.global_rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    if ckpt and trainer.global_rank == 0:
        print(f"neurofm: resuming from {ckpt}")
    trained_before = _previous_training(run_dir) if ckpt else None
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    train_seconds = time.time() - t_start
    if trainer.global_rank != 0:
        return RunResult(run_dir, None, {})
    restored = (_restore_best(trainer, task, monitor, _evaluated_before(trained_before, trainer))
                if cfg.trainer.early_stopping_patience > 0 else None)
    metrics = recipe.evaluate(cfg, task, dm, run_dir)
    metrics.setdefault("training", {}).update(
        steps=int(trainer.global_step), epochs=int(trainer.current_epoch), wall_time_s=round(train_seconds, 1),
        device=str(trainer.strategy.root_device), world_size=int(trainer.world_size))
    if restored:
        metrics["training"]["evaluated_checkpoint"] = restored
    if getattr(task, "selection", None):  # fine-tuning's model-selection decision (tasks.callbacks.StartingPoint)
        metrics["training"]["selection"] = task.selection
    metrics["training"] = _keep_provenance(trained_before, metrics["training"])
    import neurofm

    metrics.update(family=cfg.family, neurofm_version=neurofm.__version__)
    metrics.setdefault("data", {})["sources"] = data_sources(run_session_paths(to_dict(cfg)))
    pretrained_dir = run_dir / "pretrained"
    model = recipe.export(task)
    metrics.setdefault("n_params", int(sum(p.numel() for p in model.parameters())))
    text = jsonio.dumps(metrics, default=_json_default)  # undefined metrics -> null, with null_reasons
    atomic_write(run_dir / "metrics.json", text + "\n")
    metrics = json.loads(text)  # the card and the caller see what metrics.json holds
    card = render_card(metrics, (run_dir / "config.yaml").read_text(), model_meta=model_meta(model))
    model.save_pretrained(pretrained_dir, card=card)
    return RunResult(run_dir, pretrained_dir, metrics)


def fold_configs(cfg, folds: int) -> list:
    """The run configs of blocked ``folds``-fold cross-validation of ``cfg``: fold ``k`` (1 to
    ``folds``) in ``RUN/fold-k`` with ``data.split.folds`` / ``data.split.fold`` set
    (:func:`neurofm.recipes.block_split`), everything else as ``cfg``."""
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    base = Path(cfg.run_dir)
    return [dataclasses.replace(cfg, run_dir=str(base / f"fold-{k}"), data=dataclasses.replace(
        cfg.data, split=dataclasses.replace(cfg.data.split, folds=folds, fold=k))) for k in range(1, folds + 1)]


def run_folds(cfg, folds: int, extra_callbacks: Sequence[Any] = ()) -> RunResult:
    """``neurofm finetune --folds K``: the run ``cfg`` once per fold of blocked K-fold
    cross-validation (:func:`fold_configs`; each fold a whole run in ``RUN/fold-k``, resumable as
    any run), then one decode report per target over every fold's test block
    (:func:`neurofm.report.pool_folds`): every moment of the recordings is scored once, by the
    fold that held it out, so a short recording gives K times the test windows of one split, and
    CIs to match. Every fold's pre-flight (data, events, targets, split sizes) runs before the
    first fold trains. Writes ``RUN/metrics.json`` and ``RUN/decode_report.md``; the fine-tuned
    models are the folds' (``RUN/fold-k/pretrained``): there is no single model of the whole run."""
    from neurofm.report import DECODE_INPUTS, limitation_lines, pool_folds

    recipe = recipe_for(cfg.family)
    cfgs = fold_configs(cfg, folds)
    kind = getattr(cfg.task, "finetune_task", None)
    decoded = [v for v in getattr(cfg.model, "behavior", []) if v.target and v.task == "regression"]
    if kind == "reconstruction" or (cfg.family == "neuroformer" and not decoded):
        raise ConfigError(f"--folds {folds}: cross-validation pools the decode reports of the folds, and this run makes "
                          f"none ({'channel reconstruction' if kind else 'no regression behaviour target'}); "
                          f"--folds is for decoding behaviour (spikes), classify and regress (iEEG)")
    level = log.level
    for k, c in enumerate(cfgs, 1):  # a fold refused after others trained would waste them
        try:
            if k > 1:  # the settings each fold's checks log are fold 1's (each fold logs its own when it runs)
                log.setLevel(max(level, logging.WARNING))
            c = recipe.prepare(c)
            if hasattr(recipe, "preflight"):
                recipe.preflight(c, training=True)
        except ConfigError as e:
            split = (f"; with --folds {folds} the split is the folds' (a session's /intervals and the data.split "
                     f"train / test fractions are not used): each test block is 1/{folds} of the recording, so fewer "
                     f"folds give each block more" if "split" in str(e) else "")
            raise ConfigError(f"fold {k} of {folds} (--folds {folds}): {e}{split}") from None
        finally:
            log.setLevel(level)
    results = []
    for k, c in enumerate(cfgs, 1):
        log.info(f"neurofm: fold {k} of {folds} -> {c.run_dir}")
        results.append(run(c, extra_callbacks))
    base = Path(cfg.run_dir)
    missing = [str(r.run_dir) for r in results if not (r.run_dir / DECODE_INPUTS).exists()]
    if missing:
        raise ConfigError(f"--folds: {', '.join(missing)} scored no decode report (nothing to pool): cross-validation "
                          f"pools the decoded behaviour (spikes) or the classified events / regressed target (iEEG)")
    reports = pool_folds([r.run_dir / DECODE_INPUTS for r in results], seed=cfg.seed)
    per_fold = [{"fold": k, "run_dir": str(r.run_dir), "metrics": r.metrics.get("metrics", {}),
                 "baselines": r.metrics.get("baselines", {}), **_fold_start(r.metrics)}
                for k, r in enumerate(results, 1)]
    metrics: dict[str, Any] = {"name": base.name, "metrics": {}, "baselines": {}, "decode_report": {},
                               "limitations": []}
    for target, rep in reports.items():
        for row in rep.rows:
            into = metrics["metrics"] if row.arm == rep.reference else metrics["baselines"].setdefault(row.arm, {})
            for m, v in row.values.items():
                into[f"{target}_{m}"] = v
                into[f"{target}_{m}_ci95"] = list(row.ci[m])
        metrics["decode_report"][target] = rep.to_dict()
        metrics["limitations"] += limitation_lines(target, rep)
    metrics["protocol"] = (f"blocked {folds}-fold cross-validation: each fold a whole fine-tuning run on the rest of "
                           f"the recording, its test block the fold's 1/{folds} of each session; reports pool every "
                           f"fold's test block; fold 1's protocol: {results[0].metrics.get('protocol', '')}")
    metrics["cross_validation"] = {"folds": folds, "per_fold": per_fold}
    if _folds_kept_start(results) == len(results):
        metrics["limitations"].append(_kept_start_note(results))
    import neurofm

    metrics.update(family=cfg.family, neurofm_version=neurofm.__version__)
    text = jsonio.dumps(metrics, default=_json_default)
    atomic_write(base / "metrics.json", text + "\n")
    atomic_write(base / "decode_report.md", "\n\n".join(r.to_text() for r in reports.values()) + "\n\n"
                 + _fold_table(reports, results) + "\n")
    return RunResult(base, None, json.loads(text))


def _fold_start(metrics: Mapping[str, Any]) -> dict:
    """A fold run's read-out start (``start.features``) and the weights model selection kept
    (``training.selection``: ``kept`` "start" = step 0, the start's fit), for the per-fold table.
    BaRISTA's ``start`` is one read-out's; Neuroformer's has one per decoded behaviour."""
    start = metrics.get("start") or {}
    start = start.get("features") or ", ".join(f"{t}: {v['features']}" for t, v in start.items()
                                                if isinstance(v, dict) and v.get("features"))
    sel = (metrics.get("training") or {}).get("selection") or {}
    out = {"start": start} if start else {}
    if sel.get("kept"):
        out["kept"] = "start (step 0)" if sel["kept"] == "start" else f"step {sel.get('selected_step')}"
    return out


def _fold_table(reports: Mapping[str, Any], results: Sequence[RunResult]) -> str:
    """Per fold, each arm's primary metric on that fold's own test block (markdown), with the
    fold's read-out start and the weights model selection kept: a fold that kept its starting
    state scores its start's linear fit (e.g. band power's), not trained weights, and the pooled
    verdicts are then that fit's."""
    lines = []
    starts = [_fold_start(r.metrics) for r in results]
    extra = [c for c in ("start", "kept") if any(c in s for s in starts)]
    for target, rep in reports.items():
        arms, m = [r.arm for r in rep.rows], rep.primary
        lines += [f"per fold ({target}, {m} on each fold's own test block):",
                  "| fold | " + " | ".join(arms + [f"{rep.reference or 'model'}: {c}" for c in extra]) + " |",
                  "|---" * (len(arms) + len(extra) + 1) + "|"]
        for k, r in enumerate(results, 1):
            folded = (r.metrics.get("decode_report") or {}).get(target) or r.metrics.get("report") or {}
            values = {row["arm"]: row.get(m) for row in folded.get("rows", [])}
            lines.append(f"| {k} | " + " | ".join(["-" if values.get(a) is None else f"{values[a]:.3f}" for a in arms]
                                                 + [str(starts[k - 1].get(c, "-")) for c in extra]) + " |")
    if (note := _kept_start_note(results)):
        lines += ["", note]
    return "\n".join(lines)


def _folds_kept_start(results: Sequence[RunResult]) -> int:
    return sum(_fold_start(r.metrics).get("kept", "").startswith("start") for r in results)


def _kept_start_note(results: Sequence[RunResult]) -> str:
    """How many folds kept their starting state (model selection found no check better than step 0)."""
    kept = _folds_kept_start(results)
    if not kept:
        return ""
    return (f"{kept} of {len(results)} folds kept their starting state (step 0: no validation check beat it by the "
            f"selection margin): those folds score their starting state (the start column's fit, or the initial weights "
            f"where there is none), not trained weights" + (
                "; every fold did, so the pooled fine-tuned row is the starting state's" if kept == len(results) else ""))


def _previous_training(run_dir: Path) -> dict | None:
    """The ``training`` section of the run folder's metrics.json, if a finished run left one."""
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()).get("training") if path.exists() else None
    except (json.JSONDecodeError, AttributeError):
        return None


def _keep_provenance(before: dict | None, now: dict) -> dict:
    """Training provenance of a resumed run. Re-running a finished run trains nothing: keep the
    record of the run that trained (its wall time, device...), noting the re-evaluation. A run
    resumed to train further adds this session's steps and time to the earlier ones."""
    if not before or "steps" not in before:
        return now
    if int(before["steps"]) == int(now["steps"]):
        kept = {k: v for k, v in before.items() if k != "reevaluated"}
        for key in ("evaluated_checkpoint", "selection"):
            if key in now:
                kept[key] = now[key]
        return {**kept, "reevaluated": True}
    return {**now, "wall_time_s": round(float(before.get("wall_time_s", 0.0)) + float(now["wall_time_s"]), 1),
            "resumed_at_step": int(before["steps"])}


def _evaluated_before(before: dict | None, trainer: L.Trainer) -> dict | None:
    """The checkpoint a finished run evaluated, when this session trained nothing more (a re-run
    of a finished run): model selection does not run again then (Lightning skips the training
    hooks), and checkpointing's own best may be a check that selection rejected for the start."""
    if not before or int(before.get("steps", -1)) != int(trainer.global_step):
        return None
    evaluated = before.get("evaluated_checkpoint") or {}
    return evaluated if evaluated.get("path") and Path(evaluated["path"]).exists() else None


def _restore_best(trainer: L.Trainer, task: L.LightningModule, monitor: str | None,
                  previous: dict | None = None) -> dict | None:
    """With early stopping, training ends ``patience`` epochs past the best one: put the best
    checkpoint's weights back (they are what gets evaluated and exported), or the ``previous``
    evaluated checkpoint's (what a finished run evaluated: :func:`_evaluated_before`). Returns
    what was restored, or None when there is no best checkpoint to restore."""
    best = next((cb for cb in trainer.checkpoint_callbacks if cb.monitor == monitor and cb.best_model_path), None)
    path = previous["path"] if previous else (best.best_model_path if best is not None else None)
    if path is None or not Path(path).exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    task.on_load_checkpoint(state)  # as Lightning does before loading weights (a task may migrate old keys)
    task.load_state_dict(state["state_dict"])
    score = previous.get("score") if previous else best.best_model_score
    return {"path": str(path), "monitor": monitor, "epoch": int(state.get("epoch", -1)),
            "step": int(state.get("global_step", -1)), "score": float(score) if score is not None else None}


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return to_dict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


#: The recipe of every model class the package saves (a test checks none is missing).
FAMILY_OF_MODEL = {"Neuroformer": "neuroformer", "Barista": "barista", "BaristaEncoder": "barista",
                   "BaristaFinetuned": "barista"}


def family_of(pretrained: str | os.PathLike) -> str:
    """Which recipe a pretrained folder belongs to (from its config.json)."""
    model_type = pretrained_config(pretrained)["model_type"]
    if model_type not in FAMILY_OF_MODEL:
        raise ConfigError(f"{pretrained}: model_type {model_type!r} has no fine-tuning recipe")
    return FAMILY_OF_MODEL[model_type]


def evaluate_pretrained(pretrained, sessions: Sequence[str], *, out_dir: Path, overrides: Sequence[str] = (),
                        **options) -> dict:
    """Evaluate a pretrained / fine-tuned folder on the test block of ``sessions`` (no training).

    ``options`` are the recipe's ``finetune_config`` options (task, behavior, events...): they
    say what to score. Writes ``out_dir/metrics.json`` and plots.
    """
    family = family_of(pretrained)
    recipe = recipe_for(family)
    overrides, options = _as_fine_tuned(pretrained, family, list(overrides), dict(options))
    cfg = recipe.finetune_config(pretrained, list(sessions), run_dir=str(out_dir), overrides=list(overrides),
                                 **options)
    cfg = recipe.prepare(cfg)
    if hasattr(recipe, "preflight"):
        recipe.preflight(cfg, training=False)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    metrics = recipe.evaluate(cfg, task, dm, Path(out_dir))
    atomic_write(Path(out_dir) / "metrics.json", jsonio.dumps(metrics, default=_json_default) + "\n")
    return metrics


#: Window stride keys of the families' data configs (Neuroformer ``data.stride``, BaRISTA
#: ``data.stride_s``); a run config holds the one of its family.
_STRIDE_KEYS = ("stride", "stride_s")

#: Neuroformer ``eval`` keys that say which windows behaviour is scored on (``prepare`` writes
#: the resolved ones to the run's config.yaml); evaluate of a fine-tuned folder uses the run's.
_SCORING_KEYS = ("score_when", "moving_threshold", "speed_smooth_s", "moving_behavior")


def _as_fine_tuned(pretrained, family: str, overrides: list[str], options: dict) -> tuple[list[str], dict]:
    """What ``neurofm evaluate`` takes from the fine-tuning run of a fine-tuned folder: its
    train / valid / test split (so the test block is the one that run held out, not one its
    training saw) and its window stride (``data.stride`` of Neuroformer, ``data.stride_s`` of
    BaRISTA: so the scored windows are the ones that run scored; the user's own ``data.*``
    overrides come after and win) and, when not given, the behaviour or events it was
    fine-tuned on. Each is one log line."""
    found = finetuning_run(pretrained, family)
    if found is None:
        return overrides, options
    path, run_cfg = found
    data = run_cfg.get("data") or {}
    split = data.get("split") or {}
    if split:
        overrides = [*(f"data.split.{k}={v}" for k, v in split.items()), *overrides]
        if split.get("folds"):  # a fold of `finetune --folds`: the fractions and /intervals play no part
            shown = (f"fold {split.get('fold')} of {split['folds']}-fold blocked cross-validation, valid "
                     f"{split.get('valid')}, gap {split.get('gap')}; from {path}; a session file's /intervals are "
                     f"not used")
        else:
            shown = (", ".join(f"{k} {v}" for k, v in split.items()) + f"; from {path}; a session file with its "
                     f"own /intervals/train, valid, test, as `neurofm split` writes, is split by those instead")
        log.info(f"neurofm: the fine-tuning run's split ({shown}); data.split.* to change")
    for key in _STRIDE_KEYS:
        if data.get(key):  # 0: the default, which evaluate uses too
            overrides = [f"data.{key}={data[key]}", *overrides]
            log.info(f"neurofm: windows every {data[key]} s, as fine-tuned (data.{key} from {path}); "
                     f"data.{key}=... to change")
    if not options.get("behavior"):
        names = list(data.get("behavior") or []) or ([data["target"]] if data.get("target") else [])
        if names:
            options["behavior"] = names
            log.info(f"neurofm: behaviour {', '.join(names)}, as fine-tuned (from {path}); --behavior to change")
    if not options.get("events") and data.get("events") and \
            (run_cfg.get("task") or {}).get("finetune_task") == "classification":
        options["events"] = data["events"]
        log.info(f"neurofm: events {data['events']}, as fine-tuned (from {path}); --events to change")
    scoring = {k: v for k, v in (run_cfg.get("eval") or {}).items() if k in _SCORING_KEYS}
    mine = options.get("score_when") or any(o.split("=", 1)[0] in {f"eval.{k}" for k in _SCORING_KEYS}
                                            for o in overrides)
    if scoring.get("score_when") in ("moving", "all") and not mine:
        # the windows the run scored (its validation and test blocks): resolved from its training
        # data, so a re-resolution here could differ only where the run was told otherwise
        overrides = [*(f"eval.{k}={json.dumps(v)}" for k, v in scoring.items()), *overrides]
        shown = ", ".join(f"{k} {v}" for k, v in scoring.items())
        log.info(f"neurofm: behaviour scored on the windows the fine-tuning run scored ({shown}; from {path}); "
                 f"--score-when / eval.moving_threshold to change")
    if data.get("labels") and not any(o.startswith("data.labels=") for o in overrides):
        overrides = [f"data.labels={json.dumps(list(data['labels']))}", *overrides]
        log.info(f"neurofm: classes {list(data['labels'])}, as fine-tuned (data.labels from {path}); "
                 f"data.labels=... to change")
    return overrides, options


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, family: str | None = None) -> Path:
    """Write the ``from_pretrained`` folder of a Lightning checkpoint of a neurofm task."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    if family is None:
        run_cfg = checkpoint.resolve().parent.parent / "config.yaml"
        if not run_cfg.exists():
            raise ConfigError(f"{checkpoint}: no config.yaml in its run folder ({run_cfg.parent}); pass --family")
        family = str(OmegaConf.load(run_cfg).get("family", "neuroformer"))
    task = recipe_for(family).load_task(_without_retired_hparams(checkpoint, family))
    return recipe_for(family).export(task).save_pretrained(out_dir)


def _without_retired_hparams(checkpoint: Path, family: str):
    """``checkpoint``, or, when its task's hyper-parameters hold a key since removed (the
    ``task.X`` keys of :data:`~neurofm.config.RETIRED_KEYS` are the task's ``X``), the same
    checkpoint in memory without it, with :func:`~neurofm.config.drop_retired`'s one warning:
    Lightning passes every saved hyper-parameter to the task, so an older run's checkpoint failed
    to load (``unexpected keyword argument``)."""
    import io

    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        return checkpoint
    kept = drop_retired({"task": dict(hparams)}, family, str(checkpoint))["task"]
    if kept.keys() == hparams.keys():
        return checkpoint
    buffer = io.BytesIO()
    torch.save({**ckpt, "hyper_parameters": kept}, buffer)
    buffer.seek(0)
    return buffer


def print_result(result: RunResult) -> None:
    """What ``neurofm train`` / ``finetune`` print at the end: the run's files and its numbers."""
    if result.pretrained_dir is None:
        return
    print(f"\nrun folder:       {result.run_dir}")
    print(f"pretrained model: {result.pretrained_dir}  (neurofm.hub.load_pretrained)")
    print_summary(result.metrics, result.run_dir, ("plots", "checkpoints", "logs"))


def print_summary(metrics: Mapping[str, Any], folder: Path, subfolders: Sequence[str] = ("plots",)) -> None:
    """The human summary of a metrics.json written in ``folder`` (``finetune``, ``train`` and
    ``evaluate`` alike): where it and the decode report are, the files in ``subfolders``, every
    metric, every baseline and every limitation."""
    folder = Path(folder)
    print(f"metrics:          {folder / 'metrics.json'}")
    if (folder / "decode_report.md").is_file():
        print(f"decode report:    {folder / 'decode_report.md'}")
    for sub in subfolders:  # every file the run wrote, by folder
        files = sorted(f.relative_to(folder / sub).as_posix() for f in (folder / sub).rglob("*") if f.is_file())
        if files:
            print(f"{sub + ':':<17} {folder / sub}/ ({', '.join(files)})")
    for k, v in metrics.get("metrics", {}).items():
        if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):  # a CI: [lo, hi]
            v = "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
        print(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")
    for name, row in metrics.get("baselines", {}).items():
        print(f"  baseline: {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
    # what metrics.json says is wrong with the run (e.g. a pretrained encoder still near its random
    # init): a user reading only the terminal must see it too, not only the numbers above
    summary = (metrics.get("start") or {}).get("summary")  # what a fine-tuned head started from (BaRISTA)
    if isinstance(summary, str):
        print(f"  {summary}")
    for line in metrics.get("limitations") or []:
        print(f"  LIMITATION: {line}")


def train_help(prog: str = "neurofm train") -> str:
    """What ``neurofm train --help`` and ``python train.py --help`` print."""
    names = ", ".join(shipped_configs())
    return f"""usage: {prog} [CONFIG] [key=value ...]

Train a Neuroformer or BaRISTA model as a config says, evaluate it on a held-out time block
against baselines, and export a from_pretrained folder. With no CONFIG: the Neuroformer CPU
demo (simulates a 40-unit spiking session once, trains a small model in a few minutes).

CONFIG       a YAML file, or the name of a config shipped with neurofm: {names}
             (a bare name means neuroformer/NAME: `demo` is neuroformer/demo)
key=value    override any setting, dotted into the config tree (an unknown key or a wrong
             type is an error naming the key); lists in brackets: data.sessions='[a.h5,b.h5]'.
             Sections: family, run_dir, seed, resume, data, model, task, eval, trainer.
             Print the resolved config with: neurofm config show CONFIG [key=value ...]

Run folder   run_dir from the config; overrides of model / data / task / seed / family add
             a short hash of the changed settings (runs/neuroformer-demo-3f9a2c), so runs of
             different models never share a folder; set run_dir=... to choose it. resume=auto
             (default) continues the folder's last checkpoint.
Useful keys  trainer.max_epochs, trainer.max_steps, trainer.accelerator=cpu|gpu,
             trainer.devices=N, trainer.strategy=ddp|fsdp, trainer.precision,
             trainer.threads=auto|N (CPU threads; auto = free cores from the load average),
             trainer.logger=csv|tensorboard|wandb|mlflow (comma-separated for several),
             trainer.log_every_n_steps, trainer.early_stopping_patience, data.batch_size

examples:
  {prog}                                   # the CPU demo -> runs/neuroformer-demo
  {prog} demo model.n_embd=128 trainer.max_epochs=20
  {prog} barista/demo trainer.logger=csv,tensorboard
  {prog} my_config.yaml run_dir=runs/exp1 trainer.devices=4 trainer.strategy=ddp

Writes RUN_DIR/config.yaml, metrics.json, pretrained/ (config.json, model.safetensors,
README.md), plots/, checkpoints/ (last.ckpt, best.ckpt) and logs/ (metrics.csv).
"""


def main(argv: Sequence[str] | None = None, prog: str = "python train.py") -> int:
    """``python train.py [CONFIG] [key=value ...]`` (also ``neurofm train``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = argv.pop(0) if argv and "=" not in argv[0] and not argv[0].startswith("-") else None
    if any(a in ("-h", "--help") for a in argv):
        print(train_help(prog))
        if path is not None:
            try:
                print(f"CONFIG {path}: {config_path(path)}; its settings: neurofm config show {path}")
            except FileNotFoundError as e:
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2
        return 0
    unknown = [a for a in argv if "=" not in a]
    if unknown:
        print(f"{prog}: error: {unknown[0]!r} is not key=value (only the first argument may be a CONFIG); "
              f"see {prog} --help", file=sys.stderr)
        return 2
    log_to_stderr()

    try:
        with plain_warnings(prog):
            print_result(run(resolve_config(path, argv)))
    except (ConfigError, PretrainedError, SessionFormatError, FileNotFoundError, OutputError) as e:
        # These name the file or key and the fix: show them without a traceback. Anything
        # else (a failure inside training) keeps its traceback.
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
