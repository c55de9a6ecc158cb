"""Session files, ingestion, tokenizers, datasets and data modules.

Importing :mod:`neurofm.data` loads only NumPy and h5py code; the datasets (torch) and the
data modules (Lightning) are imported the first time one of their names is used, so
``neurofm inspect`` and file conversion start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neurofm.data.segmenter import IEEGSegmenter
from neurofm.data.session import Session, SessionFormatError, SessionWriter
from neurofm.data.splits import BlockedKFold, TimeBlockSplit
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab

if TYPE_CHECKING:
    from neurofm.data.datamodule import IEEGDataModule, SpikeDataModule
    from neurofm.data.datasets import IEEGSegmentDataset, SpikeWindowDataset

_LAZY = {
    "SpikeWindowDataset": "neurofm.data.datasets",
    "IEEGSegmentDataset": "neurofm.data.datasets",
    "SpikeDataModule": "neurofm.data.datamodule",
    "IEEGDataModule": "neurofm.data.datamodule",
}

__all__ = ["Session", "SessionWriter", "SessionFormatError", "UnitVocab", "SpikeTokenizer", "IEEGSegmenter",
           "TimeBlockSplit", "BlockedKFold", "SpikeDataModule", "IEEGDataModule", "SpikeWindowDataset",
           "IEEGSegmentDataset"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'neurofm.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
