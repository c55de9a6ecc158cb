"""neurofm: pretrained foundation models of neural recordings.

Neuroformer (spike tokens, multimodal GPT) and BaRISTA (spatiotemporal iEEG transformer),
trained from HDF5 session files (:mod:`neurofm.data`)::

    import neurofm
    model = neurofm.from_pretrained("runs/neuroformer-demo/pretrained")   # any neurofm model, or "org/repo"
    from neurofm import Neuroformer, Barista                              # the model classes

The model classes and ``from_pretrained`` are imported on first use (they need torch), so
``import neurofm`` and ``neurofm --help`` stay fast.
"""

__version__ = "0.1.0"

#: public name -> module that defines it (imported lazily by ``__getattr__``)
_LAZY = {
    "from_pretrained": "neurofm.hub",
    "PretrainedError": "neurofm.hub",
    "Neuroformer": "neurofm.models.neuroformer",
    "NeuroformerConfig": "neurofm.models.neuroformer",
    "Barista": "neurofm.models.barista",
    "BaristaConfig": "neurofm.models.barista",
    "BaristaEncoder": "neurofm.models.barista",
    "BaristaFinetuned": "neurofm.models.barista",
}

__all__ = ["__version__", "log_to_stderr", "plain_warnings", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        value = getattr(module, "load_pretrained" if name == "from_pretrained" else name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'neurofm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def log_to_stderr() -> None:
    """Show neurofm's INFO messages (attention backend, data notes) on stderr, once. Only the
    ``neurofm`` logger: a root handler would print every Lightning message a second time."""
    import logging

    import sys

    class _Stderr(logging.StreamHandler):
        """Writes to ``sys.stderr`` as it is at each message, not as it was when the handler was
        made: a caller that swaps stderr (pytest's capture, a notebook) must not leave neurofm
        logging into a closed stream."""

        def emit(self, record: logging.LogRecord) -> None:
            self.stream = sys.stderr
            super().emit(record)

    log = logging.getLogger("neurofm")
    if not log.handlers:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class plain_warnings:
    """Within it, a warning raised by neurofm's own code prints as ``PROG: warning: MESSAGE`` (what
    the command-line tools use): the default format put the package file, line and source line
    before every message (``.../neurofm/recipes/neuroformer.py:216: UserWarning: ...`` then
    ``  check_test_target(cfg)``), which read as a crash report. Other packages' warnings keep
    Python's format. Only the format changes (``warnings.formatwarning``, restored on exit): what
    is shown, and what ``warnings.catch_warnings(record=True)`` records, stay as they were."""

    def __init__(self, prog: str):
        self.prog = prog

    def __enter__(self):
        import os
        import warnings

        self._original = original = warnings.formatwarning
        root = os.path.dirname(os.path.abspath(__file__)) + os.sep
        prog = self.prog

        def formatwarning(message, category, filename, lineno, line=None):
            if os.path.abspath(str(filename)).startswith(root):
                return f"{prog}: warning: {message}\n"
            return original(message, category, filename, lineno, line)

        warnings.formatwarning = formatwarning
        return self

    def __exit__(self, *exc) -> None:
        import warnings

        warnings.formatwarning = self._original
