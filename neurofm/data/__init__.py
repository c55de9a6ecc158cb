"""Session files, ingestion, tokenizers, datasets and data modules."""

from neurofm.data.session import Session, SessionFormatError, SessionWriter

__all__ = ["Session", "SessionFormatError", "SessionWriter"]
