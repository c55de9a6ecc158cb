"""Neuroformer recipe evaluation pieces: few-shot training split, moving-window scoring, ID
bits/spike conditional on a spike, ridge penalty choice. Tiny hand-made sessions, no training."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurofm.config import from_dict
from neurofm.data import datasets
from neurofm.data.session import SessionWriter
from neurofm.models.neuroformer import N_SPECIAL
from neurofm.recipes import neuroformer as recipe
from neurofm.tasks.neuroformer import LabelSubset

DURATION = 60.0  # s


def _session(path: Path, *, still_after: float = 30.0, n_units: int = 4, seed: int = 0,
             stimulus: str | None = None) -> str:
    """Poisson spikes (5 Hz per unit) and a 1-D position that moves at 100 units/s back and forth
    on a 0..200 track until ``still_after`` s, then stays put."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(5.0 * DURATION * n_units)
    times = np.sort(rng.uniform(0.0, DURATION, n))
    units = rng.integers(0, n_units, n)
    ts = np.arange(0.0, DURATION, 0.01)
    x = 200.0 * np.abs(((np.minimum(ts, still_after) * 100.0 / 200.0) % 2.0) - 1.0)  # triangle wave
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(n_units)])
        w.add_spikes(times, units, t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="cm")
        if stimulus is not None:  # 10 Hz 10x10 frames, each frame's pixels its index + 1
            n = int(DURATION * 10)
            w.add_stimulus(stimulus, np.arange(n) * 0.1, np.repeat(np.arange(1, n + 1) % 256, 100).reshape(n, 10, 10))
    return str(path)


def _config(sessions, **data) -> recipe.RunConfig:
    return from_dict(recipe.RunConfig, {
        "data": {"sessions": list(sessions), "behavior": ["position"], "batch_size": 16, **data},
        "model": {"n_embd": 16, "n_head": 2, "temporal_hidden": 16, "window": {"curr": 0.25, "prev": 0.25, "dt": 0.01},
                  "block_size": {"id": 16, "prev_id": 16},
                  "layers": {"state": 1, "prev_encoder": 1, "state_history": 1, "stimulus_encoder": 0, "stimulus": 0,
                             "behavior": 0, "self_att": 1},
                  "contrastive": {"enabled": False},
                  "behavior": [{"name": "position", "dim": 1, "task": "regression", "target": True}]},
        "task": {"mode": "finetune", "objectives": ["behavior"]},
        "eval": {"generate_windows": 0},
    }, where="test")


def _windows(ds) -> set[tuple[int, float]]:
    return {(s, round(t, 6)) for s, t in (ds.window(i) for i in range(len(ds)))}


def test_few_shot_split_trains_on_exactly_the_labelled_windows(tmp_path):
    paths = [_session(tmp_path / "a.h5", seed=0), _session(tmp_path / "b.h5", seed=1)]
    cfg = _config(paths, label_fraction=0.3, label_chunk_s=4.0)
    dm = recipe.datamodule(cfg)
    # the labelled windows (FewShotSplit), of those the ones with a target sample (TargetSplit: all here)
    assert isinstance(dm.splits, recipe.TargetSplit) and isinstance(dm.splits.base, recipe.FewShotSplit)
    dm.setup("fit")
    fit = _windows(dm.datasets["train"])
    all_ds = recipe._train_windows_loader(dm).dataset
    every = _windows(all_ds)
    s = torch.tensor([w[0] for w in sorted(every)])
    t = torch.tensor([w[1] for w in sorted(every)], dtype=torch.float64)
    labelled = LabelSubset(0.3, 4.0, cfg.seed)(s, t).numpy()
    expected = {w for w, keep in zip(sorted(every), labelled) if keep}
    assert 0 < len(expected) < len(every)
    assert fit == expected
    # both sessions contribute labelled windows, each from its own draw
    assert {w[0] for w in fit} == {0, 1}
    # the behaviour statistics come from the labelled training blocks (samples, so only close to
    # the labelled windows' means: the blocks also hold each run's first previous window)
    task = recipe.task(cfg, dm)
    (mean,), (std,) = task.model.config.behavior[0].mean, task.model.config.behavior[0].std
    ys = np.array([dm.datasets["train"][i]["behavior"]["position"][0] for i in range(len(dm.datasets["train"]))])
    assert abs(mean - ys.mean()) < 0.2 * ys.std()
    assert 0.8 < std / ys.std() < 1.25


def test_shuffle_within_bin_config_reaches_only_the_training_loader(tmp_path):
    paths = [_session(tmp_path / "a.h5", seed=0)]
    assert recipe.datamodule(_config(paths)).shuffle_within_bin is False  # the default: canonical order
    dm = recipe.datamodule(_config(paths, shuffle_within_bin=True))
    dm.setup("fit")
    assert dm.shuffle_within_bin is True
    assert dm.train_dataloader().transform is not None and getattr(dm.val_dataloader(), "transform", None) is None


def test_model_ridge_and_cv_protocol_label_the_same_windows(tmp_path):
    """One few-shot definition (neurofm.data.splits.labelled_windows): the windows the model
    trains on (the few-shot split, and the task's label mask), the windows ridge / probe / Bayes
    fit in the recipe's evaluation, and the bins the CV protocol labels at the same end times
    are one set."""
    from neurofm import evaluation as ev

    paths = [_session(tmp_path / "a.h5", seed=0)]
    cfg = _config(paths, label_fraction=0.2, label_chunk_s=3.0)
    cfg.seed = 11
    dm = recipe.datamodule(cfg)
    every = sorted(_windows(recipe._train_windows_loader(dm).dataset))
    s = torch.tensor([w[0] for w in every])
    t = torch.tensor([w[1] for w in every], dtype=torch.float64)
    ridge = recipe._label_subset(cfg)(s, t).numpy()  # what evaluate() fits the baseline arms on
    model_split = np.array([w in _windows(dm.dataset("train")) for w in every])
    task_mask = recipe.task(cfg, dm).label_subset(s, t).numpy()
    assert 0 < ridge.sum() < len(every)
    np.testing.assert_array_equal(model_split, ridge)
    np.testing.assert_array_equal(task_mask, ridge)
    bin_size = 0.05
    data = ev.DecodingData(counts=np.zeros((len(t), 1), np.int64), position=np.zeros((len(t), 1)),
                           speed=np.zeros(len(t)), bin_times=t.numpy() - bin_size, moving=np.ones(len(t), bool),
                           bin_size=bin_size)
    protocol = ev.DecodingProtocol(bin_size=bin_size, label_fraction=0.2, chunk_s=3.0, seed=11)
    cv = ev.DecodingSetup(protocol, data, [], np.ones(len(t), bool), np.ones(len(t), bool)).labelled
    np.testing.assert_array_equal(cv, ridge)


