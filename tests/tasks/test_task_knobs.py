"""Task knobs (task.lr, ...) have one source of defaults (neurofm.tasks.optim.*_KNOBS): the
Lightning tasks' keyword defaults and the recipes' config dataclasses read it, and the recipes
pass every knob of the list through."""

from __future__ import annotations

import inspect

import pytest

from neurofm.recipes import barista as barista_recipe
from neurofm.recipes import neuroformer as nf_recipe
from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask
from neurofm.tasks.neuroformer import NeuroformerTask
from neurofm.tasks.optim import BARISTA_FINETUNE_KNOBS, BARISTA_PRETRAIN_KNOBS, NEUROFORMER_KNOBS


@pytest.mark.parametrize("knobs, task_cls, config", [
    (NEUROFORMER_KNOBS, NeuroformerTask, nf_recipe.NeuroformerTaskConfig()),
    (BARISTA_PRETRAIN_KNOBS, BaristaPretrainTask, barista_recipe.BaristaTaskConfig()),
    (BARISTA_FINETUNE_KNOBS, BaristaFinetuneTask, barista_recipe.BaristaTaskConfig()),
])
def test_task_and_recipe_config_share_the_knob_defaults(knobs, task_cls, config):
    params = inspect.signature(task_cls.__init__).parameters
    for name, value in knobs.items():
        assert params[name].default == value, f"{task_cls.__name__}({name}=...)"
        assert getattr(config, name) == value, f"task.{name}"


def test_neuroformer_recipe_passes_every_knob(tmp_path):
    from tests.recipes.test_neuroformer_recipe import _config, _session

    cfg = _config([_session(tmp_path / "a.h5")])
    changed = {"lr": 3e-4, "weight_decay": 0.02, "warmup_fraction": 0.2, "final_lr_ratio": 0.5,
               "freeze_backbone": True, "head_lr_ratio": 4.0}
    assert changed.keys() == NEUROFORMER_KNOBS.keys() and all(changed[k] != v for k, v in NEUROFORMER_KNOBS.items())
    for k, v in changed.items():
        setattr(cfg.task, k, v)
    task = nf_recipe.task(cfg, nf_recipe.datamodule(cfg))
    assert {k: task.hparams[k] for k in changed} == changed
