"""The command line as users meet it: --version, help with defaults, `train --help`, `config
show`, run folders per config, thread choice, loggers and a quiet Lightning."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import neurofm
from neurofm import cli
from neurofm.config import ConfigError
from neurofm.experiment import (CONFIG_DIR, TrainerConfig, build_trainer, config_path, logger_names, main as train_main,
                                resolve_config, shipped_configs)
from neurofm.threads import auto_threads, resolve_threads

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "OMP_WAIT_POLICY")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


# -- version, help ------------------------------------------------------------------------------


def test_version_and_top_level_description(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"neurofm {neurofm.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "Neuroformer for spikes, BaRISTA" in out and "console script" not in out
    for command in ("convert", "inspect", "simulate", "train", "config", "finetune", "evaluate", "generate"):
        assert f"    {command} " in out


@pytest.mark.parametrize("command, expected", [
    ("simulate", ["(default: 600.0)", "(default: 100)", "--seed SEED", "(default: 0)"]),
    ("convert", ["mark the channel bad", "nwb: NWB 2 file"]),
    ("generate", ["(default: teacher_forced)", "(default: 0.95)", "(default: 10.0)"]),
    ("finetune", ["(default: decode)", "(default: 1.0)"]),
    ("evaluate", ["(default runs/evaluate-<model>-<data files>"]),
    ("config", ["neurofm config show barista/paper"]),
])
def test_every_subcommand_help_shows_its_defaults(command, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for text in expected:
        assert text in " ".join(out.split()), f"{command} --help lacks {text!r}:\n{out}"
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "demo", "--help"], ["train", "-h"],
                                  ["train", "barista/paper", "trainer.max_epochs=2", "--help"]])
def test_train_help_is_for_users(argv, capsys):
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "usage: neurofm train [CONFIG] [key=value ...]" in out
    for name in shipped_configs():
        assert name in out
    assert "override any setting" in out and "examples:" in out and "trainer.threads" in out
    if len(argv) > 2:
        assert "neurofm config show" in out.splitlines()[-1]


def test_python_train_py_help_and_bad_arguments():
    done = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "usage: python train.py [CONFIG] [key=value ...]" in done.stdout
    assert "Same code as" not in done.stdout  # not the module docstring
    done = subprocess.run([sys.executable, "train.py", "demo", "trainer.max_epochs"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "'trainer.max_epochs' is not key=value" in done.stderr


def test_entry_points_make_idle_openmp_threads_sleep_unless_told_otherwise():
    probe = ("import os, runpy, sys; sys.argv = ['train.py', '--help']\n"
             "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "PASSIVE"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(OMP_WAIT_POLICY="ACTIVE"),
                          capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "ACTIVE"


# -- configs by name, config show, run folders ---------------------------------------------------


def test_shipped_configs_by_name_and_path(tmp_path):
    assert set(shipped_configs()) == {"neuroformer/demo", "neuroformer/paper", "neuroformer/finetune",
                                      "barista/demo", "barista/paper", "barista/finetune"}
    assert config_path(None) == config_path("demo") == config_path("neuroformer/demo.yaml") \
        == config_path("configs/neuroformer/demo.yaml") == CONFIG_DIR / "neuroformer" / "demo.yaml"
    assert config_path("barista/paper") == CONFIG_DIR / "barista" / "paper.yaml"
    own = tmp_path / "demo"  # an existing file wins over a shipped name
    own.write_text("family: barista\n")
    assert config_path(own) == own
    with pytest.raises(FileNotFoundError, match="nope: no such config file, nor a shipped config name.*barista/paper"):
        config_path("nope")


def test_config_show_prints_the_resolved_config(capsys):
    assert cli.main(["config", "show", "barista/paper", "model.encode_scale=lobe", "trainer.max_epochs=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# barista/paper (shipped) + model.encode_scale=lobe trainer.max_epochs=3\n")
    cfg = yaml.safe_load(out)
    assert cfg["family"] == "barista" and cfg["model"]["encode_scale"] == "lobe" and cfg["trainer"]["max_epochs"] == 3
    assert cfg["model"]["n_layers"] == 12 and cfg["trainer"]["threads"] == "auto" and cfg["trainer"]["logger"] == "csv"
    assert cfg["run_dir"].startswith("runs/barista-paper-")  # a model override: its own folder
    assert cli.main(["config", "show", "trainer.max_epochs=2"]) == 0  # overrides only: the default config
    assert yaml.safe_load(capsys.readouterr().out)["run_dir"] == "runs/neuroformer-demo"
    assert cli.main(["config", "show", "demo", "model.n_embdd=3"]) == 2
    assert "model.n_embdd" in capsys.readouterr().err
    assert cli.main(["config", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("barista/demo ")


def test_a_run_folder_per_config():
    base = resolve_config("demo").run_dir
    assert base == "runs/neuroformer-demo"
    # trainer / eval overrides continue the same run (resume=auto)
    assert resolve_config("demo", ["trainer.max_epochs=20", "eval.top_p=0.5"]).run_dir == base
    # the README's example after the quickstart: another model, another folder, stable across calls
    wider = resolve_config("demo", ["model.n_embd=128", "trainer.max_epochs=20"]).run_dir
    assert wider.startswith(base + "-") and len(wider) == len(base) + 7
    assert resolve_config("demo", ["model.n_embd=128"]).run_dir == wider
    assert resolve_config("demo", ["model.n_embd=96"]).run_dir not in (base, wider)
    assert resolve_config("demo", ["seed=1"]).run_dir not in (base, wider)
    assert resolve_config("demo", ["model.n_embd=64"]).run_dir == base  # the file's own value: no change
    assert resolve_config("demo", ["model.n_embd=128", "run_dir=runs/mine"]).run_dir == "runs/mine"


# -- threads -------------------------------------------------------------------------------------


def test_auto_threads_rule():
    assert auto_threads(cores=2, load=0.1, current=2) == 2  # idle: every core
    assert auto_threads(cores=2, load=0.8, current=2) == 1  # a core mostly busy
    assert auto_threads(cores=2, load=7.0, current=2) == 1  # busy: one thread, never zero
    assert auto_threads(cores=16, load=4.2, current=16) == 12
    assert auto_threads(cores=16, load=0.0, current=4) == 4  # never above what the process was given
    assert resolve_threads(3) == 3 and resolve_threads("2") == 2 and resolve_threads("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="trainer.threads"):
            resolve_threads(bad)


def test_bad_thread_setting_stops_before_any_work(tmp_path, capsys):
    sim = tmp_path / "never.h5"
    assert train_main(["demo", f"run_dir={tmp_path / 'r'}", f"data.simulate.path={sim}", "trainer.threads=0"]) == 2
    assert "trainer.threads: '0'" in capsys.readouterr().err and not sim.exists()


# -- loggers, Lightning's noise ------------------------------------------------------------------


def test_logger_setting_names_the_extra_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    absent = {"tensorboard", "tensorboardX", "wandb", "mlflow"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    for name in ("tensorboard", "wandb", "mlflow"):
        with pytest.raises(ConfigError, match=rf'trainer.logger={name}: .*pip install "neurofm\[{name}\]"'):
            logger_names(TrainerConfig(logger=f"csv,{name}"))
    with pytest.raises(ConfigError, match="'comet' is not one of csv, tensorboard, wandb, mlflow"):
        logger_names(TrainerConfig(logger="comet"))
    assert logger_names(TrainerConfig(logger=" csv ")) == ["csv"]
    # from the command line: an error before the data is simulated
    sim = tmp_path / "never.h5"
    assert train_main(["demo", f"run_dir={tmp_path / 'r'}", f"data.simulate.path={sim}",
                       "trainer.logger=tensorboard"]) == 2
    assert 'pip install "neurofm[tensorboard]"' in capsys.readouterr().err and not sim.exists()


def test_trainer_logs_csv_and_drops_lightning_noise_only(tmp_path, caplog):
    from lightning.pytorch.loggers import CSVLogger

    caplog.set_level(logging.INFO)
    trainer = build_trainer(TrainerConfig(accelerator="cpu", devices="1", progress_bar=False), tmp_path)
    assert len(trainer.loggers) == 1 and isinstance(trainer.loggers[0], CSVLogger)
    assert Path(trainer.loggers[0].log_dir) == tmp_path / "logs"
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith(("GPU available:", "TPU available:", "\U0001f4a1 Tip"))], messages
    # the filter is on Lightning's logger and drops only its start-up lines
    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning_log.info("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    lightning_log.info("GPU available: True (cuda), used: False")
    assert [r.getMessage() for r in caplog.records][len(messages):] == [
        "GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`."]
    # Lightning's note at every checkpoint save (a new lab's 6-epoch run printed it 6 times)
    n = len(caplog.records)
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").info(
        "`weights_only` was not set, defaulting to `False`.")
    assert len(caplog.records) == n


def test_training_into_a_log_file_prints_progress_lines(tmp_path, capsys, monkeypatch):
    """The default progress bar, with stderr redirected to a log file (as under pytest): a
    BaRISTA pretraining's log showed one final bar frame after 15 min. build_trainer then puts
    plain lines (step, of how many, epoch, loss, time left) in its place; on a terminal the bar."""
    import lightning as L
    import torch

    from neurofm.tasks.callbacks import LogProgress

    trainer = build_trainer(TrainerConfig(accelerator="cpu", devices="1", max_epochs=2), tmp_path)
    assert not trainer.progress_bar_callback
    (log,) = [c for c in trainer.callbacks if isinstance(c, LogProgress)]
    log.every_s = 0.0  # every step, not every 30 s

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.w(batch[0]).pow(2).mean()
            self.log("train/loss", loss, on_step=True, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(6, 2)), batch_size=2)
    capsys.readouterr()
    trainer.fit(Tiny(), data)
    err = capsys.readouterr().err
    assert "neurofm: training: step 1 of 6, epoch 1 of 2, loss " in err
    assert "neurofm: training: step 6 of 6, epoch 2 of 2" in err and "neurofm: training: done, 6 steps in" in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    on_terminal = build_trainer(TrainerConfig(accelerator="cpu", devices="1"), tmp_path / "t")
    assert on_terminal.progress_bar_callback and not [c for c in on_terminal.callbacks if isinstance(c, LogProgress)]


def test_the_done_line_says_when_early_stopping_ended_training(tmp_path, capsys):
    """A fine-tune's log read "step 91 of 300" then "training: done, 150 steps" and nothing about why:
    the done line now says early stopping ended it, after how many checks, and of how many steps."""
    import lightning as L
    import torch

    from neurofm.tasks.callbacks import EarlyStoppingAfterValidation, LogProgress

    trainer = build_trainer(TrainerConfig(accelerator="cpu", devices="1", max_epochs=20), tmp_path)
    (log,) = [c for c in trainer.callbacks if isinstance(c, LogProgress)]
    log.every_s = 0.0
    trainer.callbacks.append(EarlyStoppingAfterValidation(monitor="val/flat", mode="max", patience=2))

    class Flat(L.LightningModule):  # a validation score that never improves
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.w(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/flat", 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(6, 2)), batch_size=2)
    capsys.readouterr()
    trainer.fit(Flat(), data, data)
    err = capsys.readouterr().err
    assert ("neurofm: training: done, 9 steps in" in err and "(of 60 planned: stopped early, val/flat did not "
            "improve for 2 validation checks: trainer.early_stopping_patience)" in err), err
    trainer = build_trainer(TrainerConfig(accelerator="cpu", devices="1", max_epochs=1), tmp_path / "b")
    [c for c in trainer.callbacks if isinstance(c, LogProgress)][0].every_s = 0.0
    trainer.fit(Flat(), data)
    assert "stopped early" not in capsys.readouterr().err


def test_evaluate_writes_to_a_folder_named_after_the_model_and_the_recording():
    """`neurofm evaluate` without --out wrote every evaluation to runs/evaluate, each replacing the
    last; the default now names the model (a fine-tuned RUN/pretrained by its run) and the data."""
    assert cli._evaluate_dir("runs/ft-maze/pretrained", ["data/maze.h5", "data/b.h5"]) == "runs/evaluate-ft-maze-maze+b"
    # every file names the folder: [maze, c] no longer overwrites [maze, b] (the first file alone did)
    assert cli._evaluate_dir("runs/ft-maze/pretrained", ["data/maze.h5", "data/c.h5"]) == "runs/evaluate-ft-maze-maze+c"
    many = cli._evaluate_dir("m", [f"d{i}.h5" for i in range(5)])
    assert many.startswith("runs/evaluate-m-d0+4more-") and many != cli._evaluate_dir("m", [f"e{i}.h5" for i in range(5)])
    assert cli._evaluate_dir("runs/ft-maze/pretrained/", ["maze.h5"]) == "runs/evaluate-ft-maze-maze"
    assert cli._evaluate_dir("models/neuroformer-demo", ["x/of.h5"]) == "runs/evaluate-neuroformer-demo-of"


def test_evaluate_takes_the_run_dir_option_finetune_takes():
    """A new lab ran `neurofm finetune ... --run-dir R`, then `neurofm evaluate ... --run-dir R2` and got
    only "unrecognized arguments: --run-dir"; evaluate's --out now also answers to --run-dir."""
    parser = cli.build_parser()
    for flag in ("--out", "--run-dir"):
        args = parser.parse_args(["evaluate", "--pretrained", "p", "--data", "a.h5", flag, "runs/ev"])
        assert args.out == "runs/ev"
    assert parser.parse_args(["evaluate", "--pretrained", "p", "--data", "a.h5"]).out is None


