"""The fine-tuning start (issue 10): ridge on binned counts alone unless blocked CV on the labelled
windows says the pooled state adds to it; the validation block's variance warning. Tiny
hand-made sessions and models with the `neurofm finetune` defaults, no training."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from neurofm.config import ConfigError, from_dict
from neurofm.data.session import Session, SessionWriter
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
from neurofm.recipes import neuroformer as recipe
from neurofm.report import START_SE, start_gain
from tests.recipes.test_neuroformer_defaults import FEW, SMALL

DURATION = 120.0  # s: ~380 training windows of 250 ms, enough for 4 blocked inner folds


def _place_session(path: Path, *, n_units: int = 8, seed: int = 0, amplitude=None, place_coded: bool = True) -> str:
    """A 1-D position sweeping a 200 cm track back and forth at 100 cm/s for the whole session;
    ``place_coded``: each unit fires up to 30 Hz in a Gaussian place field (20 cm wide), else
    5 Hz Poisson regardless of position. ``amplitude(t)`` (cm) narrows the sweep around 100 cm."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, DURATION, 0.001)
    amp = np.full(len(t), 100.0) if amplitude is None else amplitude(t)
    x = 100.0 + amp * (2.0 * np.abs(((t * 100.0 / 200.0) % 2.0) - 1.0) - 1.0)
    centres = np.linspace(12.5, 187.5, n_units)
    rate = (1.0 + 30.0 * np.exp(-(x[:, None] - centres) ** 2 / (2 * 20.0 ** 2)) if place_coded
            else np.full((len(t), n_units), 5.0))
    hit = rng.random(rate.shape) < rate * 0.001
    ti, ui = np.nonzero(hit)  # time-major: sorted by time
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(n_units)])
        w.add_spikes(t[ti] + 0.0005, ui, t_start=0.0, t_end=DURATION)
        w.add_behavior("position", t[::10], x[::10, None], unit="cm")
    return str(path)


def _finetune(tmp_path: Path, path: str, *, from_scratch: bool = True, n_units: int = 8):
    """`neurofm finetune --from-scratch` defaults on ``path``, up to the task the trainer would fit."""
    stem = Path(path).stem
    units = [f"{stem}/u{i}" for i in range(n_units)]
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": n_units, "units": units,
                                           "block_size": {"id": 24, "prev_id": 24}})
    folder = str(Neuroformer(config).save_pretrained(tmp_path / "pre"))
    cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], from_scratch=from_scratch,
                                                run_dir=str(tmp_path / "run"), overrides=FEW))
    return cfg, recipe.datamodule(cfg)


def _pooled(monkeypatch, make) -> None:
    """The model's pooled state replaced by ``make(batch, pooled)`` (a stand-in encoder)."""
    real = Neuroformer.forward

    def forward(self, batch, *a, **k):
        out = real(self, batch, *a, **k)
        out["pooled"] = make(batch, out["pooled"])
        return out

    monkeypatch.setattr(Neuroformer, "forward", forward)


def test_start_is_the_reports_ridge_arm_when_the_pooled_state_is_noise(tmp_path, monkeypatch, capsys):
    """Place cells, and a pooled state that is noise (random numbers drawn per window, unrelated
    to the spikes or the position): blocked CV keeps the start on the counts alone, and before
    any step the model's test predictions are the decode report's "ridge on binned counts" arm
    (same windows, same penalty rule) to float32. (A random network's pooled state is no such
    case: on this session it is a nonlinear function of the place cells' spikes and raised the
    CV R2 from 0.918 to 0.942, so the start took it.)"""
    def noise(batch, pooled):
        seeds = (batch["interval"].double() * 1000).round().long().tolist()
        return torch.stack([torch.randn(pooled.shape[1], generator=torch.Generator().manual_seed(s)) for s in seeds])

    _pooled(monkeypatch, noise)
    path = _place_session(tmp_path / "place.h5")
    cfg, dm = _finetune(tmp_path, path)
    task = recipe.task(cfg, dm)
    start = task.read_out_start["position"]
    assert start["features"] == "counts"
    assert start["cv_r2"]["counts"] > 0.5  # the place cells carry position
    assert not start["gain"] > start["paired_se"]
    assert task.model.behavior_heads["position"].weight.abs().sum() == 0
    err = capsys.readouterr().err
    cv = start["cv_r2"]
    assert (f"starts at ridge on binned counts alone (blocked-CV R2 on the {start['n_windows']} labelled training "
            f"windows: counts {cv['counts']:.3f}, counts+pooled {cv['counts+pooled']:.3f}") in err

    out = recipe.evaluate(cfg, task, dm, tmp_path / "ev")
    assert out["start"] == task.read_out_start
    assert out["metrics"]["position_r2"] == pytest.approx(out["baselines"]["ridge on binned counts"]["position_r2"],
                                                          abs=1e-6)
    # prediction by prediction, on the windows the report scores and fits
    model = task.model.eval()
    train = recipe._collect(model, recipe._train_windows_loader(dm), run_model=False)
    test = recipe._collect(model, dm.loader("test"))
    m = test["beh_mask"]["position"] & recipe._moving_windows(cfg, dm, test)
    mt = train["beh_mask"]["position"] & recipe._moving_windows(cfg, dm, train)
    ridge = recipe._ridge_fit_predict(train["binned"][mt], train["beh_true"]["position"][mt], test["binned"][m],
                                      cfg.data.stride or cfg.model.window.curr)
    np.testing.assert_allclose(test["beh_pred"]["position"][m], ridge, rtol=0, atol=1e-4 * ridge.std())


