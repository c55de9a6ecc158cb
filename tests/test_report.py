import json

import numpy as np
import pytest

from neurofm import metrics as M
from neurofm.report import NULL_ARM, block_bootstrap_counts, decode_report, limitation_lines, null_limitation, time_blocks


def _data(n=600, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.25
    y = np.stack([np.sin(t / 3), np.cos(t / 5)], 1) + 0.1 * rng.standard_normal((n, 2))
    good = y + 0.2 * rng.standard_normal((n, 2))
    bad = y + 1.0 * rng.standard_normal((n, 2))
    null = np.broadcast_to(y.mean(0) + 0.3, y.shape)
    return t, y, good, bad, null


def test_time_blocks_contiguous_and_renumbered():
    ids = time_blocks([100.0, 104.0, 109.9, 110.0, 135.0], block_s=10.0)
    assert ids.tolist() == [0, 0, 0, 1, 2]  # the empty 120-130 s block does not leave a gap in the ids
    with pytest.raises(ValueError, match="block_s"):
        time_blocks([0.0], 0.0)


def test_bootstrap_counts_draw_k_blocks_per_replicate():
    counts, inv = block_bootstrap_counts([5, 5, 7, 9, 9, 9], n_boot=50, seed=1)
    assert counts.shape == (50, 3) and (counts.sum(1) == 3).all()
    assert inv.tolist() == [0, 0, 1, 2, 2, 2]


def test_point_estimates_match_metrics_and_cis_bracket_them():
    t, y, good, bad, null = _data()
    rep = decode_report({"model": good, "ridge": bad, "null": null}, y, time_blocks(t, 10.0), target="position",
                        label_fraction=0.1, scored="moving test windows", block_s=10.0, n_boot=300)
    row = rep.row("model")
    assert row.values["r2"] == pytest.approx(M.r2_score(y, good))
    assert row.values["pearson_r"] == pytest.approx(M.pearson_r(y, good))
    assert rep.row("ridge").values["r2"] == pytest.approx(M.r2_score(y, bad))
    for r in rep.rows:
        lo, hi = r.ci["r2"]
        assert lo <= r.values["r2"] <= hi and hi - lo > 0
    assert rep.n_blocks == 15 and rep.n_windows == 600
    assert rep.loses_to() == []
    assert any(v.startswith("model beats ridge") for v in rep.verdicts())
    assert "10% of the training windows" in rep.describe() and "moving test windows" in rep.describe()


def test_verdict_says_plainly_when_the_model_loses():
    t, y, good, bad, _ = _data()
    rep = decode_report({"model": bad, "ridge": good}, y, time_blocks(t, 10.0), n_boot=300)
    assert rep.loses_to() == ["ridge"]
    assert rep.verdicts()[0].startswith("MODEL LOSES to ridge")
    assert "MODEL LOSES" in rep.to_text()


def test_a_model_with_the_baselines_predictions_equals_it_rather_than_beating_it():
    """A fine-tuned model that kept its ridge start predicts what ridge predicts up to float32
    rounding: its paired CI is [+1e-8, +1e-7]-wide noise, which read "beats" (issue 10 harness)."""
    t, y, good, _, _ = _data()
    same = good.astype(np.float32).astype(np.float64)  # ridge's prediction through a float32 head
    same[::7] += 1e-7
    rep = decode_report({"model": same, "ridge": good}, y, time_blocks(t, 10.0), n_boot=300)
    (line,) = rep.verdicts()
    assert line.startswith("model equals ridge") and "beats" not in line and "LOSES" not in line
    assert rep.loses_to() in ([], ["ridge"])  # the point estimate may fall either side of 0
    # a real difference (0.2 vs 1.0 noise) is still a win, not "equals"
    better = decode_report({"model": good, "ridge": _data()[3]}, y, time_blocks(t, 10.0), n_boot=300)
    assert better.verdicts()[0].startswith("model beats ridge")


def test_blocks_widen_the_ci_under_autocorrelated_errors():
    """Errors that drift slowly make neighbouring windows dependent: resampling 10 s blocks gives a
    wider (honest) CI than resampling single windows as if they were independent."""
    from scipy.ndimage import gaussian_filter1d

    t, y, _, _, _ = _data()
    rng = np.random.default_rng(3)
    drift = gaussian_filter1d(rng.standard_normal((len(t), 2)), 20, axis=0) * 8
    pred = y + drift
    blocked = decode_report({"m": pred}, y, time_blocks(t, 10.0), n_boot=400).row("m").ci["r2"]
    single = decode_report({"m": pred}, y, np.arange(len(t)), n_boot=400).row("m").ci["r2"]
    assert blocked[1] - blocked[0] > 1.5 * (single[1] - single[0])


def test_json_has_no_nan():
    t, y, good, _, _ = _data(n=40)
    const = np.zeros_like(good)  # Pearson r undefined for a constant prediction
    rep = decode_report({"model": good, "null": const}, y, time_blocks(t, 1.0), n_boot=50)
    text = json.dumps(rep.to_dict(), allow_nan=False)
    d = json.loads(text)
    assert d["rows"][1]["pearson_r"] is None and d["rows"][0]["arm"] == "model"
    assert d["rows"][1]["pearson_r_ci"] == [None, None]
    mean_null = decode_report({"null": np.broadcast_to(y.mean(0) + 0.1, y.shape)}, y, time_blocks(t, 1.0), n_boot=50)
    assert mean_null.to_dict()["rows"][0]["pearson_r_ci"] == [None, None]  # no rounding-noise correlation
    assert "r2_diff_vs_model" in d["rows"][1]


def test_classification_auroc():
    rng = np.random.default_rng(0)
    n = 400
    labels = (np.arange(n) // 7) % 2
    good = labels + 0.5 * rng.standard_normal(n)
    noise = rng.standard_normal(n)
    rep = decode_report({"model": good, "band power ridge": noise}, labels, time_blocks(np.arange(n), 20.0),
                        task="classification", target="event", n_boot=200)
    assert rep.row("model").values["auroc"] == pytest.approx(M.auroc(labels, good))
    assert rep.primary == "auroc" and rep.verdicts()[0].startswith("model beats band power ridge")


def test_errors_name_the_arm():
    t, y, good, _, _ = _data(n=50)
    with pytest.raises(ValueError, match="arm 'ridge' has 49 predictions for 50"):
        decode_report({"model": good, "ridge": good[1:]}, y, time_blocks(t, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        decode_report({"model": np.full_like(good, np.nan)}, y, time_blocks(t, 1.0))


def test_a_baseline_at_the_metrics_ceiling_is_said_to_be_unbeatable():
    """BaRISTA AUROC 0.975 vs band power 1.000, CI [-0.079, +0.000], read "below band power but
    within the CI" as if more data could turn it around: a perfect baseline cannot be beaten. The
    line says so and how far below the model is; the verdict kind stays what the CI says."""
    from neurofm.report import verdict

    rng = np.random.default_rng(0)
    n = 120
    labels = (np.arange(n) // 6) % 2
    perfect = labels + 0.1 * rng.random(n)  # every positive above every negative
    model = labels + 0.3 * rng.standard_normal(n)  # AUROC 0.988
    rep = decode_report({"barista": model, "band power": perfect}, labels, time_blocks(np.arange(n), 12.0),
                        task="classification", target="event", n_boot=300)
    assert rep.row("band power").values["auroc"] == 1.0 and rep.row("barista").values["auroc"] < 1.0
    d, lo, hi = rep.row("band power").diff["auroc"]
    (line,) = rep.verdicts()
    assert line.startswith(f"band power is at the ceiling (auroc 1.000) on these {n} scored windows: "
                           f"no model can beat it; barista is below it by {-d:.3f}"), line
    assert f"[{lo:+.3f}, {hi:+.3f}]" in line and "within the CI" not in line
    kind = verdict(d, lo, hi)
    assert kind == "below" and " LOSES to " not in line  # the limitation lists grep " LOSES to "
    assert rep.to_dict()["rows"][1]["at_ceiling"] is True and "at_ceiling" not in rep.to_dict()["rows"][0]
    # far below: still LOSES, in the words the limitation lists look for
    worse = decode_report({"barista": rng.standard_normal(n), "band power": perfect}, labels,
                          time_blocks(np.arange(n), 12.0), task="classification", n_boot=300)
    assert " LOSES to it" in worse.verdicts()[0] and "at the ceiling" in worse.verdicts()[0]
    # the model at the ceiling too: equal, no ceiling sentence needed
    same = decode_report({"barista": perfect, "band power": perfect}, labels, time_blocks(np.arange(n), 12.0),
                         task="classification", n_boot=300)
    assert same.verdicts()[0].startswith("barista equals band power")


def test_few_test_blocks_say_the_cis_are_rough():
    """A Utah-array session's default test block (40 s) held 4 blocks of 10 s: its report gave 95%
    CIs from 35 distinct resamples without a word. Under FEW_CI_BLOCKS blocks the report says so."""
    from neurofm.report import FEW_CI_BLOCKS

    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    arms = {"model": y + rng.normal(0, 0.5, 400), "ridge": y + rng.normal(0, 0.6, 400)}
    few = decode_report(arms, y, np.repeat(np.arange(4), 100), block_s=10.0)
    assert "ONLY 4 BLOCKS" in few.describe() and "neurofm split" in few.describe()
    # one fold of a cross-validated run points to the pooled report, not to --folds it already runs
    fold = decode_report(arms, y, np.repeat(np.arange(4), 100), block_s=10.0, fold="fold 2 of 5")
    assert "ONLY 4 BLOCKS" in fold.describe() and "this is fold 2 of 5" in fold.describe()
    assert "--folds" not in fold.describe()
    from types import SimpleNamespace

    from neurofm.report import fold_name

    assert fold_name(SimpleNamespace(folds=5, fold=2)) == "fold 2 of 5" and fold_name(SimpleNamespace(folds=0)) == ""
    many = decode_report(arms, y, np.repeat(np.arange(FEW_CI_BLOCKS), 40), block_s=10.0)
    assert "ONLY" not in many.describe()


def test_a_model_that_does_not_beat_the_training_mean_is_a_limitation():
    """A 10%-label fine-tune scored R2 -9.67 against the training mean's -10.31 (the paired difference's
    CI [-2.65, +2.78]): the report said "matches ... within the CI" and the run listed no limitation,
    though the model decoded nothing those windows could show. Not beating the null is now one (the
    fine-tuning run's and the pooled report of finetune --folds: tests/test_cross_validation.py)."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(400, 2))
    blocks = np.repeat(np.arange(20), 20)
    null = np.full_like(y, 0.01)
    arms = {"no signal": null + rng.normal(scale=0.05, size=y.shape), "decodes": y + rng.normal(scale=0.5, size=y.shape)}
    lines = {k: null_limitation("position", decode_report({"model": p, NULL_ARM: null}, y, blocks,
                                                                 target="position"))
             for k, p in arms.items()}
    assert lines["decodes"] is None
    assert lines["no signal"].startswith("position: the model does not beat the training mean, so it decodes no "
                                         "position these windows can show: model ")
    assert "matches null (training mean) within the CI: r2" in lines["no signal"] and "CI [" in lines["no signal"]
    # a report without the null arm (a classification report, or another caller's arms): nothing
    assert null_limitation("position", decode_report({"model": arms["no signal"], "other": null}, y,
                                                            blocks)) is None


def test_limitation_lines_say_a_loss_to_the_null_once():
    """A model below the training mean (a LOSES verdict) gets the null line, which quotes that verdict,
    instead of the LOSES line beside it; a loss to another baseline is still its own line. Both
    families' runs and the pooled --folds report list these lines."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=(400, 1))
    blocks = np.repeat(np.arange(20), 20)
    null = np.zeros_like(y)
    rep = decode_report({"model": null + 0.5 + rng.normal(scale=0.05, size=y.shape), NULL_ARM: null,
                         "ridge": y + rng.normal(scale=0.3, size=y.shape)}, y, blocks, target="speed")
    lines = limitation_lines("speed", rep)
    assert len(lines) == 2, lines
    assert lines[0].startswith("speed: MODEL LOSES to ridge")
    assert lines[1].startswith("speed: the model does not beat the training mean") and "LOSES to null" in lines[1]
    assert "the 95% CI of ridge lies above the null's r2" in lines[1]