def test_no_few_shot_split_when_spikes_are_trained_too(tmp_path):
    cfg = _config([_session(tmp_path / "a.h5")], label_fraction=0.3)
    cfg.task.objectives = ["id", "behavior"]
    assert not isinstance(recipe.datamodule(cfg).splits, recipe.FewShotSplit)
    cfg.data.label_fraction = 1.0
    cfg.task.objectives = []
    assert not isinstance(recipe.datamodule(cfg).splits, recipe.FewShotSplit)


def test_moving_windows_score_only_where_the_animal_moves(tmp_path):
    cfg = _config([_session(tmp_path / "a.h5", still_after=30.0)])
    dm = recipe.datamodule(cfg)
    ends = np.arange(1.0, 59.0, 0.25)
    coll = {"interval": ends, "session": np.zeros(len(ends), dtype=np.int64)}
    cfg.eval.score_when = "all"
    assert recipe._moving_windows(cfg, dm, coll).all()
    cfg.eval.score_when, cfg.eval.moving_threshold = "moving", 20.0
    moving = recipe._moving_windows(cfg, dm, coll)
    # 100 units/s until 30 s, then still; the 0.5 s smoothing blurs the edge by ~1.5 s. The
    # instant turns every 2 s are brief stops to the rule (speed of the smoothed position: under
    # 20 within 0.13 s of a turn), so windows (0.25 s) near a turn are not scored
    from_turn = np.abs(((ends - 0.125 + 1.0) % 2.0) - 1.0)  # s from the window's centre to a turn
    assert moving[(ends < 28.0) & (from_turn > 0.45)].all() and moving[ends < 28.0].mean() > 0.6
    assert not moving[(ends < 28.0) & (from_turn < 0.1)].any()
    assert not moving[ends > 32.0].any()


class _StubModel(torch.nn.Module):
    """ID logits: EOS gets most of the mass, the units share the rest as ``unit_p``."""

    def __init__(self, unit_p: np.ndarray):
        super().__init__()
        self.unit_logits = torch.log(torch.as_tensor(unit_p, dtype=torch.float32))
        from neurofm.models.neuroformer import WindowConfig

        self.config = type("C", (), {"n_units": len(unit_p), "behavior_targets": lambda self: [],
                                     "window": WindowConfig(curr=0.05, prev=0.05, dt=0.01)})()

    def forward(self, batch):
        b, length = batch["target_id"].shape
        logits = torch.full((b, length, N_SPECIAL + len(self.unit_logits)), -30.0)
        logits[..., 2] = math.log(9.0)  # EOS: 90% of the probability
        logits[..., N_SPECIAL:] = self.unit_logits  # units: 10%, in proportion unit_p
        return {"id_logits": logits, "behavior": {}}


def test_id_bits_per_spike_is_conditional_on_a_spike():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    ids = rng.choice(4, size=(64, 12), p=p) + N_SPECIAL
    batch = {"target_id": torch.as_tensor(ids), "id": torch.as_tensor(ids), "id_prev": torch.as_tensor(ids[:, :4]),
             "dt": torch.zeros(64, 12, dtype=torch.long), "dt_prev": torch.zeros(64, 4, dtype=torch.long),
             "interval": torch.arange(64, dtype=torch.float64), "session": torch.zeros(64, dtype=torch.long)}
    model = _StubModel(p)
    coll = recipe._collect(model, [batch])
    train_counts = p * 1e6  # the training spikes follow the same unigram
    bits = recipe._id_bits_per_spike(coll["logp_id"], coll["target_ids"], train_counts)
    assert abs(bits) < 1e-3  # the model IS the unigram once it is told a spike comes next
    # a model that knows better than the unigram gains bits
    better = _StubModel(np.where(np.arange(4) == 0, 0.7, 0.1))
    assert recipe._id_bits_per_spike(recipe._collect(better, [batch])["logp_id"], coll["target_ids"], train_counts) < 0
    assert coll["counts"].shape == (64, 8)


class _SessionStubModel(_StubModel):
    """ID logits that know each window's session: its own units' training shares, others' ~0."""

    def __init__(self, unit_p_per_session: np.ndarray):
        super().__init__(unit_p_per_session[0])
        self.per_session = torch.log(torch.as_tensor(unit_p_per_session, dtype=torch.float32).clamp(min=1e-12))

    def forward(self, batch):
        out = super().forward(batch)
        out["id_logits"][..., N_SPECIAL:] = self.per_session[batch["session"]][:, None, :]
        return out


def test_id_bits_per_spike_scores_each_session_against_its_own_firing_rates():
    """Two sessions of one lab share no unit (units are per session). A model that only knows
    which session a window is from, and its units' firing rates there, knows nothing a per-session
    firing-rate null does not: ~0 bits/spike. The null pooled over sessions gave it ~1 bit (log2 of
    2 equal sessions): on two V1 sessions (72 + 58 units) pretraining reported 1.48 bits/spike."""
    rng = np.random.default_rng(0)
    p = np.array([[0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0], [0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4]])
    batches = []
    for s in (0, 1):
        ids = rng.choice(8, size=(64, 12), p=p[s]) + N_SPECIAL
        batches.append({"target_id": torch.as_tensor(ids), "id": torch.as_tensor(ids),
                        "id_prev": torch.as_tensor(ids[:, :4]), "dt": torch.zeros(64, 12, dtype=torch.long),
                        "dt_prev": torch.zeros(64, 4, dtype=torch.long),
                        "interval": torch.arange(64, dtype=torch.float64), "session": torch.full((64,), s)})
    coll = recipe._collect(_SessionStubModel(p), batches)
    assert (np.bincount(coll["spike_session"]) == [64 * 12, 64 * 12]).all()
    train = recipe._session_unit_counts(coll, 2, 8)  # the same spikes as "training": per-session counts
    np.testing.assert_array_equal(train.sum(0), np.bincount(coll["target_ids"], minlength=8))
    bits = recipe._id_bits_per_spike(coll["logp_id"], coll["target_ids"], train, coll["spike_session"])
    assert abs(bits) < 0.01
    pooled = recipe._id_bits_per_spike(coll["logp_id"], coll["target_ids"], train.sum(0))
    assert 0.95 < pooled < 1.05  # what the pooled null credited: which session, not the neural state


def test_ridge_penalty_by_blocked_cv_and_fallback():
    rng = np.random.default_rng(1)
    X = rng.poisson(3.0, size=(400, 6)).astype(float)
    y = (X @ np.array([1.0, -0.5, 0.0, 0.0, 0.2, 0.0]) + rng.normal(0, 0.5, 400))[:, None]
    pred = recipe._ridge_fit_predict(X[:300], y[:300], X[300:], stride=0.25)
    r2 = 1 - ((y[300:] - pred) ** 2).sum() / ((y[300:] - y[300:].mean()) ** 2).sum()
    assert r2 > 0.8
    few = recipe._ridge_fit_predict(X[:12], y[:12], X[300:], stride=0.25)  # too few rows for 4 inner folds
    assert few.shape == (100, 1) and np.isfinite(few).all()


