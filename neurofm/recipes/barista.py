"""BaRISTA recipe: iEEG session files -> masked-latent pretraining / fine-tuning -> metrics.

Pretraining runs are evaluated by a **linear probe** on the held-out block: event-locked
segments of the training block are encoded by the frozen encoder, mean-pooled over tokens, and
a ridge classifier is fitted on them; its ROC-AUC on the test block's segments is reported
beside the same probe on a randomly initialised encoder (what pretraining adds) and ridge on
band power (DESIGN.md 8), each with a 95% CI from blocks of the test period; when the probe
does not beat the random-init encoder, the card's limitations say so in one line.

Classification and regression fine-tunes write the **decode report** (``metrics.json``
``report``, and ``decode_report.md``; :func:`neurofm.report.decode_report`): the fine-tuned model, a linear
probe on the frozen encoder the run started from, band power (logistic and ridge for
classification, ridge for regression) and a null, all fitted on the same training segments
and scored on the same test segments, with block-bootstrap CIs and one plain line saying
whether the model beats band power; plus ``plots/roc.png`` or ``plots/decoded_<target>.png``.
Regression targets are standardised with the training block's mean and std (kept in the
checkpoint and the exported model, so predictions come back in the recording's units). With
one channel layout the head also reads each channel's log band power (``task.band_power``) and
evoked waveform (its input time course in :data:`WAVEFORM_BINS` bins, ``task.waveform``) and
starts at the report's band-power fit, the waveform and then the token mean joining only on a
blocked-CV gain above two paired SE over the start so far (:func:`init_probe_head`; ``start`` in
metrics.json), so the model cannot lose to band power except by noise.
Reconstruction fine-tunes report R2 on the test block.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurofm.config import ConfigError, from_dict, to_dict
from neurofm.tasks.optim import BARISTA_FINETUNE_KNOBS, BARISTA_PRETRAIN_KNOBS
from neurofm.tasks.trainer import TrainerConfig
from neurofm.models.barista import WAVEFORM_BINS, BaristaConfig, BaristaEncoder, TokenWeightingHead, evoked_waveform
from neurofm.progress import progress
from neurofm.recipes import (block_split, draw_rule, ensure_sessions, label_draw, label_draw_text,
                             quiet_preparation, session_paths, split_text, time_batches, time_pretraining,
                             validation_cost)
from neurofm.recipes import finetuned_labels as _finetuned_labels
from neurofm import plots
from neurofm.atlas import SpatialVocab, coordinate_spaces, find_atlas_column, is_unknown_label
from neurofm.atomic import atomic_write
from neurofm.baselines import BANDS, PENALTY_FOLDS, BandPowerLogistic, BandPowerRidge, Logistic, Ridge, auroc_or_mse
from neurofm.evaluation import blocked_oof
from neurofm.data.datasets import BACKGROUND_LABEL, IEEGSegmentDataset
from neurofm.data.segmenter import IEEGSegmenter, Preprocessing, recording_mains
from neurofm.data.session import Session, event_label
from neurofm.data.splits import FewShotSplit, LabelDraw, labelled_windows
from neurofm.data.synthetic import simulate_ieeg
from neurofm.evaluation_ieeg import block_span_s, test_period_blocks
from neurofm.hub import load_pretrained, load_state_strict, pretrained_config
from neurofm.metrics import auroc, pearson_r, r2_score, roc_curve
from neurofm.report import (DECODE_INPUTS, FEW_CI_BLOCKS, START_SE, decode_report, fold_name, null_limitation,
                            save_inputs, start_gain)

MONITOR = ("val/loss", "min")


@dataclass
class SimulateIEEGConfig:
    """The built-in demo session (written once, then reused)."""

    path: str = "data/demo_ieeg.h5"
    n_channels: int = 32
    duration: float = 300.0
    sampling_rate: float = 256.0
    n_regions: int = 8
    seed: int = 0


@dataclass
class IEEGSplitConfig:
    """As the spike side's ``SplitConfig``: fractions, or fold ``fold`` of ``folds``."""

    train: float = 0.7
    valid: float = 0.1
    test: float = 0.2
    gap: float = 2.0
    folds: int = 0  # >= 2: blocked K-fold cross-validation (test = the fold's 1/folds, valid the next `valid`)
    fold: int = 1  # which fold, 1..folds


@dataclass
class IEEGDataConfig:
    sessions: list[str] = field(default_factory=list)  # empty: the simulated demo
    simulate: SimulateIEEGConfig = field(default_factory=SimulateIEEGConfig)
    # 0 / None below: a pretrained model's own setting (task.pretrained), else the default named
    segment_s: float = 0.0  # 0: the model's n_patches x patch_len at its rate; pretraining 3 s
    n_patches: int = 0  # 0: the model's; pretraining 12
    sampling_rate: float = 0.0  # resample to this rate first (0: the model's rate; pretraining the file's)
    # notch at 50/60 Hz + harmonics (0 = off); None: the recordings' own mains (recording_mains), and when
    # fine-tuning the model's notch (moved to the recordings' mains when they are on the other one)
    line_noise: float | None = None
    laplacian: bool | None = None  # same-shaft re-reference (None: the model's, pretraining off)
    drop_non_grey: bool | None = None  # drop white matter / ventricle contacts (None: the model's, pretraining off)
    stride_s: float = 0.0  # between pretraining segments (0 = segment_s)
    events: str = ""  # /events/<name> for classification (and the pretraining probe)
    # classification (and the pretraining probe): the labels of data.events that are the classes,
    # in this order; events with other labels are left out ([] = every label; one label: against
    # '(no event)' segments)
    labels: list[str] = field(default_factory=list)
    target: str = ""  # /behavior/<name> for regression
    # fine-tuning with few labels (--label-fraction): only the training segments whose end falls in a
    # drawn chunk of label_chunk_s seconds are labelled (neurofm.data.splits.labelled_windows, the
    # spike side's stratified draw); the model, its start and every baseline fit those segments only
    label_fraction: float = 1.0
    label_chunk_s: float = 10.0
    batch_size: int = 8
    num_workers: int = 0
    streaming: bool = False
    split: IEEGSplitConfig = field(default_factory=IEEGSplitConfig)


@dataclass
class BaristaTaskConfig:
    mode: str = "pretrain"  # pretrain | finetune
    finetune_task: str = "classification"  # classification | regression | reconstruction
    pretrained: str = ""  # encoder folder to start from ("" with mode=finetune: random init)
    from_scratch: bool = False  # fine-tune: the pretrained model's shape and vocabulary, random weights
    head: str = "pooled"  # pooled | token_weighting (one fixed layout)
    # classify / regress: the head also reads a linear map of each channel's log band power (the
    # decode report's band-power features; one fixed layout only) and starts at the band-power fit
    band_power: bool = True
    # with the band-power read-out: the head also reads a linear map of each channel's evoked
    # waveform (the input's time course in WAVEFORM_BINS bins, the report's waveform features) and
    # starts with it when blocked CV on the training segments says it gains (init_probe_head)
    waveform: bool = True
    lr: float = BARISTA_PRETRAIN_KNOBS["lr"]  # pretraining
    weight_decay: float = BARISTA_PRETRAIN_KNOBS["weight_decay"]
    warmup_epochs: int = BARISTA_PRETRAIN_KNOBS["warmup_epochs"]
    ema_epochs: int = BARISTA_PRETRAIN_KNOBS["ema_epochs"]
    lr_backbone: float = BARISTA_FINETUNE_KNOBS["lr_backbone"]  # fine-tuning
    lr_head: float = BARISTA_FINETUNE_KNOBS["lr_head"]
    freeze_cnn: bool = BARISTA_FINETUNE_KNOBS["freeze_cnn"]


@dataclass
class BaristaEvalConfig:
    probe_events: str = ""  # events for the pretraining linear probe ("" = data.events; none = skip)
    probe_segment_s: float = 0.0  # 0 = data.segment_s (the encoder reads segments of that length only)


