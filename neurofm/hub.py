"""save_pretrained / from_pretrained: ``config.json`` + ``model.safetensors``, nothing pickled.

Every released neurofm model class mixes in :class:`PretrainedMixin`. A pretrained folder
holds::

    config.json          {"neurofm_version", "format", "model_type", "config": {...}}
    model.safetensors    the state_dict, tensors only
    README.md            the model card, when one was written

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names the key;
a model never comes back partly random. A folder from an older neurofm loads when its
config only lacks keys that have defaults now (a warning lists them); anything else is an
error that says what differs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import neurofm
from neurofm.config import ConfigError, from_dict, to_dict
from neurofm.io import atomic_write

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FOLDER_FORMAT = 1
M = TypeVar("M", bound="PretrainedMixin")

_REGISTRY: dict[str, type] = {}
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class PretrainedError(ValueError):
    """A pretrained folder is missing, corrupt, or does not match its model class."""


class PretrainedMixin:
    """Adds ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` to an ``nn.Module``.

    The class sets ``config_class`` (a dataclass) and takes ``config`` as the only argument of
    ``__init__``; the module keeps it as ``self.config``.
    """

    config_class: type = None  # type: ignore[assignment]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # -- saving ---------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, card: str | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (and ``README.md`` if ``card``).

        Each file is written to a temporary name and renamed, so a crash never leaves a
        half-written weights file beside a valid config.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        state = _untie(state)
        meta = {
            "neurofm_version": neurofm.__version__,
            "format": FOLDER_FORMAT,
            "model_type": type(self).__name__,
            "config": to_dict(self.config),  # type: ignore[attr-defined]
        }
        atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(out / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        if card is not None:
            atomic_write(out / "README.md", lambda p: p.write_text(card))
        return out

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload neurofm model", card: str | None = None) -> str:
        """Save to a temporary folder and upload it as the Hub model repo ``repo_id``."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, card=card)
            api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
        return f"https://huggingface.co/{repo_id}"

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls: type[M], name_or_path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                        revision: str | None = None, token: str | None = None,
                        local_files_only: bool = False) -> M:
        """Load a model from a local folder or a Hugging Face Hub repo id.

        A local folder never touches the network. The folder's ``model_type`` must be this
        class (or, when called on :class:`PretrainedMixin`'s user-facing base, any registered
        neurofm model).
        """
        folder = _resolve(name_or_path, revision=revision, token=token, local_files_only=local_files_only)
        meta = read_config(folder)
        model_type = meta.get("model_type")
        target = cls
        if model_type != cls.__name__:
            if model_type in _REGISTRY and issubclass(_REGISTRY[model_type], cls):
                target = _REGISTRY[model_type]
            else:
                raise PretrainedError(f"{folder / CONFIG_NAME}: model_type is {model_type!r}, not {cls.__name__!r} "
                                      f"(load it with neurofm.hub.load_pretrained, or the class {model_type})")
        config = _config_from_meta(target, meta, folder)
        model = target(config)  # type: ignore[call-arg]
        state = _load_weights(folder / WEIGHTS_NAME)
        load_state_strict(model, state, source=folder / WEIGHTS_NAME)  # type: ignore[arg-type]
        model.to(map_location)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model


def load_pretrained(name_or_path: str | os.PathLike, **kwargs) -> Any:
    """Load any neurofm model folder, whatever its class (read from ``config.json``)."""
    folder = _resolve(name_or_path, revision=kwargs.get("revision"), token=kwargs.get("token"),
                      local_files_only=kwargs.get("local_files_only", False))
    model_type = read_config(folder).get("model_type")
    if model_type not in _REGISTRY:
        # model classes register when their module is imported; neurofm.models imports none of
        # them itself (a fresh process that only did `from neurofm.hub import ...` has none).
        # By name: the hub sits below the models (they import PretrainedMixin from here).
        import importlib
        import pkgutil

        models = importlib.import_module("neurofm.models")
        for info in pkgutil.iter_modules(models.__path__):
            importlib.import_module(f"neurofm.models.{info.name}")
    if model_type not in _REGISTRY:
        raise PretrainedError(f"{folder / CONFIG_NAME}: unknown model_type {model_type!r}; "
                              f"known: {sorted(_REGISTRY)}")
    return _REGISTRY[model_type].from_pretrained(folder, **kwargs)


def pretrained_config(name_or_path: str | os.PathLike, **kwargs) -> dict:
    """``config.json`` of a local pretrained folder or Hub repo, without loading weights."""
    return read_config(_resolve(name_or_path, revision=kwargs.get("revision"), token=kwargs.get("token"),
                                local_files_only=kwargs.get("local_files_only", False)))


def read_config(folder: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a pretrained folder, validated."""
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise PretrainedError(f"{path}: missing (is {folder} a folder written by save_pretrained?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PretrainedError(f"{path}: not valid JSON ({e}); the folder is corrupt: save it again") from None
    for key in ("model_type", "config"):
        if key not in meta:
            raise PretrainedError(f"{path}: no {key!r} field; not a neurofm pretrained folder")
    if int(meta.get("format", 1)) > FOLDER_FORMAT:
        raise PretrainedError(f"{path}: folder format {meta['format']} is newer than this neurofm "
                              f"({neurofm.__version__}) reads; upgrade neurofm")
    return meta


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Any = "state_dict") -> None:
    """``model.load_state_dict(state)``, but every mismatch is an error naming the keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_few(shapes)}")
    if problems:
        raise PretrainedError(f"{source}: weights do not match the model built from config.json: "
                              + "; ".join(problems))
    model.load_state_dict(state, strict=True)


# -- helpers ------------------------------------------------------------------------------


def _few(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage; clone tensors that alias an earlier one."""
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.numel() else None
        out[k] = v.clone() if key is not None and key in seen else v
        if key is not None:
            seen.setdefault(key, k)
    return out


def _resolve(name_or_path, *, revision, token, local_files_only) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if not _REPO_ID.fullmatch(str(name_or_path)):
        raise PretrainedError(f"{name_or_path}: not a pretrained folder (expected a directory with "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}) nor a Hub repo id like 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), revision=revision, token=token,
                                      local_files_only=local_files_only,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
    except Exception as e:  # offline, unknown repo, auth
        raise PretrainedError(f"{name_or_path}: no local folder of that name, and the Hub repo could not be "
                              f"fetched ({type(e).__name__}: {e})") from None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise PretrainedError(f"{path}: missing; the folder has a config but no weights")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PretrainedError(f"{path}: cannot be read as safetensors ({e}); the file is truncated or "
                              f"corrupt: download or save it again") from None


def _config_from_meta(cls: type, meta: dict, folder: Path):
    data = meta["config"]
    saved_version = meta.get("neurofm_version", "unknown")
    try:
        config = from_dict(cls.config_class, data, where=str(folder / CONFIG_NAME))
    except ConfigError as e:
        raise PretrainedError(f"{e} (folder written by neurofm {saved_version}, this is "
                              f"{neurofm.__version__})") from None
    defaulted = sorted(set(to_dict(config)) - set(data))
    if defaulted:
        warnings.warn(f"{folder / CONFIG_NAME}: written by neurofm {saved_version}; keys {defaulted} "
                      f"were absent and take this version's defaults", stacklevel=3)
    return config
