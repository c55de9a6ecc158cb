"""Loose ends a new lab hits (issues 10 and 11): resume across config versions, streaming
`neurofm inspect`, short user step limits, evaluate's report text, resume of every run kind.
Each test reproduces the failure first reported, with the defaults users get."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from neurofm.config import ConfigError


# -- a config written before a key existed resumes --------------------------------------------


def test_resume_check_ignores_a_key_added_since_with_its_default(tmp_path):
    """A config.yaml written before ``task.from_scratch`` existed: the key is absent there and
    at its default now, which is no change. Before: ``resume: ... another config:
    task.from_scratch: '<absent>' -> False``."""
    from neurofm.experiment import check_resume_config, load_config, save_config

    cfg = load_config("barista/demo")
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    old = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    del old["task"]["from_scratch"]  # as written by the neurofm before the key
    del old["model"]["rope_theta"]
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    check_resume_config(cfg, run / "checkpoints" / "last.ckpt")  # no error

    # the new key set to a value other than its default IS a change, named as such
    changed = load_config("barista/demo", ["task.from_scratch=true"])
    with pytest.raises(ConfigError, match=r"task\.from_scratch: '<absent>' -> True"):
        check_resume_config(changed, run / "checkpoints" / "last.ckpt")
    # and so is a key the old config had that the new one changes
    other = load_config("barista/demo", ["data.segment_s=2.0"])
    with pytest.raises(ConfigError, match=r"data\.segment_s: 1\.0 -> 2\.0"):
        check_resume_config(other, run / "checkpoints" / "last.ckpt")


def test_resume_check_ignores_keys_the_recipe_derived_that_an_older_config_lacks(tmp_path):
    """Issue 11: a BaRISTA config.yaml written before ``model.preprocessing`` existed refused to
    resume (``model.preprocessing.laplacian: '<absent>' -> False``): the recipe fills it from the
    data or the pretrained folder, the user set nothing. A derived key with another saved value
    (the data changed) still stops it, and says it was derived; a user's change too."""
    import dataclasses

    from neurofm.experiment import check_resume_config, load_config, save_config

    given = load_config("barista/demo")  # as the user gives it: model.preprocessing unset
    assert given.model.preprocessing is None
    prepared = dataclasses.replace(given, model=dataclasses.replace(
        given.model, preprocessing={"line_noise": 60.0, "laplacian": False, "drop_non_grey": False}))
    run = tmp_path / "run"
    save_config(prepared, run / "config.yaml")
    old = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    del old["model"]["preprocessing"]  # written by the neurofm before the key
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    ckpt = run / "checkpoints" / "last.ckpt"
    check_resume_config(prepared, ckpt, given=given)  # no error
    with pytest.raises(ConfigError, match=r"model\.preprocessing\.laplacian: '<absent>' -> False"):
        check_resume_config(prepared, ckpt)  # without knowing what the user gave: the old refusal

    old["model"]["preprocessing"] = {"line_noise": 50.0, "laplacian": False, "drop_non_grey": False}
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    with pytest.raises(ConfigError, match=r"model\.preprocessing\.line_noise: 50\.0 -> 60\.0 \(derived from the data "
                                          r"or the pretrained folder, which changed since\)"):
        check_resume_config(prepared, ckpt, given=given)
    del old["model"]["preprocessing"]
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    user = load_config("barista/demo", ["model.n_layers=3"])
    with pytest.raises(ConfigError, match=r"model\.n_layers: \d+ -> 3"):
        check_resume_config(dataclasses.replace(prepared, model=dataclasses.replace(prepared.model, n_layers=3)),
                            ckpt, given=user)


# -- neurofm inspect streams spikes --------------------------------------------------------------


