"""The one config loader: typed dataclasses in, typed dataclasses out.

Model, data and training configs are plain dataclasses. Anything that arrives from outside
(a YAML file, ``key=value`` overrides, a checkpoint's ``config.json``) goes through
:func:`from_dict`, which uses OmegaConf's structured configs so that an unknown key or a
value of the wrong type is an error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, missing or of the wrong type."""


#: Run-config keys neurofm had and removed, per family: dotted key -> what replaced it. A run
#: folder's config.yaml written while the key existed still loads (the key is dropped, with one
#: warning); a key never listed here stays an "unknown field" error, so typos are still caught.
#: Add a key here in the commit that removes it (``git log -S KEY`` finds when).
RETIRED_KEYS: dict[str, dict[str, str]] = {
    "neuroformer": {
        # added 3fc66f0, removed 8c4adcf (heads-only LP-FT phase; it did not help on issue 10)
        "task.head_only_fraction": "fine-tuning heads now start at the closed-form ridge fit (the linear "
                                   "probe a heads-only phase trained) and everything trains from there",
    },
}


def drop_retired(raw: Mapping, family: str, where: str) -> dict:
    """``raw`` (a run config as read from ``where``) without :data:`RETIRED_KEYS` of ``family``;
    one warning (once per file and process: a command reads its config more than once) names
    ``where``, every key dropped, its value and what replaced it."""
    out = _copy_tree(raw)
    dropped = []
    for dotted, replacement in RETIRED_KEYS.get(family, {}).items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            dropped.append(f"{dotted} (was {node.pop(leaf)!r}; {replacement})")
    if dropped and where not in _WARNED_RETIRED:
        _WARNED_RETIRED.add(where)
        warnings.warn(f"{where}: written by an older neurofm; {len(dropped)} key(s) no longer exist and are "
                      f"ignored: {'; '.join(dropped)}. Delete them from the file to silence this", stacklevel=3)
    return out


_WARNED_RETIRED: set[str] = set()


def _copy_tree(tree: Any) -> Any:
    return {k: _copy_tree(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree


def _retired_note(key: str) -> str:
    for family, keys in RETIRED_KEYS.items():
        if key in keys:
            return f"; removed from neurofm ({family}): {keys[key]}"
    return ""


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
            raise ConfigError(f"{where}: key {key!r}: unknown field ({_first_line(e)}){_retired_note(str(key))}") from None
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
