"""JSON that every parser reads: no bare ``NaN`` / ``Infinity``.

Python's ``json`` writes ``NaN`` for a float NaN, which is not JSON (strict parsers, ``jq``,
JavaScript reject the whole file). Metrics can be undefined (R2 of a target that is constant
over the scored windows, bits/spike over no spikes), so every JSON file neurofm writes goes
through :func:`dumps`: a non-finite number becomes ``null``, and the top-level mapping gets
``"null_reasons"``: for each such value, its dotted key and why it is null.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finite(obj: Any, reasons: dict[str, str] | None = None, where: str = "") -> Any:
    """``obj`` with every non-finite float replaced by None; each replacement is recorded in
    ``reasons`` (dotted key -> why), when given."""
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        if math.isfinite(x):
            return x
        if reasons is not None:
            reasons[where or "value"] = (f"undefined ({x}): not a number JSON can hold, e.g. R2 of a target that is "
                                         f"constant over the scored windows, or a mean over no windows")
        return None
    if isinstance(obj, dict):
        return {k: finite(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, reasons, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist(), reasons, where)
    return obj


def dumps(obj: Any, *, indent: int | None = 2, default=None) -> str:
    """``json.dumps`` without NaN / Infinity (``allow_nan=False`` holds); numpy scalars and
    arrays, paths and dataclasses are converted. A top-level dict gains ``null_reasons``."""
    plain = json.loads(json.dumps(obj, default=default or _default, allow_nan=True))
    reasons: dict[str, str] = {}
    out = finite(plain, reasons)
    if reasons and isinstance(out, dict):
        out["null_reasons"] = {**out.get("null_reasons", {}), **reasons}
    return json.dumps(out, indent=indent, allow_nan=False)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` / ``Infinity`` (as strict parsers do)."""
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)
