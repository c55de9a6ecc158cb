"""BaRISTA recipe: iEEG session files -> masked-latent pretraining / fine-tuning -> metrics.

Pretraining runs are evaluated by a **linear probe** on the held-out block: event-locked
segments of the training block are encoded by the frozen encoder, mean-pooled over tokens, and
a ridge classifier is fitted on them; its ROC-AUC on the test block's segments is reported
beside the same probe on a randomly initialised encoder (what pretraining adds) and ridge on
band power (DESIGN.md 8). Fine-tuning runs report ROC-AUC (classification) or R2 (regression,
reconstruction) on the test block; for classification, the report's ``data`` says how many test
segments (per class) the AUROC rests on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurofm.config import ConfigError
from neurofm.tasks.trainer import TrainerConfig
from neurofm.models.barista import BaristaConfig
from neurofm.recipes import ensure_sessions, session_paths

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
    train: float = 0.7
    valid: float = 0.1
    test: float = 0.2
    gap: float = 2.0


@dataclass
class IEEGDataConfig:
    sessions: list[str] = field(default_factory=list)  # empty: the simulated demo
    simulate: SimulateIEEGConfig = field(default_factory=SimulateIEEGConfig)
    segment_s: float = 3.0
    n_patches: int = 12
    sampling_rate: float = 0.0  # resample to this rate first (0 = keep the file's)
    line_noise: float = 0.0  # notch at 50/60 Hz harmonics (0 = off)
    laplacian: bool = False
    drop_non_grey: bool = False
    stride_s: float = 0.0  # between pretraining segments (0 = segment_s)
    events: str = ""  # /events/<name> for classification (and the pretraining probe)
    target: str = ""  # /behavior/<name> for regression
    batch_size: int = 8
    num_workers: int = 0
    streaming: bool = False
    split: IEEGSplitConfig = field(default_factory=IEEGSplitConfig)


@dataclass
class BaristaTaskConfig:
    mode: str = "pretrain"  # pretrain | finetune
    finetune_task: str = "classification"  # classification | regression | reconstruction
    pretrained: str = ""  # encoder folder to start from ("" with mode=finetune: random init)
    head: str = "pooled"  # pooled | token_weighting (one fixed layout)
    lr: float = 1e-3  # pretraining
    weight_decay: float = 1e-2
    warmup_epochs: int = 5
    ema_epochs: int = 10
    lr_backbone: float = 1e-4  # fine-tuning
    lr_head: float = 1e-3
    freeze_cnn: bool = True


@dataclass
class BaristaEvalConfig:
    probe_events: str = ""  # events for the pretraining linear probe ("" = data.events; none = skip)
    probe_segment_s: float = 0.0  # 0 = data.segment_s


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


def prepare(cfg: RunConfig) -> RunConfig:
    """Simulate the demo once; size the model's patches to the data; take a pretrained shape."""
    from neurofm.data.session import Session

    sim = cfg.data.simulate

    def simulate():
        from neurofm.data.synthetic import simulate_ieeg

        simulate_ieeg(sim.path, n_channels=sim.n_channels, duration=sim.duration, sampling_rate=sim.sampling_rate,
                      n_regions=sim.n_regions, seed=sim.seed)

    ensure_sessions(cfg.data, convert_hint="neurofm convert ieeg IN OUT.h5 --electrodes electrodes.tsv",
                    simulate=simulate, what=f"iEEG session ({sim.n_channels} channels, {sim.duration:.0f} s)")
    _warn_unnotched_simulation(cfg)
    if cfg.task.pretrained:
        from neurofm.config import from_dict
        from neurofm.hub import pretrained_config

        meta = pretrained_config(cfg.task.pretrained)
        enc = meta["config"].get("encoder", meta["config"])
        model = from_dict(BaristaConfig, enc, where=f"{cfg.task.pretrained}/config.json")
        return dataclasses.replace(cfg, model=model)
    with Session(session_paths(cfg.data)[0]) as s:
        rate = cfg.data.sampling_rate or s.sampling_rate
    samples = cfg.data.segment_s * rate
    patch = samples / cfg.data.n_patches
    if abs(patch - round(patch)) > 1e-6:
        raise ConfigError(f"data.segment_s: {cfg.data.segment_s} s at {rate} Hz is {samples:g} samples, which do not "
                          f"split into {cfg.data.n_patches} patches; change segment_s or n_patches, or resample "
                          f"with data.sampling_rate")
    model = dataclasses.replace(cfg.model, patch_len=int(round(patch)), n_patches=cfg.data.n_patches,
                                sampling_rate=float(rate))
    return dataclasses.replace(cfg, model=model)


