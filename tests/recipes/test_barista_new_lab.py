"""BaRISTA on a new lab's recording: the pretrained folder's preprocessing applied (resampling
included), evaluate on a fine-tuned folder, resume, and the checks that run before training.

Pretrained folders are written by save_pretrained from an untrained encoder (what is checked
is what travels with it, not what it learned); one tiny pretraining run checks that a run
writes the preprocessing and resumes."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from neurofm.config import ConfigError, from_dict, to_dict
from neurofm.data import Session, SessionWriter
from neurofm.data.segmenter import Preprocessing
from neurofm.data.synthetic import simulate_ieeg
from neurofm.experiment import evaluate_pretrained, family_of, run
from neurofm.models.barista import BaristaConfig, BaristaEncoder
from neurofm.recipes import barista as recipe

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1}
SPLIT = {"train": 0.5, "valid": 0.25, "test": 0.25, "gap": 2.0}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> dict[str, str]:
    """The lab the model was pretrained at records at 128 Hz; the new lab at 256 Hz."""
    out = tmp_path_factory.mktemp("barista_new_lab")
    paths = {"home": out / "home.h5", "new": out / "new.h5"}
    simulate_ieeg(paths["home"], n_channels=12, duration=150.0, sampling_rate=128.0, n_regions=4, seed=0)
    simulate_ieeg(paths["new"], n_channels=10, duration=150.0, sampling_rate=256.0, n_regions=4, seed=1)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def pretrained(sessions, tmp_path_factory) -> str:
    """An encoder as a pretraining run at 128 Hz with a 60 Hz notch exports it."""
    cfg = recipe.prepare(from_dict(recipe.RunConfig, {
        "data": {"sessions": [sessions["home"]], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0},
        "model": TINY}, where="test"))
    dm = recipe.datamodule(cfg)
    folder = tmp_path_factory.mktemp("pretrained") / "enc"
    BaristaEncoder(recipe._sized_config(cfg, dm)).save_pretrained(folder)
    return str(folder)


class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def neurofm_log():
    handler = _Log()
    log = logging.getLogger("neurofm")
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(old)


def _finetune(pretrained, sessions, *over, task="classify", **kw):
    overrides = [f"data.split.{k}={v}" for k, v in SPLIT.items()] + list(over)
    return recipe.finetune_config(pretrained, sessions, task=task, events=kw.pop("events", "word_onset"),
                                  overrides=overrides, **kw)


def test_pretrained_folder_carries_its_preprocessing(pretrained):
    enc = json.loads((Path(pretrained) / "config.json").read_text())["config"]
    assert (enc["sampling_rate"], enc["n_patches"], enc["patch_len"]) == (128.0, 4, 32)
    assert enc["preprocessing"] == to_dict(Preprocessing(line_noise=60.0))
    assert BaristaEncoder.from_pretrained(pretrained).config.preprocessing["line_noise"] == 60.0


def test_finetune_applies_it_and_resamples_a_new_labs_recording(pretrained, sessions, neurofm_log):
    """Before: `segments of 3000 samples, the model expects 5 x 100 = 500` until segment_s and
    n_patches were repeated by hand, and the 60 Hz notch was lost."""
    cfg = recipe.prepare(_finetune(pretrained, [sessions["new"]]))
    d = cfg.data
    assert (d.sampling_rate, d.segment_s, d.n_patches, d.line_noise) == (128.0, 1.0, 4, 60.0)
    assert not d.laplacian and not d.drop_non_grey
    assert any("new.h5: resampling 256 Hz -> 128 Hz" in line for line in neurofm_log)
    assert any("segments of 4 x 32 samples at 128 Hz = 1 s" in line for line in neurofm_log)
    assert any("data.line_noise = 60: notch" in line for line in neurofm_log)
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.loader("train")))
    assert batch["x"].shape[-1] == 128  # 1 s at the model's 128 Hz, from a 256 Hz recording
    task = recipe.task(cfg, dm)
    assert task.encoder.config.preprocessing["line_noise"] == 60.0  # the fine-tune exports it too
    task.encoder(batch)  # the encoder reads these segments

    # consistent overrides: 2 s = 8 of the model's 250 ms patches; a 50 Hz site's notch
    neurofm_log.clear()
    cfg = recipe.prepare(_finetune(pretrained, [sessions["new"]], "data.segment_s=2.0", "data.line_noise=50"))
    assert (cfg.data.n_patches, cfg.model.n_patches, cfg.data.line_noise) == (8, 8, 50.0)
    assert cfg.model.preprocessing["line_noise"] == 50.0
    assert any("data.n_patches" in line and "8 patches (2 s)" in line for line in neurofm_log)
    assert any("data.line_noise = 50.0 overrides the pretrained model's 60.0" in line for line in neurofm_log)


@pytest.mark.parametrize("over, match", [
    (["data.segment_s=1.1"], r"data.segment_s: 1.1 s is 4.4 patches of the pretrained model \(32 samples = 0.25 s "
                             r"at 128 Hz\); use a whole number"),
    (["data.segment_s=2.0", "data.n_patches=4"], r"data.segment_s: 2 s, but data.n_patches = 4 patches .* make 1 s"),
    (["data.sampling_rate=512"], r"data.sampling_rate: 512 Hz, but the pretrained model .* was trained at 128 Hz: "
                                 r"its patches are 32 samples = 250 ms .* Leave data.sampling_rate at 0"),
])
def test_inconsistent_overrides_name_the_setting(pretrained, sessions, over, match):
    with pytest.raises(ConfigError, match=match):
        recipe.prepare(_finetune(pretrained, [sessions["new"]], *over))


def test_finetune_takes_the_shape_from_the_checkpoint_and_the_rest_from_the_run(pretrained, sessions):
    """BaristaConfig.SHAPE_FIELDS come from the checkpoint (setting one otherwise is an error
    naming it); the run's own settings (dropout, kernels) win; unset ones stay the checkpoint's."""
    cfg = recipe.prepare(_finetune(pretrained, [sessions["new"]], "model.dropout=0.25", "model.fast_kernels=false",
                                   "model.d_model=16"))  # d_model: the checkpoint's own value, allowed
    m = cfg.model
    assert (m.d_model, m.n_heads, m.n_layers, m.patch_len) == (16, 2, 1, 32)  # the checkpoint's shape
    assert m.dropout == 0.25 and m.fast_kernels is False  # the run's
    assert m.attn_dropout == BaristaConfig().attn_dropout and m.sampling_rate == 128.0
    BaristaEncoder(m).load_state_dict(BaristaEncoder.from_pretrained(pretrained).state_dict())
    with pytest.raises(ConfigError, match=r"model.n_layers: this run sets 3, but the pretrained model .* has 1\. "
                                          r"It shapes the weights"):
        recipe.prepare(_finetune(pretrained, [sessions["new"]], "model.n_layers=3"))


def test_folder_without_preprocessing_warns(pretrained, sessions, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(pretrained, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["config"]["preprocessing"]
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="does not record its preprocessing"):
        cfg = recipe.prepare(_finetune(str(old), [sessions["new"]]))
    assert cfg.data.line_noise == 0.0 and cfg.data.sampling_rate == 128.0  # the rate is in the model config


def test_evaluate_loads_a_barista_finetune(pretrained, sessions, tmp_path, capsys):
    """Before: `model_type 'BaristaFinetuned' has no fine-tuning recipe`. The evaluated model is
    the fine-tune itself (its head), so its test AUROC is the one the fine-tuning run scored.
    `neurofm evaluate` prints the summary finetune prints (the JSON with --json), and the
    decode report states its blocks' length (block_s was null)."""
    from neurofm.cli import main

    cfg = recipe.prepare(_finetune(pretrained, [sessions["new"]]))
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    expected = recipe.evaluate(cfg, task, dm, tmp_path / "run")["metrics"]
    folder = tmp_path / "ft"
    recipe.export(task).save_pretrained(folder)
    assert family_of(folder) == "barista"
    over = [f"data.split.{k}={v}" for k, v in SPLIT.items()]
    got = evaluate_pretrained(str(folder), [sessions["new"]], out_dir=tmp_path / "ev", task="decode",
                              events="word_onset", overrides=over)  # task: the folder's own
    assert set(got["metrics"]) == set(expected) and "test_auroc" in expected
    for key in ("test_auroc", "test_accuracy"):
        assert got["metrics"][key] == pytest.approx(expected[key])
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert saved["test_auroc"] == pytest.approx(expected["test_auroc"])
    capsys.readouterr()
    assert main(["evaluate", "--pretrained", str(folder), "--data", sessions["new"], "--events", "word_onset",
                 "--out", str(tmp_path / "cli"), *over]) == 0
    out = capsys.readouterr().out
    assert f"metrics:          {tmp_path / 'cli' / 'metrics.json'}" in out and "decode report:" in out
    assert "test_auroc" in out and "baseline: ridge on band power" in out and "{" not in out
    report = json.loads((tmp_path / "cli" / "metrics.json").read_text())["report"]
    assert report["block_s"] > 0 and f"blocks of {report['block_s']:g} s" in report["protocol"]
    with pytest.raises(ConfigError, match="is a classification model, not regression; evaluate it with --task "
                                          "classify"):
        cfg = recipe.prepare(_finetune(str(folder), [sessions["new"]], task="regress", behavior=["x"]))
        recipe.task(cfg, recipe.datamodule(cfg))


