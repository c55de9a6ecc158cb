"""Neuroformer run defaults that follow from the data and the checkpoint (issue 10, items 1-5):
block sizes from the spikes-per-window distribution, the moving-window scoring rule and the
check of the test block before training, the fine-tune config merge (shape from the
checkpoint, the rest from the run), --from-scratch, CLI override parsing, JSON without NaN.
Tiny hand-made sessions, no training."""

from __future__ import annotations

import dataclasses

import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurofm import cli, jsonio, plain_warnings
from neurofm.config import ConfigError, from_dict
from neurofm.data.session import Session, SessionWriter
from neurofm.data.tokenizer import (SpikeTokenizer, UnitVocab, block_size_for, dropped_fraction, spikes_per_window,
                                    window_count_percentiles)
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
from neurofm.recipes import neuroformer as recipe

DURATION = 60.0  # s


def _session(path: Path, *, still_after: float = 30.0, rate: float = 5.0, n_units: int = 4, seed: int = 0,
             burst: bool = False, drift_after: float | None = None) -> str:
    """Poisson spikes (``rate`` Hz per unit) and a 1-D position moving at 100 cm/s back and forth
    until ``still_after`` s, then still. ``burst``: one unit fires 40 extra spikes in 0.2 s every
    5 s (dense windows that a small block overflows). ``drift_after``: from then on the position
    runs on at 30 cm/s, off the 0-200 cm it covered before."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(rate * DURATION * n_units)
    times = rng.uniform(0.0, DURATION, n)
    units = rng.integers(0, n_units, n)
    if burst:
        b = (np.arange(1, 12) * 5.0)[:, None] + rng.uniform(0, 0.2, (11, 40))
        times, units = np.concatenate([times, b.ravel()]), np.concatenate([units, np.zeros(b.size, dtype=int)])
    order = np.argsort(times)
    ts = np.arange(0.0, DURATION, 0.01)
    x = 200.0 * np.abs(((np.minimum(ts, still_after) * 100.0 / 200.0) % 2.0) - 1.0)
    if drift_after is not None:
        x = np.where(ts < drift_after, x, np.interp(drift_after, ts, x) + 30.0 * (ts - drift_after))
    with SessionWriter(path, session_id=path.stem) as w:
        w.add_units([f"u{i}" for i in range(n_units)])
        w.add_spikes(times[order], units[order], t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    return str(path)


SMALL = {"n_embd": 16, "n_head": 2, "temporal_hidden": 16, "window": {"curr": 0.25, "prev": 0.25, "dt": 0.01},
         "layers": {"state": 1, "prev_encoder": 1, "state_history": 1, "stimulus_encoder": 0, "stimulus": 0,
                    "behavior": 0, "self_att": 1},
         "contrastive": {"enabled": False}}


def _config(sessions, model=None, **sections) -> recipe.RunConfig:
    return from_dict(recipe.RunConfig, {
        "data": {"sessions": list(sessions), "behavior": ["position"], "batch_size": 16},
        "model": {**SMALL, "behavior": [{"name": "position", "dim": 1, "task": "regression", "target": True}],
                  **(model or {})},
        "task": {"mode": "finetune", "objectives": ["behavior"]},
        "eval": {"generate_windows": 0},
        **sections,
    }, where="test")


# -- 1. block sizes from the data ---------------------------------------------------------------


def test_block_size_rule_closed_form():
    # 100 windows: 90 with 2 spikes, 9 with 10, 1 with 100 -> 370 spikes
    counts = np.array([2] * 90 + [10] * 9 + [100])
    assert dropped_fraction(counts, 102) == 0.0
    assert dropped_fraction(counts, 12) == pytest.approx(90 / 370)  # only the 100-spike window overflows
    # smallest capacity c with overflow <= 0.5% of 370 = 1.85 spikes: c = 99 (1 spike lost), not 98 (2)
    assert block_size_for(counts) == 101
    assert block_size_for(counts, max_dropped=0.25) == 12  # 90/370 = 24.3% dropped at capacity 10
    assert block_size_for(np.zeros(50, dtype=int)) == 4  # silent data: still room for two spikes
    p = window_count_percentiles(counts)
    assert p["max"] == 100 and p["p50"] == 2 and p["mean"] == pytest.approx(3.7)


def test_block_size_drops_what_the_tokenizer_drops(tmp_path):
    """The counts and the dropped share are the tokenizer's own: same window edges, same cap."""
    path = _session(tmp_path / "a.h5", rate=20.0, burst=True)
    from neurofm.data.session import Session

    with Session(path) as s:
        times, _ = s.spikes()
        ends = np.arange(1.0, DURATION, 0.25)
        counts = spikes_per_window(times, ends - 0.25, ends)
        block = block_size_for(counts)
        tok = SpikeTokenizer(0.25, 0.25, 0.01, block, block, UnitVocab.from_sessions([s]))
        out = tok.tokenize_session(s, ends)
    kept = (out["id"] >= 3).sum(1)
    assert np.array_equal(kept + out["n_dropped"], counts)
    assert out["n_dropped"].sum() / counts.sum() == pytest.approx(dropped_fraction(counts, block))
    assert dropped_fraction(counts, block) <= 0.005 < dropped_fraction(counts, block - 1)


def test_unset_block_sizes_come_from_the_training_windows_and_are_recorded(tmp_path):
    path = _session(tmp_path / "a.h5", rate=20.0, burst=True)
    cfg = _config([path])
    assert (cfg.model.block_size.id, cfg.model.block_size.prev_id) == (0, 0)  # the default: auto
    resolved = recipe.resolve_block_sizes(cfg)
    curr, prev = recipe.split_window_counts(resolved)
    chosen = resolved.model.block_size
    assert (chosen.id, chosen.prev_id) == (block_size_for(curr), block_size_for(prev))
    report = recipe.block_size_report(resolved)
    assert report["dropped_fraction_train"]["curr"] <= 0.005
    assert set(report["dropped_fraction_test"]) == {"curr", "prev"}  # what the scored windows lose, too
    assert report["block_size"] == {"id": resolved.model.block_size.id, "prev_id": resolved.model.block_size.prev_id}
    # only training windows count: the 80% training block of a 60 s session, 0.25 s stride
    assert 0.75 * 48 / 0.25 < len(curr) <= 48 / 0.25
    # the config file of the run holds the chosen numbers
    from neurofm.experiment import save_config

    save_config(resolved, tmp_path / "config.yaml")
    assert f"id: {resolved.model.block_size.id}" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="prepare"):
        recipe.datamodule(cfg)  # unresolved sizes never reach a tokenizer


def test_a_block_size_that_drops_over_one_percent_warns_with_the_fraction(tmp_path):
    path = _session(tmp_path / "a.h5", rate=20.0, burst=True)
    cfg = _config([path], model={"block_size": {"id": 8, "prev_id": 200}})
    with pytest.warns(UserWarning, match=r"block_size.id = 8 \(from your setting\) drops \d+\.\d% .*block_size.id=\d+"):
        out = recipe.resolve_block_sizes(cfg)
    assert out.model.block_size.id == 8  # the user's setting is kept
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe.resolve_block_sizes(_config([path], model={"block_size": {"id": 200, "prev_id": 200}}))


def test_mostly_empty_windows_get_a_longer_window_suggested(tmp_path):
    path = _session(tmp_path / "a.h5", rate=0.5)  # 4 units x 0.5 Hz = 2 spikes/s: 0.1 per 50 ms window
    cfg = _config([path], model={"window": {"curr": 0.05, "prev": 0.1, "dt": 0.01}})
    # ~1.9 spikes/s measured: 4 spikes need 2.1 s, so the next round length, 5 s (prev scaled x100)
    with pytest.warns(UserWarning, match=r"holds 0\.09 spikes on average.*windows of model.window.curr=5 "
                                         r"model.window.prev=10 hold about 4 spikes; set them"):
        recipe.resolve_block_sizes(cfg)
    assert recipe.suggest_window(1.5, cfg.model.window) is None
    # fine-tuning: the windows are the checkpoint's shape, so the hint says it means pretraining again
    # (it read "try model.window.curr=5", which a fine-tune cannot set)
    tuned = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, pretrained="runs/pre/pretrained"))
    with pytest.warns(UserWarning, match=r"hold about 4 spikes; the windows are the pretrained model's \(its shape\), "
                                         r"so that means pretraining again"):
        recipe.resolve_block_sizes(tuned)


