"""bench/probe_readouts.py: the candidate read-outs of a frozen Neuroformer are what they claim."""

import sys
from pathlib import Path

import numpy as np
import torch

from neurofm.models.neuroformer import EOS, N_SPECIAL, Neuroformer, NeuroformerConfig
from neurofm.recipes.neuroformer import _binned_counts
from neurofm.testing import synthetic_batch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import probe_readouts  # noqa: E402


def test_readouts_match_their_definitions():
    c = NeuroformerConfig(n_units=12, n_embd=32, n_head=4, temporal_hidden=16,
                          window=dict(curr=0.1, prev=0.2, dt=0.01), block_size=dict(id=40, prev_id=60),
                          behavior=[dict(name="position", dim=2, target=True)])
    torch.manual_seed(0)
    model = Neuroformer(c).eval()
    batches = [synthetic_batch(c, 6, rate_hz=10.0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    d = probe_readouts.collect(model, batches, c.n_units, c.window)
    n = 12
    assert d["logp-last"].shape == d["logp-mean"].shape == (n, c.n_units)
    np.testing.assert_allclose(np.exp(d["logp-last"]).sum(1), 1.0, rtol=1e-5)  # distributions over units
    np.testing.assert_allclose(np.exp(d["logp-mean"]).sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        out = [model(b) for b in batches]
    np.testing.assert_allclose(d["pooled"], torch.cat([o["pooled"] for o in out]).numpy(), rtol=1e-5, atol=1e-6)
    # "last": the final state at the position whose next-token target is EOS
    last = []
    for b, o in zip(batches, out):
        tid = b["target_id"][:, :o["hidden"].shape[1]]
        for i in range(len(tid)):
            (pos,) = torch.nonzero(tid[i] == EOS)[0]
            assert bool((tid[i, :pos] >= N_SPECIAL).all())  # every earlier target is a spike
            last.append(o["hidden"][i, pos].numpy())
    np.testing.assert_allclose(d["last"], np.stack(last), rtol=1e-5, atol=1e-6)
    # binned sums: a bin holds state mass exactly where the 50 ms counts have a spike
    counts = np.concatenate([_binned_counts(b, c.n_units, c.window) for b in batches])
    np.testing.assert_array_equal(d["counts"], counts)
    n_bins = counts.shape[1] // c.n_units
    occupied = counts.reshape(n, c.n_units, n_bins).sum(1) > 0
    summed = np.abs(d["binned-sum"].reshape(n, n_bins, -1)).sum(-1) > 0
    np.testing.assert_array_equal(summed, occupied)
    assert occupied.all(axis=0).any() and not occupied.all()  # the check can fail both ways