# -- checks before the first training step ----------------------------------------------------------


def _relabel(labels: list):
    """An :func:`_edited_copy` edit giving the word_onset events at each ``(slice, label)`` that label."""
    def edit(f):
        g = f["events/word_onset"]
        label = np.asarray([x.decode() if isinstance(x, bytes) else str(x) for x in g["label"][()]], dtype=object)
        for where, name in labels:
            label[where] = name
        del g["label"]
        g.create_dataset("label", data=label.astype("S"))
    return edit


def _edited_copy(src: str, dst: Path, edit) -> str:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return str(dst)


def _pretrain_cfg(sessions, *over):
    base = {"data": {"sessions": list(sessions), "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0,
                     "events": "word_onset", "split": SPLIT},
            "model": TINY, "task": {"mode": "pretrain"}}
    return from_dict(recipe.RunConfig, base, overrides=list(over), where="test")


def test_preflight_missing_events_and_behaviour(sessions, tmp_path):
    no_events = _edited_copy(sessions["home"], tmp_path / "no_events.h5", lambda f: f["events"].move(
        "word_onset", "cue"))
    cfg = recipe.prepare(_pretrain_cfg([sessions["home"], no_events]))
    with pytest.raises(ConfigError, match=r"data.events: .*no_events.h5 has no /events/word_onset \(its events: "
                                          r"\['cue'\]\).* or eval.probe_events=none to skip the pretraining probe"):
        recipe.preflight(cfg)
    recipe.preflight(recipe.prepare(_pretrain_cfg([sessions["home"], no_events], "eval.probe_events=none")))
    cfg = recipe.prepare(from_dict(recipe.RunConfig, {
        "data": {"sessions": [sessions["home"]], "target": "grip", "segment_s": 1.0, "n_patches": 4},
        "model": TINY, "task": {"mode": "finetune", "finetune_task": "regression"}}, where="test"))
    with pytest.raises(ConfigError, match=r"data.target: .*home.h5 has no /behavior/grip .*--behavior-channel "
                                          r"NAME=grip"):
        recipe.preflight(cfg)


