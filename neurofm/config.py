"""The one config loader: typed dataclasses in, typed dataclasses out.

Model, data and training configs are plain dataclasses. Anything that arrives from outside
(a YAML file, ``key=value`` overrides, a checkpoint's ``config.json``) goes through
:func:`from_dict`, which uses OmegaConf's structured configs so that an unknown key or a
value of the wrong type is an error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type."""


def to_dict(cfg: Any) -> dict:
    """A dataclass (possibly nested) as plain JSON-able Python containers."""
    if dataclasses.is_dataclass(cfg):
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def from_dict(cls: type[T], data: Mapping | None = None, overrides: list[str] | None = None,
              where: str = "config") -> T:
    """Build ``cls`` from ``data`` and ``key=value`` dotlist ``overrides``.

    Missing keys take the dataclass defaults. ``where`` names the source (a file path) in
    error messages.
    """
    try:
        base = OmegaConf.structured(cls)
        merged = OmegaConf.merge(base, OmegaConf.create(dict(data or {})))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        if isinstance(e, ConfigKeyError) and key:
            raise ConfigError(f"{where}: key {key!r}: unknown field ({_first_line(e)})") from None
        hint = ""
        if "Incompatible value 'None' for field of type 'str'" in str(e):  # `key=` parses as null
            hint = f"; an empty value means null: for an empty string write {key}=\"\" (quoted for the shell: '{key}=\"\"')"
        raise ConfigError(f"{where}: {'key ' + repr(key) + ': ' if key else ''}{_first_line(e)}{hint}") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0]


def finetuning_run(pretrained: str | os.PathLike, family: str) -> tuple[Path, dict] | None:
    """``(path, config)`` of the fine-tuning run that wrote ``pretrained`` (``RUN/pretrained``
    beside ``RUN/config.yaml``, a ``family`` run with ``task.mode: finetune``), else None: the
    one reader of a fine-tuned folder's run config (``neurofm evaluate`` takes its split and
    targets, the Neuroformer recipe its label draw)."""
    path = Path(pretrained) / ".." / "config.yaml"
    if not path.is_file():
        return None
    try:
        run_cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    except Exception:  # not a run's config: nothing to carry over
        return None
    if not isinstance(run_cfg, dict) or run_cfg.get("family") != family or \
            (run_cfg.get("task") or {}).get("mode") != "finetune":
        return None
    return path.resolve(), run_cfg
