"""Synthetic spike batches for tests, benchmarks and smoke checks (not used by training).

:func:`synthetic_batch` makes a batch in the spike dataset's collate format directly from
Poisson spiking, without a session file, through the tokenizer's own window construction
(:func:`neurofm.tokens.window_sequences`). Realistic recordings (a spiking network with known
connectivity, iEEG with events) are simulated as session files by :mod:`neurofm.data.synthetic`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from neurofm.models.neuroformer import NeuroformerConfig
from neurofm.tokens import N_SPECIAL, PAD, window_sequences

__all__ = ["synthetic_batch"]


def _window(offsets: Tensor, tokens: Tensor, block: int, config: NeuroformerConfig) -> dict[str, Any]:
    """Token sequence of one window from its spikes' dt offsets and ID tokens: the spikes are
    placed at ``offset * dt`` in a window ``[0, (K + 1) dt)`` and tokenized like any window."""
    dt = config.window.dt
    order = torch.argsort(offsets, stable=True)
    times = offsets[order].double().numpy() * dt
    ids, dts, n_dropped = window_sequences(times, tokens[order].long().numpy(), np.zeros(1),
                                           np.array([(config.dt_max + 1) * dt]), block, dt, config.dt_max)
    ids, dts = torch.from_numpy(ids[0]), torch.from_numpy(dts[0])
    return dict(id=ids[:block], dt=dts[:block], target_id=ids[1:], target_dt=dts[1:], mask=ids[:block] != PAD,
                n_dropped=int(n_dropped[0]))


def synthetic_batch(config: NeuroformerConfig, batch_size: int, *, rate_hz: float = 6.3,
                    generator: torch.Generator | None = None, structured: bool = True,
                    t0: float = 1.0) -> dict[str, Any]:
    """A batch in the spike dataset's collate format, from Poisson spiking.

    Every unit fires at ``rate_hz``; with ``structured``, unit ``u`` fires only at dt offset
    ``u mod round(curr/dt)`` (a learnable ID -> dt mapping). Windows are consecutive (one
    ``window.curr`` apart, one session). Adds ``stimulus`` and behaviour keys when the config
    has them (behaviour targets are a function of the spike count, so they are decodable).
    """
    c = config
    g = generator or torch.Generator().manual_seed(0)
    kc = max(c.dt_max_curr, 1)
    rows: dict[str, list] = {k: [] for k in ("id", "dt", "target_id", "target_dt", "mask", "n_dropped",
                                             "id_prev", "dt_prev", "mask_prev", "n_dropped_prev")}
    counts = []

    def window(length_s: float, block: int) -> dict:
        lam = torch.full((c.n_units,), rate_hz * length_s)
        per_unit = torch.poisson(lam, generator=g).long()
        units = torch.repeat_interleave(torch.arange(c.n_units), per_unit)
        k_max = round(length_s / c.window.dt)
        if structured:
            offsets = (units % kc) + kc * torch.randint(0, max(k_max // kc, 1), units.shape, generator=g)
        else:
            offsets = torch.randint(0, max(k_max, 1), units.shape, generator=g)
        return _window(offsets.clamp(max=c.dt_max), units + N_SPECIAL, block, c)

    for _ in range(batch_size):
        cur = window(c.window.curr, c.block_size.id)
        prv = window(c.window.prev, c.block_size.prev_id)
        for k in ("id", "dt", "target_id", "target_dt", "mask"):
            rows[k].append(cur[k])
        rows["n_dropped"].append(cur["n_dropped"])
        rows["id_prev"].append(prv["id"])
        rows["dt_prev"].append(prv["dt"])
        rows["mask_prev"].append(prv["mask"])
        rows["n_dropped_prev"].append(prv["n_dropped"])
        counts.append(int(cur["mask"].sum()) - 2)
    batch: dict[str, Any] = {k: torch.stack(v) if isinstance(v[0], Tensor) else torch.tensor(v)
                             for k, v in rows.items()}
    batch["interval"] = t0 + c.window.curr * torch.arange(1, batch_size + 1, dtype=torch.float64)
    batch["session"] = torch.zeros(batch_size, dtype=torch.long)
    count = torch.tensor(counts, dtype=torch.float32)
    if c.stimulus is not None:
        s = c.stimulus
        batch["stimulus"] = torch.rand(batch_size, s.n_frames, s.height, s.width, generator=g)
    if c.behavior:
        tb = 5
        batch["behavior_seq_t"] = torch.linspace(0, c.window.curr, tb).expand(batch_size, tb).contiguous()
        batch["behavior"], batch["behavior_mask"] = {}, {}
        batch["behavior_seq"], batch["behavior_seq_mask"] = {}, {}
        z = (count - count.mean()) / count.std().clamp(min=1e-6)
        for v in c.behavior:
            if v.task == "classification":
                value = (z > 0).float()[:, None].expand(batch_size, v.dim)
            else:
                value = z[:, None].expand(batch_size, v.dim) + 0.1 * torch.randn(batch_size, v.dim, generator=g)
            batch["behavior"][v.name] = value.contiguous()
            batch["behavior_mask"][v.name] = torch.ones(batch_size, dtype=torch.bool)
            batch["behavior_seq"][v.name] = value[:, None, :].expand(batch_size, tb, v.dim).contiguous()
            batch["behavior_seq_mask"][v.name] = torch.ones(batch_size, tb, dtype=torch.bool)
    return batch