def test_preflight_probe_length_follows_the_segment(sessions):
    """demo.yaml set eval.probe_segment_s: 3.0, so changing only data.segment_s crashed after training."""
    with pytest.raises(ConfigError, match=r"eval.probe_segment_s: 3 s, but the encoder reads segments of "
                                          r"data.segment_s = 1 s \(4 x 32 samples\)"):
        recipe.prepare(_pretrain_cfg([sessions["home"]], "eval.probe_segment_s=3.0"))
    from neurofm.experiment import load_config

    cfg = recipe.prepare(load_config("barista/demo", [f"data.sessions=[{sessions['home']}]", "data.segment_s=1.0",
                                            "data.n_patches=4"]))
    assert cfg.eval.probe_segment_s in (0.0, 1.0)


def test_preflight_events_per_split(sessions, tmp_path):
    def one_event(f):
        g = f["events/word_onset"]
        for key in list(g):
            values = g[key][()]
            del g[key]
            g.create_dataset(key, data=values[:1])

    single = _edited_copy(sessions["home"], tmp_path / "one.h5", one_event)
    cfg = recipe.prepare(from_dict(recipe.RunConfig, {
        "data": {"sessions": [single], "events": "word_onset", "segment_s": 1.0, "n_patches": 4, "split": SPLIT},
        "model": TINY, "task": {"mode": "finetune"}, "trainer": {"early_stopping_patience": 15}}, where="test"))
    # one event, one label: its segment against background segments; the splits without it are refused
    with pytest.raises(ConfigError, match=r"data.events: the valid split \(contiguous time blocks per session \(train "
                                          r"50% / valid 25% / test 25%, 2 s gaps\)\) has \d+ event / background "
                                          r"segment\(s\) of /events/word_onset \(\{'\(no event\)': \d+, '\w+': 0\}\)"):
        recipe.preflight(cfg)
    # an empty validation split: before, a warning, then Lightning's "val/loss which is not available"
    cfg = recipe.prepare(_pretrain_cfg([sessions["home"]], "data.split.valid=0.001", "eval.probe_events=none"))
    with pytest.raises(ConfigError, match=r"data.split.valid: the valid split .* holds 0 segment\(s\) of 1 s; "
                                          r"val/loss, which checkpointing and early stopping watch, needs at least 1"):
        recipe.preflight(cfg)
    # evaluation checks the test split only
    cfg = recipe.prepare(_pretrain_cfg([sessions["home"]], "data.split.valid=0.001", "eval.probe_events=none"))
    recipe.preflight(cfg, training=False)


def test_preflight_refuses_parcel_encoding_without_atlas(sessions, tmp_path):
    """Before: every channel got the 'unknown' parcel embedding without a word."""
    bare = _edited_copy(sessions["home"], tmp_path / "bare.h5", lambda f: [f["channels/region"].pop(k) for k in
                                                                          list(f["channels/region"])])
    cfg = recipe.prepare(_pretrain_cfg([bare], "model.encode_scale=parcel"))
    with pytest.raises(ConfigError, match=r"model.encode_scale: parcel, but no channel of bare.h5 has destrieux atlas "
                                          r"labels .*--electrodes .*, or choose model.encode_scale=coords"):
        recipe.preflight(cfg)
    recipe.preflight(recipe.prepare(_pretrain_cfg([bare], "model.encode_scale=coords")))


def test_preflight_says_why_a_grid_converted_with_electrodes_has_no_position(sessions, tmp_path):
    """An ECoG grid whose electrodes.tsv is in BIDS Pixels (a photograph), or has z n/a: convert left
    the positions unknown, and the refusal told the user to convert with the electrodes table they had given."""
    def pixels(f):
        f["channels"].attrs["coordinate_space"] = "Pixels"
        f["channels/x"][...] = np.nan
    def flat(f):
        f["channels/z"][...] = np.nan
    for edit, why in ((pixels, r"their electrodes are in space Pixels \(a photograph: no place in the brain\)"),
                      (flat, r"their electrodes have some of x, y, z but not all \(z n/a: a 2D layout\)")):
        grid = _edited_copy(sessions["home"], tmp_path / f"{edit.__name__}.h5", edit)
        cfg = recipe.prepare(_pretrain_cfg([grid], "model.encode_scale=coords"))
        with pytest.raises(ConfigError, match=r"model.encode_scale: coords, but no channel of \w+.h5 has electrode "
                                              r"coordinates .*x, y, z in mm\) \(" + why + r"; or label the contacts in "
                                              r"an atlas column .*model.encode_scale=parcel\)"):
            recipe.preflight(cfg)


