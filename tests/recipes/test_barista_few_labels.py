"""BaRISTA fine-tuning with few labels (``neurofm finetune --label-fraction`` for iEEG): the spike
side's stratified chunk draw, the same labelled segments for every arm, the fraction and counts
stated, ``evaluate`` refitting its baselines on the run's labels, and a clear error before any
step when too few events are labelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch

QUIET = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, str]:
    """A 240 s iEEG session with word_onset events (speech / nonspeech, every 2-4 s) and a grip
    force, and an untrained BaRISTA encoder saved as a pretrained folder."""
    from neurofm.config import from_dict
    from neurofm.data.synthetic import simulate_ieeg
    from neurofm.models.barista import BaristaEncoder
    from neurofm.recipes import barista

    out = tmp_path_factory.mktemp("few")
    ieeg = simulate_ieeg(out / "rec.h5", n_channels=12, duration=240.0, sampling_rate=128.0, n_regions=10, seed=0,
                         regions=[9, 0, 2, 1], behavior="grip_force")
    cfg = barista.prepare(from_dict(barista.RunConfig, {
        "data": {"sessions": [str(ieeg)], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1}}, where="test"))
    torch.manual_seed(0)
    enc = BaristaEncoder(barista._sized_config(cfg, barista.datamodule(cfg)))
    return {"ieeg": str(ieeg), "barista": str(enc.save_pretrained(out / "barista")), "dir": str(out)}


def _finetune(lab, run_dir, *args: str) -> int:
    from neurofm.cli import main

    return main(["finetune", "--pretrained", lab["barista"], "--data", lab["ieeg"], "--run-dir", str(run_dir), *args,
                 *QUIET, "trainer.max_epochs=1"])


def test_label_fraction_labels_the_same_segments_for_every_arm_and_evaluate_refits_on_them(lab, tmp_path, capsys):
    """`neurofm finetune --label-fraction 0.5` on a BaRISTA model (before: refused), pretrained and
    --from-scratch: both arms, the head's start and every baseline of the decode report fit the
    same labelled training segments (the draw's), the protocol, metrics.json and card state the
    fraction and the counts, and `neurofm evaluate` of the fine-tune fits its baselines on them."""
    from neurofm.cli import main
    from neurofm.jsonio import loads_strict

    runs = {arm: tmp_path / arm for arm in ("pretrained", "scratch")}
    for arm, run_dir in runs.items():
        extra = ["--from-scratch"] if arm == "scratch" else []
        assert _finetune(lab, run_dir, "--task", "classify", "--events", "word_onset", "--label-fraction", "0.5",
                         *extra) == 0
    capsys.readouterr()
    m = {arm: loads_strict((d / "metrics.json").read_text()) for arm, d in runs.items()}
    draw = m["pretrained"]["data"]["label_draw"]
    assert draw == m["scratch"]["data"]["label_draw"]  # one draw for both arms (same seed)
    assert draw["requested"] == 0.5 and 0 < draw["n_segments_labelled"] < draw["n_segments"]
    assert abs(draw["n_chunks_labelled"] - 0.5 * draw["n_chunks"]) <= 2  # the stratified draw
    assert sum(draw["per_class_labelled"].values()) == draw["n_segments_labelled"]
    for arm in runs:
        data, start = m[arm]["data"], m[arm]["start"]
        # the model's start (blocked CV), the baselines and the probe fitted exactly the labelled segments
        assert data["n_labelled_train_segments"] == data["train_segments"] == draw["n_segments_labelled"]
        assert start["n_segments"] == draw["n_segments_labelled"]
        assert m[arm]["report"]["label_fraction"] == 0.5
        assert m[arm]["report"]["n_fitted"] == draw["n_segments_labelled"]
        text = (f"labels on 50% of the training segments (10 s chunks, seed 0; one chunk labelled at a seeded place "
                f"in every 20 s: {draw['n_chunks_labelled']} of {draw['n_chunks']} 10 s chunks drawn: "
                f"{draw['n_segments_labelled']:,} of {draw['n_segments']:,} training segments")
        assert text in m[arm]["protocol"] and "validation and test segments untouched" in m[arm]["protocol"]
        assert "labels on 50% of the training segments" in (runs[arm] / "decode_report.md").read_text()
        assert "labels on 50% of the training segments" in (runs[arm] / "pretrained" / "README.md").read_text()
    # the baselines see the same segments in both arms, so they score the same
    for name in ("logistic on band power", "logistic on the evoked waveform"):
        assert m["pretrained"]["baselines"][name]["test_auroc"] == pytest.approx(
            m["scratch"]["baselines"][name]["test_auroc"], abs=1e-9)
    # test segments untouched: the same number as a run with every label would score
    assert m["pretrained"]["data"]["test_segments"] == m["scratch"]["data"]["test_segments"]

    ev = tmp_path / "ev"
    assert main(["evaluate", "--pretrained", str(runs["pretrained"] / "pretrained"), "--data", lab["ieeg"],
                 "--out", str(ev)]) == 0
    err = capsys.readouterr().err
    assert "baselines fit the fine-tuning run's labels: 50%" in err
    got = loads_strict((ev / "metrics.json").read_text())
    assert got["data"]["label_draw"] == draw and got["data"]["n_labelled_train_segments"] == draw["n_segments_labelled"]
    for name, row in m["pretrained"]["baselines"].items():
        if not name.startswith("linear probe"):  # the probe reads the fine-tuned encoder in evaluate
            assert got["baselines"][name]["test_auroc"] == pytest.approx(row["test_auroc"], abs=1e-6), name
    assert got["metrics"]["test_auroc"] == pytest.approx(m["pretrained"]["metrics"]["test_auroc"], abs=1e-5)


def test_regression_with_few_labels_standardises_on_the_labelled_segments(lab, tmp_path):
    """Regression: the start, ridge on band power and the target's statistics read the labelled
    segments only; metrics.json states the draw."""
    from neurofm.jsonio import loads_strict
    from neurofm.recipes import barista

    run_dir = tmp_path / "force"
    assert _finetune(lab, run_dir, "--task", "regress", "--behavior", "grip_force", "--label-fraction", "0.5") == 0
    m = loads_strict((run_dir / "metrics.json").read_text())
    draw = m["data"]["label_draw"]
    assert m["start"]["n_segments"] == m["data"]["train_segments"] == draw["n_segments_labelled"] > 0
    assert "per_class" not in draw and "labels on 50% of the training segments" in m["protocol"]
    # the target statistics come from the labelled stretches of the training block only
    cfg = barista.prepare(barista.finetune_config(lab["barista"], [lab["ieeg"]], task="regress",
                                                  behavior=["grip_force"], label_fraction=0.5,
                                                  run_dir=str(tmp_path / "x"), overrides=QUIET))
    dm = barista.datamodule(cfg)
    full = barista.datamodule(barista.prepare(barista.finetune_config(
        lab["barista"], [lab["ieeg"]], task="regress", behavior=["grip_force"], run_dir=str(tmp_path / "y"),
        overrides=QUIET)))
    assert barista.target_stats(cfg, dm) != barista.target_stats(cfg, full)
    saved = loads_strict((run_dir / "pretrained" / "config.json").read_text())["config"]
    assert saved["target_mean"] == pytest.approx(barista.target_stats(cfg, dm)[0])


def test_too_few_labelled_events_is_refused_before_training_with_the_counts(lab, tmp_path, capsys):
    """A fraction that labels fewer events of a class than the start's blocked CV needs, or whose
    labelled events leave the logistic fits' penalty CV no fold to score: exit 2 / a ConfigError
    before the first step, naming the counts and the fix; reconstruction has no labels to draw."""
    run_dir = tmp_path / "few"
    assert _finetune(lab, run_dir, "--task", "classify", "--events", "word_onset", "--label-fraction", "0.05") == 2
    err = capsys.readouterr().err
    assert "data.label_fraction: --label-fraction 0.05 labelled" in err and "per class {" in err
    assert "need at least 4 labelled segments of every class" in err and "raise --label-fraction" in err
    assert "Traceback" not in err and not (run_dir / "checkpoints").exists()
    # enough events of each class, but no blocked inner fold of them in time (where the logistic fits
    # choose their penalty) has every class to fit and two to score: refused before training (the
    # head kept a random init and the decode report crashed after training, "Logistic.fit: 9
    # samples leave a class missing ..."). A last block of one class alone no longer matters.
    from neurofm.config import ConfigError
    from neurofm.recipes.barista import _check_penalty_block

    names, fix = ["nonspeech", "speech"], "raise --label-fraction (now 0.3)"
    _check_penalty_block(np.array([0, 1] * 8 + [0] * 4), names, "20 segments", fix)  # last 20% one class: fine
    with pytest.raises(ConfigError) as e:
        _check_penalty_block(np.repeat([0, 1, 0, 1, 0], 4), names, "20 segments", fix)
    assert "choose their penalty by blocked CV over the labelled training segments in time order" in str(e.value)
    assert "per class {'nonspeech': 12, 'speech': 8}" in str(e.value) and fix in str(e.value)
    assert _finetune(lab, run_dir, "--task", "reconstruct", "--label-fraction", "0.5") == 2
    assert "reconstruction has no labels to draw" in capsys.readouterr().err


def test_the_few_shot_split_keeps_a_segment_exactly_when_its_end_is_in_a_drawn_chunk(lab, tmp_path):
    """The data module's training segments under --label-fraction are the ones
    :func:`~neurofm.data.splits.labelled_windows` labels by end time, among every training segment."""
    from neurofm.data.splits import labelled_windows
    from neurofm.recipes import barista

    for task, extra in (("classify", {"events": "word_onset"}), ("regress", {"behavior": ["grip_force"]})):
        cfg = barista.prepare(barista.finetune_config(lab["barista"], [lab["ieeg"]], task=task, label_fraction=0.2,
                                                      run_dir=str(tmp_path / task), overrides=QUIET, **extra))
        every = barista._segments(cfg, "train", few_shot=False)
        kept = barista._segments(cfg, "train")
        keep = labelled_windows(every["session"], every["end"], 0.2, 10.0, 0)
        np.testing.assert_allclose(kept["end"], every["end"][keep])
        assert 0 < keep.sum() < len(keep)
        for split in ("valid", "test"):  # untouched
            np.testing.assert_allclose(barista._segments(cfg, split)["end"],
                                       barista._segments(cfg, split, few_shot=False)["end"])
