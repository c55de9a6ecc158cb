"""Folders written by older neurofm versions load: a run's config.yaml holding a key since
removed, a pretrained folder written before a key existed. Typos stay errors."""

from __future__ import annotations

import warnings

import pytest
from omegaconf import OmegaConf

from neurofm.config import RETIRED_KEYS, ConfigError


def _old_run_config(tmp_path, family="neuroformer", config="demo", **retired):
    """A run folder's config.yaml as an older neurofm wrote it (``save_config`` plus keys)."""
    from neurofm.experiment import load_config, save_config

    cfg = load_config(config)
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    raw = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    for dotted, value in retired.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    return cfg, run


def test_a_run_config_with_a_removed_key_loads_with_one_warning_naming_file_key_and_replacement(tmp_path):
    """A Neuroformer run folder written when ``task.head_only_fraction`` existed (commit 3fc66f0;
    removed by the closed-form ridge start): ``load_config`` failed with "unknown field", so the
    folder could not be resumed or evaluated."""
    from neurofm.experiment import check_resume_config, load_config

    cfg, run = _old_run_config(tmp_path, task__head_only_fraction=0.0)
    with pytest.warns(UserWarning) as record:
        loaded = load_config(run / "config.yaml")
    retired = [w for w in record if "head_only_fraction" in str(w.message)]
    assert len(retired) == 1, [str(w.message) for w in record]
    msg = str(retired[0].message)
    assert str(run / "config.yaml") in msg and "task.head_only_fraction" in msg
    assert RETIRED_KEYS["neuroformer"]["task.head_only_fraction"] in msg  # what replaced it
    assert loaded == cfg
    # one command reads the file again (run_dir_for, overrides, the resume check): no more warnings
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert load_config(run / "config.yaml", ["trainer.max_epochs=2"]).trainer.max_epochs == 2
        check_resume_config(cfg, run / "checkpoints" / "last.ckpt")  # no error: the key is no difference
    assert not [w for w in again if "head_only_fraction" in str(w.message)]


def test_resuming_against_an_old_config_yaml_drops_its_removed_keys(tmp_path):
    """``resume=auto`` with the config the user still has compares it with the run's config.yaml,
    which holds the removed key: before, "another config: task.head_only_fraction: 0.0 -> '<absent>'"."""
    from neurofm.experiment import check_resume_config

    cfg, run = _old_run_config(tmp_path, task__head_only_fraction=0.25)
    with pytest.warns(UserWarning, match=r"run/config\.yaml: .*task\.head_only_fraction \(was 0\.25"):
        check_resume_config(cfg, run / "checkpoints" / "last.ckpt")


def test_a_key_that_was_never_a_neurofm_key_is_still_an_error(tmp_path):
    from neurofm.experiment import load_config

    _, run = _old_run_config(tmp_path, task__head_only_fractoin=0.0)
    with pytest.raises(ConfigError, match=r"config\.yaml: key 'task\.head_only_fractoin': unknown field"):
        load_config(run / "config.yaml")
    # a retired key of the other family is no key of this one
    _, run = _old_run_config(tmp_path / "b", config="barista/demo", task__head_only_fraction=0.0)
    with pytest.raises(ConfigError, match=r"task\.head_only_fraction"):
        load_config(run / "config.yaml")


def test_a_retired_key_given_now_is_an_error_that_says_what_replaced_it():
    """On the command line the key is the user's current intent: refused, with the replacement."""
    from neurofm.experiment import load_config

    with pytest.raises(ConfigError, match=r"task\.head_only_fraction.*removed.*" +
                       RETIRED_KEYS["neuroformer"]["task.head_only_fraction"][:20]):
        load_config("demo", ["task.head_only_fraction=0.2"])


def test_a_current_config_loads_without_warnings():
    from neurofm.experiment import load_config

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config("demo")
        load_config("barista/demo")