def test_binned_counts_are_the_spikes_the_model_reads_in_50ms_bins(tmp_path):
    """The ridge / Bayes features of a window equal bin_spikes over (prev + curr) before its end."""
    from neurofm.baselines import bin_spikes
    from neurofm.data.session import Session

    path = _session(tmp_path / "a.h5", n_units=3)
    cfg = _config([path], split={"gap": 1.0})
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.loader("valid")))
    got = recipe._binned_counts(batch, 3, cfg.model.window)  # (B, 3 units * 10 bins), unit-major, bin 0 latest
    assert got.shape == (len(batch["interval"]), 10 * 3)
    with Session(path) as s:
        t, u = s.spikes()
    for w in range(len(batch["interval"])):
        end = float(batch["interval"][w])
        # the model reads spike times at dt resolution from each window's start (prev: end - 0.5, curr: end - 0.25)
        start = np.where(t < end - 0.25, end - 0.5, end - 0.25)
        tq = start + np.round((t - start) / 0.01) * 0.01
        keep = (t >= end - 0.5) & (t < end)
        want = bin_spikes(tq[keep] + 1e-7, u[keep], 3, end - 0.5, end + 1e-6, 0.05)[:10][::-1]  # latest bin first
        assert got[w].sum() == keep.sum()
        np.testing.assert_array_equal(got[w].reshape(3, 10).T, want)


def test_decode_report_arms_share_windows_and_say_when_the_model_loses(tmp_path):
    """_decode_report: every arm on the same scored windows; a model predicting the mean loses to ridge."""
    rng = np.random.default_rng(0)
    n_tr, n_te, N = 400, 200, 4
    binned_tr, binned_te = rng.poisson(1.0, (n_tr, 2 * N)).astype(float), rng.poisson(1.0, (n_te, 2 * N)).astype(float)
    w = rng.normal(size=2 * N)
    y_tr, y_te = (binned_tr @ w)[:, None], (binned_te @ w)[:, None]
    train = {"beh_true": {"position": y_tr}, "binned": binned_tr, "counts": np.zeros((n_tr, 2 * N))}
    test = {"interval": np.arange(n_te) * 0.5, "session": np.zeros(n_te, dtype=int), "binned": binned_te}
    cfg = _config([])
    m = np.ones(n_te, dtype=bool)
    rep = recipe._decode_report(cfg, "position", np.full((n_te, 1), y_tr.mean()), y_te, test, m, train,
                                np.ones(n_tr, dtype=bool), None, scored_text="every test window")
    assert [r.arm for r in rep.rows] == ["model", "ridge on binned counts", "Poisson Bayes", "null (training mean)"]
    assert rep.row("ridge on binned counts").values["r2"] > 0.9
    assert "ridge on binned counts" in rep.loses_to() and rep.n_blocks == 10  # 100 s of test windows, 10 s blocks
    assert any(v.startswith("MODEL LOSES to ridge on binned counts") for v in rep.verdicts())


def test_step_budget_from_labelled_windows_and_user_limits_win(tmp_path):
    assert recipe.step_budget_for(100, 32) == 300  # few windows: the floor (a fresh head needs steps)
    assert recipe.step_budget_for(640, 32) == 600  # 30 passes over 20 batches
    assert recipe.step_budget_for(10 ** 6, 32) == 3000  # many: the cap
    path = _session(tmp_path / "a.h5")
    cfg = _config([path], split={"gap": 1.0})
    cfg = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "task": {"mode": "finetune", "step_budget": 0},
                                       "trainer": {"max_epochs": -1, "max_steps": -1}}, where="test")
    dm = recipe.datamodule(cfg)
    t = recipe.resolve_trainer(cfg, dm)
    n = len(dm.datasets["train"])
    per_epoch = math.ceil(n / 16)
    assert t.max_steps == recipe.step_budget_for(n, 16) and t.max_epochs == math.ceil(t.max_steps / per_epoch)
    # validation every budget / 20 steps across epochs: 20 checks, not every ceil(epochs / 20) epochs
    assert per_epoch < t.max_steps / 20 and t.val_check_every_n_steps == math.ceil(t.max_steps / 20)
    assert math.ceil(t.max_steps / t.val_check_every_n_steps) == recipe.BUDGET_CHECKS
    # a budget shorter than 20 passes: validation every budget / 20 steps (epochs cut to that length)
    short = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "task": {"mode": "finetune", "step_budget": 40}}, where="t")
    ts = recipe.resolve_trainer(short, dm)
    assert ts.max_steps == 40 and ts.limit_train_batches == 2 and ts.max_epochs == 20
    # a user's trainer.max_epochs turns the budget off; an explicit step_budget always applies
    own = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "trainer": {"max_epochs": 2, "max_steps": -1}}, where="t")
    assert recipe.resolve_trainer(own, dm) == own.trainer
    fixed = from_dict(recipe.RunConfig, {**_cfg_dict(own), "task": {"mode": "finetune", "step_budget": 7}}, where="t")
    assert recipe.resolve_trainer(fixed, dm).max_steps == 7


def test_protocol_states_the_users_step_limit_not_the_budget(tmp_path):
    """The protocol line said "for at most 60 steps (step budget: 30 x ...)" when the user had set
    trainer.max_steps=60 (which turns the budget off): it names the user's setting, and the
    budget it replaced; with the defaults it states the budget and its rule."""
    path = _session(tmp_path / "a.h5")
    cfg = _config([path], split={"gap": 1.0})
    cfg = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "task": {"mode": "finetune", "step_budget": 0},
                                       "trainer": {"max_epochs": -1, "max_steps": -1}}, where="test")
    dm = recipe.datamodule(cfg)
    budget = recipe.step_budget_for(recipe.loss_windows(cfg, dm)[0], cfg.data.batch_size)
    default = dataclasses.replace(cfg, trainer=recipe.resolve_trainer(cfg, dm))
    assert default.trainer.max_steps == budget
    assert f"for at most {budget} steps (step budget: 30 x ceil(n / batch size" in recipe._protocol(default, dm)
    own = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "trainer": {"max_epochs": -1, "max_steps": 60}}, where="t")
    own = dataclasses.replace(own, trainer=recipe.resolve_trainer(own, dm))
    assert own.trainer.max_steps == 60 != budget
    text = recipe._protocol(own, dm)
    assert (f"for at most 60 steps (trainer.max_steps), the user's setting in place of the step budget of {budget} "
            "steps (step budget:") in text
    both = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "trainer": {"max_epochs": 3, "max_steps": 60}}, where="t")
    assert "for at most 60 steps (trainer.max_steps) / 3 epochs (trainer.max_epochs), the user's setting" in \
        recipe._protocol(both, dm)


def _default_finetune(path: str, **data) -> recipe.RunConfig:
    """The fine-tuning defaults on ``path``: behaviour the only objective, score_when auto, a step budget."""
    cfg = _config([path], split={"gap": 1.0}, batch_size=4, **data)
    cfg = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "task": {"mode": "finetune", "step_budget": 0},
                                       "trainer": {"max_epochs": -1, "max_steps": -1}}, where="test")
    cfg = recipe.resolve_scoring(cfg)  # the default score_when "auto" -> moving (position is the target)
    assert cfg.eval.score_when == "moving"
    return cfg


