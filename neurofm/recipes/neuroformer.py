"""Neuroformer recipe: spike session files -> pretraining / behaviour fine-tuning -> metrics.

Evaluation (all on the test block of the same time-block split, with a gap):

* next-spike **ID bits/spike**: the model's log-likelihood of each held-out spike's unit ID
  minus that of a unigram null (each unit's share of the training spikes), in bits per spike.
  Positive means the model predicts which neuron fires next better than its firing rate does.
* **window F1** of generated spikes (teacher-forced past, top-p 0.95, DESIGN.md 9) against the
  recorded ID sets, beside a mean-rate Poisson generator with the training rates.
* **behaviour decoding** R2 / Pearson r of each regression target from the model's pooled
  head, beside ridge regression on the same windows' spike counts (current + previous
  window per unit), fitted on the training windows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from neurofm.config import ConfigError
from neurofm.experiment import TrainerConfig
from neurofm.models.neuroformer import N_SPECIAL, Neuroformer, NeuroformerConfig

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
    """Contiguous time blocks per session, in this order, separated by ``gap`` seconds."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1
    gap: float = 1.0


@dataclass
class SpikeDataConfig:
    sessions: list[str] = field(default_factory=list)  # session files; empty: the simulated demo
    simulate: SimulateSpikesConfig = field(default_factory=SimulateSpikesConfig)
    behavior: list[str] = field(default_factory=list)  # behaviour variables read per window
    stride: float = 0.0  # seconds between windows; 0 = window.curr (non-overlapping)
    batch_size: int = 32
    num_workers: int = 0
    streaming: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    label_fraction: float = 1.0  # fine-tuning: fraction of training windows whose behaviour is labelled
    label_chunk_s: float = 10.0  # labelled windows come in contiguous chunks of this length


@dataclass
class NeuroformerTaskConfig:
    mode: str = "pretrain"  # pretrain | finetune
    objectives: list[str] = field(default_factory=list)  # empty: all (pretrain) or behaviour (finetune)
    pretrained: str = ""  # folder (or Hub id) to start from
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    final_lr_ratio: float = 0.1
    freeze_backbone: bool = False
    unfreeze_every: int = 0  # with freeze_backbone: release one more stage every N epochs (0 = never)
    trainable: list[str] = field(default_factory=list)  # parameter prefixes kept trainable when frozen


@dataclass
class NeuroformerEvalConfig:
    generate_windows: int = 256  # test windows to generate for window F1 (0 = skip generation)
    top_p: float = 0.95
    raster_seconds: float = 5.0
    seed: int = 0


