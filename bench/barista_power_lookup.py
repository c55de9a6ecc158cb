"""How much of BaRISTA's band-power pretraining target is a lookup of where the channel is?

``model.power_target`` (:meth:`neurofm.models.barista.Barista.pretrain_loss`) asks the
pretraining model to predict each masked (channel, patch)'s log band power, standardised per
batch and band. A masked channel's own input is hidden, but its spatial embedding is not: if
the regions' spectra differ, much of that target is predictable from the channel's category
alone, and the term can be met without any token carrying its patch's power.

For one pretraining run's data (its ``config.yaml``: same sessions, segments, blocks and
batches), this computes the target exactly as the loss does (:func:`neurofm.nn.spectral.band_power` in
the bands :func:`neurofm.nn.spectral.resolved_bands` picks, standardised per batch, here over all real
tokens) and scores, on the validation block, the mean of the training block's targets for the
same (parcel, patch index) -- and for the same (session, channel, patch index) -- as the
prediction: R2 per band.

Measured (2026-12-03 16:05, ``bench/barista_quality.py --only subjects --quick`` seed 0, the 3
pretraining subjects at 256 Hz, 64-sample patches: theta, alpha, beta, gamma, high gamma; 17,820
training and 3,240 validation tokens): parcel lookup R2 0.126 / 0.332 / 0.456 / 0.133 / 0.409
(mean 0.291), channel lookup 0.116 / 0.346 / 0.471 / 0.144 / 0.417 (mean 0.299). The power
heads of the masked-position runs reached validation power R2 0.14-0.29 (peaking at 0.28-0.29
after ~300 steps, then falling while the training R2 kept rising to 0.52): no more than where
the channel is gives.

Usage::

    OMP_NUM_THREADS=1 python bench/barista_power_lookup.py /tmp/bpaux/pt1/subj0-pretrain-parcel/config.yaml
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from neurofm.experiment import load_config  # noqa: E402
from neurofm.nn.spectral import band_power, resolved_bands  # noqa: E402
from neurofm.recipes import barista as recipe  # noqa: E402


def targets(dm, split: str, fs: float, n: int, L: int, bands: dict) -> list[tuple]:
    """(parcel, session, channel, patch index, standardised log band powers) per real token."""
    rows = []
    for batch in dm.loader(split):
        real = batch["channel_mask"].bool()
        x = batch["x"].view(*batch["x"].shape[:2], n, L)[real]  # (K, n, L)
        p = band_power(x.reshape(-1, L).float(), fs, bands)
        z = ((p - p.mean(0)) / p.std(0, unbiased=False).clamp(min=1e-6)).view(-1, n, len(bands)).numpy()
        parcel = batch["parcel"][real].numpy()
        session = batch["session"][:, None].expand_as(real)[real].numpy()
        channel = torch.arange(real.shape[1]).expand_as(real)[real].numpy()
        rows += [(parcel[k], session[k], channel[k], j, z[k, j]) for k in range(len(z)) for j in range(n)]
    return rows


def lookup_r2(train: list[tuple], test: list[tuple], key) -> np.ndarray:
    """R2 per band of the training mean for the same key (0 where the key is unseen)."""
    acc = defaultdict(list)
    for r in train:
        acc[key(r)].append(r[4])
    means = {k: np.mean(v, 0) for k, v in acc.items()}
    Z = np.array([r[4] for r in test])
    P = np.array([means.get(key(r), np.zeros(Z.shape[1])) for r in test])
    return 1 - ((Z - P) ** 2).mean(0) / Z.var(0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="a BaRISTA pretraining run's config.yaml")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = recipe.prepare(load_config(str(args.config)))
    cfg.task.mode = "pretrain"
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    fs, L, n = cfg.model.sampling_rate, cfg.model.patch_len, cfg.model.n_patches
    bands = resolved_bands(fs, L)
    train, valid = targets(dm, "train", fs, n, L, bands), targets(dm, "valid", fs, n, L, bands)
    out = {}
    for name, key in (("parcel, patch", lambda r: (r[0], r[3])),
                      ("session-channel, patch", lambda r: (r[1], r[2], r[3]))):
        r2 = lookup_r2(train, valid, key)
        out[name] = dict(zip(bands, map(float, r2)))
        print(f"lookup by {name}: validation R2 " + ", ".join(f"{b} {v:.3f}" for b, v in out[name].items())
              + f"; mean {float(r2.mean()):.3f}")
    print(f"{len(train)} training and {len(valid)} validation tokens")
    return out


if __name__ == "__main__":
    main()
