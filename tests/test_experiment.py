"""End to end: ``python train.py`` -> run folder, strict config errors, resume after SIGKILL,
DDP on two CPU processes, ``neurofm export`` / ``neurofm card``.

Every run is a tiny Neuroformer (12 simulated units, n_embd 32) on one 40 s simulated
session made once for the module. Subprocesses get ``OMP_NUM_THREADS=1``: on a small shared
machine a second OpenMP thread per process only adds contention.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from neurofm import cli
from neurofm.experiment import check_resume_config, load_config, main as train_main, state_sha256
from neurofm.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STEP_EVERY = 3  # checkpoint_every_n_steps of the resume runs
BATCHES = 8  # limit_train_batches of the resume runs: 2 epochs = 16 steps

# The model and data: small enough that one training step takes milliseconds.
TINY = [
    "data.simulate.duration=40", "data.simulate.n_units=12", "data.batch_size=32",
    "model.n_embd=32", "model.n_head=2", "model.temporal_hidden=32",
    "model.block_size.id=16", "model.block_size.prev_id=32",
    "eval.generate_windows=0", "trainer.progress_bar=false", "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
]
RESUMABLE = [*TINY, "trainer.max_epochs=2", f"trainer.limit_train_batches={BATCHES}",
             f"trainer.checkpoint_every_n_steps={STEP_EVERY}"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore"}


def _train(run_dir: Path, sim: Path, *extra: str, check: bool = True, timeout: float = 300):
    cmd = [sys.executable, str(ROOT / "train.py"), f"run_dir={run_dir}", f"data.simulate.path={sim}", *extra]
    out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from neurofm.data.synthetic import simulate_spikes

    return Path(simulate_spikes(tmp_path_factory.mktemp("sim") / "sim.h5", n_units=12, duration=40.0, seed=0))


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, sim) -> Path:
    """An uninterrupted run: 2 epochs, checkpoints every STEP_EVERY steps."""
    run_dir = tmp_path_factory.mktemp("runs") / "a"
    _train(run_dir, sim, *RESUMABLE)
    return run_dir


def _first_test_batch(run_dir: Path) -> dict:
    from neurofm.recipes import neuroformer as recipe

    cfg = load_config(run_dir / "config.yaml")
    dm = recipe.datamodule(cfg)
    return next(iter(dm.loader("test")))


# -- 1. the run folder ---------------------------------------------------------------------------


def test_train_writes_run_folder_that_loads_in_a_fresh_process(run_a, sim, tmp_path):
    # config.yaml is the resolved config, and loads back as the same typed config
    saved = OmegaConf.load(run_a / "config.yaml")
    assert saved.model.n_embd == 32 and saved.data.simulate.path == str(sim) and saved.run_dir == str(run_a)
    assert saved.trainer.checkpoint_every_n_steps == STEP_EVERY and saved.model.window.dt > 0  # defaults filled in
    assert load_config(run_a / "config.yaml").model.block_size.id == 16

    metrics = json.loads((run_a / "metrics.json").read_text())
    assert {"metrics", "baselines", "protocol", "training", "data", "n_params"} <= metrics.keys()
    assert np.isfinite(metrics["metrics"]["id_bits_per_spike"])
    m = metrics["metrics"]  # the within-bin order's share taken out: never below the tokenizer-order bound
    assert m["id_order_info_bits_per_spike"] > 0
    assert m["id_bits_per_spike_order_free"] >= m["id_bits_per_spike"] - m["id_order_info_bits_per_spike"] - 1e-9
    assert "unigram (firing-rate) null" in metrics["baselines"]
    assert "ridge on binned counts" in metrics["baselines"]  # the demo config decodes speed
    assert "test block" in metrics["protocol"]
    assert metrics["training"]["steps"] == 2 * BATCHES and metrics["training"]["epochs"] == 2

    pre = run_a / "pretrained"
    assert {"config.json", "model.safetensors", "README.md"} <= {p.name for p in pre.iterdir()}
    card = (pre / "README.md").read_text()
    front = card.split("---")[1]
    assert card.startswith("---\n") and "library_name: neurofm" in front and "type: id_bits_per_spike" in front
    assert json.dumps(json.loads((pre / "config.json").read_text()), indent=2) in card  # the weights' config
    assert metrics["data"]["sources"][0]["path"] == str(sim) and metrics["data"]["sources"][0]["license"]
    assert json.loads((pre / "config.json").read_text())["model_type"] == "Neuroformer"

    # The in-run model (last.ckpt: end of the final epoch) against the exported folder loaded in a
    # fresh, offline process: identical tensors, identical outputs on a held-out batch.
    ckpt = torch.load(run_a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * BATCHES
    in_run = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    _assert_same_weights(in_run, _weights(pre))

    # The fresh process imports only the hub and the model (no Lightning, no data layer): it
    # gets a held-out batch as a tensor file and returns its outputs.
    batch = _first_test_batch(run_a)
    torch.save(batch, tmp_path / "batch.pt")
    out = tmp_path / "fresh.pt"
    code = f"""