def test_inspect_shows_spikes_per_window(tmp_path, capsys):
    path = _session(tmp_path / "a.h5", rate=20.0)
    assert cli.main(["inspect", path, "--window-curr", "0.25", "--window-prev", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "current  250 ms: p50" in text and "previous 500 ms" in text and "block sizes chosen" in text
    assert cli.main(["inspect", path, "--json", "--window-curr", "0.25"]) == 0
    info = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]
    assert info["window_curr_s"] == 0.25 and 15 < info["curr"]["p50"] < 25  # 80 spikes/s x 0.25 s
    assert info["curr"]["p90"] + 2 <= info["auto_block_size"]["id"] <= info["curr"]["max"] + 2


def test_inspect_with_the_readme_windows_says_when_a_dense_recording_keeps_the_demo_s(tmp_path, capsys):
    """README step 1 runs inspect with 0.25 / 0.5 s windows, and step 2 says a dense recording (several
    spikes per 50 ms window) keeps the demo's 50 / 150 ms: inspect showed only the 250 ms counts (111
    spikes a window, 219 + 352 tokens on a 70-unit 445 spikes/s recording), so the user had to work
    out the 50 ms mean. It now says so; a sparse file, or the demo's own windows, get no such line."""
    dense = _session(tmp_path / "dense.h5", rate=40.0)  # 4 units x 40 Hz = 160 spikes/s: 8 per 50 ms
    assert cli.main(["inspect", dense, "--window-curr", "0.25", "--window-prev", "0.5"]) == 0
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if "dense:" in x)
    mean = float(line.split("about ")[1].split()[0])
    assert 6.5 < mean < 9.5 and "per 50 ms window" in line and "demo's 50 / 150 ms windows" in line
    assert "leave model.window.* out" in line
    assert cli.main(["inspect", dense]) == 0  # the demo's windows already
    assert "dense:" not in capsys.readouterr().out
    sparse = _session(tmp_path / "sparse.h5", rate=2.0)  # 8 spikes/s: 0.4 per 50 ms
    assert cli.main(["inspect", sparse, "--window-curr", "0.25", "--window-prev", "0.5"]) == 0
    assert "dense:" not in capsys.readouterr().out
    from neurofm.experiment import load_config

    demo = load_config("demo").model.window
    long = dataclasses.replace(demo, curr=0.25, prev=0.5)
    assert recipe.demo_window_hint(19.0, long, demo) is None  # 3.8 per 50 ms: under the 4 a window should hold
    assert recipe.demo_window_hint(20.0, long, demo) == (demo.curr, demo.prev, 4.0)


def test_inspect_defaults_are_the_windows_and_block_sizes_the_readme_pretraining_uses(tmp_path, capsys):
    """Without --window-curr/--window-prev, inspect showed RunConfig's 50 / 50 ms windows while the
    README's pretraining (`train.py demo`, no window override) reads a 150 ms previous window: on a
    72-unit 740 spikes/s recording it printed prev_id 75 and a step cost for 75 + 75 tokens, and the
    run chose prev_id 202. The defaults are now the demo config's, so the block sizes (and the
    step timing they drive) are those that pretraining chooses on the same file."""
    from neurofm.experiment import load_config

    path = _session(tmp_path / "a.h5", rate=20.0)
    assert cli.main(["inspect", path, "--json"]) == 0
    w = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]
    demo = load_config("demo", ["data.behavior=[]", "model.behavior=[]"])
    demo.data.sessions = [path]
    assert (w["window_curr_s"], w["window_prev_s"]) == (demo.model.window.curr, demo.model.window.prev)
    chosen = recipe.resolve_block_sizes(demo).model.block_size
    capsys.readouterr()
    assert w["auto_block_size"] == {"id": chosen.id, "prev_id": chosen.prev_id}
    assert w["pretraining"]["block_size"] == w["auto_block_size"]
    assert w["auto_block_size"]["prev_id"] > w["auto_block_size"]["id"]  # a previous window 3x as long


def test_inspect_says_when_the_default_test_block_is_rest_and_how_to_split(tmp_path, capsys):
    """Moving until 30 s of 60: the default test block (the last 10%) is rest, which finetune
    would refuse (no moving window to score); inspect says so, with the moving rule's numbers
    and `neurofm split`. After the split holds out a moving block, it says the block moves."""
    path = _session(tmp_path / "a.h5", still_after=30.0)
    assert cli.main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "test block (default split: the last 10% of the recording): 0 of" in text and "windows moving (0%" in text
    assert "mostly rest" in text and "finetune refuses" in text and "neurofm split FILE" in text
    assert cli.main(["inspect", path, "--json"]) == 0
    t = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]["test_block"]
    assert t["n_test_moving"] == 0 and 0 < t["n_train_moving"] < t["n_train_windows"]
    assert 15.0 < t["moving_threshold"] < 21.0 and t["unit"] == "cm"  # as resolve_scoring sets it
    assert cli.main(["split", path, "--train", "0:18", "--valid", "19:23", "--test", "24:30"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "test block (/intervals/test):" in text and "mostly rest" not in text


def test_inspect_says_when_a_behaviour_other_than_position_barely_varies_in_the_test_block(tmp_path, capsys):
    """A head-direction recording ending in sleep: the default test block (the last 10%) holds a
    still head, which finetune refuses (variance under 1% of training's), but inspect, which
    checked only a position's movement, said nothing. It now names the behaviour, the share and
    the split fix, and says when its unit is an angle. The position keeps its own moving line."""
    rng = np.random.default_rng(0)
    path = tmp_path / "hd.h5"
    n = rng.poisson(20 * DURATION * 4)
    times = np.sort(rng.uniform(0.0, DURATION, n))
    ts = np.arange(0.0, DURATION, 0.02)
    angle = np.mod(np.cumsum(rng.normal(0, 0.1, ts.size)) * (ts < 45.0) + 1.0, 2 * np.pi)
    angle[ts >= 45.0] = angle[ts < 45.0][-1]  # asleep: the head does not turn
    with SessionWriter(path, session_id="hd") as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, rng.integers(0, 4, n), t_start=0.0, t_end=DURATION)
        w.add_behavior("head_direction", ts, angle, unit="radians")
        w.add_behavior("speed", ts, np.abs(rng.normal(5, 2, ts.size)), unit="cm/s")  # varies throughout
    assert cli.main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"test block head_direction: its variance over the [\d,]+ test windows is 0\.00% of the "
                     r"training block's \(finetune refuses under 1%\): hold out a block where it varies with "
                     r"`neurofm split FILE", text)
    assert "angle      head_direction is in radians" in text and "test block speed" not in text
    assert cli.main(["inspect", str(path), "--json"]) == 0
    v = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]["test_block_variation"]
    assert [x["name"] for x in v] == ["head_direction"] and v[0]["refused"] and v[0]["angle"]
    # finetune's own check agrees: it refuses this test block before training
    cfg = _config([str(path)])
    cfg.data.behavior = ["head_direction"]
    cfg.model.behavior[0].name = "head_direction"
    cfg.task.mode = "finetune"
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="barely varies in the test block"):
        recipe.check_test_target(cfg)
    # after a split that holds out a block where the head turns: only the angle note is left
    assert cli.main(["split", str(path), "--train", "0:30", "--valid", "31:37", "--test", "38:44"]) == 0
    capsys.readouterr()
    assert cli.main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "test block head_direction" not in text and "angle      head_direction" in text


def test_finetune_on_a_trials_column_says_it_is_a_per_trial_label(tmp_path):
    """`--behavior orientation` on a file whose grating orientation is a trials-table column said only
    "has no /behavior/orientation; it has ['running_speed']": the error now says where the name is
    and that per-trial labels are not a decodable time series."""
    path = str(tmp_path / "a.h5")
    with SessionWriter(path, session_id="a") as w:
        w.add_units(["u0"])
        w.add_spikes(np.sort(np.random.default_rng(0).uniform(0, DURATION, 300)), np.zeros(300, dtype=int),
                     t_start=0.0, t_end=DURATION)
        w.add_behavior("running_speed", np.arange(0.0, DURATION, 0.02), np.ones(3000), unit="cm/s")
        w.add_intervals("trials", start=np.arange(0.0, 58.0, 2.0), end=np.arange(1.0, 59.0, 2.0),
                        orientation=np.tile([0.0, 45.0, 90.0, 135.0], 8)[:29])
    with pytest.raises(ConfigError) as e:
        recipe.finetune_config(str(tmp_path / "model"), [path], behavior=["orientation"])
    assert "has no /behavior/orientation; it has ['running_speed']" in str(e.value)
    assert "orientation is a column of /intervals/trials (one value per interval)" in str(e.value)
    with pytest.raises(ConfigError, match=r"it has \['running_speed'\]$"):  # a name in no table: as before
        recipe.finetune_config(str(tmp_path / "model"), [path], behavior=["speed"])