def _ends(ds) -> tuple[np.ndarray, np.ndarray]:
    windows = [ds.window(i) for i in range(len(ds))]
    return np.array([w[0] for w in windows], dtype=np.int64), np.array([w[1] for w in windows])


def test_spike_windows_and_the_moving_rule_honour_the_recordings_discontinuities(tmp_path):
    """A recording paused at 20.1 s (/intervals/discontinuities, as a BrainVision "New Segment"
    converts) with the animal still on both sides but 100 cm apart: split_window_ends laid
    windows across the pause (the data module did not), and the moving rule smoothed and
    differenced the position across it, so the still windows around the pause read as moving."""
    from neurofm.data.session import DISCONTINUITIES, Session
    from neurofm.evaluation import session_position_data

    path, pause = tmp_path / "paused.h5", 20.1
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0.0, DURATION, int(5.0 * DURATION * 4)))
    ts = np.arange(0.0, DURATION, 0.01)
    x = np.where(ts < pause, 50.0, 150.0)  # still, moved 100 cm during the pause
    with SessionWriter(path, session_id="paused") as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, rng.integers(0, 4, len(times)), t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="cm")
        w.add_intervals(DISCONTINUITIES, [pause], [pause])
    every = _config([str(path)], split={"gap": 1.0})  # the default split: the pause is in the training block
    every = dataclasses.replace(every, eval=dataclasses.replace(every.eval, score_when="all"))
    cfg = dataclasses.replace(every, eval=dataclasses.replace(every.eval, score_when="moving", moving_threshold=5.0))
    w = cfg.model.window
    dm = recipe.datamodule(every)  # every training window (under moving scoring it reads the moving ones only)
    with Session(path) as session:
        ends = recipe.split_window_ends(cfg, session, "train")
        assert len(ends) and not ((ends - w.curr - w.prev < pause) & (ends > pause)).any()
        assert np.allclose(ends, _ends(dm.dataset("train"))[1])  # as the data module lays them out
        d = session_position_data(session, recipe._protocol_for(cfg), counts=False)
    k = int(np.searchsorted(d.bin_times, pause)) - 1  # the bin that holds the pause, dropped from both stretches
    assert d.bin_times[k] < pause < d.bin_end[k]
    assert [(sl.start, sl.stop) for sl in d.stretches()] == [(0, k), (k + 1, d.n_bins)]
    assert not d.moving.any()  # still on both sides of the pause
    moving = recipe.MovingWindows(cfg, [session])
    grid = np.arange(w.curr, DURATION, 0.05)
    assert not moving(np.zeros(len(grid), dtype=np.int64), grid).any()
    # a moving animal across the pause: every window but the one that spans it
    d.position = np.linspace(0.0, 600.0, d.n_bins)[:, None]  # 10 cm/s throughout
    d.breaks = np.array([pause])
    assert d.moving_mask(5.0, 0.5).sum() == d.n_bins - 1 and not d.moving_mask(5.0, 0.5)[k]


def test_training_split_holds_only_the_windows_that_carry_the_loss(tmp_path):
    """Issue 10: fine-tuned on position alone and scored on moving windows, the training loader
    read every window though only the moving ones carry loss (the maze: 694 of 4,211). The
    default path: the ``train`` split is the moving windows (AND the labelled ones with few
    labels), by the one moving rule; the windows the baselines read (``train_all``) and the
    behaviour statistics stay as they were."""
    path = _session(tmp_path / "a.h5", still_after=10.0)  # moves 10 s, then rests: most windows still
    plain = recipe.datamodule(from_dict(recipe.RunConfig, {**_cfg_dict(_config([path], split={"gap": 1.0})),
                                                           "eval": {"score_when": "all", "generate_windows": 0}},
                                        where="test"))
    every = _windows(plain.dataset("train"))  # the training block's windows, no cut
    for fraction in (1.0, 0.5):
        cfg = _default_finetune(path, label_fraction=fraction, label_chunk_s=4.0)
        dm = recipe.datamodule(cfg)
        assert isinstance(dm.splits, recipe.MovingSplit)
        s_all, t_all = _ends(recipe._train_windows_loader(dm).dataset)
        assert set(zip(s_all.tolist(), np.round(t_all, 6).tolist())) == every  # the baselines' windows
        expect = recipe.MovingWindows(cfg, dm.sessions)(s_all, t_all)
        if fraction < 1.0:
            labelled = recipe._label_subset(cfg)(torch.as_tensor(s_all), torch.as_tensor(t_all)).numpy()
            assert (expect & ~labelled).any()  # both filters bite
            expect &= labelled
        s_fit, t_fit = _ends(dm.dataset("train"))
        assert recipe.MovingWindows(cfg, dm.sessions)(s_fit, t_fit).all()
        assert set(zip(s_fit.tolist(), np.round(t_fit, 6).tolist())) == \
            {(int(s), round(float(t), 6)) for s, t in zip(s_all[expect], t_all[expect])}
        assert 0 < len(t_fit) < len(every) / 2
        # what evaluate() fits ridge / probe / Bayes on (train_all's labelled moving windows): the same windows
        fitted = recipe._moving_windows(cfg, dm, {"interval": t_all, "session": s_all})
        if fraction < 1.0:
            fitted &= recipe._label_subset(cfg)(torch.as_tensor(s_all), torch.as_tensor(t_all)).numpy()
        np.testing.assert_allclose(np.sort(t_all[fitted]), np.sort(t_fit))
        # the behaviour statistics: the labelled training blocks, as without the moving cut
        few = recipe.datamodule(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, score_when="all")))
        assert recipe._behavior_stats(dm, ["position"]) == recipe._behavior_stats(few, ["position"])
        # streamed: the same windows (loss_windows counts windows, not the streaming len()'s batches)
        streamed = recipe.datamodule(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, streaming=True)))
        batches = list(streamed.loader("train", train=True))
        assert np.allclose(np.sort(np.concatenate([b["interval"].numpy() for b in batches])), np.sort(t_fit))
        assert recipe.loss_windows(cfg, streamed) == (len(t_fit),) * 2
    # another objective besides behaviour: every window carries loss, nothing is cut
    both = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, objectives=["id", "behavior"]))
    dm = recipe.datamodule(both)
    assert not isinstance(dm.splits, recipe.MovingSplit)
    assert recipe.loss_windows(both, dm) == (len(dm.dataset("train")),) * 2