def test_preflight_warns_when_one_of_several_sessions_has_no_atlas(sessions, tmp_path):
    """A BIDS dataset where one subject's electrodes.tsv has no atlas column: pretraining at parcel
    scale (the demo config's) ran without a word, every channel of that subject sharing one embedding."""
    bare = _edited_copy(sessions["home"], tmp_path / "bare.h5", lambda f: [f["channels/region"].pop(k) for k in
                                                                          list(f["channels/region"])])
    cfg = recipe.prepare(_pretrain_cfg([sessions["home"], bare], "model.encode_scale=parcel"))
    with pytest.warns(UserWarning, match=r"model.encode_scale: parcel, but no channel of bare.h5 has destrieux atlas "
                                         r"labels \(1 of 2 sessions\): every channel there gets the one 'unknown' "
                                         r"embedding.* or choose model.encode_scale=coords, which every session has"):
        recipe.preflight(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        recipe._check_spatial_scales(recipe.prepare(_pretrain_cfg([sessions["home"], bare], "model.encode_scale=coords")))


def test_preflight_refuses_parcels_a_pretrained_model_never_learned(pretrained, sessions, tmp_path):
    def relabel(f):
        for key in list(f["channels/region"]):
            n = len(f[f"channels/region/{key}"])
            del f[f"channels/region/{key}"]
            f["channels/region"].create_dataset(key, data=np.array(["ctx_lh_G_cuneus"] * n, dtype=object),
                                                dtype=h5py.string_dtype())

    other = _edited_copy(sessions["new"], tmp_path / "other.h5", relabel)
    cfg = recipe.prepare(_finetune(pretrained, [other]))
    with pytest.raises(ConfigError, match=r"model.encode_scale: parcel, but none of the destrieux labels of other.h5 "
                                          r"\(e.g. \['ctx_lh_G_cuneus'\]\) is among the \d+ parcels the pretrained "
                                          r"model learned"):
        recipe.preflight(cfg)


def test_a_clinics_desikan_column_is_named_when_a_parcel_model_cannot_use_it(pretrained, sessions, tmp_path):
    """A clinical EDF localised with a DKT atlas (ctx-lh-fusiform) and a model pretrained on Destrieux
    parcels: the refusal named only a destrieux column; it now names the file's own atlas column and
    the scales (coords, lobe) that these sessions do have."""
    def to_dkt(f):
        n = len(f["channels/name"])
        for key in list(f["channels/region"]):
            del f[f"channels/region/{key}"]
        f["channels/region"].create_dataset("DKT", data=np.array(["ctx-lh-fusiform"] * n, dtype=object),
                                            dtype=h5py.string_dtype())

    clinic = _edited_copy(sessions["new"], tmp_path / "clinic.h5", to_dkt)
    cfg = recipe.prepare(_finetune(pretrained, [clinic]))
    with pytest.raises(ConfigError, match=r"no channel of clinic.h5 has destrieux atlas labels .* \(their atlas column "
                                          r"DKT is not destrieux, the atlas of the model's parcels\); or fine-tune a "
                                          r"model pretrained with model.encode_scale=coords or lobe, which these "
                                          r"sessions have"):
        recipe.preflight(cfg)


def test_protocol_states_the_split_used(sessions, tmp_path):
    from neurofm.data.session import set_intervals

    path = tmp_path / "split.h5"
    shutil.copy(sessions["home"], path)
    cfg = recipe.prepare(_pretrain_cfg([str(path)]))
    assert recipe._split_source(cfg).startswith("contiguous time blocks per session (train 50%")
    set_intervals(path, {"train": [(0, 80)], "valid": [(82, 110)], "test": [(112, 150)]})
    assert recipe._split_source(cfg) == "time blocks from each session file's /intervals/train, valid, test"
    folds = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, split=dataclasses.replace(cfg.data.split, folds=5, fold=2)))
    assert recipe._split_source(folds).startswith("blocked 5-fold cross-validation, fold 2 of 5")
    assert recipe._split_source(folds).endswith("the /intervals of 1 session file(s) not used")


# -- resume -------------------------------------------------------------------------------------------


