"""What a new lab's own recordings hold that the shipped samples do not, with the defaults a
user gets: tracking with NaN gaps, ... Tiny hand-made sessions, no training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neurofm.config import ConfigError, from_dict
from neurofm.data.session import Session, SessionWriter
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
from neurofm.recipes import neuroformer as recipe
from tests.recipes.test_neuroformer_defaults import DURATION, FEW, SMALL


def _session_with_tracking_gaps(path: Path) -> str:
    """Poisson spikes and a 2-D position (cm, 30 Hz) moving throughout, with tracking lost
    (NaN rows) for 2 s every 10 s, as camera tracking does."""
    rng = np.random.default_rng(3)
    n = rng.poisson(5.0 * DURATION * 4)
    times, units = np.sort(rng.uniform(0.0, DURATION, n)), rng.integers(0, 4, n)
    ts = np.arange(0.0, DURATION, 1 / 30)
    xy = np.stack([100 + 50 * np.sin(ts / 2), 100 + 50 * np.cos(ts / 3)], axis=1)
    xy[(ts % 10.0) < 2.0] = np.nan
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, units, t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, xy, unit="cm")
    return str(path)


def test_finetuning_on_position_with_tracking_gaps_standardises_on_finite_samples(tmp_path):
    """NaN rows in /behavior/position made the standardising mean and std NaN, so every target
    was NaN and `neurofm finetune` stopped at the count head's ridge with 'Ridge.fit: X or y
    contains NaN/inf'. The fine-tuning defaults, up to the task the trainer would fit."""
    path = _session_with_tracking_gaps(tmp_path / "gaps.h5")
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": 4, "units": [f"gaps/u{i}" for i in range(4)],
                                           "block_size": {"id": 12, "prev_id": 20}})
    folder = str(Neuroformer(config).save_pretrained(tmp_path / "pre"))
    cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], overrides=FEW))
    dm = recipe.datamodule(cfg)
    model = recipe.task(cfg, dm).model  # standardises, starts the count read-out at ridge
    var = next(v for v in model.config.behavior if v.name == "position")
    mean, std = var.mean, var.std
    with Session(path) as s:
        ts, xy = s.behavior("position")
        train = dm.splits(s)["train"].contains(ts, ts) & np.isfinite(xy).all(1)
    np.testing.assert_allclose(mean, xy[train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, xy[train].std(0), rtol=1e-5)
    assert torch.isfinite(model.count_heads["position"].weight).all()
    assert model.count_heads["position"].weight.abs().sum() > 0


def test_inspect_counts_the_tracking_gaps(tmp_path):
    """`neurofm inspect` listed 'position (36,000 x 2)' for a file with 1,273 NaN rows."""
    path = _session_with_tracking_gaps(tmp_path / "gaps.h5")
    with Session(path) as s:
        ts, xy = s.behavior("position")
        n_nan = int(np.isnan(xy).any(axis=1).sum())
        assert 0 < n_nan < len(ts)
        assert s.summary()["behavior_nan_rows"] == {"position": n_nan}
        assert f"position ({len(ts):,} x 2; {n_nan:,} rows NaN ({n_nan / len(ts):.1%}))" in s.describe()


def _session_rest_then_running(path: Path, rest_s: float = 20.0) -> str:
    """A session that starts with rest (position constant for ``rest_s`` s), then runs."""
    rng = np.random.default_rng(5)
    n = rng.poisson(5.0 * DURATION * 4)
    times, units = np.sort(rng.uniform(0.0, DURATION, n)), rng.integers(0, 4, n)
    ts = np.arange(0.0, DURATION, 1 / 30)
    run = np.clip(ts - rest_s, 0.0, None)
    x = 200.0 * np.abs(((run * 100.0 / 200.0) % 2.0) - 1.0)
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, units, t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    return str(path)


def test_every_label_ridge_is_fitted_on_the_windows_the_scoring_rule_keeps(tmp_path, monkeypatch):
    """The few-shot run's 'ridge on binned counts, every training label' arm was fitted on rest
    windows too, while every other arm (and the scored test windows) keep moving windows only: on
    a session that starts with 5 min of rest it scored R2 -0.23 against 0.35 for ridge on 10% of
    the (moving) labels, which made the labels look worthless."""
    path = _session_rest_then_running(tmp_path / "rest_first.h5")
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": 4, "units": [f"rest_first/u{i}" for i in range(4)],
                                           "block_size": {"id": 12, "prev_id": 20}})
    folder = str(Neuroformer(config).save_pretrained(tmp_path / "pre"))
    cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], label_fraction=0.5,
                                                overrides=[*FEW, "eval.generate_windows=0"]))
    assert cfg.eval.score_when == "moving"  # the default for position
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    fits = []
    real = recipe._ridge_fit_predict
    monkeypatch.setattr(recipe, "_ridge_fit_predict", lambda X, Y, *a, **k: fits.append(len(X)) or real(X, Y, *a, **k))
    out = recipe.evaluate(cfg, task, dm, tmp_path / "run")
    assert "ridge on binned counts, every training label" in out["baselines"]
    dm.setup("fit")
    train = recipe._collect(task.model, recipe._train_windows_loader(dm), run_model=False)
    moving = recipe._moving_windows(cfg, dm, train)
    assert 0 < moving.sum() < len(moving)  # the rest windows are training windows
    assert fits[-1] == int((train["beh_mask"]["position"] & moving).sum())


