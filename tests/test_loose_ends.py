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