def test_training_split_leaves_out_windows_without_a_target_sample(tmp_path):
    """A sleep epoch in a rest box without tracking, then a track (position NaN for the first
    half): scored on every window (a target that is no position, like head direction, or
    `--score-when all`), the training loader read the untracked windows too, which carry no
    loss, and the step budget counted them (62.5% of a Kilosort export's training windows).
    The default fine-tuning path keeps only windows with a target sample; with another
    objective besides behaviour every window stays."""
    from neurofm.data.session import Session

    path = Path(_session(tmp_path / "a.h5", still_after=DURATION))
    with h5py.File(path, "r+") as f:
        ts = f["behavior/position/timestamps"][:]
        v = f["behavior/position/values"][:]
        v[ts < DURATION / 2] = np.nan  # untracked sleep
        f["behavior/position/values"][...] = v
    cfg = _default_finetune(str(path))
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, score_when="all", moving_threshold=0.0))
    dm = recipe.datamodule(cfg)
    assert isinstance(dm.splits, recipe.TargetSplit)
    s_fit, t_fit = _ends(dm.dataset("train"))
    s_all, t_all = _ends(recipe._train_windows_loader(dm).dataset)  # the baselines' windows: all of them
    assert len(t_all) > len(t_fit) > 0
    with Session(path) as session:
        ts, values = session.behavior("position")
    has = datasets.behavior_features(ts, values, t_all - cfg.model.window.curr, t_all)["mask"]
    assert (~has).sum() > len(t_all) / 4  # the sleep half
    np.testing.assert_allclose(np.sort(t_fit), np.sort(t_all[has]))
    assert recipe.loss_windows(cfg, dm) == (len(t_fit),) * 2
    assert recipe.resolve_trainer(cfg, dm).max_steps == recipe.step_budget_for(len(t_fit), cfg.data.batch_size)
    both = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, objectives=["id", "behavior"]))
    dm = recipe.datamodule(both)
    assert not isinstance(dm.splits, recipe.TargetSplit) and len(dm.dataset("train")) == len(t_all)


def test_no_moving_training_window_is_an_error_naming_the_threshold(tmp_path):
    """With the training split cut to moving windows, a threshold no window reaches leaves
    nothing to fine-tune on: a ConfigError naming eval.moving_threshold before any step (not
    the few-shot message about label chunks, which every window here has)."""
    from neurofm.config import ConfigError

    cfg = _config([_session(tmp_path / "a.h5")], split={"gap": 1.0})
    cfg.eval.score_when, cfg.eval.moving_threshold = "moving", 1e6
    dm = recipe.datamodule(cfg)
    with pytest.warns(UserWarning, match="no spike window"):
        assert len(dm.dataset("train")) == 0 < len(recipe._train_windows_loader(dm).dataset)
    with pytest.raises(ConfigError, match=r"no training window of .*a.h5 moves .*eval.moving_threshold 1e\+06"):
        recipe.task(cfg, dm)


def test_step_budget_counts_only_the_windows_that_carry_the_loss(tmp_path):
    """Default fine-tuning on position scores (and trains) moving windows only: the budget is
    sized from the labelled moving training windows, which are exactly the windows the loader
    reads, so one epoch is one pass over them (issue 10's maze: 694 of 4,211 windows -> the
    300-step floor, where sizing from 4,211 gave 1,320 steps)."""
    path = _session(tmp_path / "a.h5", still_after=10.0)  # moves 10 s, then rests: most windows still
    for fraction in (1.0, 0.5):
        cfg = _default_finetune(path, label_fraction=fraction, label_chunk_s=4.0)
        dm = recipe.datamodule(cfg)
        ds = dm.dataset("train")
        s_idx, ends = _ends(ds)
        carrying, n = recipe.loss_windows(cfg, dm)
        assert carrying == n == len(ds) > 0
        t = recipe.resolve_trainer(cfg, dm)
        assert t.max_steps == recipe.step_budget_for(n, 4)
        per_epoch = math.ceil(n / 4)
        if isinstance(t.limit_train_batches, int):  # an epoch longer than the gap between checks
            assert t.limit_train_batches < per_epoch and t.max_epochs == math.ceil(t.max_steps / t.limit_train_batches)
        else:  # one epoch is one pass over the loss-carrying windows
            assert t.max_epochs == math.ceil(t.max_steps / per_epoch)
            assert len(dm.loader("train", train=True)) == per_epoch
    # scored on every window (or another objective besides behaviour): every window carries loss
    every = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "data": {**_cfg_dict(cfg)["data"], "label_fraction": 1.0},
                                         "eval": {"score_when": "all", "generate_windows": 0}}, where="test")
    dm = recipe.datamodule(every)
    assert not isinstance(dm.splits, recipe.MovingSplit)
    assert recipe.loss_windows(every, dm) == (len(dm.dataset("train")),) * 2


def _cfg_dict(cfg):
    from neurofm.config import to_dict

    return to_dict(cfg)


def test_finetune_recipe_defaults_are_the_rule():
    cfg = recipe.RunConfig()
    assert cfg.task.step_budget == -1 and cfg.task.head_lr_ratio == 1.0  # pretraining unchanged
    r = recipe.FINETUNE_RECIPE
    assert r["task"] == {"lr": 1e-4, "head_lr_ratio": 1.0, "step_budget": 0}
    assert r["trainer"]["max_epochs"] == -1 and r["trainer"]["max_steps"] == -1
    from omegaconf import OmegaConf

    yaml = OmegaConf.load(Path(recipe.__file__).resolve().parents[1] / "configs" / "neuroformer" / "finetune.yaml")
    assert yaml.task.lr == r["task"]["lr"] and yaml.task.head_lr_ratio == 1.0 and yaml.task.step_budget == 0
    assert yaml.trainer.max_epochs == -1 and yaml.trainer.early_stopping_patience == 5


def test_finetune_task_monitors_validation_r2_and_heads_train_faster(tmp_path):
    from neurofm.tasks.neuroformer import NeuroformerTask

    path = _session(tmp_path / "a.h5")
    cfg = _config([path], split={"gap": 1.0})
    cfg = from_dict(recipe.RunConfig, {**_cfg_dict(cfg), "task": {"mode": "finetune", "objectives": ["behavior"],
                                                                  "lr": 1e-4, "head_lr_ratio": 10.0}}, where="t")
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert task.monitor == "val/behavior_r2"
    task.trainer = type("T", (), {"estimated_stepping_batches": 100})()  # what configure_optimizers reads
    opt = task.configure_optimizers()["optimizer"]
    head = {id(p) for p in task.model.behavior_heads.parameters()}
    lrs = {(any(id(p) in head for p in g["params"]), round(g["initial_lr"], 12)) for g in opt.param_groups}
    assert all(any(id(p) in head for p in g["params"]) == all(id(p) in head for p in g["params"])
               for g in opt.param_groups)  # heads in groups of their own
    assert {lr for is_head, lr in lrs if is_head} == {1e-3}
    assert {lr for is_head, lr in lrs if not is_head} == {1e-4}
    pre = NeuroformerTask(model=task.model, mode="pretrain")
    assert pre.monitor is None