def test_start_uses_the_pooled_state_when_it_carries_the_target(tmp_path, monkeypatch):
    """Spikes that ignore position, and a pooled state that holds it (a stand-in for a pretrained
    encoder that has learned position): blocked CV picks counts + pooled state, and the pooled
    head starts at that ridge's weights."""
    path = _place_session(tmp_path / "flat.h5", place_coded=False)
    cfg, dm = _finetune(tmp_path, path, from_scratch=False)

    def informed(batch, pooled):  # pooled[:, 0] = the window's position (cm / 100)
        pooled = pooled.clone()
        pooled[:, 0] = batch["behavior"]["position"].reshape(len(batch["interval"]), -1)[:, 0] / 100.0
        return pooled

    _pooled(monkeypatch, informed)
    task = recipe.task(cfg, dm)
    start = task.read_out_start["position"]
    assert start["features"] == "counts+pooled"
    assert start["cv_r2"]["counts+pooled"] > 0.9 > 0.2 > start["cv_r2"]["counts"]
    assert start["gain"] > start["paired_se"] > 0
    w = task.model.behavior_heads["position"].weight
    assert w[0, 0].abs() > 10 * w[0, 1:].abs().max()  # the read-out leans on the informative column


def test_a_validation_block_where_the_target_barely_varies_warns_with_the_numbers(tmp_path):
    """Model selection scores R2 on the validation block: where the target barely varies there
    (place-runrest-60 fold 1: starting validation R2 -11.8), a warning before training gives the
    variance ratio, the window count and the fix; a normal split does not warn."""
    probe = _place_session(tmp_path / "probe.h5")
    cfg0, _ = _finetune(tmp_path / "a", probe)
    with Session(probe) as s:
        valid = recipe._split(cfg0)(s)["valid"]
    v0, v1 = float(valid.start[0]), float(valid.end[-1])
    narrow = _place_session(tmp_path / "narrow.h5",
                            amplitude=lambda t: np.where((t > v0 - 1.0) & (t < v1 + 1.0), 5.0, 100.0))
    cfg, _ = _finetune(tmp_path / "b", narrow)
    cfg.eval.score_when = "all"  # the narrow sweep is slow in places: score every window
    with pytest.warns(UserWarning) as record:
        recipe.check_test_target(cfg)
    (text,) = [str(r.message) for r in record if "validation" in str(r.message)]
    with Session(narrow) as s:
        n_valid = len(recipe.split_window_ends(cfg, s, "valid"))
    assert text.startswith(f"position: over the {n_valid} scored validation windows (all) its variance is 0.")
    assert "% of that over the training windows (" in text
    assert "the target barely varies in the validation block" in text
    assert "neurofm split FILE" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe.check_test_target(cfg0)


