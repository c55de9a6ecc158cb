"""BaRISTA recipe pieces: the fine-tuning task it builds (class names, token-weighting layout),
the band-power row next to a fine-tuned classifier, the linear probe, the notch of a simulated
session's line noise. A small simulated session, a tiny model, no training."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from neurofm.config import ConfigError, from_dict
from neurofm.data.synthetic import simulate_ieeg
from neurofm.recipes import barista as recipe
from neurofm.report import FEW_CI_BLOCKS

N_CHANNELS = 16


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("barista_recipe") / "sim.h5"
    simulate_ieeg(path, n_channels=N_CHANNELS, duration=150.0, sampling_rate=128.0, n_regions=4, seed=0)
    return str(path)


def _config(sessions, **task) -> recipe.RunConfig:
    cfg = from_dict(recipe.RunConfig, {
        "data": {"sessions": list(sessions), "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0,
                 "events": "word_onset", "batch_size": 16,
                 "split": {"train": 0.6, "valid": 0.2, "test": 0.2, "gap": 2.0}},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "encode_scale": "parcel"},
        "task": {"mode": "finetune", "finetune_task": "classification", **task},
    }, where="test")
    return recipe.prepare(cfg)


def test_classifier_knows_its_class_names_and_exports_them(session, tmp_path):
    cfg = _config([session])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert task.hparams.label_names == ["nonspeech", "speech"]  # class index order of the data's label map
    assert dm.datasets["train"].reader.label_map == {"nonspeech": 0, "speech": 1}
    assert task.export_model().config.label_names == ["nonspeech", "speech"]
    # the names travel in the Lightning checkpoint: `neurofm export CKPT` keeps them
    import lightning as L

    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    loaded = recipe.load_task(tmp_path / "ft.ckpt")
    assert recipe.export(loaded).config.label_names == ["nonspeech", "speech"]


def test_token_weighting_head_gets_the_sessions_layout(session, tmp_path):
    cfg = _config([session], head="token_weighting")
    task = recipe.task(cfg, recipe.datamodule(cfg))
    assert task.head.n_channels == N_CHANNELS
    other = tmp_path / "other.h5"
    simulate_ieeg(other, n_channels=N_CHANNELS - 4, duration=60.0, sampling_rate=128.0, n_regions=4, seed=1)
    cfg = _config([session, str(other)], head="token_weighting")
    with pytest.raises(ConfigError, match="token_weighting"):
        recipe.task(cfg, recipe.datamodule(cfg))


def test_finetuned_classifier_is_reported_next_to_band_power_on_the_same_segments(session, tmp_path):
    cfg = _config([session])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)  # random init, untrained: only the report's shape is checked
    out = recipe.evaluate(cfg, task, dm, tmp_path)
    assert 0.0 <= out["metrics"]["test_auroc"] <= 1.0
    n_test = len(dm.datasets["test"])  # one segment per test-block event: how much the AUROC can be trusted
    assert out["data"]["test_segments"] == n_test > 0
    per_class = out["data"]["test_segments_per_class"]
    assert set(per_class) == {"nonspeech", "speech"} and sum(per_class.values()) == n_test
    band = out["baselines"]["ridge on band power"]["test_auroc"]
    # speech events evoke an ERP and high-gamma: band power separates them on the held-out block
    assert band > 0.6


def test_probe_separates_classes_when_one_feature_carries_them():
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 8))
        x[:, 3] += 3.0 * y  # d' 3: AUROC about 0.98 for the true direction
        return x, y

    assert recipe._probe_auroc(split(80), split(40)) > 0.9
    x, y = split(80)
    assert recipe._probe_auroc((x, y), (x[:, ::-1].copy(), y)) < 0.8  # scrambled features: no free lunch

    def three(n):  # three classes, each carried by a feature of its own: one-vs-rest macro AUROC
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 8))
        x[np.arange(n), y] += 3.0
        return x, y

    (xtr, ytr), test = three(120), three(60)
    assert recipe._probe_scores((xtr, ytr), test, 3).shape == (60, 3)
    assert recipe._probe_auroc((xtr, ytr), test) > 0.9


def _line_peak(cfg) -> float:
    """60 Hz power over the power 4-12 Hz away, in the training segments the recipe cuts."""
    from scipy import signal

    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    x = next(iter(dm.loader("train")))["x"].numpy()  # (B, C, T) z-scored
    f, p = signal.welch(x, fs=cfg.model.sampling_rate, nperseg=x.shape[-1], axis=-1)
    p = p.mean((0, 1))
    return p[np.argmin(np.abs(f - 60))] / p[(np.abs(f - 60) > 4) & (np.abs(f - 60) < 12)].mean()


def test_demo_config_notches_the_simulated_line_noise(session):
    """simulate_ieeg adds 60 Hz mains, which the paper's preprocessing notches: the demo config
    notches it, and a config that leaves it in every pretraining target is warned."""
    from neurofm.experiment import load_config

    demo = "barista/demo"  # the shipped config, by name
    over = [f"data.sessions=[{session}]", "data.segment_s=1.0", "data.n_patches=4", "data.batch_size=32"]
    cfg = recipe.prepare(load_config(demo, over))
    assert cfg.data.line_noise == 60.0
    notched = _line_peak(cfg)
    with pytest.warns(UserWarning, match="data.line_noise=60"):
        raw = recipe.prepare(load_config(demo, over + ["data.line_noise=0"]))
    assert notched < 1 and _line_peak(raw) > 5  # measured: 0.09 notched, 20 un-notched


@pytest.fixture(scope="module")
def force_session(tmp_path_factory) -> str:
    """A session with a continuous grip force (mN) driven by precentral high gamma."""
    path = tmp_path_factory.mktemp("barista_force") / "force.h5"
    simulate_ieeg(path, n_channels=N_CHANNELS, duration=150.0, sampling_rate=128.0, n_regions=10, seed=0,
                  regions=[9, 0, 2, 1], behavior="grip_force")
    return str(path)


def _regression_config(sessions, **task) -> recipe.RunConfig:
    cfg = from_dict(recipe.RunConfig, {
        "data": {"sessions": list(sessions), "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0,
                 "target": "grip_force", "batch_size": 16,
                 "split": {"train": 0.6, "valid": 0.2, "test": 0.2, "gap": 2.0}},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "encode_scale": "parcel"},
        "task": {"mode": "finetune", "finetune_task": "regression", **task},
    }, where="test")
    return recipe.prepare(cfg)


def test_regression_standardises_with_training_block_statistics_and_reports_every_arm(force_session, tmp_path):
    from neurofm.data.session import Session

    cfg = _regression_config([force_session])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    with Session(force_session) as s:
        ts, v = s.behavior("grip_force")
        train = dm.splits(s)["train"]
    inside = train.contains(ts, ts)
    assert task.hparams.target_mean == pytest.approx([v[inside].mean()], rel=1e-6)
    assert task.hparams.target_std == pytest.approx([v[inside].std()], rel=1e-5)
    assert task.hparams.target_mean[0] > 200.0  # mN: far from unit scale, so it matters
    out = recipe.evaluate(cfg, task, dm, tmp_path)  # untrained model: the report's shape and the baseline
    arms = [row["arm"] for row in out["report"]["rows"]]  # neurofm.report's decode report, shared with spikes
    assert arms == [recipe.MODEL_ARM, "ridge on band power", "linear probe on the frozen random-init encoder",
                    "null (training mean)"]
    assert out["report"]["task"] == "regression" and out["report"]["target"] == "grip_force"
    assert out["baselines"]["ridge on band power"]["test_r2"] > 0.3  # precentral high gamma carries the force
    lo, hi = out["metrics"]["test_r2_ci95"]
    assert lo <= out["metrics"]["test_r2"] <= hi
    assert out["data"]["test_segments"] == out["report"]["n_windows"] > 10
    assert "decode report" in (tmp_path / "decode_report.md").read_text()
    assert out["limitations"] and "ridge on band power" in out["limitations"][0]  # the plain line: it loses
    assert not [x for x in out["limitations"] if "does not beat" in x]  # it does decode the force
    assert (tmp_path / "plots" / "decoded_grip_force.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="no /behavior/speed"):
        bad = _regression_config([force_session])
        bad.data.target = "speed"
        recipe.target_stats(bad, dm)


def test_a_target_no_channel_carries_is_reported_as_not_decoded_by_any_arm(tmp_path):
    """A new lab's grip force recorded beside electrodes that miss the motor cortex (the nui14
    trial: temporal and hippocampal shafts): every arm scored R2 -0.11 like the training mean,
    and the printed summary said only that the model equals band power. It now says that
    nothing decodes the target better than the null, and what to check."""
    path = tmp_path / "elsewhere.h5"  # grip force from precentral / postcentral, shafts in 4 other regions
    simulate_ieeg(path, n_channels=N_CHANNELS, duration=150.0, sampling_rate=128.0, n_regions=16, seed=1,
                  regions=[0, 2, 1, 3], behavior="grip_force")
    cfg = _regression_config([str(path)])
    dm = recipe.datamodule(cfg)
    out = recipe.evaluate(cfg, recipe.task(cfg, dm), dm, tmp_path / "run")
    null = [x for x in out["limitations"] if "the model does not beat the training mean" in x]
    assert len(null) == 1 and "no baseline's 95% CI lies above the null's r2 either" in null[0], out["limitations"]
    assert "do the electrodes sample the regions that encode it?" in null[0]
    assert out["baselines"]["ridge on band power"]["test_r2"] < 0.1


def test_decoded_trace_of_several_sessions_says_which_it_shows(force_session, tmp_path, monkeypatch):
    """Two runs fine-tuned together: plots/decoded_<target>.png traced the first run's test segments
    under the title 'envelope, test block: R² = 0.755', the R² of both runs (nui12 trial: 59 of 118
    segments shown); the title now names the session shown and says the R² is over all of them."""
    import shutil

    import h5py

    second = tmp_path / "run-02.h5"
    shutil.copy(force_session, second)
    with h5py.File(second, "a") as h:
        h.attrs["session_id"] = "run-02"
    cfg = _regression_config([force_session, str(second)])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    titles = []
    monkeypatch.setattr(recipe.plots, "decoding_trace", lambda *a, **k: titles.append(k["title"]))
    out = recipe.evaluate(cfg, task, dm, tmp_path / "run")
    n = out["data"]["test_segments"]
    first = dm.sessions[0].session_id
    assert re.match(rf"grip_force, test block of {first} \({n // 2} of the {n} test segments; R² over all 2 "
                    rf"sessions\): R² = ", titles[0]), titles
    cfg1 = _regression_config([force_session])  # one session: the title as before
    dm1 = recipe.datamodule(cfg1)
    recipe.evaluate(cfg1, recipe.task(cfg1, dm1), dm1, tmp_path / "one")
    assert titles[1].startswith("grip_force, test block: R² = ")


def test_classification_report_and_roc_plot(session, tmp_path, capsys, monkeypatch):
    cfg = _config([session])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    monkeypatch.setattr("neurofm.progress.PROGRESS_EVERY_S", 0.0)  # every pass reports (a long one every 30 s)
    out = recipe.evaluate(cfg, task, dm, tmp_path)
    err = capsys.readouterr().err
    for what in ("decode report, training segments", "decode report, test segments"):
        assert f"neurofm: {what}: 1 of " in err and f"neurofm: {what}: done, " in err
    assert {"logistic on band power", "ridge on band power", "null (chance)"} <= set(out["baselines"])
    assert out["baselines"]["null (chance)"]["test_auroc"] == 0.5
    assert out["baselines"]["logistic on band power"]["test_auroc"] > 0.6
    assert len(out["report"]["verdicts"]) == 5 and "blocks of the test period" in out["protocol"]
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 0
    drawn = []  # every arm but the null is a curve: the waveform arm, which can beat the model, was missing
    titles = []
    monkeypatch.setattr(recipe.plots, "roc_curves",
                        lambda curves, **k: (drawn.append(list(curves)), titles.append(k["title"])))
    recipe.evaluate(cfg, task, dm, tmp_path / "again")
    assert drawn == [[recipe.MODEL_ARM, "logistic on band power", recipe.WAVEFORM_ARM,
                      "linear probe on the frozen random-init encoder"]]
    # the title says which label the curve detects (it read "Test block: word_onset (N segments)")
    n_speech = out["data"]["test_segments_per_class"]["speech"]
    assert titles == [f"Test block: word_onset, speech vs nonspeech ({out['data']['test_segments']} segments, "
                      f"{n_speech} speech)"]
    # the evoked waveform (what band power discards: the phase-locked response) is an arm, with its plain line
    wave = out["baselines"][recipe.WAVEFORM_ARM]["test_auroc"]
    assert 0.5 < wave <= 1.0 and "evoked waveform (classification): each channel's time course" in out["protocol"]
    said = [v for v in out["report"]["verdicts"] if recipe.WAVEFORM_ARM in v]
    assert len(said) == 1 and (said[0].startswith("BaRISTA fine-tuned beats")
                               or any(recipe.WAVEFORM_ARM in x for x in out["limitations"]))


def test_evoked_waveform_bins_each_channels_time_course():
    x = np.arange(2 * 3 * 17, dtype=np.float64).reshape(2, 3, 17)  # 17 samples: the last one left out
    w = recipe.evoked_waveform(x, n_bins=4)
    assert w.shape == (2, 3, 4)
    np.testing.assert_allclose(w[1, 2], [x[1, 2, 0:4].mean(), x[1, 2, 4:8].mean(), x[1, 2, 8:12].mean(),
                                         x[1, 2, 12:16].mean()])


def test_finetune_without_task_takes_it_from_events_or_behavior(session, tmp_path, capsys):
    """`neurofm finetune --pretrained BARISTA --data x.h5 --events annotations` (no --task: the
    CLI's default is Neuroformer's 'decode') stopped at "--task must be classify, regress or
    reconstruct, got 'decode'", a value the user never typed. --events means classify,
    --behavior regress; with neither (or both) the error names the pairs."""
    from neurofm import cli

    pre_cfg = _config([session])
    pre_cfg.task.mode = "pretrain"
    recipe.export(recipe.task(pre_cfg, recipe.datamodule(pre_cfg))).save_pretrained(tmp_path / "enc")
    enc = str(tmp_path / "enc")
    assert recipe.finetune_config(enc, [session], task="decode", events="word_onset").task.finetune_task == \
        "classification"
    assert recipe.finetune_config(enc, [session], task="decode", behavior=["grip_force"]).task.finetune_task == \
        "regression"
    for given in ({}, {"events": "word_onset", "behavior": ["grip_force"]}):
        with pytest.raises(ConfigError, match=r"--task must be classify \(with --events NAME\), regress \(with "
                                              r"--behavior NAME\) or reconstruct; .*enc is a BaRISTA model$"):
            recipe.finetune_config(enc, [session], task="decode", **given)
    capsys.readouterr()
    assert cli.main(["finetune", "--pretrained", enc, "--data", session, "--run-dir", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert "got 'decode'" not in err and "--task must be classify (with --events NAME)" in err


def test_from_scratch_keeps_the_pretrained_shape_and_draws_new_weights(session, tmp_path, capsys):
    import torch

    pre_cfg = _config([session])
    pre_cfg.task.mode = "pretrain"
    pre = recipe.task(pre_cfg, recipe.datamodule(pre_cfg))
    recipe.export(pre).save_pretrained(tmp_path / "enc")
    cfg = recipe.prepare(recipe.finetune_config(str(tmp_path / "enc"), [session], events="word_onset",
                                                from_scratch=True, run_dir=str(tmp_path / "ft")))
    assert cfg.task.from_scratch and cfg.model.d_model == 16
    capsys.readouterr()
    task = recipe.task(cfg, recipe.datamodule(cfg))
    assert f"from scratch: random init in the shape of {tmp_path / 'enc'}" in capsys.readouterr().err  # as spikes say
    assert task.encoder.config.to_dict() == pre.export_encoder().config.to_dict()
    w_pre = pre.export_encoder().backbone.state_dict()
    w_new = task.encoder.backbone.state_dict()
    assert any(not torch.equal(w_pre[k], w_new[k]) for k in w_pre)


def test_pretraining_probe_has_cis_and_says_when_it_does_not_beat_random_init(session, tmp_path):
    import torch

    torch.manual_seed(0)  # the untrained task's weights: not the global RNG state earlier tests left
    cfg = _config([session])
    cfg.task.mode = "pretrain"
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)  # untrained: its encoder is a random one, so it cannot beat random init
    out = recipe.evaluate(cfg, task, dm, tmp_path)
    lo, hi = out["metrics"]["probe_auroc_ci95"]
    assert lo <= out["metrics"]["probe_auroc"] <= hi
    assert set(out["baselines"]) == {"random-init encoder, same probe", "ridge on band power",
                                     "mean target (the trivial predictor)", "random-init encoder, same read-out"}
    assert out["baselines"]["ridge on band power"]["probe_auroc"] > 0.6
    # the masked-latent score next to the trivial predictor's; untrained, it has not left that phase
    m, trivial = out["metrics"], out["baselines"]["mean target (the trivial predictor)"]
    r2 = 1 - m["test_masked_latent_mse"] / trivial["test_masked_latent_mse"]
    assert m["test_masked_latent_r2"] == pytest.approx(r2)
    assert m["test_masked_latent_r2"] < recipe.TRIVIAL_LATENT_R2 and m["test_target_std"] > 0
    # token -> own band power: at 128 Hz only beta is below Nyquist; a random encoder's tokens carry
    # little of it (the faithful tokenizer normalises every map per patch), which the report says
    assert set(k for k in m if k.startswith("token_own_power_r2")) == {"token_own_power_r2_beta"}
    assert m["token_own_power_r2_beta"] < recipe.TOKEN_POWER_R2
    assert set(out["baselines"]["random-init encoder, same read-out"]) == {"token_own_power_r2_beta"}
    # the probe's AUROC beside band power's, said in words when it does not beat it (it was only in
    # the baselines table: a pretrained encoder whose probe lost to band power read as a success)
    assert m["probe_auroc"] < out["baselines"]["ridge on band power"]["probe_auroc"]
    assert len(out["limitations"]) == 4
    assert re.match(r"PRETRAINED ENCODER, LINEAR PROBE LOSES to ridge on band power|pretrained encoder, linear "
                    r"probe is below ridge on band power", out["limitations"][3])
    assert "task.band_power" in out["limitations"][3]
    assert "has not left its trivial phase" in out["limitations"][0] and "train/latent_r2" in out["limitations"][0]
    assert "own channel's band power" in out["limitations"][1] and "model.token_scales=true" in out["limitations"][1]
    assert "random-init encoder, same probe" in out["limitations"][2]
    assert "token MEAN" in out["limitations"][2] and "blocks of the test period" in out["protocol"]
    # a short test block (the nui12 trial: 23 probe segments in 5 blocks) makes the intervals too
    # narrow: the protocol and the LOSES line say so, as the decode report itself does
    n_blocks = int(re.search(r"bootstrap over (\d+) blocks of the test period", out["protocol"]).group(1))
    few = f"ONLY {n_blocks} BLOCKS (under {FEW_CI_BLOCKS})"
    assert (few in out["protocol"]) == (few in out["limitations"][2]) == (few in out["limitations"][3]) \
        == (n_blocks < FEW_CI_BLOCKS)
    assert recipe._few_blocks(SimpleNamespace(n_blocks=FEW_CI_BLOCKS)) == ""
    assert "ONLY 5 BLOCKS" in recipe._few_blocks(SimpleNamespace(n_blocks=5))


def test_token_power_r2_reads_real_channels_only():
    """The check fits (segment, channel) pairs of real channels only: padded channels (zero
    tokens, arbitrary band power) would otherwise decide it; a token that is a linear function of
    its channel's log power scores ~1, one unrelated to it ~0."""
    rng = np.random.default_rng(0)

    def split(n, related=True):
        C, d = 6, 8
        chan = rng.standard_normal((n, C, d))
        bp = np.stack([chan[..., 0] * 2.0 + 1.0, chan[..., 1]], -1)
        if not related:
            bp = rng.standard_normal(bp.shape)
        cmask = np.ones((n, C), dtype=bool)
        cmask[::2, 4:] = False  # every other segment has 4 real channels
        chan[~cmask], bp[~cmask] = 0.0, 50.0 * rng.standard_normal(((~cmask).sum(), 2))
        return {"chan": chan, "bp": bp, "cmask": cmask}

    r2 = recipe.token_power_r2(split(200), split(200), ["high_gamma", "beta"])
    assert r2["high_gamma"] > 0.99 and r2["beta"] > 0.99
    r2 = recipe.token_power_r2(split(200, False), split(200, False), ["high_gamma", "beta"])
    assert r2["high_gamma"] < 0.1 and r2["beta"] < 0.1


