"""Blocked K-fold cross-validated fine-tuning (``neurofm finetune --folds K``): the folds' blocks,
the pooled decode report, the whole path for both families, and every fold checked before the
first one trains."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurofm.cli import main
from neurofm.data.splits import BlockedKFold
from neurofm.jsonio import loads_strict
from neurofm.report import DECODE_INPUTS, decode_report, pool_folds, save_inputs

QUIET = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=1"]


# -- the folds' blocks ---------------------------------------------------------------------------


def test_blocked_kfold_with_a_validation_block_tests_every_moment_once():
    T, K, gap = 100.0, 5, 2.0
    splits = [BlockedKFold(K, k, gap=gap, valid=0.1).split_span(0.0, T, k) for k in range(K)]
    tests = [s["test"].pairs()[0] for s in splits]
    assert tests == [(0.0, 20.0), (20.0, 40.0), (40.0, 60.0), (60.0, 80.0), (80.0, 100.0)]  # cover [0, T) once
    for k, s in enumerate(splits):
        assert list(s) == ["train", "valid", "test"]
        (va, vb), (ta, tb) = s["valid"].pairs()[0], tests[k]
        assert vb - va == pytest.approx(10.0)
        # validation right after the test block, or right before it for the last fold
        assert (va == pytest.approx(tb + gap)) if k < K - 1 else (vb == pytest.approx(ta - gap))
        held = (min(ta, va), max(tb, vb))
        for a, b in s["train"].pairs():  # training keeps `gap` from both held-out blocks
            assert b <= held[0] - gap + 1e-9 or a >= held[1] + gap - 1e-9
        assert s["train"].duration == pytest.approx(T - (held[1] - held[0]) - gap * (int(held[0] > 0) + int(held[1] < T)))
    assert list(BlockedKFold(3, 0).split_span(0.0, 30.0, 0)) == ["train", "test"]  # without valid: as before
    with pytest.raises(ValueError, match="valid must be a fraction"):
        BlockedKFold(2, 0, valid=0.6)


# -- the pooled report ---------------------------------------------------------------------------


def _fold_report(rng, n, shift, note):
    y = rng.normal(size=n)
    arms = {"model": y + rng.normal(scale=0.5, size=n), "ridge": y + rng.normal(scale=0.7, size=n) + shift,
            "noise": rng.normal(size=n)}
    blocks = np.repeat(np.arange(4), n // 4 + 1)[:n] + 7  # a fold's own block ids
    return decode_report(arms, y, blocks, target="speed", label_fraction=0.5, scored="moving test windows",
                         notes={"model": note, "ridge": "same windows"}, n_fitted=3 * n), (arms, y, blocks)


def test_pool_folds_scores_the_folds_test_windows_as_one_test_set(tmp_path):
    rng = np.random.default_rng(0)
    paths, parts = [], []
    for k, (n, note) in enumerate([(40, "started at ridge"), (37, "started at ridge + pooled state")]):
        rep, part = _fold_report(rng, n, 0.1 * k, note)
        save_inputs({"speed": rep}, tmp_path / f"f{k}.npz")
        paths.append(tmp_path / f"f{k}.npz")
        parts.append(part)
    pooled = pool_folds(paths)["speed"]
    # the same numbers as one report over the concatenation, each fold's blocks kept apart
    blocks = np.concatenate([np.unique(b, return_inverse=True)[1] + 4 * k for k, (_, _, b) in enumerate(parts)])
    direct = decode_report({a: np.concatenate([p[0][a] for p in parts]) for a in ("model", "ridge", "noise")},
                           np.concatenate([p[1] for p in parts]), blocks, target="speed", label_fraction=0.5,
                           strata=np.repeat([0, 1], [40, 37]))
    assert pooled.n_windows == 77 and pooled.n_blocks == 8 and pooled.label_fraction == 0.5
    for row, want in zip(pooled.rows, direct.rows):
        assert row.arm == want.arm and row.values == pytest.approx(want.values)
        assert row.ci == want.ci and row.diff == want.diff
    # a note every fold gave is kept; one that differs by fold is not (it would describe one fold)
    assert pooled.row("ridge").note == "same windows" and pooled.row("model").note == ""
    assert "2 blocked folds pooled" in pooled.scored and "moving test windows" in pooled.scored
    # each fold's own labelled training windows, stated (the arms of fold k were fitted on fold k's)
    assert "fitted on fold k's labelled training windows (120/111, folds 1 to 2)" in pooled.scored
    # an arm one fold lacks is left out of the pooled report rather than scored on part of it
    rep, _ = _fold_report(rng, 30, 0.0, "x")
    rep.inputs["arms"].pop("ridge")
    save_inputs({"speed": rep}, tmp_path / "f2.npz")
    assert [r.arm for r in pool_folds([*paths, tmp_path / "f2.npz"])["speed"].rows] == ["model", "noise"]
    with pytest.raises(ValueError, match="at least 2"):
        pool_folds(paths[:1])


def test_pooled_auroc_is_each_folds_auroc_averaged_not_the_folds_scores_ranked_together(tmp_path):
    """Two folds whose models rank their own test segments perfectly, one scoring everything 5
    higher: ranked together they would score 0.75; each fold's AUROC is 1."""
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    paths = []
    for k, (lab, offset) in enumerate([(y[:4], 0.0), (y[4:], 5.0)]):
        s = lab + offset
        rep = decode_report({"model": s, "flat": np.zeros(4) + offset + np.arange(4) % 2 * 0.0}, lab, np.arange(4),
                            task="classification", target="cue")
        save_inputs({"cue": rep}, tmp_path / f"f{k}.npz")
        paths.append(tmp_path / f"f{k}.npz")
    pooled = pool_folds(paths)["cue"]
    assert pooled.row("model").values["auroc"] == 1.0
    assert decode_report({"model": np.r_[y[:4], y[4:] + 5.0]}, y, np.arange(8), task="classification").row(
        "model").values["auroc"] == pytest.approx(0.75)
    assert "AUROC: each fold's AUROC on its own test block" in pooled.describe()


