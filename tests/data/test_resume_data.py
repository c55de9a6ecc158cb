"""Exact mid-epoch resume of the training loaders: same batches, same steps, same weights.

Run A trains 2 epochs without a break; run B checkpoints every ``k`` steps and crashes at
step ``k + 1``; run C resumes from B's ``last.ckpt``. B's batches up to the checkpoint
followed by C's must be A's batches, in order, and C must end at A's step with A's weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurofm.data.datamodule import SpikeDataModule
from neurofm.data.datasets import (EpochDataLoader, ResumableDataLoader, SpikeWindowDataset, StreamingSpikeDataset,
                                   collate_spikes)
from neurofm.data.samplers import BlockShuffleSampler
from neurofm.data.session import Session, SessionWriter
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab

L = pytest.importorskip("lightning")

BATCH = 8
MAX_EPOCHS = 2


@pytest.fixture(scope="module")
def spike_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "s0.h5"
    rng = np.random.default_rng(0)
    T, n_units = 6.0, 5
    t = np.sort(rng.uniform(0, T, int(T * n_units * 20)))
    with SessionWriter(path, session_id="s0") as w:
        w.add_units([f"u{i}" for i in range(n_units)])
        w.add_spikes(t, rng.integers(0, n_units, len(t)), t_start=0.0, t_end=T)
    return path


def _keys(batch) -> tuple:
    """(session, interval) of every window of a batch: what identifies the data."""
    return tuple(zip(batch["session"].tolist(), np.round(batch["interval"].numpy(), 6).tolist()))


def _datamodule(path, streaming: bool, num_workers: int) -> SpikeDataModule:
    return SpikeDataModule([path], window_curr=0.05, window_prev=0.05, dt=0.01, block_size=12, block_size_prev=12,
                           batch_size=BATCH, streaming=streaming, num_workers=num_workers, seed=3, shuffle_block=4,
                           block_windows=8, shuffle_buffer=12)


class Tiny(L.LightningModule):
    """A linear model over a few numbers computed from each batch; records the batches it trains on."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)
        with torch.no_grad():
            for p in self.lin.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(_keys(batch))
        x = torch.stack([batch["id"].float().mean(1) / 10, batch["dt"].float().mean(1) / 10,
                         batch["interval"].float() / 6], dim=1)  # (B, 3)
        y = batch["mask"].float().sum(1) / 12  # (B,)
        return ((self.lin(x).squeeze(1) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


def _trainer(root, callbacks=(), checkpointing=False):
    return L.Trainer(max_epochs=MAX_EPOCHS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, deterministic=True,
                     enable_checkpointing=checkpointing, callbacks=list(callbacks), default_root_dir=root)


_UNINTERRUPTED: dict = {}


def _run_a(path, tmp_path_factory, streaming, num_workers):
    key = (streaming, num_workers)
    if key not in _UNINTERRUPTED:
        model, trainer = Tiny(), _trainer(tmp_path_factory.mktemp("runA"))
        trainer.fit(model, datamodule=_datamodule(path, streaming, num_workers))
        _UNINTERRUPTED[key] = (model.seen, trainer.global_step, {k: v.clone() for k, v in model.state_dict().items()})
    return _UNINTERRUPTED[key]


@pytest.mark.parametrize("streaming,num_workers,where", [
    (False, 0, "epoch0"), (False, 2, "epoch1"), (False, 0, "epoch_end"),
    (True, 0, "epoch1"), (True, 2, "epoch0"), (True, 0, "epoch_end"),
])
def test_resume_mid_epoch_replays_the_uninterrupted_run(spike_file, tmp_path_factory, streaming, num_workers, where):
    seen_a, steps_a, weights_a = _run_a(spike_file, tmp_path_factory, streaming, num_workers)
    per_epoch = steps_a // MAX_EPOCHS
    assert steps_a == len(seen_a) == MAX_EPOCHS * per_epoch and per_epoch >= 6
    assert len({w for b in seen_a[:per_epoch] for w in b}) == sum(len(b) for b in seen_a[:per_epoch])
    k = {"epoch0": per_epoch // 2, "epoch1": per_epoch + 3, "epoch_end": per_epoch}[where]

    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    model_b = Tiny()
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=k, save_last=True)
    with pytest.raises(Crash):
        _trainer(tmp_path_factory.mktemp("runB"), [CrashAt(k + 1), saver], checkpointing=True).fit(
            model_b, datamodule=_datamodule(spike_file, streaming, num_workers))
    assert model_b.seen == seen_a[:k + 1]  # B ran one step past its checkpoint
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert state["global_step"] == k
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    epoch_of_k = (k - 1) // per_epoch
    assert loader_state[0]["epoch"] == epoch_of_k and loader_state[0]["batches"] == k - per_epoch * epoch_of_k

    model_c = Tiny()
    trainer_c = _trainer(tmp_path_factory.mktemp("runC"))
    trainer_c.fit(model_c, datamodule=_datamodule(spike_file, streaming, num_workers), ckpt_path=ckpt_dir / "last.ckpt")
    assert model_b.seen[:k] + model_c.seen == seen_a
    assert trainer_c.global_step == steps_a
    for name, w in model_c.state_dict().items():
        assert torch.equal(w, weights_a[name]), name


# --------------------------------------------------------------------------------------------
# the loaders on their own: every DDP rank resumes inside its own share, skipped windows unread
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(spike_file):
    return SpikeTokenizer(0.05, 0.05, 0.01, 12, 12, UnitVocab.from_sessions([Session(spike_file)]))


def _map_loader(path, tokenizer, rank, world, num_workers, epoch):
    ds = SpikeWindowDataset([path], tokenizer, "train")
    sampler = BlockShuffleSampler(ds, num_replicas=world, rank=rank, seed=5, block=4)
    sampler.set_epoch(epoch)
    return ResumableDataLoader(ds, batch_size=BATCH, sampler=sampler, collate_fn=collate_spikes,
                               num_workers=num_workers)


def _stream_loader(path, tokenizer, rank, world, num_workers, epoch):
    ds = StreamingSpikeDataset([path], tokenizer, "train", batch_size=BATCH, seed=5, block_windows=8,
                               shuffle_buffer=12, rank=rank, world_size=world, num_workers=num_workers)
    return EpochDataLoader(ds, batch_size=None, num_workers=num_workers, epoch_fn=lambda: epoch)


@pytest.mark.parametrize("make", [_map_loader, _stream_loader])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_resumes_its_own_share(spike_file, tokenizer, make, num_workers):
    world, epoch, k = 2, 1, 3
    full = [[_keys(b) for b in make(spike_file, tokenizer, r, world, num_workers, epoch)] for r in range(world)]
    assert full[0] != full[1] and len(full[0]) == len(full[1]) > k + 1
    first = make(spike_file, tokenizer, 0, world, num_workers, epoch)
    it = iter(first)
    head = [_keys(next(it)) for _ in range(k)]
    state = first.state_dict()  # rank 0's state: the one a Lightning checkpoint holds
    del it
    assert head == full[0][:k] and state["epoch"] == epoch and state["batches"] == k
    for r in range(world):
        again = make(spike_file, tokenizer, r, world, num_workers, epoch)
        again.load_state_dict(state)
        assert [_keys(b) for b in again] == full[r][k:]
        assert [_keys(b) for b in again] == full[r]  # the skip is used once


def test_skipped_batches_are_not_read(spike_file, tokenizer, monkeypatch):
    full = [_keys(b) for b in _map_loader(spike_file, tokenizer, 0, 1, 0, 0)]
    k = 4
    got = []
    monkeypatch.setattr(SpikeWindowDataset, "__getitem__",
                        lambda self, i, _get=SpikeWindowDataset.__getitem__: got.append(i) or _get(self, i))
    loader = _map_loader(spike_file, tokenizer, 0, 1, 0, 0)
    loader.load_state_dict({"epoch": 0, "batches": k})
    assert [_keys(b) for b in loader] == full[k:]
    assert len(got) == sum(len(b) for b in full[k:])  # exactly the windows of the remaining batches

    stream = [_keys(b) for b in _stream_loader(spike_file, tokenizer, 0, 1, 0, 0)]
    reads = []
    from neurofm.data.datasets import _SpikeReader

    monkeypatch.setattr(_SpikeReader, "read",
                        lambda self, s, ends, _read=_SpikeReader.read: reads.append(len(ends)) or _read(self, s, ends))
    loader = _stream_loader(spike_file, tokenizer, 0, 1, 0, 0)
    loader.load_state_dict({"epoch": 0, "batches": k, "worker_batches": [k]})
    assert [_keys(b) for b in loader] == stream[k:]
    # the windows still in the shuffle buffer, then the pieces still to come: each remaining window once
    assert sum(reads) == sum(len(b) for b in stream[k:]) < sum(len(b) for b in stream)


def test_resume_state_from_another_layout_is_refused(spike_file, tokenizer):
    loader = _map_loader(spike_file, tokenizer, 0, 1, 0, 0)
    loader.load_state_dict({"epoch": 0, "batches": 2, "batch_size": 4, "world_size": 1})
    with pytest.raises(ValueError, match="batch_size=4"):
        next(iter(loader))
    stream = _stream_loader(spike_file, tokenizer, 0, 1, 0, 0)
    state = stream.state_dict()
    assert state == {"epoch": 0, "batches": 0, "batch_size": BATCH, "world_size": 1, "num_workers": 1,
                     "worker_batches": [0], "next_worker": 0}
    stream.load_state_dict({**state, "batches": 2, "num_workers": 2, "worker_batches": [1, 1]})
    with pytest.raises(ValueError, match="num_workers=2"):
        next(iter(stream))
    # a position in another epoch (a checkpoint taken at the end of one) starts the epoch afresh
    stream = _stream_loader(spike_file, tokenizer, 0, 1, 0, 0)
    stream.load_state_dict({**state, "epoch": 5, "batches": 3, "worker_batches": [3]})
    assert len(list(stream)) == len(stream)


def test_streaming_ieeg_resumes_exactly_with_skipped_segments(tmp_path, monkeypatch):
    from neurofm.data.datasets import StreamingIEEGDataset
    from neurofm.data.segmenter import IEEGSegmenter

    rng = np.random.default_rng(1)
    with SessionWriter(tmp_path / "e0.h5", session_id="e0") as w:
        w.add_continuous(rng.normal(size=(3000, 3)).astype(np.float32), 100.0)
    orig = Session.continuous_samples

    def poisoned(self, i0, i1):  # sample 1050 is NaN: the 1-s segment at 10 s is skipped
        x = orig(self, i0, i1).copy()
        if 0 <= 1050 - i0 < len(x):
            x[1050 - i0, 0] = np.nan
        return x

    monkeypatch.setattr(Session, "continuous_samples", poisoned)  # forked workers inherit it

    def loader(num_workers):
        ds = StreamingIEEGDataset([tmp_path / "e0.h5"], IEEGSegmenter(segment_s=1.0, n_patches=4), None,
                                  spatial_vocab=None, batch_size=4, seed=2, block_windows=5, shuffle_buffer=6, rank=0,
                                  world_size=1, num_workers=num_workers)
        return EpochDataLoader(ds, batch_size=None, num_workers=num_workers, epoch_fn=lambda: 0)

    for num_workers in (0, 2):
        full = list(loader(num_workers))
        assert sum(int(b["n_skipped"]) for b in full) == 1 and sum(len(b["t0"]) for b in full) == 29
        first = loader(num_workers)
        it = iter(first)
        for _ in range(3):
            next(it)
        state = first.state_dict()
        del it
        again = loader(num_workers)
        again.load_state_dict(state)
        rest = list(again)
        assert len(rest) == len(full) - 3
        for a, b in zip(rest, full[3:]):
            assert torch.equal(a["t0"], b["t0"]) and torch.equal(a["x"], b["x"])  # filtered exactly as before