def test_trivial_phase_line_follows_the_latent_r2():
    assert recipe.left_trivial_phase(0.0) is False and recipe.left_trivial_phase(-0.3) is False
    assert recipe.left_trivial_phase(recipe.TRIVIAL_LATENT_R2) is True and recipe.left_trivial_phase(0.4) is True
    assert recipe.left_trivial_phase(float("nan")) is None


def test_finetune_head_starts_at_the_band_power_arm(session, force_session, tmp_path):
    """With the defaults users get (one layout: band-power and waveform read-outs), before any
    step the fine-tune predicts what the decode report's band-power arm predicts, on the same
    test segments, when blocked CV keeps band power alone: the same test R2 for the grip-force
    regression (neither the waveform nor the random encoder's token mean adds to it); for the
    classification head, pooled or token-weighting, with ``task.waveform=false`` the same scores
    as the band-power logistic, and by default the chosen start's fit (on these 28 training
    segments whether the waveform's gain passes the bar depends on the penalties chosen; the
    evoked sessions of test_start_rule_takes_the_waveform_only_where_it_carries_the_events pin
    that rule). metrics.json's ``start`` and the report say so."""
    import torch

    from neurofm.baselines import BandPowerLogistic, BandPowerRidge

    cfg = _regression_config([force_session])
    dm = recipe.datamodule(cfg)
    out = recipe.evaluate(cfg, recipe.task(cfg, dm), dm, tmp_path / "reg")
    assert out["start"]["features"] == recipe.START_BAND_POWER
    assert out["start"]["candidates"] == [recipe.START_BAND_POWER, recipe.START_WAVEFORM, recipe.START_BOTH,
                                          recipe.START_ALL]
    assert [st["adds"] for st in out["start"]["steps"]] == ["waveform", "token mean"]
    assert not any(st["taken"] for st in out["start"]["steps"])  # the force is in high-gamma power
    assert out["start"]["gain"] <= out["start"]["paired_se"] and out["start"]["score"] == "r2"
    band = out["baselines"]["ridge on band power"]["test_r2"]
    assert out["metrics"]["test_r2"] == pytest.approx(band, abs=1e-5)
    assert "started at band power" in (tmp_path / "reg" / "decode_report.md").read_text()
    assert "start: the head started at the band power fit" in out["protocol"]
    # classification: the speech ERP of this simulation is in the evoked waveform, which the
    # default start takes (test_step_0_predicts_what_the_chosen_closed_form_fit_predicts); without
    # the waveform read-out the start is band power alone, the report's arm
    for head, waveform in (("pooled", False), ("token_weighting", False), ("token_weighting", True)):
        cfg = _config([session], head=head, waveform=waveform)
        dm = recipe.datamodule(cfg)
        task = recipe.task(cfg, dm).eval()
        chosen = task.read_out_start["features"]
        assert chosen.startswith(recipe.START_BAND_POWER) and (waveform or chosen == recipe.START_BAND_POWER), (head, chosen)
        bands = BandPowerRidge(cfg.model.sampling_rate)
        with torch.no_grad():
            train = recipe._segment_pass(dm.loader("train"), task.encoder, bands)
            test = recipe._segment_pass(dm.loader("test"), task.encoder, bands, task=task)
        n_tr, n_te = len(train["y"]), len(test["y"])
        logits = test["pred"]
        if waveform:
            expect = _chosen_fit_scores(chosen, train, test)
        else:
            arm = BandPowerLogistic(bands.sampling_rate).fit_features(train["bp"].reshape(n_tr, -1), train["y"])
            expect = arm.model.decision_function(test["bp"].reshape(n_te, -1))
        assert np.allclose(logits[:, 1] - logits[:, 0], expect, atol=1e-4), head
        assert np.allclose(logits[:, 1], -logits[:, 0], atol=1e-5)  # softmax = the logistic probability
        if "token mean" not in chosen:
            assert not task.head.out.weight.abs().sum()  # the token head adds nothing at the start
        # the read-out trains on standardised features: the training segments' statistics
        bp = torch.as_tensor(train["bp"].reshape(n_tr, -1))
        torch.testing.assert_close(task.band_power.feature_mean, bp.mean(0))
        torch.testing.assert_close(task.band_power.feature_std, bp.std(0, unbiased=False))