# -- iEEG -----------------------------------------------------------------------------------------


def _ecog_with_one_kind_of_event(path: Path, duration: float = 120.0, rate: float = 500.0) -> tuple[str, np.ndarray]:
    """10 channels of noise at 500 Hz and grip onsets every 4-9 s, every one labelled "grip" (a
    lab's own annotation: one kind of event)."""
    rng = np.random.default_rng(11)
    onsets = np.cumsum(rng.uniform(4.0, 9.0, 40))
    onsets = onsets[onsets < duration - 3.0]
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_continuous(rng.normal(0.0, 20.0, (int(duration * rate), 10)).astype(np.float32), sampling_rate=rate)
        w.add_channels([f"G{k:02d}" for k in range(10)], x=np.full(10, -40.0), y=np.linspace(-30, 0, 10),
                       z=np.linspace(55, 45, 10), regions={"destrieux": ["ctx_lh_G_precentral"] * 10},
                       types=["ecog"] * 10)
        w.add_events("grip", onset=onsets, duration=np.full(len(onsets), 1.5), label=["grip"] * len(onsets))
    return str(path), onsets


def test_events_of_one_label_are_classified_against_segments_without_one(tmp_path):
    """A lab's single kind of annotation (every onset "grip") was refused: 'training a classifier
    needs segments of at least two labels', with no way to classify event vs. background."""
    from neurofm.data.datasets import BACKGROUND_LABEL, IEEGSegmentDataset
    from neurofm.data.segmenter import IEEGSegmenter
    from neurofm.recipes import barista

    path, onsets = _ecog_with_one_kind_of_event(tmp_path / "grip.h5")
    ds = IEEGSegmentDataset([path], IEEGSegmenter(segment_s=1.0, n_patches=4), "train", events="grip",
                            event_locked=True)
    assert ds.reader.label_map == {BACKGROUND_LABEL: 0, "grip": 1}
    starts = np.array([ds.index.locate(i)[1] for i in range(len(ds))])
    labels = np.array([ds.index.locate(i)[2] for i in range(len(ds))])
    assert (np.abs(starts[labels == 1][:, None] - onsets[None]).min(1) < 1e-6).all()  # at the onsets
    assert (labels == 1).sum() > 5 and (labels == 0).sum() > 5
    for t0 in starts[labels == 0]:  # background: no onset in the segment nor in the second before it
        assert not ((onsets > t0 - 1.0) & (onsets < t0 + 1.0)).any()
    item = ds[int(np.flatnonzero(labels == 0)[0])]
    assert item["label"] == 0 and item["x"].shape[-1] == 500
    # the fine-tuning defaults (CLI: --task classify --events grip) pass the check before training
    cfg = barista.prepare(from_dict(barista.RunConfig, {
        "data": {"sessions": [path], "events": "grip", "segment_s": 1.0, "n_patches": 4},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}, "task": {"mode": "finetune"}}, where="test"))
    barista.preflight(cfg)