def test_inspect_estimates_what_the_readme_pretraining_will_cost(tmp_path, capsys):
    """A dense recording took ~19 min of pretraining with no word from inspect. Inspect now sizes
    the README's pretraining (neuroformer/demo, the windows shown) from the file: the block sizes
    the data chooses (tokens per window), the demo's epochs times the training batches, and
    seconds per step measured on its first batches; the text gives the estimate."""
    import math

    path = _session(tmp_path / "a.h5", still_after=30.0)
    assert cli.main(["inspect", path, "--json", "--window-curr", "0.25", "--window-prev", "0.5"]) == 0
    w = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]
    p = w["pretraining"]
    from neurofm.experiment import load_config

    demo = load_config("demo")  # the README's command: train.py demo (6 epochs, batch 32)
    assert p["config"] == "neuroformer/demo" and p["config_epochs"] == demo.trainer.max_epochs
    assert p["batch_size"] == demo.data.batch_size and p["block_size"] == w["auto_block_size"]
    assert p["steps_per_epoch"] == math.ceil(w["n_train_windows"] / p["batch_size"])
    assert p["steps"] == p["config_epochs"] * p["steps_per_epoch"]
    assert p["measured_steps"] >= 1 and p["seconds_per_step"] > 0
    assert p["estimate_s"] == pytest.approx(p["steps"] * p["seconds_per_step"])
    # what comes after training, timed on the file (a run's evaluation and generation took about as
    # long as two epochs, and the estimate left them out): validation once an epoch, the test pass
    # (two forwards a batch), the training windows' counts, and generation's 256 windows x 4 draws
    v, e, g = p["validation"], p["evaluation"], p["generation"]
    assert v["passes"] == p["config_epochs"] and v["batches"] >= 1 and v["seconds_per_batch"] > 0
    assert e["test_batches"] >= 1 and e["seconds_per_test_batch"] > 0 and e["seconds_per_train_batch"] > 0
    assert e["train_batches"] == p["steps_per_epoch"]  # every training window's counts, read once
    assert g["draws"] == demo.eval.generate_draws and g["seconds_per_batch"] > 0
    assert g["batches"] == min(e["test_batches"], math.ceil(demo.eval.generate_windows / p["batch_size"]))
    assert g["seconds"] == pytest.approx(g["batches"] * g["draws"] * g["seconds_per_batch"])
    assert p["total_s"] == pytest.approx(p["estimate_s"] + v["seconds"] + e["seconds"] + g["seconds"])
    assert cli.main(["inspect", path, "--window-curr", "0.25", "--window-prev", "0.5"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"pretraining neuroformer/demo with these windows \(README step 2\): \d+ steps \(6 epochs x "
                     r"\d+ batches of 32\), each window padded to id \d+ \+ prev_id \d+ tokens; \d+ ms per step", text)
    assert re.search(r"\n  pretraining then: validation 6 x \d+ batches about \d+ s, evaluation \(\d+ test batches, "
                     r"\d+ batches of training-window counts\) about \d+ s, generation \(\d+ test windows x 4 draws, "
                     r"[\d.]+ s a batch\) about \d+ s: about \d+ (s|min) in all\n", text)
    # training under the 10 min line but the whole run over it: LONG, and the epochs that fit all of it
    # (9 min of training, 1 min of validation, 30 s of evaluation, 32 s of generation)
    after = {"validation": {**v, "passes": 6, "batches": 10, "seconds_per_batch": 1.0, "seconds": 60.0},
             "evaluation": {**e, "seconds": 30.0},
             "generation": {**g, "windows": 256, "batches": 8, "draws": 4, "seconds_per_batch": 1.0, "seconds": 32.0}}
    over = {**p, **after, "steps_per_epoch": 100, "steps": 600, "seconds_per_step": 0.9, "estimate_s": 540.0,
            "total_s": 662.0}
    lines = cli._describe_pretraining(over)
    assert len(lines) == 2 and "about 9 min of training" in lines[0] and "LONG" not in lines[0]
    assert lines[1].endswith("about 11 min in all. LONG (over 10 min): trainer.max_epochs=5 (about 9 min), or shorter "
                             "windows (model.window.curr / prev: --window-curr / --window-prev here show the block "
                             "sizes they give; a step's cost grows with id + prev_id)")
    assert "validation 6 x 10 batches about 60 s, evaluation" in lines[1] and "4 draws, 1.00 s a batch) about 32 s" \
        in lines[1]
    # generation the larger part (a dense recording's blocks fill slowly): fewer generated windows named
    heavy = {**over, "generation": {**after["generation"], "seconds_per_batch": 20.0, "seconds": 640.0},
             "total_s": 1270.0}
    assert ("or fewer generated windows (eval.generate_windows=32: generation about 80 s)"
            in cli._describe_pretraining(heavy)[-1])
    p = {k: v for k, v in p.items() if k not in ("validation", "evaluation", "generation", "total_s")}  # training only
    # long (a dense recording's blocks): the settings that shorten it, sized from the same figures
    long = {**p, "steps_per_epoch": 900, "steps": 5400, "seconds_per_step": 0.25, "estimate_s": 1350.0}
    lines = cli._describe_pretraining(long)
    assert len(lines) == 1 and "about 22 min. LONG (over 10 min): trainer.max_epochs=2 (about 8 min), or shorter " \
        "windows" in lines[0]
    # one epoch alone over the budget (a 75-min clinical EDF: 197 batches of 3.6 s): no whole epoch fits, so
    # a step count is the setting; it named only a smaller model
    long = {**p, "steps_per_epoch": 197, "steps": 2955, "seconds_per_step": 3.6, "estimate_s": 2955 * 3.6}
    lines = cli._describe_pretraining(long)
    assert "LONG (over 10 min): trainer.max_steps=166 (about 10 min: 166 of the 197 batches of one epoch), or " \
        "shorter windows" in lines[0]


def test_unit_text_takes_the_behaviours_unit_string():
    """``_unit_text`` reads a unit string, so ``test_block_motion`` (one session, no data module)
    no longer builds a stand-in data module to get one."""
    assert recipe._unit_text("cm") == "cm" and recipe._unit_text("pixels") == "px"
    assert recipe._unit_text("") == "units"


def test_inspect_does_not_call_a_reaching_task_mostly_rest(tmp_path, capsys):
    """Reaching with rest between movements (move 1 s, still 3 s, all session): about half
    the windows of every block move. The test block moves as much as the training block, so
    inspect names the scored windows without "mostly rest" and the `neurofm split` advice (it
    said both when under half of the test windows moved, whatever the training block did)."""
    rng = np.random.default_rng(3)
    times = np.sort(rng.uniform(0.0, DURATION, int(20 * DURATION)))
    ts = np.arange(0.0, DURATION, 0.01)
    phase = ts % 4.0
    out = np.where(phase < 1.0, 0.5 - 0.5 * np.cos(np.pi * phase), 1.0)   # out in 1 s, hold 3 s, back
    x = 80.0 * np.where((ts // 4.0) % 2 == 0, out, 1.0 - out)
    path = tmp_path / "reach.h5"
    with SessionWriter(path, session_id="reach") as w:
        w.add_units(["u0", "u1"])
        w.add_spikes(times, rng.integers(0, 2, len(times)), t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="mm")
    assert cli.main(["inspect", str(path), "--json"]) == 0
    t = jsonio.loads_strict(capsys.readouterr().out)["spikes_per_window"]["test_block"]
    test_share, train_share = t["n_test_moving"] / t["n_test_windows"], t["n_train_moving"] / t["n_train_windows"]
    assert 0.25 < test_share < 0.5 and abs(test_share - train_share) < 0.15   # the case the old rule flagged
    assert cli.main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "windows moving" in text and "mostly rest" not in text and "neurofm split FILE" not in text


# -- 2. scoring that cannot mislead -------------------------------------------------------------


def test_auto_scoring_of_position_is_moving_with_a_threshold_from_the_data(tmp_path):
    cfg = _config([_session(tmp_path / "a.h5", still_after=60.0)])
    out = recipe.resolve_scoring(cfg)
    assert out.eval.score_when == "moving"
    # moving at 100 cm/s through the training block: 0.2 x its 95th-percentile speed ~ 20 cm/s
    assert 15.0 < out.eval.moving_threshold < 21.0
    assert recipe.resolve_scoring(_config([tmp_path / "a.h5"], eval={"score_when": "all"})).eval.score_when == "all"
    set_by_user = recipe.resolve_scoring(_config([tmp_path / "a.h5"], eval={"moving_threshold": 7.0}))
    assert (set_by_user.eval.score_when, set_by_user.eval.moving_threshold) == ("moving", 7.0)



def test_moving_rules_smoothing_from_the_data_is_printed_recorded_and_inspected(tmp_path, capsys):
    """eval.speed_smooth_s=0: the sigma comes from the position's own jitter (evaluation.
    smoothing_from_jitter), is printed beside the threshold, written to the config (as the
    threshold is, so config.yaml and the protocol line state it) and used by inspect; a number
    stays as given; a negative one is refused before any data is read."""
    from neurofm import evaluation as ev

    rng = np.random.default_rng(5)
    ts = np.arange(0.0, DURATION, 1 / 30)  # a 30 Hz camera, 3 mm jitter, 1 s still between 2 s runs
    phase = ts % 3.0
    x = 40.0 * (ts // 3.0) + np.where(phase < 2.0, 20.0 * phase, 40.0) + rng.normal(0.0, 0.3, len(ts))
    times = np.sort(rng.uniform(0.0, DURATION, int(20 * DURATION)))
    path = tmp_path / "jitter.h5"
    with SessionWriter(path, session_id="jitter") as w:
        w.add_units(["u0", "u1"])
        w.add_spikes(times, rng.integers(0, 2, len(times)), t_start=0.0, t_end=DURATION)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    out = recipe.resolve_scoring(_config([path], eval={"speed_smooth_s": 0.0}))
    printed = capsys.readouterr().out
    sigma, threshold = out.eval.speed_smooth_s, out.eval.moving_threshold
    d = ev.session_position_data(path, ev.DecodingProtocol(smooth_s=sigma), counts=False)
    assert sigma == ev.smoothing_from_jitter(d.jitter_sd(), 0.05, lambda s: 0.2 * np.nanpercentile(
        d.moving_speed(s)[:int(0.8 * d.n_bins)], 95))  # ~ the training blocks' (the first 80%)
    assert 0.05 < sigma < 0.5  # 3 mm at 30 Hz needs some smoothing; 0.5 s would blur the 1 s stops
    assert ev.jitter_speed(d.jitter_sd(), 0.05, sigma) <= ev.JITTER_MARGIN * threshold
    assert f"smoothing sigma {sigma:g} s from the data" in printed and f"(sigma {sigma:g} s) > " in printed
    assert f"sigma {sigma:g} s" in recipe._protocol_for(out).describe()
    assert recipe.resolve_scoring(out) is out  # resolved once: config.yaml holds the number
    given = recipe.resolve_scoring(_config([path], eval={"speed_smooth_s": 0.3}))
    assert given.eval.speed_smooth_s == 0.3 and "from the data" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"eval.speed_smooth_s: -1.0 s"):
        recipe.resolve_scoring(_config([path], eval={"speed_smooth_s": -1.0}))
    # inspect applies the same rule and says which sigma
    cfg = _config([path], eval={"speed_smooth_s": 0.0})
    with Session(path) as s:
        t = recipe.test_block_motion(cfg, s)
    assert (t["speed_smooth_s"], t["moving_threshold"]) == (sigma, threshold)
    assert f"smoothing sigma {sigma:g} s" in cli._describe_test_block(t)[0]


def test_vr_teleports_are_no_movement(tmp_path):
    """A head-fixed mouse in virtual reality: it runs the 180 cm track at 30 cm/s, licks still
    for 3 s at its end, and the track teleports back to 0. The teleport was read as movement:
    the speed of the smoothed position passed metres per second around every lap's end, the
    default threshold (0.2 x the 95th-percentile speed) rose to 23 cm/s on such a recording (its
    wheel said 9), and every licking stretch next to a teleport was scored as running. The
    speed is now taken on each side of a jump separately (evaluation.position_jumps)."""
    from neurofm import evaluation as ev

    duration = 300.0
    ts = np.arange(0.0, duration, 1 / 60)
    lap = 6.0 + 3.0  # run 6 s, still 3 s, teleport
    phase = ts % lap
    x = np.where(phase < 6.0, 30.0 * phase, 180.0)
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0.0, duration, 4000))
    path = tmp_path / "vr.h5"
    with SessionWriter(path, session_id="vr") as w:
        w.add_units(["u0", "u1"])
        w.add_spikes(times, rng.integers(0, 2, len(times)), t_start=0.0, t_end=duration)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    out = recipe.resolve_scoring(_config([str(path)]))
    assert out.eval.score_when == "moving"
    assert 5.0 < out.eval.moving_threshold < 6.5  # a fifth of 30 cm/s; the teleports made it ~20
    p = ev.DecodingProtocol(speed_threshold=out.eval.moving_threshold)
    d = ev.session_position_data(path, p)
    mid = d.bin_times + d.bin_size / 2
    ph = mid % lap
    still = (ph > 6.5) & (ph < 8.5)  # licking, away from the speed's smoothing at the run's end
    running = (ph > 1.0) & (ph < 5.5)
    assert d.moving[still].mean() == 0.0 and d.moving[running].mean() > 0.99
    cuts, mixed = ev.position_jumps(d.position)
    # one jump per lap end (two cuts around a bin that mixes both sides), none inside a run
    assert 1 + int((np.diff(cuts) > 2).sum()) == int(duration // lap)
    assert np.isnan(d.moving_speed(p.smooth_s)[mixed]).all() and not d.moving[mixed].any()
    # an open field's fast run is no jump
    assert len(ev.position_jumps(np.cumsum(np.full(200, 2.0)))[0]) == 0


def test_units_lost_half_way_are_named_before_training(tmp_path):
    """An NWB units table's obs_intervals (a unit lost half way) become /units/obs_start, obs_end;
    convert warned, but a fine-tuning run read such a unit as silent in its test block without a
    word. The run's preparation (the default path, recipe.prepare) now names each unit and the
    share of each block it was not recorded over."""
    rng = np.random.default_rng(1)
    duration = 300.0
    times = np.sort(rng.uniform(0.0, duration, 6000))
    units = rng.integers(0, 3, len(times))
    keep = ~((units == 2) & (times > 150.0))  # unit 2 lost half way
    ts = np.arange(0.0, duration, 0.01)
    x = 200.0 * np.abs(((ts * 100.0 / 200.0) % 2.0) - 1.0)
    path = tmp_path / "lost.h5"
    with SessionWriter(path, session_id="lost") as w:
        w.add_units(["a", "b", "c"], obs_start=np.zeros(3), obs_end=np.array([duration, duration, 150.0]),
                    obs_s=np.array([duration, duration, 150.0]))
        w.add_spikes(times[keep], units[keep], t_start=0.0, t_end=duration)
        w.add_behavior("position", ts, x[:, None], unit="cm")
    with pytest.warns(UserWarning, match=r"lost.h5: /units/obs_start, obs_end: 1 unit\(s\) .*unit c: \d+% of "
                                         r"train, 100% of valid, 100% of test.*read as silence.*neurofm split"):
        recipe.prepare(_config([str(path)]))
    assert recipe.warn_unobserved_units(_config([_session(tmp_path / "full.h5")])) == []


def test_score_when_moving_refuses_a_velocity(tmp_path):
    """A Utah-array session's only behaviour is a cursor velocity in m/s. `auto` scores it on every
    window; `--score-when moving` named eval.moving_behavior=NAME as the fix, and with the velocity
    named the moving rule differentiated it (its acceleration) and scored by that, silently. Now
    a velocity as the moving behaviour is refused, naming file, field and fix."""
    path = _session(tmp_path / "a.h5", still_after=60.0)
    vel = tmp_path / "utah.h5"
    with SessionWriter(vel, session_id="utah") as w, h5py.File(path) as f:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(f["spikes/times"][:], f["spikes/unit_index"][:], t_start=0.0, t_end=DURATION)
        ts = f["behavior/position/timestamps"][:]
        w.add_behavior("cursor_velocity", ts, np.stack([np.sin(ts), np.cos(ts)], 1), unit="m/s")
    model = {"behavior": [{"name": "cursor_velocity", "dim": 2, "task": "regression", "target": True}]}
    data = {"sessions": [str(vel)], "behavior": ["cursor_velocity"]}
    assert recipe.resolve_scoring(_config([vel], model=model, data=data)).eval.score_when == "all"
    with pytest.raises(ConfigError, match=r"has no /behavior/position .*eval.moving_behavior=NAME \(a position, in a "
                                          r"length unit\)"):
        recipe.resolve_scoring(_config([vel], model=model, data=data, eval={"score_when": "moving"}))
    for extra in ({}, {"moving_threshold": 0.1}):
        with pytest.raises(ConfigError, match=r"utah.h5: /behavior/cursor_velocity is in m/s, a velocity, not a "
                                              r"position.*--score-when all"):
            recipe.resolve_scoring(_config([vel], model=model, data=data,
                                           eval={"score_when": "moving", "moving_behavior": "cursor_velocity", **extra}))
    assert [recipe.is_velocity_unit(u) for u in ("m/s", "cm / s", "px/s", "m", "deg/s", "")] == \
        [True, True, True, False, False, False]


def test_score_when_moving_reads_the_position_a_velocity_was_derived_from(tmp_path, capsys):
    """A reaching session: the NWB file stores the hand's position (`hand`, cm), and `convert
    --velocity-from hand` adds `hand_velocity`. `--score-when moving --behavior hand_velocity` was
    refused (no /behavior/position) though the velocity's `source_behavior` names its position;
    now the hand's movement picks the scored windows, and `auto` still scores every window."""
    from neurofm.data.session import add_velocity

    path = _session(tmp_path / "a.h5", still_after=60.0)
    reach = tmp_path / "reach.h5"
    with SessionWriter(reach, session_id="reach") as w, h5py.File(path) as f:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(f["spikes/times"][:], f["spikes/unit_index"][:], t_start=0.0, t_end=DURATION)
        w.add_behavior("hand", f["behavior/position/timestamps"][:], f["behavior/position/values"][:], unit="cm")
    add_velocity(reach, reach, ["hand"])
    model = {"behavior": [{"name": "hand_velocity", "dim": 1, "task": "regression", "target": True}]}
    data = {"sessions": [str(reach)], "behavior": ["hand_velocity"]}
    assert recipe.resolve_scoring(_config([reach], model=model, data=data)).eval.score_when == "all"
    out = recipe.resolve_scoring(_config([reach], model=model, data=data, eval={"score_when": "moving"}))
    assert out.eval.score_when == "moving" and out.eval.moving_behavior == "hand"
    assert 15.0 < out.eval.moving_threshold < 25.0  # a fifth of the hand's 100 cm/s
    assert "derived from /behavior/hand (its source_behavior)" in capsys.readouterr().err


def test_auto_scoring_finds_a_position_named_otherwise_by_its_length_unit(tmp_path):
    """A new lab's NWB Position series keeps its own name (here ``led``, in metres): ``auto``
    scored it on every window, rest included, because only ``position`` counted as position.
    Now the one decoded target in a length unit is the position when no /behavior/position
    exists; a target in another unit (or the name given) keeps the old rule."""
    path = _session(tmp_path / "a.h5", still_after=60.0)
    led = tmp_path / "led.h5"
    with SessionWriter(led, session_id="led") as w, h5py.File(path) as f:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(f["spikes/times"][:], f["spikes/unit_index"][:], t_start=0.0, t_end=DURATION)
        w.add_behavior("led", f["behavior/position/timestamps"][:], f["behavior/position/values"][:] / 100.0,
                       unit="meters")
        w.add_behavior("head_direction", f["behavior/position/timestamps"][:], f["behavior/position/values"][:, 0],
                       unit="radians")
    model = {"behavior": [{"name": "led", "dim": 1, "task": "regression", "target": True}]}
    out = recipe.resolve_scoring(_config([led], model=model, data={"sessions": [str(led)], "behavior": ["led"]}))
    assert (out.eval.score_when, out.eval.moving_behavior) == ("moving", "led")
    assert 0.15 < out.eval.moving_threshold < 0.21  # 0.2 x 1 m/s, in the file's own unit
    hd = {"behavior": [{"name": "head_direction", "dim": 1, "task": "regression", "target": True}]}
    out = recipe.resolve_scoring(_config([led], model=hd,
                                         data={"sessions": [str(led)], "behavior": ["head_direction"]}))
    assert (out.eval.score_when, out.eval.moving_behavior) == ("all", "position")
    assert recipe.resolve_scoring(_config([led], model=model, data={"sessions": [str(led)], "behavior": ["led"]},
                                          eval={"score_when": "all"})).eval.score_when == "all"
    # an angle target is decoded as a line: warned before training
    hd_cfg = recipe.resolve_scoring(_config([led], model=hd, data={"sessions": [str(led)], "behavior": ["head_direction"]}))
    with pytest.warns(UserWarning, match=r"head_direction in .*led.h5 is an angle \(radians\).*cosine and sine"
                                         r".*neurofm convert session .*led.h5 OUT.h5 --angle head_direction"):
        recipe.check_test_target(hd_cfg)
    # the fix it names: a 2-column, unitless target with no angle warning
    from neurofm import cli

    assert cli.main(["convert", "session", str(led), str(tmp_path / "cs.h5"), "--angle", "head_direction"]) == 0
    with Session(led) as a, Session(tmp_path / "cs.h5") as b:
        (ta, theta), (tb, cs) = a.behavior("head_direction"), b.behavior("head_direction_cos_sin")
        assert b.behavior_unit("head_direction_cos_sin") == "" and b.h5.attrs["t_end"] == a.h5.attrs["t_end"]
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_allclose(cs, np.stack([np.cos(theta), np.sin(theta)], 1), atol=1e-6)
    cs_model = {"behavior": [{"name": "head_direction_cos_sin", "dim": 2, "task": "regression", "target": True}]}
    cs_cfg = recipe.resolve_scoring(_config([tmp_path / "cs.h5"], model=cs_model, data={
        "sessions": [str(tmp_path / "cs.h5")], "behavior": ["head_direction_cos_sin"]}))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        recipe.check_test_target(cs_cfg)
    assert not [w for w in said if "is an angle" in str(w.message)]
    assert recipe.angle_limitation("head_direction_cos_sin", "") is None
    # neurofm inspect's test-block check finds the same position
    with Session(led) as s:
        motion = recipe.test_block_motion(_config([led]), s)
    assert motion["moving_behavior"] == "led" and motion["unit"] == "meters" and 0.15 < motion["moving_threshold"] < 0.21


def test_default_moving_windows_ignore_tracking_jitter_at_rest(jittered_open_field):
    """Issue 10: with the CLI defaults (auto threshold, MovingWindows), an open field tracked with
    3 mm jitter scored most of its rest windows as moving. Now rest windows are not scored and
    running ones are."""
    path, _, ts, true_speed = jittered_open_field
    cfg = recipe.resolve_scoring(_config([path], model={
        "behavior": [{"name": "position", "dim": 2, "task": "regression", "target": True}]}))
    assert cfg.eval.score_when == "moving"
    moving = recipe.MovingWindows(cfg, [path])
    w = cfg.model.window.curr
    ends = np.arange(w + 1.0, ts[-1] - 1.0, w)
    lo, hi = np.searchsorted(ts, ends - w), np.searchsorted(ts, ends)  # the true speed inside each window
    peak = np.array([true_speed[a:b].max(initial=0.0) for a, b in zip(lo, hi)])
    low = np.array([true_speed[a:b].min() if b > a else 0.0 for a, b in zip(lo, hi)])
    rest, run = peak == 0, low > 2 * cfg.eval.moving_threshold
    assert rest.sum() > 1000 and run.sum() > 500
    flagged = moving(np.zeros(len(ends), dtype=np.int64), ends)
    # measured: 0 of 1,616 rest windows (the old rule, the smoothed norm of the frame-to-frame
    # change: all 1,616), 98.5% of 667 running windows
    assert flagged[rest].mean() < 0.01 and flagged[run].mean() > 0.95
    # a fifth of the running speed (true p95 12.8 cm/s): 2.25 cm/s, no longer inflated by the
    # jitter (2.91 with the old rule); a little under 0.2 as smoothing shortens winding paths
    assert 0.15 < cfg.eval.moving_threshold / np.percentile(true_speed, 95) < 0.21


def test_a_test_block_of_rest_is_refused_before_training(tmp_path):
    cfg = recipe.resolve_scoring(_config([_session(tmp_path / "a.h5", still_after=30.0)]))
    with pytest.raises(ConfigError, match=r"position: the test block has 0 scored windows .*neurofm split"), \
            pytest.warns(UserWarning, match=r"the validation block has 0 scored windows \(moving\), so model"):
        recipe.check_test_target(cfg)
    cfg.eval.score_when = "all"  # every window: 23 still windows, the target constant
    with pytest.raises(ConfigError, match=r"variance is 0\.00% of that over the training windows.*neurofm split"):
        recipe.check_test_target(cfg)
    cfg.eval.check_target = False
    recipe.check_test_target(cfg)
    # a session that moves throughout passes (its instant turns every 2 s are stops to the moving
    # rule, which smooths position: a 12 s test block keeps ~2/3 of its windows, over 20)
    moves = _session(tmp_path / "b.h5", still_after=60.0)
    recipe.check_test_target(recipe.resolve_scoring(_config([moves], data={
        "sessions": [moves], "behavior": ["position"], "batch_size": 16,
        "split": {"train": 0.7, "valid": 0.1, "test": 0.2}})))


def test_a_test_block_off_the_training_range_is_said_before_training_and_in_the_limitations(pretrained, tmp_path,
                                                                                           capsys):
    """A rat that kept to one corner of a 200 cm arena for the 70 s default test block: its variance
    there was 13% of the training windows' (the variance check passes at 10%) but its mean 90 / 43 cm
    off, so the training mean scored R2 -11.5 and ridge -6.7 after a 5-min fine-tune, with no word why.
    The check before training and the run's limitations now say that the test block lies off the
    range the decoders learned, with the numbers and the fix (split, or --folds)."""
    folder, _ = pretrained
    drift = _session(tmp_path / "drift.h5", still_after=60.0, drift_after=48.0)  # test block: x 380-560 cm
    cfg = recipe.resolve_scoring(_config([drift], data={"sessions": [drift], "behavior": ["position"],
                                                        "batch_size": 16}))
    cfg.task.mode = "finetune"
    with pytest.warns(UserWarning, match=r"position: the training mean scores R2 -\d+\.\d+ on the \d+ scored test "
                                         r"windows: their mean \(\d+ cm, sd [\d.]+\) lies off the training windows' "
                                         r".*neurofm finetune --folds 5") as caught:
        recipe.check_test_target(cfg)
    # the command line prints it as a note, not as Python's `.../neuroformer.py:216: UserWarning: ...` + source line
    import warnings

    w = next(x for x in caught if "lies off" in str(x.message))  # raised from recipe.prepare under finetune
    with plain_warnings("neurofm finetune"):
        shown = warnings.formatwarning(w.message, w.category, recipe.__file__, 216)
        other = warnings.formatwarning("x", UserWarning, "/elsewhere/lightning/trainer.py", 7)
    assert shown == f"neurofm finetune: warning: {w.message}\n"
    assert "trainer.py:7: " in other and "neurofm" not in other  # another package's: the format it had
    assert "neurofm finetune: warning" not in warnings.formatwarning(w.message, w.category, recipe.__file__, 216)
    capsys.readouterr()
    assert cli.main(["inspect", drift]) == 0  # inspect, which README step 1 runs, says it too
    line = next(x for x in capsys.readouterr().out.splitlines() if "lies off the training windows'" in x)
    assert line.startswith("             position: the training mean scores R2 -")
    code = cli.main(["evaluate", "--pretrained", folder, "--data", drift, "--behavior", "position",
                     "--out", str(tmp_path / "ev"), *FEW])
    assert code == 0, capsys.readouterr().err
    m = jsonio.loads_strict((tmp_path / "ev" / "metrics.json").read_text())
    line = next(x for x in m["limitations"] if "lies off the training windows'" in x)
    null_r2 = m["baselines"]["null (training mean)"]["position_r2"]
    assert f"the training mean scores R2 {null_r2:.2f} on the {m['metrics']['position_n_scored']} scored" in line
    # a test block inside the training range: no such line, before training or after
    moves = _session(tmp_path / "b.h5", still_after=60.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe.check_test_target(recipe.resolve_scoring(_config([moves], data={
            "sessions": [moves], "behavior": ["position"], "batch_size": 16,
            "split": {"train": 0.7, "valid": 0.1, "test": 0.2}})))
    assert not [w for w in caught if "lies off" in str(w.message)]
    assert recipe.off_range_text("x", np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])) is None
    assert recipe.off_range_text("x", np.empty((0, 2)), np.ones((5, 2))) is None  # a test block of rest: said otherwise
    # one fold of `finetune --folds 5` (every fold's test block read -1.1 to -8.6 on the 700 s session): its fix
    # is the pooled report, not the cross-validation it already is
    fold = recipe.off_range_text("x", np.array([9.0, 10.0, 11.0]), np.array([0.0, 2.0, 4.0]), "cm", "fold 2 of 5")
    assert "this is fold 2 of 5: read the pooled report over every fold's test block" in fold and "--folds" not in fold


def test_evaluate_on_a_test_block_of_rest_is_an_error_not_a_nan(pretrained, tmp_path, capsys):
    folder, _ = pretrained
    rest = _session(tmp_path / "a.h5", still_after=30.0)  # the default test block (last 10%) is rest
    code = cli.main(["evaluate", "--pretrained", folder, "--data", rest, "--behavior", "position",
                     "--out", str(tmp_path / "ev"), *FEW])
    err = capsys.readouterr().err
    assert code == 2 and "the test block has 0 scored windows" in err and "neurofm split" in err
    assert "Traceback" not in err and not (tmp_path / "ev" / "metrics.json").exists()


def test_protocol_counts_the_windows_the_report_scores(pretrained, tmp_path, capsys):
    """A tracking gap (NaN position) in the test block: the protocol said 'scored on 588 of 588
    test windows' while the decode report and position_n_scored said 582. Now both count the
    scored windows that hold a label."""
    folder, path = pretrained
    gap = _edited_copy_nan(path, tmp_path / "gap.h5", 56.0, 57.0)
    code = cli.main(["evaluate", "--pretrained", folder, "--data", gap, "--behavior", "position",
                     "--score-when", "all", "--out", str(tmp_path / "ev"), *FEW])
    assert code == 0, capsys.readouterr().err
    m = jsonio.loads_strict((tmp_path / "ev" / "metrics.json").read_text())
    n = m["metrics"]["position_n_scored"]
    total = int(re.search(r"behaviour scored on \d+ of (\d+) test windows", m["protocol"]).group(1))
    assert f"behaviour scored on {n} of {total} test windows (all that hold a label" in m["protocol"]
    assert 0 < n < total  # the gap's windows are left out, and said to be


def test_evaluate_of_a_fine_tuned_folder_scores_the_windows_its_run_scored(pretrained, tmp_path, capsys):
    """A fine-tune run with --score-when all (or its own threshold) was evaluated by `neurofm
    evaluate` under auto, i.e. on the moving windows only: another number for the same model.
    The run's resolved eval.score_when / moving_threshold / moving_behavior now come with it
    (one log line); --score-when given to evaluate wins."""
    folder, path = pretrained
    run = tmp_path / "ft"
    shutil.copytree(folder, run / "pretrained")
    (run / "config.yaml").write_text(
        "family: neuroformer\ntask: {mode: finetune}\ndata: {behavior: [position]}\n"
        "eval: {score_when: all, moving_threshold: 0.0, moving_behavior: position}\n")
    args = ["evaluate", "--pretrained", str(run / "pretrained"), "--data", path, *FEW]
    assert cli.main([*args, "--out", str(tmp_path / "ev")]) == 0, capsys.readouterr().err
    assert "scored on the windows the fine-tuning run scored (score_when all" in capsys.readouterr().err
    m = jsonio.loads_strict((tmp_path / "ev" / "metrics.json").read_text())
    assert "(all that hold a label" in m["protocol"]
    assert cli.main([*args, "--score-when", "moving", "--out", str(tmp_path / "ev2")]) == 0
    m = jsonio.loads_strict((tmp_path / "ev2" / "metrics.json").read_text())
    assert "where the animal moves" in m["protocol"]
    # the run's moving rule, its smoothing sigma included (resolved from the data when it was 0)
    (run / "config.yaml").write_text(
        "family: neuroformer\ntask: {mode: finetune}\ndata: {behavior: [position]}\n"
        "eval: {score_when: moving, moving_threshold: 5.0, speed_smooth_s: 0.25, moving_behavior: position}\n")
    assert cli.main([*args, "--out", str(tmp_path / "ev3")]) == 0, capsys.readouterr().err
    assert "speed_smooth_s 0.25" in capsys.readouterr().err
    m = jsonio.loads_strict((tmp_path / "ev3" / "metrics.json").read_text())
    assert "(sigma 0.25 s) > 5 cm/s" in m["protocol"]


def _edited_copy_nan(src: str, dst: Path, t0: float, t1: float) -> str:
    """A copy of a session with /behavior/position NaN between t0 and t1 (s): LED lost."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        t = f["behavior/position/timestamps"][()]
        v = f["behavior/position/values"][()]
        v[(t >= t0) & (t < t1)] = np.nan
        f["behavior/position/values"][...] = v
    return str(dst)


def test_validation_scores_the_same_windows_as_the_test(tmp_path):
    """The moving rule masks the validation block's behaviour loss and R2, as at test time."""
    path = _session(tmp_path / "a.h5", still_after=30.0)
    cfg = recipe.resolve_block_sizes(_config([path], eval={"score_when": "moving", "moving_threshold": 20.0},
                                             data={"sessions": [path], "behavior": ["position"], "batch_size": 16,
                                                   "split": {"train": 0.4, "valid": 0.3, "test": 0.3}}))
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    task = recipe.task(cfg, dm)
    assert isinstance(task.score_windows, recipe.MovingWindows)
    task.eval()
    n_scored = n_all = 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            task.validation_step(batch, 0)
            n_all += len(batch["interval"])
            n_scored += int(task.score_windows(batch["session"], batch["interval"]).sum())
    collected = sum(len(y) for _, y in task._val_behavior["position"])
    assert 0 < collected == n_scored < n_all  # the validation block spans the start of the rest


def test_json_has_no_bare_nan():
    text = jsonio.dumps({"metrics": {"position_r2": float("nan"), "ok": np.float32(0.5)}, "x": [np.inf]})
    data = jsonio.loads_strict(text)
    assert data["metrics"] == {"position_r2": None, "ok": 0.5} and data["x"] == [None]
    assert set(data["null_reasons"]) == {"metrics.position_r2", "x[0]"}
    with pytest.raises(ValueError, match="NaN"):
        jsonio.loads_strict('{"a": NaN}')


# -- 3 and 5. fine-tune config: shape from the checkpoint, the rest from the run; from scratch ----


FEW = ["eval.min_scored_windows=5"]  # a 60 s session's test block (5 s gaps) holds ~12 windows


@pytest.fixture
def pretrained(tmp_path) -> tuple[str, str]:
    path = _session(tmp_path / "a.h5", still_after=60.0)
    config = from_dict(NeuroformerConfig, {**SMALL, "n_units": 4, "units": [f"a/u{i}" for i in range(4)],
                                           "block_size": {"id": 12, "prev_id": 20},
                                           "dropout": {"embd": 0.1, "attn": 0.1, "resid": 0.1}})
    torch.manual_seed(0)
    folder = Neuroformer(config).save_pretrained(tmp_path / "pre")
    return str(folder), path


def test_finetune_takes_shape_from_the_checkpoint_and_the_rest_from_the_run(pretrained):
    folder, path = pretrained
    cfg = recipe.finetune_config(folder, [path], behavior=["position"],
                                 overrides=[*FEW, "model.dropout.embd=0.3", "model.loss.behavior=2.0"])
    out = recipe.prepare(cfg)
    m = out.model
    assert (m.n_embd, m.n_head, m.block_size.id, m.block_size.prev_id, m.window.curr) == (16, 2, 12, 20, 0.25)
    assert m.dropout.embd == 0.3 and m.loss.behavior == 2.0  # the run's, not the checkpoint's 0.1 / 1.0
    assert [v.name for v in m.behavior] == ["position"] and m.units == [f"a/u{i}" for i in range(4)]
    dm = recipe.datamodule(out)
    model = recipe.build_model(out, dm)
    assert model.drop.p == 0.3
    ckpt = Neuroformer.from_pretrained(folder).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt.items())  # the checkpoint's weights
    # a shape field set to another value is an error naming it
    for override, field in (("model.n_embd=32", "model.n_embd"), ("model.block_size.id=40", "model.block_size"),
                            ("model.window.curr=0.5", "model.window")):
        bad = recipe.finetune_config(folder, [path], behavior=["position"], overrides=[*FEW, override])
        with pytest.raises(ConfigError, match=rf"{field}: this run sets .* the pretrained model .* has"):
            recipe.prepare(bad)
    # ... and set to the checkpoint's own value, it is fine
    recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], overrides=[*FEW, "model.n_embd=16"]))