def test_without_band_power_the_head_starts_at_the_linear_probe(session, force_session, tmp_path):
    """``task.band_power=false`` (or layouts that differ): the head reads the tokens alone and
    starts at the report's linear probe (token-mean features of the frozen starting encoder)."""
    import torch

    from neurofm.baselines import Logistic

    cfg = _regression_config([force_session], band_power=False)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert task.band_power is None and task.read_out_start["features"] == recipe.START_TOKENS
    out = recipe.evaluate(cfg, task, dm, tmp_path / "reg")
    probe = out["baselines"]["linear probe on the frozen random-init encoder"]["test_r2"]
    assert out["metrics"]["test_r2"] == pytest.approx(probe, abs=1e-4)
    assert out["start"]["band_power_readout"] == "off (task.band_power=false)"
    cfg = _config([session], band_power=False)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm).eval()
    with torch.no_grad():
        train = recipe._segment_pass(dm.loader("train"), task.encoder, None)
        test = recipe._segment_pass(dm.loader("test"), task.encoder, None, task=task)
    logits = test["pred"]
    expect = Logistic().fit(train["feat"], train["y"]).decision_function(test["feat"])
    assert np.allclose(logits[:, 1] - logits[:, 0], expect, atol=1e-4)


def test_segment_pass_per_channel_features_average_to_the_token_mean(session):
    """``channels=True`` adds each channel's tokens averaged over patches (B, C, d); over the
    real channels they average to the token-mean features the probe reads, and padded channels
    are zero."""
    import torch

    cfg = _config([session])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm).eval()
    with torch.no_grad():
        out = recipe._segment_pass(dm.loader("test"), task.encoder, None, channels=True)
        mask = torch.cat([b["channel_mask"][b["target_mask"].bool()] if "target_mask" in b else b["channel_mask"]
                          for b in dm.loader("test")]).numpy().astype(bool)
    chan = out["chan"]
    assert chan.shape[:2] == (len(out["y"]), mask.shape[1]) and chan.shape[2] == out["feat"].shape[1]
    assert not np.abs(chan[~mask]).any()
    mean = chan.sum(1) / mask.sum(1, keepdims=True)
    assert np.allclose(mean, out["feat"], atol=1e-5)
    assert np.abs(chan - chan.mean(1, keepdims=True)).max() > 1e-3  # the channels differ


