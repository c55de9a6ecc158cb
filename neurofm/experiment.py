"""Runs: one config tree -> data module, task, Lightning Trainer, evaluation, export.

``python train.py [CONFIG.yaml] [key=value ...]`` and ``neurofm train`` both call :func:`main`.
A config tree has five parts (DESIGN.md 6)::

    family: neuroformer | barista          which recipe (neurofm.recipes.<family>)
    run_dir, seed, resume                  where, reproducibility, resume=auto|none|PATH
    data:    ...                           the recipe's data config
    model:   ...                           the model's config dataclass
    task:    ...                           objective, optimiser, schedule
    trainer: ...                           TrainerConfig below (devices, strategy, precision...)

Unknown keys and wrong types are errors naming the key (:mod:`neurofm.config`). The resolved
config is saved as ``run_dir/config.yaml`` beside the checkpoints; the run writes
``run_dir/metrics.json``, ``run_dir/pretrained/`` (``from_pretrained`` folder + model card) and
``run_dir/plots/``.

Checkpoints (``checkpoints/last.ckpt`` at the end of every epoch, or every
``trainer.checkpoint_every_n_steps`` steps, plus ``best.ckpt`` by the recipe's monitored metric)
go through Lightning's atomic save (temp file, then rename) and carry the RNG states and the
training loader's position, so a run killed at any point and restarted with ``resume=auto``
continues from the last checkpoint with the same step count, the same data order and the same
random draws, and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf

from neurofm.config import ConfigError, from_dict, to_dict

log = logging.getLogger("neurofm")

FAMILIES = ("neuroformer", "barista")
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "neuroformer" / "demo.yaml"


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
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (GPU runs)
    progress_bar: bool = True
    early_stopping_patience: int = 0  # 0 = off; else epochs without improvement of the monitored metric
    checkpoint_every_n_steps: int = 0  # 0 = at the end of every epoch; else also every N optimizer steps


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
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such config file (see configs/ for examples)")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    family = dict(OmegaConf.from_dotlist([o for o in overrides if o.startswith("family=")])).get(
        "family", raw.get("family", "neuroformer"))
    recipe = recipe_for(family)
    return from_dict(recipe.RunConfig, raw, overrides=list(overrides), where=str(path))


def save_config(cfg, path: Path) -> None:
    _atomic_write(path, OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg))))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def _rng_callback():
    """A callback that saves Python / NumPy / torch RNG states in checkpoints and restores them."""
    import lightning as L

    class _RNG(L.Callback):
        # Only tensors, ints and strings: the checkpoint stays loadable with weights_only=True.
        def state_dict(self) -> dict:
            name, keys, pos, has_gauss, gauss = np.random.get_state()
            return {"python": random.getstate(), "torch": torch.get_rng_state(),
                    "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

        def load_state_dict(self, state: dict) -> None:
            random.setstate(state["python"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            torch.set_rng_state(state["torch"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])

    return _RNG()


def build_trainer(tc: TrainerConfig, run_dir: Path, monitor: str | None = None, mode: str = "min",
                  extra_callbacks: Sequence[Any] = ()):
    """A Lightning Trainer writing checkpoints and CSV logs under ``run_dir``."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    ckpt_dir = run_dir / "checkpoints"
    every_steps = tc.checkpoint_every_n_steps or None
    callbacks = [
        # last.ckpt: what resume=auto continues from (every epoch, or every N steps)
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=every_steps,
                        every_n_epochs=None if every_steps else 1, save_on_train_epoch_end=True),
        _rng_callback(),
        LearningRateMonitor(logging_interval="step"),
        *extra_callbacks,
    ]
    if monitor:
        callbacks.insert(1, ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode,
                                            save_top_k=1, auto_insert_metric_name=False))
    if monitor and tc.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=tc.early_stopping_patience))
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=tc.max_epochs, max_steps=tc.max_steps,
        accelerator=tc.accelerator, devices=_devices(tc.devices), num_nodes=tc.num_nodes,
        strategy=tc.strategy, precision=_precision(tc),
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val or None,
        log_every_n_steps=tc.log_every_n_steps, check_val_every_n_epoch=tc.check_val_every_n_epoch,
        limit_train_batches=tc.limit_train_batches, limit_val_batches=tc.limit_val_batches,
        deterministic=tc.deterministic, enable_progress_bar=tc.progress_bar,
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=callbacks,
        use_distributed_sampler=False,  # neurofm's samplers shard by rank themselves
    )