def test_a_checkpoints_block_size_that_overflows_the_new_data_warns(pretrained, tmp_path):
    folder, _ = pretrained
    dense = _session(tmp_path / "a2.h5", rate=20.0, burst=True, still_after=60.0)
    cfg = recipe.finetune_config(folder, [dense], behavior=["position"], overrides=FEW)
    with pytest.warns(UserWarning, match=r"block_size.id = 12 \(from the pretrained model .*\) drops \d+\.\d%"):
        out = recipe.prepare(cfg)
    assert out.model.block_size.id == 12


def test_from_scratch_is_the_checkpoint_shape_from_random_init_with_the_same_labels(pretrained):
    folder, path = pretrained
    arms = {}
    for scratch in (False, True):
        cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], label_fraction=0.3,
                                                    from_scratch=scratch, overrides=FEW))
        dm = recipe.datamodule(cfg)
        arms[scratch] = (cfg, dm, recipe.build_model(cfg, dm))
    (cfg_p, dm_p, pre), (cfg_s, dm_s, scratch) = arms[False], arms[True]
    assert cfg_s.task.from_scratch and cfg_s.model == cfg_p.model
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(pre) == shapes(scratch)
    assert not torch.equal(pre.head_id.weight, scratch.head_id.weight)
    # the same labelled windows: the split and ridge both read them from (seed, fraction)
    dm_p.setup("fit"), dm_s.setup("fit")
    windows = lambda ds: [ds.window(i) for i in range(len(ds))]  # noqa: E731
    assert windows(dm_p.datasets["train"]) == windows(dm_s.datasets["train"])
    t = torch.arange(0.0, DURATION, 0.25, dtype=torch.float64)
    s = torch.zeros_like(t, dtype=torch.long)
    assert torch.equal(recipe._label_subset(cfg_p)(s, t), recipe._label_subset(cfg_s)(s, t))
    text = recipe._protocol(cfg_s, dm_s)
    assert "from scratch" in text and f"fine-tuned from {folder}" not in text
    with pytest.raises(ConfigError, match="from_scratch"):
        recipe.prepare(_config([path], task={"mode": "finetune", "from_scratch": True}))