def _ecog_with_mains(path: Path, mains: float, duration: float = 30.0, rate: float = 500.0,
                     amplitude: float = 8.0) -> str:
    """10 channels of 1/f-like noise with a mains sine (``amplitude`` uV; 8: 1/5 of the noise std) at ``mains`` Hz."""
    rng = np.random.default_rng(13)
    n = int(duration * rate)
    x = np.cumsum(rng.normal(0.0, 1.0, (n, 10)), axis=0)
    x = 40.0 * (x - x.mean(0)) / x.std(0) + rng.normal(0.0, 5.0, (n, 10))
    x += amplitude * np.sin(2 * np.pi * mains * np.arange(n)[:, None] / rate + rng.uniform(0, 6.3, 10)[None])
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_continuous(x.astype(np.float32), sampling_rate=rate)
        w.add_channels([f"G{k:02d}" for k in range(10)], x=np.full(10, -40.0), y=np.linspace(-30, 0, 10),
                       z=np.linspace(55, 45, 10), types=["ecog"] * 10)
    return str(path)


def test_inspect_shows_a_mains_peak_too_mild_to_be_notched(tmp_path, capsys):
    """A clinical EDF with a 60 Hz peak 3x the power beside it (under the 4x rule) was described as
    having "no 50 / 60 Hz peak": the user could not tell a mild mains from none."""
    from neurofm import cli, jsonio

    path = _ecog_with_mains(tmp_path / "mild.h5", 60.0, duration=60.0, amplitude=0.8)
    assert cli.main(["inspect", path, "--json"]) == 0
    m = jsonio.loads_strict(capsys.readouterr().out)["ieeg"]["mains"]
    assert m["hz"] == 0.0 and m["peak_ratio_needed"] == 4.0
    assert 1.3 < m["peaks"]["60"] < 4.0 and m["peaks"]["50"] < 1.3
    assert cli.main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert re.search(r"  mains      none stated or found \(no 50 / 60 Hz peak of 4x the power beside it: 50 Hz "
                     r"1\.\dx, 60 Hz [1-3]\.\dx\): no notch unless data.line_noise is set", text)