import torch
torch.set_num_threads(1)
from neurofm.hub import load_pretrained
from neurofm.experiment import state_sha256
model = load_pretrained({str(pre)!r})
batch = torch.load({str(tmp_path / 'batch.pt')!r}, weights_only=True)
with torch.no_grad():
    o = model(batch)
torch.save({{"id_logits": o["id_logits"], "dt_logits": o["dt_logits"], "sha": state_sha256(model.state_dict()),
            "type": type(model).__name__}}, {str(out)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = torch.load(out, weights_only=True)
    assert fresh["type"] == "Neuroformer" and fresh["sha"] == state_sha256(in_run)

    from neurofm.tasks.neuroformer import NeuroformerTask

    model = NeuroformerTask.load_from_checkpoint(run_a / "checkpoints" / "last.ckpt", map_location="cpu").model.eval()
    with torch.no_grad():
        o = model(batch)
    torch.testing.assert_close(fresh["id_logits"], o["id_logits"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fresh["dt_logits"], o["dt_logits"], rtol=1e-5, atol=1e-6)


def test_card_command_rewrites_the_card(run_a, tmp_path):
    card = run_a / "pretrained" / "README.md"
    original = card.read_text()
    card.write_text("stale\n")
    assert cli.main(["card", str(run_a)]) == 0
    assert card.read_text() == original  # rendered from metrics.json + config.yaml again
    assert cli.main(["card", str(run_a), "--out", str(tmp_path / "CARD.md")]) == 0
    assert (tmp_path / "CARD.md").read_text() == original
    assert cli.main(["card", str(tmp_path)]) == 2  # no metrics.json: a clear error, no traceback


def test_rerunning_a_finished_run_keeps_its_training_provenance(run_a, sim, tmp_path):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(run_a, run)
    before = json.loads((run / "metrics.json").read_text())["training"]
    out = _train(run, sim, *RESUMABLE)  # resume=auto: nothing left to train
    assert "resuming from" in out.stdout
    after = json.loads((run / "metrics.json").read_text())
    assert after["training"] == {**before, "reevaluated": True}  # wall_time_s of the run that trained
    assert f"wall_time_s: {before['wall_time_s']:.4g}" in (run / "pretrained" / "README.md").read_text()


# -- 2. config errors ----------------------------------------------------------------------------


def test_unknown_key_on_the_command_line_is_a_clean_error(tmp_path, sim):
    out = _train(tmp_path / "x", sim, "model.n_embdd=3", check=False, timeout=120)
    assert out.returncode == 2
    assert "model.n_embdd" in out.stderr and "n_embd" in out.stderr and "command line" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "x").exists()  # nothing written for a config that does not load


def test_wrong_type_on_the_command_line_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["train", f"run_dir={tmp_path / 'x'}", "trainer.max_epochs=lots"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs" in err and "lots" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="data.batch_size"):
        load_config(None, ["data.batch_size=1.5"])
    # a mistake in the file names the file, not the command line
    bad = tmp_path / "bad.yaml"
    bad.write_text("family: neuroformer\nmodel: {n_layers: 2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'model\.n_layers'"):
        load_config(bad, ["trainer.max_epochs=1"])


# -- 3. resume after SIGKILL ---------------------------------------------------------------------


def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(run_a, sim, tmp_path, capsys,
                                                                  sigkill_once_checkpointed, checkpoint_step):
    run_b = tmp_path / "b"
    cmd = [sys.executable, str(ROOT / "train.py"), f"run_dir={run_b}", f"data.simulate.path={sim}", *RESUMABLE]
    log = tmp_path / "b.log"  # a file, not a pipe nobody reads while it runs (a full pipe would block it)
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log_file, stderr=subprocess.STDOUT)
    last = run_b / "checkpoints" / "last.ckpt"
    killed_at = sigkill_once_checkpointed(proc, last, STEP_EVERY, 240)
    assert killed_at is not None, (f"run B ended (rc {proc.returncode}) before a step checkpoint: "
                                   f"{log.read_text()[-3000:]}")
    assert proc.returncode == -signal.SIGKILL
    assert STEP_EVERY <= checkpoint_step(last) < 2 * BATCHES, "killed mid-run"
    assert not (run_b / "metrics.json").exists()

    out = _train(run_b, sim, *RESUMABLE)  # resume=auto is the default
    assert f"resuming from {last}" in out.stdout
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (run_a, run_b))
    assert b["training"]["steps"] == a["training"]["steps"] == 2 * BATCHES
    _assert_same_weights(_weights(run_a / "pretrained"), _weights(run_b / "pretrained"))
    assert b["metrics"] == a["metrics"]

    # Resuming the same run_dir under another model config is an error naming the keys
    before = _weights(run_b / "pretrained")
    code = train_main([f"run_dir={run_b}", f"data.simulate.path={sim}", *RESUMABLE, "model.n_embd=48",
                       "task.lr=0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "model.n_embd: 32 -> 48" in err and "task.lr" in err and "resume=none" in err
    _assert_same_weights(before, _weights(run_b / "pretrained"))
    assert OmegaConf.load(run_b / "config.yaml").model.n_embd == 32  # the saved config is untouched


def test_resume_config_check_allows_trainer_changes(run_a):
    cfg = load_config(run_a / "config.yaml", ["trainer.max_epochs=5", "trainer.devices=2", "eval.top_p=0.5"])
    check_resume_config(cfg, run_a / "checkpoints" / "last.ckpt")  # no error: same model, data, task
    changed = load_config(run_a / "config.yaml", ["data.split.gap=2.0"])
    with pytest.raises(ConfigError, match=r"data\.split\.gap: 1\.0 -> 2\.0"):
        check_resume_config(changed, run_a / "checkpoints" / "last.ckpt")


# -- 4. DDP on two CPU processes -----------------------------------------------------------------


def test_ddp_two_cpu_ranks_see_disjoint_data_and_end_identical(sim, tmp_path):
    run_dir = tmp_path / "ddp"
    _train(run_dir, sim, *TINY, "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=2",
           "trainer.strategy=ddp", "trainer.record_batches=true", timeout=400)
    ranks = [json.loads((run_dir / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["training"]["world_size"] == 2

    from neurofm.recipes import neuroformer as recipe

    dm = recipe.datamodule(load_config(run_dir / "config.yaml"))
    dm.setup("fit")
    train = dm.datasets["train"]
    every = [(s, round(t, 6)) for s, t in (train.window(i) for i in range(len(train)))]
    assert len(set(every)) == len(every)

    seen = [[(s, round(t, 6)) for b in r["batches"] for s, t in zip(b["session"], b["time"])] for r in ranks]
    n = len(every)
    padded = -(-n // 2) * 2 - n  # the sampler pads the ranks to equal shares by repeating windows
    assert len(seen[0]) == len(seen[1]) == -(-n // 2)
    assert all(len(set(s)) == len(s) for s in seen), "a rank saw a window twice in one epoch"
    assert len(set(seen[0]) & set(seen[1])) == padded, "the ranks' windows overlap"
    assert set(seen[0]) | set(seen[1]) == set(every), "some training windows were never seen"
    assert [b["step"] for b in ranks[0]["batches"]] == [b["step"] for b in ranks[1]["batches"]]

    # gradients were all-reduced: both replicas end bit-identical, and equal to the export
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    exported = {f"model.{k}": v for k, v in _weights(run_dir / "pretrained").items()}
    assert state_sha256(exported) == ranks[0]["weights_sha256"]


def test_ddp_metrics_equal_the_single_process_run(sim, tmp_path):
    """Validation and evaluation score every window on every rank: with the weights held equal
    (lr 0, so the different number of steps does not matter), a 2-process run's metrics.json
    and validation log equal one process's, window counts included (sharded evaluation scored
    only rank 0's half)."""
    frozen = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.accelerator=cpu", "task.lr=0"]
    runs = {1: tmp_path / "one", 2: tmp_path / "two"}
    _train(runs[1], sim, *frozen, "trainer.devices=1")
    _train(runs[2], sim, *frozen, "trainer.devices=2", "trainer.strategy=ddp", timeout=400)
    one, two = (json.loads((runs[k] / "metrics.json").read_text()) for k in (1, 2))
    assert two["training"]["world_size"] == 2 and one["training"]["world_size"] == 1
    for key in ("metrics", "baselines", "data", "protocol"):
        assert one.get(key) == two.get(key), key
    assert any(k.endswith("n_scored") for k in one["metrics"]) or one["metrics"], one["metrics"]

    def val_rows(run_dir):
        import csv

        with open(run_dir / "logs" / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("val/total")]
        return [{k: v for k, v in r.items() if k.startswith("val/") and v} for r in rows]

    a, b = val_rows(runs[1]), val_rows(runs[2])
    assert a and len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert float(ra[k]) == pytest.approx(float(rb[k]), rel=1e-5, abs=1e-6), k


# -- 5. export ---------------------------------------------------------------------------------


def test_export_command_matches_the_run_pretrained_folder(run_a, tmp_path):
    out = tmp_path / "exported"
    assert cli.main(["export", str(run_a / "checkpoints" / "last.ckpt"), str(out)]) == 0
    _assert_same_weights(_weights(run_a / "pretrained"), _weights(out))
    a, b = (json.loads((d / "config.json").read_text()) for d in (run_a / "pretrained", out))
    assert a["config"] == b["config"] and b["model_type"] == "Neuroformer"
    assert cli.main(["export", str(tmp_path / "missing.ckpt"), str(out)]) == 2


def test_early_stopped_runs_evaluate_the_best_checkpoint(tmp_path):
    """With early stopping the run ends `patience` epochs past its best epoch: the best
    checkpoint's weights are put back before evaluation and export."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from neurofm.experiment import _restore_best

    class Toy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            return (self.w - 1.0).square().sum()  # w walks towards 1 every step

        def validation_step(self, batch, i):
            self.log("val/score", -float(self.current_epoch))  # best (max) at epoch 0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    toy = Toy()
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/score", mode="max", save_top_k=1)
    trainer = L.Trainer(max_epochs=3, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    data = DataLoader([torch.zeros(1)] * 4, batch_size=2)
    trainer.fit(toy, train_dataloaders=data, val_dataloaders=data)
    w_final = float(toy.w)
    restored = _restore_best(trainer, toy, "val/score")
    assert restored["epoch"] == 0 and restored["score"] == 0.0
    w_best = float(torch.load(restored["path"], weights_only=True)["state_dict"]["w"])
    assert float(toy.w) == w_best != w_final
    assert _restore_best(trainer, toy, "val/other") is None  # no checkpoint follows that metric
    # a task that migrates old state-dict keys (the BaRISTA tasks' on_load_checkpoint) gets its
    # hook before the weights load, as on Lightning's own load paths
    state = torch.load(restored["path"], weights_only=True)
    state["state_dict"] = {"old_w": state["state_dict"]["w"]}
    torch.save(state, restored["path"])
    toy.on_load_checkpoint = lambda c: c.update(state_dict={"w": c["state_dict"]["old_w"]})
    toy.w.data.fill_(5.0)
    _restore_best(trainer, toy, "val/score")
    assert float(toy.w) == w_best


def test_print_result_shows_the_runs_limitations(tmp_path, capsys):
    """A new lab's BaRISTA pretraining that never left its trivial phase put that only in
    metrics.json: the terminal summary listed the metrics and baselines and no word of it."""
    from neurofm.experiment import RunResult, print_result

    line = ("Pretraining has not left its trivial phase: on the test block the predictor explains "
            "-0.6% of the masked tokens' variance")
    metrics = {"metrics": {"test_masked_latent_r2": -0.0064},
               "baselines": {"mean target": {"test_masked_latent_r2": 0.0}}, "limitations": [line]}
    print_result(RunResult(tmp_path, tmp_path / "pretrained", metrics))
    out = capsys.readouterr().out
    assert f"LIMITATION: {line}" in out
    print_result(RunResult(tmp_path, tmp_path / "pretrained", {"metrics": {}, "baselines": {}}))
    assert "LIMITATION" not in capsys.readouterr().out


def test_export_of_a_checkpoint_written_when_head_only_fraction_existed(run_a, tmp_path):
    """A Lightning checkpoint of a run from before task.head_only_fraction was removed holds it
    among the task's hyper-parameters; `neurofm export` failed on it (resume and evaluate read
    config.yaml, which already dropped it). Now it exports the same weights, with one warning."""
    import shutil

    import torch

    run = tmp_path / "old-run"
    shutil.copytree(run_a, run, ignore=shutil.ignore_patterns("pretrained", "plots"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["head_only_fraction"] = 0.25
    torch.save(ckpt, run / "checkpoints" / "last.ckpt")
    out = tmp_path / "exported"
    with pytest.warns(UserWarning, match=r"last\.ckpt: written by an older neurofm; .*task\.head_only_fraction "
                                         r"\(was 0\.25"):
        assert cli.main(["export", str(run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    _assert_same_weights(_weights(run_a / "pretrained"), _weights(out))


def test_a_rerun_of_a_finished_run_evaluates_the_checkpoint_that_run_evaluated(tmp_path):
    """Re-running a finished fine-tune trains nothing, so model selection (StartingPoint's
    on_train_end) does not run again, and checkpointing's best may be a check selection rejected
    for the start: a `--folds` trial's fold 5 went from 0.951 (the start) to 0.901 (the rejected
    check) on a re-run while metrics.json still said the start was kept. The finished run's
    evaluated checkpoint is restored instead; a session that trained more steps takes the best."""
    from types import SimpleNamespace

    from neurofm.experiment import _evaluated_before, _restore_best

    class Task(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def on_load_checkpoint(self, state):
            pass

    for name, value, step in (("start", 1.0, 0), ("best", 2.0, 261)):
        torch.save({"state_dict": {"w": torch.tensor([value])}, "epoch": 0, "global_step": step},
                   tmp_path / f"{name}.ckpt")
    callback = SimpleNamespace(monitor="val/auroc", best_model_path=str(tmp_path / "best.ckpt"),
                               best_model_score=torch.tensor(0.96))
    before = {"steps": 300, "evaluated_checkpoint": {"path": str(tmp_path / "start.ckpt"), "step": 0, "score": 0.94}}
    task = Task()
    rerun = SimpleNamespace(global_step=300, checkpoint_callbacks=[callback])
    restored = _restore_best(rerun, task, "val/auroc", _evaluated_before(before, rerun))
    assert task.w.item() == 1.0 and restored["path"].endswith("start.ckpt") and restored["score"] == 0.94
    trained_on = SimpleNamespace(global_step=320, checkpoint_callbacks=[callback])
    assert _evaluated_before(before, trained_on) is None
    restored = _restore_best(trained_on, task, "val/auroc", _evaluated_before(before, trained_on))
    assert task.w.item() == 2.0 and restored["path"].endswith("best.ckpt")