def test_count_heads_start_at_the_ridge_solution(tmp_path, capsys):
    """Fine-tuning starts each fresh regression read-out at ridge on the labelled windows, from
    the binned counts alone or the counts AND the pooled state the head reads (whichever the
    start's blocked-CV rule picks, recorded in ``read_out_start``): before any step the model's
    output equals that ridge's prediction; trained heads are kept."""
    from neurofm.baselines import Ridge
    from neurofm.evaluation import RidgeFitPredict

    path = _session(tmp_path / "a.h5", n_units=4)
    base = _cfg_dict(_config([path], split={"gap": 1.0}))
    base["model"]["behavior"][0]["count_bin"] = 0.05
    cfg = from_dict(recipe.RunConfig, base, where="t")
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    model = task.model.eval()
    start = task.read_out_start["position"]
    pooled = start["features"] == "counts+pooled"
    # the fit is announced with its size before it runs (a 360-unit recording spent 10+ silent minutes in it)
    err = capsys.readouterr().err
    announced = re.search(r"fitting the read-out's starting ridge for position: ([\d,]+) labelled windows x 40 count "
                          r"features \(\+\d+ pooled\), penalty by blocked CV \(4 folds, twice\)", err)
    assert announced and int(announced.group(1).replace(",", "")) == start["n_windows"]
    assert (err.index("the read-out's start: the model reads the training windows once") <
            err.index("fitting the read-out's starting ridge") < err.index("the read-out of position starts at"))
    head = model.count_heads["position"]
    assert head.weight.abs().sum() > 0 and bool(model.behavior_heads["position"].weight.abs().sum() > 0) == pooled
    X, Y, got = [], [], []
    with torch.no_grad():
        for batch in dm.loader("train"):
            out = model(batch)
            X.append(np.concatenate([recipe._binned_counts(batch, 4, cfg.model.window, 0.05),
                                     out["pooled"].double().numpy()], 1))
            Y.append(batch["behavior"]["position"].reshape(-1, 1).numpy())
            got.append(out["behavior"]["position"].reshape(-1, 1).numpy())
    X, Y, got = np.concatenate(X), np.concatenate(Y), np.concatenate(got)
    X = X if pooled else X[:, :4 * 10]  # 4 units x 10 bins of 50 ms
    (v,) = model.config.behavior
    Z = (Y - v.mean[0]) / v.std[0]
    rfp = RidgeFitPredict("blocked_cv", gap=int(math.ceil(5.0 / 0.25)))
    alpha = rfp.choose_alpha(X, Z)
    assert rfp.cv_r2_ == pytest.approx(start["cv_r2"][start["features"]]) and alpha == start["alpha"]
    want = Ridge(alpha).fit(X, Z).predict(X) * v.std[0] + v.mean[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * v.std[0])
    # a head that already holds weights (a fine-tuned checkpoint, a resumed run) is left alone
    with torch.no_grad():
        head.weight.fill_(0.25)
    assert recipe.init_count_heads(model, cfg, dm) == {} and float(head.weight[0, 0]) == 0.25


def test_stimulus_name_is_a_data_field(tmp_path):
    """``data.stimulus`` names the /stimulus/<name> a stimulus model reads (default ``gratings``,
    the simulated demo's); a lab's own name is read, and a missing one is an error naming it."""
    path = _session(tmp_path / "s.h5", stimulus="movie")
    stim = {"n_frames": 3, "height": 10, "width": 10, "patch": [3, 5, 5]}
    assert recipe.RunConfig().data.stimulus == "gratings"
    cfg = _config([path], stimulus="movie")
    cfg.model.stimulus = from_dict(type(recipe.RunConfig().model), {"stimulus": stim}, where="test").stimulus
    batch = next(iter(recipe.datamodule(cfg).loader("train")))
    assert batch["stimulus"].shape[1:] == (3, 10, 10) and batch["stimulus"].abs().sum() > 0
    cfg.data.stimulus = "gratings"
    with pytest.raises(KeyError, match="/stimulus/gratings"):
        recipe.datamodule(cfg).loader("train")


def test_with_a_moving_rule_only_moving_labels_count_in_training_and_validation(tmp_path):
    """The animal stops at 30 s: with eval.moving_threshold the task's behaviour masks (training
    and validation) and the labelled windows of the count head's ridge start drop the rest windows."""
    path = _session(tmp_path / "a.h5", still_after=30.0)
    base = _cfg_dict(_config([path], split={"gap": 1.0}))
    base["eval"]["moving_threshold"] = 20.0
    base["eval"]["score_when"] = "moving"
    cfg = from_dict(recipe.RunConfig, base, where="t")
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert isinstance(task.score_windows, recipe.MovingWindows)
    batch = next(iter(dm.loader("train")))
    kept = task._counted(batch)["position"]
    t = batch["interval"].numpy()
    assert kept[torch.as_tensor(t > 31.0)].sum() == 0  # rest: never counted
    from_turn = np.abs(((t - 0.125 + 1.0) % 2.0) - 1.0)  # s from the window's centre to a turn (every 2 s)
    running = (t > 2.0) & (t < 29.0) & (from_turn > 0.45)  # near a turn the smoothed position stops
    assert running.sum() >= 3 and kept[torch.as_tensor(running)].all()  # moving windows keep their labels
    # the same windows, collected, are the scored / fitted ones in evaluation
    coll = {"session": batch["session"].numpy(), "interval": t}
    np.testing.assert_array_equal(recipe._moving_windows(cfg, dm, coll), task.score_windows(coll["session"], t))
    base["eval"]["score_when"] = "all"
    no_rule = recipe.task(from_dict(recipe.RunConfig, base, where="t"), dm)
    assert no_rule.score_windows is None


