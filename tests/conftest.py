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
