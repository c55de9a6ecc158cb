"""Test-wide settings.

One intra-op thread: the suite's models are tiny, and on a 2-core machine shared with
subprocesses (DDP tests, DataLoader workers) a second OpenMP thread only adds contention.
"""

import torch

torch.set_num_threads(1)