def test_the_linear_probe_of_a_from_scratch_run_reads_the_pretrained_features(pretrained):
    folder, path = pretrained
    probes = []
    for scratch in (False, True):
        cfg = recipe.prepare(recipe.finetune_config(folder, [path], behavior=["position"], from_scratch=scratch,
                                                    overrides=FEW))
        dm = recipe.datamodule(cfg)
        dm.setup("fit"), dm.setup("test")
        test = recipe._collect(recipe.build_model(cfg, dm), dm.loader("test"))
        probes.append(recipe._probe_features(cfg, dm, None, test))
    for part in ("train", "test"):
        assert np.array_equal(probes[0][part], probes[1][part])


def test_the_linear_probe_on_a_new_days_units_is_one_arm_whatever_was_drawn_before(pretrained, tmp_path):
    """A new day's units get random embedding rows in the probe's frozen model too; they were drawn
    from the global RNG, so the pretrained and the --from-scratch run of one VR day (the scratch
    run draws its random init first) reported the same "linear probe" arm as 0.409 and 0.550."""
    folder, _ = pretrained
    new_day = _session(tmp_path / "day2.h5", seed=5, still_after=60.0)
    cfg = recipe.prepare(recipe.finetune_config(folder, [new_day], behavior=["position"], overrides=FEW))
    dm = recipe.datamodule(cfg)
    dm.setup("fit"), dm.setup("test")
    assert dm.vocab.units[-1].startswith("day2/")  # units the checkpoint never saw
    test = recipe._collect(recipe.build_model(cfg, dm), dm.loader("test"))
    probes = []
    for draw in (1, 2):
        torch.manual_seed(draw)  # what the run drew before the probe
        probes.append(recipe._probe_features(cfg, dm, None, test))
    for part in ("train", "test"):
        assert np.array_equal(probes[0][part], probes[1][part])


