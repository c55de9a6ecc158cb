"""Recipes: how one model family turns a run config into data, a task, metrics and an export.

Each recipe module (``neuroformer``, ``barista``) defines:

* ``RunConfig``: the typed config tree of a run (family, run_dir, seed, resume, data, model,
  task, eval, trainer);
* ``MONITOR``: the validation metric (name, "min"|"max") for best checkpoints and early stopping;
* ``prepare(cfg) -> cfg``: make what the data config names but does not exist yet (the
  simulated demo session, idempotently) and resolve what a pretrained folder fixes (its
  model shape);
* ``finetune_config(pretrained, sessions, ...)``: the run config of ``neurofm finetune``;
* ``datamodule(cfg)`` and ``task(cfg, dm)``: the LightningDataModule and LightningModule;
* ``evaluate(cfg, task, dm, run_dir) -> dict``: held-out metrics, baselines on the same split,
  the protocol in words, plots under ``run_dir/plots``;
* ``export(task)``: the plain ``nn.Module`` to ``save_pretrained``.

:mod:`neurofm.experiment` runs any recipe the same way.
"""