def test_pooled_state_needs_a_gain_above_two_paired_standard_errors():
    """The gain is the blocked-CV R2 difference of the two fits' out-of-fold predictions, its SE
    the paired block bootstrap's: a fit that is better by the same small amount in every block
    clears two SE; one that is better overall only through a block whose target barely varies (the
    old per-fold mean read +0.20 +- 0.20 there while the pooled R2 fell) does not, and neither
    does a gain of between one and two SE (linear-track fold 2's +0.028 +- 0.015 at one SE: the
    pooled start scored 0.186 below ridge on the test block)."""
    assert START_SE == 2.0
    rng = np.random.default_rng(0)
    n, K = 400, 20
    blocks = np.repeat(np.arange(K), n // K)
    y = rng.normal(size=(n, 1))
    counts = y + rng.normal(scale=0.8, size=(n, 1))
    better = y + 0.9 * (counts - y)  # 10% less error on every window
    gain, se = start_gain(counts, better, y, blocks)
    assert gain > START_SE * se > 0
    noisy = counts + rng.normal(scale=0.3, size=(n, 1))  # only noise added: worse overall
    gain, se = start_gain(counts, noisy, y, blocks)
    assert not gain > START_SE * se
    # better on average by a gain that is 1-2 SE: noise-level, not taken
    weak = y + 0.95 * (counts - y) + np.random.default_rng(3).normal(scale=0.2, size=(n, 1))
    gain, se = start_gain(counts, weak, y, blocks)
    assert se < gain <= START_SE * se, (gain, se)
    # the per-fold trap: one block where y barely varies and the second fit is much closer there
    y2 = y.copy(); y2[blocks == 0] = 0.01 * rng.normal(size=((blocks == 0).sum(), 1))
    c2 = y2 + rng.normal(scale=0.8, size=(n, 1)); b2 = c2 + rng.normal(scale=0.4, size=(n, 1))
    b2[blocks == 0] = y2[blocks == 0]
    per_block = [1 - ((y2[blocks == k] - p[blocks == k]) ** 2).sum() / ((y2[blocks == k] - y2[blocks == k].mean()) ** 2).sum()
                 for p in (c2, b2) for k in range(K)]
    assert np.mean(per_block[K:]) - np.mean(per_block[:K]) > 0.5  # a per-block mean would call it a big gain
    gain, se = start_gain(c2, b2, y2, blocks)
    assert not gain > START_SE * se
    assert all(np.isnan(start_gain(None, counts, y, blocks)))  # no CV (too few windows): counts alone


def _tiny_pretrained(tmp_path: Path, path: str) -> str:
    stem = Path(path).stem
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": 8, "units": [f"{stem}/u{i}" for i in range(8)],
                                           "block_size": {"id": 24, "prev_id": 24}})
    return str(Neuroformer(config).save_pretrained(tmp_path / "pre"))


def test_few_shot_draw_with_no_labelled_chunk_is_an_error_naming_the_setting(tmp_path):
    """`--label-fraction 0.1` on a short recording once drew no 10 s chunk of the training block
    and the run crashed with "torch.cat(): expected a non-empty list of Tensors". The stratified
    draw labels one chunk in every 1 / fraction of them, so a training block shorter than that can
    still get none: 0.05 draws one chunk in every 200 s, and a 120 s recording trains on ~96 s.
    A ConfigError naming data.label_fraction, the draw and the fix, before any step."""
    from neurofm.data.splits import labelled_windows

    path = _place_session(tmp_path / "place.h5")
    ends = np.arange(0.5, 100.0, 0.5)  # the first 100 s hold every training window of this recording
    seed = next(k for k in range(100) if not labelled_windows(np.zeros(len(ends), int), ends, 0.05, 10.0, k).any())
    cfg = recipe.prepare(recipe.finetune_config(_tiny_pretrained(tmp_path, path), [path], behavior=["position"],
                                                label_fraction=0.05, run_dir=str(tmp_path / "run"),
                                                overrides=FEW + [f"seed={seed}"]))
    with pytest.raises(ConfigError, match=r"data.label_fraction: 0.05 .*no labelled chunk in .*place.h5 \(one chunk "
                                          r"labelled at a seeded place in every 200 s.*--label-fraction"):
        recipe.task(cfg, recipe.datamodule(cfg))


def test_start_with_too_few_labelled_windows_for_cv_says_so(tmp_path, capsys):
    """`neurofm finetune --label-fraction 0.1` on a new lab's maze session left 28 labelled moving
    windows, too few for 4 blocked folds with their 5 s gaps, and printed "blocked-CV R2 on the 28
    labelled training windows: counts nan, counts+pooled nan; pooled state's gain per inner fold
    +nan +- nan SE". The line now says there was no CV and what the start used instead."""
    path = _place_session(tmp_path / "place.h5")
    cfg = recipe.prepare(recipe.finetune_config(_tiny_pretrained(tmp_path, path), [path], behavior=["position"],
                                                label_fraction=0.1, run_dir=str(tmp_path / "run"),
                                                overrides=FEW + ["seed=8"]))  # seed 8 labels one 10 s chunk
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    start = task.read_out_start["position"]
    assert start["features"] == "counts" and start["cv_r2"]["counts"] is None and start["gain"] is None
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "read-out of position starts at" in x)
    assert "nan" not in line
    assert f"only {start['n_windows']} labelled training windows that move: too few for blocked CV" in line
    assert "--label-fraction" in line
    # the decode report states the same count beside the label fraction (its arms fit those windows)
    report = recipe.evaluate(cfg, task, dm, tmp_path / "ev")["decode_report"]["position"]
    assert report["n_fitted"] == start["n_windows"]
    assert f"labels on 10% of the training windows ({start['n_windows']} labelled windows fitted)" in report["protocol"]