def test_step_budget_validation_runs_twenty_times_whatever_the_epoch_length(tmp_path):
    """The fine-tuning step budget's Trainer settings (resolve_trainer's short-epoch path: 3 steps
    per epoch, 40 steps, so 14 epochs) validate every 2 steps across epoch boundaries: 20 checks,
    as the docs say. Validating every ceil(epochs / 20) epochs gave 14 here (every epoch) and 15
    at 30 epochs."""
    import lightning as L

    from neurofm.recipes.neuroformer import BUDGET_CHECKS

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)
            self.checks = []

        def training_step(self, batch, i):
            return self.w(batch[0]).pow(2).mean()

        def validation_step(self, batch, i):
            self.log("val/loss", self.w(batch[0]).pow(2).mean())

        def on_validation_epoch_end(self):
            if not self.trainer.sanity_checking:
                self.checks.append(self.global_step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.TensorDataset(torch.randn(12, 2))
    loader = lambda: torch.utils.data.DataLoader(data, batch_size=4)  # noqa: E731  (3 steps per epoch)
    budget, per_epoch = 40, 3
    every = math.ceil(budget / BUDGET_CHECKS)
    tc = TrainerConfig(accelerator="cpu", devices="1", progress_bar=False, max_steps=budget,
                       max_epochs=math.ceil(budget / per_epoch), val_check_every_n_steps=every)
    model = Tiny()
    build_trainer(tc, tmp_path, monitor="val/loss").fit(model, loader(), loader())
    assert model.checks == list(range(every, budget + 1, every)) and len(model.checks) == BUDGET_CHECKS


def test_errors_are_one_line_and_neurofm_traceback_shows_where(tmp_path, capsys, monkeypatch):
    """An error is one line without a traceback; one that names no file, field or fix (a bug,
    like the "cannot reshape array of size 0" a tracking dropout raised in finetune) can only be
    located with its traceback: NEUROFM_TRACEBACK=1 lets the exception through."""
    missing = str(tmp_path / "missing.h5")
    monkeypatch.delenv("NEUROFM_TRACEBACK", raising=False)
    assert cli.main(["inspect", missing]) == 2
    assert capsys.readouterr().err.startswith("neurofm inspect: error: ")
    monkeypatch.setenv("NEUROFM_TRACEBACK", "1")
    with pytest.raises(OSError, match="missing.h5"):
        cli.main(["inspect", missing])


def test_neurofm_warnings_print_as_one_line_naming_the_command(tmp_path):
    """finetune / evaluate / config printed neurofm's warnings as Python does: the path of the
    neurofm module that raised it, 'UserWarning', then its source line (a new lab's fine-tune:
    '.../neurofm/recipes/barista.py:435: UserWarning: model.encode_scale: ... _check_spatial_scales(cfg)').
    They now read 'neurofm COMMAND: warning: ...', as convert's and the errors do, and warnings stay
    catchable (pytest.warns, catch_warnings(record=True) see them as before)."""
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"family": "neuroformer", "task": {"head_only_fraction": 0.25}}))
    run = subprocess.run([sys.executable, "-m", "neurofm.cli", "config", "show", str(old)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(Path(neurofm.__file__).parent.parent)})
    assert run.returncode == 0, run.stderr
    assert run.stderr.startswith(f"neurofm config: warning: {old}: written by an older neurofm; 1 key(s) no longer "
                                 "exist and are ignored: task.head_only_fraction")
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr
    import warnings

    before = warnings.formatwarning  # Lightning's, once it is imported: it falls back to the one before it
    with pytest.warns(UserWarning, match="task.head_only_fraction"):
        assert cli.main(["config", "show", str(old)]) == 0
    assert warnings.formatwarning is before  # put back after the command