def _warn_unnotched_simulation(cfg: RunConfig) -> None:
    """Warn when a simulated session's line noise reaches the model un-notched.

    ``simulate_ieeg`` adds mains (60 Hz by default) with a channel-specific amplitude and phase,
    as real recordings have, and the paper notches it (DESIGN.md 10). Left in, it is part of
    what the CNN tokenizer makes of every patch, so of every masked-latent pretraining target:
    on the demo layout a grey-matter contact's token under the random initial tokenizer is then
    no better predicted from its shaft neighbours' tokens than by their mean (linear R2 about
    -0.04, against 0.19 notched and 0.9 for the raw patches).
    """
    import json
    import warnings

    from neurofm.data.session import Session

    if cfg.data.line_noise:
        return
    for path in session_paths(cfg.data):
        with Session(path) as s:
            if s.attrs.get("generator") != "neurofm.data.synthetic.simulate_ieeg":
                continue
            try:
                line = json.loads(s.attrs.get("generator_params", "{}")).get("line_noise")
            except (TypeError, ValueError):
                continue
        if line:
            warnings.warn(f"{path}: simulated with {line:g} Hz line noise, but data.line_noise is off; set "
                          f"data.line_noise={line:g} to notch it as the paper's preprocessing does (un-notched, "
                          "each channel's mains is part of every pretraining target)", stacklevel=3)
            return


def _segmenter(cfg: RunConfig, segment_s: float | None = None):
    from neurofm.data.segmenter import IEEGSegmenter

    d = cfg.data
    return IEEGSegmenter(segment_s or d.segment_s, d.n_patches, sampling_rate=d.sampling_rate or None,
                         line_noise=d.line_noise or None, laplacian=d.laplacian, drop_non_grey=d.drop_non_grey)


def _splits(cfg: RunConfig):
    from neurofm.data.splits import TimeBlockSplit

    s = cfg.data.split
    return TimeBlockSplit({"train": s.train, "valid": s.valid, "test": s.test}, gap=s.gap)


