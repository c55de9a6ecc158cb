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

from pathlib import Path
from typing import Callable


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
