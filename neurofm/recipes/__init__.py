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


def block_split(split):
    """The run's splitter from its ``data.split``: contiguous train / valid / test blocks by the
    fractions (:class:`~neurofm.data.splits.TimeBlockSplit`, a session's own ``/intervals``
    first), or with ``folds`` >= 2 fold ``fold`` (1 to ``folds``) of blocked K-fold
    cross-validation (:class:`~neurofm.data.splits.BlockedKFold`: the test block is the fold's
    1/``folds`` of each session, the validation block ``valid`` of it right after, ``gap``
    seconds around both; ``/intervals`` are not read). ``neurofm finetune --folds K`` runs
    every fold and pools their test blocks (:func:`neurofm.report.pool_folds`)."""
    from neurofm.config import ConfigError
    from neurofm.data.splits import BlockedKFold, TimeBlockSplit

    s = split
    if not s.folds:
        return TimeBlockSplit({"train": s.train, "valid": s.valid, "test": s.test}, gap=s.gap)
    if s.folds < 2 or not 1 <= s.fold <= s.folds:
        raise ConfigError(f"data.split: folds={s.folds}, fold={s.fold}: cross-validation needs folds >= 2 and fold "
                          f"in 1..folds (folds=0: one split by the train / valid / test fractions)")
    try:
        return BlockedKFold(s.folds, s.fold - 1, gap=s.gap, valid=s.valid)
    except ValueError as e:
        raise ConfigError(f"data.split: {e}") from None


def split_text(split, sessions_with_intervals: int = 0, n_sessions: int = 1) -> str:
    """How ``block_split(split)`` cuts the sessions, in the protocol's words."""
    s = split
    if s.folds:
        ignored = (f"; the /intervals of {sessions_with_intervals} session file(s) not used"
                   if sessions_with_intervals else "")
        return (f"blocked {s.folds}-fold cross-validation, fold {s.fold} of {s.folds}: test block the fold's "
                f"1/{s.folds} of each session, validation the next {s.valid:.0%} (the previous for the last fold), "
                f"{s.gap:g} s gaps, training the rest{ignored}")
    fractions = f"train {s.train:.0%} / valid {s.valid:.0%} / test {s.test:.0%}, {s.gap:g} s gaps"
    if sessions_with_intervals == 0:
        return f"contiguous time blocks per session ({fractions})"
    if sessions_with_intervals == n_sessions:
        return "time blocks from each session file's /intervals/train, valid, test"
    return (f"/intervals/train|valid|test in {sessions_with_intervals} of {n_sessions} session files, contiguous "
            f"time blocks ({fractions}) elsewhere")


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

    from neurofm.threads import torch_threads

    per_epoch = len(loader)
    steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else cfg.trainer.max_epochs * per_epoch
    if cfg.trainer.max_steps > 0 and cfg.trainer.max_epochs > 0:
        steps = min(steps, cfg.trainer.max_epochs * per_epoch)
    opt = torch.optim.AdamW(task.parameters(), lr=cfg.task.lr)
    task.train()
    times: list[float] = []
    with torch_threads(cfg.trainer.threads) as threads:
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
    per_step = float(np.median(times)) if times else float("nan")
    return {"config_epochs": int(cfg.trainer.max_epochs), "max_steps": int(cfg.trainer.max_steps),
            "batch_size": int(cfg.data.batch_size), "steps_per_epoch": int(per_epoch), "steps": int(steps),
            "threads": int(threads), "seconds_per_step": per_step, "measured_steps": len(times),
            "estimate_s": steps * per_step, "long_s": LONG_PRETRAINING_S}


def time_batches(batches, fn: Callable, n_batches: int = 2, warm_up: bool = True) -> tuple[float, int]:
    """``(median seconds per batch, batches timed)`` of ``fn(batch)`` without gradients over the
    first ``n_batches`` of ``batches`` (an iterable; the batch read included), after one warm-up
    batch (``warm_up``), as :func:`time_pretraining` times a step. A loader with one batch is
    timed on it, warm-up or not; one with none costs nothing: ``(0.0, 0)``."""
    import numpy as np
    import torch

    times: list[float] = []
    it = iter(batches)
    with torch.no_grad():
        for i in range(n_batches + int(warm_up)):
            start = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                break
            fn(batch)
            times.append(time.perf_counter() - start)
    if warm_up and len(times) > 1:
        times = times[1:]
    return (float(np.median(times)) if times else 0.0), len(times)


