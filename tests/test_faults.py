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


def test_resume_mid_epoch_logs_every_step_once(sim, tmp_path):
    """Killed after a step checkpoint: the rows logged between the checkpoint and the crash
    are done again by the resumed run, so they are dropped from the old log, not doubled."""
    import lightning as L

    from neurofm.experiment import load_config, run

    run_dir = tmp_path / "run"
    args = [f"run_dir={run_dir}", f"data.simulate.path={sim}", *TINY, "trainer.max_epochs=2",
            "trainer.limit_train_batches=8", "trainer.checkpoint_every_n_steps=3"]

    class CrashAtStep11(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 11:
                raise _Crash("simulated crash at step 11")

    with pytest.raises(_Crash):
        run(load_config(None, args), extra_callbacks=[CrashAtStep11()])
    assert int(_ckpt(run_dir / "checkpoints" / "last.ckpt")["global_step"]) == 9
    run(load_config(None, args))
    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = [(int(r["step"]), r["epoch"], bool(r.get("val/total")), bool(r.get("train/total_epoch")))
                for r in csv.DictReader(f)]
    assert len(rows) == len(set(rows)), "a step was logged twice"
    assert {row[0] for row in rows} == set(range(16))


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


# -- 4: a full disk during SessionWriter / convert ----------------------------------------------

_FULL_DISK_SCRIPT = r"""
import resource, signal, sys
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
from neurofm.data.session import SessionWriter
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
rng = np.random.default_rng(0)
try:
    with SessionWriter(sys.argv[1], session_id="s") as w:
        w.add_units([f"u{i}" for i in range(10)])
        w.add_spikes(np.sort(rng.uniform(0, 100, 300_000)), rng.integers(0, 10, 300_000))
except OSError as e:
    print(type(e).__name__, e)
"""


def test_a_write_failing_mid_file_is_an_output_error_without_crash_or_temp_file(tmp_path):
    """A real write failure inside HDF5 (the file size limit makes write(2) fail, as a full disk
    does): h5py used to segfault on close (exit 139) and leave .NAME.h5.*.tmp."""
    out = tmp_path / "out.h5"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_SCRIPT, str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("OutputError") and str(out) in proc.stdout and "cannot write this output" in proc.stdout
    assert os.listdir(tmp_path) == []


class _FullDisk:
    """A raw file on a disk with ``room`` bytes left: then every write raises ENOSPC."""

    def __init__(self, f, room: int):
        self._f, self.room = f, room

    def write(self, b):
        n = memoryview(b).nbytes
        if n > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= n
        return self._f.write(b)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _disk_with_room(monkeypatch, room: int) -> None:
    from neurofm.data import session as session_mod

    real_init = session_mod._OutputFile.__init__

    def init(self, path):
        real_init(self, path)
        self._f = _FullDisk(self._f, room)

    monkeypatch.setattr(session_mod._OutputFile, "__init__", init)


def test_enospc_during_convert_names_the_output_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    from neurofm import cli

    nwb = ROOT.parent / "shared" / "data" / "spikes" / "linear-track.nwb"
    if not nwb.exists():
        pytest.skip("../shared/data is absent (a user's clone)")
    _disk_with_room(monkeypatch, 100_000)
    out = tmp_path / "lt.h5"
    assert cli.main(["convert", "nwb", str(nwb), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: cannot write this output: no space left on the device" in err, err
    assert "truncated" not in err and "damaged" not in err
    assert os.listdir(tmp_path) == []


def test_enospc_in_session_writer_is_reported_with_the_output_and_the_fix(tmp_path, monkeypatch):
    _disk_with_room(monkeypatch, 4096)
    out = tmp_path / "s.h5"
    with pytest.raises(OutputError, match=r"s\.h5: cannot write this output: no space left on the device.*free space"):
        with SessionWriter(out, session_id="s") as w:
            w.add_units(["a", "b"])
            w.add_spikes(np.linspace(0, 10, 50_000), np.zeros(50_000, dtype=int))
    assert os.listdir(tmp_path) == []
    # the same when the disk fills up only while the file is finished (close flushes first)
    _disk_with_room(monkeypatch, 0)
    w = SessionWriter(out, session_id="s")
    with pytest.raises(OutputError, match="no space left"):
        w.close()
    assert os.listdir(tmp_path) == []


# -- 7: outputs follow the umask ------------------------------------------------------------


def test_outputs_get_the_users_umask_not_0600(tmp_path):
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    old = os.umask(0o002)  # a lab's shared-group setting
    try:
        with SessionWriter(tmp_path / "s.h5", session_id="s") as w:
            w.add_units(["a"])
            w.add_spikes([0.5, 1.0], [0, 0])
        folder = Neuroformer(NeuroformerConfig.small(n_units=2)).save_pretrained(tmp_path / "m", card="# card\n")
        from neurofm.atomic import atomic_write

        atomic_write(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(old)
    for p in [tmp_path / "s.h5", folder / "model.safetensors", folder / "config.json", folder / "README.md",
              tmp_path / "metrics.json"]:
        assert oct(p.stat().st_mode & 0o777) == oct(0o664), p


# -- 9: zero spikes ----------------------------------------------------------------------------


def test_a_session_without_spikes_writes_and_reads(tmp_path):
    with SessionWriter(tmp_path / "silent.h5", session_id="s") as w:
        w.add_units(["a", "b"])
        w.add_spikes([], [], t_start=0.0, t_end=5.0)
    with Session(tmp_path / "silent.h5") as s:
        s.validate()
        t, u = s.spikes(0.0, 5.0)
        assert t.shape == u.shape == (0,) and s.n_units == 2 and s.duration == 5.0


def test_an_nwb_whose_units_are_all_silent_converts(tmp_path):
    pynwb = pytest.importorskip("pynwb")
    from datetime import datetime, timezone

    from neurofm.data.nwb import convert_nwb

    nwb = pynwb.NWBFile(session_description="silent", identifier="x", session_start_time=datetime.now(timezone.utc))
    for _ in range(3):
        nwb.add_unit(spike_times=[])
    path = tmp_path / "silent.nwb"
    with pynwb.NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    out = convert_nwb(path, tmp_path / "silent.h5")  # failed with "Chunk shape must not be greater than data shape"
    with Session(out) as s:
        s.validate()
        assert s.n_units == 3 and s.n_spikes == 0


# -- 10: --no-overwrite cannot be raced -----------------------------------------------------------


def test_no_overwrite_never_replaces_a_file_created_during_the_write(tmp_path):
    out = tmp_path / "s.h5"
    w = SessionWriter(out, session_id="s", overwrite=False)
    w.add_units(["a"])
    w.add_spikes([0.5], [0])
    out.write_bytes(b"someone else's file")  # appears while the session is being written
    with pytest.raises(FileExistsError, match="appeared while"):
        w.close()
    assert out.read_bytes() == b"someone else's file"
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]


# -- 12: output-side failures named as such; damaged files ---------------------------------------


def test_output_path_is_a_directory_or_unwritable_is_named_as_the_output(tmp_path, monkeypatch):
    import tempfile

    (tmp_path / "dir.h5").mkdir()
    with pytest.raises(OutputError, match=r"dir\.h5: cannot write this output: is a directory"):
        SessionWriter(tmp_path / "dir.h5", session_id="s")

    def no_permission(*a, **k):  # what a folder without write permission gives (root ignores modes)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_permission)
    with pytest.raises(OutputError, match=r"locked/s\.h5: cannot write this output: no permission to write in "
                                          r".*locked.*choose a folder you can write to"):
        SessionWriter(tmp_path / "locked" / "s.h5", session_id="s")
    assert not (tmp_path / "locked" / "s.h5").exists()


def test_convert_into_a_directory_is_not_called_a_damaged_input(tmp_path, capsys):
    from neurofm import cli

    edf = ROOT.parent / "shared" / "data" / "ieeg" / "sample_seeg.edf"
    if not edf.exists():
        pytest.skip("../shared/data is absent (a user's clone)")
    (tmp_path / "out.h5").mkdir()
    assert cli.main(["convert", "ieeg", str(edf), str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err
    assert "out.h5: cannot write this output: is a directory" in err and "damaged" not in err


def _spike_file(path: Path, n: int = 20_000) -> Path:
    rng = np.random.default_rng(0)
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b", "c"])
        w.add_spikes(np.sort(rng.uniform(0, 20, n)), rng.integers(0, 3, n))
    return path


def test_a_damaged_chunk_is_an_error_naming_the_file(tmp_path):
    path = _spike_file(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        info = f["spikes/times"].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 16)
        fh.write(b"\xff" * 64)
    with Session(path) as s, pytest.raises(Exception) as e:
        s.spikes(0.0, 20.0)
    assert type(e.value).__name__ == "SessionFormatError"
    assert str(path) in str(e.value) and "/spikes" in str(e.value) and "damaged" in str(e.value)


def test_a_non_numeric_format_attribute_is_a_clear_error(tmp_path):
    path = _spike_file(tmp_path / "s.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["neurofm_format"] = "one"
    with pytest.raises(ValueError, match=r"s\.h5: / attrs neurofm_format: 'one' is not a format version number"):
        Session(path)


def test_units_and_n_units_mismatch_names_the_folder(tmp_path):
    from neurofm.hub import PretrainedError, load_pretrained
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    folder = Neuroformer(NeuroformerConfig.small(n_units=3, units=["a", "b", "c"])).save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["units"] = ["a", "b"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match=r"m/config\.json: config: .*units: has 2 names for n_units=3"):
        load_pretrained(folder)


# -- 5: keys missing deep inside a pretrained config.json -------------------------------------------


def test_keys_missing_deep_in_config_json_are_each_named(tmp_path):
    from neurofm.hub import load_pretrained
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    folder = Neuroformer(NeuroformerConfig.small(n_units=3)).save_pretrained(tmp_path / "m")
    meta = json.loads((folder / "config.json").read_text())
    del meta["config"]["window"]["curr"], meta["config"]["dropout"]["attn"]
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning) as rec:
        load_pretrained(folder)
    text = " ".join(str(w.message) for w in rec)
    assert "2 key(s) were absent" in text and "window.curr = 0.05" in text and "dropout.attn = 0.2" in text


# -- 6: session contents checked before training -------------------------------------------------


def _edit(path: Path, dataset: str, values) -> None:
    with h5py.File(path, "r+") as f:
        del f[dataset]
        f[dataset] = values


@pytest.mark.parametrize("damage, field, words", [
    ("unit_range", "/spikes/unit_index", "outside [0, 3)"),
    ("stale_index", "/spikes/index", "does not match /spikes/times"),
    ("int_times", "/spikes/times", "must be float64"),
    ("nan_time", "/spikes/times", "NaN or inf"),
    ("unsorted", "/spikes/times", "not sorted"),
    ("dup_units", "/units/id", "not unique"),
    ("behavior_ts", "/behavior/speed/timestamps", "do not increase"),
])
def test_validate_finds_bad_contents_naming_file_and_path(tmp_path, damage, field, words, capsys):
    from neurofm import cli
    from neurofm.data.session import SessionFormatError, validate_sessions

    path = tmp_path / "s.h5"
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0, 20, 2000))
    with SessionWriter(path, session_id="s") as w:
        w.add_units(["a", "b", "c"])
        w.add_spikes(t, rng.integers(0, 3, t.size))
        w.add_behavior("speed", np.arange(0, 20, 0.1), np.ones(200))
    assert cli.main(["validate", str(path)]) == 0
    with h5py.File(path, "r") as f:
        units = f["spikes/unit_index"][()]
    if damage == "unit_range":
        units[100] = 3
        _edit(path, "spikes/unit_index", units)
    elif damage == "stale_index":
        _edit(path, "spikes/times", t + 2.5)  # times edited in place, index left as it was
    elif damage == "int_times":
        _edit(path, "spikes/times", np.round(t * 1000).astype(np.int64))
    elif damage == "nan_time":
        bad = t.copy()
        bad[7] = np.nan
        _edit(path, "spikes/times", bad)
    elif damage == "unsorted":
        _edit(path, "spikes/times", t[::-1].copy())
    elif damage == "dup_units":
        _edit(path, "units/id", np.asarray(["a", "b", "a"], dtype=object).astype(h5py.string_dtype()))
    elif damage == "behavior_ts":
        ts = np.arange(0, 20, 0.1)
        ts[50] = ts[10]
        _edit(path, "behavior/speed/timestamps", ts)
    with Session(path) as s, pytest.raises(SessionFormatError) as e:
        validate_sessions([s])
    assert str(path) in str(e.value) and field in str(e.value) and words in str(e.value), str(e.value)
    capsys.readouterr()
    assert cli.main(["validate", str(path)]) == 2
    assert field in capsys.readouterr().err


def test_data_module_refuses_a_bad_session_before_training(tmp_path):
    from neurofm.data.datamodule import SpikeDataModule
    from neurofm.data.session import SessionFormatError

    path = _spike_file(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        units = f["spikes/unit_index"][()]
    units[-1] = 7
    _edit(path, "spikes/unit_index", units)
    with pytest.raises(SessionFormatError, match=r"s\.h5: /spikes/unit_index: spike \d+ has unit index 7"):
        SpikeDataModule([path])


# -- 8: electrodes.tsv ---------------------------------------------------------------------------


def test_electrodes_tsv_duplicates_and_decimal_commas_are_errors(tmp_path):
    from neurofm.data.ieeg import read_electrodes_tsv
    from neurofm.data.session import ConvertError

    dup = tmp_path / "dup_electrodes.tsv"
    dup.write_text("name\tx\ty\tz\nA1\t1\t2\t3\nA2\t1\t2\t4\na1\t5\t5\t5\n")
    with pytest.raises(ConvertError, match=r"dup_electrodes\.tsv: name: 1 electrode name\(s\) appear more than once.*"
                                           r"'A1' in rows \[1, 3\]"):
        read_electrodes_tsv(dup)
    comma = tmp_path / "comma_electrodes.tsv"
    comma.write_text("name\tx\ty\tz\nA1\t1\t2\t3\nA2\t12,5\t2\t4\n")
    with pytest.raises(ConvertError, match=r"comma_electrodes\.tsv: column x, row 2 \('A2'\): '12,5' is not a number"):
        read_electrodes_tsv(comma)
    ok = tmp_path / "ok_electrodes.tsv"
    ok.write_text("name\tx\ty\tz\nA1\t1\tn/a\t3\n")
    assert np.isnan(read_electrodes_tsv(ok)["xyz"][0, 1])


# -- 1: the step / time schedule of last.ckpt ------------------------------------------------------


def test_last_checkpoint_schedule_by_steps_and_minutes(tmp_path, monkeypatch):
    """Every N optimizer steps, every M minutes (decided by rank 0 for all ranks), never in the
    middle of a gradient accumulation, never twice for one step."""
    from types import SimpleNamespace

    import neurofm.experiment as ex

    saved, broadcasts = [], []
    trainer = SimpleNamespace(global_step=0, sanity_checking=False,
                              strategy=SimpleNamespace(broadcast=lambda x: broadcasts.append(x) or x),
                              save_checkpoint=lambda p, weights_only=None: saved.append(trainer.global_step))
    clock = {"t": 1000.0}
    monkeypatch.setattr(ex.time, "monotonic", lambda: clock["t"])
    cb = ex._last_checkpoint(tmp_path, every_n_steps=4, every_minutes=10.0)
    cb.on_train_start(trainer, None)
    for batch in range(24):  # accumulate_grad_batches=2: the step advances every second batch
        trainer.global_step = (batch + 1) // 2
        clock["t"] += 60.0 if batch != 13 else 600.0  # one slow batch
        cb.on_train_batch_end(trainer, None, None, None, batch)
    cb.on_train_epoch_end(trainer, None)
    cb.on_train_end(trainer, None)
    # steps 4 and 8 by count, 7 by time (10 min after the save at step 4), 12 by count, no repeat at the end
    assert saved == [4, 7, 8, 12], saved
    assert len(broadcasts) == 12  # once per optimizer step, on every rank


def test_train_into_a_run_dir_that_is_a_file_is_a_clean_output_error(sim, tmp_path, capsys):
    from neurofm.experiment import main as train_main

    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    code = train_main([f"run_dir={blocker / 'sub'}", f"data.simulate.path={sim}", *TINY, "trainer.max_epochs=1"])
    err = capsys.readouterr().err
    # the last line is the error, printed without a traceback (earlier lines may hold logging
    # noise from handlers that earlier tests in this process bound to their own stderr)
    assert code == 2 and ": error: " in err.strip().splitlines()[-1], err[-2000:]
    assert "cannot write this output" in err and f"{blocker} is a file, not a folder" in err
