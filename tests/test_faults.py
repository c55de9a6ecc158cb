"""Fault injection: crashes, damaged checkpoints, full disks, races and bad inputs (issue 12).

Each test reproduces one failure of the list in issue 12 and checks what happens now. Runs
are the tiny Neuroformer of tests/test_experiment.py on a 40 s simulated session.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurofm.atomic import OutputError
from neurofm.config import ConfigError
from neurofm.data.session import Session, SessionWriter

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.simulate.duration=40", "data.simulate.n_units=12", "data.batch_size=32",
    "model.n_embd=32", "model.n_head=2", "model.temporal_hidden=32",
    "model.block_size.id=16", "model.block_size.prev_id=32",
    "eval.generate_windows=0", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    from neurofm.data.synthetic import simulate_spikes

    return Path(simulate_spikes(tmp_path_factory.mktemp("sim") / "sim.h5", n_units=12, duration=40.0, seed=0))


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class _Crash(Exception):
    pass


def _crash_at_epoch(epoch: int, seen: dict):
    """A callback that records last.ckpt's step at every epoch start and crashes at ``epoch``."""
    import lightning as L

    class CrashAt(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            seen[trainer.current_epoch] = (int(_ckpt(last)["global_step"]) if last.exists() else None,
                                           int(trainer.global_step))
            if trainer.current_epoch == epoch:
                raise _Crash(f"simulated crash at the start of epoch {epoch}")

    return CrashAt()


# -- 1 + 14: last.ckpt at every epoch end with the defaults; resume keeps the log ----------------


def test_default_run_writes_last_ckpt_every_epoch_and_resume_keeps_the_log(sim, tmp_path, capsys):
    from neurofm.experiment import load_config, run

    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", f"data.simulate.path={sim}", *TINY, "trainer.max_epochs=3"]
    seen: dict = {}
    with pytest.raises(_Crash):
        run(load_config(None, args), extra_callbacks=[_crash_at_epoch(2, seen)])
    # the default callbacks wrote last.ckpt at the end of epochs 0 and 1, holding those steps
    assert seen[1][0] == seen[1][1] > 0 and seen[2][0] == seen[2][1] == 2 * seen[1][1], seen
    ckpt_dir = run_dir / "checkpoints"
    assert _ckpt(ckpt_dir / "last.ckpt")["epoch"] == 1
    assert int(_ckpt(ckpt_dir / "last.prev.ckpt")["global_step"]) == seen[1][1]  # the one it replaced
    assert not [p for p in ckpt_dir.iterdir() if p.name.endswith(".tmp")]
    with open(run_dir / "logs" / "metrics.csv") as f:
        before = list(csv.DictReader(f))
    assert before and max(int(r["step"]) for r in before) >= seen[2][1] - 1

    result = run(load_config(None, args))  # resume=auto
    assert result.metrics["training"]["steps"] == 3 * seen[1][1]
    with open(run_dir / "logs" / "metrics.csv") as f:
        after = list(csv.DictReader(f))
    # the rows written before the crash are still there, followed by the resumed run's
    assert len(after) > len(before)
    assert [r["step"] for r in after[: len(before)]] == [r["step"] for r in before]
    assert max(int(r["step"]) for r in after) >= 3 * seen[1][1] - 1


# -- 2: atomic checkpoint saves across filesystems ---------------------------------------------


def test_checkpoint_save_never_moves_across_filesystems_and_a_failed_save_keeps_the_old_one(tmp_path, monkeypatch):
    """The save goes to a temp file in the checkpoint folder and is renamed there: with every
    cross-directory move made to fail (as across filesystems, EXDEV), saving still works, and
    a save killed mid-write leaves the previous last.ckpt whole."""
    import shutil

    from neurofm.experiment import _checkpoint_io

    real_replace = os.replace

    def same_dir_only(src, dst, *a, **k):
        if Path(src).resolve().parent != Path(dst).resolve().parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst, *a, **k)

    def no_move(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", same_dir_only)
    monkeypatch.setattr(os, "rename", same_dir_only)
    monkeypatch.setattr(shutil, "move", no_move)
    io = _checkpoint_io()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, last)
    io.save_checkpoint({"state_dict": {"w": torch.full((3,), 2.0)}, "global_step": 2}, last)
    assert int(_ckpt(last)["global_step"]) == 2
    assert int(_ckpt(last.with_name("last.prev.ckpt"))["global_step"]) == 1

    real_save = torch.save

    def killed_mid_write(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:  # the process dies with half the bytes on disk
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 3}, last)
    assert int(_ckpt(last)["global_step"]) == 2  # untouched
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    assert oct(last.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    from neurofm.atomic import current_umask

    return current_umask()


# -- 11: an empty / truncated last.ckpt -----------------------------------------------------------


def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, caplog):
    from neurofm.experiment import resume_path

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    good = {"state_dict": {"w": torch.ones(1000)}, "global_step": 7}
    torch.save(good, ckpt_dir / "last.prev.ckpt")
    torch.save(good, ckpt_dir / "last.ckpt")
    data = (ckpt_dir / "last.ckpt").read_bytes()
    (ckpt_dir / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level("WARNING", logger="neurofm"):
        assert resume_path("auto", tmp_path) == str(ckpt_dir / "last.prev.ckpt")
    assert "last.ckpt cannot be loaded" in caplog.text and "resuming from" in caplog.text

    (ckpt_dir / "last.prev.ckpt").write_bytes(b"")  # empty as well: nothing loads
    with pytest.raises(ConfigError, match=r"last\.ckpt: .*last\.prev\.ckpt: empty file.*resume=none"):
        resume_path("auto", tmp_path)
    with pytest.raises(ConfigError, match=r"last\.ckpt cannot be loaded.*resume=none"):
        resume_path(str(ckpt_dir / "last.ckpt"), tmp_path)
    assert resume_path("auto", tmp_path / "elsewhere") is None  # no checkpoints: a fresh start


# -- 13: weights_only everywhere --------------------------------------------------------------


def test_every_checkpoint_load_in_the_package_is_weights_only():
    import re

    loads = []
    for path in (ROOT / "neurofm").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.load\(|load_from_checkpoint\(", line) and not line.lstrip().startswith(("#", "``")) \
                    and "``" not in line:
                loads.append((path.relative_to(ROOT), i, line))
    assert loads, "the scan found no checkpoint loads at all"
    unsafe = [f"{p}:{i}: {line.strip()}" for p, i, line in loads if "weights_only=True" not in line]
    assert not unsafe, unsafe
