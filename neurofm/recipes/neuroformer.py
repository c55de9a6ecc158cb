"""Neuroformer recipe: spike session files -> pretraining / behaviour fine-tuning -> metrics.

Evaluation (all on the test block of the same time-block split, with a gap):

* next-spike **ID bits/spike**: the model's log-likelihood of each held-out spike's unit ID,
  given that the next token is a spike (the ID distribution renormalised over the unit tokens:
  the null says nothing about when a window ends, so the model's EOS mass is not charged to
  it), minus that of a unigram null (each unit's share of the training spikes), in bits per
  spike. Positive means the model predicts which neuron fires next better than its firing
  rate does.
* **window F1** of generated spikes (teacher-forced past, top-p 0.95, DESIGN.md 9) against the
  recorded ID sets, beside a mean-rate Poisson generator with the training rates, the same
  rate-weighted draw held to the generated windows' number of distinct units (set F1 rewards
  naming more units: this arm compares which units, not how many) and every unit that fired
  in training, in every window; a paired block-bootstrap CI and a plain line (``generation.verdicts``, and
  ``limitations`` when it loses, to any of the three) say whether the generated spikes beat each.
* **behaviour decoding** R2 / Pearson r of each regression target from the model's pooled
  head, beside ridge regression on the same windows' spike counts (current + previous
  window per unit), fitted on the training windows the model's behaviour loss saw (few-shot:
  the same labelled windows; then also ridge with every training label). With
  ``eval.moving_threshold`` only windows where the animal moves are scored (DESIGN.md 8).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurofm.atomic import atomic_write
from neurofm.config import ConfigError, from_dict
from neurofm.data.session import ANGLE_UNITS, Session, SessionWriter, mm_per_unit
from neurofm.models.neuroformer import BlockSizeConfig, N_SPECIAL, Neuroformer, NeuroformerConfig, window_count_features
from neurofm.models.neuroformer_generate import GeneratedSpikes
from neurofm.nn.attention import HAS_FLASH_ATTN
from neurofm.tasks.optim import NEUROFORMER_KNOBS
from neurofm.tasks.trainer import TrainerConfig
from neurofm.threads import torch_threads
from neurofm.progress import progress
from neurofm.recipes import (block_split, draw_rule, ensure_sessions, label_draw_text, quiet_preparation,
                             session_paths, split_text, time_batches, time_pretraining, validation_cost)
from neurofm.recipes import finetuned_labels as _finetuned_labels, label_draw as _label_draw
from neurofm import metrics as M, plots
from neurofm.plots import unit_order
from neurofm.baselines import PoissonBayesDecoder, Ridge
from neurofm.data.datasets import WithinBinShuffle, behavior_features, split_blocks
from neurofm.data.splits import FewShotSplit, grid_runs
from neurofm.data.synthetic import simulate_spikes
from neurofm.data.tokenizer import (SpikeTokenizer, UnitVocab, block_size_for, dropped_fraction,
                                    log_orderings, spikes_per_window, window_count_percentiles)
from neurofm.evaluation import (JITTER_MARGIN, JITTER_QUANTILE, SMOOTH_LADDER, DecodingProtocol, RidgeFitPredict,
                                jitter_speed, session_position_data, smoothing_from_jitter)
from neurofm.hub import load_pretrained, pretrained_config
from neurofm.report import (DECODE_INPUTS, NULL_ARM, START_SE, block_bootstrap_counts, decode_report, fold_name,
                            limitation_lines, null_limitation, save_inputs, start_gain, time_blocks)

MONITOR = ("val/total", "min")


@dataclass
class SimulateSpikesConfig:
    """The built-in demo session (written once, then reused)."""

    path: str = "data/demo_spikes.h5"
    n_units: int = 40
    duration: float = 600.0
    seed: int = 0
    stimulus: bool = False


@dataclass
class SplitConfig:
    """Contiguous time blocks per session, in this order, separated by ``gap`` seconds; or, with
    ``folds`` >= 2, fold ``fold`` of blocked K-fold cross-validation
    (:func:`neurofm.recipes.block_split`; ``neurofm finetune --folds K`` runs them all)."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1
    gap: float = 1.0
    folds: int = 0  # >= 2: blocked K-fold cross-validation (test = the fold's 1/folds, valid the next `valid`)
    fold: int = 1  # which fold, 1..folds


@dataclass
class SpikeDataConfig:
    sessions: list[str] = field(default_factory=list)  # session files; empty: the simulated demo
    simulate: SimulateSpikesConfig = field(default_factory=SimulateSpikesConfig)
    behavior: list[str] = field(default_factory=list)  # behaviour variables read per window
    stimulus: str = "gratings"  # the /stimulus/<name> read per window when model.stimulus is set
    stride: float = 0.0  # seconds between windows; 0 = window.curr (non-overlapping)
    batch_size: int = 32
    num_workers: int = 0
    streaming: bool = False
    # packed training batches (windows concatenated, no padding): "auto" = packed where flash-attn's
    # varlen kernel runs them (installed, training on CUDA), as BaRISTA's backbone decides; without it
    # packing is padded again inside attention, and a paper-size step ran 82 ms packed vs 52 ms padded
    # on an H200 (bench/gpu.py). true | false force it.
    pack: str = "auto"
    split: SplitConfig = field(default_factory=SplitConfig)
    label_fraction: float = 1.0  # fine-tuning: fraction of training windows whose behaviour is labelled
    label_chunk_s: float = 10.0  # labelled windows come in contiguous chunks of this length
    # Training batches only: the spikes inside each dt bin in a fresh seeded random order per
    # draw, so the next-ID loss cannot be lowered by learning the tokenizer's ascending-unit
    # order (datasets.WithinBinShuffle). Validation and test keep the canonical order.
    shuffle_within_bin: bool = False


@dataclass
class NeuroformerTaskConfig:
    mode: str = "pretrain"  # pretrain | finetune
    objectives: list[str] = field(default_factory=list)  # empty: all (pretrain) or behaviour (finetune)
    pretrained: str = ""  # folder (or Hub id) to start from
    lr: float = NEUROFORMER_KNOBS["lr"]
    weight_decay: float = NEUROFORMER_KNOBS["weight_decay"]
    warmup_fraction: float = NEUROFORMER_KNOBS["warmup_fraction"]
    final_lr_ratio: float = NEUROFORMER_KNOBS["final_lr_ratio"]
    freeze_backbone: bool = NEUROFORMER_KNOBS["freeze_backbone"]
    # Fine-tuning arm without the pretrained weights: the checkpoint's model shape (SHAPE_FIELDS)
    # and this run's recipe from random init (`neurofm finetune --from-scratch`).
    from_scratch: bool = False
    unfreeze_every: int = 0  # with freeze_backbone: release one more stage every N epochs (0 = never)
    trainable: list[str] = field(default_factory=list)  # parameter prefixes kept trainable when frozen
    head_lr_ratio: float = NEUROFORMER_KNOBS["head_lr_ratio"]  # heads at lr * head_lr_ratio (recipe: 1)
    # Optimizer steps: -1 = as trainer.max_epochs / max_steps say; 0 = a budget sized from the
    # training windows that carry the loss: labelled, and moving under eval.score_when moving
    # (loss_windows; step_budget_for: 30 x ceil(those windows / batch_size) steps, within [300, 3000])
    # unless trainer.max_epochs or max_steps is set (!= -1); N > 0 = N steps. With a budget, validation runs ~20 times and trainer.early_stopping_patience
    # counts validation checks.
    step_budget: int = -1


@dataclass
class NeuroformerEvalConfig:
    generate_windows: int = 256  # test windows to generate for window F1 (0 = skip generation)
    # draws per window, for the model and each random generator alike; F1 is their mean. Two
    # generators' single-draw F1s on 256 windows differ by ~0.01 from sampling alone (sd over
    # seeds 0.004-0.008 each on the demo): one draw each cannot rank them.
    generate_draws: int = 4
    top_p: float = 0.95
    raster_seconds: float = 5.0
    seed: int = 0
    # Which windows behaviour decoding is scored on, in the test block AND the validation block
    # that selects the model (DESIGN.md 8): "moving", "all", or "auto" = "moving" when a decoded
    # regression target is moving_behavior (position), else "all". A window is moving when every
    # 50 ms bin of its current window is: the speed of /behavior/<moving_behavior> Gaussian-smoothed
    # with sigma speed_smooth_s (position smoothed, then differentiated, so tracking jitter of a
    # still animal is not movement; tracker glitches, a bin off its neighbours and back, are
    # removed before: evaluation.remove_glitches), or the file's /behavior/speed smoothed the same way, above
    # moving_threshold (behaviour units per second). moving_threshold 0 = from the data:
    # MOVING_FRACTION (a fifth) of the 95th percentile of that speed over the training blocks (a
    # fifth of the animal's running speed: 18 px/s on linear-track, where a still animal reads ~0 px/s as
    # its pixel position repeats). prepare() writes the resolved choice here
    # (config.yaml). speed_smooth_s 0 = from the data (evaluation.smoothing_from_jitter): the
    # smallest sigma of 0.05, 0.1, 0.25, 0.5, 1 s under which the speed of the behaviour's own jitter
    # (measured from its second differences) stays under half the threshold at its 99.9th
    # percentile; resolved by prepare() and written here too. Bits/spike and window F1 stay on
    # every test window.
    score_when: str = "auto"
    moving_threshold: float = 0.0
    speed_smooth_s: float = 0.5
    moving_behavior: str = "position"
    # Refuse to train when the test block cannot score the target (fewer than min_scored_windows
    # scored windows, or its variance there under 1% of the training variance), and warn under
    # 10%: R2 on such a block is undefined or meaningless. False: score anyway.
    check_target: bool = True
    min_scored_windows: int = 20


@dataclass
class RunConfig:
    family: str = "neuroformer"
    run_dir: str = "runs/neuroformer-demo"
    seed: int = 0
    resume: str = "auto"  # auto | none | path to a .ckpt
    data: SpikeDataConfig = field(default_factory=SpikeDataConfig)
    # block sizes 0 = auto: chosen from the training data by prepare() (resolve_block_sizes)
    model: NeuroformerConfig = field(default_factory=lambda: NeuroformerConfig(block_size=BlockSizeConfig(0, 0)))
    task: NeuroformerTaskConfig = field(default_factory=NeuroformerTaskConfig)
    eval: NeuroformerEvalConfig = field(default_factory=NeuroformerEvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# -- data ---------------------------------------------------------------------------------------


def prepare(cfg: RunConfig) -> RunConfig:
    """Resolve what the config leaves to the data: the simulated demo session (written once);
    when fine-tuning, the pretrained model's shape (:func:`_pretrained_model_config`); block
    sizes left at 0 (:func:`resolve_block_sizes`); which windows behaviour is scored on
    (:func:`resolve_scoring`). Checks, before any training, that the test block can score the
    decoded target (:func:`check_test_target`)."""
    if cfg.task.pretrained:
        cfg = dataclasses.replace(cfg, model=_pretrained_model_config(cfg))
    elif cfg.task.from_scratch:
        raise ConfigError("task.from_scratch: takes the model shape from task.pretrained (--pretrained DIR); "
                          "without one, a run trains from random init anyway")
    sim = cfg.data.simulate

    def simulate():
        simulate_spikes(sim.path, n_units=sim.n_units, duration=sim.duration, seed=sim.seed, stimulus=sim.stimulus)

    ensure_sessions(cfg.data, convert_hint="neurofm convert nwb IN.nwb OUT.h5", simulate=simulate,
                    what=f"session ({sim.n_units} units, {sim.duration:.0f} s)")
    cfg = resolve_block_sizes(cfg)
    cfg = resolve_scoring(cfg)
    warn_unobserved_units(cfg)
    check_test_target(cfg)
    return cfg


#: a unit unobserved for more than this share of a split's time is named before training
UNOBSERVED_SHARE = 0.01


def warn_unobserved_units(cfg: RunConfig) -> list[str]:
    """Warn, per session, naming the units recorded for only part of it (``/units/obs_start``,
    ``obs_end``: an NWB ``obs_intervals`` column, kept by ``convert``) whose observed span misses
    over :data:`UNOBSERVED_SHARE` of the training, validation or test block. Outside its span a
    unit has no spikes, which the model, ridge and the Bayes decoder all read as silence (a unit
    lost half way fires in the training block and is "silent" in the test block). Returns the
    warnings."""
    out = []
    for path in session_paths(cfg.data):
        with Session(path) as s:
            table = s.unit_table()
            if "obs_start" not in table or "obs_end" not in table:
                continue
            a = np.asarray(table["obs_start"], dtype=np.float64)
            b = np.asarray(table["obs_end"], dtype=np.float64)
            ids = [str(u) for u in table["id"]]
            blocks = {name: split_blocks(s, name, _split(cfg)) for name in ("train", "valid", "test")}
        missed: dict[str, list[str]] = {}
        for name, iv in blocks.items():
            total = iv.duration
            if not total > 0:
                continue
            for i, u in enumerate(ids):
                if not (np.isfinite(a[i]) and np.isfinite(b[i])):
                    continue
                seen = sum(max(0.0, min(e, b[i]) - max(st, a[i])) for st, e in iv.pairs())
                share = 1.0 - seen / total
                if share > UNOBSERVED_SHARE:
                    missed.setdefault(u, []).append(f"{share:.0%} of {name}")
        if missed:
            listed = "; ".join(f"unit {u}: {', '.join(v)}" for u, v in list(missed.items())[:6])
            more = f"; +{len(missed) - 6} more" if len(missed) > 6 else ""
            msg = (f"{path}: /units/obs_start, obs_end: {len(missed)} unit(s) were not recorded over part of the "
                   f"blocks this run uses ({listed}{more}); outside its observed span a unit has no spikes, which "
                   f"the model and every baseline read as silence. Choose blocks inside their spans "
                   f"(`neurofm split {path} --train A:B --valid C:D --test E:F`) or remove those units from the "
                   f"NWB file and convert again (neurofm has no option that drops units)")
            warnings.warn(msg, stacklevel=2)
            out.append(msg)
    return out


# -- what the data decides: block sizes, window lengths ------------------------------------------


def _pack(cfg) -> bool:
    """``data.pack`` resolved: true / false as given; auto: flash-attn installed and training on CUDA."""
    value = str(cfg.data.pack).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    if value != "auto":
        raise ConfigError(f"data.pack: {cfg.data.pack!r}; use auto (packed where flash-attn runs the batches), "
                          "true or false")
    on_cuda = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return HAS_FLASH_ATTN and on_cuda


def _split(cfg: RunConfig):
    return block_split(cfg.data.split)


def split_window_ends(cfg: RunConfig, session, split: str = "train") -> np.ndarray:
    """(W,) end times (s) of the windows of ``split`` in ``session``, as the data module lays
    them out (one grid per session, stride ``data.stride`` or ``window.curr``, each window with
    its previous window wholly inside a block, and none across a discontinuity of the
    recording: :func:`~neurofm.data.datasets.split_blocks`)."""
    w = cfg.model.window
    stride = cfg.data.stride or w.curr
    blocks = split_blocks(session, split, _split(cfg))
    k0, count = grid_runs(blocks, session.t_start, stride, w.curr + w.prev, 0.0)
    if not len(k0):
        return np.zeros(0)
    k = np.concatenate([k0[i] + np.arange(count[i]) for i in range(len(k0))])
    return session.t_start + k * stride


def split_window_counts(cfg: RunConfig, window=None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Spikes per current and per previous window ``(W,)`` each, over every window of ``split``
    (the training windows by default) of every session (``window``: a :class:`WindowConfig`
    other than the config's, e.g. for ``neurofm inspect``)."""
    if window is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, window=window))
    w = cfg.model.window
    curr, prev = [], []
    for path in session_paths(cfg.data):
        with Session(path) as s:
            ends = split_window_ends(cfg, s, split)
            # in chunks of COUNT_CHUNK_S of windows: memory is bounded by the spikes of one chunk,
            # not the session's (the counts are the same: each window's spikes lie in its chunk's read)
            for chunk in _time_chunks(ends, COUNT_CHUNK_S):
                e = ends[chunk]
                times, _ = s.spikes(float(e.min() - w.curr - w.prev) - 1.0, float(e.max()))
                curr.append(spikes_per_window(times, e - w.curr, e))
                prev.append(spikes_per_window(times, e - w.curr - w.prev, e - w.curr))
    return (np.concatenate(curr) if curr else np.zeros(0, np.int64)), \
        (np.concatenate(prev) if prev else np.zeros(0, np.int64))


#: a block size that drops more than this share of a split's spikes is warned about (training windows)
#: or is a limitation of the run (test windows)
DROPPED_WARN = 0.01

#: seconds of windows whose spikes split_window_counts reads at once
COUNT_CHUNK_S = 60.0


def _time_chunks(ends: np.ndarray, span_s: float) -> list[slice]:
    """Slices of the sorted window ``ends`` (s), each covering at most ``span_s`` of time."""
    if not len(ends):
        return []
    key = np.floor((ends - ends[0]) / span_s).astype(np.int64)
    cuts = np.flatnonzero(np.diff(key)) + 1
    bounds = [0, *cuts.tolist(), len(ends)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


#: spikes per current window below which windows are "mostly empty" (suggest a longer window)
MIN_MEAN_SPIKES_PER_WINDOW = 1.0
#: a suggested window holds about this many spikes on average
SUGGESTED_SPIKES_PER_WINDOW = 4.0
_NICE_WINDOWS_S = (0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0)


def suggest_window(mean_spikes: float, window) -> tuple[float, float] | None:
    """``(curr, prev)`` in s when windows are mostly empty (mean spikes per current window
    below :data:`MIN_MEAN_SPIKES_PER_WINDOW`), else None: the shortest of a few round lengths
    whose window holds :data:`SUGGESTED_SPIKES_PER_WINDOW` spikes at the population rate,
    with the previous window scaled by the same factor."""
    if mean_spikes >= MIN_MEAN_SPIKES_PER_WINDOW:
        return None
    rate = mean_spikes / window.curr  # population spikes/s
    want = SUGGESTED_SPIKES_PER_WINDOW / rate if rate > 0 else _NICE_WINDOWS_S[-1]
    curr = next((x for x in _NICE_WINDOWS_S if x >= want - 1e-9), _NICE_WINDOWS_S[-1])
    return curr, round(window.prev * curr / window.curr, 6)


def demo_window_hint(mean_spikes: float, window, demo) -> tuple[float, float, float] | None:
    """``(demo.curr, demo.prev, spikes per demo window)`` when ``window`` is longer than the
    README pretraining's own (``demo``, the ``neuroformer/demo`` windows) and, at the population
    rate ``mean_spikes`` per ``window.curr`` gives, the demo's current window already holds
    :data:`SUGGESTED_SPIKES_PER_WINDOW` spikes or more on average: a dense recording, which README
    step 2 pretrains with the demo's windows (longer ones pad every step with more tokens). Else None."""
    if window.curr <= demo.curr or mean_spikes <= 0:
        return None
    in_demo = mean_spikes * demo.curr / window.curr
    return (demo.curr, demo.prev, in_demo) if in_demo >= SUGGESTED_SPIKES_PER_WINDOW else None


def resolve_block_sizes(cfg: RunConfig) -> RunConfig:
    """Block sizes from the training data's spikes-per-window distribution.

    ``model.block_size.id`` / ``prev_id`` at 0 (the default) become the smallest sizes that
    drop at most 0.5% of the training windows' spikes (:func:`~neurofm.data.tokenizer.block_size_for`,
    current and previous window each). A size the user set, or a pretrained model's, is
    kept, with a warning naming the dropped share when it is over 1%. Also warns, with a
    suggested window, when current windows hold under one spike on average.
    """
    m = cfg.model
    curr, prev = split_window_counts(cfg)
    if not len(curr):
        if 0 in (m.block_size.id, m.block_size.prev_id):
            raise ConfigError(f"model.block_size: no training window fits in {session_paths(cfg.data)} (windows of "
                              f"{m.window.curr} + {m.window.prev} s) to choose block sizes from; check data.split "
                              f"or set model.block_size.id and prev_id")
        return cfg
    source = f"the pretrained model {cfg.task.pretrained}" if cfg.task.pretrained else "your setting"
    sizes = {}
    for key, counts, what in (("id", curr, "current"), ("prev_id", prev, "previous")):
        size = getattr(m.block_size, key)
        if size == 0:
            size = block_size_for(counts)
            print(f"neurofm: model.block_size.{key} = {size} from the training data ({what} windows of "
                  f"{getattr(m.window, 'curr' if key == 'id' else 'prev') * 1e3:g} ms hold up to "
                  f"{int(counts.max())} spikes; this size drops {dropped_fraction(counts, size):.2%} of them)")
        else:
            lost = dropped_fraction(counts, size)
            if lost > DROPPED_WARN:
                warnings.warn(f"model.block_size.{key} = {size} (from {source}) drops {lost:.1%} of the "
                              f"{what}-window spikes of the training data ({what} windows hold up to "
                              f"{int(counts.max())} spikes, median {np.median(counts):g}); "
                              + ("fine-tune a model pretrained with longer blocks or shorter windows"
                                 if cfg.task.pretrained else
                                 f"set model.block_size.{key}={block_size_for(counts)} (drops <= 0.5%) or leave it "
                                 f"at 0 to choose it from the data"), stacklevel=2)
        sizes[key] = size
    hint = suggest_window(float(curr.mean()), m.window)
    if hint is not None:
        warnings.warn(f"model.window.curr = {m.window.curr:g} s holds {curr.mean():.2f} spikes on average in the "
                      f"training data: most windows are empty. At this population rate "
                      f"({curr.mean() / m.window.curr:.1f} spikes/s) windows of model.window.curr={hint[0]:g} "
                      f"model.window.prev={hint[1]:g} hold about {SUGGESTED_SPIKES_PER_WINDOW:g} spikes; "
                      + ("the windows are the pretrained model's (its shape), so that means pretraining again with "
                         "them (README step 2), and a window that long averages the behaviour over its span"
                         if cfg.task.pretrained else "set them (a window that long averages the behaviour over "
                                                     "its span)"),
                      stacklevel=2)
    if (sizes["id"], sizes["prev_id"]) == (m.block_size.id, m.block_size.prev_id):
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(m, block_size=BlockSizeConfig(**sizes)))


def block_size_report(cfg: RunConfig) -> dict[str, Any]:
    """The block sizes of a run and what they drop on its training and its test windows
    (metrics.json): the sizes come from the training windows, and a test block denser than them
    loses more of the spikes it is scored on."""
    curr, prev = split_window_counts(cfg)
    test_curr, test_prev = split_window_counts(cfg, split="test")
    b = cfg.model.block_size
    return {"block_size": {"id": b.id, "prev_id": b.prev_id},
            "dropped_fraction_train": {"curr": dropped_fraction(curr, b.id), "prev": dropped_fraction(prev, b.prev_id)},
            "dropped_fraction_test": {"curr": dropped_fraction(test_curr, b.id),
                                      "prev": dropped_fraction(test_prev, b.prev_id)},
            "spikes_per_window_train": {"curr": window_count_percentiles(curr), "prev": window_count_percentiles(prev)},
            "n_train_windows": int(len(curr))}


def dropped_limitation(report: dict) -> str | None:
    """A limitation line when the block sizes drop more than :data:`DROPPED_WARN` of the test
    windows' current- or previous-window spikes (:func:`block_size_report`)."""
    test, train = report.get("dropped_fraction_test", {}), report["dropped_fraction_train"]
    over = [k for k in ("curr", "prev") if test.get(k, 0.0) > DROPPED_WARN]
    if not over:
        return None
    what = {"curr": "current", "prev": "previous"}
    b = report["block_size"]
    return ("the block sizes (model.block_size id " + f"{b['id']}, prev_id {b['prev_id']}, chosen on the training "
            "windows) drop " + ", ".join(f"{test[k]:.1%} of the test windows' {what[k]}-window spikes (training "
            f"{train[k]:.1%})" for k in over) + ": the test block is denser than the training block, and the model "
            "never reads the earliest spikes of its densest windows; pretrain with longer blocks or shorter windows")


# -- the pretrained model's shape ---------------------------------------------------------------


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, copy.deepcopy(value))