def test_starting_state_is_validated_at_step_0_and_kept_unless_beaten(force_session, tmp_path):
    """BaRISTA fine-tuning validates the starting state (the band-power fit) before the first
    step, logs it at step 0 and keeps it as the best checkpoint: with learning rates that wreck
    the model, the evaluated model is the starting one (test R2 = ridge on band power's)."""
    import csv
    import dataclasses

    from neurofm.experiment import run

    cfg = _regression_config([force_session], lr_backbone=3.0, lr_head=3.0)
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), trainer=dataclasses.replace(
        cfg.trainer, max_epochs=4, early_stopping_patience=10, progress_bar=False, threads="1"))
    m = run(cfg).metrics
    chosen = m["training"]["evaluated_checkpoint"]
    assert chosen["step"] == 0 and m["training"]["steps"] > 0
    logged = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))) if r.get("val/r2")]
    assert logged[0]["step"] == "0" and len(logged) > 1
    assert all(float(r["val/r2"]) < float(logged[0]["val/r2"]) for r in logged[1:])
    # paired model selection: every check compared with the start on the same validation segments
    paired = [r for r in csv.DictReader(open(next((tmp_path / "run").rglob("metrics.csv")))) if r.get("val/paired_gain")]
    assert paired and all(float(r["val/paired_gain"]) < 0 for r in paired)
    assert m["training"]["selection"]["kept"] == "start" and m["training"]["selection"]["selected_step"] == 0
    band = m["baselines"]["ridge on band power"]["test_r2"]  # the start: band power (module docstring of the test)
    assert m["start"]["features"] == recipe.START_BAND_POWER
    assert m["metrics"]["test_r2"] == pytest.approx(band, abs=1e-5)
    # the decode report's model row is the start's fit, and says so where it is read (it read
    # "BaRISTA fine-tuned (started at band power)", as if training had earned its score)
    report = (tmp_path / "run" / "decode_report.md").read_text()
    assert "BaRISTA fine-tuned (started at band power; weights kept at step 0)" in report
    assert "model selection kept the starting state (step 0: no validation check scored above the start)" in report
    assert "scores the band power fit the head started at, not trained weights" in m["start"]["summary"]
    assert "not trained weights" in m["protocol"]


