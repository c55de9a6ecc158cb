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
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

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


#: A pass over the data that runs longer than this reports its progress every this many seconds
#: (:func:`progress`): a silent minute at the terminal reads as a hung run.
PROGRESS_EVERY_S = 30.0

T = TypeVar("T")


def progress(batches: Iterable[T], what: str, every_s: float | None = None) -> Iterator[T]:
    """Yield ``batches``; once the pass has run ``every_s`` (default :data:`PROGRESS_EVERY_S`)
    seconds, print a line to stderr every ``every_s`` seconds (batches done, of how many when
    ``batches`` has a length, time so far and left) and one when it ends. A short pass prints
    nothing."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    total = len(batches) if hasattr(batches, "__len__") else None
    start = last = time.monotonic()
    i = 0
    for i, batch in enumerate(batches, 1):
        yield batch
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            left = f", about {(now - start) * (total - i) / i:.0f} s left" if total else ""
            print(f"neurofm: {what}: {i:,}{f' of {total:,}' if total else ''} batches in {now - start:.0f} s{left}",
                  file=sys.stderr, flush=True)
    if last > start:
        print(f"neurofm: {what}: done, {i:,} batches in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


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
