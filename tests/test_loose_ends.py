"""Loose ends a new lab hits (issues 10 and 11): resume across config versions, streaming
`neurofm inspect`, short user step limits, evaluate's report text, resume of every run kind.
Each test reproduces the failure first reported, with the defaults users get."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
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
    curr, prev = nf.training_window_counts(cfg)
    np.testing.assert_array_equal(curr, ref_curr)
    np.testing.assert_array_equal(prev, ref_prev)
    assert len(reads) >= 3 and max(reads) <= nf.COUNT_CHUNK_S + w.curr + w.prev + 1.0 + 1e-6

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
    import torch

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
    import csv

    with open(run_dir / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


# -- a user's step limit shorter than an epoch -------------------------------------------------


@pytest.mark.parametrize("family,monitor", [("neuroformer", "val/behavior_r2"), ("barista", "val/r2")])
def test_finetune_with_a_step_limit_shorter_than_an_epoch_validates_once_and_finishes(lab, tmp_path, family, monitor):
    """Before: `neurofm finetune ... trainer.max_steps=60` on a recording whose epoch is longer
    than 60 steps: `RuntimeError: Early stopping conditioned on metric `val/r2` which is not
    available` (both families: validation runs at epoch ends, the limit ended training first)."""
    from neurofm.experiment import run

    steps = 3
    cfg = _finetune_cfg(lab, family, tmp_path / "run", f"trainer.max_steps={steps}")
    assert cfg.trainer.early_stopping_patience > 0  # the recipe's default: early stopping is on
    result = run(cfg)
    rows = _csv_rows(tmp_path / "run")
    assert {r["epoch"] for r in rows} - {""} == {"0"}, "one epoch is longer than the limit"
    assert result.metrics["training"]["steps"] == steps
    scored = [r for r in rows if r.get(monitor)]
    assert len(scored) == 1 and int(scored[0]["step"]) == steps - 1  # validated once, at the last step
    assert result.metrics["training"]["evaluated_checkpoint"]["monitor"] == monitor
