"""save_pretrained / from_pretrained: ``config.json`` + ``model.safetensors``, nothing pickled.

Every released neurofm model class mixes in :class:`PretrainedMixin`. A pretrained folder
holds::

    config.json          {"neurofm_version", "format", "model_type", "state_version", "config": {...}}
    model.safetensors    the state_dict, tensors only
    README.md            the model card (a run's card, or one generated from the model)

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names the key;
a model never comes back partly random. A folder from an older neurofm loads when its
config only lacks keys that have defaults now (keys added since it was written, :data:`ADDED_KEYS`,
quietly; a warning lists any other) and, when a model class
renamed its weights since, through that class's versioned key migration
(:meth:`PretrainedMixin.upgrade_state`, ``state_version`` in ``config.json``); anything else
is an error that says what differs.

The mixin is huggingface_hub's :class:`~huggingface_hub.ModelHubMixin` with neurofm's own
(strict) ``_save_pretrained`` / ``_from_pretrained``, so it keeps that class's conventions:
``save_pretrained`` writes the model card (``README.md``) beside the weights and
``push_to_hub`` uploads it; ``from_pretrained`` takes a local folder (never touches the
network) or a Hub repo id with ``revision``, ``cache_dir``, ``force_download``,
``local_files_only`` and ``token``, downloaded through ``snapshot_download`` into the usual
Hugging Face cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads only that cache). Log in
for uploads with ``hf auth login``.
"""

from __future__ import annotations

import dataclasses
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
from huggingface_hub import ModelCard, ModelHubMixin
from safetensors.torch import load_file, save_file

import neurofm
from neurofm.config import ConfigError, from_dict, to_dict
from neurofm.atomic import atomic_write
from neurofm.cards import render_card

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
_FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FOLDER_FORMAT = 1
M = TypeVar("M", bound="PretrainedMixin")

_REGISTRY: dict[str, type] = {}
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


class PretrainedError(ValueError):
    """A pretrained folder is missing, corrupt, or does not match its model class."""