def test_evaluate_fits_ridge_on_the_fine_tuning_runs_labels(tmp_path):
    run = tmp_path / "ft"
    (run / "pretrained").mkdir(parents=True)
    (run / "config.yaml").write_text("family: neuroformer\nseed: 3\ntask: {mode: finetune}\n"
                                     "data: {label_fraction: 0.1, label_chunk_s: 5.0}\n")
    labels = recipe.finetuned_labels(run / "pretrained")
    assert (labels["label_fraction"], labels["seed"], labels["label_chunk_s"]) == (0.1, 3, 5.0)
    (run / "config.yaml").write_text("family: neuroformer\ntask: {mode: pretrain}\n")
    assert recipe.finetuned_labels(run / "pretrained") is None


# -- 4. CLI override parsing ---------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--pretrained", "P", "--data", "a.h5", "b.h5", "--behavior", "position", "trainer.max_epochs=1",
     "model.dropout.embd=0.1"],
    ["--pretrained", "P", "--behavior", "position", "trainer.max_epochs=1", "--data", "a.h5", "b.h5",
     "model.dropout.embd=0.1"],
    ["--pretrained", "P", "--data", "a.h5", "b.h5", "trainer.max_epochs=1", "--behavior", "position", "--",
     "model.dropout.embd=0.1"],
])
def test_overrides_after_many_valued_options_are_overrides(argv):
    for command in ("finetune", "evaluate"):
        args = cli.build_parser().parse_args([command, *argv])
        cli._split_overrides(args)
        assert args.data == ["a.h5", "b.h5"] and args.behavior == ["position"]
        assert sorted(args.overrides) == ["model.dropout.embd=0.1", "trainer.max_epochs=1"]