# -- the whole path, both families ---------------------------------------------------------------


def _spike_session(path: Path, duration: float = 120.0) -> str:
    """Poisson spikes whose rates follow a position moving back and forth the whole time."""
    from neurofm.data.session import SessionWriter

    rng = np.random.default_rng(0)
    ts = np.arange(0.0, duration, 0.01)
    x = 100.0 * np.abs(((ts * 50.0 / 100.0) % 2.0) - 1.0)  # 0-100 cm at 50 cm/s
    rates = 2.0 + 20.0 * np.exp(-0.5 * ((x[:, None] - np.array([10.0, 40.0, 70.0, 95.0])) / 12.0) ** 2)
    counts = rng.poisson(rates * 0.01)
    step, unit = np.nonzero(counts)
    times = ts[np.repeat(step, counts[step, unit])] + rng.uniform(0, 0.01, counts.sum())
    units = np.repeat(unit, counts[step, unit])
    order = np.argsort(times)
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times[order], units[order], t_start=0.0, t_end=duration)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    return str(path)


def test_finetune_folds_spikes(tmp_path, capsys):
    from neurofm.config import from_dict
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    data = _spike_session(tmp_path / "rec.h5")
    config = from_dict(NeuroformerConfig, {
        "n_embd": 16, "n_head": 2, "temporal_hidden": 16, "window": {"curr": 0.25, "prev": 0.25, "dt": 0.01},
        "layers": {"state": 1, "prev_encoder": 1, "state_history": 1, "stimulus_encoder": 0, "stimulus": 0,
                   "behavior": 0, "self_att": 1}, "contrastive": {"enabled": False},
        "n_units": 4, "units": [f"rec/u{i}" for i in range(4)], "block_size": {"id": 16, "prev_id": 24}})
    torch.manual_seed(0)
    folder = Neuroformer(config).save_pretrained(tmp_path / "pre")
    run = tmp_path / "cv"
    assert main(["finetune", "--pretrained", str(folder), "--data", data, "--behavior", "position", "--folds", "2",
                 "--run-dir", str(run), *QUIET, "eval.generate_windows=0"]) == 0
    out = capsys.readouterr().out
    m = loads_strict((run / "metrics.json").read_text())
    folds = [loads_strict((run / f"fold-{k}" / "metrics.json").read_text()) for k in (1, 2)]
    pooled = m["decode_report"]["position"]
    # every fold scored its own test block; the pooled report holds them all, once
    assert pooled["n_windows"] == sum(f["decode_report"]["position"]["n_windows"] for f in folds)
    assert "blocked 2-fold cross-validation, fold 1 of 2" in folds[0]["protocol"]
    assert "fold 2 of 2" in folds[1]["protocol"]
    assert m["cross_validation"]["folds"] == 2 and len(m["cross_validation"]["per_fold"]) == 2
    assert m["metrics"]["position_r2"] == pytest.approx(pooled["rows"][0]["r2"])
    assert {"ridge on binned counts", "null (training mean)"} <= set(m["baselines"])
    # the pooled model not beating the training mean is a limitation of the cross-validation, as of a run
    null_verdict = next(v for v in pooled["verdicts"] if "null (training mean)" in v)
    said = [x for x in m["limitations"] if "does not beat the training mean" in x]
    assert len(said) == (0 if null_verdict.startswith("model beats") else 1), (null_verdict, m["limitations"])
    assert all((run / f"fold-{k}" / "pretrained" / "config.json").exists() for k in (1, 2))
    assert "2 blocked folds pooled" in out and "per fold (position" in out
    text = (run / "decode_report.md").read_text()
    assert text.count("\n| 1 |") == 1 and text.count("\n| 2 |") == 1
    # a fold's own report (few blocks) points to the pooled one; it suggested --folds before
    fold_text = (run / "fold-1" / "decode_report.md").read_text()
    assert "ONLY" in fold_text and "this is fold 1 of 2" in fold_text and "--folds" not in fold_text
    # each fold's read-out start (one per behaviour in a Neuroformer run) beside its scores
    for f, row in zip(folds, m["cross_validation"]["per_fold"]):
        assert row["start"] == f"position: {f['start']['position']['features']}"
    assert "| model: start | model: kept |" in text
    # no model of its own, so no card: each fold has one
    assert main(["card", str(run)]) != 0
    assert "has no model of its own; each fold's model has its card" in capsys.readouterr().err
    assert main(["card", str(run / "fold-1")]) == 0 and not (run / "pretrained").exists()