def validation_cost(trainer, steps: int, steps_per_epoch: int, valid_batches: int, per_batch: float) -> dict:
    """What the validation passes of a run of ``steps`` training steps cost (``neurofm inspect``):
    Lightning validates after every ``trainer.check_val_every_n_epoch``-th epoch (or every
    ``val_check_every_n_steps`` steps) and where ``max_steps`` stops a run mid-epoch, each pass
    over ``limit_val_batches`` of the ``valid_batches`` at ``per_batch`` seconds (the no-grad
    forward and loss measured on them)."""
    import math

    if trainer.val_check_every_n_steps > 0:
        passes = steps // trainer.val_check_every_n_steps
    else:
        passes = (steps // max(1, steps_per_epoch)) // max(1, trainer.check_val_every_n_epoch)
    if steps % max(1, steps_per_epoch) and (trainer.val_check_every_n_steps <= 0
                                             or steps % trainer.val_check_every_n_steps):
        passes += 1  # a step limit inside an epoch: validated where it stops (experiment._validate_when_steps_run_out)
    limit = trainer.limit_val_batches
    batches = min(valid_batches, int(limit)) if isinstance(limit, int) or limit > 1 else \
        int(math.floor(valid_batches * float(limit)))
    return {"passes": int(passes), "batches": int(batches), "seconds_per_batch": per_batch,
            "seconds": passes * batches * per_batch}


# -- few-shot labels (--label-fraction): the draw of every family, in words ---------------------


def label_draw(fraction: float, chunk_s: float, seed: int, session, end, scored=None, *,
               unit: str = "windows") -> dict:
    """What ``--label-fraction`` drew on these training windows or segments (``session`` index,
    ``end`` time in s; ``unit`` names them in the keys): the ``chunk_s`` chunks of
    :func:`~neurofm.data.splits.labelled_windows`' stratified draw, so the share of labelled
    ones is the fraction asked for to within two chunks (an independent draw per chunk, before,
    labelled 2 chunks of a 512 s training block, 400 of 10,186 windows (3.9%), which the report
    called "10%").

    ``scored``: (W,) bool, the training windows whose labels count (the moving ones when moving
    windows are scored). When some are not, the draw also gives how many of them were labelled
    (``n_scored_windows``, ``n_scored_labelled``, ``scored_share``): the chunks are drawn blind to
    movement, so the labels that train every arm can be fewer than the fraction says (the
    independent draw once labelled 26 of an open-field session's 1,846 moving training windows,
    1.4%; the stratified draw spreads chunks over run and rest alike)."""
    import numpy as np

    from neurofm.data.splits import labelled_windows

    session, end = np.asarray(session, dtype=np.int64), np.asarray(end, dtype=np.float64)
    keep = labelled_windows(session, end, fraction, chunk_s, seed)
    key = list(zip(session.tolist(), np.floor(end / chunk_s).astype(np.int64).tolist()))
    chunks, drawn = set(key), {c for c, k in zip(key, keep.tolist()) if k}
    n = int(len(keep))
    out = {"requested": float(fraction), "n_chunks": len(chunks), "n_chunks_labelled": len(drawn),
           f"n_{unit}": n, f"n_{unit}_labelled": int(keep.sum()), "share": float(keep.mean()) if n else 0.0}
    if scored is not None and not np.asarray(scored, dtype=bool).all():
        scored = np.asarray(scored, dtype=bool)
        n_scored = int(scored.sum())
        out.update(n_scored_windows=n_scored, n_scored_labelled=int((keep & scored).sum()),
                   scored_share=float((keep & scored).sum() / n_scored) if n_scored else 0.0)
    return out


def draw_rule(fraction: float, chunk_s: float) -> str:
    """The stratified label draw of :func:`~neurofm.data.splits.labelled_windows` in words."""
    if fraction > 0.5:
        return f"every chunk labelled but one at a seeded place in every {chunk_s / (1 - fraction):g} s"
    return f"one chunk labelled at a seeded place in every {chunk_s / fraction:g} s"


def label_draw_text(draw: dict, chunk_s: float, unit: str = "windows") -> str:
    """:func:`label_draw`'s result in words."""
    text = (f"{draw['n_chunks_labelled']} of {draw['n_chunks']} {chunk_s:g} s chunks drawn: "
            f"{draw[f'n_{unit}_labelled']:,} of {draw[f'n_{unit}']:,} training {unit} ({draw['share']:.1%})")
    if "scored_share" in draw:
        text += (f", {draw['n_scored_labelled']:,} of the {draw['n_scored_windows']:,} scored (moving) ones "
                 f"({draw['scored_share']:.1%})")
    return text


def finetuned_labels(pretrained, family: str) -> dict | None:
    """The label draw of the ``family`` fine-tuning run that wrote ``pretrained`` (``RUN/pretrained``
    beside ``RUN/config.yaml``): ``{"label_fraction", "seed", "label_chunk_s", "config"}``, or
    None when the folder is not a fine-tuning run's (then the baselines use every label).
    ``neurofm evaluate`` fits its baselines on these labels, as the fine-tuning run did."""
    from neurofm.config import finetuning_run

    found = finetuning_run(pretrained, family)
    if found is None:
        return None
    path, run = found
    data = run.get("data") or {}
    return {"label_fraction": float(data.get("label_fraction", 1.0)), "seed": int(run.get("seed", 0)),
            "label_chunk_s": float(data.get("label_chunk_s", 10.0)), "config": str(path)}