def _pretrained_model_config(cfg: RunConfig) -> NeuroformerConfig:
    """The run's model config with the checkpoint's shape.

    Shape fields (:attr:`NeuroformerConfig.SHAPE_FIELDS`) come from the checkpoint; a run that
    sets one to another value (differing from the run config's default) is an error naming the
    field. The behaviour variables are the checkpoint's (with their statistics) plus the ones
    this run adds. Everything else (dropout, loss weights, contrastive temperature) is the
    run's own: its config file and overrides.
    """
    ckpt = from_dict(NeuroformerConfig, pretrained_config(cfg.task.pretrained)["config"],
                     where=f"{cfg.task.pretrained}/config.json")
    default = RunConfig().model
    merged = copy.deepcopy(cfg.model)
    for path in NeuroformerConfig.SHAPE_FIELDS:
        if path not in ("n_units", "units", "behavior"):
            mine, theirs = _get(cfg.model, path), _get(ckpt, path)
            if mine != _get(default, path) and mine != theirs:
                raise ConfigError(f"model.{path}: this run sets {_plain(mine)}, but the pretrained model "
                                  f"{cfg.task.pretrained} has {_plain(theirs)}. It shapes the weights, so fine-tuning "
                                  f"takes it from the checkpoint: drop the setting (or pretrain a model with it)")
        _set(merged, path, _get(ckpt, path))
    have = {v.name for v in ckpt.behavior}
    merged.behavior = [*copy.deepcopy(ckpt.behavior), *[v for v in cfg.model.behavior if v.name not in have]]
    return merged