def test_barista_run_writes_its_preprocessing_and_resumes(sessions, tmp_path):
    """Before: `resume: ... model.cnn_dilations: [1, 2, 4, 8, 16] -> (1, 2, 4, 8, 16)` (list vs tuple);
    and a run folder written before ``model.preprocessing`` existed refused to resume
    (`model.preprocessing.laplacian: '<absent>' -> False`): a key the recipe derives, not the user's."""
    import torch
    from omegaconf import OmegaConf

    def cfg(epochs):
        return _pretrain_cfg([sessions["home"]], f"run_dir={tmp_path / 'run'}", f"trainer.max_epochs={epochs}",
                             "trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
                             "task.warmup_epochs=1", "task.ema_epochs=1", "eval.probe_events=none")

    first = run(cfg(1))
    assert first.metrics["training"]["epochs"] == 1
    steps = first.metrics["training"]["steps"]
    pre = json.loads((first.pretrained_dir / "config.json").read_text())["config"]["preprocessing"]
    assert pre == to_dict(Preprocessing(line_noise=60.0))
    saved = OmegaConf.to_container(OmegaConf.load(tmp_path / "run" / "config.yaml"))
    del saved["model"]["preprocessing"]  # as an older neurofm wrote config.yaml
    (tmp_path / "run" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(saved)))
    second = run(cfg(2))  # resume=auto: continues from last.ckpt under the same config, one more epoch
    assert second.metrics["training"]["steps"] == 2 * steps
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * steps
    with pytest.raises(ConfigError, match=r"model.n_layers: 1 -> 2"):  # a real difference still stops it
        run(_pretrain_cfg([sessions["home"]], f"run_dir={tmp_path / 'run'}", "trainer.max_epochs=3",
                          "model.n_layers=2", "eval.probe_events=none", "trainer.accelerator=cpu"))


def test_resume_check_compares_configs_as_saved(tmp_path):
    from neurofm.experiment import check_resume_config, save_config

    cfg = from_dict(recipe.RunConfig, {"model": {"cnn_dilations": [1, 2, 4]}}, where="test")
    assert isinstance(cfg.model.cnn_dilations, (tuple, list))
    (tmp_path / "checkpoints").mkdir()
    save_config(cfg, tmp_path / "config.yaml")
    model = BaristaConfig(cnn_dilations=(1, 2, 4))  # a tuple, as BaristaConfig makes it
    import dataclasses

    check_resume_config(dataclasses.replace(cfg, model=model), tmp_path / "checkpoints" / "last.ckpt")


def test_every_saved_model_class_has_a_recipe():
    """`neurofm evaluate` / `finetune` pick the recipe by config.json's model_type."""
    import importlib
    import pkgutil

    import neurofm.models
    from neurofm.experiment import FAMILY_OF_MODEL
    from neurofm.hub import _REGISTRY

    for info in pkgutil.iter_modules(neurofm.models.__path__):
        importlib.import_module(f"neurofm.models.{info.name}")
    saved = {name for name, cls in _REGISTRY.items() if cls.__module__.startswith("neurofm.models.")}
    assert saved == set(FAMILY_OF_MODEL)
    for name in saved:
        assert FAMILY_OF_MODEL[name] == _REGISTRY[name].__module__.rsplit(".", 1)[-1]