def test_override_parsing_errors_name_the_fix(capsys):
    args = cli.build_parser().parse_args(["finetune", "--pretrained", "P", "--data", "trainer.max_epochs=1"])
    with pytest.raises(ValueError, match="--data: give at least one session file"):
        cli._split_overrides(args)
    args = cli.build_parser().parse_args(["finetune", "--pretrained", "P", "--data", "a.h5", "--", "oops"])
    with pytest.raises(ValueError, match="'oops' is not a key=value override"):
        cli._split_overrides(args)


def test_cli_finetune_flags_reach_the_config(pretrained, tmp_path, monkeypatch):
    folder, path = pretrained
    seen = {}
    monkeypatch.setattr("neurofm.experiment.run", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.setattr("neurofm.experiment.print_result", lambda result: None)
    assert cli.main(["finetune", "--pretrained", folder, "--data", path, "--behavior", "position",
                     "trainer.max_epochs=2", "--from-scratch", "--score-when", "all", *FEW]) == 0
    cfg = seen["cfg"]
    assert cfg.task.from_scratch and cfg.eval.score_when == "all" and cfg.trainer.max_epochs == 2
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["finetune"].format_help()
    assert "--score-when" in help_text and "95th-percentile" in help_text and "--from-scratch" in help_text


def test_label_draw_says_what_share_of_the_training_windows_the_label_fraction_labelled():
    """--label-fraction 0.1 once labelled each 10 s chunk with probability 0.1 on its own: on a V1
    session's 512 s training block it drew 2 of 51 chunks, 400 of 10,186 windows (3.9%), and the
    report said "labels on 10%". The draw is now stratified in time (one chunk in every 100 s), so
    every seed labels 10% to within two chunks; its counts go into the protocol and metrics.json,
    and a share under half (or over twice) the requested one, which a block of a few chunks can
    still give, is a limitation naming the numbers."""
    cfg = _config(["a.h5"], data={"sessions": ["a.h5"], "behavior": ["position"], "batch_size": 16,
                                  "label_fraction": 0.1})
    ends = np.arange(0.05, 512.0, 0.05)  # one session, 50 ms windows, 52 chunks of 10 s (the last partial)
    for seed in range(12):
        cfg.seed = seed
        d = recipe.label_draw(cfg, np.zeros(len(ends), dtype=np.int64), ends)
        assert d["n_chunks"] == 52 and d["n_windows"] == len(ends) and d["requested"] == 0.1
        keep = recipe._label_subset(cfg)(torch.zeros(len(ends), dtype=torch.long), torch.as_tensor(ends)).numpy()
        assert d["n_windows_labelled"] == keep.sum() and d["share"] == pytest.approx(keep.mean())
        assert d["n_chunks_labelled"] == len(np.unique(np.floor(ends[keep] / 10.0)))
        assert abs(d["n_chunks_labelled"] - 5.2) <= 2 and recipe.label_draw_limitation(d, 10.0) is None
    short = np.arange(0.05, 30.0, 0.05)  # 3 chunks: a 100 s stratum's chunk falls in them or not
    draws = []
    for seed in range(12):
        cfg.seed = seed
        draws.append(recipe.label_draw(cfg, np.zeros(len(short), dtype=np.int64), short))
    far = [d for d in draws if d["share"] > 0.2]
    assert far and all(d["n_chunks_labelled"] <= 1 for d in draws)
    line = recipe.label_draw_limitation(far[0], 10.0)
    assert line.startswith("--label-fraction 0.1 labelled ") and "1 of 3 10 s chunks drawn: " in line
    assert recipe.label_draw_limitation(None, 10.0) is None


def test_label_draw_counts_the_scored_training_windows_it_labelled():
    """Chunks are drawn blind to movement: on a simulated open field with long rest, the
    independent draw labelled 7 chunks, 280 of 5,026 training windows (5.6%, no limitation), of
    which 26 moving: 1.4% of the 1,846 moving training windows that train every arm, and the
    report said "labels on 10%" beside R2 -2.5 for every arm. With moving windows scored, the draw
    counts the scored windows it labelled, and a scored share under half the request is a
    limitation naming the numbers. The stratified draw spreads chunks over run and rest alike,
    yet a run that is a few chunks long can still fall between the drawn ones."""
    cfg = _config(["a.h5"], data={"sessions": ["a.h5"], "behavior": ["position"], "batch_size": 16,
                                  "label_fraction": 0.1})
    ends = np.arange(0.25, 1260.0, 0.25)  # 1,260 s of 250 ms windows
    sess = np.zeros(len(ends), dtype=np.int64)
    for moving, kinds in (((ends % 300.0) < 100.0, {"near"}),  # runs of 100 s between 200 s of rest
                          ((ends % 200.0) < 20.0, {"few", "near", "many"})):  # 20 s runs: a chunk hits or misses
        found = {}
        for seed in range(40):
            cfg.seed = seed
            d = recipe.label_draw(cfg, sess, ends, moving)
            keep = recipe._label_subset(cfg)(torch.as_tensor(sess), torch.as_tensor(ends)).numpy()
            assert d["n_scored_windows"] == moving.sum() and d["n_scored_labelled"] == (keep & moving).sum()
            assert d["scored_share"] == pytest.approx((keep & moving).sum() / moving.sum())
            assert 0.05 <= d["share"] <= 0.2  # stratified: the training share is always near 10%
            found["few" if d["scored_share"] < 0.05 else "near" if d["scored_share"] <= 0.2 else "many"] = d
        assert set(found) == kinds, (kinds, set(found))  # 100 s runs, one per stratum: every seed labels 10%
    line = recipe.label_draw_limitation(found["few"], 10.0)
    assert line.startswith(f"--label-fraction 0.1 labelled {found['few']['scored_share']:.1%} of the scored (moving) "
                           f"training windows") and f"of the {moving.sum():,} scored (moving) ones" in line
    assert recipe.label_draw_limitation(found["near"], 10.0) is None
    # every window scored (--score-when all): the draw is the one it was, without scored counts
    d = recipe.label_draw(cfg, sess, ends, np.ones(len(ends), dtype=bool))
    assert "scored_share" not in d and d == recipe.label_draw(cfg, sess, ends)


def test_an_angle_target_is_a_limitation_of_the_run():
    """Head direction in radians: a warning before training went to stderr only, and the run's
    metrics.json and card showed R2 0.76 "beating" ridge with no word on the wrap; evaluate now adds
    a limitation for a target whose unit is an angle, and none for other units."""
    line = recipe.angle_limitation("head_direction", "radians")
    assert line.startswith("head_direction is an angle (radians): the model, every baseline and R2 read it as a line")
    assert recipe.angle_limitation("hd", " deg ") is not None
    assert recipe.angle_limitation("running_speed", "cm/s") is None and recipe.angle_limitation("x", "") is None


def test_a_test_block_denser_than_training_is_a_limitation_with_both_drops(tmp_path):
    """Block sizes come from the training windows. A test block denser than them (a later part of
    a recording with more units active) lost up to 1.2% of its previous-window spikes on a new
    lab's Kilosort export while metrics.json gave only the training drop. The report now gives
    the test drop, and over 1% it is a limitation of the run naming both."""
    path = tmp_path / "denser_late.h5"
    rng = np.random.default_rng(0)
    n = rng.poisson(5.0 * DURATION * 4)
    times = rng.uniform(0.0, DURATION, n)
    late = rng.uniform(0.9 * DURATION, DURATION, 4000)  # the test block (the last 10%) fires far more
    times = np.sort(np.concatenate([times, late]))
    with SessionWriter(path, session_id="late") as w:
        w.add_units([f"u{i}" for i in range(4)])
        w.add_spikes(times, rng.integers(0, 4, len(times)), t_start=0.0, t_end=DURATION)
    resolved = recipe.resolve_block_sizes(_config([str(path)]))
    report = recipe.block_size_report(resolved)
    assert report["dropped_fraction_train"]["curr"] <= 0.005 < 0.01 < report["dropped_fraction_test"]["curr"]
    line = recipe.dropped_limitation(report)
    assert line.startswith("the block sizes (model.block_size id ") and "of the test windows' current-window" in line
    assert f"(training {report['dropped_fraction_train']['curr']:.1%})" in line
    calm = recipe.block_size_report(recipe.resolve_block_sizes(_config([_session(tmp_path / "calm.h5")])))
    assert recipe.dropped_limitation(calm) is None


def test_next_id_below_the_null_is_a_limitation_that_says_why():
    """Fine-tuning trains behaviour only by default, so a new day's units never reach the next-ID
    head: a simulated VR day of 89 new units reported -2.08 bits/spike beside the null's 0 in the
    card, unexplained. Below the null is now a limitation, saying why for a behaviour-only run."""
    cfg = from_dict(recipe.RunConfig, {"task": {"mode": "finetune"}}, where="test")  # finetune's default objectives
    assert recipe._behavior_only(cfg)
    line = recipe.id_bits_limitation(-2.077, recipe._behavior_only(cfg))
    assert line.startswith("next-ID -2.077 bits/spike, below the firing-rate null") and "behaviour only" in line
    pre = from_dict(recipe.RunConfig, {"task": {"mode": "pretrain"}}, where="test")
    assert "worse than their firing rates" in recipe.id_bits_limitation(-0.1, recipe._behavior_only(pre))
    assert recipe.id_bits_limitation(0.2, True) is None and recipe.id_bits_limitation(float("nan"), True) is None
    # --from-scratch on the session the model was pretrained on: no unit is new, every weight is random
    scratch = recipe.id_bits_limitation(-0.557, True, from_scratch=True)
    assert "never learned any unit: --from-scratch starts every weight at random" in scratch
    assert "new to the model" not in scratch


def test_packing_defaults_to_where_flash_attn_runs_the_packed_batches(monkeypatch):
    """data.pack=auto (also in neuroformer/paper): packed only where flash-attn's varlen kernel
    runs the batches. Without it attention pads them again, and a paper-size step ran 82 ms packed
    vs 52 ms padded on an H200 (bench/gpu.py, flash-attn absent), which the paper config forced."""
    from neurofm.experiment import load_config

    paper = load_config("neuroformer/paper")
    assert paper.data.pack == "auto" and recipe.SpikeDataConfig().pack == "auto"
    # and its block sizes come from the data: the paper's 100 / 100 (V1AL's) dropped 42% of the
    # previous-window spikes of a simulated 200-unit session on the H200
    assert (paper.model.block_size.id, paper.model.block_size.prev_id) == (0, 0)
    cfg = _config(["a.h5"])
    monkeypatch.setattr(recipe, "HAS_FLASH_ATTN", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert recipe._pack(cfg) is False  # CUDA but no flash-attn: padded
    monkeypatch.setattr(recipe, "HAS_FLASH_ATTN", True)
    assert recipe._pack(cfg) is True  # flash-attn on CUDA
    cfg.trainer.accelerator = "cpu"
    assert recipe._pack(cfg) is False
    for given, want in (("true", True), ("True", True), ("false", False)):  # YAML booleans arrive as "True"
        cfg.data.pack = given
        assert recipe._pack(cfg) is want
    cfg.data.pack = "sometimes"
    with pytest.raises(ConfigError, match="data.pack: 'sometimes'; use auto"):
        recipe._pack(cfg)