def _plain(value):
    """A config value as the user would write it (dataclasses as dicts)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# The fine-tuning recipe, by rule rather than tuned to one recording (configs/neuroformer/finetune.yaml
# says the same). Linear probing, then fine-tuning (LP-FT: Kumar et al. 2022, "Fine-tuning can distort
# pretrained features"), with the probe solved in closed form and kept unless fine-tuning beats it:
# * each new regression head reads the pooled state AND every unit's counts in 50 ms bins
#   (count_bin) and starts at ridge on the labelled windows from the counts alone, or counts +
#   pooled state where that raises the blocked-CV R2 by more than two paired SE (init_count_heads), so
#   the starting model is the report's ridge arm unless the pretrained features add to it;
# * the starting state is scored on the validation block before the first step and is the best
#   checkpoint until a later validation check beats it (tasks.callbacks.StartingPoint), so
#   fine-tuning that only makes validation worse hands back the starting state;
# * every parameter at the reference AdamW lr (1e-4, DESIGN.md 9): head_lr_ratio 1, because the
#   heads start at a fitted solution, not at random (the 10x head rate is for a random head; from
#   the ridge start it wrecked validation R2 within 30 steps on place-sparse-25: -0.23 -> -0.83);
# * a step budget sized from the windows that carry the loss (labelled; moving under moving-only
#   scoring: loss_windows, step_budget_for) instead of an epoch count,
#   ~20 validation checks, early stopping after 5 checks without a better validation R2, the best
#   checkpoint evaluated and exported.
COUNT_BIN_S = 0.05  # fine-tuned heads also read the window's counts in 50 ms bins, started at ridge
FINETUNE_RECIPE = {"task": {"lr": 1e-4, "head_lr_ratio": 1.0, "step_budget": 0},
                   "trainer": {"max_epochs": -1, "max_steps": -1, "early_stopping_patience": 5}}


def finetune_config(pretrained: str, sessions: list[str], *, behavior: list[str], task: str = "decode",
                    events: str | None = None, label_fraction: float = 1.0, run_dir: str | None = None,
                    freeze_backbone: bool = False, from_scratch: bool = False, score_when: str | None = None,
                    overrides: list[str] = ()) -> RunConfig:
    """A fine-tuning run: decode ``behavior`` from ``sessions`` starting at ``pretrained``.

    ``from_scratch``: the same model shape and recipe from random init (the pretrained-vs-
    scratch comparison is this one flag; the label draw depends only on ``seed`` and
    ``label_fraction``, so both arms see the same labelled windows). ``score_when``:
    ``moving`` | ``all`` | ``auto`` (default, see :class:`NeuroformerEvalConfig`).
    """
    if task != "decode" or events:
        raise ConfigError(f"Neuroformer fine-tuning decodes behaviour (--task decode --behavior NAME); "
                          f"got --task {task}{' --events ' + events if events else ''}")
    if not behavior:
        raise ConfigError("Neuroformer decoding (finetune or evaluate) needs --behavior NAME [NAME ...]: the "
                          "/behavior/<name> of the data to decode")

    with Session(sessions[0]) as s:
        dims = {}
        for name in behavior:
            if name not in s.behavior_names:
                hint = (" (key=value overrides go after the options, or after --)" if "=" in name else "")
                tables = [t for t in s.interval_names if f"intervals/{t}/{name}" in s.h5]
                if tables:  # a trials column such as grating orientation: a label per trial, not a time series
                    hint += (f". {name} is a column of /intervals/{tables[0]} (one value per interval): Neuroformer "
                             f"fine-tuning decodes /behavior time series only, so per-trial labels (a stimulus "
                             f"class) cannot be decoded from the CLI; a numeric one could be written as a step "
                             f"/behavior with SessionWriter.add_behavior, which regresses it (R2), not classifies it")
                raise ConfigError(f"--behavior {name}: {sessions[0]} has no /behavior/{name}; it has "
                                  f"{s.behavior_names or 'no behaviour'}{hint}")
            _, v = s.behavior(name, s.t_start, s.t_start + 1.0)
            dims[name] = int(np.prod(v.shape[1:])) if v.ndim > 1 else 1
    base = {
        "family": "neuroformer",
        "run_dir": run_dir or f"runs/finetune-{Path(sessions[0]).stem}",
        "data": {"sessions": list(sessions), "behavior": list(behavior), "label_fraction": label_fraction,
                 "split": {"gap": 5.0}},
        "task": {"mode": "finetune", "pretrained": str(pretrained), "objectives": ["behavior"],
                 "freeze_backbone": freeze_backbone, "from_scratch": from_scratch, **FINETUNE_RECIPE["task"]},
        "eval": {"generate_windows": 0, **({"score_when": score_when} if score_when else {})},
        "trainer": dict(FINETUNE_RECIPE["trainer"]),
        "model": {"behavior": [{"name": n, "dim": dims[n], "task": "regression", "target": True,
                                "count_bin": COUNT_BIN_S} for n in behavior]},
    }
    return from_dict(RunConfig, base, overrides=list(overrides), where="neurofm finetune")


def finetuned_labels(pretrained) -> dict[str, Any] | None:
    """The label draw of the Neuroformer fine-tuning run that wrote ``pretrained``
    (:func:`neurofm.recipes.finetuned_labels`); None when the folder is not one. ``neurofm
    evaluate`` fits its ridge on these windows, as the fine-tuning run did."""
    return _finetuned_labels(pretrained, "neuroformer")


# -- which windows behaviour is scored on (test AND validation) ----------------------------------

#: the moving threshold, when not set, is this fraction of the moving rule's 95th-percentile speed
MOVING_FRACTION = 0.2
SCORE_WHEN = ("auto", "moving", "all")


def _protocol_for(cfg: RunConfig, threshold: float | None = None, smooth_s: float | None = None):
    e = cfg.eval
    return DecodingProtocol(behavior=e.moving_behavior, smooth_s=e.speed_smooth_s if smooth_s is None else smooth_s,
                            speed_threshold=e.moving_threshold if threshold is None else threshold)


class MovingWindows:
    """Which windows to score behaviour on under ``eval.score_when: moving``: those whose
    current window lies inside the behaviour's 50 ms bin grid with every bin moving
    (:meth:`neurofm.evaluation.DecodingData.moving_mask`: the speed of the smoothed position,
    or a measured speed smoothed, above ``eval.moving_threshold``, within each stretch between
    the recording's discontinuities) and spans no discontinuity.

    Called with the windows' session indices (in ``sessions`` order, as batches number them)
    and end times, numpy arrays or tensors; returns a bool array of the same kind. Used for the
    test block (:func:`evaluate`), the validation block that selects the model (the task masks
    the behaviour loss with it) and the check before training (:func:`check_test_target`).
    """

    def __init__(self, cfg: RunConfig, sessions):
        self.window = cfg.model.window.curr
        protocol = _protocol_for(cfg)
        self.grids = []
        for session in sessions:
            d = session_position_data(session, protocol, counts=False)  # the bin grid and speed, no spikes read
            self.grids.append((d.bin_times, d.bin_end[-1], d.n_bins, np.concatenate([[0], np.cumsum(~d.moving)]),
                               d.bin_size, np.sort(d.breaks)))

    def __call__(self, session, interval):
        as_torch = isinstance(interval, torch.Tensor)
        s_idx = np.asarray(session.cpu() if as_torch else session, dtype=np.int64)
        ends_all = np.asarray(interval.detach().cpu().double() if as_torch else interval, dtype=np.float64)
        out = np.zeros(len(ends_all), dtype=bool)
        for k, (bin_times, t_last, n_bins, still, bin_size, breaks) in enumerate(self.grids):
            sel = np.flatnonzero(s_idx == k)
            if not len(sel):
                continue
            ends = ends_all[sel] - 1e-9
            starts = ends_all[sel] - self.window + 1e-9
            i0 = np.searchsorted(bin_times + bin_size, starts, side="right")  # first bin ending after start
            i1 = np.searchsorted(bin_times, ends, side="left")  # one past the last bin starting before end
            inside = (starts >= bin_times[0]) & (ends <= t_last) & (i1 > i0)
            # a window across a discontinuity of the recording is never scored (the data module
            # lays none out; the speed on either side of the pause is its own stretch's)
            inside &= np.searchsorted(breaks, starts, side="right") == np.searchsorted(breaks, ends, side="left")
            out[sel] = inside & (still[np.clip(i1, 0, n_bins)] - still[np.clip(i0, 0, n_bins)] == 0)
        return torch.as_tensor(out, device=interval.device) if as_torch else out


def resolve_scoring(cfg: RunConfig) -> RunConfig:
    """``eval.score_when`` and, for ``moving``, ``eval.moving_threshold`` from the data.

    ``auto`` is ``moving`` when a decoded regression target is ``eval.moving_behavior`` (or a
    threshold is set), else ``all``. For ``moving``, a smoothing sigma ``eval.speed_smooth_s`` left
    at 0 is chosen first (:func:`neurofm.evaluation.smoothing_from_jitter`, from the noisiest
    session's jitter and, when the threshold is also left to the data, the threshold at each sigma). A threshold left at 0 becomes :data:`MOVING_FRACTION` of
    the 95th percentile of the moving rule's speed (:meth:`neurofm.evaluation.DecodingData.moving_speed`)
    over the training blocks' bins (all sessions): a fifth of the animal's running speed, in
    the behaviour's own units per second.
    """
    e = cfg.eval
    if not e.speed_smooth_s >= 0:
        raise ConfigError(f"eval.speed_smooth_s: {e.speed_smooth_s!r} s; the moving rule's smoothing sigma must be "
                          f">= 0 (0 = from the data)")
    if e.score_when not in SCORE_WHEN:
        raise ConfigError(f"eval.score_when: {e.score_when!r} is not one of {SCORE_WHEN} (--score-when)")
    targets = [v.name for v in cfg.model.behavior if v.target and v.task == "regression"]
    when = e.score_when
    if when == "auto":
        e = _position_by_unit(cfg, targets)
        cfg = dataclasses.replace(cfg, eval=e) if e is not cfg.eval else cfg
        when = "moving" if targets and (e.moving_behavior in targets or e.moving_threshold > 0) else "all"
    threshold = e.moving_threshold
    if when == "moving":
        e = _position_of_derived(cfg, targets)
        cfg = dataclasses.replace(cfg, eval=e) if e is not cfg.eval else cfg
        _refuse_velocity(cfg)
    smooth_s = e.speed_smooth_s
    if when == "moving" and (threshold <= 0 or smooth_s <= 0):
        data, unit, source = [], "", ""
        for path in session_paths(cfg.data):
            with Session(path) as s:
                if e.moving_behavior not in s.behavior_names:
                    raise ConfigError(f"--score-when moving: {path} has no /behavior/{e.moving_behavior} to tell "
                                      f"moving windows by (it has {s.behavior_names or 'no behaviour'}); set "
                                      f"eval.moving_behavior=NAME (a position, in a length unit) or use "
                                      f"--score-when all")
                d = session_position_data(s, _protocol_for(cfg, threshold=0.0, smooth_s=0.0), counts=False)
                train = _split(cfg)(s)["train"].contains(d.bin_times, d.bin_end)
                unit = unit or d.unit
                source = source or ("smoothed " + d.speed_source if d.speed_measured
                                    else f"speed of the smoothed {e.moving_behavior}")
            data.append((d, train & np.isfinite(d.position).all(axis=1)))

        def training_speed(sigma):  # NaN where position (or measured speed) is missing
            v = np.concatenate([d.moving_speed(sigma)[train] for d, train in data])
            return v[np.isfinite(v)]

        def data_threshold(sigma):
            v = training_speed(sigma)
            return float(MOVING_FRACTION * np.percentile(v, 95)) if len(v) else 0.0

        if smooth_s <= 0:
            jitter = np.max([d.jitter_sd() for d, _ in data], axis=0)  # the noisiest session's, per coordinate
            measured = data[0][0].speed_measured
            smooth_s = smoothing_from_jitter(jitter, data[0][0].bin_size,
                                             threshold if threshold > 0 else data_threshold, measured)
            print(f"neurofm: moving rule's smoothing sigma {smooth_s:g} s from the data: the smallest of "
                  f"{', '.join(f'{x:g}' for x in SMOOTH_LADDER)} s whose speed of the tracking jitter alone "
                  f"(sd {', '.join(f'{x:.3g}' for x in jitter)} {unit or 'units'} per 50 ms bin, from second "
                  f"differences) stays under {JITTER_MARGIN:g} x the threshold at its "
                  f"{JITTER_QUANTILE * 100:g}th percentile ({jitter_speed(jitter, data[0][0].bin_size, smooth_s, measured):.3g} "
                  f"{unit or 'units'}/s); set eval.speed_smooth_s to choose")
        if threshold <= 0:
            speed = training_speed(smooth_s)
            if not len(speed) or not np.percentile(speed, 95) > 0:
                raise ConfigError(f"--score-when moving: the training blocks hold no movement of "
                                  f"/behavior/{e.moving_behavior} to set a threshold from; set eval.moving_threshold "
                                  f"(units per second) or use --score-when all")
            threshold = float(MOVING_FRACTION * np.percentile(speed, 95))
            print(f"neurofm: scoring behaviour on moving windows: {source} (sigma {smooth_s:g} s) > "
                  f"{threshold:.4g} {unit or 'units'}/s ({MOVING_FRACTION:g} x the training blocks' 95th-percentile "
                  f"speed {np.percentile(speed, 95):.4g}; set eval.moving_threshold to choose)")
    if (when, threshold, smooth_s) == (e.score_when, e.moving_threshold, e.speed_smooth_s):
        return cfg
    return dataclasses.replace(cfg, eval=dataclasses.replace(e, score_when=when, moving_threshold=threshold,
                                                             speed_smooth_s=smooth_s))


def pretraining_estimate(cfg: RunConfig, n_steps: int = 3) -> dict:
    """What pretraining ``cfg`` on its sessions will cost (``neurofm inspect``), measured, not
    assumed: the data decides the block sizes (:func:`prepare`), so the tokens a window is
    padded to (``id + prev_id``) and the training windows per epoch come from the recording
    (its population rate and length); :func:`neurofm.recipes.time_pretraining` gives the
    steps and the seconds per step. Returns those, the estimate (s) and the block sizes, and
    what comes on top of training (:func:`after_training_estimate`): ``validation``,
    ``evaluation``, ``generation`` and ``total_s``."""
    with quiet_preparation():
        cfg = prepare(cfg)
        dm = datamodule(cfg)
        t = task(cfg, dm)
        dm.setup("fit")
        loss = lambda batch: t.model.loss(batch, t.model(batch), terms=t.objectives)["total"]  # noqa: E731
        out = time_pretraining(cfg, t, dm.loader("train", train=True), loss, n_steps)
        out.update(after_training_estimate(cfg, t.model, dm, loss, out))
    b = cfg.model.block_size
    return {**out, "block_size": {"id": int(b.id), "prev_id": int(b.prev_id)}}


def after_training_estimate(cfg: RunConfig, model: Neuroformer, dm, loss, training: dict) -> dict:
    """What a run of ``cfg`` costs besides its training steps (``training``:
    :func:`neurofm.recipes.time_pretraining`'s figures), each part timed with the code that runs it
    on the file's own first batches (:func:`neurofm.recipes.time_batches`), so nothing is assumed:

    * ``validation``: the passes over the validation windows (no-grad forward and loss) that
      Lightning makes during training (:func:`neurofm.recipes.validation_cost`);
    * ``evaluation``: :func:`evaluate`'s pass over the test windows (:func:`_collect`: two forwards
      a batch, the tokenizer's order and the within-bin shuffle) and its read of every training
      window's counts (data only);
    * ``generation``: window F1's ``eval.generate_windows`` test windows, generated
      ``eval.generate_draws`` times (:func:`_generation_metrics`), a batch at a time, timed on the
      first test batch, where generation starts. The untrained model timed here seldom draws EOS
      and fills each window's block (``id`` tokens): an upper bound on a trained model's, which
      stops at EOS (on the demo's file, 0.040 s a batch against 0.029 s stopped after the batch's
      fullest window).

    The baselines' fits, the bootstrap and the plots are left out (about 2 s on the demo's file:
    its 1-epoch run's evaluate took 7.3 s, of which 4.8 s the passes and 2.5 s generation with
    its scoring and raster).
    Returns those and ``total_s``: training, validation, evaluation and generation."""
    model.eval()
    try:
        with torch_threads(cfg.trainer.threads):  # as the run, and time_pretraining, use
            dm.setup("test")
            valid, test = dm.val_dataloader(), dm.test_dataloader()
            v_s, _ = time_batches(valid, loss)
            validation = validation_cost(cfg.trainer, training["steps"], training["steps_per_epoch"], len(valid), v_s)
            test_s, _ = time_batches(test, lambda batch: _collect(model, [batch], order_free=True))
            train_loader = _train_windows_loader(dm)
            read_s, _ = time_batches(train_loader, lambda batch: _collect(model, [batch], run_model=False))
            evaluation = {"test_batches": len(test), "seconds_per_test_batch": test_s,
                          "train_batches": len(train_loader), "seconds_per_train_batch": read_s,
                          "seconds": len(test) * test_s + len(train_loader) * read_s}
            generation = {"windows": 0, "draws": 0, "batches": 0, "seconds_per_batch": 0.0, "seconds": 0.0}
            if cfg.eval.generate_windows > 0:
                batches = min(len(test), math.ceil(cfg.eval.generate_windows / cfg.data.batch_size))
                draws = max(1, int(cfg.eval.generate_draws))

                def generate(batch):
                    model.generate(batch, mode="teacher_forced", top_p_id=cfg.eval.top_p, top_p_dt=cfg.eval.top_p,
                                   seed=cfg.eval.seed)

                # the first test batch, which generation starts with; no warm-up (one would double the cost
                # of the slowest part, and the passes above have warmed the model's kernels)
                gen_s, _ = time_batches(test, generate, n_batches=1, warm_up=False)
                generation = {"windows": min(cfg.eval.generate_windows, batches * cfg.data.batch_size), "draws": draws,
                              "batches": batches, "seconds_per_batch": gen_s, "seconds": batches * draws * gen_s}
    finally:
        model.train()
    total = training["estimate_s"] + validation["seconds"] + evaluation["seconds"] + generation["seconds"]
    return {"validation": validation, "evaluation": evaluation, "generation": generation, "total_s": total}


def test_block_motion(cfg: RunConfig, session) -> dict | None:
    """How much of ``session``'s test block the default fine-tuning would score (``neurofm
    inspect``): the fraction of its test windows, and of its training windows, that are moving
    by the rule ``--score-when moving`` applies (:class:`MovingWindows`, the threshold from the
    training blocks as :func:`resolve_scoring` sets it), for a file with
    ``/behavior/<eval.moving_behavior>``, or else the one behaviour in a length unit, as ``auto``
    scoring finds the position (:func:`_position_by_unit`); None without either (or without
    movement to set a threshold from). ``source`` says where the test block comes from: the
    file's ``/intervals/test`` or the default split's last fraction."""
    import contextlib
    import io

    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sessions=[str(session.path)]))
    with contextlib.redirect_stdout(io.StringIO()):  # _position_by_unit's note on the name it found
        e = _position_by_unit(cfg, list(session.behavior_names))
    if e.moving_behavior not in session.behavior_names:
        return None
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(e, score_when="moving"))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # resolve_scoring's note on the threshold
            cfg = resolve_scoring(cfg)
    except ConfigError:  # no movement in the training block to set a threshold from
        return None
    moving = MovingWindows(cfg, [session])
    out = {"moving_behavior": e.moving_behavior, "moving_threshold": cfg.eval.moving_threshold,
           "speed_smooth_s": cfg.eval.speed_smooth_s,
           "unit": _unit_text(session.behavior_unit(e.moving_behavior)),
           "source": ("/intervals/test" if "test" in session.interval_names else
                      f"default split: the last {cfg.data.split.test:.0%} of the recording")}
    ts, vals = session.behavior(e.moving_behavior)
    scored = {}
    for split in ("train", "test"):
        ends = split_window_ends(cfg, session, split)
        m = moving(np.zeros(len(ends), dtype=np.int64), ends)
        out[f"n_{split}_windows"], out[f"n_{split}_moving"] = int(len(ends)), int(m.sum())
        f = behavior_features(ts, vals, ends - cfg.model.window.curr, ends)
        scored[split] = f["mean"][m & f["mask"]].astype(np.float64)
    out["min_scored_windows"] = e.min_scored_windows
    # the warning finetune gives before training when the scored test windows lie off the training range
    out["off_range"] = off_range_text(e.moving_behavior, scored["test"], scored["train"],
                                      session.behavior_unit(e.moving_behavior))
    return out


def test_block_variation(cfg: RunConfig, session, skip: tuple[str, ...] = ()) -> list[dict]:
    """Each ``/behavior/<name>`` of ``session`` (``neurofm inspect``) that :func:`check_test_target`
    would refuse or warn about when fine-tuning decodes it with ``--score-when all`` (the default
    for a behaviour that is not the position): its variance over the test block's windows as a
    share of that over the training block's (under 1% finetune refuses, under 10% it warns), or
    too few test windows, and whether its unit is an angle (read as a line by R2 and ridge). A
    rat's head direction with the default test block in the sleep at the end of the recording
    read 0.07% and ``inspect`` said nothing; finetune refused only after loading the model.
    ``skip``: names reported otherwise (the position, by :func:`test_block_motion`)."""
    w = cfg.model.window.curr
    ends = {split: split_window_ends(cfg, session, split) for split in ("train", "test")}
    out = []
    for name in session.behavior_names:
        if name in skip:
            continue
        ts, vals = session.behavior(name)
        if not np.issubdtype(np.asarray(vals).dtype, np.number):
            continue
        f = {k: behavior_features(ts, vals, e - w, e) for k, e in ends.items()}
        train, test = (f[k]["mean"][f[k]["mask"]].astype(np.float64) for k in ("train", "test"))
        angle = session.behavior_unit(name).strip().lower() in ANGLE_UNITS
        if len(train) < 2:
            continue
        ratio = (variance_share(test, train) if len(test) else None) or 0.0
        if ratio < VARIANCE_WARN or len(test) < cfg.eval.min_scored_windows or angle:
            out.append({"name": name, "n_test_windows": int(len(test)), "variance_ratio": ratio, "angle": angle,
                        "unit": session.behavior_unit(name).strip(),
                        "refused": ratio < VARIANCE_REFUSE or len(test) < cfg.eval.min_scored_windows,
                        "min_scored_windows": cfg.eval.min_scored_windows})
    return out


#: ``unit`` attrs of a position in pixels (lengths in metres, cm, mm... are known to mm_per_unit)
_PIXEL_UNITS = ("px", "pixel", "pixels")


def _refuse_velocity(cfg: RunConfig) -> None:
    """A ``ConfigError`` when ``/behavior/<eval.moving_behavior>`` is in a velocity unit (``m/s``):
    the moving rule smooths and differentiates a position, which of a velocity (a motor-cortex
    cursor's, say) is its acceleration, and would have scored windows by that, silently."""
    name = cfg.eval.moving_behavior
    for path in session_paths(cfg.data):
        with Session(path) as s:
            unit = s.behavior_unit(name).strip() if name in s.behavior_names else ""
        if is_velocity_unit(unit):
            raise ConfigError(f"--score-when moving: {path}: /behavior/{name} is in {unit}, a velocity, not a "
                              f"position: the moving rule differentiates a position, and of a velocity that gives "
                              f"its acceleration. Set eval.moving_behavior to a position (in a length unit), or "
                              f"use --score-when all")


def is_velocity_unit(unit: str) -> bool:
    """Whether ``unit`` is a length per second (``m/s``, ``cm/s``, ``px/s``...): a velocity or speed."""
    num, sep, den = str(unit).strip().lower().replace(" ", "").partition("/")
    return bool(sep) and den in ("s", "sec", "second") and (mm_per_unit(num) is not None or num in _PIXEL_UNITS)


def _position_by_unit(cfg: RunConfig, targets: list[str]) -> NeuroformerEvalConfig:
    """``eval`` with ``moving_behavior`` set to the decoded target that is the position when the
    sessions have no ``/behavior/<moving_behavior>``: the one regression target whose ``unit`` is
    a length (m, cm, mm, px...). An NWB ``Position`` series keeps its own name (``led``,
    ``head``), and without this ``auto`` scored such a position on every window, rest included,
    where a series named ``position`` is scored on moving windows. Unchanged otherwise (a
    ``moving_behavior`` the files have, none or several length-unit targets)."""
    e = cfg.eval
    if e.moving_behavior in targets or not targets:
        return e
    units: dict[str, str] = {}
    for path in session_paths(cfg.data):
        with Session(path) as s:
            if e.moving_behavior in s.behavior_names:
                return e
            for name in targets:
                if name in s.behavior_names and name not in units:
                    units[name] = s.behavior_unit(name).strip()
    lengths = [n for n, u in units.items() if mm_per_unit(u) is not None or u.lower() in _PIXEL_UNITS]
    if len(lengths) != 1:
        return e
    print(f"neurofm: /behavior/{lengths[0]} is in {units[lengths[0]]} and the sessions have no "
          f"/behavior/{e.moving_behavior}: scoring it as the position (eval.moving_behavior={lengths[0]}; "
          f"--score-when all scores every window)")
    return dataclasses.replace(e, moving_behavior=lengths[0])


def _position_of_derived(cfg: RunConfig, targets: list[str]) -> NeuroformerEvalConfig:
    """``eval`` with ``moving_behavior`` set to the position a decoded target was derived from
    (its ``source_behavior`` attr: ``convert --velocity-from hand`` writes ``hand_velocity`` from
    ``hand``) when the sessions have no ``/behavior/<moving_behavior>``: ``--score-when moving
    --behavior hand_velocity`` then scores the windows where the hand moves (it was refused,
    naming ``eval.moving_behavior``, although the file says which position the velocity is of).
    Unchanged otherwise (a ``moving_behavior`` the files have; no such source, or several)."""
    e = cfg.eval
    sources: set[str] = set()
    for path in session_paths(cfg.data):
        with Session(path) as s:
            if e.moving_behavior in s.behavior_names:
                return e
            for name in targets:
                if name not in s.behavior_names:
                    continue
                source = s.h5[f"behavior/{name}"].attrs.get("source_behavior")
                source = source.decode() if isinstance(source, bytes) else source
                if source in s.behavior_names:
                    unit = s.behavior_unit(source).strip()
                    if mm_per_unit(unit) is not None or unit.lower() in _PIXEL_UNITS:
                        sources.add(str(source))
    if len(sources) != 1:
        return e
    (source,) = sources
    print(f"neurofm: --score-when moving: the sessions have no /behavior/{e.moving_behavior}; the decoded "
          f"{', '.join(targets)} was derived from /behavior/{source} (its source_behavior), so the windows where it "
          f"moves are scored (eval.moving_behavior={source})", file=sys.stderr)
    return dataclasses.replace(e, moving_behavior=source)


def _warn_if_angle(name: str, paths: list[str]) -> None:
    """Warn when ``/behavior/<name>`` is an angle (its ``unit``, e.g. head direction in radians):
    a regression head, ridge and R2 treat it as a line, so 359 and 1 degree read as far apart.
    The fix is the angle's cosine and sine as a 2-column behaviour."""
    for path in paths:
        with Session(path) as s:
            if name not in s.behavior_names:
                continue
            unit = s.behavior_unit(name).strip()
            if unit.lower() in ANGLE_UNITS:
                warnings.warn(f"{name} in {path} is an angle ({unit}): the regression head, ridge and R2 read it as a "
                              f"line, so values either side of the wrap (e.g. 359 and 1 degree) count as far apart; "
                              f"decode its cosine and sine instead: `neurofm convert session {path} OUT.h5 --angle "
                              f"{name}` adds /behavior/{name}_cos_sin", stacklevel=3)
                return


def angle_limitation(name: str, unit: str) -> str | None:
    """The limitation a run on an angle target carries in metrics.json and the model card (the
    warning before training went only to stderr: a head-direction run's card showed R2 0.76 "beating"
    ridge with no word that both read radians as a line)."""
    if unit.strip().lower() not in ANGLE_UNITS:
        return None
    return (f"{name} is an angle ({unit.strip()}): the model, every baseline and R2 read it as a line, so values "
            f"either side of the wrap (e.g. 359 and 1 degree) count as far apart and these R2s are not angular "
            f"errors; for a circular target decode its cosine and sine (`neurofm convert session IN.h5 OUT.h5 --angle "
            f"{name}` adds /behavior/{name}_cos_sin)")


def check_test_target(cfg: RunConfig) -> None:
    """Before training: can the test block score each decoded regression target?

    Counts the test windows that would be scored (``eval.score_when``) and compares the
    target's variance over them with its variance over the training windows scored the same
    way. Fewer than ``eval.min_scored_windows`` test windows, or a variance ratio under 1%
    (e.g. a test block of rest for position), is an error when fine-tuning (decoding is the
    point of the run) and a warning when pretraining (behaviour is an auxiliary target there);
    under 10% a warning; so is a validation block with fewer than ``eval.min_scored_windows``
    scored windows, or whose variance ratio is under 10% (model selection scores R2 there: a
    validation block where the target barely varies gave a starting validation R2 of -11.8 on
    place-runrest-60 fold 1). All give the numbers and the fix
    (``neurofm split``).
    ``eval.check_target=false`` skips the check.
    """
    e = cfg.eval
    targets = [v for v in cfg.model.behavior if v.target and v.task == "regression" and v.name in cfg.data.behavior]
    if not e.check_target or not targets:
        return
    paths = session_paths(cfg.data)
    moving = MovingWindows(cfg, paths) if e.score_when == "moving" else None
    w = cfg.model.window.curr
    for v in targets:
        _warn_if_angle(v.name, paths)
        values = {"train": [], "valid": [], "test": []}
        for k, path in enumerate(paths):
            with Session(path) as s:
                ts, vals = s.behavior(v.name)
                if k == 0:
                    unit = s.behavior_unit(v.name)
                for split in values:
                    ends = split_window_ends(cfg, s, split)
                    f = behavior_features(ts, vals, ends - w, ends)
                    keep = f["mask"] & (moving(np.full(len(ends), k), ends) if moving is not None else True)
                    values[split].append(f["mean"][keep].astype(np.float64))
        train, valid, test = (np.concatenate(values[x]) for x in ("train", "valid", "test"))
        which = "moving" if moving is not None else "all"
        if len(valid) < e.min_scored_windows:
            warnings.warn(f"{v.name}: the validation block has {len(valid)} scored windows ({which}), so model "
                          f"selection (best checkpoint, early stopping) has little to go on; give it a block where "
                          f"{v.name} varies with `neurofm split FILE ... --valid C:D`", stacklevel=2)
        fix = (f"hold out a block where {v.name} varies: `neurofm split FILE --train A:B --valid C:D --test E:F` "
               f"(seconds; `neurofm inspect FILE` shows the recording's span)"
               + (", or --score-when all" if moving is not None else "")
               + ", or eval.check_target=false to score it anyway")
        def refuse(text: str) -> None:
            if cfg.task.mode == "finetune":
                raise ConfigError(text)
            warnings.warn(text, stacklevel=3)

        if len(valid) >= e.min_scored_windows and len(train) >= 2:  # model selection scores R2 there
            ratio = variance_share(valid, train)
            ratio = 1.0 if ratio is None else ratio
            numbers = (f"{v.name}: over the {len(valid)} scored validation windows ({which}) its variance is "
                       f"{ratio:.2%} of that over the training windows ({_fmt(valid.var(0))} vs {_fmt(train.var(0))})")
            if ratio < VARIANCE_REFUSE:
                warnings.warn(f"{numbers}: the target barely varies in the validation block, so validation R2 (which "
                              f"picks the checkpoint and stops training) is undefined or meaningless. To change: {fix}",
                              stacklevel=2)
            elif ratio < VARIANCE_WARN:
                warnings.warn(f"{numbers}: validation R2, which picks the checkpoint and stops training, rests on "
                              f"little variation. To change: {fix}", stacklevel=2)
        if len(test) < e.min_scored_windows:
            refuse(f"{v.name}: the test block has {len(test)} scored windows ({which} windows; "
                   f"eval.min_scored_windows {e.min_scored_windows}), too few for R2. Fix: {fix}")
            continue
        ratio = variance_share(test, train)
        if ratio is None:
            continue
        numbers = (f"{v.name}: over the {len(test)} scored test windows ({which}) its variance is {ratio:.2%} of "
                   f"that over the training windows ({_fmt(test.var(0))} vs {_fmt(train.var(0))})")
        if ratio < VARIANCE_REFUSE:
            refuse(f"{numbers}: the target barely varies in the test block, so R2 there is undefined or "
                   f"meaningless. Fix: {fix}")
        elif ratio < VARIANCE_WARN:
            warnings.warn(f"{numbers}: R2 on this test block rests on little variation. To change: {fix}",
                          stacklevel=2)
        if line := off_range_text(v.name, test, train, unit, fold_name(cfg.data.split)):
            warnings.warn(line, stacklevel=2)


def _fmt(a: np.ndarray) -> str:
    return ", ".join(f"{x:.3g}" for x in np.atleast_1d(a))


#: A scored block whose target's variance is under these shares of the training windows' is
#: refused (test; a warning for validation) / warned about: R2 there is meaningless / rests on little.
VARIANCE_REFUSE, VARIANCE_WARN = 0.01, 0.1

#: The training mean's R2 on the scored test windows under which their target lies off the training
#: windows' range: per column that R2 is -(offset / sd)^2, so under -1 the training mean is, on average
#: over the columns, more than one of the test windows' own SDs away from theirs.
NULL_R2_OFF_RANGE = -1.0


def off_range_text(name: str, test: np.ndarray, train: np.ndarray, unit: str = "", fold: str = "") -> str | None:
    """A plain line when the scored ``test`` values of target ``name`` lie off the ``train`` values'
    range (the training mean's R2 on them under :data:`NULL_R2_OFF_RANGE`), else None. The variance
    check passes such a block (a 70 s test block of a 200 cm arena in which a rat kept to one corner:
    variance 13% of the training windows', mean 90 / 43 cm off): every arm then scores R2 far below 0
    (the training mean -11.5, ridge -6.7), which reads as a broken decoder, not a test block that
    covers little of the range the decoders learned. ``fold``: "fold k of K" (:func:`fold_name`) for
    one fold of a cross-validated run, whose fix is its pooled report, not cross-validation."""
    if len(test) < 2 or len(train) < 1:  # nothing scored (a test block of rest is refused as such)
        return None
    test = np.asarray(test, dtype=np.float64).reshape(len(test), -1)
    train = np.asarray(train, dtype=np.float64).reshape(len(train), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant column: its R2 is NaN, left out
        null_r2 = np.asarray(M.r2_score(test, np.broadcast_to(train.mean(0), test.shape), multioutput="raw_values"))
    null_r2 = null_r2[np.isfinite(null_r2)]
    if not len(null_r2) or null_r2.mean() >= NULL_R2_OFF_RANGE:
        return None
    u = f" {unit.strip()}" if unit.strip() else ""
    return (f"{name}: the training mean scores R2 {null_r2.mean():.2f} on the {len(test)} scored test windows: their "
            f"mean ({_fmt(test.mean(0))}{u}, sd {_fmt(test.std(0))}) lies off the training windows' "
            f"({_fmt(train.mean(0))}{u}, sd {_fmt(train.std(0))}), so R2, which divides by the test windows' own "
            f"variance, reads far below 0 for every arm and ranks the arms only against each other; "
            + (f"this is {fold}: read the pooled report over every fold's test block (the folder above), which "
               "divides by the variance of all of them" if fold else
               "hold out a test block whose range the training block covers (`neurofm split FILE --train A:B --valid "
               "C:D --test E:F`), or cross-validate (`neurofm finetune --folds 5`: every window scored once)"))


def variance_share(part: np.ndarray, train: np.ndarray) -> float | None:
    """The smallest, over the target's columns that vary in ``train`` ((n, dim) values), of
    ``part``'s variance as a share of ``train``'s; None when no column varies in training."""
    ok = train.var(0) > 0
    return float((part.var(0)[ok] / train.var(0)[ok]).min()) if ok.any() else None


def datamodule(cfg: RunConfig):
    """The spike data module; its tokenizer follows the model config (windows, dt, blocks).

    Fine-tuning from ``task.pretrained`` starts from the checkpoint's unit vocabulary and
    appends the units it has never seen, so known units keep their token (and embedding row).
    """
    from neurofm.data.datamodule import SpikeDataModule  # lazy: Lightning

    m, d = cfg.model, cfg.data
    if 0 in (m.block_size.id, m.block_size.prev_id):
        raise ConfigError(f"model.block_size: {m.block_size} is left to the data (0 = auto); resolve it with "
                          f"prepare(cfg) (experiment.run does) or set model.block_size.id and prev_id")
    vocab = None
    if cfg.task.pretrained:

        pre = pretrained_config(cfg.task.pretrained)["config"]
        if not pre.get("units"):
            raise ConfigError(f"task.pretrained: {cfg.task.pretrained} does not name its units; it cannot be "
                              f"matched to new recordings")
        vocab = UnitVocab(pre["units"])
    split = _split(cfg)
    dm = SpikeDataModule(
        session_paths(cfg.data), window_curr=m.window.curr, window_prev=m.window.prev, dt=m.window.dt,
        block_size=m.block_size.id, block_size_prev=m.block_size.prev_id, vocab=vocab,
        extend_vocab=vocab is not None, splits=split, stride=d.stride or None, behavior=d.behavior,
        stimulus=d.stimulus if m.stimulus is not None else None,
        stimulus_frames=m.stimulus.n_frames if m.stimulus is not None else 3,
        batch_size=d.batch_size, num_workers=d.num_workers, streaming=d.streaming, seed=cfg.seed, pack=_pack(cfg),
        shuffle_within_bin=d.shuffle_within_bin)
    if _few_shot_fit(cfg):
        before = m.window.curr + m.window.prev
        after = 0.0
        if m.stimulus is not None:
            before = max(before, dm.dataset_kwargs["stimulus_window"] - m.window.curr)
            after = m.window.curr
        dm.splits = FewShotSplit(split, _label_subset(cfg), session_paths(cfg.data), before=before, after=after)
    if _behavior_only(cfg) and _targets(cfg):
        dm.splits = TargetSplit(dm.splits, cfg)
    if _moving_fit(cfg):
        dm.splits = MovingSplit(dm.splits, cfg)
    return dm


def _targets(cfg: RunConfig) -> list[str]:
    """The decoded behaviours: the ones that carry the behaviour loss."""
    return [v.name for v in cfg.model.behavior if v.target]


def _label_subset(cfg: RunConfig):
    """The task's few-shot label draw (the same chunks for the model, the split and ridge)."""
    from neurofm.tasks.neuroformer import LabelSubset  # lazy: Lightning

    return LabelSubset(cfg.data.label_fraction, cfg.data.label_chunk_s, cfg.seed)


def id_bits_limitation(bits: float, behavior_only: bool, from_scratch: bool = False) -> str | None:
    """A limitation line when next-ID prediction scores below the firing-rate null (bits < 0),
    else None. Fine-tuning trains behaviour only by default, so the unit-ID head never learns a
    new session's units (their embedding rows start random): on a simulated VR day of 89 new
    units the card listed -2.08 bits/spike beside the null's 0 without a word. A ``--from-scratch``
    run's head never learned any unit, new or not: its line says so (it blamed units new to the
    model on a session the pretrained model had been trained on)."""
    if not np.isfinite(bits) or bits >= 0:
        return None
    untrained = ("any unit: --from-scratch starts every weight at random" if from_scratch
                 else "the units new to the model")
    why = (f" this run trained behaviour only (task.objectives), so the next-ID head never learned {untrained}: "
           "the spike metrics are not this model's spike prediction"
           if behavior_only else " the model predicts this session's spikes worse than their firing rates")
    return f"next-ID {bits:.3f} bits/spike, below the firing-rate null (0):{why}"


def _behavior_only(cfg: RunConfig) -> bool:
    """Behaviour the only training objective (fine-tuning's default): a window whose label does
    not count carries no loss at all."""
    objectives = set(cfg.task.objectives or (["behavior"] if cfg.task.mode == "finetune" else ["id"]))
    return objectives == {"behavior"}


def _few_shot_fit(cfg: RunConfig) -> bool:
    """Few labels and behaviour the only objective: unlabelled windows add nothing to training."""
    return cfg.data.label_fraction < 1.0 and _behavior_only(cfg)


def _moving_fit(cfg: RunConfig) -> bool:
    """Moving-only scoring and behaviour the only objective: the task masks the behaviour loss to
    moving windows (:class:`MovingWindows`), so resting windows add nothing to training."""
    return cfg.eval.score_when == "moving" and _behavior_only(cfg)


def _cut_to(cfg: RunConfig) -> str:
    """Which training windows the recipe's ``train`` split keeps: "labelled", "moving",
    "labelled moving" (:class:`FewShotSplit`, :class:`MovingSplit`), or "" (every one)."""
    return " ".join(k for k, on in (("labelled", _few_shot_fit(cfg)), ("moving", _moving_fit(cfg))) if on)


class _TrainingWindowFilter:
    """A split that keeps the ``base`` split's blocks and, of the ``train`` split's windows, those
    :meth:`_keep` keeps (and whatever the base keeps); ``train_all`` stays every window of the
    training block (the baselines' and the unigram null's). Windows are judged by their end times,
    so each still reads its previous window from the recording: blocks cannot say this, since two
    runs of kept windows split by a gap shorter than a window's history would need overlapping
    blocks."""

    def __init__(self, base):
        self.base = base

    @property
    def names(self) -> list[str]:
        return list(self.base.names)

    def __call__(self, session) -> dict:
        blocks = dict(self.base(session))
        blocks.setdefault("train_all", blocks["train"])
        return blocks

    def select_windows(self, session, split: str, ends: np.ndarray) -> np.ndarray:
        """Which of ``split``'s windows of ``session`` ending at ``ends`` to keep: under ``train``
        those :meth:`_keep` keeps (and whatever the base keeps); every window of another split."""
        parent = getattr(self.base, "select_windows", None)
        ends = np.asarray(ends, dtype=np.float64)
        keep = np.ones(len(ends), dtype=bool) if parent is None else np.asarray(parent(session, split, ends), bool)
        return keep if split != "train" else keep & self._keep(session, ends)

    def _keep(self, session, ends: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MovingSplit(_TrainingWindowFilter):
    """Fine-tuning on behaviour alone, scored on moving windows: the ``train`` split keeps only
    the moving windows.

    Under ``eval.score_when: moving`` the task masks the behaviour loss to the windows
    :class:`MovingWindows` calls moving (the kind the test scores), so with behaviour the only
    objective a resting window carries no loss, yet costs a forward and backward pass, and a
    batch of them an optimizer step on zero gradients (AdamW still moves the weights, by momentum
    and decay). On issue 10's maze 694 of 4,211 training windows move. So the ``train`` split
    keeps only the windows the one moving rule keeps, by their end times
    (:meth:`select_windows`); each still reads its previous window from the recording. Blocks
    cannot say this as :class:`FewShotSplit` does: two runs of moving windows split by a stop
    shorter than a window's history would need overlapping blocks.

    Composes with ``base`` (a :class:`FewShotSplit` when labels are few: labelled AND moving).
    The ``train`` blocks stay the base's (the labelled ones, which the behaviour statistics
    read); ``train_all`` keeps every window of the whole training block for the baselines
    (which fit its labelled moving windows: the ones the model trains on) and the unigram null.
    ``cfg``: the run config, ``eval.moving_threshold`` resolved (:func:`resolve_scoring`).
    """

    def __init__(self, base, cfg: RunConfig):
        super().__init__(base)
        self.cfg = cfg
        self._rules: dict[str, MovingWindows] = {}  # per session file: its bin grid, read once

    def _keep(self, session, ends: np.ndarray) -> np.ndarray:
        """The moving windows."""
        key = str(Path(session.path).resolve())
        if key not in self._rules:
            self._rules[key] = MovingWindows(self.cfg, [session])
        return self._rules[key](np.zeros(len(ends), dtype=np.int64), ends)


class TargetSplit(_TrainingWindowFilter):
    """Fine-tuning on behaviour alone: the ``train`` split keeps only the windows where a decoded
    target was recorded.

    A window whose current window holds no finite sample of any target (the rest box of a
    sleep epoch, untracked; a cursor NaN between trials) has no label, so with behaviour the only
    objective it carries no loss, yet costs a forward and backward pass, an optimizer step on
    zero gradients in a batch of such windows, and a share of the step budget sized from the
    windows the loader reads (:func:`resolve_trainer`). On a Kilosort export with a 20 min sleep
    epoch before 20 min on a track, 4,798 of 7,676 training windows (62.5%) had no head
    direction; on a Utah-array session 1,310 of 6,501 (20.2%) no cursor velocity. Each window is
    judged as the data module labels it (:func:`~neurofm.data.datasets.behavior_features`:
    a sample in ``[end - window.curr, end)``). Composes like :class:`MovingSplit`, which
    ``train_all`` (the baselines' and the unigram null's windows) and the behaviour statistics
    are left as the base has them.
    """

    def __init__(self, base, cfg: RunConfig):
        super().__init__(base)
        self.targets, self.window = _targets(cfg), cfg.model.window.curr

    def _keep(self, session, ends: np.ndarray) -> np.ndarray:
        """The windows with a sample of some target."""
        labelled = np.zeros(len(ends), dtype=bool)
        for name in self.targets:
            if name in session.behavior_names:
                ts, values = session.behavior(name)
                labelled |= behavior_features(ts, values, ends - self.window, ends)["mask"]
        return labelled


def _any_labelled(cfg: RunConfig, dm) -> bool:
    """Whether the few-shot draw labels any training window (every window does with all labels)."""
    if cfg.data.label_fraction >= 1.0:
        return True
    idx = _train_windows_loader(dm).dataset.index
    sessions = np.repeat(idx.session, idx.count)
    ends = np.concatenate([idx.anchors(r) for r in range(idx.n_runs)]) if idx.n_runs else np.zeros(0)
    return bool(_label_subset(cfg)(torch.as_tensor(sessions), torch.as_tensor(ends)).any())


def check_moving_windows(cfg: RunConfig, dm) -> None:
    """Fine-tuning on the moving windows only (:class:`MovingSplit`): a ConfigError before any
    step when no (labelled) training window moves. (No labelled window at all is the few-shot
    draw's error, :func:`init_count_heads`.)"""
    if not isinstance(dm.splits, MovingSplit) or len(dm.dataset("train")) or not _any_labelled(cfg, dm):
        return
    e, d = cfg.eval, cfg.data
    labelled = f"labelled ({d.label_fraction:g} of the {d.label_chunk_s:g} s chunks) " if d.label_fraction < 1 else ""
    raise ConfigError(
        f"eval.score_when: moving: no {labelled}training window of {', '.join(session_paths(d))} moves "
        f"(/behavior/{e.moving_behavior} speed > eval.moving_threshold {e.moving_threshold:.4g} in every 50 ms bin), "
        f"so fine-tuning has no window with a behaviour loss; lower eval.moving_threshold, use --score-when all, "
        f"raise --label-fraction, or use a recording with more running")


def _train_windows_loader(dm):
    """Every training window, in time order (``train_all`` under :class:`FewShotSplit`,
    :class:`TargetSplit` or :class:`MovingSplit`)."""
    return dm.loader("train_all" if isinstance(dm.splits, (FewShotSplit, _TrainingWindowFilter)) else "train")


def _behavior_stats(dm, names: list[str]) -> dict[str, tuple[list[float], list[float]]]:
    """Mean and std of each behaviour variable over its finite samples inside the training blocks
    (the labelled ones under :class:`FewShotSplit`), for standardising; all finite samples if none
    fall there. Rows with NaN (tracking lost) are left out, as the window targets leave them out."""
    stats = {}
    for name in names:
        values, inside = [], []
        for s in dm.sessions:
            ts, v = s.behavior(name)
            v = np.asarray(v, dtype=np.float64).reshape(len(ts), -1)
            finite = np.isfinite(v).all(axis=1)
            values.append(v[finite])
            inside.append(dm.splits(s)["train"].contains(ts[finite], ts[finite]))
        v, inside = np.concatenate(values), np.concatenate(inside)
        if not len(v):
            raise ConfigError(f"/behavior/{name}: no finite sample in {[str(s.path) for s in dm.sessions]}; "
                              f"there is nothing to standardise or decode")
        v = v[inside] if inside.any() else v
        std = v.std(0)
        stats[name] = (v.mean(0).tolist(), np.where(std > 0, std, 1.0).tolist())
    return stats


def build_model(cfg: RunConfig, dm) -> Neuroformer:
    """A fresh model sized to the data module's vocabulary, or the pretrained one extended to it."""
    if cfg.task.pretrained:

        pretrained = load_pretrained(cfg.task.pretrained)
        if not isinstance(pretrained, Neuroformer):
            raise ConfigError(f"task.pretrained: {cfg.task.pretrained} holds a {type(pretrained).__name__}, "
                              f"not a Neuroformer")
        # the run's model config (prepare: the checkpoint's shape, the run's dropout / loss
        # weights); the checkpoint's weights unless from scratch. Same shape: strict load.
        config = copy.deepcopy(cfg.model)
        have = {v.name for v in pretrained.config.behavior}
        config.behavior = [v for v in config.behavior if v.name in have]  # new heads: _add_behavior_heads
        model = Neuroformer(config)
        if cfg.task.from_scratch:
            print(f"neurofm: from scratch: random init in the shape of {cfg.task.pretrained}")
        else:
            model.load_state_dict(pretrained.state_dict(), strict=True)
        new = dm.vocab.units[model.config.n_units:]
        if new:
            print(f"neurofm: {len(new)} units not in the checkpoint get new embedding rows")
            model.extend_vocab(len(new), names=new if model.config.units else None)
        _add_behavior_heads(model, cfg)
        return model
    # A deep copy: the model owns its config and writes into it (behaviour statistics, vocabulary
    # growth); the run config must stay what the user asked for (it is saved and compared on resume).
    config = dataclasses.replace(copy.deepcopy(cfg.model), n_units=dm.vocab.n_units, units=list(dm.vocab.units))
    return Neuroformer(config)


def _add_behavior_heads(model: Neuroformer, cfg: RunConfig) -> None:
    """Fine-tuning: give a pretrained model the behaviour heads the run config asks for."""
    wanted = {v.name: v for v in cfg.model.behavior}
    have = {v.name for v in model.config.behavior}
    if set(wanted) - have:
        model.add_behavior([copy.deepcopy(wanted[n]) for n in wanted if n not in have])


def task(cfg: RunConfig, dm):
    from neurofm.tasks.neuroformer import NeuroformerTask  # lazy: Lightning

    if cfg.task.mode not in ("pretrain", "finetune"):
        raise ConfigError(f"task.mode: {cfg.task.mode!r} is not 'pretrain' or 'finetune'")
    model = build_model(cfg, dm)
    # Standardisation statistics are part of the model: a pretrained / fine-tuned model keeps the
    # ones it was trained with (so `neurofm evaluate` scores it as it is); only variables without
    # them (a fresh model, a new head) get them from this run's training data.
    unset = [v.name for v in model.config.behavior if not v.mean]
    if unset:
        model.set_behavior_stats(_behavior_stats(dm, unset))
    moving = MovingWindows(cfg, dm.sessions) if cfg.eval.score_when == "moving" else None
    if cfg.task.mode == "finetune":
        check_moving_windows(cfg, dm)
    start = init_count_heads(model, cfg, dm, moving) if cfg.task.mode == "finetune" else {}
    t = cfg.task
    module = NeuroformerTask(
        model=model, mode=t.mode, objectives=t.objectives or None, **{k: getattr(t, k) for k in NEUROFORMER_KNOBS},
        unfreeze_every=t.unfreeze_every or None, trainable=t.trainable, label_fraction=cfg.data.label_fraction,
        label_chunk_s=cfg.data.label_chunk_s, label_seed=cfg.seed,
        score_windows=moving)
    module.read_out_start = start  # which features the read-out started from, for metrics.json (evaluate)
    return module


#: feature sets the fine-tuning start chooses between (:func:`init_count_heads`), as metrics.json names them
START_COUNTS, START_POOLED = "counts", "counts+pooled"


@torch.no_grad()
def init_count_heads(model: Neuroformer, cfg: RunConfig, dm, moving: "MovingWindows | None" = None
                     ) -> dict[str, dict[str, Any]]:
    """Start each fresh regression head (a zero count read-out and the new pooled-state head) at
    ridge on the labelled training windows (the moving ones, with a moving rule: ``moving``),
    from the feature set that blocked CV on those windows prefers: every unit's counts in
    ``count_bin`` bins alone, or the counts AND the model's pooled state (eval mode, the weights
    fine-tuning starts from).

    Both candidates are :func:`_ridge_fit` (4-fold blocked CV over the windows in time order
    picks the penalty; the same folds score both sets) on the standardised target; the pooled
    state is used only when its blocked-CV R2 gain over counts alone exceeds
    :data:`~neurofm.report.START_SE` (2) paired block-bootstrap standard errors of that gain
    (:func:`neurofm.report.start_gain`; why two, there). Standardised and sharing one penalty with the counts, pooled features
    that carry little add noise (issue 10: on linear-track fold 2 the pooled state raised the
    inner folds' R2 by 0.006 +- 0.016 SE and the counts + pooled start scored 0.038 below ridge
    on counts on the test block). With
    counts alone the start IS the decode report's "ridge on binned counts" arm (same windows,
    same fit; the pooled head's weights 0), up to float32. The fit is folded into the two Linear
    layers (``W = coef / sd`` split between them, ``b = y_mean - (mu / sd) @ coef`` in the
    count head's bias, the pooled head's bias 0). From scratch the same rule reads the random
    network's features. Fine-tuning then has to beat this starting point on validation to be
    kept (:class:`~neurofm.tasks.callbacks.StartingPoint`). Heads already trained (a fine-tuned
    checkpoint, a resumed run) are left alone.

    Returns, per target initialised, ``{"features": "counts" | "counts+pooled", "cv_r2":
    {"counts": r2, "counts+pooled": r2}, "gain": the CV R2 difference, "paired_se": se, "alpha":
    penalty, "n_windows": labelled windows}`` (None where too few windows for 4 folds: then the
    holdout penalty, counts only);
    :func:`evaluate` writes it to metrics.json as ``start``."""
    fresh = [v for v in model.config.behavior_targets()
             if v.name in model.count_heads and v.task == "regression"
             and not model.count_heads[v.name].weight.detach().abs().sum() > 0]
    if not fresh:
        return {}
    dm.setup("fit")
    n_units = model.config.n_units
    stride = cfg.data.stride or cfg.model.window.curr
    xs, ys, ms, ses, ivs = {v.name: [] for v in fresh}, {v.name: [] for v in fresh}, {v.name: [] for v in fresh}, [], []
    pooled = []
    was_training = model.training
    model.eval()
    print(f"neurofm: the read-out's start: the model reads the training windows once (pooled state), then ridge "
          f"fits {', '.join(v.name for v in fresh)} on their binned counts", file=sys.stderr)
    try:
        # the training windows (few-shot: the labelled ones)
        for batch in progress(dm.loader(dm.split_names[0]), "the read-out's start, training windows"):
            ses.append(batch["session"])
            ivs.append(batch["interval"])
            pooled.append(model(batch)["pooled"].double())
            for v in fresh:
                xs[v.name].append(torch.as_tensor(_binned_counts(batch, n_units, model.config.window, v.count_bin)))
                ys[v.name].append(batch["behavior"][v.name].reshape(len(batch["interval"]), -1))
                ms[v.name].append(batch["behavior_mask"][v.name])
    finally:
        model.train(was_training)
    if not ses:  # few-shot split: no 10 s chunk of the training block drew a label
        d = cfg.data
        raise ConfigError(
            f"data.label_fraction: {d.label_fraction:g} of the training block's {d.label_chunk_s:g} s chunks "
            f"(data.label_chunk_s) drew no labelled chunk in {', '.join(session_paths(d))} "
            f"({draw_rule(d.label_fraction, d.label_chunk_s)}, seed {cfg.seed}), so fine-tuning has no labelled "
            f"training window; raise --label-fraction, shorten data.label_chunk_s, or use a longer recording")
    labelled = torch.ones(sum(len(s) for s in ses), dtype=torch.bool)
    if cfg.data.label_fraction < 1.0:
        labelled = _label_subset(cfg)(torch.cat(ses), torch.cat(ivs))
    if moving is not None:  # the labels the behaviour loss sees: moving windows only
        labelled &= moving(torch.cat(ses), torch.cat(ivs))
    P = torch.cat(pooled).numpy()
    sessions, intervals = torch.cat(ses).numpy(), torch.cat(ivs).double().numpy()
    done: dict[str, dict[str, Any]] = {}
    for v in fresh:
        C = torch.cat(xs[v.name]).double().numpy()
        mean, std = v.scale(torch.zeros(1, dtype=torch.float64))
        Y = ((torch.cat(ys[v.name]).double() - mean) / std).numpy()
        keep = (torch.cat(ms[v.name]).bool() & labelled).numpy()
        if keep.sum() < 10:
            continue
        # with the pass over the training windows above, this came before step 1 without a word:
        # on a 360-unit recording (25,921 windows x 1,440 count features, 1 thread under load)
        # over 11 minutes passed between the attention-backend line and the read-out's start line
        print(f"neurofm: fitting the read-out's starting ridge for {v.name}: {int(keep.sum()):,} labelled windows x "
              f"{C.shape[1]:,} count features (+{P.shape[1]} pooled), penalty by blocked CV "
              f"({RidgeFitPredict().inner_folds} folds, twice); its time grows with windows x features^2", file=sys.stderr)
        fits = {START_COUNTS: _ridge_fit(C[keep], Y[keep], stride),
                START_POOLED: _ridge_fit(np.concatenate([C, P], axis=1)[keep], Y[keep], stride)}
        cv = {k: cv_r2 for k, (_, cv_r2, _) in fits.items()}
        blocks = time_blocks(intervals[keep] + 1e7 * sessions[keep], cfg.data.label_chunk_s)
        gain, se = start_gain(fits[START_COUNTS][2], fits[START_POOLED][2], Y[keep], blocks, seed=cfg.eval.seed)
        chosen = START_POOLED if gain > START_SE * se else START_COUNTS  # NaN (too few windows for CV): counts
        r = fits[chosen][0]
        coef, bias = r.linear_map()  # (F, D): the counts' F_c rows, then the pooled state's
        head, pooled_head = model.count_heads[v.name], model.behavior_heads[v.name]
        head.weight.copy_(torch.as_tensor(coef[:C.shape[1]].T, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        pooled_head.weight.zero_()
        if chosen == START_POOLED:
            pooled_head.weight.copy_(torch.as_tensor(coef[C.shape[1]:].T, dtype=pooled_head.weight.dtype))
        pooled_head.bias.zero_()
        finite = lambda x: float(x) if np.isfinite(x) else None  # noqa: E731
        done[v.name] = {"features": chosen, "cv_r2": {k: finite(x) for k, x in cv.items()},
                        "gain": finite(gain), "paired_se": finite(se),
                        "alpha": float(r.alpha_), "n_windows": int(keep.sum())}
        features = 'binned counts + pooled state' if chosen == START_POOLED else 'binned counts alone'
        if np.isfinite(gain):
            scores = ", ".join(f"{k} {x:.3f}" for k, x in cv.items())
            why = (f"blocked-CV R2 on the {int(keep.sum())} labelled training windows: {scores}; the pooled state's "
                   f"gain {gain:+.3g} +- {se:.2g} paired SE over {cfg.data.label_chunk_s:g} s blocks: used only when "
                   f"the gain exceeds {START_SE:g} SE")
        else:  # too few labelled windows for 4 blocked folds with their gaps: no CV score to print
            why = (f"only {int(keep.sum())} labelled training windows{' that move' if moving is not None else ''}: "
                   f"too few for blocked CV with gaps, so counts alone, penalty {float(r.alpha_):g} chosen by "
                   f"5-fold blocked CV without gaps; more labels (--label-fraction) give the gapped CV and its score")
        print(f"neurofm: the read-out of {v.name} starts at ridge on {features} ({why})", file=sys.stderr)
    return done


BUDGET_PASSES, BUDGET_MIN_STEPS, BUDGET_MAX_STEPS, BUDGET_CHECKS = 30, 300, 3000, 20


def step_budget_for(n_labelled: int, batch_size: int) -> int:
    """Optimizer steps for fine-tuning on ``n_labelled`` labelled windows: ``BUDGET_PASSES`` (30)
    passes over them, at least ``BUDGET_MIN_STEPS`` (a few hundred steps: a fresh head needs them
    whatever the data size) and at most ``BUDGET_MAX_STEPS`` (large sets converge in fewer
    passes; early stopping on validation R2 ends most runs sooner anyway)."""
    per_epoch = max(1, math.ceil(n_labelled / batch_size))
    return int(min(BUDGET_MAX_STEPS, max(BUDGET_MIN_STEPS, BUDGET_PASSES * per_epoch)))


def loss_windows(cfg: RunConfig, dm) -> tuple[int, int]:
    """``(carrying, n)``: of the ``n`` windows the training loader reads, how many carry a loss.
    With behaviour the only objective (fine-tuning's default) a window carries the loss only
    when its label counts: labelled (``data.label_fraction``) and, under ``eval.score_when:
    moving``, moving (:class:`MovingWindows`, the rule the task masks the loss with). The
    recipe's data module reads only those (:class:`FewShotSplit`, :class:`MovingSplit`), so
    ``carrying == n`` there; a data module built otherwise may read more. With another
    objective (``id``, ``dt``...) every window carries loss."""
    ds = dm.dataset("train")
    n = len(ds.index)  # windows (a streaming dataset's len() counts batches)
    if not _behavior_only(cfg) or not n or (cfg.data.label_fraction >= 1.0 and cfg.eval.score_when != "moving"):
        return n, n
    idx = ds.index
    sessions = np.repeat(idx.session, idx.count)
    ends = np.concatenate([idx.anchors(r) for r in range(idx.n_runs)])  # spike windows: anchor = window end
    keep = np.ones(n, dtype=bool)
    if cfg.data.label_fraction < 1.0:
        keep &= _label_subset(cfg)(torch.as_tensor(sessions), torch.as_tensor(ends)).numpy()
    if cfg.eval.score_when == "moving":
        keep &= MovingWindows(cfg, dm.sessions)(sessions, ends)
    return int(keep.sum()), n


def resolve_trainer(cfg: RunConfig, dm):
    """The Trainer settings this run gets (called by :func:`neurofm.experiment.run` once the data
    module exists): with ``task.step_budget = 0`` and no trainer limit (``trainer.max_epochs`` and
    ``max_steps`` both -1, as the fine-tuning recipe leaves them; a user's own limit wins) the run
    trains for a step budget sized from the training windows that carry the loss
    (:func:`loss_windows`: the labelled ones, and only the moving ones under
    ``eval.score_when: moving``; :func:`step_budget_for`). The training loader reads just those
    windows (:class:`FewShotSplit`, :class:`MovingSplit`), so an epoch, ``ceil(n / batch_size)``
    steps, is one pass over the windows the budget counts; ``step_budget = N > 0``: N steps.
    Validation then runs every ``ceil(budget / BUDGET_CHECKS)`` steps, so ``BUDGET_CHECKS`` (20)
    times whatever the epoch length, and early stopping has checks to count: epochs shorter
    than that run whole and validation counts steps across them
    (``trainer.val_check_every_n_steps``; validating every ``ceil(epochs / 20)`` epochs gave 10
    to 20 checks, 15 at 30 epochs); a pass over the labelled windows longer than that is cut
    into "epochs" of that many batches (``limit_train_batches``, each a fresh shuffle),
    validated at each end."""
    t = cfg.trainer
    explicit_limit = t.max_epochs != -1 or t.max_steps != -1  # the user's trainer.max_epochs / max_steps win
    if cfg.task.step_budget < 0 or (cfg.task.step_budget == 0 and explicit_limit):
        return t
    carrying, n = loss_windows(cfg, dm)  # the recipe's loader reads the loss-carrying windows only: carrying == n
    per_epoch = max(1, math.ceil(n / cfg.data.batch_size))
    # issue 10's maze: 4,211 labelled windows, 694 of them moving (the only ones with a loss
    # under moving-only scoring): sized from all 4,211 the budget was 1,320 steps (690 s CPU) and
    # the starting state was kept; sized from the 694 it is the 300-step floor
    budget = cfg.task.step_budget or step_budget_for(carrying, cfg.data.batch_size)
    if carrying != n:
        sized = f"{carrying} of {n} training windows carry the behaviour loss"
    else:
        kind = _cut_to(cfg)
        sized = f"{n} {kind + ' ' if kind else ''}training windows"
    check_steps = max(1, math.ceil(budget / BUDGET_CHECKS))
    if per_epoch > check_steps:
        # an epoch longer than the gap between checks: "epochs" of check_steps batches (each a fresh
        # shuffle), so validation (and early stopping) still runs ~BUDGET_CHECKS times
        epochs = math.ceil(budget / check_steps)
        print(f"neurofm: step budget {budget} ({sized}; {per_epoch} steps per pass; "
              f"validation every {check_steps} steps)", file=sys.stderr)
        return dataclasses.replace(t, max_steps=budget, max_epochs=epochs, check_val_every_n_epoch=1,
                                   limit_train_batches=check_steps)
    epochs = math.ceil(budget / per_epoch)
    print(f"neurofm: step budget {budget} ({sized}; {per_epoch} steps per epoch, "
          f"{epochs} epochs, validation every {check_steps} steps)", file=sys.stderr)
    return dataclasses.replace(t, max_steps=budget, max_epochs=epochs, val_check_every_n_steps=check_steps)


def export(task) -> Neuroformer:
    return task.model


def load_task(checkpoint):
    from neurofm.tasks.neuroformer import NeuroformerTask  # lazy: Lightning

    return NeuroformerTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)


@torch.no_grad()
def write_generated(gen: GeneratedSpikes, path, unit_ids, *, session_id: str, session: int | None = None,
                    **attrs: Any) -> Path:
    """Write generated spikes (of one ``session`` index, or all) as a session file; ``unit_ids``:
    the model's unit list. Extra ``attrs`` (e.g. ``source``) go to the file's root attributes."""
    times, units = gen.spikes(session)
    if units.size and units.max() >= len(unit_ids):
        raise ValueError(f"generated unit index {int(units.max())} but only {len(unit_ids)} unit_ids were given")
    t0, t1 = gen.span(session)
    attrs = {"source": "neurofm generate", **attrs}  # a caller's source (e.g. which model) wins
    with SessionWriter(path, session_id=session_id, **attrs) as w:
        w.add_units(list(unit_ids))
        w.add_spikes(times, units, t_start=t0, t_end=t1)
    return Path(path)


def generate_session(pretrained, session_path, out_path, *, mode: str = "teacher_forced", start: float | None = None,
                     seconds: float = 10.0, top_p: float = 0.95, seed: int = 0, plot: bool = True) -> Path:
    """Generate ``seconds`` of spikes window by window and write them as a session file.

    Teacher-forced: every window reads the recording's true previous window. Free-running:
    only the first window does; after that the model reads its own output. Writes a
    recorded-vs-generated raster beside ``out_path`` (``.png``) unless ``plot=False``.
    """
    model = load_pretrained(pretrained)
    c = model.config
    if not c.units:
        raise ConfigError(f"{pretrained}: the model does not name its units; cannot map them to {session_path}")
    vocab = UnitVocab(c.units)
    tok = SpikeTokenizer(c.window.curr, c.window.prev, c.window.dt, c.block_size.id, c.block_size.prev_id, vocab)
    with Session(session_path) as s:
        t0 = s.t_start + c.window.prev if start is None else float(start)
        ends = t0 + c.window.curr * np.arange(1, int(round(seconds / c.window.curr)) + 1)
        arrays = tok.tokenize_session(s, ends)
        unit_ids = s.unit_ids
        session_id = s.session_id
    batch = {k: torch.as_tensor(v) for k, v in arrays.items()}
    batch["session"] = torch.zeros(len(ends), dtype=torch.long)
    gen = model.generate(batch, mode=mode, top_p_id=top_p, top_p_dt=top_p, seed=seed)
    names = [u.split("/", 1)[1] if "/" in u else u for u in c.units]
    out = write_generated(gen, out_path, names, session_id=f"{session_id}-generated-{mode}",
                          source=f"neurofm generate {pretrained} ({mode})")
    if plot:

        with Session(session_path) as s:
            rt, ru = s.spikes(t0, float(ends[-1]))
        gt, gu = gen.spikes()
        # map recorded unit indices onto the model's unit order for a shared y axis
        order = {name: i for i, name in enumerate(names)}
        ru_model = np.array([order.get(unit_ids[u], -1) for u in ru], dtype=np.int64)
        keep = ru_model >= 0
        order, how = plots.unit_order(np.bincount(ru_model[keep], minlength=len(names))[None, :])  # by recorded rate
        plots.raster_compare(rt[keep], ru_model[keep], gt, gu, t0, float(ends[-1]), order, n_units=len(names),
                             unit_labels=names, order_label=how,
                             title=f"Recorded vs generated ({mode.replace('_', '-')})",
                             path=Path(out_path).with_suffix(".png"))
    return out


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def _collect(model: Neuroformer, loader, keep_windows: int = 0, run_model: bool = True,
             order_free: bool = False) -> dict[str, Any]:
    """Run the model over a loader: per-spike log-probs of the true next ID (given that the
    next token is a spike: log-softmax over the unit tokens only), behaviour predictions,
    window spike counts for the ridge baseline, each window's end time and session, and the
    first batches covering ``keep_windows`` windows (for generation). ``run_model=False``
    reads only the data (the training windows: the baselines need their counts and labels).
    ``order_free``: also, per window, ``order`` (W, 3): the log-probability of its spikes in the
    tokenizer's order and in one seeded within-bin shuffle, and log N (:func:`order_free_bits`)."""
    model.eval()
    n_units = model.config.n_units
    targets = [v.name for v in model.config.behavior_targets()]
    logp_id, target_ids, counts, beh_pred, beh_true, beh_mask, batches = [], [], [], {}, {}, {}, []
    interval, session, pooled, binned, order, spike_session = [], [], [], [], [], []
    for batch in loader:
        tid = batch["target_id"]
        if run_model:
            out = model(batch)
            n = out["id_logits"].shape[1]
            tid = tid[:, :n]
            unit_logp = torch.log_softmax(out["id_logits"][..., N_SPECIAL:].float(), -1)
            lp = unit_logp.gather(-1, (tid - N_SPECIAL).clamp(min=0)[..., None])[..., 0]
            logp_id.append(lp[tid >= N_SPECIAL].numpy())
            if order_free and "cu_seqlens" not in batch:  # the within-bin order's share (order_free_bits)
                shuffled = WithinBinShuffle(seed=0)(batch, 0, len(order))
                stid = shuffled["target_id"][:, :n]
                slp = torch.log_softmax(model(shuffled)["id_logits"][..., N_SPECIAL:].float(), -1)
                slp = slp.gather(-1, (stid - N_SPECIAL).clamp(min=0)[..., None])[..., 0]
                order.append(np.stack([(lp * (tid >= N_SPECIAL)).sum(1).double().numpy(),
                                       (slp * (stid >= N_SPECIAL)).sum(1).double().numpy(),
                                       log_orderings(tid.numpy(), batch["target_dt"][:, :n].numpy())], 1))
            for name, pred in out.get("behavior", {}).items():
                beh_pred.setdefault(name, []).append(pred.float().numpy())
            if "pooled" in out:
                pooled.append(out["pooled"].float().numpy())
        spike = tid >= N_SPECIAL
        target_ids.append((tid[spike] - N_SPECIAL).numpy())
        spike_session.append(np.repeat(np.asarray(batch["session"], dtype=np.int64), spike.sum(1).numpy()))
        counts.append(_window_counts(batch, n_units))
        binned.append(_binned_counts(batch, n_units, model.config.window))
        interval.append(np.asarray(batch["interval"], dtype=np.float64))
        session.append(np.asarray(batch["session"], dtype=np.int64))
        for name in targets:
            if name in batch.get("behavior", {}):
                beh_true.setdefault(name, []).append(batch["behavior"][name].reshape(len(tid), -1).numpy())
                beh_mask.setdefault(name, []).append(batch["behavior_mask"][name].numpy())
        if sum(len(b["interval"]) for b in batches) < keep_windows:
            batches.append(batch)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {"logp_id": cat(logp_id), "target_ids": cat(target_ids).astype(np.int64),
            "spike_session": cat(spike_session).astype(np.int64), "counts": np.concatenate(counts),
            "interval": cat(interval), "session": cat(session).astype(np.int64),
            "beh_pred": {k: np.concatenate(v) for k, v in beh_pred.items()},
            "beh_true": {k: np.concatenate(v) for k, v in beh_true.items()},
            "beh_mask": {k: np.concatenate(v).astype(bool) for k, v in beh_mask.items()},
            "pooled": cat(pooled), "binned": np.concatenate(binned), "batches": batches,
            "order": np.concatenate(order) if order else None}


def _moving_windows(cfg: RunConfig, dm, coll: dict) -> np.ndarray:
    """(n,) bool: the collected windows to score behaviour on (``eval.score_when``): every
    window, or the moving ones (:class:`MovingWindows`)."""
    if cfg.eval.score_when != "moving":
        return np.ones(len(coll["interval"]), dtype=bool)
    return MovingWindows(cfg, dm.sessions)(coll["session"], coll["interval"])


def _window_counts(batch, n_units: int) -> np.ndarray:
    """(B, 2 * n_units) spike counts per unit in the current and the previous window."""
    out = []
    for key, mkey in (("id", "mask"), ("id_prev", "mask_prev")):
        ids = batch[key]
        unit = (ids - N_SPECIAL).clamp(min=0)
        real = (ids >= N_SPECIAL).float()
        c = torch.zeros(ids.shape[0], n_units).scatter_add_(1, unit.clamp(max=n_units - 1), real)
        out.append(c.numpy())
    return np.concatenate(out, axis=1)


RIDGE_BIN_S = 0.05  # DESIGN.md 8: ridge on counts in 50 ms bins


def _binned_counts(batch, n_units: int, window, bin_s: float = RIDGE_BIN_S) -> np.ndarray:
    """(B, n_units * n_bins) counts per unit in ``bin_s`` bins over the span the model reads
    (:func:`~neurofm.models.neuroformer.window_count_features`, unit-major): the ridge and Bayes
    baselines (and the model's count head) see exactly the spikes the model sees (after any block
    overflow, at the tokens' dt resolution), binned as DESIGN.md 8's floor bins them (50 ms)."""
    return window_count_features(batch, n_units, window, bin_s).numpy()


def _unigram_logp(target_ids: np.ndarray, train_counts: np.ndarray, sessions: np.ndarray | None = None) -> np.ndarray:
    """Log-probability of each spike's unit under the unigram (firing-rate) null: training
    spike counts + 0.5. ``train_counts`` (n_units,) is one null for every spike; (S, n_units)
    is one per session, spike ``k`` scored under its session ``sessions[k]``'s rates. A model
    trained on several sessions knows which session a window is from (its previous window's
    units), so a null pooled over sessions hands it ~log2(S) bits/spike for free: on two
    sessions of one lab (72 and 58 units) the pooled null read 1.48 bits/spike."""
    c = np.asarray(train_counts, dtype=np.float64) + 0.5
    if c.ndim == 1:
        return np.log(c / c.sum())[target_ids]
    return np.log(c / c.sum(1, keepdims=True))[np.asarray(sessions, dtype=np.int64), target_ids]


def _session_unit_counts(coll: dict, n_sessions: int, n_units: int) -> np.ndarray:
    """(n_sessions, n_units) spike counts per unit in each session's collected windows."""
    flat = coll["spike_session"] * n_units + coll["target_ids"]
    return np.bincount(flat, minlength=n_sessions * n_units).reshape(n_sessions, n_units).astype(np.float64)


def _id_bits_per_spike(logp: np.ndarray, target_ids: np.ndarray, train_counts: np.ndarray,
                       sessions: np.ndarray | None = None) -> float:
    """Mean log2-likelihood gain per held-out spike over the unigram (firing-rate) null
    (per session when ``train_counts`` is (S, n_units): :func:`_unigram_logp`)."""
    if len(target_ids) == 0:
        return float("nan")
    return float((logp - _unigram_logp(target_ids, train_counts, sessions)).sum() / (len(target_ids) * math.log(2)))


def order_free_bits(order: np.ndarray, logp_null: float, n_spikes: int) -> dict[str, float]:
    """The next-ID gain that is not the tokenizer's within-bin order (issue 10).

    The tokenizer sorts the spikes of one dt bin by unit index, and a model trained on those
    sequences lowers its next-ID loss by learning the sort ("after unit 40 in this bin only
    units > 40"), which says nothing about the neural state: on a dense simulated session all of
    a 600-step pretraining's 0.83 bits/spike was the sort (``bench/order_bits.py``). Scored here
    on each window's spikes as a multiset per bin, where order knowledge is worth nothing: with N
    distinct within-bin orders of the window, ``p(multiset) = sum over orders p(order)``, which
    is at least ``p(tokenizer's order)`` and, by Jensen, at least ``N exp(log p(a random order))``
    (one seeded shuffle: an estimate of that bound); the larger of the two per window. The
    firing-rate null, blind to order, gets ``log N + sum log p(unit)``.

    ``order`` (W, 3) from :func:`_collect`; ``logp_null`` the null's summed log-probability of
    the ``n_spikes`` test spikes. Returns bits per spike: ``order_free`` (a lower bound; can be
    below the tokenizer-order figure by up to ``order_info``) and ``order_info`` (``log2 N`` per
    spike: the most knowing the order can be worth)."""
    canon, shuffled, log_n = order.T
    per = lambda nats: float(nats / (n_spikes * math.log(2)))  # noqa: E731
    return {"order_free": per(np.maximum(canon, log_n + shuffled).sum() - log_n.sum() - logp_null),
            "order_info": per(log_n.sum())}


def evaluate(cfg: RunConfig, task, dm, run_dir: Path) -> dict:
    model = task.model.cpu().eval()
    n_units = model.config.n_units
    dm.setup("fit")
    dm.setup("test")
    train = _collect(model, progress(_train_windows_loader(dm), "evaluation, training windows' counts"),
                     run_model=False)
    test = _collect(model, progress(dm.loader("test"), "evaluation, test windows"),
                    keep_windows=cfg.eval.generate_windows, order_free=True)
    scored = _moving_windows(cfg, dm, test)
    few_shot = cfg.data.label_fraction < 1.0
    labelled = (_label_subset(cfg)(torch.as_tensor(train["session"]), torch.as_tensor(train["interval"])).numpy()
                if few_shot else np.ones(len(train["interval"]), dtype=bool))
    train_scored = _moving_windows(cfg, dm, train)  # with a moving rule, only moving windows' labels count
    draw = label_draw(cfg, train["session"], train["interval"], train_scored) if few_shot else None
    labelled &= train_scored
    # per session: a unit of one session never fires in another's windows (see _unigram_logp)
    n_sessions = len(dm.sessions)
    train_unit_counts = _session_unit_counts(train, n_sessions, n_units)
    results: dict[str, Any] = {"id_bits_per_spike": _id_bits_per_spike(test["logp_id"], test["target_ids"],
                                                                       train_unit_counts, test["spike_session"])}
    baselines: dict[str, dict[str, float]] = {"unigram (firing-rate) null": {"id_bits_per_spike": 0.0}}
    limitations = []
    if line := label_draw_limitation(draw, cfg.data.label_chunk_s):
        print(f"neurofm: {line}", file=sys.stderr)
        limitations.append(line)
    if test["order"] is not None and len(test["target_ids"]):
        null = _unigram_logp(test["target_ids"], train_unit_counts, test["spike_session"])
        free = order_free_bits(test["order"], float(null.sum()), len(test["target_ids"]))
        results["id_bits_per_spike_order_free"] = free["order_free"]
        results["id_order_info_bits_per_spike"] = free["order_info"]
        if line := id_bits_limitation(results["id_bits_per_spike"], _behavior_only(cfg), cfg.task.from_scratch):
            print(f"neurofm: {line}", file=sys.stderr)
            limitations.append(line)
        if results["id_bits_per_spike"] > 0 >= free["order_free"]:
            limitations.append(
                f"next-ID {results['id_bits_per_spike']:.3f} bits/spike over the firing-rate null, but "
                f"{free['order_free']:.3f} with the tokenizer's within-bin unit order taken out (it is worth up to "
                f"{free['order_info']:.3f}): the model may have learned the sort, not the neural state; pretrain "
                f"longer or with data.shuffle_within_bin=true")

    # behaviour decoding: one decode report per regression target (model, linear probe, ridge,
    # Bayes, null), every arm fitted on the same labelled training windows and scored on the
    # same test windows
    n_labelled, reports = {}, {}
    regression = {v.name for v in model.config.behavior_targets() if v.task == "regression"}
    probe = _probe_features(cfg, dm, model, test) if any(n in regression for n in test["beh_pred"]) else None
    for name, pred in test["beh_pred"].items():
        if name not in regression or name not in test["beh_true"]:
            continue
        m = test["beh_mask"][name] & scored
        mt = train["beh_mask"][name] & labelled
        n_labelled[name] = int(mt.sum())
        if m.sum() < 2 or mt.sum() < 2:
            continue
        y = test["beh_true"][name][m]
        rep = _decode_report(cfg, name, pred[m], y, test, m, train, mt, probe, scored_text=_scored_text(cfg, dm))
        reports[name] = rep
        limitations += limitation_lines(name, rep)
        if line := null_limitation(name, rep):
            print(f"neurofm: {line}", file=sys.stderr)
        if line := angle_limitation(name, _behavior_unit(dm, name)):
            limitations.append(line)
        if line := off_range_text(name, y, train["beh_true"][name][mt], _behavior_unit(dm, name),
                                  fold_name(cfg.data.split)):
            print(f"neurofm: {line}", file=sys.stderr)
            limitations.append(line)
        results[f"{name}_r2"] = rep.row("model").values["r2"]
        results[f"{name}_pearson_r"] = rep.row("model").values["pearson_r"]
        results[f"{name}_n_scored"] = int(m.sum())
        for row in rep.rows[1:]:
            baselines.setdefault(row.arm, {}).update({f"{name}_r2": row.values["r2"],
                                                      f"{name}_pearson_r": row.values["pearson_r"]})
        if few_shot:  # outside the report (its arms share one label fraction): what every label would give
            every = train["beh_mask"][name] & train_scored  # every label the scoring rule keeps (not rest)
            ridge_all = _ridge_fit_predict(train["binned"][every], train["beh_true"][name][every], test["binned"][m],
                                           cfg.data.stride or cfg.model.window.curr)
            baselines.setdefault("ridge on binned counts, every training label", {}).update(
                {f"{name}_r2": float(M.r2_score(y, ridge_all)),
                 f"{name}_pearson_r": float(np.mean(M.pearson_r(y, ridge_all, multioutput="raw_values")))})
        print(rep.to_text(), file=sys.stderr)
    if reports:
        atomic_write(run_dir / "decode_report.md", "\n\n".join(r.to_text() for r in reports.values()) + "\n")
        save_inputs(reports, run_dir / DECODE_INPUTS)  # what finetune --folds pools

    # generation: window F1 vs a mean-rate Poisson generator
    generation = None
    if cfg.eval.generate_windows > 0:

        tuning = next((v for v in regression if v in train["beh_true"]), None)  # raster rows by preferred value
        order = unit_order(train["counts"][:, :n_units], None if tuning is None else
                           np.where(train["beh_mask"][tuning][:, None], train["beh_true"][tuning], np.nan),
                           behavior_name=tuning or "behaviour")
        gen = _generation_metrics(cfg, model, test["batches"], train_unit_counts,
                                  np.bincount(train["session"], minlength=n_sessions), run_dir,
                                  raster_order=order)
        results.update(gen.metrics)
        for arm, row in gen.baselines.items():
            baselines.setdefault(arm, {}).update(row)
        generation = gen.to_dict()

    for name in test["beh_pred"]:
        if name in regression and name in test["beh_true"] and f"{name}_r2" in results:
            _decoding_plot(name, test, scored, results[f"{name}_r2"],
                           {k: row[f"{name}_r2"] for k, row in baselines.items() if f"{name}_r2" in row},
                           _behavior_unit(dm, name), run_dir)
    d = cfg.data
    tokenizer = block_size_report(cfg)
    if line := dropped_limitation(tokenizer):
        print(f"neurofm: {line}", file=sys.stderr)
        limitations.append(line)
    return {
        "name": Path(cfg.run_dir).name,
        "metrics": results,
        "baselines": baselines,
        "protocol": _protocol(cfg, dm, _with_labels(scored, test, regression), draw),
        "tokenizer": tokenizer,
        **({"start": start} if (start := getattr(task, "read_out_start", None)) else {}),
        **({"decode_report": {k: r.to_dict() for k, r in reports.items()}} if reports else {}),
        **({"generation": generation} if generation else {}),
        **({"limitations": limitations + (generation["limitations"] if generation else [])}
           if limitations or generation else {}),
        "data": {"description": "simulated recurrent spiking network (neurofm simulate spikes)" if not d.sessions
                 else "session files: " + ", ".join(Path(p).name for p in d.sessions),
                 "datasets": ["neurofm-simulated-spikes"] if not d.sessions else [Path(p).stem for p in d.sessions],
                 "n_units": n_units, "n_test_spikes": int(len(test["target_ids"])),
                 "n_train_windows": int(len(train["interval"])), "n_test_windows": int(len(test["interval"])),
                 **({"n_labelled_train_windows": n_labelled, "label_draw": draw} if few_shot else {})},
    }


def _probe_features(cfg: RunConfig, dm, model: Neuroformer, test: dict) -> dict | None:
    """Pooled features of the frozen model at ``task.pretrained`` (the linear probe's input) for
    every training and test window; ``None`` without a pretrained model (from scratch).

    Fine-tuning: the pretrained encoder before any fine-tuning (the classic linear probe,
    beside full fine-tuning). ``neurofm evaluate``: ``task.pretrained`` is the evaluated folder,
    so the probe reads that model's own features."""
    if not cfg.task.pretrained:
        return None
    # the pretrained weights also for a --from-scratch run: the probe is the same arm in both
    pretrained = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, from_scratch=False))
    # units the checkpoint never saw (a new day's) get random embedding rows: drawn from the run's
    # seed, not from whatever the run drew before, so the probe is one arm in every run (a new VR
    # day's probe read 0.409 in the pretrained run and 0.550 in the --from-scratch one)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        frozen = build_model(pretrained, dm).eval()
    train = _collect(frozen, progress(_train_windows_loader(dm), "linear probe, training windows"))
    test_f = _collect(frozen, progress(dm.loader("test"), "linear probe, test windows"))
    if len(test_f["interval"]) != len(test["interval"]) or not np.allclose(test_f["interval"], test["interval"]):
        raise RuntimeError("linear probe: the test windows came in a different order on a second pass")
    kind = "fine-tuned" if finetuned_labels(cfg.task.pretrained) is not None else "pretrained"
    return {"train": train["pooled"], "test": test_f["pooled"],
            "source": f"the {kind} model {cfg.task.pretrained}"}


def _scored_text(cfg: RunConfig, dm) -> str:
    e = cfg.eval
    if e.score_when == "moving":
        return (f"moving test windows: {_moving_speed_text(cfg, dm)} > {e.moving_threshold:.4g} "
                f"{_unit_text(_behavior_unit(dm, e.moving_behavior))}/s in every 50 ms bin")
    return "every test window that holds a label"


def _moving_speed_text(cfg: RunConfig, dm) -> str:
    """The speed the moving rule thresholds, as protocol text (:meth:`DecodingData.moving_speed`)."""
    sigma = f"sigma {cfg.eval.speed_smooth_s:g} s"
    speed = _protocol_for(cfg).speed_name
    if speed != cfg.eval.moving_behavior and f"behavior/{speed}" in dm.sessions[0].h5:
        return f"/behavior/{speed} Gaussian-smoothed ({sigma})"
    return f"speed of the {cfg.eval.moving_behavior} Gaussian-smoothed ({sigma})"


def _unit_text(unit: str) -> str:
    """A behaviour's unit attr (:meth:`Session.behavior_unit`) as protocol text: "units" when
    absent, pixels as px."""
    unit = unit or "units"
    return {"pixels": "px", "pixel": "px"}.get(unit, unit)


def _decode_report(cfg: RunConfig, name: str, pred: np.ndarray, y: np.ndarray, test: dict, m: np.ndarray,
                   train: dict, mt: np.ndarray, probe: dict | None, scored_text: str):
    """The decode report of one target: the model beside a linear probe on frozen pretrained
    features, ridge on 50 ms binned counts of the spikes the model reads, a Poisson Bayes
    decoder on those counts (1-D or 2-D targets) and the training-mean null; every baseline fitted
    on the training windows ``mt`` (the model's labelled windows), all scored on test windows
    ``m``. CIs from a block bootstrap over ``data.label_chunk_s`` blocks of the test period."""
    stride = cfg.data.stride or cfg.model.window.curr
    ytr = train["beh_true"][name][mt]
    arms, notes = {"model": pred}, {}
    if probe is not None:
        arms["linear probe"] = _ridge_fit_predict(probe["train"][mt], ytr, probe["test"][m], stride)
        notes["linear probe"] = f"ridge on frozen pooled features of {probe['source']}"
    n_units = train["counts"].shape[1] // 2  # (current, previous) counts per unit
    arms["ridge on binned counts"] = _ridge_fit_predict(train["binned"][mt], ytr, test["binned"][m], stride)
    n_bins = train["binned"].shape[1] // n_units
    notes["ridge on binned counts"] = f"{n_bins} x {RIDGE_BIN_S * 1e3:.0f} ms bins per unit"
    if ytr.reshape(len(ytr), -1).shape[1] <= 2:
        c_tr = train["binned"][mt].reshape(-1, n_units, n_bins).sum(2)
        c_te = test["binned"][m].reshape(-1, n_units, n_bins).sum(2)
        arms["Poisson Bayes"] = PoissonBayesDecoder().fit(c_tr, ytr).predict(c_te).reshape(y.shape)
        notes["Poisson Bayes"] = "place/tuning fields from the same counts"
    arms[NULL_ARM] = np.broadcast_to(ytr.mean(0), y.shape).copy()
    block_s = cfg.data.label_chunk_s
    blocks = time_blocks(test["interval"][m] + 1e7 * test["session"][m], block_s)
    return decode_report(arms, y, blocks, target=name, label_fraction=cfg.data.label_fraction, scored=scored_text,
                         block_s=block_s, notes=notes, seed=cfg.eval.seed, n_fitted=int(np.sum(mt)),
                         fold=fold_name(cfg.data.split))


def _with_labels(scored: np.ndarray, test: dict, targets) -> np.ndarray:
    """The scored test windows that hold a label of every decoded target: the windows the decode
    report scores (a tracking gap leaves a window without one)."""
    out = np.asarray(scored, dtype=bool).copy()
    for name in targets:
        if name in test["beh_mask"]:
            out &= np.asarray(test["beh_mask"][name], dtype=bool)
    return out


def _training_length(cfg: RunConfig, dm) -> str:
    """How long fine-tuning ran, as the protocol states it: the step budget and its rule when
    :func:`resolve_trainer` applied it (``task.step_budget = N > 0`` always; ``0`` unless the
    user set ``trainer.max_steps`` or ``max_epochs``), else the user's own trainer limit, named
    as such beside the budget it replaced ("" with no limit at all). ``cfg`` is the resolved
    config, whose ``trainer.max_steps`` is the budget when it applied: a user's ``max_steps``
    equal to the budget reads as the budget (the same number either way)."""
    t, tr, e = cfg.task, cfg.trainer, cfg.eval
    carrying = "labelled moving" if e.score_when == "moving" else "labelled"
    rule = (f"step budget: {BUDGET_PASSES} x ceil(n / batch size {cfg.data.batch_size}) steps within "
            f"[{BUDGET_MIN_STEPS}, {BUDGET_MAX_STEPS}], n = the {carrying} training windows, the ones that carry "
            f"the behaviour loss")
    if t.step_budget > 0:
        return f"at most {tr.max_steps} steps (task.step_budget)" if tr.max_steps > 0 else ""
    budget = step_budget_for(loss_windows(cfg, dm)[0], cfg.data.batch_size)
    if tr.max_steps == budget:
        return f"at most {tr.max_steps} steps ({rule})"
    own = [f"{v} {unit} (trainer.{key})" for v, unit, key in ((tr.max_steps, "steps", "max_steps"),
                                                              (tr.max_epochs, "epochs", "max_epochs")) if v > 0]
    if not own:
        return ""
    return (f"at most {' / '.join(own)}, the user's setting in place of the step budget of {budget} steps "
            f"({rule})")


def label_draw(cfg: RunConfig, session: np.ndarray, interval: np.ndarray, scored: np.ndarray | None = None) -> dict:
    """What ``--label-fraction`` drew on these training windows (session index, end time):
    :func:`neurofm.recipes.label_draw` with the run's fraction, chunk length and seed
    (``scored``: the training windows whose labels count, as there)."""
    return _label_draw(cfg.data.label_fraction, cfg.data.label_chunk_s, cfg.seed, session, interval, scored)


def label_draw_limitation(draw: dict | None, chunk_s: float) -> str | None:
    """A limitation line when the labelled share is under half or over twice the requested one,
    of the training windows or (when only some are scored) of the scored training windows."""
    if not draw:
        return None
    shares = [draw["share"]] + ([draw["scored_share"]] if "scored_share" in draw else [])
    if all(0.5 <= share / draw["requested"] <= 2.0 for share in shares):
        return None
    return (f"--label-fraction {draw['requested']:g} labelled "
            + (f"{draw['share']:.1%} of the training windows" if not 0.5 <= shares[0] / draw["requested"] <= 2.0
               else f"{draw['scored_share']:.1%} of the scored (moving) training windows")
            + f" ({label_draw_text(draw, chunk_s)}; the chunks are spread evenly in time, blind to movement, so "
            f"few chunks or a few long bouts give a share far from it): every arm fitted those labels; seed=N "
            f"draws other chunks, a longer training block or a smaller data.label_chunk_s brings the share closer")


def _protocol(cfg: RunConfig, dm, scored: np.ndarray | None = None, draw: dict | None = None) -> str:
    """The evaluation protocol in one line, as the numbers were produced."""
    s, w, e, d = cfg.data.split, cfg.model.window, cfg.eval, cfg.data
    names = ("train", "valid", "test")
    split = split_text(s, sum(all(n in sess.interval_names for n in names) for sess in dm.sessions), len(dm.sessions))
    text = (f"{split}; windows of {w.curr * 1e3:.0f} ms (previous {w.prev * 1e3:.0f} ms, dt {w.dt * 1e3:.0f} ms); "
            f"all metrics on the test block; baselines fitted on the training block")
    t = cfg.task
    length = _training_length(cfg, dm) if t.mode == "finetune" and t.step_budget >= 0 else ""
    if length:
        start = f"from {t.pretrained}" if t.pretrained and not t.from_scratch else "from scratch"
        text += (f"; fine-tuned {start} for {length}, backbone lr {t.lr:g}, heads "
                 f"x{t.head_lr_ratio:g}, heads started at ridge on binned counts (+ pooled state where blocked CV on "
                 f"the labelled windows says it helps; metrics.json start), the checkpoint with the best "
                 f"validation R2 evaluated (the starting state included)")
    if d.label_fraction < 1.0:
        text += (f"; behaviour labels on {d.label_fraction:.0%} of the training windows ({d.label_chunk_s:g} s "
                 f"chunks, seed {cfg.seed}"
                 + (f"; {draw_rule(d.label_fraction, d.label_chunk_s)}: "
                    f"{label_draw_text(draw, d.label_chunk_s)}" if draw else "")
                 + "), the same windows for the model and ridge")
    elif cfg.model.behavior_targets():
        text += "; behaviour labels on every training window (100%), for the model and ridge"
    if t.mode == "finetune" and (kind := _cut_to(cfg)):
        text += (f"; the model trained on the {kind} training windows only (the ones that carry the behaviour "
                 f"loss; every decode-report arm fits the same windows)")
    if cfg.task.from_scratch:
        text += f"; model trained from random init in the shape of {cfg.task.pretrained} (from scratch)"
    n = "" if scored is None else f"{int(scored.sum())} of {len(scored)} "
    if not cfg.model.behavior_targets():
        pass
    elif e.score_when != "moving":
        text += (f"; behaviour scored on {n or 'all '}test windows (all that hold a label, as on the validation "
                 f"block)")
    else:
        unit = _unit_text(_behavior_unit(dm, e.moving_behavior))
        text += (f"; behaviour scored on {n}test windows where the animal moves, as on the validation block "
                 f"(every 50 ms bin of the current window with {_moving_speed_text(cfg, dm)} "
                 f"> {e.moving_threshold:.4g} {unit}/s)")
    return text


def _ridge_fit(X: np.ndarray, Y: np.ndarray, stride: float, gap_s: float = 5.0
               ) -> tuple[Ridge, float, np.ndarray | None]:
    """Ridge on window features with the penalty chosen as DESIGN.md 8 does: 4-fold blocked CV
    over the training windows (in time order, ``gap_s`` of windows removed around each inner test
    block), maximising pooled R2. A single holdout block (the last 20% of the windows) picks
    badly when that block differs from the rest (on linear-track it chose the largest penalty
    and shrank the predictions to the mean). Too few windows for 4 folds and their gaps:
    :class:`Ridge`'s own blocked CV (5 folds, fewer with few windows, no gap).
    Returns the fitted :class:`Ridge` (targets as (n, D)), its blocked-CV R2 and its
    out-of-fold predictions, (n, D) (NaN and None for that fallback). The decode
    report's ridge arms and the fine-tuning start (:func:`init_count_heads`) are both this fit."""
    rfp = RidgeFitPredict("blocked_cv", gap=int(math.ceil(gap_s / stride)))
    model = rfp.fit(X, Y)  # too few windows for the folds and gaps: Ridge's own folds without gap, cv_r2_ NaN
    return model, rfp.cv_r2_, rfp.cv_pred_


def _ridge_fit_predict(X: np.ndarray, Y: np.ndarray, X_test: np.ndarray, stride: float, gap_s: float = 5.0):
    """:func:`_ridge_fit`'s prediction for ``X_test``, (n_test, D)."""
    return _ridge_fit(X, Y, stride, gap_s)[0].predict(X_test)


GENERATOR_BASELINE = "mean-rate Poisson generator"
MATCHED_BASELINE = "mean-rate units, as many per window as generated"
#: The reference that names everything a rate-based generator could: every unit that fired in
#: the training block, in every window (a unit silent in training is one no generator trained
#: on those spikes could name; counting it would only lower this arm's precision).
EVERY_UNIT = "every unit that fired in training, in every window"
#: Block length (s) of the generation CI's block bootstrap. Two generators' per-window F1
#: differences on the same recorded windows barely correlate from one window to the next
#: (lag-1 autocorrelation 0.06 on the demo), and the default 256 windows (12.8 s at 50 ms)
#: would make only one or two blocks of the decode report's 10 s.
GENERATION_BLOCK_S = 1.0
#: Fewer blocks than this give no CI (a bootstrap over one or two blocks says nothing).
MIN_CI_BLOCKS = 5


@dataclass
class GenerationScore:
    """Window F1 of generated spikes beside the generators it must beat, on the same windows.

    ``metrics``: the model's window F1 / precision / recall and what its windows hold (spikes,
    distinct units, repeat fraction); ``baselines``: a row per comparison arm; ``verdicts``:
    one plain line per arm (beats / matches within the CI / LOSES), from a paired block
    bootstrap over ``block_s`` blocks of the test period.
    """

    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    verdicts: list[str]
    n_windows: int
    n_blocks: int
    block_s: float
    n_draws: int = 1

    @property
    def beats_poisson(self) -> bool:
        return self.verdicts[0].startswith("generated spikes beat")

    def to_dict(self) -> dict:
        loses = [v for v in self.verdicts if "LOSE" in v]
        return {"verdicts": self.verdicts, "beats_mean_rate_poisson_generator": self.beats_poisson,
                "n_windows": self.n_windows, "n_draws": self.n_draws, "n_blocks": self.n_blocks,
                "block_s": self.block_s,
                "limitations": loses}


def _window_stats(sets: list[np.ndarray]) -> dict[str, float]:
    """Spikes and distinct units per window, and the share of spikes whose unit already fired
    earlier in the same window (a unit repeated within a window adds nothing to the ID set)."""
    n = np.array([len(x) for x in sets], dtype=np.float64)
    distinct = np.array([len(np.unique(x)) for x in sets], dtype=np.float64)
    return {"spikes_per_window": float(n.mean()) if len(n) else float("nan"),
            "units_per_window": float(distinct.mean()) if len(n) else float("nan"),
            "repeat_fraction": float((n - distinct).sum() / n.sum()) if n.sum() else 0.0}


def _paired_f1_diff(f_model: np.ndarray, f_other: np.ndarray, blocks: np.ndarray, n_boot: int = 1000,
                    seed: int = 0) -> tuple[float, float, float]:
    """Macro F1 difference (model minus other) with a 95% paired block-bootstrap interval;
    per-window F1 arrays with NaN for unscored windows (the same windows for both)."""
    ok = np.isfinite(f_model) & np.isfinite(f_other)
    d = f_model[ok] - f_other[ok]
    counts, inv = block_bootstrap_counts(blocks[ok], n_boot, seed)
    k = counts.shape[1]
    sum_d, n_w = np.bincount(inv, weights=d, minlength=k), np.bincount(inv, minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ sum_d) / (counts @ n_w)
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if k else (float("nan"), float("nan"))
    return float(d.mean()) if len(d) else float("nan"), float(lo), float(hi)


def _f1_verdict(arm: str, f: float, other: float, diff: tuple[float, float, float], n_blocks: int) -> str:
    d, lo, hi = diff
    arm = f"naming {arm}" if arm == EVERY_UNIT else f"the {arm}"
    if not np.isfinite(d):
        return f"generated spikes vs {arm}: window F1 not comparable (no test window holds a recorded spike)"
    if n_blocks < MIN_CI_BLOCKS:
        return (f"generated spikes vs {arm}: window F1 {f:.3f} vs {other:.3f} (difference {d:+.3f}; no CI: "
                f"the scored windows span only {n_blocks} block(s) of {GENERATION_BLOCK_S:g} s, raise "
                f"eval.generate_windows)")
    nums = f"window F1 {f:.3f} vs {other:.3f} (difference {d:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}])"
    if hi < 0:
        return f"generated spikes LOSE to {arm}: {nums}"
    if lo > 0:
        return f"generated spikes beat {arm}: {nums}"
    return f"generated spikes {'match' if d >= 0 else 'are below but within the CI of'} {arm}: {nums}"


def _generation_metrics(cfg, model, batches, train_unit_counts, n_train_windows, run_dir,
                        raster_order=None) -> GenerationScore:
    """Generate the spikes of the first ``eval.generate_windows`` test windows (teacher-forced
    past) and score their ID sets against the recorded ones (window F1), beside, on the same
    windows: a mean-rate Poisson generator (each unit Poisson with its training rate per
    window); the same rate-weighted draw held to the generated windows' number of distinct
    units (so the comparison of *which* units fire is not a comparison of how many: set F1
    rewards naming more units, and the mean-rate generator names as many as the training
    block's rates give, however quiet the test block); and every unit that fired in training, in
    every window (what naming everything a training-rate generator can name scores). Every random arm is drawn ``eval.generate_draws`` times (the
    model with seeds ``eval.seed + k``); F1 and the window statistics are means over the draws,
    and the per-window F1 averaged over draws feeds a paired block bootstrap over
    :data:`GENERATION_BLOCK_S` blocks of the test period.

    ``train_unit_counts`` (n_units,) with ``n_train_windows`` an int: one rate per unit for
    every window; (S, n_units) with (S,) windows: each window's arms use its own session's
    training rates and units (pooled over sessions, the arms named units of the other sessions,
    which never fire there: 130 units per window for the "every unit" arm on two sessions of 72
    and 58 units, and a mean-rate generator diluted by the other session's units)."""
    n_units = model.config.n_units
    need = cfg.eval.generate_windows
    if cfg.eval.generate_draws < 1:
        raise ConfigError(f"eval.generate_draws must be >= 1, got {cfg.eval.generate_draws}")
    draws = int(cfg.eval.generate_draws)
    true_sets, gen_all, rng = [], [], np.random.default_rng(cfg.eval.seed)
    gen_draws: list[list[np.ndarray]] = [[] for _ in range(draws)]
    # mean rate per unit per window from the training spikes (per session when given so)
    counts = np.atleast_2d(np.asarray(train_unit_counts, dtype=np.float64))
    n_win = np.broadcast_to(np.asarray(n_train_windows, dtype=np.float64), (len(counts),))
    rates = counts / np.maximum(1.0, n_win)[:, None]
    intervals, sessions = [], []
    for batch in batches:
        if len(true_sets) >= need:
            break
        for k in range(draws):  # draw k of every window: seed eval.seed + k
            gen = model.generate(batch, mode="teacher_forced", top_p_id=cfg.eval.top_p, top_p_dt=cfg.eval.top_p,
                                 seed=cfg.eval.seed + k)
            gen_draws[k].extend(gen.unit_index)
            if k == 0:
                gen_all.append(gen)  # the raster shows the first draw
        intervals.append(np.asarray(gen.interval, dtype=np.float64))
        sessions.append(np.asarray(gen.session, dtype=np.int64))
        for w in range(len(gen)):
            ids = batch["target_id"][w]
            true_sets.append((ids[ids >= N_SPECIAL] - N_SPECIAL).numpy())
    row = np.concatenate(sessions)[:len(true_sets)] if len(rates) > 1 else np.zeros(len(true_sets), dtype=np.int64)
    base_draws = [[np.repeat(np.arange(n_units), rng.poisson(rates[r])) for r in row] for _ in range(draws)]
    p_units = [r / r.sum() if r.sum() > 0 else np.full(n_units, 1 / n_units) for r in rates]
    matched_draws = [[rng.choice(n_units, size=min(len(np.unique(g)), int((p_units[r] > 0).sum())), replace=False,
                                 p=p_units[r]) for g, r in zip(sets, row)] for sets in gen_draws]
    every_draws = [[np.flatnonzero(counts[r] > 0) for r in row]]
    arms = {"model": gen_draws, GENERATOR_BASELINE: base_draws, MATCHED_BASELINE: matched_draws,
            EVERY_UNIT: every_draws}
    scores = {}
    for arm, arm_draws in arms.items():
        per_draw = [M.window_f1(true_sets, sets, per_window=True) for sets in arm_draws]
        scores[arm] = {k: float(np.mean([d[k] for d in per_draw])) for k in ("f1", "precision", "recall")}
        scores[arm]["n_windows"] = per_draw[0]["n_windows"]
        scores[arm]["f1_per_window"] = np.mean([d["f1_per_window"] for d in per_draw], axis=0)
        scores[arm]["stats"] = {k: float(np.mean([_window_stats(sets)[k] for sets in arm_draws]))
                                for k in ("spikes_per_window", "units_per_window", "repeat_fraction")}
    results = {f"window_{k}": scores["model"][k] for k in ("f1", "precision", "recall")}
    results.update({f"generated_{k}": v for k, v in scores["model"]["stats"].items()})
    results.update({f"recorded_{k}": v for k, v in _window_stats(true_sets).items()})
    baselines: dict[str, dict[str, float]] = {}
    for arm in (GENERATOR_BASELINE, MATCHED_BASELINE, EVERY_UNIT):
        baselines[arm] = {f"window_{k}": scores[arm][k] for k in ("f1", "precision", "recall")}
        baselines[arm].update({f"generated_{k}": v for k, v in scores[arm]["stats"].items()})
    block_s = GENERATION_BLOCK_S
    interval, session = np.concatenate(intervals)[:len(true_sets)], np.concatenate(sessions)[:len(true_sets)]
    blocks = time_blocks(interval + 1e7 * session, block_s)
    n_blocks = int(len(np.unique(blocks)))
    verdicts = [_f1_verdict(arm, scores["model"]["f1"], scores[arm]["f1"],
                            _paired_f1_diff(scores["model"]["f1_per_window"], scores[arm]["f1_per_window"], blocks,
                                            seed=cfg.eval.seed), n_blocks)
                for arm in (GENERATOR_BASELINE, MATCHED_BASELINE, EVERY_UNIT)]  # a LOSE line is a limitation
    for line in verdicts:
        print(line, file=sys.stderr)
    _raster_plot(cfg, gen_all, batches, run_dir, n_units, order=raster_order,
                 unit_names=[u.split("/", 1)[-1] for u in model.config.units] or None)
    return GenerationScore(results, baselines, verdicts, n_windows=int(scores["model"]["n_windows"]),
                           n_blocks=n_blocks, block_s=float(block_s), n_draws=draws)


def _raster_plot(cfg, gens, batches, run_dir: Path, n_units: int, order=None, unit_names=None) -> None:
    intervals = np.concatenate([np.asarray(g.interval) for g in gens])
    sessions = np.concatenate([np.asarray(g.session) for g in gens])
    first = sessions == sessions[0]
    t_end = intervals[first].min() + cfg.eval.raster_seconds
    keep = first & (intervals <= t_end)
    gt, gu, rt, ru = [], [], [], []
    w_all = 0
    for g, batch in zip(gens, batches):
        for w in range(len(g)):
            if keep[w_all]:
                gt.append(g.times[w])
                gu.append(g.unit_index[w])
                ids = batch["target_id"][w]
                dts = batch["target_dt"][w]
                real = ids >= N_SPECIAL
                start = float(batch["interval"][w]) - cfg.model.window.curr
                rt.append(start + dts[real].numpy() * cfg.model.window.dt)
                ru.append((ids[real] - N_SPECIAL).numpy())
            w_all += 1
    if not gt:
        return
    t0 = float(intervals[keep].min() - cfg.model.window.curr)
    t1 = float(intervals[keep].max())
    plots.raster_compare(np.concatenate(rt), np.concatenate(ru), np.concatenate(gt), np.concatenate(gu), t0, t1,
                         None if order is None else order[0], n_units=n_units,
                         unit_labels=unit_names if unit_names and len(unit_names) == n_units else None,
                         order_label=None if order is None else order[1],
                         title="Held-out windows: recorded vs generated (teacher-forced past)",
                         path=run_dir / "plots" / "raster_recorded_vs_generated.png")


def _behavior_unit(dm, name: str) -> str:
    """The ``unit`` attr of ``/behavior/<name>`` in the first session ("" when absent)."""
    return dm.sessions[0].behavior_unit(name)


def _decoding_plot(name: str, test: dict, scored: np.ndarray, r2: float, baseline_r2: dict, unit: str,
                   run_dir: Path):
    """True vs decoded ``name`` over the first session's labelled test windows, against time
    (each window's end, s); windows left out of scoring shaded; R2 and baselines' R2 on top."""
    true, pred, mask = test["beh_true"][name], test["beh_pred"][name], test["beh_mask"][name]
    keep = mask & (test["session"] == test["session"][0])
    t = test["interval"][keep]
    order = np.argsort(t, kind="stable")
    keep_idx = np.flatnonzero(keep)[order]
    if len(keep_idx) < 2:
        return None
    n_scored = int((scored & mask).sum())
    # an R2 that is undefined on these windows (constant target) is said in the title, not drawn
    finite = {k: v for k, v in baseline_r2.items() if v is not None and np.isfinite(v)}
    defined = r2 is not None and bool(np.isfinite(r2))
    title = f"Decoded {name}, held-out test block ({n_scored:,} scored windows)"
    if not defined or len(finite) < len(baseline_r2):
        title += "; R² undefined where not shown (target constant on the scored windows)"
    return plots.decoding_trace(t[order], true[keep_idx], pred[keep_idx], moving_mask=scored[keep_idx],
                         r2=r2 if defined else None,
                         names=[name] if true.ndim == 1 or true.shape[1] == 1 else None, unit=unit,
                         baseline_r2=finite, title=title,
                         path=run_dir / "plots" / f"decoding_{name}.png")
