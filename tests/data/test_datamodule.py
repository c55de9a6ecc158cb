"""LightningDataModules: loaders per split, no train/valid overlap, reshuffling under a Trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurofm.data.datamodule import IEEGDataModule, SpikeDataModule
from neurofm.data.segmenter import IEEGSegmenter
from neurofm.data.session import SessionWriter
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab


@pytest.fixture(scope="module")
def spike_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dm_spikes")
    rng = np.random.default_rng(0)
    paths = []
    for k, (T, n_units) in enumerate([(12.0, 4), (9.0, 6)]):
        t = np.sort(rng.uniform(0, T, int(T * n_units * 15)))
        bt = np.arange(0, T, 1 / 50)
        with SessionWriter(d / f"s{k}.h5", session_id=f"s{k}") as w:
            w.add_units([f"u{i}" for i in range(n_units)])
            w.add_spikes(t, rng.integers(0, n_units, len(t)), t_start=0.0, t_end=T)
            w.add_behavior("speed", bt, np.stack([bt, 2 * bt], 1))
        paths.append(d / f"s{k}.h5")
    return paths


@pytest.fixture(scope="module")
def ieeg_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dm_ieeg")
    rng = np.random.default_rng(0)
    paths = []
    for k, C in enumerate((3, 5)):
        with SessionWriter(d / f"e{k}.h5", session_id=f"e{k}") as w:
            w.add_continuous(rng.normal(size=(4000, C)).astype(np.float32), 100.0)
            w.add_channels([f"A{i + 1}" for i in range(C)], x=np.arange(C, dtype=float), y=np.zeros(C), z=np.zeros(C),
                           regions={"destrieux": (["ctx_lh_G_front_sup", "ctx_lh_S_central"] * C)[:C]})
        paths.append(d / f"e{k}.h5")
    return paths


def _keys(batch):
    return list(zip(batch["session"].tolist(), np.round(batch["interval"].numpy(), 6).tolist()))


def test_spike_datamodule_map_and_streaming(spike_files):
    for streaming in (False, True):
        dm = SpikeDataModule(spike_files, window_curr=0.05, window_prev=0.05, dt=0.01, block_size=16,
                             block_size_prev=16, batch_size=8, streaming=streaming, seed=1, behavior=["speed"])
        dm.setup("fit")
        tr, va = dm.train_dataloader(), dm.val_dataloader()
        b = next(iter(tr))
        assert b["id"].shape == (8, 16) and "speed" in b["behavior"]
        train_keys = {k for bt in tr for k in _keys(bt)}
        val_keys = {k for bt in va for k in _keys(bt)}
        assert train_keys and val_keys and not train_keys & val_keys
        assert dm.state_dict()["tokenizer"]["vocab"]["units"][0] == "s0/u0"


@pytest.mark.parametrize("streaming", [False, True])
def test_spike_datamodule_packed_batches_hold_the_padded_ones_tokens(spike_files, streaming):
    kwargs = dict(window_curr=0.05, window_prev=0.05, dt=0.01, block_size=16, block_size_prev=16, batch_size=8,
                  streaming=streaming, seed=1, behavior=["speed"])
    padded, packed = SpikeDataModule(spike_files, **kwargs), SpikeDataModule(spike_files, pack=True, **kwargs)
    for dm in (padded, packed):
        dm.setup("fit")
    n = 0
    for b, p in zip(padded.train_dataloader(), packed.train_dataloader()):
        assert _keys(b) == _keys(p) and "mask" not in p and p["id"].dim() == 1
        for key, mask_key, cu in (("id", "mask", "cu_seqlens"), ("target_dt", "mask", "cu_seqlens"),
                                  ("id_prev", "mask_prev", "cu_seqlens_prev")):
            assert torch.equal(p[key], b[key][b[mask_key]])
            assert p[cu].tolist() == [0] + b[mask_key].sum(1).cumsum(0).tolist()
        assert p["max_seqlen"] == int(b["mask"].sum(1).max())
        assert torch.equal(p["behavior"]["speed"], b["behavior"]["speed"])
        n += 1
    assert n == len(padded.train_dataloader()) > 1


def test_tokenizer_without_vocabulary_gets_one_built_from_the_sessions(spike_files):
    """An empty tokenizer vocabulary means "not given" (it used to fail with UnknownUnitError)."""
    tk = SpikeTokenizer(0.05, 0.05, 0.01, 16, 16)
    dm = SpikeDataModule(spike_files, tokenizer=tk, batch_size=4)
    dm.setup("fit")
    assert dm.vocab.n_units == 4 + 6 and tk.vocab is dm.vocab and dm.tokenizer is tk
    assert next(iter(dm.train_dataloader()))["id"].shape == (4, 16)
    # a tokenizer that HAS a vocabulary (e.g. a checkpoint's) keeps it; extend_vocab appends
    known = UnitVocab(["s0/u0", "s0/u1", "s0/u2", "s0/u3"])
    dm = SpikeDataModule(spike_files, tokenizer=SpikeTokenizer(0.05, 0.05, 0.01, 16, 16, known), extend_vocab=True)
    assert dm.vocab is known and known.units[:4] == ["s0/u0", "s0/u1", "s0/u2", "s0/u3"] and known.n_units == 10


def test_datamodule_under_lightning_trainer_reshuffles_each_epoch(spike_files):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen: dict[int, list] = {}

        def training_step(self, batch, i):
            self.seen.setdefault(self.current_epoch, []).extend(_keys(batch))
            return (self.w * batch["id"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = SpikeDataModule(spike_files, block_size=16, block_size_prev=16, batch_size=16, streaming=True, seed=2)
    probe = Probe()
    trainer = L.Trainer(max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(probe, datamodule=dm)
    assert sorted(probe.seen[0]) == sorted(probe.seen[1]) and probe.seen[0] != probe.seen[1]


def _bins(ids, dts):
    """Per row, the (dt, id) pairs of the spike tokens sorted: the multiset of units per dt bin."""
    out = []
    for i, d in zip(ids.tolist(), dts.tolist()):
        out.append(sorted((b, u) for u, b in zip(i, d) if u >= UnitVocab.N_SPECIAL))
    return out


def _bin_kwargs(**kw):
    # ~150 spikes/s over 4-6 units: most 10 ms bins of a 100 ms window hold 2+ spikes
    return dict(window_curr=0.1, window_prev=0.05, dt=0.01, block_size=40, block_size_prev=24, batch_size=8,
                seed=3, **kw)


@pytest.fixture(scope="module")
def dense_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("dm_dense")
    rng = np.random.default_rng(1)
    paths = []
    for k, (T, n_units) in enumerate([(24.0, 4), (18.0, 6)]):
        t = np.sort(rng.uniform(0, T, int(T * 150)))
        with SessionWriter(d / f"d{k}.h5", session_id=f"d{k}") as w:
            w.add_units([f"u{i}" for i in range(n_units)])
            w.add_spikes(t, rng.integers(0, n_units, len(t)), t_start=0.0, t_end=T)
        paths.append(d / f"d{k}.h5")
    return paths


def test_within_bin_order_is_the_tokenizers_by_default(dense_files):
    """data.shuffle_within_bin off (the default): every training batch is the tokenizer's own
    output for its windows (the order the golden vectors pin down)."""
    dm = SpikeDataModule(dense_files, **_bin_kwargs())
    assert dm.shuffle_within_bin is False
    dm.setup("fit")
    n = 0
    for b in dm.train_dataloader():
        for s in range(len(dense_files)):
            rows = (b["session"] == s).numpy()
            if rows.any():
                ref = dm.tokenizer.tokenize_session(dm.sessions[s], b["interval"].numpy()[rows])
                for key in ("id", "target_id", "dt", "id_prev", "dt_prev"):
                    assert np.array_equal(b[key].numpy()[rows], ref[key]), key
        n += 1
    assert n == len(dm.train_dataloader()) > 1


@pytest.mark.parametrize("streaming", [False, True])
def test_within_bin_shuffle_reorders_only_inside_bins_and_only_training(dense_files, streaming):
    off = SpikeDataModule(dense_files, streaming=streaming, **_bin_kwargs())
    on = SpikeDataModule(dense_files, streaming=streaming, shuffle_within_bin=True, **_bin_kwargs())
    again = SpikeDataModule(dense_files, streaming=streaming, shuffle_within_bin=True, **_bin_kwargs())
    for dm in (off, on, again):
        dm.setup("fit")
    moved = 0
    for a, b, c in zip(off.train_dataloader(), on.train_dataloader(), again.train_dataloader()):
        assert _keys(a) == _keys(b)  # the same windows in the same batches: only token order differs
        for key in ("dt", "target_dt", "mask", "dt_prev", "mask_prev"):
            assert torch.equal(a[key], b[key]), key
        assert torch.equal(b["id"][:, 1:], b["target_id"][:, :-1])  # inputs and targets: one sequence
        assert torch.equal(a["id"][:, 0], b["id"][:, 0]) and torch.equal(a["target_id"] < 3, b["target_id"] < 3)
        assert _bins(a["target_id"], a["target_dt"]) == _bins(b["target_id"], b["target_dt"])
        assert _bins(a["id_prev"], a["dt_prev"]) == _bins(b["id_prev"], b["dt_prev"])
        assert all(torch.equal(b[k], c[k]) for k in ("id", "target_id", "id_prev"))  # seeded: reproducible
        moved += int((a["target_id"] != b["target_id"]).any(1).sum()) + int((a["id_prev"] != b["id_prev"]).any(1).sum())
    assert moved > 0
    for split in ("valid", "test"):  # evaluation reads the canonical order
        pairs = list(zip(off.loader(split), on.loader(split)))
        assert pairs and all(torch.equal(a[k], b[k]) for a, b in pairs for k in ("id", "target_id", "id_prev"))


def test_within_bin_shuffle_draws_a_new_order_each_epoch_and_per_seed(dense_files):
    def orders(seed, epoch):
        dm = SpikeDataModule(dense_files, shuffle_within_bin=True, **{**_bin_kwargs(), "seed": seed})
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return {k: row for b in loader for k, row in zip(_keys(b), b["target_id"].tolist())}

    e0, e1, e0_again, other_seed = orders(3, 0), orders(3, 1), orders(3, 0), orders(4, 0)
    assert e0 == e0_again and set(e0) == set(e1) == set(other_seed)
    changed = sum(e0[k] != e1[k] for k in e0)
    assert changed > len(e0) // 4, (changed, len(e0))
    assert sum(e0[k] != other_seed[k] for k in e0) > len(e0) // 4


def test_within_bin_shuffle_then_pack(dense_files):
    """With pack=True the batch is shuffled while padded, then packed: the same tokens."""
    from neurofm.tokens import pack_spikes

    padded = SpikeDataModule(dense_files, shuffle_within_bin=True, **_bin_kwargs())
    packed = SpikeDataModule(dense_files, shuffle_within_bin=True, pack=True, **_bin_kwargs())
    for dm in (padded, packed):
        dm.setup("fit")
    for a, p in zip(padded.train_dataloader(), packed.train_dataloader()):
        ref = pack_spikes(a)
        assert all(torch.equal(ref[k], p[k]) for k in ("id", "target_id", "dt", "id_prev", "cu_seqlens"))


def test_ieeg_datamodule(ieeg_files):
    dm = IEEGDataModule(ieeg_files, IEEGSegmenter(segment_s=2.0, n_patches=4), batch_size=4, streaming=True)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape[0] == 4 and b["x"].shape[2] == 200 and b["channel_mask"].any()
    assert dm.state_dict()["spatial_vocab"]["parcels"] == ["ctx_lh_G_front_sup", "ctx_lh_S_central"]