def test_both_families_keep_their_starting_point_with_one_callback():
    from neurofm.tasks.barista import BaristaFinetuneTask
    from neurofm.tasks.callbacks import StartingPoint
    from neurofm.tasks.neuroformer import NeuroformerTask

    assert "validation_scores" in vars(BaristaFinetuneTask) and "validation_scores" in vars(NeuroformerTask)
    bft = BaristaFinetuneTask({"d_model": 16, "n_heads": 2, "n_layers": 1}, task="regression")
    assert any(type(cb) is StartingPoint for cb in bft.configure_callbacks())
    import neurofm.tasks.neuroformer as nf

    assert nf.StartingPoint is StartingPoint and not hasattr(nf, "_StartingPoint")


def test_start_gain_scores_classification_by_auroc():
    """The shared start rule on classification scores (the BaRISTA head's start): token features
    that only add noise to band power's scores do not clear the start's bar (START_SE paired SE); scores that rank every
    block's segments better do."""
    from neurofm.report import start_gain

    rng = np.random.default_rng(1)
    n, K = 300, 10
    blocks = np.repeat(np.arange(K), n // K)
    y = rng.integers(0, 2, n)
    band = y + rng.normal(scale=1.0, size=n)
    gain, se = start_gain(band, band + rng.normal(scale=0.5, size=n), y, blocks, task="classification")
    assert not gain > recipe.START_SE * se
    gain, se = start_gain(band, y + rng.normal(scale=0.4, size=n), y, blocks, task="classification")
    assert gain > recipe.START_SE * se > 0


def test_layouts_that_differ_get_no_band_power_readout_and_a_note(session, tmp_path, capsys):
    other = tmp_path / "other.h5"
    simulate_ieeg(other, n_channels=N_CHANNELS - 4, duration=60.0, sampling_rate=128.0, n_regions=4, seed=1)
    cfg = _config([session, str(other)])
    task = recipe.task(cfg, recipe.datamodule(cfg))
    assert task.band_power is None and task.export_model().band_power is None
    note = task.read_out_start["band_power_readout"]
    assert note.startswith("none: the 2 sessions have 2 different channel layouts")
    assert task.read_out_start["features"] == recipe.START_TOKENS  # the linear probe start, as before
    assert "no band-power read-out" in capsys.readouterr().err


def test_band_power_readout_round_trips_through_config_checkpoint_and_folder(session, tmp_path):
    """On by default (config.yaml's task.band_power), recorded in the exported config.json, and
    the exported folder predicts from raw segments what the task predicts; a Lightning
    checkpoint and a folder written before the read-out existed still load, without one."""
    import json

    import lightning as L
    import torch

    from neurofm.config import to_dict
    from neurofm.hub import load_pretrained

    cfg = _config([session])
    assert cfg.task.band_power is True and to_dict(cfg)["task"]["band_power"] is True
    assert from_dict(recipe.RunConfig, to_dict(cfg), where="test").task.band_power is True
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm).eval()
    assert task.hparams.band_power_bands == {k: list(v) for k, v in recipe.BandPowerRidge(128.0).bands.items()}
    model = task.export_model()
    model.save_pretrained(tmp_path / "ft")
    saved = json.loads((tmp_path / "ft" / "config.json").read_text())["config"]
    assert saved["band_power_bands"] == task.hparams.band_power_bands and saved["n_channels"] == N_CHANNELS
    loaded = load_pretrained(tmp_path / "ft").eval()
    batch = next(iter(dm.loader("test")))
    with torch.no_grad():
        expect = task(batch)
        torch.testing.assert_close(loaded({"x": batch["x"], "channel_mask": batch["channel_mask"],
                                           "parcel": batch["parcel"]}), expect)
    assert expect.abs().sum() > 0
    # written before the read-out: no band_power_bands in config.json / the checkpoint's hparams
    old = recipe.task(recipe.prepare(_config([session], band_power=False)), dm)
    old.export_model().save_pretrained(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["config"]["band_power_bands"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    assert load_pretrained(tmp_path / "old").band_power is None
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(old)
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    ckpt = torch.load(tmp_path / "old.ckpt", weights_only=True)
    del ckpt["hyper_parameters"]["band_power_bands"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert recipe.load_task(tmp_path / "old.ckpt").band_power is None


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_start_rule_keeps_band_power_alone_when_token_features_are_noise(session, force_session, monkeypatch, kind):
    """Token-mean features replaced by noise unrelated to the labels: the start is band power
    alone (the token head's weights 0), with the CV scores, gain and SE in ``start``."""
    real = recipe._segment_pass

    def noisy(loader, encoder, bands, *a, **k):
        out = real(loader, encoder, bands, *a, **k)
        out["feat"] = np.random.default_rng(len(out["feat"])).standard_normal((len(out["feat"]), 32))
        return out

    monkeypatch.setattr(recipe, "_segment_pass", noisy)
    cfg = _config([session]) if kind == "classification" else _regression_config([force_session])
    task = recipe.task(cfg, recipe.datamodule(cfg))
    start = task.read_out_start
    # the classification's speech ERP is in the evoked waveform, which the rule may take first
    assert start["features"] in (recipe.START_BAND_POWER, recipe.START_WAVEFORM)
    assert start["score"] == ("auroc" if kind == "classification" else "r2")
    assert not start["gain"] > recipe.START_SE * start["paired_se"]
    assert set(start["cv"]) == {recipe.START_BAND_POWER, recipe.START_WAVEFORM, recipe.START_BOTH,
                                recipe.START_ALL} and start["n_segments"] > 20
    assert start["steps"][-1]["adds"] == "token mean" and not start["steps"][-1]["taken"]
    assert not task.head.out.weight.abs().sum() and task.band_power.out.weight.abs().sum() > 0


def test_power_target_pretraining_reports_the_latent_and_power_terms_apart(session, tmp_path):
    """With model.power_target the report's masked-latent figures are the latent term alone (the
    loss is the weighted sum) and the power term has its own R2 (0 = the batch's mean power)."""
    cfg = from_dict(recipe.RunConfig, {
        "data": {"sessions": [session], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0, "batch_size": 16,
                 "split": {"train": 0.6, "valid": 0.2, "test": 0.2, "gap": 2.0}},
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "encode_scale": "parcel", "power_target": 2.0},
        "eval": {"probe_events": "none"},
        "task": {"mode": "pretrain"},
    }, where="test")
    cfg = recipe.prepare(cfg)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert list(task.model.power_bands) == ["theta", "alpha", "beta", "gamma"]  # 32 samples at 128 Hz: 4 Hz bins
    out = recipe.evaluate(cfg, task, dm, tmp_path)
    m, trivial = out["metrics"], out["baselines"]["mean target (the trivial predictor)"]
    assert m["test_masked_latent_r2"] == pytest.approx(1 - m["test_masked_latent_mse"] / trivial["test_masked_latent_mse"])
    assert m["test_masked_latent_r2"] < recipe.TRIVIAL_LATENT_R2  # untrained; the power term is not in it
    assert np.isfinite(m["test_masked_power_r2"]) and m["test_masked_power_r2"] < 0.5


# -- the evoked-waveform read-out and the start rule's waveform step ---------------------------------


def _evoked_session(path, layout: str, carrier: str, duration: float = 300.0, seed: int = 0) -> str:
    """A session on ``layout``'s channels (positions, atlas labels) with white noise and
    ``word_onset`` events labelled ``a`` / ``b`` every 2-3 s. ``carrier="waveform"``: every event
    evokes a 0.5 s deflection (one Hann-windowed 2 Hz cycle) on 4 channels, positive after ``a``
    and negative after ``b``: the same power spectrum, so only the evoked waveform tells them
    apart. ``carrier="power"``: ``a`` adds a 20 Hz (beta) burst of random phase on those channels,
    ``b`` nothing: band power tells them apart, the binned time course of a random-phase
    oscillation does not."""
    from neurofm.data import Session, SessionWriter

    rng = np.random.default_rng(seed)
    fs = 128.0
    with Session(layout) as s:
        ch = s.channels()
    n, C = int(duration * fs), len(ch.names)
    x = rng.standard_normal((n, C))
    onsets = np.cumsum(rng.uniform(2.0, 3.0, int(duration / 2)))
    onsets = onsets[onsets < duration - 2.0]
    labels = rng.choice(["a", "b"], len(onsets))
    t = np.arange(int(0.5 * fs)) / fs
    hann = np.hanning(len(t))
    for onset, label in zip(onsets, labels):
        i = int(round(onset * fs))
        if carrier == "waveform":
            x[i:i + len(t), :4] += ((1.5 if label == "a" else -1.5) * hann * np.sin(2 * np.pi * 2.0 * t))[:, None]
        elif label == "a":
            x[i:i + len(t), :4] += (1.5 * hann * np.sin(2 * np.pi * 20.0 * t + rng.uniform(0, 2 * np.pi)))[:, None]
    with SessionWriter(path, session_id=f"evoked_{carrier}") as w:
        w.add_continuous(x.astype(np.float32), sampling_rate=fs)
        w.add_channels(list(ch.names), *(ch.xyz[:, k] for k in range(3)), regions=dict(ch.regions),
                       types=["seeg"] * C, coordinate_space=ch.coordinate_space)
        w.add_events("word_onset", onsets, label=labels)
    return str(path)


def _chosen_fit_scores(chosen: str, train: dict, test: dict) -> np.ndarray:
    """The test log-odds of a logistic on the start ``chosen``'s feature blocks of the training
    segments (as :func:`recipe._segment_pass` gives them), fitted as the report fits its arms."""
    from neurofm.baselines import Logistic

    def features(d):
        blocks = {"band power": d["bp"], "waveform": d["wave"], "token mean": d["feat"]}
        return np.concatenate([blocks[p].reshape(len(d["y"]), -1) for p in chosen.split(" + ")], axis=1)

    return Logistic().fit(features(train), train["y"]).decision_function(features(test))


@pytest.fixture(scope="module")
def evoked(session, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("barista_evoked")
    return {carrier: _evoked_session(out / f"{carrier}.h5", session, carrier) for carrier in ("waveform", "power")}


def test_start_rule_takes_the_waveform_only_where_it_carries_the_events(evoked):
    """The default path (one layout: band-power and waveform read-outs): where only the evoked
    waveform tells the classes apart, blocked CV adds it to band power (gain over START_SE paired SE)
    and its read-out starts at the fit's weights; where the waveform carries nothing (the classes
    differ in beta power only), the start leaves the waveform out and its read-out adds nothing
    (weights 0). (The random encoder's token mean passed one paired SE there, the bar before: its blocked-CV
    AUROC gain over band power's 0.992 was +0.006 +- 0.005.)"""
    cfg = _config([evoked["waveform"]])
    task = recipe.task(cfg, recipe.datamodule(cfg))
    start = task.read_out_start
    assert task.waveform is not None and task.waveform.n_bins == recipe.WAVEFORM_BINS
    step = start["steps"][0]
    assert step["adds"] == "waveform" and step["from"] == recipe.START_BAND_POWER and step["taken"]
    assert step["gain"] > recipe.START_SE * step["paired_se"] > 0
    assert "waveform" in start["features"] and start["cv"][recipe.START_WAVEFORM] > 0.9
    assert task.waveform.out.weight.abs().sum() > 0
    cfg = _config([evoked["power"]])
    task = recipe.task(cfg, recipe.datamodule(cfg))
    start = task.read_out_start
    assert "waveform" not in start["features"], start
    assert start["steps"][0]["adds"] == "waveform" and not start["steps"][0]["taken"]
    assert start["cv"][recipe.START_BAND_POWER] > 0.9
    assert not task.waveform.out.weight.abs().sum() and not task.waveform.out.bias.abs().sum()
    assert task.band_power.out.weight.abs().sum() > 0


def test_step_0_predicts_what_the_chosen_closed_form_fit_predicts(evoked, tmp_path):
    """Before any step the fine-tune's logits are the chosen start's fit (here band power +
    waveform, maybe + token mean: a logistic on those features of the training segments, as the
    report fits its arms), on the test segments, up to float32; the read-outs' statistics are the
    training segments'; the report and metrics.json say which start was taken."""
    import torch

    from neurofm.baselines import BandPowerRidge

    cfg = _config([evoked["waveform"]])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm).eval()
    chosen = task.read_out_start["features"]
    assert chosen.startswith(recipe.START_WAVEFORM)
    bands = BandPowerRidge(cfg.model.sampling_rate)
    with torch.no_grad():
        train = recipe._segment_pass(dm.loader("train"), task.encoder, bands)
        test = recipe._segment_pass(dm.loader("test"), task.encoder, bands, task=task)

    expect = _chosen_fit_scores(chosen, train, test)
    logits = test["pred"]
    assert np.allclose(logits[:, 1] - logits[:, 0], expect, atol=1e-4)
    wave = torch.as_tensor(train["wave"].reshape(len(train["y"]), -1))
    torch.testing.assert_close(task.waveform.feature_mean, wave.mean(0))
    torch.testing.assert_close(task.waveform.feature_std, wave.std(0, unbiased=False))
    out = recipe.evaluate(cfg, task, dm, tmp_path / "run")
    assert out["start"]["features"] == chosen and out["start"]["steps"][0]["taken"]
    assert f"start: the head started at the {chosen} fit" in out["protocol"]
    assert "the waveform's gain over band power" in (tmp_path / "run" / "decode_report.md").read_text()
    # the report's waveform arm (waveform alone) and band-power arm stay as they were
    assert out["baselines"][recipe.WAVEFORM_ARM]["test_auroc"] > 0.9
    assert out["baselines"]["logistic on band power"]["test_auroc"] < 0.75


def test_waveform_readout_survives_save_load_evaluate_and_checkpoint(evoked, tmp_path):
    """The evoked-waveform read-out is part of the exported model (config.json ``waveform_bins``,
    its weights and feature statistics): ``from_pretrained`` predicts from raw segments what the
    task predicts, ``neurofm evaluate`` on the folder scores what the run scored, and a Lightning
    checkpoint (resume) rebuilds it; ``task.waveform=false`` leaves it out, with a note."""
    import json

    import lightning as L
    import torch

    from neurofm.experiment import evaluate_pretrained
    from neurofm.hub import load_pretrained

    cfg = _config([evoked["waveform"]])
    assert cfg.task.waveform is True
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm).eval()
    assert task.waveform.out.weight.abs().sum() > 0
    expected = recipe.evaluate(cfg, task, dm, tmp_path / "run")["metrics"]
    folder = tmp_path / "ft"
    recipe.export(task).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["config"]["waveform_bins"] == recipe.WAVEFORM_BINS
    loaded = load_pretrained(folder).eval()
    batch = next(iter(dm.loader("test")))
    with torch.no_grad():
        torch.testing.assert_close(loaded({"x": batch["x"], "channel_mask": batch["channel_mask"],
                                           "parcel": batch["parcel"]}), task(batch))
        torch.testing.assert_close(loaded.waveform(batch["x"], batch["channel_mask"]),
                                   task.waveform(batch["x"], batch["channel_mask"]))
    over = [f"data.split.{k}={v}" for k, v in {"train": 0.6, "valid": 0.2, "test": 0.2, "gap": 2.0}.items()]
    got = evaluate_pretrained(str(folder), [evoked["waveform"]], out_dir=tmp_path / "ev", task="decode",
                              events="word_onset", overrides=over + ["data.segment_s=1.0", "data.n_patches=4"])
    assert got["metrics"]["test_auroc"] == pytest.approx(expected["test_auroc"])
    assert got["metrics"]["test_auroc"] > 0.9
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    again = recipe.load_task(tmp_path / "ft.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), task(batch))
    off = recipe.task(_config([evoked["waveform"]], waveform=False), dm)
    assert off.waveform is None and off.export_model().waveform is None
    assert off.read_out_start["waveform_readout"] == "off (task.waveform=false)"
    assert off.read_out_start["candidates"] == [recipe.START_BAND_POWER, recipe.START_BOTH]


def test_a_label_without_training_segments_is_left_out_of_every_arm(session, tmp_path):
    """A label seen only in the test block (a seizure onset late in a recording): no arm learned
    it, so scoring its test segments measured nothing but pulled the macro AUROC toward chance.
    They are left out of every arm, and the report, protocol and limitations say so."""
    import shutil

    import h5py

    path = tmp_path / "late_label.h5"
    shutil.copy(session, path)
    with h5py.File(path, "r+") as f:
        labels = f["events/word_onset/label"]
        onset = f["events/word_onset/onset"][:]
        late = np.flatnonzero(onset > 0.85 * 150.0)[:3]  # inside the test block (the last 20%)
        new = labels[:].astype(object)
        new[late] = b"seizure"
        del f["events/word_onset/label"]
        f.create_dataset("events/word_onset/label", data=new, dtype=h5py.string_dtype())
    cfg = _config([str(path)])
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert list(task.hparams.label_names) == ["nonspeech", "seizure", "speech"]
    out = recipe.evaluate(cfg, task, dm, tmp_path)
    assert out["data"]["test_segments_per_class"].keys() == {"nonspeech", "speech"}
    said = [x for x in out["limitations"] if "['seizure']" in x]
    assert len(said) == 1 and "their 3 test segment(s) are left out" in said[0] and said[0] in out["protocol"]
    assert out["baselines"]["null (chance)"]["test_auroc"] == 0.5
    assert 0.5 < out["baselines"]["logistic on band power"]["test_auroc"] <= 1.0