def datamodule(cfg: RunConfig, *, events: str | None = None, event_locked: bool | None = None,
               segment_s: float | None = None):
    """Pretraining: segments on a grid. Classification: segments starting at each event."""
    from neurofm.data.datamodule import IEEGDataModule

    d = cfg.data
    finetune = cfg.task.mode == "finetune"
    events = events if events is not None else (d.events if finetune and cfg.task.finetune_task == "classification"
                                                else "")
    locked = bool(events) if event_locked is None else event_locked
    vocab = "auto"
    if cfg.model.spatial_vocab is not None:
        from neurofm.atlas import SpatialVocab

        vocab = SpatialVocab.from_dict(cfg.model.spatial_vocab)
    return IEEGDataModule(
        session_paths(cfg.data), _segmenter(cfg, segment_s), spatial_vocab=vocab, spatial_scale=None,
        events=events or None, event_locked=locked,
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
    from neurofm.models.barista import BaristaEncoder
    from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask

    t = cfg.task
    if t.mode == "pretrain":
        return BaristaPretrainTask(_sized_config(cfg, dm), lr=t.lr, weight_decay=t.weight_decay,
                                   warmup_epochs=t.warmup_epochs, ema_epochs=t.ema_epochs)
    if t.mode != "finetune":
        raise ConfigError(f"task.mode: {t.mode!r} is not 'pretrain' or 'finetune'")
    if t.pretrained:
        from neurofm.hub import load_pretrained

        loaded = load_pretrained(t.pretrained)
        encoder = getattr(loaded, "encoder", loaded).train()  # from_pretrained returns eval mode: dropout on
        if not isinstance(encoder, BaristaEncoder):
            raise ConfigError(f"task.pretrained: {t.pretrained} holds a {type(loaded).__name__}, not a BaRISTA encoder")
    else:
        encoder = BaristaEncoder(_sized_config(cfg, dm))  # the paper's random-init baseline
    n_classes, target_dim, label_map, n_channels = 2, 1, {}, None
    if t.finetune_task == "classification":
        dm.setup("fit")
        label_map = getattr(getattr(dm.datasets["train"], "reader", None), "label_map", None) or {}
        n_classes = max(2, len(label_map))
    elif t.finetune_task == "regression":
        from neurofm.data.session import Session

        with Session(session_paths(cfg.data)[0]) as s:
            _, v = s.behavior(cfg.data.target)
        target_dim = int(np.prod(v.shape[1:])) if v.ndim > 1 else 1
    if t.head == "token_weighting" and t.finetune_task != "reconstruction":
        n_channels = _fixed_layout_channels(cfg, dm)
    task = BaristaFinetuneTask(encoder, task=t.finetune_task, n_classes=n_classes, target_dim=target_dim, head=t.head,
                               n_channels=n_channels, freeze_cnn=t.freeze_cnn, lr_backbone=t.lr_backbone,
                               lr_head=t.lr_head, early_stopping_patience=None,
                               label_names=[name for name, _ in sorted(label_map.items(), key=lambda kv: kv[1])])
    return task


def _fixed_layout_channels(cfg: RunConfig, dm) -> int:
    """Channels of the one electrode layout a token-weighting head needs (every session the same count)."""
    dm.setup("fit")
    reader = dm.datasets["train"].reader
    counts = {reader.n_channels(i) for i in range(len(session_paths(cfg.data)))}
    if len(counts) != 1:
        raise ConfigError(f"task.head: token_weighting learns one weight per channel of a fixed layout, but the "
                          f"sessions have {sorted(counts)} channels; use task.head=pooled")
    return counts.pop()


def export(task):
    from neurofm.tasks.barista import BaristaPretrainTask

    if isinstance(task, BaristaPretrainTask):
        return task.export_encoder()
    return task.export_model()


def load_task(checkpoint):
    from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask

    hp = torch.load(checkpoint, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    cls = BaristaFinetuneTask if "encoder" in hp else BaristaPretrainTask
    return cls.load_from_checkpoint(checkpoint, map_location="cpu")


def finetune_config(pretrained: str, sessions: list[str], *, task: str = "classify", behavior: list[str] = (),
                    events: str | None = None, label_fraction: float = 1.0, run_dir: str | None = None,
                    freeze_backbone: bool = False, overrides: list[str] = ()) -> RunConfig:
    """A fine-tuning run of a pretrained BaRISTA encoder on ``sessions``."""
    from neurofm.config import from_dict

    kind = {"classify": "classification", "regress": "regression", "reconstruct": "reconstruction"}.get(task)
    if kind is None:
        raise ConfigError(f"BaRISTA fine-tuning: --task must be classify, regress or reconstruct, got {task!r}")
    if kind == "classification" and not events:
        raise ConfigError("BaRISTA classification needs --events NAME (a /events/<name> of the data)")
    if kind == "regression" and len(behavior) != 1:
        raise ConfigError("BaRISTA regression needs exactly one --behavior NAME")
    if label_fraction != 1.0 or freeze_backbone:
        raise ConfigError("BaRISTA fine-tuning does not take --label-fraction or --freeze-backbone (the CNN is "
                          "frozen by default: task.freeze_cnn)")
    base = {"family": "barista", "run_dir": run_dir or f"runs/finetune-{Path(sessions[0]).stem}",
            "data": {"sessions": list(sessions), "events": events or "", "target": behavior[0] if behavior else ""},
            "task": {"mode": "finetune", "finetune_task": kind, "pretrained": str(pretrained)},
            "trainer": {"max_epochs": 30, "early_stopping_patience": 15}}
    return from_dict(RunConfig, base, overrides=list(overrides), where="neurofm finetune")


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def _pooled_features(encoder, loader) -> tuple[np.ndarray, np.ndarray]:
    """Mean over real tokens of the encoder output, (N, d), and the segment labels (N,)."""
    encoder.eval()
    feats, labels = [], []
    for batch in loader:
        h = encoder(batch)  # (B, n, C, d)
        m = batch["channel_mask"].float()[:, None, :, None]
        feats.append(((h * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)).float().numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _probe_auroc(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    from neurofm.baselines import Ridge
    from neurofm.metrics import auroc

    def score(y, p):  # y, p (n, 1); one class only in the inner block: fall back to MSE
        try:
            return float(auroc((y[:, 0] > 0.5).astype(int), p[:, 0]))
        except ValueError:
            return -float(np.mean((y - p) ** 2))

    # Penalty chosen by AUROC on the last 20% of the training segments, as BandPowerRidge
    # chooses its own, so the probe and the band-power row are fitted alike (chosen by MSE on a
    # few dozen segments, the largest penalty wins almost always).
    (xtr, ytr), (xte, yte) = train, test
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    model = Ridge(score=score).fit((xtr - mu) / sd, ytr.astype(float))
    return float(auroc(yte, model.predict((xte - mu) / sd).ravel()))


def evaluate(cfg: RunConfig, task, dm, run_dir: Path) -> dict:
    from neurofm.tasks.barista import BaristaPretrainTask

    s = cfg.data.split
    protocol = (f"contiguous time blocks (train {s.train:.0%} / valid {s.valid:.0%} / test {s.test:.0%}, {s.gap} s "
                f"gaps); {cfg.data.segment_s} s segments of {cfg.model.n_patches} x {cfg.model.patch_len} samples, "
                f"z-scored per channel per segment")
    data = {"description": "simulated region-structured iEEG (neurofm simulate ieeg)" if not cfg.data.sessions
            else "session files: " + ", ".join(Path(p).name for p in cfg.data.sessions),
            "datasets": ["neurofm-simulated-ieeg"] if not cfg.data.sessions
            else [Path(p).stem for p in cfg.data.sessions]}
    if isinstance(task, BaristaPretrainTask):
        metrics, baselines, extra = _evaluate_pretraining(cfg, task, dm)
        return {"name": Path(cfg.run_dir).name, "metrics": metrics, "baselines": baselines,
                "protocol": protocol + extra, "data": data}
    metrics, counts = _evaluate_finetuned(cfg, task, dm)
    data.update(counts)  # how many test events the AUROC rests on (its standard error)
    baselines = {}
    if cfg.task.finetune_task == "classification":  # DESIGN.md 8: ridge on band power, same test segments
        baselines["ridge on band power"] = {"test_auroc": _band_power_auroc(dm, cfg)}
    return {"name": Path(cfg.run_dir).name, "metrics": metrics, "baselines": baselines,
            "protocol": protocol + f"; {cfg.task.finetune_task} scored on the test block", "data": data}


def _evaluate_pretraining(cfg, task, dm):
    from neurofm.models.barista import BaristaEncoder

    task.model.cpu().eval()
    dm.setup("test")
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(dm._loader("test", train=False)):
            g = torch.Generator().manual_seed(1_000_003 * (i + 1))
            losses.append(float(task.model.pretrain_loss(batch, generator=g)["loss"]))
    metrics: dict[str, Any] = {"test_masked_latent_mse": float(np.mean(losses)) if losses else float("nan")}
    baselines: dict[str, dict[str, float]] = {}
    events = cfg.eval.probe_events or cfg.data.events
    extra = ""
    if events and events != "none":
        probe = datamodule(cfg, events=events, event_locked=True, segment_s=cfg.eval.probe_segment_s or None)
        probe.setup("fit")
        probe.setup("test")
        train_loader, test_loader = probe._loader("train", train=False), probe._loader("test", train=False)
        enc = task.export_encoder()
        metrics["probe_auroc"] = _probe_auroc(_pooled_features(enc, train_loader), _pooled_features(enc, test_loader))
        torch.manual_seed(cfg.seed)
        rand = BaristaEncoder(enc.config)
        baselines["random-init encoder, same probe"] = {
            "probe_auroc": _probe_auroc(_pooled_features(rand, train_loader), _pooled_features(rand, test_loader))}
        baselines["ridge on band power"] = {"probe_auroc": _band_power_auroc(probe, cfg)}
        extra = (f"; linear probe: ridge on token-mean features of event-locked segments ('{events}'), fitted on "
                 f"the training block, ROC-AUC on the test block")
    return metrics, baselines, extra


def _band_power_auroc(dm, cfg) -> float:
    from neurofm.baselines import BandPowerRidge
    from neurofm.metrics import auroc

    def xy(split):
        xs, ys = [], []
        for b in dm._loader(split, train=False):
            xs.append((b["x"] * b["channel_mask"][..., None]).numpy())
            ys.append(b["label"].numpy())
        c = max(x.shape[1] for x in xs)
        xs = [np.pad(x, ((0, 0), (0, c - x.shape[1]), (0, 0))) for x in xs]
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = xy("train")
    xte, yte = xy("test")
    model = BandPowerRidge(cfg.model.sampling_rate).fit(xtr, ytr)
    return float(auroc(yte, model.decision_function(xte)))


def _evaluate_finetuned(cfg, task, dm) -> tuple[dict, dict]:
    """Test-block metrics, and for classification the test segments per class label."""
    from neurofm.metrics import auroc, r2_score

    task.cpu().eval()
    dm.setup("test")
    preds, ys = [], []
    with torch.no_grad():
        for i, batch in enumerate(dm._loader("test", train=False)):
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