def test_preprocessing_in_a_folder_is_read_strictly(pretrained, sessions, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(pretrained, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["config"]["preprocessing"]["notch_hz"] = 60  # a key this neurofm does not know
    (bad / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"bad/config.json: preprocessing: .*'notch_hz'"):
        recipe.prepare(_finetune(str(bad), [sessions["new"]]))


def test_data_labels_picks_the_classes_among_a_files_annotations(pretrained, sessions, tmp_path):
    """A clinical recording's annotations mix the task's events with button presses, artefact
    marks and typos ('Speech' beside 'speech'): every label became a class, with no way to ask
    for speech vs nonspeech but editing the file. ``data.labels`` names the classes; events with
    other labels are left out of every split, the head and the report; evaluate of the
    fine-tuned folder takes the run's classes. A label the file lacks is refused up front."""
    noisy = _edited_copy(sessions["new"], tmp_path / "noisy.h5",
                         _relabel([(slice(None, None, 7), "Speech"), (slice(3, None, 11), "resp/btn")]))

    def odd(f):  # one event with a label of its own: in one split only
        label = f["events/word_onset/label"][()]
        label[5] = b"oddball"
        f["events/word_onset/label"][...] = label
    cfg = recipe.prepare(_finetune(pretrained, [noisy]))
    with pytest.warns(UserWarning, match=r"data.events: the (train|test) split .* has no segment of the label\(s\) "
                                         r"\['oddball'\] .*data.labels=\[...\] names the classes"):
        recipe.preflight(recipe.prepare(_finetune(pretrained, [_edited_copy(noisy, tmp_path / "odd.h5", odd)])))
    everything = recipe.task(cfg, recipe.datamodule(cfg)).hparams.label_names
    assert set(everything) == {"Speech", "nonspeech", "resp/btn", "speech"}  # the default: every label
    dm = recipe.datamodule(cfg)
    four = recipe.evaluate(cfg, recipe.task(cfg, dm), dm, tmp_path / "four")
    assert four["baselines"]["null (chance)"]["test_auroc"] == pytest.approx(0.5)  # was NaN with 3+ classes
    # how a 4-class AUROC is computed is stated, and the ROC plot (left out for 3+ classes) is one-vs-rest
    assert "ROC-AUC one-vs-rest per class and averaged over the 4 classes (macro)" in four["protocol"]
    assert (tmp_path / "four" / "plots" / "roc.png").stat().st_size > 0
    cfg = recipe.prepare(_finetune(pretrained, [noisy], "data.labels=[speech,nonspeech]"))
    recipe.preflight(cfg)
    dm = recipe.datamodule(cfg)
    task = recipe.task(cfg, dm)
    assert list(task.hparams.label_names) == ["speech", "nonspeech"]
    with h5py.File(noisy) as f:
        raw = [x.decode() for x in f["events/word_onset/label"][()]]
    train = dm.dataset("train").index
    assert set(np.unique(train.label).tolist()) == {0, 1}
    assert len(train.label) < sum(x in ("speech", "nonspeech") for x in raw)  # the other splits hold the rest
    folder = tmp_path / "run" / "pretrained"
    recipe.export(task).save_pretrained(folder)
    from neurofm.experiment import save_config
    save_config(cfg, tmp_path / "run" / "config.yaml")
    got = evaluate_pretrained(str(folder), [noisy], out_dir=tmp_path / "ev", task="decode")
    assert set(got["data"]["test_segments_per_class"]) == {"speech", "nonspeech"}
    with pytest.raises(ConfigError, match=r"data.labels: .*noisy.h5 has no /events/word_onset labelled \['Nonspeech'\] "
                                          r"\(its labels: \['Speech', 'nonspeech', 'resp/btn', 'speech'\]\)"):
        recipe.preflight(recipe.prepare(_finetune(pretrained, [noisy], "data.labels=[speech,Nonspeech]")))
    recipe.preflight(recipe.prepare(_pretrain_cfg([noisy], "data.labels=[speech,nonspeech]")))


def test_pretraining_probe_scores_every_label_one_vs_rest(sessions, tmp_path):
    """The pretraining probe on events with four labels (it was refused before training: a
    two-class probe's AUROC was NaN) gives a one-vs-rest macro AUROC for every arm, with CIs,
    and the protocol says so; the default config (no data.labels)."""
    four = _edited_copy(sessions["new"], tmp_path / "four.h5",
                        _relabel([(slice(None, None, 5), "Speech"), (slice(2, None, 5), "resp/btn")]))
    cfg = recipe.prepare(_pretrain_cfg([four]))
    recipe.preflight(cfg)
    dm = recipe.datamodule(cfg)
    out = recipe.evaluate(cfg, recipe.task(cfg, dm), dm, tmp_path / "run")  # untrained: the probe path only
    value, (lo, hi) = out["metrics"]["probe_auroc"], out["metrics"]["probe_auroc_ci95"]
    assert 0.0 <= lo <= value <= hi <= 1.0
    for arm in ("random-init encoder, same probe", "ridge on band power"):
        assert np.isfinite(out["baselines"][arm]["probe_auroc"])
    assert "one-vs-rest macro ROC-AUC over 4 labels" in out["protocol"]


def test_pretraining_probe_leaves_out_a_label_with_no_training_segment(sessions, tmp_path):
    """A seizure-onset annotation that falls in the test block only: the probe cannot learn it,
    its one-vs-rest score is constant (AUROC 0.5) and pulled every arm's macro AUROC toward
    chance (a trial ECoG file's band power read 0.46). Its test segments are left out, the
    protocol says how many, and preflight says the probe leaves it out."""
    one = _edited_copy(sessions["new"], tmp_path / "sz.h5", _relabel([(slice(-1, None), "Seizure onset")]))
    cfg = recipe.prepare(_pretrain_cfg([one]))
    with pytest.warns(UserWarning, match=r"train split .* no segment of the label\(s\) \['Seizure onset'\].*the probe "
                                         r"leaves their test segments out"):
        recipe.preflight(cfg)
    dm = recipe.datamodule(cfg)
    out = recipe.evaluate(cfg, recipe.task(cfg, dm), dm, tmp_path / "run")
    assert re.search(r"fitted on the training block, ROC-AUC on the test block \(\d+ segments, 1 test segment\(s\) "
                     r"of labels with no training segment left out", out["protocol"])
    for arm in ("random-init encoder, same probe", "ridge on band power"):
        assert np.isfinite(out["baselines"][arm]["probe_auroc"])
    y_train, y_test = np.array([0, 1, 0, 1]), np.array([0, 1, 2, 1, 0])
    tr, te = recipe._trained_labels_only({"y": y_train}, {"y": y_test, "t0": np.arange(5.0)})
    assert te["y"].tolist() == [0, 1, 1, 0] and te["t0"].tolist() == [0, 1, 3, 4] and te["left_out"] == 1


def test_stimulus_and_response_markers_as_classes_are_warned_about(sessions, tmp_path):
    """A BrainVision file's S1/S2 stimuli and R1 responses all became classes of one classifier
    (the README's command without data.labels): the warning names them and data.labels=[S1,S2]."""
    marks = _edited_copy(sessions["new"], tmp_path / "bv.h5",
                         _relabel([(slice(None, None, 3), "S1"), (slice(1, None, 3), "S2"), (slice(2, None, 3), "R1")]))
    with pytest.warns(UserWarning, match=r"bv\.h5: /events/word_onset holds stimulus markers \(S1, S2\) and response "
                                         r"markers \(R1\).*data\.labels=\[S1,S2\] classifies the stimuli only"):
        recipe.preflight(recipe.prepare(_pretrain_cfg([marks])))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recipe.preflight(recipe.prepare(_pretrain_cfg([marks], "data.labels=[S1,S2]")))
    assert not [w for w in caught if "response markers" in str(w.message)]


def _bursty_emg(t: np.ndarray, seed: int = 0) -> np.ndarray:
    """Raw surface EMG: noise around 0 whose amplitude follows 1-3 s contractions."""
    rng = np.random.default_rng(seed)
    env = np.zeros(len(t))
    start = 1.0
    while start < t[-1]:
        length = rng.uniform(1.0, 3.0)
        env[(t >= start) & (t < start + length)] = rng.uniform(0.4, 1.0)
        start += length + rng.uniform(1.0, 4.0)
    return ((0.05 + env) * rng.standard_normal(len(t))).astype(np.float32)


def test_a_raw_emg_target_is_refused_and_its_rectified_envelope_regresses(pretrained, sessions, tmp_path):
    """A FIF file's raw EMG moved to /behavior with --behavior-channel and regressed with the CLI
    defaults: the model predicts its 1 s mean, 0.0009% of its variance (noise around 0), and the run
    reported R2s of that noise beside band power without a word. Now refused before training, naming
    --rectify; the rectified channel (mean absolute amplitude per segment) trains."""
    from neurofm.data.ieeg import move_channels_to_behavior

    with Session(sessions["new"]) as src:  # the simulated recording + an EMG channel, as a FIF would bring it
        data, rate, ch = src.continuous(), src.sampling_rate, src.channels()
    emg = _bursty_emg(np.arange(len(data)) / rate)
    with_emg = str(tmp_path / "with_emg.h5")
    with SessionWriter(with_emg, session_id="with_emg") as w:
        w.add_continuous(np.concatenate([data, emg[:, None]], 1), sampling_rate=rate)
        w.add_channels(list(ch.names) + ["EMG_FDS"], *(np.append(ch.xyz[:, k], np.nan) for k in range(3)),
                       regions={a: list(v) + [""] for a, v in ch.regions.items()},
                       types=["seeg"] * len(ch.names) + ["emg"], coordinate_space=ch.coordinate_space)
    raw = move_channels_to_behavior(with_emg, tmp_path / "raw.h5", ["EMG_FDS=emg"])
    cfg = recipe.prepare(_finetune(pretrained, [str(raw)], task="regress", behavior=["emg"]))
    with pytest.raises(ConfigError, match=r"data.target: /behavior/emg's mean over a 1 s segment \(what the model "
                                          r"regresses and is scored on\) keeps 0\.\d\d% of its variance .* convert the "
                                          r"recording again with --behavior-channel EMG_FDS=emg --rectify"):
        recipe.target_stats(cfg, recipe.datamodule(cfg))
    rect = move_channels_to_behavior(with_emg, tmp_path / "rect.h5", ["EMG_FDS=emg"], rectify=True)
    with Session(rect) as s, Session(with_emg) as src:
        np.testing.assert_array_equal(s.behavior("emg")[1], np.abs(src.continuous()[:, -1]))
        assert s.h5["behavior/emg"].attrs["rectified"]
    cfg = recipe.prepare(_finetune(pretrained, [str(rect)], task="regress", behavior=["emg"]))
    mean, std = recipe.target_stats(cfg, recipe.datamodule(cfg))
    assert mean[0] > 0 and std[0] > 0
    # the same signal from another device (a BIDS physio column: no source channel) names --rectify NAME,
    # and the session file that names it regresses
    import h5py

    from neurofm.data.session import rectify_behaviors

    with h5py.File(raw, "r+") as f:
        del f["behavior/emg"].attrs["source_channel"]
    cfg = recipe.prepare(_finetune(pretrained, [str(raw)], task="regress", behavior=["emg"]))
    with pytest.raises(ConfigError, match=r"Regress its envelope: `neurofm convert session \S*raw\.h5 OUT\.h5 "
                                          r"--rectify emg`"):
        recipe.target_stats(cfg, recipe.datamodule(cfg))
    fixed = rectify_behaviors(raw, tmp_path / "fixed.h5", ["emg"])
    cfg = recipe.prepare(_finetune(pretrained, [str(fixed)], task="regress", behavior=["emg"]))
    assert recipe.target_stats(cfg, recipe.datamodule(cfg))[0][0] > 0


def test_coordinates_in_another_space_than_the_pretrained_models_are_warned_about(sessions, tmp_path):
    """A coords model pretrained on MNI electrodes (a BIDS dataset) fine-tuned on a FIF whose montage
    is in MNE's head frame: the same millimetres are other places, and nothing said so."""
    def head_frame(f):
        f["channels"].attrs["coordinate_space"] = "head"

    cfg = recipe.prepare(from_dict(recipe.RunConfig, {
        "data": {"sessions": [sessions["home"]], "segment_s": 1.0, "n_patches": 4, "line_noise": 60.0},
        "model": {**TINY, "encode_scale": "coords"}}, where="test"))
    dm = recipe.datamodule(cfg)
    assert dm.spatial_vocab.spaces == ["MNI152 (simulated)"]
    folder = tmp_path / "coords_enc"
    BaristaEncoder(recipe._sized_config(cfg, dm)).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["config"]["spatial_vocab"]["coordinate_spaces"] == \
        ["MNI152 (simulated)"]
    head = _edited_copy(sessions["new"], tmp_path / "head.h5", head_frame)
    with pytest.warns(UserWarning, match=r"model.encode_scale: coords, and the pretrained model learned positions in "
                                         r"'MNI152 \(simulated\)' coordinates, but the electrode coordinates of "
                                         r"head.h5: 'head' are stated in another space"):
        recipe.preflight(recipe.prepare(_finetune(str(folder), [head])))
    with warnings.catch_warnings():  # the model's own space: no word
        warnings.simplefilter("error", UserWarning)
        recipe._check_spatial_scales(recipe.prepare(_finetune(str(folder), [sessions["new"]])))
    # pretraining on sessions in two spaces
    home_head = _edited_copy(sessions["home"], tmp_path / "home_head.h5", head_frame)
    with pytest.warns(UserWarning, match=r"coords, but the sessions' electrode coordinates are in 2 different spaces "
                                         r"\('MNI152 \(simulated\)': home.h5; 'head': home_head.h5\)"):
        recipe._check_spatial_scales(recipe.prepare(_pretrain_cfg([sessions["home"], home_head],
                                                                  "model.encode_scale=coords")))


def test_fine_tuning_names_atlas_labels_the_pretrained_model_never_saw(pretrained, sessions, tmp_path):
    """A held-out subject whose visual ECoG strip sits in a parcel no pretraining subject sampled
    (ctx_lh_S_calcarine): those channels got the 'unknown' parcel embedding, and the warning
    SpatialVocab.encode gives was silenced by the data modules."""
    def two_in_cuneus(f):
        key = "destrieux"
        labels = f[f"channels/region/{key}"][()].astype(object)
        labels[:2] = b"ctx_lh_G_cuneus"
        del f[f"channels/region/{key}"]
        f["channels/region"].create_dataset(key, data=labels, dtype=h5py.string_dtype())

    part = _edited_copy(sessions["new"], tmp_path / "part.h5", two_in_cuneus)
    with pytest.warns(UserWarning, match=r"model.encode_scale: parcel: 2 of \d+ channels of part.h5 carry destrieux "
                                         r"labels the pretrained model never saw \(ctx_lh_G_cuneus \(2 ch\)\); they get "
                                         r"the 'unknown' parcel embedding"):
        recipe.preflight(recipe.prepare(_finetune(pretrained, [part])))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        recipe._check_spatial_scales(recipe.prepare(_finetune(pretrained, [sessions["home"]])))

    def right_hemisphere(f):  # the same implant, seen as its mirror image (a right-hemisphere patient)
        key = "destrieux"
        labels = f[f"channels/region/{key}"][()].astype(object)
        f[f"channels/region/{key}"][...] = [lab.replace(b"_lh_", b"_rh_").replace(b"Left-", b"Right-")
                                            for lab in labels]

    mirror = _edited_copy(sessions["new"], tmp_path / "mirror.h5", right_hemisphere)
    with pytest.warns(UserWarning, match=r"model.encode_scale: parcel: \d+ of \d+ channels of mirror.h5 carry "
                                         r"destrieux labels the pretrained model saw only in the other hemisphere "
                                         r"\(Right-Hippocampus -> Left-Hippocampus \(\d+ ch\), ctx_rh_\S+ -> ctx_lh_\S+ \(\d+ ch\)\); "
                                         r"they take that homologue's parcel embedding"):
        recipe.preflight(recipe.prepare(_finetune(pretrained, [mirror])))


def test_pretraining_a_recording_whose_header_rounded_its_rate(tmp_path):
    """A BrainVision file at 2048 Hz whose header says SamplingInterval=488.281 (us): MNE reads
    2048.001 Hz. Pretraining was refused: "1.0 s at 2048 Hz is 2048 samples, which do not split
    into 4 patches" (the check wanted 512.0003-sample patches whole to 1e-6; the segmenter, which
    cuts the segments, takes 2048 samples). It now plans with the segmenter's own rule, and a
    segment that really does not split names the rate in full."""
    rate = 1e6 / 488.281
    path = simulate_ieeg(tmp_path / "bv.h5", n_channels=4, duration=12.0, sampling_rate=rate, n_regions=2, seed=0)
    cfg = recipe.prepare(_pretrain_cfg([str(path)]))
    assert (cfg.model.patch_len, cfg.model.n_patches, cfg.model.sampling_rate) == (512, 4, rate)
    with Session(path) as s:  # inspect shows the rate the file holds, not "2048 Hz"
        assert "samples at 2048.001049 Hz" in s.describe()
    with pytest.raises(ConfigError, match=r"data.segment_s: 1.0 s at 2048 Hz is 2048 samples, which does not split "
                                          r"into 3 equal patches .*data.n_patches = 3; the recording's rate is "
                                          r"2048.001049 Hz\); change data.segment_s or data.n_patches"):
        recipe.prepare(_pretrain_cfg([str(path)], "data.n_patches=3"))