@pytest.fixture(scope="module")
def ieeg_lab(tmp_path_factory) -> dict[str, str]:
    """A 300 s iEEG session with word_onset events and an untrained BaRISTA encoder saved as a
    pretrained folder (as tests/recipes/test_barista_few_labels.py)."""
    from neurofm.config import from_dict
    from neurofm.data.synthetic import simulate_ieeg
    from neurofm.models.barista import BaristaEncoder
    from neurofm.recipes import barista

    out = tmp_path_factory.mktemp("cv")
    ieeg = simulate_ieeg(out / "rec.h5", n_channels=12, duration=300.0, sampling_rate=128.0, n_regions=10, seed=0,
                         regions=[9, 0, 2, 1])
    cfg = barista.prepare(from_dict(barista.RunConfig, {
        "data": {"sessions": [str(ieeg)], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}}, where="test"))
    torch.manual_seed(0)
    enc = BaristaEncoder(barista._sized_config(cfg, barista.datamodule(cfg)))
    return {"ieeg": str(ieeg), "barista": str(enc.save_pretrained(out / "barista"))}


def test_finetune_folds_barista(ieeg_lab, tmp_path, capsys):
    run = tmp_path / "cv"
    assert main(["finetune", "--pretrained", ieeg_lab["barista"], "--data", ieeg_lab["ieeg"], "--task", "classify",
                 "--events", "word_onset", "--folds", "3", "--run-dir", str(run), *QUIET]) == 0
    # the settings taken from the model: logged by fold 1's pre-flight and by each fold's run, not
    # once more by every other fold's pre-flight
    assert capsys.readouterr().err.count("data.line_noise = 60: notch frequency") == 1 + 3
    m = loads_strict((run / "metrics.json").read_text())
    folds = [loads_strict((run / f"fold-{k}" / "metrics.json").read_text()) for k in (1, 2, 3)]
    assert m["decode_report"]["word_onset"]["n_windows"] == sum(f["data"]["test_segments"] for f in folds)
    with h5py.File(ieeg_lab["ieeg"]) as f:
        n_events = len(f["events/word_onset/onset"])
    # event-locked segments: the folds' test blocks together hold about every event once
    assert n_events - 6 <= m["decode_report"]["word_onset"]["n_windows"] <= n_events
    assert m["metrics"]["word_onset_auroc"] == pytest.approx(m["decode_report"]["word_onset"]["rows"][0]["auroc"])
    for k in (1, 2, 3):
        assert (run / f"fold-{k}" / DECODE_INPUTS).exists()
    # the pooled report names each fold's own test segment count, not fold 1's alone
    counts = [f["data"]["test_segments"] for f in folds]
    assert f"all {'/'.join(map(str, counts))} test segments" in m["decode_report"]["word_onset"]["scored"] \
        or len(set(counts)) == 1
    # each fold's start and the weights selection kept, beside its scores: a fold that kept its
    # starting state scores that start's fit, and the pooled table says how many did
    report = (run / "decode_report.md").read_text()
    assert "| BaRISTA fine-tuned: start | BaRISTA fine-tuned: kept |" in report
    kept_start = 0
    for k, (f, row) in enumerate(zip(folds, m["cross_validation"]["per_fold"]), 1):
        sel = f["training"]["selection"]
        kept = "start (step 0)" if sel["kept"] == "start" else f"step {sel['selected_step']}"
        assert row["start"] == f["start"]["features"] and row["kept"] == kept
        line = next(x for x in report.splitlines() if x.startswith(f"| {k} | "))
        assert line.endswith(f"| {f['start']['features']} | {kept} |")
        kept_start += sel["kept"] == "start"
    assert (f"{kept_start} of 3 folds kept their starting state" in report) == (kept_start > 0)
    assert any("kept their starting state" in x for x in m["limitations"]) == (kept_start == 3)
    # evaluate of a fold's model scores that fold's test block, and says so
    capsys.readouterr()
    assert main(["evaluate", "--pretrained", str(run / "fold-2" / "pretrained"), "--data", ieeg_lab["ieeg"],
                 "--run-dir", str(tmp_path / "ev"), *QUIET]) == 0
    assert "the fine-tuning run's split (fold 2 of 3-fold blocked cross-validation" in capsys.readouterr().err
    ev = loads_strict((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["metrics"]["test_auroc"] == pytest.approx(folds[1]["metrics"]["test_auroc"])


def test_every_fold_is_checked_before_the_first_trains(ieeg_lab, tmp_path, capsys):
    """No events in 200-235 s of 300: fold 2 of 3's validation block (right after its test block
    of 100-200 s: 202-232 s) holds none. Refused naming the fold, before fold 1 trains (a refusal
    after it would waste fold 1's training)."""
    path = tmp_path / "gap.h5"
    path.write_bytes(Path(ieeg_lab["ieeg"]).read_bytes())
    with h5py.File(path, "r+") as f:
        g = f["events/word_onset"]
        t = g["onset"][()]
        keep = (t < 200.0) | (t > 235.0)
        for key in list(g):
            values = g[key][()]
            del g[key]
            g.create_dataset(key, data=values[keep])
    run = tmp_path / "cv"
    assert main(["finetune", "--pretrained", ieeg_lab["barista"], "--data", str(path), "--task", "classify",
                 "--events", "word_onset", "--folds", "3", "--run-dir", str(run), *QUIET]) != 0
    err = capsys.readouterr().err
    assert "error: fold 2 of 3 (--folds 3): data.events: the valid split (blocked 3-fold cross-validation" in err
    # the refusal's generic advice (data.split fractions, `neurofm split`) does not move a fold's blocks
    assert "with --folds 3 the split is the folds' (a session's /intervals and the data.split train / test " \
           "fractions are not used)" in err
    assert not list(run.rglob("*.ckpt")) and not (run / "fold-1" / "metrics.json").exists()


def test_a_run_without_a_decode_report_is_refused_before_any_fold_trains(ieeg_lab, tmp_path, capsys):
    run = tmp_path / "cv"
    assert main(["finetune", "--pretrained", ieeg_lab["barista"], "--data", ieeg_lab["ieeg"], "--task", "reconstruct",
                 "--folds", "2", "--run-dir", str(run), *QUIET]) != 0
    assert "--folds 2: cross-validation pools the decode reports of the folds, and this run makes none (channel " \
           "reconstruction)" in capsys.readouterr().err
    assert not run.exists()