@dataclass
class RunConfig:
    family: str = "barista"
    run_dir: str = "runs/barista-demo"
    seed: int = 0
    resume: str = "auto"
    data: IEEGDataConfig = field(default_factory=IEEGDataConfig)
    model: BaristaConfig = field(default_factory=BaristaConfig)
    task: BaristaTaskConfig = field(default_factory=BaristaTaskConfig)
    eval: BaristaEvalConfig = field(default_factory=BaristaEvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# -- data ---------------------------------------------------------------------------------------


#: Pretraining defaults of the settings a pretrained model fixes for fine-tuning (DESIGN.md 4).
PRETRAIN_SEGMENT_S, PRETRAIN_N_PATCHES = 3.0, 12


def prepare(cfg: RunConfig) -> RunConfig:
    """Simulate the demo once; size the model's patches to the data (pretraining) or take a
    pretrained model's shape and preprocessing (fine-tuning, evaluation); check the settings.

    A pretrained folder fixes the sampling rate, the patch length and, unless the config says
    otherwise, the segment length, the number of patches and the preprocessing (notch,
    re-reference, channel selection): a recording at another rate is resampled to the model's.
    Each setting taken from the model, and each resampling, is one log line.
    """
    sim = cfg.data.simulate

    def simulate():
        simulate_ieeg(sim.path, n_channels=sim.n_channels, duration=sim.duration, sampling_rate=sim.sampling_rate,
                      n_regions=sim.n_regions, seed=sim.seed)

    ensure_sessions(cfg.data, convert_hint="neurofm convert ieeg IN OUT.h5 --electrodes electrodes.tsv",
                    simulate=simulate, what=f"iEEG session ({sim.n_channels} channels, {sim.duration:.0f} s)")
    mains = _sessions_mains(cfg)
    cfg = _from_pretrained(cfg, mains) if cfg.task.pretrained else _for_pretraining(cfg, mains)
    _warn_mains_not_notched(cfg, mains)
    _check_probe_length(cfg)
    return cfg


def _session_rates(cfg: RunConfig) -> dict[str, float]:
    rates = {}
    for path in session_paths(cfg.data):
        with Session(path) as s:
            if s.sampling_rate is None:
                raise ConfigError(f"data.sessions: {path} has no /continuous data (it holds {s.kinds}); BaRISTA reads "
                                  f"iEEG: convert a recording with `neurofm convert ieeg`")
            rates[path] = float(s.sampling_rate)
    return rates


def _sessions_mains(cfg: RunConfig) -> dict[str, tuple[float, str]]:
    """Each session's mains frequency and its source (:func:`~neurofm.data.segmenter.recording_mains`)."""
    out = {}
    for path in session_paths(cfg.data):
        with Session(path) as s:
            out[path] = recording_mains(s)
    return out


def _mains_notch(mains: dict[str, tuple[float, str]]) -> tuple[float, str]:
    """The one notch frequency the sessions' mains call for, and why (``(0.0, "")``: none found).
    Sessions on different mains (a 50 Hz and a 60 Hz lab) are refused: the notch is one setting
    of the model, so the run must be told which."""
    known = {p: (f, src) for p, (f, src) in mains.items() if f}
    if len({f for f, _ in known.values()}) > 1:
        raise ConfigError("data.line_noise: the sessions are on different mains ("
                          + "; ".join(f"{Path(p).name} {f:g} Hz ({src})" for p, (f, src) in known.items())
                          + "); set data.line_noise to the frequency to notch (harmonics too), or 0 for none")
    if not known:
        return 0.0, ""
    path, (line, src) = next(iter(known.items()))
    return line, f"the recordings' mains ({Path(path).name}: {src})"


def _for_pretraining(cfg: RunConfig, mains: dict[str, tuple[float, str]]) -> RunConfig:
    d = cfg.data
    if d.line_noise is None:  # unset: the recordings' own mains
        line, why = _mains_notch(mains)
        logging.getLogger("neurofm").info(f"neurofm: data.line_noise = {line:g} Hz, {why}" if line else
                                          "neurofm: data.line_noise off: no session records its mains frequency "
                                          "and none shows a 50 or 60 Hz peak")
        d = dataclasses.replace(d, line_noise=line)
    rates = _session_rates(cfg)
    if not d.sampling_rate and len(set(rates.values())) > 1:
        raise ConfigError(f"data.sampling_rate: the sessions are recorded at different rates "
                          f"({', '.join(f'{Path(p).name} {r:g} Hz' for p, r in rates.items())}); set data.sampling_rate "
                          f"to the one rate the model should learn (they are resampled to it)")
    rate = d.sampling_rate or next(iter(rates.values()))
    segment_s, n_patches = d.segment_s or PRETRAIN_SEGMENT_S, d.n_patches or PRETRAIN_N_PATCHES
    try:  # the segmenter's own rule (a rate a header rounded, 2048.001 Hz, still gives 2048 samples)
        patch = IEEGSegmenter(segment_s, n_patches).plan(rate).patch_len
    except ValueError as e:
        raise ConfigError(f"data.segment_s: {str(e).split('; ')[0]} (data.n_patches = {n_patches}; the recording's "
                          f"rate is {rate:.10g} Hz); change data.segment_s or data.n_patches, or resample with "
                          f"data.sampling_rate") from None
    prep = Preprocessing(line_noise=float(d.line_noise or 0.0), laplacian=bool(d.laplacian),
                         drop_non_grey=bool(d.drop_non_grey))
    _check_resampling(rates, d.sampling_rate or None)
    data = dataclasses.replace(d, segment_s=float(segment_s), n_patches=int(n_patches), line_noise=prep.line_noise,
                               laplacian=prep.laplacian, drop_non_grey=prep.drop_non_grey)
    model = dataclasses.replace(cfg.model, patch_len=int(patch), n_patches=int(n_patches),
                                sampling_rate=float(rate), preprocessing=to_dict(prep))
    return dataclasses.replace(cfg, data=data, model=model)


def _check_resampling(rates: dict[str, float], target: float | None, why: str = "data.sampling_rate") -> None:
    """Every session can be resampled to ``target`` (a rational ratio); one log line per session that is."""
    if not target:
        return
    for path, rate in rates.items():
        if rate == target:
            continue
        try:
            IEEGSegmenter(segment_samples=1, n_patches=1, sampling_rate=target).plan(rate)
        except ValueError as e:
            raise ConfigError(f"{why}: {path} is recorded at {rate:g} Hz and cannot be resampled to {target:g} Hz "
                              f"({e})") from None
        logging.getLogger("neurofm").info(f"neurofm: {Path(path).name}: resampling {rate:g} Hz -> {target:g} Hz "
                                          f"({why})")
        if rate < target:
            warnings.warn(f"{path}: recorded at {rate:g} Hz, upsampled to {target:g} Hz ({why}): it holds nothing "
                          f"between {rate / 2:g} and {target / 2:g} Hz, which the model's patches were made to "
                          f"read; its features (and band power up there) are of a narrower band than it learned "
                          f"from", stacklevel=3)


# what the weights were trained on, always the checkpoint's (_from_pretrained fits the data to them)
_TRAINED_ON = ("sampling_rate", "n_patches", "spatial_vocab", "preprocessing")


def _pretrained_model_config(mine: BaristaConfig, ckpt: BaristaConfig, folder: str) -> BaristaConfig:
    """The run's model config on a checkpoint: the shape (:attr:`BaristaConfig.SHAPE_FIELDS`)
    and what the weights were trained on (``_TRAINED_ON``) are the checkpoint's, and a run
    that sets a shape field to another value is an error naming it; every other field
    (dropout, masking, kernels, memory switches) is the run's where its config sets one (differs
    from the default), else the checkpoint's, so numerics the weights were trained with
    (``rope_theta``, ``norm_eps``) carry over unless the user changes them."""
    default, changes = BaristaConfig(), {}
    for f in dataclasses.fields(BaristaConfig):
        value = getattr(mine, f.name)
        if f.name in BaristaConfig.SHAPE_FIELDS:
            if value != getattr(default, f.name) and value != getattr(ckpt, f.name):
                raise ConfigError(f"model.{f.name}: this run sets {value}, but the pretrained model {folder} has "
                                  f"{getattr(ckpt, f.name)}. It shapes the weights, so fine-tuning takes it from the "
                                  f"checkpoint: drop the setting (or pretrain a model with it)")
        elif f.name not in _TRAINED_ON and value != getattr(default, f.name):
            changes[f.name] = value
    return dataclasses.replace(ckpt, **changes)


def _from_pretrained(cfg: RunConfig, mains: dict[str, tuple[float, str]]) -> RunConfig:
    """Take the pretrained folder's model config and apply its preprocessing to the data config
    (the notch at the recordings' own mains when the model notched another: ``mains``, per session)."""
    log = logging.getLogger("neurofm")
    folder = cfg.task.pretrained
    meta = pretrained_config(folder)
    where = f"{folder}/config.json"
    enc = meta["config"].get("encoder", meta["config"])
    model = _pretrained_model_config(cfg.model, from_dict(BaristaConfig, enc, where=where), folder)
    d = cfg.data
    made_for = meta["config"].get("task") if meta.get("model_type") == "BaristaFinetuned" else None
    if made_for and made_for != cfg.task.finetune_task:
        raise ConfigError(f"task.finetune_task: {folder} is a {made_for} model, not {cfg.task.finetune_task}; "
                          f"evaluate it with --task {ACTIONS_OF_TASK.get(made_for, made_for)}")

    def note(text: str) -> None:
        log.info(f"neurofm: {text} (from the pretrained model {folder})")

    # -- sampling rate: the model's patches are patch_len samples AT ITS RATE --------------------
    rates = _session_rates(cfg)
    rate = model.sampling_rate
    if d.sampling_rate and d.sampling_rate != rate:
        raise ConfigError(f"data.sampling_rate: {d.sampling_rate:g} Hz, but the pretrained model ({where}) was "
                          f"trained at {rate:g} Hz: its patches are {model.patch_len} samples = "
                          f"{model.patch_len / rate * 1e3:g} ms at that rate. Leave data.sampling_rate at 0 to resample "
                          f"the recordings to {rate:g} Hz")
    _check_resampling(rates, rate, why=f"data.sampling_rate: the model's {rate:g} Hz")

    # -- segment length and patches: n_patches x patch_len samples at the model's rate ------------
    patch_s = model.patch_len / rate
    n = d.n_patches
    if d.segment_s and not n:
        n_real = d.segment_s / patch_s
        n = int(round(n_real))
        if abs(n_real - n) > 1e-6 or n < 1:
            raise ConfigError(f"data.segment_s: {d.segment_s:g} s is {n_real:.4g} patches of the pretrained model "
                              f"({model.patch_len} samples = {patch_s:g} s at {rate:g} Hz); use a whole number of "
                              f"patches (e.g. {max(n, 1) * patch_s:g} s), or leave data.segment_s at 0 for the model's "
                              f"{model.n_patches * patch_s:g} s")
    n = n or model.n_patches
    segment_s = n * patch_s
    if d.segment_s and abs(d.segment_s - segment_s) > 1e-9 * max(segment_s, 1.0):
        raise ConfigError(f"data.segment_s: {d.segment_s:g} s, but data.n_patches = {n} patches of "
                          f"{model.patch_len} samples at {rate:g} Hz (the pretrained model's) make {segment_s:g} s; "
                          f"give one of the two (or neither, for the model's {model.n_patches * patch_s:g} s)")
    if n != model.n_patches:
        if meta.get("model_type") == "BaristaFinetuned" and meta["config"].get("head") == "token_weighting":
            raise ConfigError(f"data.n_patches: {n}, but the fine-tuned model ({where}) has a token-weighting head "
                              f"for {model.n_patches} patches; leave data.segment_s and data.n_patches at 0")
        note(f"segments of {n} patches ({segment_s:g} s) instead of the model's {model.n_patches} (data.n_patches)")
    else:
        note(f"segments of {n} x {model.patch_len} samples at {rate:g} Hz = {segment_s:g} s")

    # -- preprocessing: the model's, unless the config says otherwise -----------------------------
    if model.preprocessing is None:
        warnings.warn(f"{where}: the folder does not record its preprocessing (written by an older neurofm); "
                      f"data.line_noise, data.laplacian and data.drop_non_grey are as this run's config says "
                      f"(unset = off): set them as the model was pretrained", stacklevel=3)
        given = Preprocessing()
    else:
        given = from_dict(Preprocessing, model.preprocessing, where=f"{where}: preprocessing")
    prep = dataclasses.replace(given)
    for key, label in (("line_noise", "notch frequency (Hz, harmonics too; 0 = off)"),
                       ("laplacian", "Laplacian re-reference"),
                       ("drop_non_grey", "white matter / ventricle contacts dropped")):
        mine = getattr(d, key)
        theirs = getattr(given, key)
        if key == "line_noise" and mine is None and theirs:
            line, why = _mains_notch(mains)
            if line and line % theirs:  # the notch removes each recording's own mains, wherever it was trained
                log.info(f"neurofm: data.line_noise = {line:g} Hz: {why}; the pretrained model {folder} notched its "
                         f"recordings' {theirs:g} Hz")
                prep.line_noise = float(line)
                continue
        if mine is None:
            if model.preprocessing is not None and theirs:
                shown = theirs if isinstance(theirs, bool) else f"{theirs:g}"
                note(f"data.{key} = {shown}: {label}, as in pretraining")
            continue
        if mine != theirs and model.preprocessing is not None:
            log.warning(f"neurofm: data.{key} = {mine} overrides the pretrained model's {theirs} ({label}); "
                        f"the model never saw data prepared this way")
        setattr(prep, key, type(theirs)(mine))
    data = dataclasses.replace(d, sampling_rate=float(rate), segment_s=float(segment_s), n_patches=int(n),
                               line_noise=float(prep.line_noise), laplacian=bool(prep.laplacian),
                               drop_non_grey=bool(prep.drop_non_grey))
    model = dataclasses.replace(model, n_patches=int(n), preprocessing=to_dict(prep))
    return dataclasses.replace(cfg, data=data, model=model)


def preflight(cfg: RunConfig, *, training: bool = True) -> None:
    """Check, before the first training step, what the run will need after it: the events or
    behaviour it scores in every session, and enough segments in each split for the metric
    that checkpointing and early stopping watch (and the test metric). Errors name the setting
    and the fix; ``training=False`` (``neurofm evaluate``) checks the test split only.
    """
    d, t = cfg.data, cfg.task
    finetune = t.mode == "finetune"
    kind = t.finetune_task if finetune else "pretrain"
    probe = "" if finetune else (cfg.eval.probe_events or d.events)
    probe = "" if probe == "none" else probe
    events = d.events if kind == "classification" else probe
    setting = "data.events" if kind == "classification" or not cfg.eval.probe_events else "eval.probe_events"
    if kind == "classification" and not d.events:
        raise ConfigError("data.events: classification needs the /events/<name> whose labels are the classes "
                          "(CLI --events NAME)")
    if kind == "regression" and not d.target:
        raise ConfigError("data.target: regression needs the /behavior/<name> to predict (CLI --behavior NAME)")
    for path in session_paths(d):
        with Session(path) as s:
            if events and events not in s.event_names:
                skip = "" if finetune else "; or eval.probe_events=none to skip the pretraining probe"
                raise ConfigError(f"{setting}: {path} has no /events/{events} (its events: {s.event_names or 'none'});"
                                  f" set {setting} to one of them, or add the events to the file{skip}")
            if events and events == d.events and d.labels:
                have = sorted({str(x) for x in s.events(events)["label"]})
                missing = [x for x in d.labels if x not in have]
                if missing:
                    raise ConfigError(f"data.labels: {path} has no /events/{events} labelled {missing} (its labels: "
                                      f"{have}); choose data.labels among them (a label is matched exactly, case "
                                      f"and spaces included)")
            if events and events == d.events and not d.labels:
                _warn_mixed_marker_kinds(path, events, {str(x) for x in s.events(events)["label"]}, setting)
            if kind == "regression" and d.target not in s.behavior_names:
                raise ConfigError(f"data.target: {path} has no /behavior/{d.target} (its behaviour: "
                                  f"{s.behavior_names or 'none'}); a behaviour recorded as a channel moves there with "
                                  f"`neurofm convert session {path} OUT.h5 --behavior-channel NAME={d.target}`")
    _check_spatial_scales(cfg)
    _check_labels(cfg)
    splits = ("train", "valid", "test") if training else ("test",)
    locked = bool(events)

    def counts(split: str, segment_s: float | None = None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no segment fits split X": said below, as an error, if it matters
            ds = IEEGSegmentDataset(session_paths(d), _segmenter(cfg, segment_s), split, splits=_splits(cfg),
                                    stride_s=d.stride_s or None, spatial_vocab=None, events=events or None,
                                    event_locked=locked, label_map=label_map(cfg) if events == d.events else None)
        index = ds.index
        label_names = sorted(ds.reader.label_map or {}, key=(ds.reader.label_map or {}).get)
        per_class = np.bincount(index.label[index.label >= 0], weights=index.count[index.label >= 0],
                                minlength=len(label_names)).astype(int) if locked else np.zeros(0, int)
        return int(index.count.sum()), dict(zip(label_names, per_class.tolist()))

    where = _split_source(cfg)
    for split in splits:
        if kind in ("classification",) or (probe and split != "valid"):
            n, per_class = counts(split)
            present = [k for k, v in per_class.items() if v > 0]
            what = ("the validation AUROC that checkpointing and early stopping watch (val/auroc)"
                    if split == "valid" else "the test AUROC" if split == "test" else "training a classifier")
            if kind != "classification":
                what = f"the pretraining probe's {'test AUROC' if split == 'test' else 'training'}"
            if len(present) < 2 and split == "valid" and n and not cfg.trainer.early_stopping_patience:
                warnings.warn(f"{setting}: the valid split ({where}) has segments of one label only ({per_class}): "
                              f"val/auroc is undefined, so no best checkpoint is kept; the final weights are scored",
                              stacklevel=2)
            elif len(present) >= 2 and len(present) < len(per_class) and split != "valid":
                absent = [k for k, v in per_class.items() if v == 0]
                warnings.warn(f"{setting}: the {split} split ({where}) has no segment of the label(s) {absent} of "
                              f"/events/{events} ({per_class}); "
                              + (("the head learns nothing for them, and the decode report leaves their test "
                                  "segments out" if kind == "classification" else
                                  "the probe leaves their test segments out (its AUROC averages over the labels "
                                  "it was trained on)") if split == "train" else
                                 "the test AUROC averages over the other classes only")
                              + ". data.labels=[...] names the classes to classify", stacklevel=2)
            elif len(present) < 2:
                kind_of = "event / background" if BACKGROUND_LABEL in per_class else "event-locked"
                raise ConfigError(f"{setting}: the {split} split ({where}) has {n} {kind_of} segment(s) of "
                                  f"/events/{events} ({per_class or 'no labels'}); {what} needs segments of at least "
                                  f"two labels. Choose events with two or more labels in every split, move the split "
                                  f"(data.split.* fractions, or `neurofm split FILE --train ... --valid ... --test "
                                  f"...`){', or set eval.probe_events=none' if kind != 'classification' else ''}")
        if kind != "classification" and split == "valid" or kind == "regression":
            n, _ = counts(split)
            need = 2 if kind == "regression" else 1
            if n < need:
                metric = {"regression": "val/r2", "reconstruction": "val/r2"}.get(kind, "val/loss")
                raise ConfigError(f"data.split.{split}: the {split} split ({where}) holds {n} segment(s) of "
                                  f"{d.segment_s:g} s; {metric}, which checkpointing and early stopping watch, needs "
                                  f"at least {need}. Give the split more time (data.split.* fractions, or "
                                  f"`neurofm split FILE --train ... --valid ... --test ...`) or shorten data.segment_s")
    if training and kind == "classification" and not _few_shot(cfg):  # few labels: _check_labels did
        seg = _segments(cfg, "train", few_shot=False)
        _check_penalty_block(seg["label"], seg["names"], f"the training block's {len(seg['label'])} segments",
                             "give the training block more time (data.split.* fractions; with --folds, fewer folds) "
                             "or use a longer recording")


def _check_spatial_scales(cfg: RunConfig) -> None:
    """Refuse an encoding (or pretraining masking) scale that no channel of any session is known at.

    Without atlas labels, ``encode_scale: parcel`` (or ``lobe``) gives every channel the
    "unknown" (zero) embedding: the model cannot tell channels apart and nothing says so. This
    is an error rather than a silent fallback to coordinates, because the scale is part of
    the model (a pretrained encoder has no coordinate table to fall back to) and of the
    question a run answers (the paper compares the scales).
    """
    m = cfg.model
    channels, names = [], []
    seg = _segmenter(cfg)
    for path in session_paths(cfg.data):
        with Session(path) as s:
            if "channels" not in s.h5:
                continue
            channels.append(seg.channel_plan(s.channels(), s.n_channels).channels)
            names.append(path)
    if not channels:
        return
    vocab = SpatialVocab.from_dict(m.spatial_vocab) if m.spatial_vocab is not None else \
        SpatialVocab.from_channels(channels)
    if m.encode_scale == "coords":
        _warn_coordinate_spaces(cfg, vocab, channels, names)
    if m.encode_scale == "parcel" and m.spatial_vocab is not None:
        _warn_unlearned_parcels(vocab, channels, names)
    wanted = {"model.encode_scale": m.encode_scale}
    if cfg.task.mode == "pretrain" and m.mask_scale != "channel":
        wanted["model.mask_scale"] = m.mask_scale
    for key, scale in wanted.items():
        known = [_known_at(vocab, ch, scale) for ch in channels]
        if any(known):
            blind = [Path(p).name for p, k in zip(names, known) if not k]
            if blind:  # the others are known: a run, but these sessions' channels all share one embedding
                what = "electrode coordinates" if scale == "coords" else f"{vocab.atlas} atlas labels" \
                    if scale == "parcel" else "atlas labels that map to a lobe"
                other = [sc for sc in ("coords", "parcel", "lobe") if sc != scale and all(
                    _known_at(vocab, ch, sc) for ch in channels)]
                warnings.warn(f"{key}: {scale}, but no channel of {', '.join(blind)} has {what} ({len(blind)} of "
                              f"{len(names)} sessions): every channel there gets the one 'unknown' embedding, so the "
                              f"model cannot tell its channels apart. Convert {'it' if len(blind) == 1 else 'them'} "
                              f"again with an electrodes.tsv that has them"
                              + (f", or choose {key}={other[0]}, which every session has" if other and
                                 not cfg.task.pretrained else ""), stacklevel=2)
            continue
        what = "electrode coordinates" if scale == "coords" else f"{vocab.atlas} atlas labels" if scale == "parcel" \
            else "atlas labels that map to a lobe"
        add = ("convert again with --electrodes electrodes.tsv (name, x, y, z in mm)" + _why_unplaced(channels)
               if scale == "coords" else
               f"convert again with --electrodes electrodes.tsv carrying a {vocab.atlas} column" if scale == "parcel"
               else "convert again with --electrodes electrodes.tsv carrying a destrieux or desikan-killiany column")
        own = SpatialVocab.from_channels(channels, vocab.atlas).parcels
        if scale == "parcel" and own and m.spatial_vocab is not None:
            raise ConfigError(f"{key}: parcel, but none of the {vocab.atlas} labels of "
                              f"{', '.join(Path(p).name for p in names)} (e.g. {own[:3]}) is among the "
                              f"{len(vocab.parcels)} parcels the pretrained model learned (e.g. {vocab.parcels[:3]}): "
                              f"every channel would get the 'unknown' embedding. Fine-tune a model pretrained on "
                              f"recordings that sample these parcels, or one that encodes by lobe or coordinates")
        if cfg.task.pretrained:
            fix = (f"the pretrained model encodes channels by {scale}, so the sessions need {what}: {add}")
            cols = sorted({str(k) for ch in channels for k in (ch.regions or {})})
            if scale == "parcel" and cols:  # e.g. a clinic's DKT column: lobes, but not the model's parcels
                fix += (f" (their atlas column{'s' if len(cols) > 1 else ''} {', '.join(cols)} "
                        f"{'are' if len(cols) > 1 else 'is'} not {vocab.atlas}, the atlas of the model's parcels)")
            usable = [sc for sc in ("coords", "lobe") if sc != scale and all(_known_at(vocab, ch, sc)
                                                                            for ch in channels)]
            if usable:
                fix += (f"; or fine-tune a model pretrained with model.encode_scale={' or '.join(usable)}, which "
                        f"these sessions have")
        else:
            other = [sc for sc in ("coords", "parcel", "lobe") if sc != scale and any(
                _known_at(vocab, ch, sc) for ch in channels)]
            fix = (f"{add}, or choose {key}={other[0]}" if other else add) + \
                (" (model.mask_scale=channel masks whole channels)" if key == "model.mask_scale" else "")
        raise ConfigError(f"{key}: {scale}, but no channel of {', '.join(Path(p).name for p in names)} has {what} "
                          f"(every channel would get the 'unknown' category); {fix}")


def _why_unplaced(channels: list) -> str:
    """Why sessions converted WITH an electrodes table still have no position: coordinates in
    pixels (BIDS ``Pixels``: a photograph) or rows with some of x, y, z ``n/a`` (a 2D layout)."""
    partial = any((np.isfinite(ch.xyz).any(axis=1) & ~np.isfinite(ch.xyz).all(axis=1)).any() for ch in channels)
    pixels = sorted({ch.coordinate_space for ch in channels if "pixel" in str(ch.coordinate_space).lower()})
    if not partial and not pixels:
        return ""
    why = (f"their electrodes are in space {pixels[0]} (a photograph: no place in the brain)" if pixels else
           "their electrodes have some of x, y, z but not all (z n/a: a 2D layout)")
    return (f" ({why}; or label the contacts in an atlas column of that table, e.g. destrieux read off the "
            f"photograph or schematic, and use model.encode_scale=parcel)")


def _warn_unlearned_parcels(vocab, channels: list, names: list) -> None:
    """A fine-tuning session's atlas labels that the pretrained model's parcel table lacks map to
    the 'unknown' embedding, or, when their other hemisphere's homologue is in the table, take
    that one's (``SpatialVocab.parcel_index``; ``SpatialVocab.encode`` says so, but the data
    modules silence it): name them, with how many channels carry each."""
    for path, ch in zip(names, channels):
        col = find_atlas_column(ch.regions, vocab.atlas)
        if col is None:
            continue  # no labels at all: _check_spatial_scales' own message
        labels = [str(x).strip() for x in ch.regions[col] if not is_unknown_label(x)]
        found = {lab: vocab.parcel_index(lab) for lab in sorted(set(labels))}
        twins = {lab: twin for lab, (_, twin) in found.items() if twin is not None}
        new = {lab: labels.count(lab) for lab, (idx, _) in found.items() if idx == 0}

        def shown(labs):
            labs = [f"{lab}{' -> ' + twins[lab] if lab in twins else ''} ({labels.count(lab)} ch)" for lab in labs]
            return ", ".join(labs[:6]) + (f" ... (+{len(labs) - 6} more)" if len(labs) > 6 else "")

        if twins:
            warnings.warn(f"model.encode_scale: parcel: {sum(labels.count(lab) for lab in twins)} of {len(ch.names)} "
                          f"channels of {Path(path).name} carry {vocab.atlas} labels the pretrained model saw only "
                          f"in the other hemisphere ({shown(twins)}); they take that homologue's parcel embedding",
                          stacklevel=3)
        if new:
            warnings.warn(f"model.encode_scale: parcel: {sum(new.values())} of {len(ch.names)} channels of "
                          f"{Path(path).name} carry {vocab.atlas} labels the pretrained model never saw "
                          f"({shown(new)}); they get the 'unknown' parcel embedding, like white matter. Pretrain on "
                          f"recordings that sample these parcels, or use a model that encodes by lobe or coordinates",
                          stacklevel=3)


def _warn_coordinate_spaces(cfg: RunConfig, vocab, channels: list, names: list) -> None:
    """Coordinates encode a position only within one space: MNI millimetres and a FIF's head
    frame (or a patient's native / ACPC space) put the same number at different places. Warn
    when pretraining sessions state different spaces, and when a fine-tuning session's space
    (unknown included) is not one the pretrained model learned (``SpatialVocab.spaces``)."""
    own = {Path(p).name: (coordinate_spaces(ch) or ["unknown"])[0] for p, ch in zip(names, channels)}
    learned = vocab.spaces if cfg.model.spatial_vocab is not None else []
    if learned:
        off = {p: sp for p, sp in own.items() if sp not in learned}
        if off:
            shown = "; ".join(f"{p}: {sp!r}" for p, sp in off.items())
            warnings.warn(f"model.encode_scale: coords, and the pretrained model learned positions in "
                          f"{' / '.join(map(repr, learned))} coordinates, but the electrode coordinates of {shown} are "
                          f"stated in another space (or none): the same numbers there are other places in the brain, "
                          f"so the coordinate embedding reads them wrongly. Convert with an electrodes.tsv (and "
                          f"coordsystem.json) in the model's space, or fine-tune a model that encodes by parcel or "
                          f"lobe", stacklevel=3)
        return
    spaces = sorted({sp for sp in own.values() if sp != "unknown"})
    if cfg.model.spatial_vocab is None and len(spaces) > 1:
        shown = "; ".join(f"{sp!r}: {', '.join(p for p, x in own.items() if x == sp)}" for sp in spaces)
        warnings.warn(f"model.encode_scale: coords, but the sessions' electrode coordinates are in "
                      f"{len(spaces)} different spaces ({shown}): the same numbers in two spaces are different "
                      f"places, so one coordinate embedding learns a mixture. Convert them with electrodes in one "
                      f"space (e.g. MNI), or encode by parcel or lobe", stacklevel=3)


def _known_at(vocab, channels, scale: str) -> bool:
    """Whether any of ``channels`` has a known category at ``scale``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = vocab.encode(channels)
        except ValueError:
            return False
    return bool(((out["coords"] >= 0).all(axis=1) if scale == "coords" else out[scale] > 0).any())


def _split_source(cfg: RunConfig) -> str:
    """How the run's train/valid/test blocks are chosen, in words (the protocol says it)."""
    paths = session_paths(cfg.data)
    from_file = 0
    for path in paths:
        with Session(path) as sess:
            from_file += {"train", "valid", "test"} <= set(sess.interval_names)
    return split_text(cfg.data.split, from_file, len(paths))


def _check_probe_length(cfg: RunConfig) -> None:
    probe = cfg.eval.probe_segment_s
    if cfg.task.mode == "pretrain" and probe and abs(probe - cfg.data.segment_s) > 1e-9:
        raise ConfigError(f"eval.probe_segment_s: {probe:g} s, but the encoder reads segments of data.segment_s = "
                          f"{cfg.data.segment_s:g} s ({cfg.model.n_patches} x {cfg.model.patch_len} samples); leave "
                          f"eval.probe_segment_s at 0 (= data.segment_s) or set both to the same length")


def _warn_mains_not_notched(cfg: RunConfig, mains: dict[str, tuple[float, str]]) -> None:
    """Warn when a session's mains (``mains``: :func:`~neurofm.data.segmenter.recording_mains`)
    is at a frequency ``data.line_noise`` does not notch: a European recording (50 Hz) run with a
    config or a pretrained model set for 60 Hz, or with the notch off, keeps its mains in every
    segment the model reads. Left in, it is part of what the CNN tokenizer makes of every patch,
    so of every masked-latent pretraining target: on the simulated demo layout a grey-matter
    contact's token under the random initial tokenizer is then no better predicted from its shaft
    neighbours' tokens than by their mean (linear R2 about -0.04, against 0.19 notched and 0.9
    for the raw patches)."""
    notch = float(cfg.data.line_noise or 0.0)
    source = " (from the pretrained model)" if cfg.task.pretrained else ""
    for path, (line, why) in mains.items():
        if line and not (notch and line % notch == 0):
            warnings.warn(f"{path}: mains at {line:g} Hz ({why}), but data.line_noise is "
                          f"{f'{notch:g} Hz' if notch else 'off'}{source}; set data.line_noise={line:g} to notch it",
                          stacklevel=3)


def _segmenter(cfg: RunConfig, segment_s: float | None = None):
    d = cfg.data
    return IEEGSegmenter(segment_s or d.segment_s, d.n_patches, sampling_rate=d.sampling_rate or None,
                         line_noise=d.line_noise or None, laplacian=bool(d.laplacian),
                         drop_non_grey=bool(d.drop_non_grey))


def _splits(cfg: RunConfig, *, few_shot: bool = True):
    """The run's train / valid / test blocks; with few labels (:func:`_few_shot`) the training
    blocks cut to the drawn chunks (:class:`~neurofm.data.splits.FewShotSplit`: a segment is kept
    when its end falls in one), so the model, its start and every baseline read the labelled
    segments only (``few_shot=False``: every training segment, for the draw's counts)."""
    split = block_split(cfg.data.split)
    if few_shot and _few_shot(cfg):
        d = cfg.data
        # a segment ending exactly where a chunk ends is in the next chunk (labelled_windows floors the
        # end time): `after` takes it out past the segment grid's float slack (grid_runs: 1e-6 strides)
        split = FewShotSplit(split, LabelDraw(d.label_fraction, d.label_chunk_s, cfg.seed), session_paths(d),
                             before=d.segment_s, after=-2e-6 * (d.stride_s or d.segment_s))
    return split


def _few_shot(cfg: RunConfig) -> bool:
    """A classification / regression fine-tune whose labels are a fraction of the training segments."""
    return (cfg.task.mode == "finetune" and cfg.task.finetune_task in ("classification", "regression")
            and cfg.data.label_fraction < 1.0)


def finetuned_labels(pretrained) -> dict[str, Any] | None:
    """The label draw of the BaRISTA fine-tuning run that wrote ``pretrained``
    (:func:`neurofm.recipes.finetuned_labels`); None when the folder is not one. ``neurofm
    evaluate`` fits its baselines on those segments, as the fine-tuning run did."""
    return _finetuned_labels(pretrained, "barista")


#: Few labels: the fewest labelled training segments of each class (classification) or in all
#: (regression, twice as many: an R2 per fold needs two) for the head's start, whose blocked CV has
#: START_FOLDS contiguous folds: one segment of every class per fold on average.
MIN_LABELLED_PER_CLASS_FOLDS = 1


def _segments(cfg: RunConfig, split: str, *, few_shot: bool = True) -> dict[str, np.ndarray]:
    """The segments of ``split`` without reading them: ``session`` (index), ``end`` (s) and
    ``label`` (-1: none) each ``(n,)``, and the class ``names`` in label order."""
    d = cfg.data
    kind = cfg.task.finetune_task
    events = d.events if kind == "classification" else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no segment fits split X": the callers say it when it matters
        ds = IEEGSegmentDataset(session_paths(d), _segmenter(cfg), split, splits=_splits(cfg, few_shot=few_shot),
                                stride_s=d.stride_s or None, spatial_vocab=None, events=events or None,
                                event_locked=bool(events), label_map=label_map(cfg) if events else None)
    index = ds.index
    t0 = np.concatenate([index.anchors(r) for r in range(index.n_runs)]) if index.n_runs else np.zeros(0)
    names = sorted(ds.reader.label_map or {}, key=(ds.reader.label_map or {}).get)
    return {"session": np.repeat(index.session, index.count), "end": t0 + d.segment_s,
            "label": np.repeat(index.label, index.count), "names": names}


def _drawn_segments(cfg: RunConfig) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every training segment (:func:`_segments`, in time order) and which of them the draw
    labels, ``(n,)`` bool: the segments the few-shot split keeps (a segment is kept exactly when
    its end falls in a drawn chunk), found without a second pass over the sessions."""
    d = cfg.data
    seg = _segments(cfg, "train", few_shot=False)
    return seg, labelled_windows(seg["session"], seg["end"], d.label_fraction, d.label_chunk_s, cfg.seed)


def few_shot_draw(cfg: RunConfig, drawn: tuple[dict, np.ndarray] | None = None) -> dict | None:
    """What ``--label-fraction`` drew on the training segments (None with every label):
    :func:`neurofm.recipes.label_draw` over every training segment (``n_segments``,
    ``n_segments_labelled``, chunks, ``share``) and, for classification, per class
    (``per_class``, ``per_class_labelled``). ``drawn``: :func:`_drawn_segments`, when the caller
    has it."""
    if not _few_shot(cfg):
        return None
    d = cfg.data
    seg, keep = drawn or _drawn_segments(cfg)
    draw = label_draw(d.label_fraction, d.label_chunk_s, cfg.seed, seg["session"], seg["end"], unit="segments")
    if cfg.task.finetune_task == "classification":
        lab = seg["label"]
        draw["per_class"] = {n: int((lab == k).sum()) for k, n in enumerate(seg["names"])}
        draw["per_class_labelled"] = {n: int(((lab == k) & keep).sum()) for k, n in enumerate(seg["names"])}
    return draw


def _few_shot_text(cfg: RunConfig, draw: dict) -> str:
    """The draw in the protocol line's words."""
    d = cfg.data
    text = (f"labels on {d.label_fraction:.0%} of the training segments ({d.label_chunk_s:g} s chunks, seed "
            f"{cfg.seed}; {draw_rule(d.label_fraction, d.label_chunk_s)}: "
            f"{label_draw_text(draw, d.label_chunk_s, unit='segments')}")
    if "per_class_labelled" in draw:
        text += "; labelled per class " + ", ".join(f"{n} {draw['per_class_labelled'][n]} of {draw['per_class'][n]}"
                                                    for n in draw["per_class"])
    return text + ("), the same segments for the model, its start's blocked CV and every baseline; validation and "
                   "test segments untouched")


def _check_labels(cfg: RunConfig) -> None:
    """The labels a fine-tune fits, before any step: ``data.label_fraction`` in range; with few
    labels, chunks longer than a segment and enough labelled training segments for the head's
    start (per class for classification, and the block where the logistic fits choose their
    penalty: :func:`_check_penalty_block`; with every label :func:`preflight` checks that block
    after the splits)."""
    d = cfg.data
    if not 0 < d.label_fraction <= 1:
        raise ConfigError(f"data.label_fraction: {d.label_fraction:g} is not in (0, 1]; --label-fraction 0.2 labels "
                          f"a fifth of the training segments")
    if not _few_shot(cfg):
        if d.label_fraction < 1 and cfg.task.mode == "finetune":
            raise ConfigError(f"data.label_fraction: {d.label_fraction:g}, but a {cfg.task.finetune_task} fine-tune "
                              f"has no labels to draw; --label-fraction is for classify and regress")
        return
    if not d.label_chunk_s > d.segment_s:
        raise ConfigError(f"data.label_chunk_s: {d.label_chunk_s:g} s, but segments are {d.segment_s:g} s long; "
                          f"labels are drawn in chunks longer than a segment (the default 10 s)")
    seg, keep = drawn = _drawn_segments(cfg)
    draw = few_shot_draw(cfg, drawn)
    need = START_FOLDS * MIN_LABELLED_PER_CLASS_FOLDS
    fix = (f"raise --label-fraction (now {d.label_fraction:g}), give the training block more time (data.split.* "
           f"fractions) or use a longer recording")
    what = (f"--label-fraction {d.label_fraction:g} labelled {label_draw_text(draw, d.label_chunk_s, unit='segments')}"
            f" (seed {cfg.seed})")
    if "per_class_labelled" in draw:
        few = {n: c for n, c in draw["per_class_labelled"].items() if c < need}
        if few:
            raise ConfigError(f"data.label_fraction: {what}, per class {draw['per_class_labelled']} of "
                              f"{draw['per_class']}; the head and its start's blocked CV ({START_FOLDS} folds) need "
                              f"at least {need} labelled segments of every class, and {few} have fewer: {fix}")
        _check_penalty_block(seg["label"][keep], seg["names"], what, fix, setting="data.label_fraction")
    elif draw["n_segments_labelled"] < 2 * need:
        raise ConfigError(f"data.label_fraction: {what}; the head and its start's blocked CV ({START_FOLDS} folds, an "
                          f"R2 per fold) need at least {2 * need} labelled segments: {fix}")


def _check_penalty_block(labels: np.ndarray, names: list[str], what: str, fix: str, setting: str = "data.split") -> None:
    """The logistic fits (the head's start, the band-power and waveform arms) choose their penalty
    by blocked CV over the labelled training segments in time order
    (:meth:`neurofm.baselines.Logistic.penalty_folds`): some fold needs every class in its
    training segments and two classes in its held-out block, or they fail after training."""
    try:
        Logistic().penalty_folds(labels, what="the logistic fits' penalty")
    except ValueError as e:
        counts = dict(zip(names, np.bincount(labels, minlength=len(names)).tolist()))
        raise ConfigError(f"{setting}: {what} (per class {counts}); the head's start and the logistic baselines "
                          f"choose their penalty by blocked CV over the labelled training segments in time order: "
                          f"{e}. Fix: {fix}") from None


def _warn_mixed_marker_kinds(path, events: str, labels: set[str], setting: str) -> None:
    """BrainVision stimulus and response markers ("Stimulus/S  1" -> S1, "Response/R  1" -> R1) as
    classes of one classifier: a response segment starts some 100 ms after a stimulus, so the
    classes differ by timing as much as by brain state, and the macro AUROC rises with it (a
    trial file: S1/S2/R1 0.97, S1 vs S2 0.85-0.89 on the same test block)."""
    stim = sorted(x for x in labels if re.fullmatch(r"S\d+", x))
    resp = sorted(x for x in labels if re.fullmatch(r"R\d+", x))
    if stim and resp:
        warnings.warn(f"{setting}: {path}: /events/{events} holds stimulus markers ({', '.join(stim)}) and response "
                      f"markers ({', '.join(resp)}), all of them classes now; a response follows a stimulus, so "
                      f"its segment differs by timing as well as by what the brain does. data.labels=[{','.join(stim)}] "
                      f"classifies the stimuli only", stacklevel=3)


def label_map(cfg: RunConfig) -> dict[str, int] | None:
    """The classes of a classification run from ``data.labels`` (None: every label of the events)."""
    labels = [str(x) for x in cfg.data.labels]
    if not labels:
        return None
    if len(set(labels)) != len(labels):
        raise ConfigError(f"data.labels: {labels} names a label twice; list each class once")
    if BACKGROUND_LABEL in labels:
        raise ConfigError(f"data.labels: {BACKGROUND_LABEL!r} is added by itself when one label is given; "
                          f"list the event labels only")
    if len(labels) == 1:  # one kind of event: its segments against segments without one
        labels = [BACKGROUND_LABEL] + labels
    return {lab: i for i, lab in enumerate(labels)}


def pretraining_estimate(cfg: RunConfig, n_steps: int = 3) -> dict:
    """What pretraining ``cfg`` on its sessions will cost (``neurofm inspect``), measured on them:
    the segments per epoch come from the recordings' length and the segment grid, a step's cost
    from their channels and the model (:func:`neurofm.recipes.time_pretraining`). Returns the
    steps, seconds per step, the estimate (s) and the segment shape, and what comes on top of
    training (:func:`after_training_estimate`): ``validation``, ``evaluation``, ``total_s``."""
    with quiet_preparation():
        cfg = prepare(cfg)
        dm = datamodule(cfg)
        t = task(cfg, dm)
        dm.setup("fit")
        out = time_pretraining(cfg, t, dm.train_dataloader(), lambda batch: t.model.pretrain_loss(batch)["loss"], n_steps)
        out.update(after_training_estimate(cfg, t, dm, out))
    m = cfg.model
    return {**out, "segment": {"n_patches": int(m.n_patches), "patch_len": int(m.patch_len),
                               "sampling_rate": float(m.sampling_rate), "line_noise": float(cfg.data.line_noise or 0)}}


def after_training_estimate(cfg: RunConfig, t, dm, training: dict) -> dict:
    """What a pretraining run of ``cfg`` costs besides its training steps (``training``:
    :func:`neurofm.recipes.time_pretraining`'s figures), timed with the code that runs it on the
    file's own first batches (:func:`neurofm.recipes.time_batches`): ``validation``, Lightning's
    passes over the validation segments (:func:`neurofm.recipes.validation_cost`, the no-grad
    ``pretrain_loss``), and ``evaluation``, :func:`_evaluate_pretraining`'s pass over the test
    segments (the same loss) and the token-power check's (:func:`token_power_check`: the trained
    and a random-init encoder, each over about ``TOKEN_POWER_SEGMENTS`` training and test segments,
    band power included). A linear probe on events (``eval.probe_events``) is left out: its
    passes depend on the events. Returns those and ``total_s``."""
    from neurofm.threads import torch_threads

    t.model.eval()
    try:
        with torch_threads(cfg.trainer.threads):  # as the run, and time_pretraining, use
            dm.setup("test")
            valid, test, train = dm.val_dataloader(), dm.test_dataloader(), dm.loader("train")
            loss = lambda batch: t.model.pretrain_loss(batch)  # noqa: E731
            v_s, _ = time_batches(valid, loss)
            validation = validation_cost(cfg.trainer, training["steps"], training["steps_per_epoch"], len(valid), v_s)
            test_s, _ = time_batches(test, loss)
            bands = BandPowerRidge(cfg.model.sampling_rate, {b: BANDS[b] for b in TOKEN_POWER_BANDS})
            enc = t.export_encoder().eval()
            power_s, _ = (time_batches(test, lambda batch: _segment_pass([batch], enc, bands, channels=True))
                          if bands.bands else (0.0, 0))
            per = math.ceil(TOKEN_POWER_SEGMENTS / cfg.data.batch_size)
            power_batches = 2 * (min(len(train), per) + min(len(test), per)) if bands.bands else 0
            evaluation = {"test_batches": len(test), "seconds_per_test_batch": test_s,
                          "token_power_batches": power_batches, "seconds_per_token_power_batch": power_s,
                          "seconds": len(test) * test_s + power_batches * power_s}
    finally:
        t.model.train()
    return {"validation": validation, "evaluation": evaluation,
            "total_s": training["estimate_s"] + validation["seconds"] + evaluation["seconds"]}


def datamodule(cfg: RunConfig, *, events: str | None = None, event_locked: bool | None = None,
               segment_s: float | None = None):
    """Pretraining: segments on a grid. Classification: segments starting at each event."""
    from neurofm.data.datamodule import IEEGDataModule  # lazy: Lightning

    d = cfg.data
    finetune = cfg.task.mode == "finetune"
    events = events if events is not None else (d.events if finetune and cfg.task.finetune_task == "classification"
                                                else "")
    locked = bool(events) if event_locked is None else event_locked
    vocab = "auto"
    if cfg.model.spatial_vocab is not None:

        vocab = SpatialVocab.from_dict(cfg.model.spatial_vocab)
    return IEEGDataModule(
        session_paths(cfg.data), _segmenter(cfg, segment_s), spatial_vocab=vocab, spatial_scale=None,
        events=events or None, event_locked=locked,
        label_map=label_map(cfg) if events and events == d.events else None,
        target=(d.target or None) if finetune and cfg.task.finetune_task == "regression" else None,
        stride_s=d.stride_s or None, splits=_splits(cfg), batch_size=d.batch_size, num_workers=d.num_workers,
        streaming=d.streaming, seed=cfg.seed)


def _sized_config(cfg: RunConfig, dm) -> BaristaConfig:
    """The model config with the spatial tables sized to the data module's vocabulary."""
    if cfg.model.spatial_vocab is not None or dm.spatial_vocab is None:
        return cfg.model
    v = dm.spatial_vocab
    return dataclasses.replace(cfg.model, n_parcels=max(cfg.model.n_parcels, v.n_parcels),
                               n_lobes=max(cfg.model.n_lobes, v.n_lobes), spatial_vocab=v.to_dict())


def task(cfg: RunConfig, dm):
    from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask  # lazy: Lightning

    t = cfg.task
    if t.mode == "pretrain":
        return BaristaPretrainTask(_sized_config(cfg, dm), **{k: getattr(t, k) for k in BARISTA_PRETRAIN_KNOBS})
    if t.mode != "finetune":
        raise ConfigError(f"task.mode: {t.mode!r} is not 'pretrain' or 'finetune'")
    loaded = None
    if t.pretrained and t.from_scratch:
        torch.manual_seed(cfg.seed)
        encoder = BaristaEncoder(cfg.model)  # prepare() took the pretrained shape; the weights stay random
        print(f"neurofm: from scratch: random init in the shape of {t.pretrained}", file=sys.stderr)
    elif t.pretrained:

        loaded = load_pretrained(t.pretrained)
        encoder = getattr(loaded, "encoder", loaded).train()  # from_pretrained returns eval mode: dropout on
        if not isinstance(encoder, BaristaEncoder):
            raise ConfigError(f"task.pretrained: {t.pretrained} holds a {type(loaded).__name__}, not a BaRISTA encoder")
        # what prepare() resolved from the folder and the data config: segments of n_patches (no
        # weight depends on it) and the preprocessing the data now goes through
        encoder.config = dataclasses.replace(encoder.config, n_patches=cfg.model.n_patches,
                                             preprocessing=cfg.model.preprocessing)
    else:  # the paper's random-init baseline; seeded as _starting_encoder draws the probe arm's encoder
        torch.manual_seed(cfg.seed)
        encoder = BaristaEncoder(_sized_config(cfg, dm))
    n_classes, target_dim, label_map, n_channels, scale = 2, 1, {}, None, {}
    if t.finetune_task == "classification":
        label_map = getattr(getattr(dm.dataset("train"), "reader", None), "label_map", None) or {}
        n_classes = max(2, len(label_map))
    elif t.finetune_task == "regression":
        have = getattr(getattr(loaded, "config", None), "target_mean", None)
        # a fine-tuned folder (neurofm evaluate) answers in the units it was trained with
        mean, std = (loaded.config.target_mean, loaded.config.target_std) if have else target_stats(cfg, dm)
        target_dim, scale = len(mean), {"target_mean": mean, "target_std": std}
    if t.head == "token_weighting" and t.finetune_task != "reconstruction":
        n_channels = _fixed_layout_channels(cfg, dm)
    bands, note = _band_power_readout(cfg, dm, loaded, encoder)
    finetuned = loaded is not None and hasattr(loaded, "head")  # a fine-tuned folder (neurofm evaluate)
    # the evoked-waveform read-out rides with the band-power one (same fixed layout); a fine-tuned
    # folder keeps its own or none
    bins = (int(getattr(loaded.config, "waveform_bins", 0) or 0) if finetuned
            else WAVEFORM_BINS if bands and t.waveform else 0)
    if bands or bins:
        n_channels = n_channels or (loaded.config.n_channels if finetuned else _fixed_layout_channels(cfg, dm))
    task = BaristaFinetuneTask(encoder, task=t.finetune_task, n_classes=n_classes, target_dim=target_dim, head=t.head,
                               n_channels=n_channels, early_stopping_patience=None,
                               **{k: getattr(t, k) for k in BARISTA_FINETUNE_KNOBS},
                               label_names=[name for name, _ in sorted(label_map.items(), key=lambda kv: kv[1])],
                               band_power_bands=bands, waveform_bins=bins, **scale)
    task.read_out_start = {}  # which features the head started from, for metrics.json (evaluate)
    if note:
        task.read_out_start["band_power_readout"] = note
    elif bands and not bins and not finetuned:
        task.read_out_start["waveform_readout"] = "off (task.waveform=false)"
    if finetuned:  # a fine-tuned folder (neurofm evaluate): its own head
        _load_finetuned_head(task, loaded, t.pretrained)
    elif t.finetune_task in ("classification", "regression"):
        task.read_out_start.update(init_probe_head(task, dm, seed=cfg.seed) or {})
    return task


def _band_power_readout(cfg: RunConfig, dm, loaded, encoder) -> tuple[dict | None, str]:
    """``(bands, note)``: the band-power read-out's bands for this fine-tune (None: no read-out)
    and, when there is none though ``task.band_power`` asks for one, the one-line reason
    (also printed). A fine-tuned folder (``neurofm evaluate``) keeps its own read-out or none."""
    t = cfg.task
    if t.finetune_task not in ("classification", "regression"):
        return None, ""
    if loaded is not None and hasattr(loaded, "head"):
        return (dict(loaded.config.band_power_bands) or None), ""
    if not t.band_power:
        return None, "off (task.band_power=false)"
    ds = dm.dataset("train")
    layouts = {tuple(ds.channel_names(i)) for i in range(len(session_paths(cfg.data)))}
    why = ""
    if len(layouts) != 1:
        why = (f"the {len(session_paths(cfg.data))} sessions have {len(layouts)} different channel layouts, and the "
               f"read-out learns one weight per channel and band of one fixed layout")
    elif encoder.config.sampling_rate != cfg.model.sampling_rate:
        why = (f"the encoder's sampling rate {encoder.config.sampling_rate:g} Hz differs from the data's "
               f"{cfg.model.sampling_rate:g} Hz")
    if why:
        note = f"none: {why}"
        print(f"neurofm: no band-power read-out in the {t.finetune_task} head ({why}); the head reads the tokens "
              f"alone", file=sys.stderr)
        return None, note
    return BandPowerRidge(cfg.model.sampling_rate).bands, ""


#: the feature blocks a classification / regression head's start can read (:func:`init_probe_head`), as
#: metrics.json names them; a candidate start is band power plus some of the others, named by joining them
#: with " + " in this order
PART_BAND_POWER, PART_WAVEFORM, PART_TOKENS = "band power", "waveform", "token mean"
START_BAND_POWER, START_TOKENS = PART_BAND_POWER, PART_TOKENS
START_WAVEFORM = f"{PART_BAND_POWER} + {PART_WAVEFORM}"
START_BOTH = f"{PART_BAND_POWER} + {PART_TOKENS}"
START_ALL = f"{PART_BAND_POWER} + {PART_WAVEFORM} + {PART_TOKENS}"
START_FOLDS = 4


def _in_order(parts) -> list[str]:
    """The feature blocks ``parts`` in their one order (the order of the head's weight rows)."""
    return [p for p in (PART_BAND_POWER, PART_WAVEFORM, PART_TOKENS) if p in parts]


def _start_name(parts) -> str:
    return " + ".join(_in_order(parts))


def init_probe_head(task, dm, *, seed: int = 0) -> dict[str, Any]:
    """Start a fresh classification / regression head at a closed-form fit on the training
    segments, so that before any step the model predicts what that fit predicts (with band power
    alone: the decode report's band-power arm), and fine-tuning has to beat it on validation to
    replace it (:class:`~neurofm.tasks.callbacks.StartingPoint`, two paired SE).

    Candidates, each fitted as the decode report fits its arms (:mod:`neurofm.baselines`:
    features standardised, penalty chosen by blocked CV over the training segments in time
    order, :func:`~neurofm.baselines.penalty_folds`; regression: :class:`~neurofm.baselines.Ridge` to the target in the recording's units,
    its map then standardised with the task's training mean and std, which is what the head
    outputs; classification: :class:`~neurofm.baselines.Logistic`, L2, penalty by AUROC), on
    concatenated feature blocks:

    * ``band power``: each channel's log band power (the task's
      :class:`~neurofm.models.barista.BandPowerReadout`): the report's "logistic on band power"
      (classification) or "ridge on band power" (regression) arm, same segments, same fit, so
      at step 0 the model IS that arm up to float32;
    * ``+ waveform``: each channel's evoked waveform (the task's
      :class:`~neurofm.models.barista.WaveformReadout`, :func:`evoked_waveform` of the model's
      input: the report's waveform features), when the task has that read-out (``task.waveform``);
    * ``+ token mean``: the starting encoder's token mean (eval mode; the features the report's
      linear probe reads).

    The rule grows the start from band power one block at a time, each only when its blocked-CV
    gain over the start so far exceeds :data:`~neurofm.report.START_SE` (2) paired block-bootstrap SE
    (:func:`neurofm.report.start_gain`, the rule of the spike side's count read-out): first the
    waveform, then the token mean (so ``band power``, ``band power + waveform``, ``band power +
    token mean`` or all three). Blocked CV: 4 contiguous folds of the training segments in time
    order (:func:`neurofm.evaluation.blocked_oof`; about one segment length of segments dropped
    from training on each side of the held-out fold), each candidate refitted on the other folds
    with the penalty its fit on all the training segments chose (a penalty chosen again inside a
    fold needs inner folds of that fold's segments holding both classes, which a few dozen
    segments rarely give); scored by R2 (regression) or ROC-AUC (classification: the metric the report's
    verdict and model selection judge), the gain's SE over equal-count blocks of the training
    period (the report's CI blocks). Without a read-out (layouts that differ across sessions,
    ``task.band_power=false``): ``token mean`` alone, the linear probe arm.

    The read-outs' feature statistics are set from the training segments' features (they train
    on standardised features), and the fit is folded through them into the read-outs' and the
    head's ``Linear`` layers (two classes: the log-odds ``s`` split as logits ``(-s/2, +s/2)``,
    so the softmax is the logistic probability; more: one-vs-rest log-odds as the logits); the
    pooling starts as the plain mean over the real tokens (the features the probe reads); a
    block the start does not take starts at weight 0. From scratch, the same rule reads the
    random encoder's tokens. When no fit is possible (too few segments to choose the penalty, a
    class without training segments) the head keeps its default initialisation, with a note.

    Returns what metrics.json records as ``start``: ``features`` (the chosen candidate),
    ``candidates``, ``score`` (``auroc`` / ``r2``), ``cv`` (each candidate's blocked-CV score),
    ``steps`` (per block the rule considered: ``adds``, ``from``, ``to``, ``gain``, ``paired_se``,
    ``taken``), ``gain`` / ``paired_se`` (the token mean's step), ``alpha`` (each candidate's
    penalty), ``n_segments``, ``rule``."""
    head, kind, readout, wave_readout = task.head, task.hparams.task, task.band_power, task.waveform
    classify = kind == "classification"
    dm.setup("fit")
    bands = BandPowerRidge(readout.sampling_rate, readout.bands) if readout is not None else None
    was_training = task.encoder.training
    try:
        train = _segment_pass(progress(dm.loader("train"), "the head's start, training segments"), task.encoder.eval(),
                              bands)
    finally:
        task.encoder.train(was_training)
    tokens = train["feat"].astype(np.float64)
    n = len(tokens)
    if classify:
        target = train["y"].astype(np.int64)
    else:
        mean, std = (v.double().numpy() for v in task.target_scale())
        target = train["y"].reshape(n, -1).astype(np.float64)
    k = task.hparams.n_classes

    def fit(X, Y, alpha=None):
        """The report's fit of features ``X``: ``(W (F, out), b (out,), alpha)`` in the head's units
        (``alpha``: that penalty, not chosen again)."""
        if not classify:
            r = (Ridge() if alpha is None else Ridge(alpha)).fit(X, Y)
            W, b = r.linear_map()
            return W / std, (b - mean) / std, r.alpha_
        lr = (Logistic() if alpha is None else Logistic(alpha)).fit(X, Y)
        if list(lr.classes_) != list(range(k)):
            raise ValueError(f"training segments hold the classes {lr.classes_.tolist()}, the head has {k}")
        coef, bias = lr.linear_map()
        if k == 2:
            return np.stack([-coef[:, 0] / 2, coef[:, 0] / 2], 1), np.array([-bias[0] / 2, bias[0] / 2]), lr.alpha_
        return coef, bias, lr.alpha_

    def scores(W, b, X):  # what the report scores: the log-odds (two classes) or the standardised target
        out = X @ W + b
        return out[:, 1] - out[:, 0] if classify and k == 2 else out

    blocks = {PART_TOKENS: tokens}  # feature block -> (n, F) training features
    readouts = {}  # feature block -> the read-out that carries its weights
    ladder = []  # the blocks the rule adds to band power, in turn
    if readout is not None:
        blocks[PART_BAND_POWER] = train["bp"].reshape(n, -1)
        readouts[PART_BAND_POWER] = readout
        if wave_readout is not None:
            blocks[PART_WAVEFORM] = train["wave"].reshape(n, -1)
            readouts[PART_WAVEFORM] = wave_readout
            ladder.append(PART_WAVEFORM)
        ladder.append(PART_TOKENS)
        for part, r in readouts.items():  # they train on standardised features
            r.set_statistics(blocks[part].mean(axis=0), blocks[part].std(axis=0))
        parts_of = {_start_name(p): p for p in
                    ([(PART_BAND_POWER,)] + [(PART_BAND_POWER, *c) for r in range(1, len(ladder) + 1)
                                             for c in itertools.combinations(ladder, r)])}
    else:
        parts_of = {START_TOKENS: (PART_TOKENS,)}
    cands = {name: np.concatenate([blocks[p] for p in _in_order(parts)], axis=1) for name, parts in parts_of.items()}
    fits, cv, oof = {}, {}, {}
    try:
        for name, X in cands.items():
            fits[name] = fit(X, target)
    except ValueError as e:
        print(f"neurofm: the {kind} head keeps its default initialisation (the {' / '.join(cands)} fit could not "
              f"be made on {n} training segments: {e})", file=sys.stderr)
        return {"features": None, "why": str(e), "n_segments": int(n)}
    why_no_cv = ""
    y_std = target if classify else (target - mean) / std
    steps = []
    chosen = START_TOKENS
    if readout is not None:
        enc = task.encoder.config
        order = np.lexsort((train["t0"], train["session"]))  # folds of contiguous time (session-major)
        t0, sess = train["t0"][order], train["session"][order]
        step = np.diff(t0)[np.diff(sess) == 0]
        step = float(np.median(step[step > 0])) if (step > 0).any() else float("inf")
        gap = max(1, int(math.ceil(enc.segment_len / enc.sampling_rate / step - 1e-9)))
        y_sorted = y_std[order]
        try:
            for name, X in cands.items():
                alpha = fits[name][2]  # each fold refits with the penalty the whole training block chose
                oof[name] = blocked_oof(lambda a, y, c: scores(*fit(a, y, alpha)[:2], c), X[order], target[order],
                                        START_FOLDS, gap)
                cv[name] = (float(auroc(y_sorted, oof[name])) if classify
                            else float(r2_score(y_sorted, oof[name].reshape(y_sorted.shape))))
        except ValueError as e:
            why_no_cv, oof = str(e), {}
        chosen = START_BAND_POWER
        for part in ladder:  # NaN gain (no CV): the simpler start stays
            richer = _start_name((*parts_of[chosen], part))
            gain, se = start_gain(oof.get(chosen), oof.get(richer), y_sorted, test_period_blocks(t0, sess),
                                  task=kind, seed=seed)
            taken = bool(gain > START_SE * se)
            steps.append({"adds": part, "from": chosen, "to": richer, "gain": _finite(gain), "paired_se": _finite(se),
                          "taken": taken})
            chosen = richer if taken else chosen
    W, b, alpha = fits[chosen]
    W = np.asarray(W, dtype=np.float64).reshape(W.shape[0], -1)
    rows, at = {}, 0  # feature block -> its rows of W
    for part in _in_order(parts_of[chosen]):
        rows[part] = W[at:at + blocks[part].shape[1]]
        at += blocks[part].shape[1]
    with torch.no_grad():
        if isinstance(head, TokenWeightingHead):
            head.token_weight.fill_(1.0)
        else:
            head.score.weight.zero_()
            head.score.bias.zero_()
        head.out.weight.zero_()
        head.out.bias.zero_()
        if PART_TOKENS in rows:
            head.out.weight.copy_(torch.as_tensor(rows[PART_TOKENS].T, dtype=head.out.weight.dtype))
        if readout is None:
            head.out.bias.copy_(torch.as_tensor(b, dtype=head.out.bias.dtype))
        for part, r in readouts.items():  # the raw-feature fit, through each read-out's standardisation
            # the bias rides with band power; a block the start did not take adds nothing
            r.start_at(rows.get(part, np.zeros((blocks[part].shape[1], W.shape[1]))),
                       b if part == PART_BAND_POWER else np.zeros_like(b))
    metric = "auroc" if classify else "r2"
    rule = ("token mean alone (no band-power read-out)" if readout is None else
            f"from band power, each of {' then '.join(ladder)} added only when its blocked-CV {metric} gain over "
            f"the start so far exceeds {START_SE:g} paired SE ({START_FOLDS} contiguous folds of the training "
            f"segments; SE from a block bootstrap over the training period)")
    last = steps[-1] if steps else {}
    out = {"features": chosen, "candidates": list(cands), "score": metric,
           "cv": {name: _finite(cv.get(name, float("nan"))) for name in cands} if readout is not None else {},
           "steps": steps, "gain": last.get("gain"), "paired_se": last.get("paired_se"),
           "alpha": {name: float(f[2]) for name, f in fits.items()}, "n_segments": int(n), "rule": rule}
    if why_no_cv:
        out["why_no_cv"] = why_no_cv
    fit_name = "ridge" if not classify else "logistic"
    if readout is None:
        why = f"penalty {alpha:g}, {n} training segments"
    elif cv:
        why = (f"blocked-CV {metric} on {n} training segments: " + ", ".join(f"{k_} {v:.3f}" for k_, v in cv.items())
               + "; " + _steps_text(steps))
    else:
        why = f"no blocked-CV comparison ({why_no_cv or 'too few segments'}), so band power alone"
    print(f"neurofm: the {kind} head starts at {fit_name} on {chosen} ({why})", file=sys.stderr)
    return out


def _finite(x) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def _steps_text(steps: list[dict]) -> str:
    """The start rule's steps in words: each block's gain +- paired SE, taken or not."""
    out = []
    for st in steps:
        if st["gain"] is None or st["paired_se"] is None:
            out.append(f"the {st['adds']}: no gain measured, not taken")
            continue
        out.append(f"the {st['adds']}'s gain over {st['from']} {st['gain']:+.3g} +- {st['paired_se']:.2g} paired SE "
                   f"({'>' if st['taken'] else '<='} {START_SE:g} SE: {'taken' if st['taken'] else 'not taken'})")
    return "; ".join(out)


def _load_finetuned_head(task, loaded, folder: str) -> None:
    """Put a fine-tuned folder's head into ``task``, checking that it answers the same question."""
    have, want = loaded.config, task.hparams
    # a model fine-tuned on a file converted before BrainVision labels lost MNE's type prefix
    # ("Comment/grip") answers the same question as one on the file converted again ("grip")
    same = [event_label(x) for x in have.label_names or ()] == [event_label(x) for x in want.label_names or ()]
    if have.task == "classification" and have.label_names and not same:
        raise ConfigError(f"data.events: the model {folder} classifies {list(have.label_names)}, but these events "
                          f"carry the labels {list(want.label_names)}; evaluate on events with the model's labels")
    load_state_strict(task.head, loaded.head.state_dict(), source=f"{folder} (head)")
    if task.band_power is not None:
        load_state_strict(task.band_power, loaded.band_power.state_dict(), source=f"{folder} (band-power read-out)")
    if task.waveform is not None:
        load_state_strict(task.waveform, loaded.waveform.state_dict(), source=f"{folder} (evoked-waveform read-out)")


def target_stats(cfg: RunConfig, dm) -> tuple[list[float], list[float]]:
    """Mean and standard deviation (D,) of ``/behavior/<data.target>`` over its samples in the
    training blocks of every session: the regression head learns the target standardised with
    them and the exported model maps its outputs back to the recording's units."""
    name = cfg.data.target
    values, seg_means, sources = [], [], []
    for s in dm.sessions:
        if name not in s.behavior_names:
            raise ConfigError(f"data.target: {s.path} has no /behavior/{name} (available: {s.behavior_names}); "
                              f"name one of those, or move a recorded channel there with neurofm convert "
                              f"--behavior-channel")
        ts, v = s.behavior(name)
        v = np.asarray(v, dtype=np.float64).reshape(len(ts), -1)
        inside = dm.splits(s)["train"].contains(ts, ts)
        values.append(v[inside & np.isfinite(v).all(1)])
        if len(ts) > 1:  # consecutive runs of one segment's samples, for the check below
            per_seg = int(round(cfg.data.segment_s / float(np.median(np.diff(ts)))))
            n = len(values[-1]) // max(per_seg, 1) * per_seg
            if per_seg > 1 and n:
                seg_means.append(values[-1][:n].reshape(-1, per_seg, v.shape[1]).mean(1))
        sources.append(str(s.h5[f"behavior/{name}"].attrs.get("source_channel", "") or ""))
    v = np.concatenate(values)
    if len(v) < 2:
        raise ConfigError(f"data.target: /behavior/{name} has {len(v)} finite sample(s) inside the training "
                          f"blocks of {[str(s.path) for s in dm.sessions]}; the regression target needs samples "
                          f"there (check its timestamps against data.split or /intervals/train)")
    std = v.std(0)
    if not (std > 0).all():
        raise ConfigError(f"data.target: /behavior/{name} is constant over the training blocks (std {std.tolist()}); "
                          f"there is nothing to decode")
    if seg_means:
        # the model regresses the target's MEAN over a segment: a raw EMG or accelerometer channel
        # oscillates around 0 faster than a segment, and that mean is noise (standardised by the
        # samples' std, a target near 0 everywhere, scored as if it were behaviour)
        kept = float((np.concatenate(seg_means).var(0) / std ** 2).max())
        if kept < SEGMENT_MEAN_MIN_VARIANCE:
            source = next((x for x in sources if x), "")
            how = (f"convert the recording again with --behavior-channel {source}={name} --rectify" if source else
                   f"`neurofm convert session {dm.sessions[0].path} OUT.h5 --rectify {name}` (or --rectify {name} "
                   f"when converting the recording)")
            raise ConfigError(
                f"data.target: /behavior/{name}'s mean over a {cfg.data.segment_s:g} s segment (what the model "
                f"regresses and is scored on) keeps {kept:.2%} of its variance over the training blocks: the rest "
                f"oscillates faster than a segment (a raw EMG, accelerometer or microphone channel), so the target "
                f"would be noise around its mean. Regress its envelope: {how} (the mean absolute amplitude per "
                f"segment)")
    return v.mean(0).tolist(), std.tolist()


#: A regression target's segment means must keep at least this share of its samples' variance
#: (white noise keeps 1 / samples per segment; a grip force or an EMG envelope most of it).
SEGMENT_MEAN_MIN_VARIANCE = 0.01


def _fixed_layout_channels(cfg: RunConfig, dm) -> int:
    """Channels of the one electrode layout a token-weighting head needs (every session the same count)."""
    reader = dm.dataset("train").reader
    counts = {reader.n_channels(i) for i in range(len(session_paths(cfg.data)))}
    if len(counts) != 1:
        raise ConfigError(f"task.head: token_weighting learns one weight per channel of a fixed layout, but the "
                          f"sessions have {sorted(counts)} channels; use task.head=pooled")
    return counts.pop()


def export(task):
    from neurofm.tasks.barista import BaristaPretrainTask  # lazy: Lightning

    if isinstance(task, BaristaPretrainTask):
        return task.export_encoder()
    return task.export_model()


def load_task(checkpoint):
    from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask  # lazy: Lightning

    hp = torch.load(checkpoint, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    cls = BaristaFinetuneTask if "encoder" in hp else BaristaPretrainTask
    return cls.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)


TASK_OF_ACTION = {"classify": "classification", "regress": "regression", "reconstruct": "reconstruction"}
ACTIONS_OF_TASK = {v: k for k, v in TASK_OF_ACTION.items()}


def finetune_config(pretrained: str, sessions: list[str], *, task: str = "classify", behavior: list[str] = (),
                    events: str | None = None, label_fraction: float = 1.0, run_dir: str | None = None,
                    freeze_backbone: bool = False, overrides: list[str] = (), from_scratch: bool = False) -> RunConfig:
    """A fine-tuning run of a pretrained BaRISTA encoder on ``sessions`` (or, for ``neurofm
    evaluate``, of a fine-tuned folder: ``task`` then defaults to the folder's own).
    ``label_fraction`` < 1 (classify / regress): only the training segments whose end falls in a
    drawn ``data.label_chunk_s`` chunk are labelled (the spike side's draw), and the model, its
    start and every baseline fit those (``--from-scratch`` of the same seed: the same segments).
    ``from_scratch``: the same model shape and spatial vocabulary, randomly initialised: what
    pretraining adds."""
    meta = pretrained_config(pretrained)
    if meta.get("model_type") == "BaristaFinetuned" and task in (None, "", "decode"):
        task = ACTIONS_OF_TASK[meta["config"].get("task", "classification")]  # what the fine-tuned model does
    elif task in (None, "", "decode") and bool(events) != bool(behavior):
        # the CLI's default (Neuroformer's behaviour decoding): --events or --behavior says which
        task = "classify" if events else "regress"
        logging.getLogger("neurofm").info(f"neurofm: --task {task} (a BaRISTA model, given --"
                                          f"{'events' if events else 'behavior'})")
    kind = TASK_OF_ACTION.get(task)
    if kind is None:
        given = "" if task in (None, "", "decode") else f", got {task!r}"
        raise ConfigError(f"BaRISTA fine-tuning: --task must be classify (with --events NAME), regress (with "
                          f"--behavior NAME) or reconstruct{given}; {pretrained} is a BaRISTA model")
    if kind == "classification" and not events:
        raise ConfigError("BaRISTA classification needs --events NAME (a /events/<name> of the data)")
    if kind == "regression" and len(behavior) != 1:
        raise ConfigError("BaRISTA regression needs exactly one --behavior NAME")
    if freeze_backbone:
        raise ConfigError("BaRISTA fine-tuning does not take --freeze-backbone (the CNN is frozen by default: "
                          "task.freeze_cnn)")
    if label_fraction != 1.0 and kind == "reconstruction":
        raise ConfigError("--label-fraction: reconstruction has no labels to draw; it is for --task classify and "
                          "regress")
    base = {"family": "barista", "run_dir": run_dir or f"runs/finetune-{Path(sessions[0]).stem}",
            "data": {"sessions": list(sessions), "events": events or "", "target": behavior[0] if behavior else "",
                     "label_fraction": float(label_fraction)},
            "task": {"mode": "finetune", "finetune_task": kind, "pretrained": str(pretrained),
                     "from_scratch": bool(from_scratch)},
            "trainer": {"max_epochs": 30, "early_stopping_patience": 15}}
    return from_dict(RunConfig, base, overrides=list(overrides), where="neurofm finetune")


# -- evaluation ---------------------------------------------------------------------------------


def _probe_auroc(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """AUROC of :func:`_probe_scores` on the test labels (one-vs-rest macro for several classes)."""
    n_classes = int(max(train[1].max(), test[1].max())) + 1
    return float(auroc(test[1], _probe_scores(train, test, n_classes)))


def _probe_scores(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                  n_classes: int = 2) -> np.ndarray:
    """Ridge probe scores of the test features, fitted on the training features and labels
    (class indices): (N,) for two classes, else (N, n_classes), one-vs-rest on +-1 targets
    (:func:`_pm_one`), scored by macro AUROC."""
    # Penalty chosen by AUROC in Ridge's blocked inner CV of the training segments, as BandPowerRidge
    # chooses its own, so the probe and the band-power row are fitted alike (chosen by MSE on a
    # few dozen segments, the largest penalty wins almost always).
    (xtr, ytr), (xte, _) = train, test
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    model = Ridge(score=auroc_or_mse).fit((xtr - mu) / sd, _pm_one(ytr, n_classes))
    return _squeeze(model.predict((xte - mu) / sd))


def evaluate(cfg: RunConfig, task, dm, run_dir: Path) -> dict:
    from neurofm.tasks.barista import BaristaPretrainTask  # lazy: Lightning

    prep = from_dict(Preprocessing, cfg.model.preprocessing or {}, where="model.preprocessing")
    protocol = (f"split: {_split_source(cfg)}; {cfg.data.segment_s:g} s segments of {cfg.model.n_patches} x "
                f"{cfg.model.patch_len} samples at {cfg.model.sampling_rate:g} Hz, {prep.describe()}")
    data = {"description": "simulated region-structured iEEG (neurofm simulate ieeg)" if not cfg.data.sessions
            else "session files: " + ", ".join(Path(p).name for p in cfg.data.sessions),
            "datasets": ["neurofm-simulated-ieeg"] if not cfg.data.sessions
            else [Path(p).stem for p in cfg.data.sessions]}
    if isinstance(task, BaristaPretrainTask):
        metrics, baselines, extra, limitations = _evaluate_pretraining(cfg, task, dm)
        return {"name": Path(cfg.run_dir).name, "metrics": metrics, "baselines": baselines,
                "protocol": protocol + extra, "data": data, "limitations": limitations}
    if cfg.task.finetune_task in ("classification", "regression"):
        return _decode_evaluation(cfg, task, dm, Path(run_dir), protocol, data)
    metrics, counts = _evaluate_finetuned(cfg, task, dm)
    data.update(counts)
    return {"name": Path(cfg.run_dir).name, "metrics": metrics, "baselines": {},
            "protocol": protocol + f"; {cfg.task.finetune_task} scored on the test block", "data": data}


def _evaluate_pretraining(cfg, task, dm):
    task.model.cpu().eval()
    dm.setup("test")
    outs: dict[str, list[float]] = {"loss": [], "trivial": [], "pred_std": [], "target_std": [], "power_mse": []}
    with torch.no_grad():
        for i, batch in enumerate(progress(dm.loader("test"), "evaluation, test segments")):
            g = torch.Generator().manual_seed(1_000_003 * (i + 1))
            out = task.model.pretrain_loss(batch, generator=g)
            loss, r2 = float(out["latent_mse"]), float(out["latent_r2"])  # the latent term alone
            outs["loss"].append(loss)
            outs["trivial"].append(loss / (1.0 - r2) if r2 < 1.0 else float("nan"))  # MSE of the mean target
            outs["pred_std"].append(float(out["pred_std"]))
            outs["target_std"].append(float(out["target_std"]))
            if "power_mse" in out:  # model.power_target > 0; standardised targets: the mean scores MSE 1
                outs["power_mse"].append(float(out["power_mse"]))
    mean = {k: float(np.nanmean(v)) if v else float("nan") for k, v in outs.items()}
    metrics: dict[str, Any] = {"test_masked_latent_mse": mean["loss"],
                               "test_masked_latent_r2": 1.0 - mean["loss"] / mean["trivial"],
                               "test_pred_std": mean["pred_std"], "test_target_std": mean["target_std"]}
    if outs["power_mse"]:
        metrics["test_masked_power_r2"] = 1.0 - mean["power_mse"]
    baselines: dict[str, dict[str, float]] = {
        "mean target (the trivial predictor)": {"test_masked_latent_mse": mean["trivial"],
                                                "test_masked_latent_r2": 0.0}}
    limitations: list[str] = []
    if left_trivial_phase(metrics["test_masked_latent_r2"]) is False:
        limitations.append(
            f"Pretraining has not left its trivial phase: on the test block the predictor explains "
            f"{metrics['test_masked_latent_r2']:.1%} of the masked tokens' variance (latent R2; predicting the mean "
            f"target scores 0) and its outputs spread {metrics['test_pred_std']:.3f} against the targets' "
            f"{metrics['test_target_std']:.3f}, so the exported encoder is close to its random initialisation; "
            "pretrain for more steps (more data or epochs) and watch train/latent_r2")
    _token_power_metrics(cfg, task, dm, metrics, baselines, limitations)
    events = cfg.eval.probe_events or cfg.data.events
    extra = ""
    if events and events != "none":
        probe = datamodule(cfg, events=events, event_locked=True, segment_s=cfg.eval.probe_segment_s or None)
        probe.setup("fit")
        probe.setup("test")
        enc = task.export_encoder()
        torch.manual_seed(cfg.seed)
        rand = BaristaEncoder(enc.config)
        arms, y, test = _probe_arms(cfg, probe, {"pretrained encoder, linear probe": enc,
                                                 "random-init encoder, same probe": rand})
        ref = "pretrained encoder, linear probe"
        report, line = _shared_report(arms, y, test, task="classification", target=events, reference=ref,
                                      baseline="random-init encoder, same probe", seed=cfg.seed,
                                      segment_s=cfg.eval.probe_segment_s or cfg.data.segment_s)
        metrics["probe_auroc"], metrics["probe_auroc_ci95"] = _value_ci(report, ref)
        for name in ("random-init encoder, same probe", "ridge on band power"):
            value, ci = _value_ci(report, name)
            baselines[name] = {"probe_auroc": value, "probe_auroc_ci95": ci}
        k = np.ndim(arms[ref]) == 2 and np.shape(arms[ref])[1]
        roc = f"one-vs-rest macro ROC-AUC over {k} labels" if k else "ROC-AUC"
        left = (f", {test['left_out']} test segment(s) of labels with no training segment left out"
                if test.get("left_out") else "")
        extra = (f"; linear probe: ridge on token-mean features of event-locked segments ('{events}'), fitted on "
                 f"the training block, {roc} on the test block ({len(y)} segments{left}; 95% CIs from a bootstrap "
                 f"over {report.n_blocks} blocks of the test period{_few_blocks(report)})")
        if line is not None:
            limitations.append(
                line + _few_blocks(report) + ". The probe is a ridge on the token MEAN, which discards which channel and patch "
                "carried the response; a short pretraining (see the masked-latent loss and the steps above) may "
                "not have left its trivial phase, where the predictor outputs the mean target.")
        bp = _plain_line(report, ref, "ridge on band power", len(y)) if report.n_blocks >= 5 else None
        if bp is not None:  # under 5 blocks the line above already says no comparison is established
            limitations.append(
                bp + _few_blocks(report) + ". Band power is what the frozen encoder's features have to match for "
                "these events: fine-tuning starts its head at band power's fit (task.band_power) and keeps a "
                "later check only when it beats that start on validation.")
    return metrics, baselines, extra, limitations


#: Latent R2 (1 - masked-latent MSE / the MSE of predicting the mean target) below which a
#: pretraining run is reported as still in its trivial phase: the predictor then explains under
#: 5% of the masked tokens' variance (predicting each test batch's mean target scores 0 exactly).
#: A reporting line, not a tuned value: a run above it may still be far from what its data allow.
TRIVIAL_LATENT_R2 = 0.05


def left_trivial_phase(latent_r2: float) -> bool | None:
    """Whether a pretraining run's test latent R2 shows it left the trivial phase (None: unknown)."""
    if not np.isfinite(latent_r2):
        return None
    return bool(latent_r2 >= TRIVIAL_LATENT_R2)


#: Bands of the "token -> own band power" check: high gamma (what movement and speech decoders
#: read in iEEG) and beta (a rhythm of the same recordings, for contrast).
TOKEN_POWER_BANDS = ("high_gamma", "beta")
#: Test R2 below which a pretrained encoder's tokens are reported as not carrying their own
#: channel's band power: a read-out that explains under half of the variance of a channel's log
#: power cannot stand in for the band-power features the baselines read. A reporting rule, not a
#: tuned value.
TOKEN_POWER_R2 = 0.5
#: Segments per split the check reads (a few thousand (segment, channel) tokens: seconds on a CPU).
TOKEN_POWER_SEGMENTS = 128


def token_power_r2(train: dict, test: dict, bands: list[str]) -> dict[str, float]:
    """Does a channel's token carry that channel's own band power? Ridge (:class:`Ridge`, penalty
    by its blocked inner CV of the training pairs) from each real (segment, channel) token averaged over
    patches (``chan``, d values) to the same channel's log band power (``bp``), one band at a time,
    fitted on ``train``'s pairs, R2 on ``test``'s. ``train`` / ``test``: :func:`_segment_pass`
    outputs with ``channels=True`` and band power; ``bands`` names ``bp``'s last axis."""
    def pairs(d):
        m = d["cmask"].astype(bool)
        return d["chan"][m], d["bp"][m]  # (pairs, d), (pairs, n_bands)

    (Xtr, Ptr), (Xte, Pte) = pairs(train), pairs(test)
    return {b: float(r2_score(Pte[:, i], Ridge().fit(Xtr, Ptr[:, i]).predict(Xte)))
            for i, b in enumerate(bands)}


def token_power_check(encoders: dict, dm, sampling_rate: float,
                      max_segments: int = TOKEN_POWER_SEGMENTS) -> dict[str, dict[str, float]]:
    """:func:`token_power_r2` of each frozen encoder (name -> encoder) in the bands of
    :data:`TOKEN_POWER_BANDS` below Nyquist, on about ``max_segments`` segments of ``dm``'s
    training block (fit) and test block (score), batches taken at an even stride through each
    block. Returns name -> band -> test R2."""
    bands = BandPowerRidge(sampling_rate, {b: BANDS[b] for b in TOKEN_POWER_BANDS})  # those below Nyquist
    if not bands.bands:
        return {}
    def spread(split):  # every k-th batch, so the segments span the whole block (and every session in it)
        loader = dm.loader(split)
        try:
            k = max(1, len(loader) * (loader.batch_size or 1) // max_segments)
        except TypeError:  # a streaming loader has no length: its first batches
            k = 1
        return itertools.islice(loader, 0, None, k)

    out = {}
    for name, enc in encoders.items():
        tr = _segment_pass(spread("train"), enc.eval(), bands, channels=True, max_segments=max_segments)
        te = _segment_pass(spread("test"), enc.eval(), bands, channels=True, max_segments=max_segments)
        if not len(tr["y"]) or not len(te["y"]):
            return {}
        out[name] = token_power_r2(tr, te, list(bands.bands))
    return out


def _token_power_metrics(cfg: RunConfig, task, dm, metrics: dict, baselines: dict, limitations: list) -> None:
    """The pretraining report's "token -> own band power" rows and, when low, its LIMITATION."""
    enc = task.export_encoder()
    torch.manual_seed(cfg.seed)
    rand = BaristaEncoder(enc.config)
    r2 = token_power_check({"pretrained": enc, "random": rand}, dm, cfg.model.sampling_rate)
    if not r2:
        return
    for band, value in r2["pretrained"].items():
        metrics[f"token_own_power_r2_{band}"] = value
    baselines["random-init encoder, same read-out"] = {f"token_own_power_r2_{b}": v for b, v in r2["random"].items()}
    low = {b: v for b, v in r2["pretrained"].items() if v < TOKEN_POWER_R2}
    if low:
        shown = ", ".join(f"{b.replace('_', ' ')} {v:.2f} (random init {r2['random'][b]:.2f})" for b, v in low.items())
        m = cfg.model
        tried = m.token_scales and m.power_target > 0 and m.power_positions == "all"
        fix = ("" if tried else
               "; model.token_scales=true (the scales those LayerNorms remove, added to each token) with "
               "model.power_target=1 and model.power_positions=all (pretraining also predicts every patch's band "
               "power) is an experimental combination that on 3 simulated held-out subjects lifted this figure to "
               "0.79-0.86 and a grip-force fine-tune from about 0 to R2 0.53-0.76 (band power 0.72-0.82); either "
               "option alone did not (bench/barista_quality.py; bench/barista_token_power.py measures where the power is "
               "lost)")
        limitations.append(
            f"The tokens carry little of their own channel's band power: a ridge from a channel's token (mean over "
            f"patches) to that channel's log band power explains R2 {shown} on held-out segments, below "
            f"{TOKEN_POWER_R2:g}. Targets that live in band power (movement or speech high gamma) may then decode "
            f"worse from this encoder than from band power itself. The tokenizer z-scores each segment and "
            f"normalises every convolution's output per patch (parameter-free LayerNorm), which removes the "
            f"amplitude a band-power read-out needs{fix}")


def _trained_labels_only(train: dict, test: dict) -> tuple[dict, dict]:
    """The probe's passes restricted to the labels that have training segments (renumbered
    0..K-1 in label order): a label with none (a seizure onset that falls in the test block only)
    gets a constant one-vs-rest score, AUROC 0.5, which pulled the macro average of every arm
    toward chance. The test segments of such labels are left out; ``test["left_out"]`` counts them."""
    classes = np.unique(train["y"])
    keep = np.isin(test["y"], classes)
    if keep.all() and classes.size == int(max(train["y"].max(), test["y"].max())) + 1:
        return train, {**test, "left_out": 0}
    remap = np.full(int(max(train["y"].max(), test["y"].max())) + 1, -1, dtype=np.int64)
    remap[classes] = np.arange(classes.size)
    n = len(test["y"])
    test = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim and len(v) == n else v) for k, v in test.items()}
    return {**train, "y": remap[train["y"]]}, {**test, "y": remap[test["y"]], "left_out": int((~keep).sum())}


def _probe_arms(cfg: RunConfig, probe_dm, encoders: dict) -> tuple[dict, np.ndarray, dict]:
    """Probe scores on the test segments of each frozen encoder, and of band power, all fitted
    on the same training segments (ridge, penalty by AUROC in blocked inner CV of them)."""
    bands = BandPowerRidge(cfg.model.sampling_rate)
    arms, train, test = {}, None, None
    for name, enc in encoders.items():
        train = _segment_pass(progress(probe_dm.loader("train"), f"probe ({name}), training segments"), enc.eval(),
                              bands)
        test = _segment_pass(progress(probe_dm.loader("test"), f"probe ({name}), test segments"), enc.eval(), bands)
        train, test = _trained_labels_only(train, test)
        n_classes = int(max(train["y"].max(), test["y"].max())) + 1
        arms[name] = _probe_scores((train["feat"], train["y"]), (test["feat"], test["y"]), n_classes)
    C = max(train["bp"].shape[1], test["bp"].shape[1])
    pad = lambda b: np.pad(b, ((0, 0), (0, C - b.shape[1]), (0, 0))).reshape(len(b), -1)  # noqa: E731
    arms["ridge on band power"] = _squeeze(Ridge(score=auroc_or_mse).fit(
        pad(train["bp"]), _pm_one(train["y"], n_classes)).predict(pad(test["bp"])))
    return arms, test["y"].astype(np.int64), test


def _evaluate_finetuned(cfg, task, dm) -> tuple[dict, dict]:
    """Test-block metrics, and for classification the test segments per class label."""
    task.cpu().eval()
    dm.setup("test")
    preds, ys = [], []
    with torch.no_grad():
        for i, batch in enumerate(progress(dm.loader("test"), "evaluation, test segments")):
            _, p, y = task._loss(batch, torch.Generator().manual_seed(1_000_003 * (i + 1)))
            preds.append(p.numpy())
            ys.append(y.numpy())
    if not preds:
        return {}, {}
    p, y = np.concatenate(preds), np.concatenate(ys)
    if cfg.task.finetune_task == "classification":
        probs = torch.softmax(torch.from_numpy(p), -1).numpy()
        names = list(task.hparams.get("label_names", [])) or [str(k) for k in range(probs.shape[1])]
        counts = {"test_segments": int(len(y)),
                  "test_segments_per_class": {n: int(c) for n, c in zip(names, np.bincount(y, minlength=len(names)))}}
        return {"test_auroc": float(auroc(y, probs[:, 1] if probs.shape[1] == 2 else probs)),
                "test_accuracy": float((p.argmax(-1) == y).mean())}, counts
    return {"test_r2": float(r2_score(y, p))}, {}


# -- the decode report of a classification / regression fine-tune ------------------------------

MODEL_ARM = "BaRISTA fine-tuned"
WAVEFORM_ARM = "logistic on the evoked waveform"


def _starting_encoder(cfg: RunConfig, task):
    """The encoder this run started from, frozen: the pretrained one, or (random init / from
    scratch) a fresh one of the same shape. The linear probe reads its features.

    Returns ``(encoder, kind, source)``: ``kind`` names it in the probe arm (``pretrained``;
    ``fine-tuned`` for a fine-tuned folder, as ``neurofm evaluate`` scores one: the probe then
    reads that model's own encoder; or ``random-init``), ``source`` says where its weights came from."""
    t = cfg.task
    if t.pretrained and not t.from_scratch:

        loaded = load_pretrained(t.pretrained)
        finetuned = pretrained_config(t.pretrained).get("model_type") == "BaristaFinetuned"
        kind = "fine-tuned" if finetuned else "pretrained"
        source = f"the encoder of the {kind} model {t.pretrained}"
        return getattr(loaded, "encoder", loaded).eval(), kind, source
    torch.manual_seed(cfg.seed)
    shape = f" in the shape of {t.pretrained}" if t.pretrained else ""
    return BaristaEncoder(task.encoder.config).eval(), "random-init", f"random weights (seed {cfg.seed}){shape}"


@torch.no_grad()
def _segment_pass(loader, encoder, bands, task=None, channels: bool = False,
                  max_segments: int | None = None) -> dict[str, np.ndarray]:
    """One pass over a split: per segment its label or target (unlabelled segments: 0), start,
    session, the starting encoder's token-mean features, log band power per channel (``bands``;
    None: skipped), (``task``) the fine-tuned model's scores (classification) or predictions in
    the target's units (regression), and (``channels``) per-channel features ``chan`` (B, C, d):
    each channel's tokens averaged over patches (zero for padded channels), with ``cmask``
    (B, C) True for real channels. ``max_segments``: stop after the batch that reaches it."""
    regression = task is not None and task.hparams.task == "regression"
    out: dict[str, list] = {k: [] for k in ("y", "t0", "session", "feat", "bp", "wave", "pred", "chan", "cmask")}
    seen = 0
    for i, batch in enumerate(loader):
        if max_segments is not None and seen >= max_segments:
            break
        keep = batch["target_mask"].bool() if "target_mask" in batch else torch.ones(len(batch["x"]), dtype=torch.bool)
        seen += int(keep.sum())
        if "target" in batch:
            y = batch["target"].float().reshape(len(keep), -1)
        elif "label" in batch:
            y = batch["label"].long()
        else:  # unlabelled (pretraining) segments
            y = torch.zeros(len(keep), dtype=torch.long)
        h = encoder(batch)  # (B, n, C, d)
        m = batch["channel_mask"].float()[:, None, :, None]
        feat = (h * m).sum((1, 2)) / (m.sum((1, 2)) * h.shape[1]).clamp(min=1)  # (B, d): mean over real tokens
        if channels:
            out["chan"].append(((h * m).mean(1))[keep].numpy())  # (B, C, d)
            out["cmask"].append(batch["channel_mask"].bool()[keep].numpy())  # (B, C)
        if bands is not None:
            x = (batch["x"] * batch["channel_mask"][..., None]).numpy()
            out["bp"].append(bands.features(x).reshape(len(x), x.shape[1], -1)[keep.numpy()])  # (B, C, n_bands)
            out["wave"].append(evoked_waveform(x)[keep.numpy()])  # (B, C, WAVEFORM_BINS)
        if task is not None:
            if regression:
                mean, std = task.target_scale()
                pred = task(batch).float() * std + mean  # (B, D), the target's units
            else:
                pred = task(batch).float()  # (B, K) logits
            out["pred"].append(pred[keep].numpy())
        k = keep.numpy()
        out["y"].append(y[keep].numpy())
        out["t0"].append(batch["t0"].numpy()[k])
        out["session"].append(batch["session"].numpy()[k])
        out["feat"].append(feat[keep].numpy())
    for key in ("bp", "wave", "chan", "cmask"):  # batches of different channel counts: pad to the widest
        C = max((b.shape[1] for b in out[key]), default=0)
        out[key] = [np.pad(b, ((0, 0), (0, C - b.shape[1])) + ((0, 0),) * (b.ndim - 2)) for b in out[key]]
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def _decode_evaluation(cfg: RunConfig, task, dm, run_dir: Path, protocol: str, data: dict) -> dict:
    """Model, linear probe on the frozen starting encoder, band power and a null, all on the
    same test segments (and fitted on the same training segments), with block-bootstrap CIs
    (:func:`neurofm.report.decode_report`, also written as ``decode_report.md``) and the run's plots."""
    classify = cfg.task.finetune_task == "classification"
    task.cpu().eval()
    dm.setup("fit")
    dm.setup("test")
    encoder0, start, source = _starting_encoder(cfg, task)
    bands = BandPowerRidge(cfg.model.sampling_rate)
    train = _segment_pass(progress(dm.loader("train"), "decode report, training segments"), encoder0, bands)
    test = _segment_pass(progress(dm.loader("test"), "decode report, test segments"), encoder0, bands, task=task)
    if len(test["y"]) < 2 or len(train["y"]) < 2:
        raise ConfigError(f"{cfg.task.finetune_task}: {len(train['y'])} training and {len(test['y'])} test segments "
                          f"in {cfg.data.sessions or 'the simulated session'}; the report needs at least 2 of each "
                          f"(use a longer recording, shorter data.segment_s or other data.split fractions)")
    untrained = ""
    if classify:
        names = list(task.hparams.get("label_names", [])) or [str(k) for k in range(task.hparams.n_classes)]
        trained = np.unique(train["y"]).astype(np.int64)
        if len(trained) < len(names):  # a label with no training segment: the head learned nothing for it
            absent = [names[k] for k in range(len(names)) if k not in set(trained.tolist())]
            train, test = _trained_labels_only(train, test)
            test["pred"] = test["pred"][:, trained]  # the model's logits of the classes it was trained on
            names = [names[k] for k in trained]
            untrained = (f"label(s) {absent} of /events/{cfg.data.events} have no training segment, so no arm "
                         f"learned them: their {test['left_out']} test segment(s) are left out and every arm is "
                         f"scored on the {len(names)} trained classes ({', '.join(names)})")
            print(f"neurofm: {untrained}", file=sys.stderr)
            if len(names) < 2 or len(np.unique(test["y"])) < 2:
                raise ConfigError(f"data.labels: {untrained}, which leaves fewer than two classes to score; choose "
                                  f"labels with training and test segments (data.labels=[...]) or move the split")
    C = max(train["bp"].shape[1], test["bp"].shape[1])
    pad = lambda b: np.pad(b, ((0, 0), (0, C - b.shape[1]), (0, 0))).reshape(len(b), -1)  # noqa: E731
    bp_tr, bp_te = pad(train["bp"]), pad(test["bp"])
    probe = f"linear probe on the frozen {start} encoder"
    others = []  # baselines besides `baseline` whose verdict is a plain line too
    if classify:
        y = test["y"].astype(np.int64)
        logits = test["pred"]
        model_scores = logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits
        arms = {MODEL_ARM: model_scores,
                "logistic on band power": BandPowerLogistic(bands.sampling_rate).fit_features(
                    bp_tr, train["y"]).model.decision_function(bp_te),
                "ridge on band power": _squeeze(Ridge(score=auroc_or_mse).fit(
                    bp_tr, _pm_one(train["y"], logits.shape[1])).predict(bp_te)),
                WAVEFORM_ARM: Logistic().fit(pad(train["wave"]), train["y"]).decision_function(pad(test["wave"])),
                probe: Logistic().fit(train["feat"], train["y"]).decision_function(test["feat"]),
                "null (chance)": np.zeros(model_scores.shape)}  # several classes: (N, K), macro AUROC 0.5
        key, baseline, others = "test_auroc", "logistic on band power", [WAVEFORM_ARM]
    else:
        y = test["y"]
        arms = {MODEL_ARM: test["pred"],
                "ridge on band power": Ridge().fit(bp_tr, train["y"]).predict(bp_te),
                probe: Ridge().fit(train["feat"], train["y"]).predict(test["feat"]),
                "null (training mean)": np.broadcast_to(train["y"].mean(0), y.shape).copy()}
        key, baseline = "test_r2", "ridge on band power"
    what = f"/behavior/{cfg.data.target} (segment mean; targets standardised with the training block's mean and std)"
    if classify:
        what = f"/events/{cfg.data.events} segments by label ({', '.join(names)})"
        if len(names) > 2:
            what += f", ROC-AUC one-vs-rest per class and averaged over the {len(names)} classes (macro)"
        if BACKGROUND_LABEL in names:
            what += (f": a segment at each onset against '{BACKGROUND_LABEL}' segments on a grid with no onset within "
                     f"one segment length")
    start = dict(getattr(task, "read_out_start", None) or {})
    started = _start_line(start, baseline if start.get("features") == START_BAND_POWER else None)
    if started:
        start["summary"] = started
    notes = {probe: f"frozen features of {source}", baseline: "same segments"}
    if start.get("features"):
        notes[MODEL_ARM] = f"started at {start['features']}"
    kept = _kept_start(task, start)
    if kept:  # the report's model row is then the start's fit: say so where the row is read
        notes[MODEL_ARM] = f"{notes.get(MODEL_ARM, 'the initial weights')}; weights kept at step 0"
        started = f"{started}; {kept}" if started else kept
        if start:
            start["summary"] = started
    notes.update({name: "same segments, the model's input" for name in others})
    report, line = _shared_report(arms, y, test, task=cfg.task.finetune_task, reference=MODEL_ARM, baseline=baseline,
                                  target=cfg.data.events if classify else cfg.data.target, seed=cfg.seed,
                                  segment_s=cfg.data.segment_s, notes=notes, label_fraction=cfg.data.label_fraction,
                                  n_fitted=int(len(train["y"])), fold=fold_name(cfg.data.split))
    more = [_plain_line(report, MODEL_ARM, name, len(y)) for name in others]
    # the first thing to know: the model decodes nothing (under 5 blocks the band-power line already
    # says no comparison is established)
    if report.n_blocks >= 5 and (no_better := null_limitation(
            cfg.data.events if classify else cfg.data.target, report,
            hint="the recorded channels may not carry it (do the electrodes sample the regions that encode it?), "
                 "or the test block differs from the training block (a longer recording, or --folds 5)")):
        more.insert(0, no_better)
    metrics: dict[str, Any] = dict(zip((key, f"{key}_ci95"), _value_ci(report, MODEL_ARM)))
    baselines = {name: dict(zip((key, f"{key}_ci95"), _value_ci(report, name))) for name in arms if name != MODEL_ARM}
    if classify:
        metrics["test_accuracy"] = float((test["pred"].argmax(-1) == y).mean())
        data.update(test_segments=int(len(y)), test_segments_per_class={
            n: int(c) for n, c in zip(names, np.bincount(y, minlength=len(names)))})
    else:
        metrics["test_pearson_r"] = float(np.mean(pearson_r(y, test["pred"], multioutput="raw_values")))
        data.update(test_segments=int(len(y)), target=cfg.data.target)
    data["train_segments"] = int(len(train["y"]))
    draw = few_shot_draw(cfg)
    if draw is not None:
        data.update(label_fraction=float(cfg.data.label_fraction), label_draw=draw,
                    n_labelled_train_segments=int(len(train["y"])))
    limitations = [x for x in [line, *more, untrained] if x]
    _decode_plots(cfg, dm, run_dir, arms, y, test, report, baseline, probe, names if classify else None)
    protocol += (f"; {cfg.task.finetune_task} of {what} scored on the test block; linear probe on token-mean "
                 f"features of {source}; every arm fitted on the same "
                 f"training segments and scored on the same test segments; band power: log Welch power per channel "
                 f"and band, penalty chosen by {PENALTY_FOLDS}-fold blocked CV of the training segments"
                 + (f"; evoked waveform (classification): each channel's time course in the model's input averaged "
                    f"in {WAVEFORM_BINS} bins, logistic, penalty chosen likewise" if others else "")
                 + f"; {report.confidence:.0%} CIs "
                 f"from a bootstrap over {report.n_blocks} contiguous blocks of the test period{_few_blocks(report)}"
                 + (f"; {untrained}" if untrained else "")
                 + (f"; {_few_shot_text(cfg, draw)}" if draw is not None else
                    "; labels on every training segment (100%), for every arm"))

    if started:
        protocol += f"; {started}"
    run_dir.mkdir(parents=True, exist_ok=True)
    text = report.to_text() + (f"\n\n{started}" if started else "")
    atomic_write(run_dir / "decode_report.md", text + "\n")
    save_inputs({report.target: report}, run_dir / DECODE_INPUTS)  # what finetune --folds pools
    return {"name": Path(cfg.run_dir).name, "metrics": metrics, "baselines": baselines, "protocol": protocol,
            "data": data, "report": report.to_dict(), "limitations": limitations, **({"start": start} if start else {})}


def _kept_start(task, start: dict) -> str:
    """One plain line when fine-tuning's model selection (``task.selection``, set by
    :class:`~neurofm.tasks.callbacks.StartingPoint` after training) kept the starting state: the
    evaluated and exported weights are then step 0's, the head's starting fit (``start``), not
    trained ones; "" otherwise (a check was kept, or no selection ran)."""
    sel = getattr(task, "selection", None) or {}
    if sel.get("kept") != "start":
        return ""
    what = f"the {start['features']} fit the head started at" if start.get("features") else "the initial weights"
    return (f"model selection kept the starting state (step 0: {sel.get('why', 'no check beat it')}), so the "
            f"fine-tuned row scores {what}, not trained weights")


def _start_line(start: dict, arm: str | None) -> str:
    """One plain line: what the fine-tuned head started from (:func:`init_probe_head`), and what the
    waveform and token features added at the start; ``arm``: the report's arm the band-power start equals."""
    chosen = start.get("features")
    if not chosen:
        note = start.get("band_power_readout")
        return f"band-power read-out: {note}" if note else ""
    line = f"start: the head started at the {chosen} fit"
    if arm:
        line += f" (at step 0 the model predicts what '{arm}' predicts)"
    steps = [st for st in start.get("steps") or () if st.get("gain") is not None]
    if steps:
        line += (f"; blocked-CV {start['score']} on {start['n_segments']} training segments: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in start["cv"].items() if v is not None)
                 + "; " + _steps_text(start["steps"]))
    elif chosen == START_BAND_POWER:
        line += " (no blocked-CV comparison: too few segments)"
    for key, what in (("band_power_readout", "band-power"), ("waveform_readout", "evoked-waveform")):
        if start.get(key):
            line += f"; {what} read-out: {start[key]}"
    return line


def _shared_report(arms: dict, y: np.ndarray, test: dict, *, task: str, target: str, reference: str,
                   baseline: str, seed: int, segment_s: float, notes: dict | None = None, protocol: str = "",
                   label_fraction: float = 1.0, n_fitted: int | None = None, fold: str = ""):
    """:func:`neurofm.report.decode_report` of ``arms`` on the test segments (blocks: equal-count
    contiguous runs of the test period, :func:`neurofm.evaluation_ieeg.test_period_blocks`; the
    report's ``block_s`` is their mean length, :func:`~neurofm.evaluation_ieeg.block_span_s`, for
    segments of ``segment_s``), and its plain line about ``baseline`` (None when the reference
    beats it)."""
    blocks = test_period_blocks(test["t0"], test["session"])
    span = block_span_s(test["t0"], test["session"], blocks, segment_s)
    rep = decode_report(arms, y, blocks, task=task, target=target, reference=reference,
                        scored=f"all {len(y)} test segments, in blocks of equal segment count (their mean length)",
                        block_s=round(span, 3) if np.isfinite(span) else None,
                        notes=notes, protocol=protocol, seed=seed, label_fraction=label_fraction, n_fitted=n_fitted,
                        unit="segments", fold=fold)
    return rep, _plain_line(rep, reference, baseline, len(y))


def _few_blocks(rep) -> str:
    """``; ONLY n BLOCKS ...`` when a report's test period holds fewer blocks than a bootstrap
    interval needs to be firm (the decode report's own caveat, for the protocol and verdict lines
    a user reads first), else ``""``."""
    if rep.n_blocks >= FEW_CI_BLOCKS:
        return ""
    return (f"; ONLY {rep.n_blocks} BLOCKS (under {FEW_CI_BLOCKS}): the intervals come out too narrow, read them "
            f"as rough")


def _plain_line(rep, reference: str, baseline: str, n: int) -> str | None:
    """The report's plain line about ``baseline`` (None when ``reference`` beats it)."""
    m = rep.primary
    compared = [r.arm for r in rep.rows if r.arm != reference and m in r.diff]
    line = dict(zip(compared, rep.verdicts())).get(baseline)
    if rep.n_blocks < 5:  # too few distinct resamples for an interval to mean anything
        return (f"{reference} vs {baseline}: {rep.n_blocks} blocks of the test period are too few for a "
                f"confidence interval ({n} test segments); the comparison is not established")
    return None if line is not None and line.startswith(f"{reference} beats") else line


def _value_ci(rep, arm: str) -> tuple[float, list[float]]:
    """(point estimate, [lo, hi]) of the report's primary metric for ``arm``."""
    row, m = rep.row(arm), rep.primary
    return float(row.values[m]), [float(v) for v in row.ci[m]]


def _squeeze(scores: np.ndarray) -> np.ndarray:
    """(N, 1) scores of a binary one-vs-rest fit -> (N,)."""
    return scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 1 else scores


def _pm_one(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """+-1 one-vs-rest targets: (N, 1) for two classes, else (N, K)."""
    onehot = (np.asarray(labels)[:, None] == np.arange(n_classes)[None, :]) * 2.0 - 1.0
    return onehot[:, 1:] if n_classes == 2 else onehot


def _decode_plots(cfg: RunConfig, dm, run_dir: Path, arms: dict, y: np.ndarray, test: dict, report,
                  baseline: str, probe: str, names: list | None = None) -> None:
    """``plots/roc.png`` (classification: model, band power, evoked waveform, probe; AUROC in the legend) or
    ``plots/decoded_<target>.png`` (regression: the first test session's segments over time; with
    several sessions the title names it and says the R² is over all of them)."""
    out = run_dir / "plots"
    try:
        if cfg.task.finetune_task == "classification":
            if np.ndim(arms[MODEL_ARM]) != 1:  # several classes: one-vs-rest, the curves macro AUROC averages
                names = list(names or range(np.shape(arms[MODEL_ARM])[1]))
                curves = {f"{short} {cls!s} vs rest": roc_curve(y == k, np.asarray(arms[arm])[:, k])
                          for arm, short in ((MODEL_ARM, "model:"), (baseline, "band power:"))
                          for k, cls in enumerate(names) if 0 < (y == k).sum() < len(y)}
                plots.roc_curves(curves, title=f"Test block: {cfg.data.events} ({report.n_windows} segments), "
                                 f"one-vs-rest per class", path=out / "roc.png")
                return
            # every arm the report scores but the null: the waveform arm was left out, and on the nui12
            # trial it was the one at the ceiling (AUROC 1.000, above the model's 0.993)
            curves = {name: roc_curve(y, arms[name]) for name in (MODEL_ARM, baseline, WAVEFORM_ARM, probe)
                      if name in arms}
            # the positive class (index 1: the score is logit 1 - logit 0), which a binary ROC hides
            which = (f", {names[1]} vs {names[0]}" if names and len(names) == 2 else "")
            plots.roc_curves(curves, title=f"Test block: {cfg.data.events}{which} ({report.n_windows} segments, "
                             f"{int(np.sum(y == 1))} {names[1] if which else 'positive'})", path=out / "roc.png")
            return
        first = test["session"] == test["session"].min()
        order = np.argsort(test["t0"][first])
        seg = cfg.data.segment_s
        t = test["t0"][first][order] + seg / 2
        shown = dm.sessions[int(test["session"].min())]
        unit = shown.behavior_unit(cfg.data.target)
        n_sessions = len(np.unique(test["session"]))
        # several sessions: the trace is the first one's, the R² every session's test segments'
        where = (f" of {shown.session_id} ({int(first.sum())} of the {len(y)} test segments; R² over all "
                 f"{n_sessions} sessions)" if n_sessions > 1 else "")
        title = (f"{cfg.data.target}, test block{where}: R² = {_value_ci(report, MODEL_ARM)[0]:.3f} "
                 f"({baseline} {_value_ci(report, baseline)[0]:.3f})")
        true, pred = y[first][order], np.asarray(arms[MODEL_ARM])[first][order]
        dims = true.shape[1] if true.ndim > 1 else 1
        plots.decoding_trace(t, true, pred, names=[cfg.data.target] if dims == 1 else None, unit=unit, title=title,
                             path=out / f"decoded_{cfg.data.target}.png")
    except (ValueError, KeyError) as e:  # a plot must never cost the run its metrics
        warnings.warn(f"{run_dir}: plot not written ({e})", stacklevel=2)
