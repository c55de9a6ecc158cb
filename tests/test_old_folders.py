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


# -- a pretrained folder written before a key existed: no "defaulted keys" warning ----------------


def _barista_folder(tmp_path, *absent):
    import json

    from neurofm.models.barista import Barista, BaristaConfig

    folder = Barista(BaristaConfig(d_model=16, n_layers=1, n_heads=2, cnn_channels=4)).save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    for key in absent:
        del meta["config"][key]
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


def test_a_folder_written_before_keys_existed_loads_without_the_defaulted_keys_warning(tmp_path):
    """Every BaRISTA folder from before session 7 lacks ``power_target`` / ``power_positions``
    (and older ones ``token_scales``, ``preprocessing``, ``fast_kernels``): the loader warned
    "key(s) were absent and take this version's defaults" on each, although the defaults are
    what that version did. The folder's own keys date it (hub.ADDED_KEYS)."""
    from neurofm.hub import load_pretrained

    for absent in [("power_target", "power_positions"),
                   ("power_target", "power_positions", "token_scales", "preprocessing", "fast_kernels")]:
        folder = _barista_folder(tmp_path / absent[-1], *absent)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = load_pretrained(folder)
        assert model.config.power_target == 0.0


def test_a_key_the_writing_version_had_is_still_warned_about(tmp_path):
    """The case the warning was made for: the folder's config.json lacks a key that the version
    that wrote it had (cut or hand-edited), so the model may have been trained with another value."""
    from neurofm.hub import load_pretrained

    # rope_theta: in BaristaConfig from the start
    with pytest.warns(UserWarning, match=r"1 key\(s\) were absent .*rope_theta = ") as rec:
        load_pretrained(_barista_folder(tmp_path / "a", "rope_theta", "power_target", "power_positions"))
    assert "power_target" not in " ".join(str(w.message) for w in rec)  # added after this folder's keys
    # fast_kernels is older than power_positions, which the folder has: its writer had fast_kernels
    with pytest.warns(UserWarning, match=r"1 key\(s\) were absent .*fast_kernels = "):
        load_pretrained(_barista_folder(tmp_path / "b", "fast_kernels"))


def test_the_nested_encoder_of_a_fine_tuned_folder_is_dated_the_same_way(tmp_path):
    import json

    from neurofm.hub import load_pretrained
    from neurofm.models.barista import BaristaConfig, BaristaFinetuned, BaristaFinetunedConfig

    enc = BaristaConfig(d_model=16, n_layers=1, n_heads=2, cnn_channels=4)
    folder = BaristaFinetuned(BaristaFinetunedConfig(encoder=enc, out_dim=2, n_channels=3)).save_pretrained(tmp_path / "ft")
    meta = json.loads((folder / "config.json").read_text())
    for key in ("power_target", "power_positions", "token_scales"):
        del meta["config"]["encoder"][key]
    del meta["config"]["band_power_bands"], meta["config"]["waveform_bins"]  # a folder from before both
    (folder / "config.json").write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_pretrained(folder)
    del meta["config"]["target_std"]  # older than the folder's encoder.preprocessing
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match=r"target_std = "):
        load_pretrained(folder)