def test_inspect_window_counts_stream_in_chunks_with_the_same_numbers(tmp_path, monkeypatch, capsys):
    """Spikes per window were computed from every spike of the session read at once; now from
    bounded reads of COUNT_CHUNK_S of windows, with the same counts and percentiles."""
    from neurofm.cli import main
    from neurofm.data.session import Session
    from neurofm.data.synthetic import simulate_spikes
    from neurofm.data.tokenizer import spikes_per_window, window_count_percentiles
    from neurofm.recipes import neuroformer as nf

    path = Path(simulate_spikes(tmp_path / "s.h5", n_units=8, duration=200.0, seed=1))
    cfg = nf.RunConfig()
    cfg.data.sessions = [str(path)]
    w = cfg.model.window
    with Session(path) as s:  # the reference: every spike in memory
        ends = nf.split_window_ends(cfg, s, "train")
        times, _ = s.spikes()
    ref_curr = spikes_per_window(times, ends - w.curr, ends)
    ref_prev = spikes_per_window(times, ends - w.curr - w.prev, ends - w.curr)
    assert ends[-1] - ends[0] > 2 * nf.COUNT_CHUNK_S  # several chunks with the default chunk length

    reads = []
    real = Session.spikes

    def bounded(self, t0=None, t1=None):
        assert t0 is not None and t1 is not None, "read every spike of the session at once"
        reads.append(t1 - t0)
        return real(self, t0, t1)

    monkeypatch.setattr(Session, "spikes", bounded)
    curr, prev = nf.split_window_counts(cfg)
    np.testing.assert_array_equal(curr, ref_curr)
    np.testing.assert_array_equal(prev, ref_prev)
    assert len(reads) >= 3 and max(reads) <= nf.COUNT_CHUNK_S + w.curr + w.prev + 1.0 + 1e-6

    # inspect counts the windows the README's pretraining (neuroformer/demo) trains with
    from neurofm.cli import PRETRAIN_CONFIG
    from neurofm.experiment import load_config
    cfg.model.window = w = load_config(PRETRAIN_CONFIG).model.window
    with Session(path) as s:
        ends = nf.split_window_ends(cfg, s, "train")
    ref_curr = spikes_per_window(times, ends - w.curr, ends)
    ref_prev = spikes_per_window(times, ends - w.curr - w.prev, ends - w.curr)
    assert main(["inspect", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["spikes_per_window"]
    assert shown["curr"] == window_count_percentiles(ref_curr)
    assert shown["prev"] == window_count_percentiles(ref_prev)
    assert shown["n_train_windows"] == len(ref_curr)


# -- shared: a spike session and an iEEG session with behaviour, tiny pretrained folders ------

TINY_NF = {"n_embd": 16, "n_head": 2, "temporal_hidden": 16,
           "layers": {"state": 1, "prev_encoder": 1, "state_history": 1, "stimulus_encoder": 0, "stimulus": 0,
                      "behavior": 0, "self_att": 1},
           "contrastive": {"enabled": False}}
TINY_BARISTA = {"d_model": 16, "n_heads": 2, "n_layers": 1}
QUIET = ["trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=1"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict[str, str]:
    """A spiking session with position and an iEEG session with grip force, each with an
    untrained model of its family saved as a pretrained folder (what travels, not what it learned)."""
    from neurofm.config import from_dict
    from neurofm.data.synthetic import simulate_ieeg, simulate_spikes
    from neurofm.models.barista import BaristaEncoder
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
    from neurofm.recipes import barista

    out = tmp_path_factory.mktemp("lab")
    spikes = simulate_spikes(out / "spikes.h5", n_units=10, duration=120.0, seed=0)
    ieeg = simulate_ieeg(out / "force.h5", n_channels=12, duration=150.0, sampling_rate=128.0, n_regions=10, seed=0,
                         regions=[9, 0, 2, 1], behavior="grip_force")
    torch.manual_seed(0)
    nf = Neuroformer(from_dict(NeuroformerConfig, {**TINY_NF, "n_units": 10,
                                                   "units": [f"unit{i:04d}" for i in range(10)]}, where="test"))
    cfg = barista.prepare(from_dict(barista.RunConfig, {
        "data": {"sessions": [str(ieeg)], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0},
        "model": TINY_BARISTA}, where="test"))
    enc = BaristaEncoder(barista._sized_config(cfg, barista.datamodule(cfg)))
    return {"spikes": str(spikes), "ieeg": str(ieeg), "nf": str(nf.save_pretrained(out / "nf")),
            "barista": str(enc.save_pretrained(out / "barista"))}


def _finetune_cfg(lab, family: str, run_dir: Path, *over: str):
    from neurofm.recipes import barista, neuroformer

    if family == "neuroformer":
        return neuroformer.finetune_config(lab["nf"], [lab["spikes"]], behavior=["position"], run_dir=str(run_dir),
                                           overrides=[*QUIET, *over])
    return barista.finetune_config(lab["barista"], [lab["ieeg"]], task="regress", behavior=["grip_force"],
                                   run_dir=str(run_dir), overrides=[*QUIET, *over])


def _csv_rows(run_dir: Path) -> list[dict]:

    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


# -- a user's step limit shorter than an epoch -------------------------------------------------

STEPS = 3  # a user's trainer.max_steps, shorter than one epoch of either session
MONITOR = {"neuroformer": "val/behavior_r2", "barista": "val/r2"}


@pytest.fixture(scope="module")
def finetuned(lab, tmp_path_factory) -> dict:
    """One short fine-tune per family with the CLI defaults, a user's step limit, split gap and
    window stride (not the default: evaluate must carry it)."""
    from neurofm.experiment import run

    out = {}
    for family in ("neuroformer", "barista"):
        run_dir = tmp_path_factory.mktemp(f"ft-{family}") / "run"
        out[family] = run(_finetune_cfg(lab, family, run_dir, f"trainer.max_steps={STEPS}", "data.split.gap=3.0",
                                        FT_STRIDE[family]))
    return out


#: Window strides of the fine-tunes above, each other than its family's default (window.curr
#: 0.05 s; segment_s 1 s).
FT_STRIDE = {"neuroformer": "data.stride=0.1", "barista": "data.stride_s=1.5"}


@pytest.mark.parametrize("family", ["neuroformer", "barista"])
def test_finetune_with_a_step_limit_shorter_than_an_epoch_validates_once_and_finishes(lab, finetuned, family):
    """Before: `neurofm finetune ... trainer.max_steps=60` on a recording whose epoch is longer
    than 60 steps: `RuntimeError: Early stopping conditioned on metric `val/r2` which is not
    available` (both families: validation runs at epoch ends, the limit ended training first)."""
    from omegaconf import OmegaConf

    result = finetuned[family]
    saved = OmegaConf.load(result.run_dir / "config.yaml")
    assert saved.trainer.early_stopping_patience > 0  # the recipe's default: early stopping is on
    rows = _csv_rows(result.run_dir)
    assert {r["epoch"] for r in rows} - {""} == {"0"}, "one epoch is longer than the limit"
    assert result.metrics["training"]["steps"] == STEPS
    scored = [r for r in rows if r.get(MONITOR[family])]
    # the starting state scored before the first step (StartingPoint), then one check at the last step
    assert [int(r["step"]) for r in scored] == [0, STEPS - 1]
    assert result.metrics["training"]["evaluated_checkpoint"]["monitor"] == MONITOR[family]


# -- neurofm evaluate on a fine-tuned folder ----------------------------------------------------


@pytest.mark.parametrize("family", ["neuroformer", "barista"])
def test_evaluate_a_finetuned_folder_says_what_it_probed_and_uses_the_runs_split(lab, finetuned, family,
                                                                                  tmp_path, capsys):
    """Before: evaluate on a BaRISTA fine-tune called its probe "linear probe on the frozen
    pretrained encoder" though it read the fine-tuned model's encoder (spikes: "features of
    pretrained", the folder's name); it split the recording with the default fractions, not the
    fine-tuning run's (a 3 s gap: other test windows than the run held out); a BaRISTA
    regression fine-tune needed --behavior repeated; it scored windows at the default stride,
    not the run's data.stride / data.stride_s (other windows than the run scored)."""
    from neurofm.cli import main
    from neurofm.jsonio import loads_strict

    ft = finetuned[family]
    data = lab["spikes"] if family == "neuroformer" else lab["ieeg"]
    out = tmp_path / "ev"
    assert main(["evaluate", "--pretrained", str(ft.pretrained_dir), "--data", data, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    got = loads_strict(text[text.index("{"):])
    target = "position" if family == "neuroformer" else "grip_force"
    report = (out / "decode_report.md").read_text()
    assert "3.0 s gaps" in got["protocol"] or "3 s gaps" in got["protocol"]
    if family == "barista":
        probe = "linear probe on the frozen fine-tuned encoder"
        assert probe in got["baselines"] and not any("pretrained" in k for k in got["baselines"])
        assert f"frozen features of the encoder of the fine-tuned model {ft.pretrained_dir}" in report
        assert f"linear probe on token-mean features of the encoder of the fine-tuned model {ft.pretrained_dir}" \
            in got["protocol"]
        # the fine-tuning run's own report probed the encoder it started from, and says so
        assert "linear probe on the frozen pretrained encoder" in ft.metrics["baselines"]
        assert f"the encoder of the pretrained model {lab['barista']}" in ft.metrics["protocol"]
        key = "test_r2"
    else:
        assert f"ridge on frozen pooled features of the fine-tuned model {ft.pretrained_dir}" in report
        assert f"ridge on frozen pooled features of the pretrained model {lab['nf']}" in \
            (ft.run_dir / "decode_report.md").read_text()
        key = f"{target}_r2"
    # the same model on the windows the fine-tuning run held out (its split, its stride) scores
    # what that run reported, and says where the stride came from
    assert got["metrics"][key] == pytest.approx(ft.metrics["metrics"][key], rel=1e-4, abs=1e-6)
    setting, value = FT_STRIDE[family].split("=")
    assert f"windows every {value} s, as fine-tuned ({setting} from " in captured.err


# -- resume: a BaRISTA pretraining killed with SIGKILL, a fine-tune of each family -----------------

ROOT = Path(__file__).resolve().parents[1]
BARISTA_EPOCHS = 4


def _env() -> dict:

    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}


def _barista_cmd(run_dir: Path, session: str) -> list[str]:
    """`neurofm train barista/demo` on a small session: the demo's settings and default
    checkpoint schedule (last.ckpt at every epoch end), a tiny model, a few epochs."""

    return [sys.executable, str(ROOT / "train.py"), "barista/demo", f"run_dir={run_dir}", f"data.sessions=[{session}]",
            *(f"model.{k}={v}" for k, v in TINY_BARISTA.items()), f"trainer.max_epochs={BARISTA_EPOCHS}",
            "trainer.progress_bar=false", "trainer.threads=1"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def _steps_logged_once(run_dir: Path, n_steps: int) -> None:
    rows = [(int(r["step"]), r["epoch"], tuple(sorted(k for k, v in r.items() if v and k not in ("step", "epoch"))))
            for r in _csv_rows(run_dir)]
    assert len(rows) == len(set(rows)), "a step was logged twice"
    assert {row[0] for row in rows} == set(range(n_steps))


def test_barista_pretraining_killed_with_sigkill_resumes_and_ends_as_an_uninterrupted_run(lab, tmp_path,
                                                                                        sigkill_once_checkpointed,
                                                                                        checkpoint_step):
    """Before: no test resumed a BaRISTA run (one failed on `model.cnn_dilations: [1, 2, 4, 8,
    16] -> (1, 2, 4, 8, 16)`). A run killed after an epoch's last.ckpt, with the default
    checkpoint schedule, continues from it and ends with the uninterrupted run's steps, weights,
    metrics and one log row per step and metric."""

    run_a, run_b = tmp_path / "a", tmp_path / "b"
    done = subprocess.run(_barista_cmd(run_a, lab["ieeg"]), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    a = json.loads((run_a / "metrics.json").read_text())
    total = a["training"]["steps"]
    per_epoch = total // BARISTA_EPOCHS
    assert per_epoch * BARISTA_EPOCHS == total and per_epoch > 1

    log = tmp_path / "b.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_barista_cmd(run_b, lab["ieeg"]), cwd=ROOT, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    last = run_b / "checkpoints" / "last.ckpt"
    killed_at = sigkill_once_checkpointed(proc, last, per_epoch, 500)
    assert killed_at is not None, f"run B ended (rc {proc.returncode}) before an epoch's checkpoint: " \
                                  f"{log.read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert per_epoch <= checkpoint_step(last) < total, "killed mid-run"
    assert not (run_b / "metrics.json").exists()

    again = subprocess.run(_barista_cmd(run_b, lab["ieeg"]), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)  # resume=auto is the default
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming from {last}" in again.stdout
    b = json.loads((run_b / "metrics.json").read_text())
    assert b["training"]["steps"] == total
    _same_weights(_weights(run_a / "pretrained"), _weights(run_b / "pretrained"))
    assert b["metrics"] == a["metrics"]
    _steps_logged_once(run_b, total)
    _steps_logged_once(run_a, total)


class _Crash(Exception):
    pass


def _crash_at_epoch(epoch: int):
    import lightning as L

    class CrashAt(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                raise _Crash(f"simulated crash at the start of epoch {epoch}")

    return CrashAt()


@pytest.mark.parametrize("family", ["neuroformer", "barista"])
def test_a_finetune_that_crashed_resumes_and_ends_as_an_uninterrupted_one(lab, tmp_path, family, capsys,
                                                                           checkpoint_step):
    """A fine-tune (the recipe's defaults; the user limits it to 3 epochs) that died after its
    second epoch's last.ckpt: the same command continues it, to the uninterrupted run's weights."""
    from neurofm.experiment import run

    over = ["trainer.max_epochs=3"]
    whole = run(_finetune_cfg(lab, family, tmp_path / "a", *over))
    with pytest.raises(_Crash):
        run(_finetune_cfg(lab, family, tmp_path / "b", *over), extra_callbacks=[_crash_at_epoch(2)])
    last = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert 0 < checkpoint_step(last) < whole.metrics["training"]["steps"]
    capsys.readouterr()
    resumed = run(_finetune_cfg(lab, family, tmp_path / "b", *over))
    assert f"resuming from {last}" in capsys.readouterr().out
    assert resumed.metrics["training"]["steps"] == whole.metrics["training"]["steps"]
    _same_weights(_weights(whole.pretrained_dir), _weights(resumed.pretrained_dir))
    _steps_logged_once(tmp_path / "b", whole.metrics["training"]["steps"])
    # model selection compares with the same start after the resume (its windows travel in last.ckpt)
    assert resumed.metrics["training"]["selection"] == whole.metrics["training"]["selection"]


# -- a new lab's own iEEG: EDF and BrainVision with a behaviour channel, another rate and layout ---


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _writers():
    """The EDF / BrainVision writers of the converter tests (MNE writes neither without extra packages)."""

    spec = importlib.util.spec_from_file_location("ieeg_writers", ROOT / "tests" / "data" / "test_ieeg_convert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def new_lab_files(tmp_path_factory) -> dict:
    """A recording as a new lab brings it: 10 contacts at 256 Hz (the model: 12 at 128 Hz), grip
    force recorded as channel GRIP, word onsets as markers, an electrodes.tsv beside it; written as
    EDF (16-bit, one physical range: the force at half scale) and BrainVision (float32)."""
    pytest.importorskip("mne")
    from neurofm.data.session import Session
    from neurofm.data.synthetic import simulate_ieeg

    w = _writers()
    out = tmp_path_factory.mktemp("new_lab")
    sim = simulate_ieeg(out / "sim.h5", n_channels=10, duration=150.0, sampling_rate=256.0, n_regions=10, seed=3,
                        regions=[9, 0, 2, 1], behavior="grip_force")
    with Session(sim) as s:
        x, ch = s.continuous(), s.channels()
        ts, force = s.behavior("grip_force")
        onsets, labels = s.h5["events/word_onset/onset"][()], s.h5["events/word_onset/label"][()]
        t = s.continuous_t_start + np.arange(len(x)) / s.sampling_rate
    grip = np.interp(t, ts, np.asarray(force, float).ravel()) * 0.5
    data = np.concatenate([x, grip[:, None]], 1).astype(np.float32)
    names = [*ch.names, "GRIP"]
    rows = [[n, *(f"{v:.2f}" for v in ch.xyz[i]), ch.regions["destrieux"][i], ch.regions["desikan-killiany"][i]]
            for i, n in enumerate(ch.names)]
    header = ["name", "x", "y", "z", "destrieux", "desikan-killiany"]
    markers = [(float(o), lab.decode() if isinstance(lab, bytes) else str(lab)) for o, lab in zip(onsets, labels)]
    edf = w.write_edf(out / "rec.edf", data, names, sfreq=256.0)
    w.write_tsv(out / "rec_electrodes.tsv", header, rows)
    vhdr = w.write_brainvision(out / "bv", data, names, sfreq=256.0, markers=markers)
    w.write_tsv(out / "bv_electrodes.tsv", header, rows)
    return {"edf": str(edf), "vhdr": str(vhdr), "grip": grip, "dir": out}


def test_new_lab_edf_and_brainvision_with_a_behaviour_channel_through_the_cli(lab, new_lab_files, capsys):
    """The README's iEEG path as a new user types it, CLI defaults: convert with
    --behavior-channel, fine-tune a model pretrained at another rate and channel count, evaluate.
    Before: every checkpoint save logged Lightning's "`weights_only` was not set, defaulting to
    `False`." (30+ lines a fine-tune); evaluate of the fine-tune stopped at "BaRISTA regression
    needs exactly one --behavior NAME"."""
    from neurofm.cli import main
    from neurofm.data.session import Session
    from neurofm.jsonio import loads_strict

    out = new_lab_files["dir"]
    sessions = {}
    for kind, src in (("edf", new_lab_files["edf"]), ("vhdr", new_lab_files["vhdr"])):
        sessions[kind] = str(out / f"{kind}.h5")
        assert main(["convert", "ieeg", src, sessions[kind], "--behavior-channel", "GRIP=grip_force"]) == 0
        with Session(sessions[kind]) as s:
            assert "GRIP" not in s.channels().names and s.n_channels == 10
            ts, v = s.behavior("grip_force")
            assert s.sampling_rate == 256.0 and len(ts) == len(new_lab_files["grip"])
            tol = 0.06 if kind == "edf" else 1e-3  # EDF: 16 bits over +-3276.8
            np.testing.assert_allclose(np.asarray(v).ravel(), new_lab_files["grip"], atol=tol)
    capsys.readouterr()

    ft = out / "ft"
    lightning_lines = _Lines()
    saver = logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector")
    saver.addHandler(lightning_lines)
    try:
        assert main(["finetune", "--pretrained", lab["barista"], "--data", sessions["edf"], "--task", "regress",
                     "--behavior", "grip_force", "--run-dir", str(ft), "trainer.progress_bar=false"]) == 0
    finally:
        saver.removeHandler(lightning_lines)
    err = capsys.readouterr().err
    assert "edf.h5: resampling 256 Hz -> 128 Hz" in err and "segments of 4 x 32 samples at 128 Hz" in err
    assert not [line for line in lightning_lines.lines if "weights_only" in line]
    metrics = loads_strict((ft / "metrics.json").read_text())
    assert np.isfinite(metrics["metrics"]["test_r2"]) and "ridge on band power" in metrics["baselines"]
    assert "at 128 Hz" in metrics["protocol"]
    assert loads_strict((ft / "pretrained" / "config.json").read_text())["config"]["target_mean"][0] > 100

    ev = out / "ev"
    assert main(["evaluate", "--pretrained", str(ft / "pretrained"), "--data", sessions["edf"],
                 "--out", str(ev)]) == 0
    assert loads_strict((ev / "metrics.json").read_text())["metrics"]["test_r2"] == \
        pytest.approx(metrics["metrics"]["test_r2"], rel=1e-5)

    # BrainVision: markers became /events/annotations. Under the default split its 15 s
    # validation block holds one label only: refused before the first step, naming the fix
    capsys.readouterr()
    bv_run = out / "ft_bv"
    assert main(["finetune", "--pretrained", lab["barista"], "--data", sessions["vhdr"], "--task", "classify",
                 "--events", "annotations", "--run-dir", str(bv_run)]) == 2
    err = capsys.readouterr().err
    assert "data.events: the valid split" in err and "neurofm split" in err and "Traceback" not in err
    assert not (bv_run / "checkpoints").exists()
    # the split the message suggests trains and reports
    assert main(["finetune", "--pretrained", lab["barista"], "--data", sessions["vhdr"], "--task", "classify",
                 "--events", "annotations", "--run-dir", str(bv_run), "trainer.progress_bar=false",
                 "data.split.train=0.5", "data.split.valid=0.25", "data.split.test=0.25", "trainer.max_epochs=2"]) == 0
    bv = loads_strict((bv_run / "metrics.json").read_text())
    assert np.isfinite(bv["metrics"]["test_auroc"]) and "logistic on band power" in bv["baselines"]


def test_a_recording_below_the_models_rate_is_upsampled_with_a_warning(lab, tmp_path):
    from neurofm.data.synthetic import simulate_ieeg
    from neurofm.recipes import barista

    path = simulate_ieeg(tmp_path / "slow.h5", n_channels=8, duration=60.0, sampling_rate=100.0, seed=2)
    cfg = barista.finetune_config(lab["barista"], [str(path)], task="classify", events="word_onset")
    with pytest.warns(UserWarning, match=r"slow\.h5: recorded at 100 Hz, upsampled to 128 Hz .* nothing between "
                                         r"50 and 64 Hz"):
        cfg = barista.prepare(cfg)
    assert cfg.data.sampling_rate == 128.0


def test_progress_is_silent_on_a_short_pass_and_counts_a_long_one(capsys):
    from neurofm.progress import progress

    assert list(progress(range(4), "a short pass")) == [0, 1, 2, 3]  # under PROGRESS_EVERY_S: nothing printed
    assert capsys.readouterr().err == ""
    assert list(progress(range(3), "a long pass", every_s=0.0)) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("neurofm: a long pass: 1 of 3 batches in ") and "s left" in err[0]
    assert err[-1].startswith("neurofm: a long pass: done, 3 batches in ")
    assert list(progress(iter("ab"), "no length", every_s=0.0)) == ["a", "b"]
    assert capsys.readouterr().err.splitlines()[0].startswith("neurofm: no length: 1 batches in ")


def test_progress_speaks_during_a_run_of_short_passes(capsys):
    """Evaluation after pretraining: a dozen passes of 10-20 s each, none of them 30 s long, and
    2.5 silent minutes. The passes that follow each other share their silence."""
    import time

    from neurofm.progress import progress

    def slow(n):
        for i in range(n):
            time.sleep(0.02)
            yield i

    list(progress(slow(2), "warm-up", every_s=10.0))  # a lone short pass: silent
    assert capsys.readouterr().err == ""
    time.sleep(0.25)  # a gap longer than every_s: what follows is a new run of passes
    for k in range(5):  # each pass 0.06 s, under every_s = 0.1 s; together 0.3 s
        list(progress(slow(3), f"pass {k}", every_s=0.1))
    err = capsys.readouterr().err
    assert "neurofm: pass " in err and "warm-up" not in err
    assert not err.startswith("neurofm: pass 0:"), err  # pass 0 alone was short: the first line comes later
