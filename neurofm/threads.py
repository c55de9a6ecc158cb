"""CPU threads for training: how many, and how idle threads wait.

Torch's CPU kernels split each operation over an OpenMP pool that, by default, has one
thread per core and keeps its threads spinning for a while after each operation. On an idle
machine that is fastest. On a machine shared with other CPU-bound work (a lab server, a
laptop compiling, several runs at once) it is the worst case: every operation waits for its
slowest thread, a thread the OS has descheduled takes a whole time slice to come back, and
the spinning threads burn the cycles the other processes need. The demo job, 2 minutes on
an idle 2-core machine, took 28 minutes at load 5-9 with torch's defaults.

Two settings fix that, both overridable:

* **Wait policy.** ``OMP_WAIT_POLICY=PASSIVE`` makes idle OpenMP threads sleep instead of
  spin. OpenMP reads it once, when torch is imported, so the entry points (``train.py``,
  ``neurofm``) call :func:`set_wait_policy` before importing torch. A value already in the
  environment wins.
* **Thread count** (``trainer.threads``): ``auto`` uses the cores this process may run on
  (``os.sched_getaffinity``) minus the cores other processes keep busy (the 1-minute load
  average), at least 1; never more threads than the process already had (an
  ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` set by the user stands). An integer sets
  it outright.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from neurofm.config import ConfigError

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


def set_wait_policy(policy: str = "PASSIVE") -> None:
    """Make idle OpenMP threads sleep (call before torch is imported; no-op if the
    environment already says)."""
    os.environ.setdefault(WAIT_POLICY_ENV, policy)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None, current: int | None = None) -> int:
    """The ``trainer.threads=auto`` rule: free cores = ``cores - load``, rounded, between 1
    and ``current`` (the process's present intra-op thread count)."""
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    if current is None:
        import torch

        current = torch.get_num_threads()
    return max(1, min(cores, current, int(cores - load + 0.5)))


def resolve_threads(setting: str | int) -> int:
    """``trainer.threads`` (``auto`` or a positive integer) -> a thread count."""
    text = str(setting).strip().lower()
    if text == "auto":
        return auto_threads()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"trainer.threads: {setting!r} is neither 'auto' nor a positive integer "
                          f"(e.g. trainer.threads=1 on a busy machine, trainer.threads={available_cores()} on an "
                          f"idle one)")
    return n


@contextlib.contextmanager
def torch_threads(setting: str | int) -> Iterator[int]:
    """torch's CPU threads set to ``trainer.threads`` (:func:`resolve_threads`) inside the block,
    and what they were restored after it; yields the count."""
    import torch

    threads, before = resolve_threads(setting), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