@dataclass
class RunConfig:
    family: str = "neuroformer"
    run_dir: str = "runs/neuroformer-demo"
    seed: int = 0
    resume: str = "auto"  # auto | none | path to a .ckpt
    data: SpikeDataConfig = field(default_factory=SpikeDataConfig)
    model: NeuroformerConfig = field(default_factory=NeuroformerConfig)
    task: NeuroformerTaskConfig = field(default_factory=NeuroformerTaskConfig)
    eval: NeuroformerEvalConfig = field(default_factory=NeuroformerEvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# -- data ---------------------------------------------------------------------------------------


def session_paths(cfg: RunConfig) -> list[str]:
    return list(cfg.data.sessions) or [cfg.data.simulate.path]


def prepare(cfg: RunConfig) -> RunConfig:
    """Resolve what the config leaves to the data: the simulated demo session (written once)
    and, when fine-tuning, the pretrained model's shape (windows, dt, blocks come from it)."""
    if cfg.task.pretrained:
        cfg = dataclasses.replace(cfg, model=_pretrained_model_config(cfg))
    if cfg.data.sessions:
        missing = [p for p in cfg.data.sessions if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"data.sessions: {missing[0]} does not exist (convert a recording with "
                                    f"`neurofm convert nwb IN.nwb OUT.h5`)")
        return cfg
    sim = cfg.data.simulate
    if not Path(sim.path).exists():
        from neurofm.data.synthetic import simulate_spikes

        print(f"neurofm: simulating the demo session ({sim.n_units} units, {sim.duration:.0f} s) -> {sim.path}")
        simulate_spikes(sim.path, n_units=sim.n_units, duration=sim.duration, seed=sim.seed, stimulus=sim.stimulus)
    return cfg


def _pretrained_model_config(cfg: RunConfig) -> NeuroformerConfig:
    """The checkpoint's model config, plus the behaviour targets this run adds."""
    from neurofm.config import from_dict
    from neurofm.hub import pretrained_config

    model = from_dict(NeuroformerConfig, pretrained_config(cfg.task.pretrained)["config"],
                      where=f"{cfg.task.pretrained}/config.json")
    have = {v.name for v in model.behavior}
    extra = [v for v in cfg.model.behavior if v.name not in have]
    return dataclasses.replace(model, behavior=[*model.behavior, *extra])


def finetune_config(pretrained: str, sessions: list[str], *, behavior: list[str], task: str = "decode",
                    events: str | None = None, label_fraction: float = 1.0, run_dir: str | None = None,
                    freeze_backbone: bool = False, overrides: list[str] = ()) -> RunConfig:
    """A fine-tuning run: decode ``behavior`` from ``sessions`` starting at ``pretrained``."""
    if task != "decode" or events:
        raise ConfigError(f"Neuroformer fine-tuning decodes behaviour (--task decode --behavior NAME); "
                          f"got --task {task}{' --events ' + events if events else ''}")
    if not behavior:
        raise ConfigError("Neuroformer fine-tuning needs --behavior NAME [NAME ...] (a /behavior/<name> of the data)")
    from neurofm.config import from_dict
    from neurofm.data.session import Session
    from neurofm.models.neuroformer import BehaviorVariable

    with Session(sessions[0]) as s:
        dims = {}
        for name in behavior:
            _, v = s.behavior(name, s.t_start, s.t_start + 1.0)
            dims[name] = int(np.prod(v.shape[1:])) if v.ndim > 1 else 1
    base = {
        "family": "neuroformer",
        "run_dir": run_dir or f"runs/finetune-{Path(sessions[0]).stem}",
        "data": {"sessions": list(sessions), "behavior": list(behavior), "label_fraction": label_fraction,
                 "split": {"gap": 5.0}},
        "task": {"mode": "finetune", "pretrained": str(pretrained), "objectives": ["behavior"], "lr": 3e-4,
                 "freeze_backbone": freeze_backbone},
        "eval": {"generate_windows": 0},
        "trainer": {"max_epochs": 10, "early_stopping_patience": 3},
        "model": {"behavior": [{"name": n, "dim": dims[n], "task": "regression", "target": True} for n in behavior]},
    }
    return from_dict(RunConfig, base, overrides=list(overrides), where="neurofm finetune")


def datamodule(cfg: RunConfig):
    """The spike data module; its tokenizer follows the model config (windows, dt, blocks).

    Fine-tuning from ``task.pretrained`` starts from the checkpoint's unit vocabulary and
    appends the units it has never seen, so known units keep their token (and embedding row).
    """
    from neurofm.data.datamodule import SpikeDataModule
    from neurofm.data.splits import TimeBlockSplit
    from neurofm.data.tokenizer import UnitVocab

    m, d = cfg.model, cfg.data
    vocab = None
    if cfg.task.pretrained:
        from neurofm.hub import pretrained_config

        pre = pretrained_config(cfg.task.pretrained)["config"]
        if not pre.get("units"):
            raise ConfigError(f"task.pretrained: {cfg.task.pretrained} does not name its units; it cannot be "
                              f"matched to new recordings")
        vocab = UnitVocab(pre["units"])
    split = TimeBlockSplit({"train": d.split.train, "valid": d.split.valid, "test": d.split.test}, gap=d.split.gap)
    return SpikeDataModule(
        session_paths(cfg), window_curr=m.window.curr, window_prev=m.window.prev, dt=m.window.dt,
        block_size=m.block_size.id, block_size_prev=m.block_size.prev_id, vocab=vocab,
        extend_vocab=vocab is not None, splits=split, stride=d.stride or None, behavior=d.behavior,
        stimulus="gratings" if m.stimulus is not None else None,
        stimulus_frames=m.stimulus.n_frames if m.stimulus is not None else 3,
        batch_size=d.batch_size, num_workers=d.num_workers, streaming=d.streaming, seed=cfg.seed)


def _behavior_stats(dm, names: list[str]) -> dict[str, tuple[list[float], list[float]]]:
    """Mean and std of each behaviour target over the training windows (for standardising)."""
    from neurofm.data.datasets import behavior_features

    stats = {}
    for name in names:
        values = []
        for s in dm.sessions:
            ts, v = s.behavior(name)
            values.append(np.asarray(v, dtype=np.float64).reshape(len(ts), -1))
        v = np.concatenate(values)
        std = v.std(0)
        stats[name] = (v.mean(0).tolist(), np.where(std > 0, std, 1.0).tolist())
    return stats


def build_model(cfg: RunConfig, dm) -> Neuroformer:
    """A fresh model sized to the data module's vocabulary, or the pretrained one extended to it."""
    if cfg.task.pretrained:
        from neurofm.hub import load_pretrained

        model = load_pretrained(cfg.task.pretrained)
        if not isinstance(model, Neuroformer):
            raise ConfigError(f"task.pretrained: {cfg.task.pretrained} holds a {type(model).__name__}, "
                              f"not a Neuroformer")
        new = dm.vocab.units[model.config.n_units:]
        if new:
            print(f"neurofm: {len(new)} units not in the checkpoint get new embedding rows")
            model.extend_vocab(len(new), names=new if model.config.units else None)
        _add_behavior_heads(model, cfg)
        return model
    config = dataclasses.replace(cfg.model, n_units=dm.vocab.n_units, units=list(dm.vocab.units))
    return Neuroformer(config)


def _add_behavior_heads(model: Neuroformer, cfg: RunConfig) -> None:
    """Fine-tuning: give a pretrained model the behaviour heads the run config asks for."""
    wanted = {v.name: v for v in cfg.model.behavior}
    have = {v.name for v in model.config.behavior}
    if set(wanted) - have:
        model.add_behavior([wanted[n] for n in wanted if n not in have])


def task(cfg: RunConfig, dm):
    from neurofm.tasks.neuroformer import NeuroformerTask

    if cfg.task.mode not in ("pretrain", "finetune"):
        raise ConfigError(f"task.mode: {cfg.task.mode!r} is not 'pretrain' or 'finetune'")
    model = build_model(cfg, dm)
    if model.config.behavior:
        stats = _behavior_stats(dm, [v.name for v in model.config.behavior])
        model.set_behavior_stats(stats)
    t = cfg.task
    module = NeuroformerTask(
        model=model, mode=t.mode, objectives=t.objectives or None, lr=t.lr, weight_decay=t.weight_decay,
        warmup_fraction=t.warmup_fraction, final_lr_ratio=t.final_lr_ratio, freeze_backbone=t.freeze_backbone,
        unfreeze_every=t.unfreeze_every or None, trainable=t.trainable, label_fraction=cfg.data.label_fraction,
        label_chunk_s=cfg.data.label_chunk_s, label_seed=cfg.seed)
    return module


def export(task) -> Neuroformer:
    return task.model


def load_task(checkpoint):
    from neurofm.tasks.neuroformer import NeuroformerTask

    return NeuroformerTask.load_from_checkpoint(checkpoint, map_location="cpu")


@torch.no_grad()
def generate_session(pretrained, session_path, out_path, *, mode: str = "teacher_forced", start: float | None = None,
                     seconds: float = 10.0, top_p: float = 0.95, seed: int = 0, plot: bool = True) -> Path:
    """Generate ``seconds`` of spikes window by window and write them as a session file.

    Teacher-forced: every window reads the recording's true previous window. Free-running:
    only the first window does; after that the model reads its own output. Writes a
    recorded-vs-generated raster beside ``out_path`` (``.png``) unless ``plot=False``.
    """
    from neurofm.data.session import Session
    from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab
    from neurofm.hub import load_pretrained

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
    out = gen.to_session(out_path, names, session_id=f"{session_id}-generated-{mode}",
                         source=f"neurofm generate {pretrained} ({mode})")
    if plot:
        from neurofm import plots

        with Session(session_path) as s:
            rt, ru = s.spikes(t0, float(ends[-1]))
        gt, gu = gen.spikes()
        # map recorded unit indices onto the model's unit order for a shared y axis
        order = {name: i for i, name in enumerate(names)}
        ru_model = np.array([order.get(unit_ids[u], -1) for u in ru], dtype=np.int64)
        keep = ru_model >= 0
        plots.raster_compare(rt[keep], ru_model[keep], gt, gu, t0, float(ends[-1]), n_units=len(names),
                             title=f"Recorded vs generated ({mode.replace('_', '-')})",
                             path=Path(out_path).with_suffix(".png"))
    return out


# -- evaluation ---------------------------------------------------------------------------------


@torch.no_grad()
def _collect(model: Neuroformer, loader, keep_windows: int = 0) -> dict[str, Any]:
    """Run the model over a loader: per-spike log-probs of the true next ID, behaviour
    predictions, window spike counts for the ridge baseline, and the first batches covering
    ``keep_windows`` windows (for generation)."""
    model.eval()
    n_units = model.config.n_units
    logp_id, target_ids, counts, beh_pred, beh_true, beh_mask, batches = [], [], [], {}, {}, {}, []
    for batch in loader:
        out = model(batch)
        n = out["id_logits"].shape[1]
        tid = batch["target_id"][:, :n]
        lp = torch.log_softmax(out["id_logits"].float(), -1).gather(-1, tid.clamp(min=0)[..., None])[..., 0]
        spike = tid >= N_SPECIAL
        logp_id.append(lp[spike].numpy())
        target_ids.append((tid[spike] - N_SPECIAL).numpy())
        counts.append(_window_counts(batch, n_units))
        for name, pred in out.get("behavior", {}).items():
            beh_pred.setdefault(name, []).append(pred.float().numpy())
            beh_true.setdefault(name, []).append(batch["behavior"][name].reshape(len(pred), -1).numpy())
            beh_mask.setdefault(name, []).append(batch["behavior_mask"][name].numpy())
        if sum(len(b["interval"]) for b in batches) < keep_windows:
            batches.append(batch)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return {"logp_id": cat(logp_id), "target_ids": cat(target_ids).astype(np.int64), "counts": np.concatenate(counts),
            "beh_pred": {k: np.concatenate(v) for k, v in beh_pred.items()},
            "beh_true": {k: np.concatenate(v) for k, v in beh_true.items()},
            "beh_mask": {k: np.concatenate(v).astype(bool) for k, v in beh_mask.items()},
            "batches": batches}


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


def _id_bits_per_spike(logp: np.ndarray, target_ids: np.ndarray, train_counts: np.ndarray) -> float:
    """Mean log2-likelihood gain per held-out spike over the unigram (firing-rate) null."""
    if len(target_ids) == 0:
        return float("nan")
    p = (train_counts + 0.5) / (train_counts + 0.5).sum()
    return float((logp - np.log(p[target_ids])).sum() / (len(target_ids) * math.log(2)))


def evaluate(cfg: RunConfig, task, dm, run_dir: Path) -> dict:
    from neurofm import metrics as M
    from neurofm.baselines import Ridge

    model = task.model.cpu().eval()
    n_units = model.config.n_units
    dm.setup("fit")
    dm.setup("test")
    train = _collect(model, dm._loader("train", train=False))
    test = _collect(model, dm._loader("test", train=False), keep_windows=cfg.eval.generate_windows)
    train_unit_counts = np.bincount(train["target_ids"], minlength=n_units).astype(np.float64)
    results: dict[str, Any] = {"id_bits_per_spike": _id_bits_per_spike(test["logp_id"], test["target_ids"],
                                                                       train_unit_counts)}
    baselines: dict[str, dict[str, float]] = {"unigram (firing-rate) null": {"id_bits_per_spike": 0.0}}

    # behaviour decoding vs ridge on the same windows' counts
    for name, pred in test["beh_pred"].items():
        m = test["beh_mask"][name]
        if m.sum() < 2:
            continue
        y = test["beh_true"][name][m]
        results[f"{name}_r2"] = float(M.r2_score(y, pred[m]))
        results[f"{name}_pearson_r"] = float(np.mean(M.pearson_r(y, pred[m], multioutput="raw_values")))
        mt = train["beh_mask"][name]
        ridge = Ridge().fit(train["counts"][mt], train["beh_true"][name][mt])
        ridge_pred = ridge.predict(test["counts"][m])
        baselines.setdefault("ridge on window counts", {})[f"{name}_r2"] = float(M.r2_score(y, ridge_pred))
        baselines["ridge on window counts"][f"{name}_pearson_r"] = float(
            np.mean(M.pearson_r(y, ridge_pred, multioutput="raw_values")))

    # generation: window F1 vs a mean-rate Poisson generator
    if cfg.eval.generate_windows > 0:
        gen_metrics, gen_base = _generation_metrics(cfg, model, test["batches"], train_unit_counts, dm, run_dir)
        results.update(gen_metrics)
        for k, v in gen_base.items():
            baselines.setdefault("mean-rate Poisson generator", {})[k] = v

    for name in test["beh_pred"]:
        _decoding_plot(name, test, run_dir)
    d, s = cfg.data, cfg.data.split
    return {
        "name": f"neuroformer-{Path(cfg.run_dir).name}",
        "metrics": results,
        "baselines": baselines,
        "protocol": (f"contiguous time blocks per session (train {s.train:.0%} / valid {s.valid:.0%} / test "
                     f"{s.test:.0%}, {s.gap} s gaps); windows of {cfg.model.window.curr * 1e3:.0f} ms "
                     f"(previous {cfg.model.window.prev * 1e3:.0f} ms, dt {cfg.model.window.dt * 1e3:.0f} ms); "
                     f"all metrics on the test block; baselines fitted on the training block"),
        "data": {"description": "simulated recurrent spiking network (neurofm simulate spikes)" if not d.sessions
                 else "session files: " + ", ".join(Path(p).name for p in d.sessions),
                 "datasets": ["neurofm-simulated-spikes"] if not d.sessions else [Path(p).stem for p in d.sessions],
                 "n_units": n_units, "n_test_spikes": int(len(test["target_ids"]))},
    }


def _generation_metrics(cfg, model, batches, train_unit_counts, dm, run_dir):
    from neurofm import metrics as M

    n_units = model.config.n_units
    need = cfg.eval.generate_windows
    true_sets, gen_sets, gen_all, rng = [], [], [], np.random.default_rng(cfg.eval.seed)
    # mean rate per unit per window from the training spikes
    n_train_windows = max(1, len(dm.datasets["train"]))
    rate_per_window = train_unit_counts / n_train_windows
    base_sets = []
    for batch in batches:
        if len(true_sets) >= need:
            break
        gen = model.generate(batch, mode="teacher_forced", top_p_id=cfg.eval.top_p, top_p_dt=cfg.eval.top_p,
                             seed=cfg.eval.seed)
        gen_all.append(gen)
        for w in range(len(gen)):
            ids = batch["target_id"][w]
            true_sets.append((ids[ids >= N_SPECIAL] - N_SPECIAL).numpy())
            gen_sets.append(gen.unit_index[w])
            counts = rng.poisson(rate_per_window)
            base_sets.append(np.repeat(np.arange(n_units), counts))
    model_f1, base_f1 = M.window_f1(true_sets, gen_sets), M.window_f1(true_sets, base_sets)
    results = {f"window_{k}": float(model_f1[k]) for k in ("f1", "precision", "recall")}
    results.update(generated_spikes_per_window=float(np.mean([len(g) for g in gen_sets])),
                   recorded_spikes_per_window=float(np.mean([len(t) for t in true_sets])))
    base = {f"window_{k}": float(base_f1[k]) for k in ("f1", "precision", "recall")}
    _raster_plot(cfg, gen_all, batches, run_dir, n_units)
    return results, base


def _raster_plot(cfg, gens, batches, run_dir: Path, n_units: int) -> None:
    from neurofm import plots

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
                         n_units=n_units, title="Held-out windows: recorded vs generated (teacher-forced past)",
                         path=run_dir / "plots" / "raster_recorded_vs_generated.png")


def _decoding_plot(name: str, test: dict, run_dir: Path) -> None:
    from neurofm import plots

    true, pred, mask = test["beh_true"][name], test["beh_pred"][name], test["beh_mask"][name]
    t = np.arange(len(true), dtype=float)
    plots.decoding_trace(t[mask], true[mask], pred[mask], title=f"Decoded {name} (test windows)",
                         path=run_dir / "plots" / f"decoding_{name}.png")
