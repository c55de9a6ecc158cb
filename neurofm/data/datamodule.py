"""LightningDataModules: session files -> train/valid/test loaders for Neuroformer and BaRISTA.

Both modules take a list of session files and build, per split, either map-style datasets
(read window by window; :class:`~neurofm.data.samplers.BlockShuffleSampler` shuffles and
shards them) or, with ``streaming=True``, streaming datasets that read blocks of windows and
shard by rank and worker themselves. In both cases:

* splits are contiguous time blocks with a gap (``splits``, default
  ``TimeBlockSplit({"train": .8, "valid": .1, "test": .1}, gap=1.0)``, or ``/intervals/train``
  etc. when the files have them), so no validation window overlaps a training window;
* the training order is a function of ``(seed, epoch)`` only, and the training loaders
  (:class:`~neurofm.data.datasets.ResumableDataLoader`,
  :class:`~neurofm.data.datasets.EpochDataLoader`) save their position inside the epoch in
  Lightning's checkpoints: a run resumed from a mid-epoch checkpoint skips the batches it
  already trained on without reading them and then sees exactly the batches the
  uninterrupted run would have seen;
* under DDP every rank reads its own share of the TRAINING windows (the rank comes from the
  trainer); validation and test loaders are never sharded: every rank scores every window, so
  validation metrics (checkpointing, early stopping) and the evaluation after training are
  those of one process, whatever the device count (sharding them scored rank 0's half only).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import lightning as L
from torch.utils.data import DataLoader

from neurofm.atlas import SpatialVocab
from neurofm.data.datasets import (EpochDataLoader, IEEGSegmentDataset, ResumableDataLoader, SpikeWindowDataset,
                                   StreamingIEEGDataset, StreamingSpikeDataset, collate_ieeg, collate_packed_spikes,
                                   WithinBinShuffle, collate_spikes, open_sessions, pack_spikes)
from neurofm.data.samplers import BlockShuffleSampler, distributed_info
from neurofm.data.segmenter import IEEGSegmenter
from neurofm.data.session import validate_sessions
from neurofm.data.splits import TimeBlockSplit
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab


def world_of(dataset) -> int:
    """How many ranks a (streaming) dataset was sharded over (1 for map-style datasets, which
    the sampler shards)."""
    if not hasattr(dataset, "_world"):
        return 1
    return distributed_info()[1] if dataset._world is None else int(dataset._world)


class _WindowDataModule(L.LightningDataModule):
    """Loader plumbing shared by the spike and iEEG modules."""

    def __init__(self, *, batch_size: int, num_workers: int, streaming: bool, seed: int, splits, shuffle_block: int,
                 pin_memory: bool, split_names: Sequence[str] = ("train", "valid", "test")):
        super().__init__()
        self.batch_size, self.num_workers, self.streaming = int(batch_size), int(num_workers), streaming
        self.seed, self.shuffle_block, self.pin_memory = int(seed), int(shuffle_block), pin_memory
        self.splits = splits if splits is not None else TimeBlockSplit()
        self.split_names = tuple(split_names)
        self.datasets: dict[str, Any] = {}

    # -- hooks for the subclasses ---------------------------------------------------------------
    def _make(self, split: str, streaming: bool, shuffle: bool, rank: int, world: int):
        raise NotImplementedError

    _collate = staticmethod(collate_spikes)

    def _collate_fns(self, train: bool) -> tuple[Callable, Callable | None]:
        """(map-style items -> batch, function applied to each streamed batch or None)."""
        return self._collate, None

    def _train_transform(self, rank: int) -> Callable | None:
        """``transform(batch, epoch, index)`` the training loader applies to each batch, or None."""
        return None

    # -- distributed --------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        return distributed_info()

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    # -- setup ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_world()
        wanted = {"fit": ("train", "valid"), "validate": ("valid",), "test": ("test",),
                  "predict": ("test",)}.get(stage or "", self.split_names)
        for name in wanted:
            if name in self.split_names and name not in self.datasets:
                train = name == self.split_names[0]
                # only the training split is sharded by rank (see the module docstring)
                self.datasets[name] = self._make(name, self.streaming, shuffle=train, rank=rank if train else 0,
                                                 world=world if train else 1)

    def dataset(self, name: str):
        """The dataset of split ``name``, built on first use. A name outside ``split_names`` that
        the split scheme defines (e.g. ``train_all`` under a few-shot split) is built whole, in
        time order and unsharded, for evaluation."""
        if name not in self.datasets:
            if name in self.split_names:
                self.setup({"train": "fit", "valid": "validate"}.get(name, "test"))
            else:
                self.datasets[name] = self._make(name, self.streaming, shuffle=False, rank=0, world=1)
        return self.datasets[name]

    def loader(self, name: str, train: bool = False) -> DataLoader:
        """A loader over split ``name``: ``train=True`` shuffles and shards by rank (the training
        loader); ``train=False`` (the default) reads every window in order, as evaluation does."""
        ds = self.dataset(name)
        rank, world = self._rank_world() if train else (0, 1)  # evaluation reads every window
        if not train and self.streaming and world_of(ds) > 1:  # the training split, read for evaluation
            if name + ":all" not in self.datasets:
                self.datasets[name + ":all"] = self._make(name, True, shuffle=False, rank=0, world=1)
            ds = self.datasets[name + ":all"]
        collate, finish = self._collate_fns(train)
        transform = self._train_transform(rank) if train else None
        if self.streaming:
            return EpochDataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                                   epoch_fn=self._epoch if train else (lambda: 0), collate_fn=finish,
                                   transform=transform)
        sampler = BlockShuffleSampler(ds, num_replicas=world, rank=rank, shuffle=train, seed=self.seed,
                                      block=self.shuffle_block if train else 1, drop_last=False)
        kwargs = dict(transform=transform) if train else {}
        loader = ResumableDataLoader if train else DataLoader
        return loader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                      collate_fn=collate, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
                      **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.split_names[0], train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.split_names[1], train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.split_names[-1], train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.loader(self.split_names[-1], train=False)


class SpikeDataModule(_WindowDataModule):
    """Neuroformer windows from spike session files.

    Args:
        sessions: session file paths.
        tokenizer: a :class:`SpikeTokenizer`; or leave it out and give ``window_curr``,
            ``window_prev``, ``dt``, ``block_size``, ``block_size_prev`` (reference defaults of
            the lateral config: 0.05 s, 0.05 s, 0.01 s, 100, 700 in the paper; smaller here).
            Its vocabulary is used when it has units; an empty one is replaced by ``vocab``.
        vocab: a :class:`UnitVocab` (e.g. from a checkpoint); default: the tokenizer's if it
            has units, else built from ``sessions``.
            With ``extend_vocab=True`` units it lacks are appended (fine-tuning on a new lab).
        behavior, behavior_seq_len, stimulus, stimulus_frames, stimulus_window, stride: as in
            :class:`~neurofm.data.datasets.SpikeWindowDataset`.
        splits: a splitter from :mod:`neurofm.data.splits`.
        streaming: stream blocks of windows (large data) instead of map-style random access.
        batch_size, num_workers, seed, shuffle_block (windows per shuffled block, map-style),
        block_windows / shuffle_buffer (streaming), pin_memory.
        pack: emit packed training batches (:func:`~neurofm.data.datasets.pack_spikes`:
            windows concatenated with ``cu_seqlens``, no padding) instead of padded ones: the
            GPU path, where flash-attn's varlen kernels make padding free. Validation and test
            batches stay padded (evaluation reads windows; the losses are the same).
        shuffle_within_bin: give each training batch's spikes inside every dt bin a fresh
            random order (:class:`~neurofm.data.datasets.WithinBinShuffle`, seeded by
            ``seed``, epoch and batch): the next-ID loss can no longer be lowered by learning the
            tokenizer's ascending-unit order. Validation and test keep the canonical order.
    """

    def __init__(self, sessions: Sequence, tokenizer: SpikeTokenizer | None = None, *, window_curr: float = 0.05,
                 window_prev: float = 0.05, dt: float = 0.01, block_size: int = 100, block_size_prev: int = 100,
                 vocab: UnitVocab | Mapping | None = None, extend_vocab: bool = False, splits=None,
                 stride: float | None = None, behavior: Sequence[str] = (), behavior_seq_len: int = 8,
                 stimulus: str | None = None, stimulus_frames: int = 3, stimulus_window: float = 0.15,
                 batch_size: int = 32, num_workers: int = 0, streaming: bool = False, seed: int = 0,
                 shuffle_block: int = 64, block_windows: int | None = None, shuffle_buffer: int | None = None,
                 pin_memory: bool = False, pack: bool = False, shuffle_within_bin: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, streaming=streaming, seed=seed,
                         splits=splits, shuffle_block=shuffle_block, pin_memory=pin_memory,
                         split_names=getattr(splits, "names", None) or ("train", "valid", "test"))
        self.paths = list(sessions)
        self.sessions = open_sessions(self.paths)
        validate_sessions(self.sessions)  # contents checked before any step (neurofm validate)
        if isinstance(vocab, Mapping):
            vocab = UnitVocab.from_dict(vocab)
        if vocab is None and tokenizer is not None and tokenizer.vocab is not None and tokenizer.vocab.n_units:
            vocab = tokenizer.vocab  # a tokenizer built with a vocabulary (e.g. from a checkpoint)
        # An EMPTY vocabulary (SpikeTokenizer(...) without one) means "not given": build it from
        # the sessions, as with no tokenizer at all; using it would fail on every unit.
        if vocab is None:
            vocab = UnitVocab.from_sessions(self.sessions)
        elif extend_vocab:
            vocab.extend_from_sessions(self.sessions)
        if tokenizer is not None:
            tokenizer.vocab = vocab
        self.vocab = vocab
        self.tokenizer = tokenizer or SpikeTokenizer(window_curr, window_prev, dt, block_size, block_size_prev, vocab)
        self.dataset_kwargs = dict(stride=stride, behavior=tuple(behavior), behavior_seq_len=behavior_seq_len,
                                   stimulus=stimulus, stimulus_frames=stimulus_frames, stimulus_window=stimulus_window)
        self.block_windows, self.shuffle_buffer = block_windows, shuffle_buffer
        self.pack, self.shuffle_within_bin = pack, bool(shuffle_within_bin)

    def _collate_fns(self, train: bool) -> tuple[Callable, Callable | None]:
        if self.pack and train and not self.shuffle_within_bin:  # with the shuffle: packed after it
            return collate_packed_spikes, pack_spikes
        return super()._collate_fns(train)

    def _train_transform(self, rank: int) -> Callable | None:
        if not self.shuffle_within_bin:
            return None
        return WithinBinShuffle(self.seed, rank, then=pack_spikes if self.pack else None)

    def _make(self, split, streaming, shuffle, rank, world):
        if streaming:
            return StreamingSpikeDataset(self.sessions, self.tokenizer, split, splits=self.splits,
                                         batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
                                         block_windows=self.block_windows, shuffle_buffer=self.shuffle_buffer,
                                         rank=rank, world_size=world, even_ranks=True,
                                         num_workers=self.num_workers, **self.dataset_kwargs)
        return SpikeWindowDataset(self.sessions, self.tokenizer, split, splits=self.splits, **self.dataset_kwargs)

    def state_dict(self) -> dict[str, Any]:
        """The unit vocabulary and tokenizer config (saved in Lightning checkpoints)."""
        return {"tokenizer": self.tokenizer.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = UnitVocab.from_dict(state["tokenizer"]["vocab"])
        if saved.units != self.vocab.units[: saved.n_units]:
            raise ValueError("the checkpoint's unit vocabulary is not a prefix of this data module's; build the "
                             "data module with vocab=<the checkpoint's vocabulary> (extend_vocab=True for new units)")


class IEEGDataModule(_WindowDataModule):
    """BaRISTA segments from iEEG session files.

    Args:
        sessions: session file paths.
        segmenter: an :class:`IEEGSegmenter` (default: 3 s, 12 patches, the file's rate).
        spatial_vocab: a :class:`~neurofm.atlas.SpatialVocab` (from a checkpoint), or
            ``"auto"`` to build one from the sessions' channels.
        events, event_locked, event_offset, label_map, target, stride_s: as in
            :class:`~neurofm.data.datasets.IEEGSegmentDataset`.
        splits, streaming, batch_size, num_workers, seed, shuffle_block, block_windows,
        shuffle_buffer, pin_memory: as in :class:`SpikeDataModule`.
    """

    _collate = staticmethod(collate_ieeg)

    def __init__(self, sessions: Sequence, segmenter: IEEGSegmenter | None = None, *, spatial_vocab="auto",
                 spatial_scale: str | None = None, events: str | None = None, event_locked: bool = False,
                 event_offset: float = 0.0, label_map: Mapping[str, int] | None = None, target: str | None = None,
                 stride_s: float | None = None, splits=None, batch_size: int = 8, num_workers: int = 0,
                 streaming: bool = False, seed: int = 0, shuffle_block: int = 16, block_windows: int | None = None,
                 shuffle_buffer: int | None = None, pin_memory: bool = False):
        super().__init__(batch_size=batch_size, num_workers=num_workers, streaming=streaming, seed=seed,
                         splits=splits, shuffle_block=shuffle_block, pin_memory=pin_memory,
                         split_names=getattr(splits, "names", None) or ("train", "valid", "test"))
        self.paths = list(sessions)
        self.sessions = open_sessions(self.paths)
        validate_sessions(self.sessions)  # contents checked before any step (neurofm validate)
        self.segmenter = segmenter or IEEGSegmenter()
        if spatial_vocab == "auto":
            chans = []
            for s in self.sessions:
                try:
                    chans.append(self.segmenter.channel_plan(s.channels(), s.n_channels).channels)
                except KeyError:  # no /channels table: nothing to encode
                    continue
            spatial_vocab = SpatialVocab.from_channels(chans) if chans else None
        self.spatial_vocab = spatial_vocab
        self.dataset_kwargs = dict(spatial_vocab=spatial_vocab, spatial_scale=spatial_scale, events=events,
                                   event_locked=event_locked, event_offset=event_offset, label_map=label_map,
                                   target=target, stride_s=stride_s)
        self.block_windows, self.shuffle_buffer = block_windows, shuffle_buffer

    def _make(self, split, streaming, shuffle, rank, world):
        if streaming:
            return StreamingIEEGDataset(self.sessions, self.segmenter, split, splits=self.splits,
                                        batch_size=self.batch_size, shuffle=shuffle, seed=self.seed,
                                        block_windows=self.block_windows, shuffle_buffer=self.shuffle_buffer,
                                        rank=rank, world_size=world, even_ranks=True,
                                        num_workers=self.num_workers, **self.dataset_kwargs)
        return IEEGSegmentDataset(self.sessions, self.segmenter, split, splits=self.splits, **self.dataset_kwargs)

    def state_dict(self) -> dict[str, Any]:
        sv = self.spatial_vocab
        return {"segmenter": self.segmenter.config(), "spatial_vocab": sv.to_dict() if sv is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass  # the spatial vocabulary a model needs travels with the model (hub config)