def resume_path(resume: str, run_dir: Path) -> str | None:
    """``resume``: ``auto`` (last checkpoint in run_dir if any), ``none``, or a checkpoint path."""
    if resume in ("", "none", "never", None):
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    return str(resume)


# -- the run ------------------------------------------------------------------------------------


def run(cfg, extra_callbacks: Sequence[Any] = ()) -> RunResult:
    """Train, evaluate and export as ``cfg`` says. Returns where everything went."""
    import lightning as L

    recipe = recipe_for(cfg.family)
    run_dir = Path(cfg.run_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    t_start = time.time()
    cfg = recipe.prepare(cfg)  # simulate the demo session once; resolve a pretrained model's shape
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    if cfg.trainer.compile:
        task.model.compile()
    trainer = build_trainer(cfg.trainer, run_dir, monitor=recipe.MONITOR[0], mode=recipe.MONITOR[1],
                            extra_callbacks=extra_callbacks)
    if trainer.global_rank == 0:
        save_config(cfg, run_dir / "config.yaml")
    ckpt = resume_path(cfg.resume, run_dir)
    if ckpt and trainer.global_rank == 0:
        print(f"neurofm: resuming from {ckpt}")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt)
    train_seconds = time.time() - t_start
    if trainer.global_rank != 0:
        return RunResult(run_dir, None, {})
    metrics = recipe.evaluate(cfg, task, dm, run_dir)
    metrics.setdefault("training", {}).update(
        steps=int(trainer.global_step), epochs=int(trainer.current_epoch), wall_time_s=round(train_seconds, 1),
        device=str(trainer.strategy.root_device), world_size=int(trainer.world_size))
    import neurofm

    metrics.update(family=cfg.family, neurofm_version=neurofm.__version__)
    pretrained_dir = run_dir / "pretrained"
    model = recipe.export(task)
    metrics.setdefault("n_params", int(sum(p.numel() for p in model.parameters())))
    _atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=_json_default) + "\n")
    from neurofm.cards import render_card

    model.save_pretrained(pretrained_dir, card=render_card(metrics, (run_dir / "config.yaml").read_text()))
    return RunResult(run_dir, pretrained_dir, metrics)


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


FAMILY_OF_MODEL = {"Neuroformer": "neuroformer", "Barista": "barista", "BaristaEncoder": "barista",
                   "BaristaClassifier": "barista", "BaristaRegressor": "barista"}


def family_of(pretrained: str | os.PathLike) -> str:
    """Which recipe a pretrained folder belongs to (from its config.json)."""
    from neurofm.hub import pretrained_config

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
    recipe = recipe_for(family_of(pretrained))
    cfg = recipe.finetune_config(pretrained, list(sessions), run_dir=str(out_dir), overrides=list(overrides),
                                 **options)
    cfg = recipe.prepare(cfg)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    metrics = recipe.evaluate(cfg, task, dm, Path(out_dir))
    _atomic_write(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2, default=_json_default) + "\n")
    return metrics


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
    task = recipe_for(family).load_task(checkpoint)
    return recipe_for(family).export(task).save_pretrained(out_dir)


def print_result(result: RunResult) -> None:
    if result.pretrained_dir is None:
        return
    print(f"\nrun folder:       {result.run_dir}")
    print(f"pretrained model: {result.pretrained_dir}  (neurofm.hub.load_pretrained)")
    print(f"metrics:          {result.run_dir / 'metrics.json'}")
    for k, v in result.metrics.get("metrics", {}).items():
        print(f"  {k:<28} {v:.4f}" if isinstance(v, float) else f"  {k:<28} {v}")
    for name, row in result.metrics.get("baselines", {}).items():
        print(f"  baseline: {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python train.py [CONFIG.yaml] [key=value ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = argv.pop(0) if argv and "=" not in argv[0] else None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(path, argv)
    print_result(run(cfg))
    return 0
