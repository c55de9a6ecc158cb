"""Test-wide settings.

One intra-op thread: the suite's models are tiny, and on a 2-core machine shared with
subprocesses (DDP tests, DataLoader workers) a second OpenMP thread only adds contention.
"""

import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def sigkill_once_checkpointed():
    """``kill(proc, last, min_step, timeout_s) -> step``: SIGKILL a training subprocess as soon as
    its ``last.ckpt`` records ``global_step >= min_step`` (saved atomically, so an existing file is
    whole); returns that step, or None when the run ended (or ``timeout_s`` passed) first. The
    process is always reaped; a run not killed in time is killed anyway."""

    def kill(proc: subprocess.Popen, last: Path, min_step: int, timeout_s: float) -> int | None:
        killed_at = None
        try:
            deadline = time.time() + timeout_s
            while time.time() < deadline and proc.poll() is None:
                step = _checkpoint_step(last) if last.exists() else None
                if step is not None and step >= min_step:
                    proc.send_signal(signal.SIGKILL)
                    killed_at = step
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None and killed_at is None:
                proc.kill()
            proc.wait(timeout=60)
        return killed_at

    return kill


def _checkpoint_step(path: Path) -> int:
    """global_step of a checkpoint, read with weights_only=True: it must hold no pickled objects."""
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture
def checkpoint_step():
    """``step(path) -> int``: a checkpoint's global_step, read with weights_only=True."""
    return _checkpoint_step


@pytest.fixture
def jittered_open_field(tmp_path):
    """An open field with long rests, tracked at 30 Hz with 3 mm jitter (issue 10's failure).

    ``simulate_place_cells`` (slow foraging runs of 5-15 cm/s for ~20 s, rests of 30-90 s, 600 s),
    then its position plus Gaussian noise of 0.3 cm per coordinate and sample, written without
    the speed channel, so the moving rule derives speed from the jittery position. Returns
    ``(jittered_path, simulated_path, ts, true_speed)``: the simulated file keeps its
    ``/behavior/speed``; ``ts`` (s) and ``true_speed`` (cm/s) are the jitter-free truth.
    """
    import numpy as np

    from neurofm.data.session import Session, SessionWriter
    from neurofm.data.synthetic import simulate_place_cells

    sim = simulate_place_cells(tmp_path / "open-field.h5", n_units=8, duration=600.0, seed=3, run_s=20.0,
                               rest_s=60.0, run_speed=(5.0, 15.0), behavior_rate=30.0)
    with Session(sim) as s:
        times, units = s.spikes()
        ts, position = s.behavior("position")
        _, speed = s.behavior("speed")
        unit_ids, t_start, t_end = s.unit_ids, s.t_start, s.t_end
    jittered = position + np.random.default_rng(0).normal(0.0, 0.3, position.shape)
    path = tmp_path / "open-field-jitter.h5"
    with SessionWriter(path, session_id="open-field-jitter") as w:
        w.add_units(unit_ids)
        w.add_spikes(times, units, t_start=t_start, t_end=t_end)
        w.add_behavior("position", ts, jittered.astype(np.float32), unit="cm")
    return path, sim, ts, np.asarray(speed, dtype=np.float64)


@pytest.fixture(autouse=True)
def _progress_silence_per_test():
    """neurofm.progress shares one silence clock between passes that follow each other; each test
    starts its own, so a line owed to an earlier test's passes never lands in another's stderr."""
    from neurofm import progress

    progress._silence.update(since=None, pass_ended=None)
    yield
