"""neurofm: pretrained foundation models of neural recordings.

Neuroformer (spike tokens, multimodal GPT) and BaRISTA (spatiotemporal iEEG transformer),
trained from HDF5 session files (:mod:`neurofm.data`).
"""

__version__ = "0.1.0"


def log_to_stderr() -> None:
    """Show neurofm's INFO messages (attention backend, data notes) on stderr, once. Only the
    ``neurofm`` logger: a root handler would print every Lightning message a second time."""
    import logging

    log = logging.getLogger("neurofm")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
