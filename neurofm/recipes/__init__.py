"""Recipes: how one model family turns a run config into data, a task, metrics and an export.

Each recipe module (``neuroformer``, ``barista``) defines:

* ``RunConfig``: the typed config tree of a run (family, run_dir, seed, resume, data, model,
  task, eval, trainer);
* ``MONITOR``: the validation metric (name, "min"|"max") for best checkpoints and early stopping;
* ``prepare(cfg) -> cfg``: make what the data config names but does not exist yet (the
  simulated demo session, idempotently) and resolve what a pretrained folder fixes (its
  model shape);
* ``finetune_config(pretrained, sessions, ...)``: the run config of ``neurofm finetune``;
* ``datamodule(cfg)`` and ``task(cfg, dm)``: the LightningDataModule and LightningModule;
* ``evaluate(cfg, task, dm, run_dir) -> dict``: held-out metrics, baselines on the same split,
  the protocol in words, plots under ``run_dir/plots``;
* ``export(task)``: the plain ``nn.Module`` to ``save_pretrained``.

:mod:`neurofm.experiment` runs any recipe the same way.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator

#: A pretraining estimate above this many seconds is reported as long by ``neurofm inspect``,
#: with the settings that shorten it: a run one would not wait for at the terminal. A reporting
#: line, not a tuned value (the estimate itself is measured on the file: :func:`time_pretraining`).
LONG_PRETRAINING_S = 600.0


def session_paths(data) -> list[str]:
    """The run's session files: ``data.sessions``, or the simulated demo's path when empty."""
    return list(data.sessions) or [data.simulate.path]


def ensure_sessions(data, *, convert_hint: str, simulate: Callable[[], None], what: str) -> None:
    """Check that ``data.sessions`` exist, or write the simulated demo once if none are given.

    ``convert_hint`` is the command that makes a session file from a recording; ``simulate``
    writes ``data.simulate.path``; ``what`` describes it in the progress line.
    """
    if data.sessions:
        missing = [p for p in data.sessions if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"data.sessions: {missing[0]} does not exist (convert a recording with "
                                    f"`{convert_hint}`)")
    elif not Path(data.simulate.path).exists():
        print(f"neurofm: simulating the demo {what} -> {data.simulate.path}")
        simulate()


@contextlib.contextmanager
def quiet_preparation() -> Iterator[None]:
    """Silence a run's preparation (its log notes, printed lines and warnings) for a tool that
    only sizes the run (``neurofm inspect``'s pretraining estimate): they belong to the run."""
    log = logging.getLogger("neurofm")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def time_pretraining(cfg, task, loader, loss: Callable, n_steps: int = 3) -> dict:
    """What pretraining ``task`` with ``cfg.trainer`` costs: ``trainer.max_epochs`` (or
    ``max_steps``) times the training ``loader``'s batches is the step count, and ``n_steps``
    steps of ``loss(batch)`` (batch read, forward, backward, AdamW at ``cfg.task.lr``; after one
    warm-up step, which allocates what the rest reuse) on the first training batches, on the CPU
    with ``trainer.threads`` threads as ``train.py`` runs, give the seconds per step (median)."""
    import numpy as np
    import torch

    from neurofm.threads import resolve_threads

    per_epoch = len(loader)
    steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else cfg.trainer.max_epochs * per_epoch
    if cfg.trainer.max_steps > 0 and cfg.trainer.max_epochs > 0:
        steps = min(steps, cfg.trainer.max_epochs * per_epoch)
    threads, before = resolve_threads(cfg.trainer.threads), torch.get_num_threads()
    torch.set_num_threads(threads)
    opt = torch.optim.AdamW(task.parameters(), lr=cfg.task.lr)
    task.train()
    times: list[float] = []
    try:
        batches = iter(loader)
        for i in range(n_steps + 1):
            start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            loss(batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    per_step = float(np.median(times)) if times else float("nan")
    return {"config_epochs": int(cfg.trainer.max_epochs), "max_steps": int(cfg.trainer.max_steps),
            "batch_size": int(cfg.data.batch_size), "steps_per_epoch": int(per_epoch), "steps": int(steps),
            "threads": int(threads), "seconds_per_step": per_step, "measured_steps": len(times),
            "estimate_s": steps * per_step, "long_s": LONG_PRETRAINING_S}