class _ReplayModel:
    """Stands in for a Neuroformer in the generation scoring: ``generate`` returns chosen ID sets."""

    def __init__(self, n_units: int, sets_per_batch):
        from types import SimpleNamespace
        self.config = SimpleNamespace(n_units=n_units, units=[f"s/u{i}" for i in range(n_units)])
        self._sets = list(sets_per_batch)
        self.seeds: list[int] = []

    def generate(self, batch, seed=None, **_):
        from neurofm.models.neuroformer_generate import GeneratedSpikes
        self.seeds.append(seed)
        sets = self._sets[int(round(float(batch["interval"][0]) / 0.25)) // len(batch["interval"])]
        b = len(batch["interval"])
        return GeneratedSpikes(interval=batch["interval"].numpy(), session=np.zeros(b, dtype=np.int64),
                               times=[batch["interval"].numpy()[w] - 0.1 + np.zeros(len(s)) for w, s in enumerate(sets)],
                               tokens=[np.asarray(s, dtype=np.int64) + N_SPECIAL for s in sets],
                               dt=[np.zeros(len(s), dtype=np.int64) for s in sets], window=0.25)


def _spike_batches(rng, n_units: int, n_batches: int, b: int, rates):
    """Batches of recorded windows (0.25 s, one after another) with Poisson spikes per unit."""
    from neurofm.tokens import EOS, PAD
    batches, sets = [], []
    for k in range(n_batches):
        win = [np.repeat(np.arange(n_units), rng.poisson(rates)) for _ in range(b)]
        L = max(len(x) for x in win) + 1
        tid = torch.full((b, L), PAD, dtype=torch.long)
        for w, x in enumerate(win):
            tid[w, :len(x)] = torch.as_tensor(x + N_SPECIAL)
            tid[w, len(x)] = EOS
        batches.append({"target_id": tid, "target_dt": torch.zeros_like(tid),
                        "interval": torch.as_tensor(0.25 * (k * b + np.arange(1, b + 1)), dtype=torch.float64)})
        sets.append(win)
    return batches, sets


def test_generation_verdict_says_plainly_whether_generated_spikes_beat_the_poisson_generator(tmp_path):
    """Window F1 of generated spikes beside the mean-rate Poisson generator, the rate-weighted draw
    held to the generated number of distinct units and every unit, on the same windows: replaying
    the recorded spikes beats both generators; generating nothing LOSES, and says so in the
    limitations; the matched arm names as many units per window as the generated windows."""
    n_units, b, n_batches = 12, 16, 8
    rates = np.linspace(0.05, 1.5, n_units)
    cfg = _config([])
    cfg.eval.generate_windows = b * n_batches
    train_counts = rates * 1000.0  # 1000 training windows at these rates
    batches, true_sets = _spike_batches(np.random.default_rng(7), n_units, n_batches, b, rates)

    replay = _ReplayModel(n_units, true_sets)
    oracle = recipe._generation_metrics(cfg, replay, batches, train_counts, 1000, tmp_path)
    assert oracle.metrics["window_f1"] == 1.0
    # every window drawn eval.generate_draws times, with seeds eval.seed + k
    draws = cfg.eval.generate_draws
    assert draws > 1 and oracle.n_draws == draws and replay.seeds == list(range(draws)) * n_batches
    assert oracle.beats_poisson and oracle.to_dict()["beats_mean_rate_poisson_generator"]
    assert oracle.verdicts[0].startswith("generated spikes beat the mean-rate Poisson generator: window F1 1.000")
    assert oracle.to_dict()["limitations"] == []
    matched = oracle.baselines[recipe.MATCHED_BASELINE]
    assert matched["generated_units_per_window"] == oracle.metrics["generated_units_per_window"]
    assert matched["generated_repeat_fraction"] == 0.0
    assert oracle.baselines[recipe.EVERY_UNIT]["window_recall"] == 1.0
    assert oracle.baselines[recipe.EVERY_UNIT]["generated_units_per_window"] == n_units
    # the recorded windows repeat units (Poisson counts > 1): the repeat fraction counts them
    n = sum(len(x) for s in true_sets for x in s)
    distinct = sum(len(set(x.tolist())) for s in true_sets for x in s)
    assert oracle.metrics["recorded_repeat_fraction"] == pytest.approx((n - distinct) / n)
    assert oracle.n_blocks == int(np.ceil(b * n_batches * 0.25 / recipe.GENERATION_BLOCK_S))

    empty = [[np.zeros(0, dtype=np.int64)] * b for _ in range(n_batches)]
    silent = recipe._generation_metrics(cfg, _ReplayModel(n_units, empty), batches, train_counts, 1000, tmp_path)
    assert silent.metrics["window_f1"] == 0.0 and not silent.beats_poisson
    assert silent.verdicts[0].startswith("generated spikes LOSE to the mean-rate Poisson generator: window F1 0.000")
    assert silent.to_dict()["limitations"] == [v for v in silent.verdicts if "LOSE" in v]


def test_every_unit_arm_names_the_units_that_fired_in_training(tmp_path):
    """The naming-everything reference names every unit that fired in the training block, not
    units silent there (no generator trained on those spikes could name them): with unit 0
    silent in training and firing at test, the arm names the other units in every window."""
    n_units, b, n_batches = 8, 16, 6
    rates = np.full(n_units, 0.6)
    cfg = _config([])
    cfg.eval.generate_windows = b * n_batches
    batches, true_sets = _spike_batches(np.random.default_rng(5), n_units, n_batches, b, rates)
    train_counts = rates * 500.0
    train_counts[0] = 0.0
    score = recipe._generation_metrics(cfg, _ReplayModel(n_units, true_sets), batches, train_counts, 500, tmp_path)
    arm = score.baselines[recipe.EVERY_UNIT]
    assert arm["generated_units_per_window"] == n_units - 1
    assert arm["window_recall"] < 1.0  # unit 0's test spikes are missed, as by any training-rate generator
    assert recipe.EVERY_UNIT == "every unit that fired in training, in every window"


class _SessionReplayModel(_ReplayModel):
    """A replay model whose generated windows carry their batch's session."""

    def generate(self, batch, seed=None, **kw):
        gen = super().generate(batch, seed=seed, **kw)
        gen.session = batch["session"].numpy().astype(np.int64)
        return gen


def test_generation_arms_use_each_windows_own_session(tmp_path):
    """Pretraining on two sessions (units 0-3 in one, 4-7 in the other): each window's random
    arms draw from its own session's training rates and units. Pooled, the "every unit" arm named
    all 8 units in every window and the mean-rate generator drew half its spikes from units that
    never fire there (on two V1 sessions of 72 and 58 units: 130 units per window)."""
    n_units, b, n_batches = 8, 16, 8
    rates = np.array([[0.8, 0.8, 0.8, 0.8, 0, 0, 0, 0], [0, 0, 0, 0, 0.8, 0.8, 0.8, 0.8]])
    cfg = _config([])
    cfg.eval.generate_windows = b * n_batches
    rng = np.random.default_rng(11)
    batches, true_sets = [], []
    for k in range(n_batches):
        s = k % 2
        bb, ss = _spike_batches(rng, n_units, 1, b, rates[s])
        bb[0]["interval"] = bb[0]["interval"] + 0.25 * k * b  # consecutive windows, as _ReplayModel expects
        bb[0]["session"] = torch.full((b,), s)
        batches += bb
        true_sets += ss
    counts, n_windows = rates * 1000.0, np.array([1000, 1000])
    score = recipe._generation_metrics(cfg, _SessionReplayModel(n_units, true_sets), batches, counts, n_windows,
                                       tmp_path)
    every = score.baselines[recipe.EVERY_UNIT]
    assert every["generated_units_per_window"] == 4 and every["window_recall"] == 1.0
    poisson = score.baselines[recipe.GENERATOR_BASELINE]
    pooled = recipe._generation_metrics(cfg, _SessionReplayModel(n_units, true_sets), batches, counts.sum(0), 2000,
                                        tmp_path).baselines[recipe.GENERATOR_BASELINE]
    # per session: as many spikes per window as recorded, all from units that can fire there
    assert poisson["generated_spikes_per_window"] == pytest.approx(3.2, rel=0.1)
    # a drawn unit is in the recorded set with P = 1 - exp(-0.8) = 0.55 in its own session, 0 in the other
    assert poisson["window_precision"] == pytest.approx(1 - np.exp(-0.8), abs=0.08)
    assert pooled["window_precision"] < 0.6 * poisson["window_precision"]


def test_generation_verdict_gives_no_ci_over_too_few_blocks(tmp_path):
    """8 windows of 0.25 s span 2 s: too few 1 s blocks for a bootstrap, and the line says so."""
    n_units, b = 6, 8
    cfg = _config([])
    cfg.eval.generate_windows = b
    rates = np.full(n_units, 0.8)
    batches, true_sets = _spike_batches(np.random.default_rng(3), n_units, 1, b, rates)
    score = recipe._generation_metrics(cfg, _ReplayModel(n_units, true_sets), batches, rates * 100, 100, tmp_path)
    assert score.n_blocks < recipe.MIN_CI_BLOCKS and not score.beats_poisson
    assert all("no CI" in v and "raise eval.generate_windows" in v for v in score.verdicts)
    assert score.to_dict()["limitations"] == []


def test_validation_scores_the_starting_state_and_selection_can_keep_it(tmp_path):
    """Fine-tuning validates before the first optimizer step (logged at step 0) and the step-0
    state is the best checkpoint until a later check beats it: with a learning rate that wrecks
    the model, the evaluated and exported weights are the ones training started from."""
    import copy
    import csv

    import lightning as L

    from neurofm.experiment import run
    from neurofm.hub import load_pretrained

    class Start(L.Callback):  # the weights as training starts
        def on_train_start(self, trainer, pl_module):
            self.state = copy.deepcopy(pl_module.model.state_dict())

    path = _session(tmp_path / "a.h5", still_after=DURATION)
    base = _cfg_dict(_config([path], split={"gap": 1.0}))
    base["model"]["behavior"][0]["count_bin"] = 0.05
    base["run_dir"] = str(tmp_path / "run")
    base["task"].update(lr=0.5, head_lr_ratio=10.0, step_budget=6)
    base["trainer"].update(max_epochs=-1, max_steps=-1, early_stopping_patience=5, progress_bar=False)
    # every window scored: this 60 s session's 6 s test block holds too few moving windows once the
    # instant turns every 2 s read as stops (the moving rule is not what this test is about)
    base.setdefault("eval", {})["score_when"] = "all"
    start = Start()
    m = run(from_dict(recipe.RunConfig, base, where="t"), extra_callbacks=[start]).metrics
    chosen = m["training"]["evaluated_checkpoint"]
    assert chosen["step"] == 0 and m["training"]["steps"] > 0
    logged = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv"))))
              if r.get("val/behavior_r2")]
    assert logged[0]["step"] == "0" and len(logged) > 1
    # every later check scored below the start: no check to compare, the start is kept (and said so)
    sel = m["training"]["selection"]
    assert sel["kept"] == "start" and sel["selected_step"] == 0 and sel["best_check_step"] is None
    paired = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))) if r.get("val/paired_gain")]
    assert len(paired) == len(logged) - 1 and all(float(r["val/paired_gain"]) < 0 for r in paired)
    assert all(float(r["val/behavior_r2"]) < float(logged[0]["val/behavior_r2"]) for r in logged[1:])
    final = load_pretrained(tmp_path / "run" / "pretrained").state_dict()
    assert set(final) == set(start.state) and all(torch.equal(final[k], start.state[k]) for k in final)