def test_mains_the_notch_misses_is_named_before_training(tmp_path):
    """A European (50 Hz) recording pretrained with barista/demo's 60 Hz notch kept its mains in
    every segment, and the fine-tune took the same 60 Hz from the model, without a word."""
    import warnings

    from neurofm.data.segmenter import mains_peaks
    from neurofm.recipes import barista

    path = _ecog_with_mains(tmp_path / "eu.h5", 50.0)
    with Session(path) as s:
        peaks = mains_peaks(s.continuous_samples(0, s.n_samples), s.sampling_rate)
    assert peaks[50.0] > 4.0 and peaks[60.0] < 2.0

    def prepare(line_noise):
        return barista.prepare(from_dict(barista.RunConfig, {
            "data": {"sessions": [path], "segment_s": 1.0, "n_patches": 4, "line_noise": line_noise},
            "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}}, where="test"))

    for setting, said in ((60.0, "60 Hz"), (0.0, "off")):
        with pytest.warns(UserWarning, match=rf"eu.h5: mains at 50 Hz \(\d+x the power beside it, median over "
                                             rf"channels\), but data.line_noise is {said}; set data.line_noise=50"):
            prepare(setting)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare(50.0)  # notched: nothing to say
        assert prepare(None).data.line_noise == 50.0  # unset (barista/demo): the peak in the data, no warning


def _stated_mains(path: str, hz: float) -> str:
    """What convert writes for a BIDS sidecar's PowerLineFrequency."""
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs.update(mains_frequency=hz, mains_frequency_source="PowerLineFrequency in x_ieeg.json")
    return path


def test_the_notch_is_at_each_recordings_own_mains(tmp_path, caplog):
    """barista/demo notched every recording at 60 Hz, a European lab's (50 Hz) included. Unset,
    the notch is what the file states, else the peak in the data; sessions on different mains are
    refused; a fine-tune of a model that notched 60 Hz notches a 50 Hz recording at 50 Hz."""
    import logging
    import warnings

    from neurofm.models.barista import BaristaEncoder
    from neurofm.recipes import barista

    def prepare(sessions, **data):
        return barista.prepare(from_dict(barista.RunConfig, {
            "data": {"sessions": sessions, "segment_s": 1.0, "n_patches": 4, **data},
            "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}}, where="test"))

    stated = _stated_mains(_ecog_with_mains(tmp_path / "stated.h5", 50.0), 60.0)  # the data 50, the file says 60
    us = _ecog_with_mains(tmp_path / "us.h5", 60.0)
    eu = _ecog_with_mains(tmp_path / "eu.h5", 50.0)
    with caplog.at_level(logging.INFO, logger="neurofm"):
        assert prepare([us]).data.line_noise == 60.0
    assert "data.line_noise = 60 Hz, the recordings' mains (us.h5: " in caplog.text
    with pytest.warns(UserWarning, match=r"stated.h5: mains at 60 Hz \(PowerLineFrequency in x_ieeg.json\)"):
        prepare([stated], line_noise=50.0)  # what the file says comes before the peak, and a setting overrides
    with pytest.raises(ConfigError, match=r"data.line_noise: the sessions are on different mains \(us.h5 60 Hz .*"
                                          r"eu.h5 50 Hz .*set data.line_noise"):
        prepare([us, eu])
    with pytest.warns(UserWarning) as said:
        assert prepare([us, eu], line_noise=0.0).data.line_noise == 0.0  # set: obeyed, and warned
    assert sorted(str(w.message).split(" (")[0][-21:] for w in said) == ["eu.h5: mains at 50 Hz", "us.h5: mains at 60 Hz"]

    pre = prepare([us])
    folder = tmp_path / "enc60"
    BaristaEncoder(barista._sized_config(pre, barista.datamodule(pre))).save_pretrained(folder)
    caplog.clear()
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="neurofm"):
        warnings.simplefilter("error")  # notched at its own mains: no warning
        cfg = barista.prepare(barista.finetune_config(str(folder), [eu], task="reconstruct"))
    assert cfg.data.line_noise == 50.0 and cfg.model.preprocessing["line_noise"] == 50.0
    assert "data.line_noise = 50 Hz: the recordings' mains (eu.h5: " in caplog.text
    assert "notched its recordings' 60 Hz" in caplog.text
    assert barista.prepare(barista.finetune_config(str(folder), [us], task="reconstruct")).data.line_noise == 60.0


def test_one_label_events_are_reported_as_event_against_background(tmp_path):
    """The fine-tune's evaluation (no training: what is checked is what the report says) on
    one-label events scores both classes and says what the second one is."""
    from neurofm.data.datasets import BACKGROUND_LABEL
    from neurofm.models.barista import BaristaEncoder
    from neurofm.recipes import barista

    path, _ = _ecog_with_one_kind_of_event(tmp_path / "grip.h5")
    pre = barista.prepare(from_dict(barista.RunConfig, {
        "data": {"sessions": [path], "segment_s": 1.0, "n_patches": 4},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}}, where="test"))
    folder = tmp_path / "enc"
    BaristaEncoder(barista._sized_config(pre, barista.datamodule(pre))).save_pretrained(folder)
    cfg = barista.prepare(barista.finetune_config(str(folder), [path], task="classify", events="grip"))
    dm = barista.datamodule(cfg)
    out = barista.evaluate(cfg, barista.task(cfg, dm), dm, tmp_path / "run")
    per_class = out["data"]["test_segments_per_class"]
    assert set(per_class) == {BACKGROUND_LABEL, "grip"} and min(per_class.values()) > 0
    assert (f"/events/grip segments by label ({BACKGROUND_LABEL}, grip): a segment at each onset against "
            f"'{BACKGROUND_LABEL}' segments") in out["protocol"]
    assert 0.0 <= out["metrics"]["test_auroc"] <= 1.0


def test_inspect_says_the_notch_and_what_barista_pretraining_will_cost(tmp_path, capsys):
    """inspect said nothing of an iEEG file's mains (the notch a run takes) nor of what the
    README's BaRISTA pretraining (barista/demo) costs on it; a file without atlas labels is sized
    with the README's model.encode_scale=coords."""
    import math

    from neurofm import cli, jsonio
    from neurofm.experiment import load_config

    path = _ecog_with_mains(tmp_path / "eu.h5", 50.0, duration=60.0)
    assert cli.main(["inspect", path, "--json"]) == 0
    w = jsonio.loads_strict(capsys.readouterr().out)["ieeg"]
    assert w["mains"]["hz"] == 50.0 and "x the power beside it" in w["mains"]["source"]
    p, demo = w["pretraining"], load_config("barista/demo")
    assert p["config"] == "barista/demo" and p["overrides"] == ["model.encode_scale=coords"]
    assert p["config_epochs"] == demo.trainer.max_epochs and p["batch_size"] == demo.data.batch_size
    seconds = p["segment"]["n_patches"] * p["segment"]["patch_len"] / p["segment"]["sampling_rate"]
    assert seconds == demo.data.segment_s and p["segment"]["line_noise"] == 50.0
    n_train = int(60.0 * demo.data.split.train // demo.data.stride_s)  # about: the split's gap takes a segment
    assert abs(p["steps_per_epoch"] - math.ceil(n_train / p["batch_size"])) <= 1
    assert p["steps"] == p["config_epochs"] * p["steps_per_epoch"] and p["seconds_per_step"] > 0
    # what comes after training, timed on the file: validation once an epoch, the test pass and the
    # token-power check (trained and random encoder over ~128 training and test segments each)
    v, e = p["validation"], p["evaluation"]
    assert v["passes"] == p["config_epochs"] and v["batches"] >= 1 and v["seconds_per_batch"] > 0
    assert e["test_batches"] >= 1 and e["seconds_per_test_batch"] > 0 and e["token_power_batches"] >= 4
    assert p["total_s"] == pytest.approx(p["estimate_s"] + v["seconds"] + e["seconds"]) and "generation" not in p
    assert cli.main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "  mains      50 Hz (" in text and "BaRISTA runs notch it" in text
    assert re.search(r"pretraining barista/demo model.encode_scale=coords with these settings: \d+ steps \(\d+ epochs "
                     r"x \d+ batches of \d+\), segments of 4 x \d+ samples at 500 Hz \(1 s\); \d+ ms per step", text)
    assert re.search(r"\n  pretraining then: validation \d+ x \d+ batches about \d+ s, evaluation \(\d+ test batches, "
                     r"\d+ token-power batches\) about \d+ s: about \d+ (s|min) in all\n", text)


def test_inspect_sizes_pretraining_on_several_runs_together(tmp_path, capsys):
    """A lab pretrains on a subject's runs together (`data.sessions=[run-01, run-02]`), but inspect
    took one file and sized pretraining on it alone: on the nui12 trial's two 5-min sEEG runs it
    said 210 steps for each, and the run on both took 405. Several files now also get the estimate
    for all of them together, in the text and in --json."""
    from neurofm import cli, jsonio

    one = _ecog_with_mains(tmp_path / "run-01.h5", 50.0, duration=60.0)
    two = _ecog_with_mains(tmp_path / "run-02.h5", 50.0, duration=60.0)
    assert cli.main(["inspect", one, two, "--json"]) == 0
    out = jsonio.loads_strict(capsys.readouterr().out)
    each = [s["ieeg"]["pretraining"] for s in out["sessions"]]
    both = out["pretraining_together"]
    assert [s["session_id"] for s in out["sessions"]] == ["run-01", "run-02"]
    assert both["config_epochs"] == each[0]["config_epochs"] and both["overrides"] == ["model.encode_scale=coords"]
    assert abs(both["steps_per_epoch"] - (each[0]["steps_per_epoch"] + each[1]["steps_per_epoch"])) <= 1
    assert cli.main(["inspect", one, two]) == 0
    text = capsys.readouterr().out
    assert text.count("  pretraining barista/demo") == 3
    assert f"all 2 iEEG files together (data.sessions='[{one},{two}]'):" in text
    assert cli.main(["inspect", one, "--json"]) == 0  # one file: the document as before
    assert "ieeg" in jsonio.loads_strict(capsys.readouterr().out)