class PretrainedMixin(ModelHubMixin, library_name="neurofm", tags=["neuroscience"]):
    """Adds ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` to an ``nn.Module``.

    The class sets ``config_class`` (a dataclass) and takes ``config`` as the only argument of
    ``__init__``; the module keeps it as ``self.config``. Built on huggingface_hub's
    ``ModelHubMixin`` (same method names and keywords), but ``config.json`` is neurofm's own
    (``model_type`` + the typed config) and loading is strict.
    """

    config_class: type = None  # type: ignore[assignment]
    #: Version of this class's state-dict key layout, written to ``config.json`` as
    #: ``state_version``. A class that renames keys bumps it and maps older layouts in
    #: :meth:`upgrade_state`, so folders and checkpoints of earlier versions keep loading strictly.
    state_version: int = 1

    @classmethod
    def upgrade_state(cls, state: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
        """``state`` saved with key layout ``version`` (<= :attr:`state_version`) -> this
        version's keys. Default: the layout never changed, ``state`` as is."""
        return state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    # -- saving ---------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, *, card: str | None = None,
                        repo_id: str | None = None, push_to_hub: bool = False,
                        model_card_kwargs: dict[str, Any] | None = None, **push_to_hub_kwargs) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the model card ``README.md``.

        ``card`` is the card's markdown (e.g. :func:`neurofm.cards.render_card` of a run);
        without it the card is generated from the model itself (:meth:`generate_model_card`:
        its config, parameter count, usage and citation, no evaluation). An existing
        ``README.md`` is replaced: a card left from other weights would describe the wrong
        model. Each file is written to a temporary name and renamed, so a crash never leaves a
        half-written weights file beside a valid config. ``push_to_hub=True`` then uploads the
        folder as ``repo_id`` (default: the folder's name) with :meth:`push_to_hub`'s keywords.
        """
        if push_to_hub_kwargs and not push_to_hub:
            raise TypeError(f"save_pretrained: unexpected keywords {sorted(push_to_hub_kwargs)} (config.json is "
                            f"written from model.config; other keywords are push_to_hub's: pass push_to_hub=True)")
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(out)
        text = card if card is not None else str(self.generate_model_card(**(model_card_kwargs or {})))
        atomic_write(out / CARD_NAME, text)
        if push_to_hub:
            self.push_to_hub(repo_id or out.name, card=text, **push_to_hub_kwargs)
        return out

    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors`` (tensors only) + ``config.json`` (:func:`model_meta`)."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        state = _untie(state)
        meta = model_meta(self)
        atomic_write(save_directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(save_directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The card of these weights alone (no run, so no data or metrics): what the model is,
        its config, how to load it, what to cite. A run's card (``neurofm card RUN_DIR``)
        adds data, licence and held-out metrics."""
        n_params = sum(p.numel() for p in self.parameters())  # type: ignore[attr-defined]
        return ModelCard(render_card(None, model_meta=model_meta(self), n_params=n_params, **kwargs))

    def push_to_hub(self, repo_id: str, *, card: str | None = None, commit_message: str = "Upload neurofm model",
                    private: bool | None = None, token: str | None = None, branch: str | None = None,
                    create_pr: bool | None = None, allow_patterns: list[str] | str | None = None,
                    ignore_patterns: list[str] | str | None = None, delete_patterns: list[str] | str | None = None,
                    model_card_kwargs: dict[str, Any] | None = None):
        """Save to a temporary folder (weights, config, model card) and upload it in one commit
        to the Hub model repo ``repo_id`` (created if needed). Needs a token: ``hf auth login``
        or ``token=``. Returns the commit (its URL as a string), as huggingface_hub does."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, card=card, model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})})
            return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=tmp,
                                     commit_message=commit_message, revision=branch, create_pr=create_pr,
                                     allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                     delete_patterns=delete_patterns)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls: type[M], name_or_path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                        revision: str | None = None, token: str | bool | None = None,
                        local_files_only: bool = False, cache_dir: str | os.PathLike | None = None,
                        force_download: bool = False) -> M:
        """Load a model from a local folder or a Hugging Face Hub repo id (``"org/name"``).

        A local folder never touches the network. A repo id is fetched with
        ``snapshot_download`` (``revision``: branch, tag or commit; ``cache_dir``: default the
        Hugging Face cache, ``HF_HUB_CACHE``; ``local_files_only`` or ``HF_HUB_OFFLINE=1``: the
        cache only). The folder's ``model_type`` must be this class or a subclass of it; use
        :func:`load_pretrained` (``neurofm.from_pretrained``) to load whatever it holds.
        """
        folder = _resolve(name_or_path, revision=revision, token=token, local_files_only=local_files_only,
                          cache_dir=cache_dir, force_download=force_download)
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
        version = int(meta.get("state_version", 1))  # folders written before the field: layout 1
        if version > target.state_version:
            raise PretrainedError(f"{folder / CONFIG_NAME}: state_version {version} is newer than this neurofm "
                                  f"({neurofm.__version__}) reads for {target.__name__} "
                                  f"({target.state_version}); upgrade neurofm")
        state = target.upgrade_state(state, version)
        load_state_strict(model, state, source=folder / WEIGHTS_NAME)  # type: ignore[arg-type]
        model.to(map_location)  # type: ignore[attr-defined]
        model.eval()  # type: ignore[attr-defined]
        return model


def load_pretrained(name_or_path: str | os.PathLike, **kwargs) -> Any:
    """Load any neurofm model folder or Hub repo, whatever its class (``model_type`` in
    ``config.json``); keywords as :meth:`PretrainedMixin.from_pretrained`. This is
    ``neurofm.from_pretrained``."""
    folder = _resolve(name_or_path, **_hub_kwargs(kwargs))
    kwargs = {k: v for k, v in kwargs.items() if k not in _HUB_KEYS}  # fetched once: the rest reads `folder`
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
    return read_config(_resolve(name_or_path, **_hub_kwargs(kwargs)))


def model_meta(model: Any) -> dict:
    """What ``config.json`` holds for ``model``: neurofm version, folder format, class name and
    the typed config (the config that matches the weights; model cards embed it)."""
    return {
        "neurofm_version": neurofm.__version__,
        "format": FOLDER_FORMAT,
        "model_type": type(model).__name__,
        "state_version": type(model).state_version,
        "config": to_dict(model.config),
    }


def push_pretrained(folder: str | os.PathLike, repo_id: str, *, commit_message: str = "Upload neurofm model",
                    private: bool | None = None, token: str | None = None, branch: str | None = None,
                    create_pr: bool | None = None):
    """Upload an existing pretrained folder (e.g. ``runs/NAME/pretrained``, whose README.md is
    the run's card) as the Hub model repo ``repo_id``. The folder is loaded strictly first, so
    a folder whose weights do not match its config is never published; a folder without a
    card gets one generated from the model."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    model = load_pretrained(folder)
    if not (folder / CARD_NAME).exists():  # only the card is added; the weights stay as they are
        text = str(model.generate_model_card(repo_id=repo_id))
        atomic_write(folder / CARD_NAME, text)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder, commit_message=commit_message,
                             revision=branch, create_pr=create_pr, allow_patterns=list(_FOLDER_FILES))


def read_config(folder: str | os.PathLike) -> dict:
    """The parsed ``config.json`` of a pretrained folder, validated."""
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        inner = Path(folder) / "pretrained"  # a run folder given for the pretrained folder inside it
        if (inner / CONFIG_NAME).exists():
            raise PretrainedError(f"{path}: missing: {folder} is a run folder; its model is {inner} (give "
                                  f"--pretrained {inner})")
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


_HUB_KEYS = ("revision", "token", "local_files_only", "cache_dir", "force_download")


def _hub_kwargs(kwargs: dict) -> dict:
    return {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}


def _resolve(name_or_path, *, revision=None, token=None, local_files_only=False, cache_dir=None,
             force_download=False) -> Path:
    """A local folder as is; a Hub repo id -> its snapshot folder in the cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if not _REPO_ID.fullmatch(str(name_or_path)):
        raise PretrainedError(f"{name_or_path}: not a pretrained folder (expected a directory with "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}) nor a Hub repo id like 'org/name'")
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(name_or_path), repo_type="model", revision=revision, token=token,
                                      local_files_only=local_files_only, cache_dir=cache_dir,
                                      force_download=force_download, allow_patterns=list(_FOLDER_FILES)))
    except Exception as e:  # offline, unknown repo or revision, auth
        offline = local_files_only or constants.HF_HUB_OFFLINE
        where = f"cache {cache_dir or constants.HF_HUB_CACHE}"
        hint = (f"offline (local_files_only or HF_HUB_OFFLINE=1), so only the {where} was read: download it "
                f"once online, or pass the path of a local folder" if offline else
                "check the repo id and revision, your network, and for a private repo your token (hf auth login)")
        raise PretrainedError(f"{name_or_path}: no local folder of that name, and the Hub repo could not be "
                              f"fetched at revision {revision or 'main'} ({type(e).__name__}: {e}); {hint}") from None


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
    except ValueError as e:  # the config class's own checks (e.g. units vs n_units) name no file
        raise PretrainedError(f"{folder / CONFIG_NAME}: config: {e}; the folder's config.json is inconsistent: "
                              f"save the model again (or fix that key)") from None
    # every key, at any depth, that the file lacks and the current config class filled in
    now = _leaf_keys(to_dict(config))
    defaulted = sorted(set(now) - set(_leaf_keys(data)))
    # one added to the class after the newest key the file has: the writer predates it and did
    # what its default does (ADDED_KEYS); only the others can hide another trained value
    written = max((d for d in map(lambda k: _added(config, k), _leaf_keys(data)) if d), default="")
    newer = [k for k in defaulted if (_added(config, k) or "") > written]
    defaulted = [k for k in defaulted if k not in newer]
    if newer:
        log.info("%s: written before %s existed; the default%s what that version did", folder / CONFIG_NAME,
                 ", ".join(newer), " is" if len(newer) == 1 else "s are")
    if defaulted:
        shown = ", ".join(f"{k} = {now[k]!r}" for k in defaulted)
        warnings.warn(f"{folder / CONFIG_NAME}: written by neurofm {saved_version}; {len(defaulted)} key(s) were "
                      f"absent and take this version's defaults: {shown}. If the model was trained with other "
                      f"values, add them to config.json", stacklevel=3)
    return config


#: Config keys added to a model's config class after the class was first written, with the
#: commit date (git log -S KEY; UTC): a folder written before then lacks the key, and the class's
#: default is what that version did (the rule every added key follows), so loading it says
#: nothing. A folder is dated by the newest key it has from this table; a key it lacks that is
#: older (or not listed: there from the start) was in its writer's config.json, and its absence
#: (a cut or hand-edited file) is warned about: the model may have been trained with another
#: value. Key: config class name -> field -> date; nested configs (``encoder``) by their class.
#: Add a key here in the commit that adds it to a model config.
ADDED_KEYS: dict[str, dict[str, str]] = {
    "BaristaConfig": {
        "fast_kernels": "2026-12-02T17:39:49",  # 46ca46c
        "preprocessing": "2026-12-02T17:41:13",  # 9bf70cf
        "token_scales": "2026-12-03T12:56:01",  # 419cac6
        "power_target": "2026-12-03T15:49:19",  # 2f984d2
        "power_positions": "2026-12-03T16:05:21",  # 5c88c3a
    },
    "BaristaFinetunedConfig": {
        "target_mean": "2026-12-02T17:33:16",  # 8e43bd0
        "target_std": "2026-12-02T17:33:16",  # 8e43bd0
        "band_power_bands": "2026-12-03T15:48:55",  # fd61efd
        "waveform_bins": "2026-12-04T00:36:00",  # 0d80969
    },
}


def _added(config: Any, key: str) -> str | None:
    """:data:`ADDED_KEYS` date of the field that holds leaf ``key`` (``encoder.power_target``:
    BaristaConfig's ``power_target``) of the typed ``config``; None: there from the start."""
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        date = ADDED_KEYS.get(type(node).__name__, {}).get(part)
        if date is not None:
            return date
        node = getattr(node, part, None)
    return None


def _leaf_keys(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"window": {"curr": 0.1}, "behavior": [{"name": "x"}]}`` ->
    ``{"window.curr": 0.1, "behavior[0].name": "x"}`` (dicts and lists of dicts walked)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_leaf_keys(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        out = {}
        for i, v in enumerate(tree):
            out.update(_leaf_keys(v, f"{prefix}[{i}]"))
        return out
    return {prefix: tree}