def test_starting_validation_uses_the_scored_windows(tmp_path):
    """The step-0 score (NeuroformerTask.validation_scores) counts only the windows the task's
    scoring rule keeps, as every later validation check and the test do."""
    path = _session(tmp_path / "a.h5", still_after=DURATION)
    cfg = _config([path], split={"gap": 1.0})
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    dm.setup("fit")
    every = task.validation_scores(dm.val_dataloader())
    ends = np.concatenate([b["interval"].numpy() for b in dm.val_dataloader()])
    cut = float(np.median(ends))
    task.score_windows = lambda session, interval: interval < cut
    scored = task.validation_scores(dm.val_dataloader())
    preds, ys = [], []
    with torch.no_grad():
        task.eval()
        for b in dm.val_dataloader():
            keep = b["interval"] < cut
            preds.append(task.model(b)["behavior"]["position"][keep].reshape(-1))
            ys.append(b["behavior"]["position"][keep].reshape(-1))
    pred, y = torch.cat(preds).double(), torch.cat(ys).double()
    want = float(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert scored["val/behavior_r2"] == pytest.approx(want, abs=1e-4)
    assert scored["val/position_r2"] == scored["val/behavior_r2"]
    assert abs(scored["val/behavior_r2"] - every["val/behavior_r2"]) > 1e-3


def test_generated_spikes_below_the_every_unit_arm_are_a_limitation(tmp_path, capsys):
    """Window F1 of generated spikes below the "every unit that fired in training" arm was in the
    generation table only: no verdict line, so no limitations entry, no terminal LIMITATION line
    and nothing under the card's Limitations. It is listed as the other losses are."""
    from neurofm.cards import render_card
    from neurofm.experiment import print_summary

    n_units, b, n_batches = 10, 16, 8
    rates = np.full(n_units, 0.8)
    cfg = _config([])
    cfg.eval.generate_windows = b * n_batches
    batches, true_sets = _spike_batches(np.random.default_rng(11), n_units, n_batches, b, rates)
    # a generator that names one unit per window: precise, but misses most of what fired
    one = [[np.array([w % n_units]) for w in range(b)] for _ in range(n_batches)]
    score = recipe._generation_metrics(cfg, _ReplayModel(n_units, one), batches, rates * 500, 500, tmp_path)
    assert score.metrics["window_f1"] < score.baselines[recipe.EVERY_UNIT]["window_f1"]
    (line,) = [v for v in score.verdicts if recipe.EVERY_UNIT in v]
    assert line.startswith(f"generated spikes LOSE to naming {recipe.EVERY_UNIT}: window F1 "), line
    generation = score.to_dict()
    assert line in generation["limitations"]
    metrics = {**{"family": "neuroformer", "name": "g", "metrics": {}, "baselines": {}},
               "generation": generation, "limitations": generation["limitations"]}  # as evaluate assembles it
    print_summary({**metrics, "metrics": {"test_auroc": 0.93491, "test_auroc_ci95": [0.8154761904761905, 1.0]}},
                  tmp_path)
    out = capsys.readouterr().out
    assert f"  LIMITATION: {line}" in out
    # a CI reads as the metric does (it printed [0.8154761904761905, 1.0])
    assert "  test_auroc                   0.9349\n  test_auroc_ci95              [0.8155, 1.0000]\n" in out
    assert f"- {line}" in render_card(metrics).split("## Limitations", 1)[1]
    # a generator that replays the recorded spikes beats it: no such line
    replay = recipe._generation_metrics(cfg, _ReplayModel(n_units, true_sets), batches, rates * 500, 500, tmp_path)
    assert any(v.startswith(f"generated spikes beat naming {recipe.EVERY_UNIT}") for v in replay.verdicts)
    assert replay.to_dict()["limitations"] == []
