"""Model cards written from a run's ``metrics.json``, never by hand.

A run directory (written by :mod:`neurofm.experiment`) holds ``config.yaml`` (the resolved
config) and ``metrics.json``::

    {"family": "neuroformer", "name": "...", "license": "mit",
     "data": {"sessions": [...], "description": "...", "n_train_windows": ...},
     "protocol": "how the numbers were measured (split, gap, bins...)",
     "metrics": {"bits_per_spike": 0.12, ...},
     "baselines": {"mean-rate Poisson": {"bits_per_spike": 0.0}, ...},
     "training": {"steps": ..., "epochs": ..., "wall_time_s": ..., "device": "cpu"},
     "n_params": 340000, "neurofm_version": "0.1.0"}

:func:`write_card` turns that into a Hugging Face model card (YAML front matter + markdown).
"""

from __future__ import annotations

import json
from pathlib import Path

_INTENDED = {
    "neuroformer": (
        "Pretrained spike-token model for next-spike prediction, spike generation and as a backbone "
        "for behaviour decoding after fine-tuning on a new recording (new units get new embedding rows)."
    ),
    "barista": (
        "Pretrained iEEG encoder for event detection, behaviour regression and channel reconstruction "
        "after fine-tuning on a new subject (electrodes mapped to categories by atlas labels or coordinates)."
    ),
}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_card(metrics: dict, config_yaml: str = "") -> str:
    """Markdown model card (with YAML front matter) for one run's ``metrics.json`` content."""
    family = metrics.get("family", "unknown")
    names = sorted(metrics.get("metrics", {}))
    tags = ["neuroscience", family, "spikes" if family == "neuroformer" else "ieeg", "pytorch"]
    front = [
        "---",
        "library_name: neurofm",
        f"license: {metrics.get('license', 'mit')}",
        "tags:",
        *[f"- {t}" for t in tags],
        "datasets:",
        *[f"- {d}" for d in metrics.get("data", {}).get("datasets", ["synthetic"])],
        "metrics:",
        *[f"- {m}" for m in names],
        "---",
    ]
    title = metrics.get("name", f"neurofm {family}")
    lines = [f"# {title}", "", _INTENDED.get(family, ""), ""]
    data = metrics.get("data", {})
    lines += ["## Data", "", data.get("description", "(not recorded)"), ""]
    for k, v in data.items():
        if k not in ("description", "datasets"):
            lines.append(f"- {k}: {_fmt(v)}")
    train = metrics.get("training", {})
    lines += ["", "## Training recipe", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in train.items()]
    if "n_params" in metrics:
        lines.append(f"- parameters: {metrics['n_params']:,}")
    if config_yaml:
        lines += ["", "<details><summary>Resolved config</summary>", "", "```yaml", config_yaml.rstrip(), "```",
                  "", "</details>"]
    lines += ["", "## Evaluation", "", f"Protocol: {metrics.get('protocol', '(not recorded)')}", ""]
    rows = {"this model": metrics.get("metrics", {}), **metrics.get("baselines", {})}
    cols = sorted({c for r in rows.values() for c in r})
    lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    lines += [
        "",
        "## Intended use",
        "",
        _INTENDED.get(family, ""),
        "Research use on neural recordings; not a medical device and not for clinical decisions.",
        "",
        "## Limitations",
        "",
        *[f"- {x}" for x in metrics.get("limitations", [])],
        f"- Trained on the data above only ({metrics.get('training', {}).get('device', 'cpu')}, "
        f"{metrics.get('training', {}).get('steps', '?')} steps); numbers on other recordings will differ.",
        f"- neurofm {metrics.get('neurofm_version', '?')}.",
        "",
    ]
    return "\n".join(front + [""] + lines)


def write_card(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``run_dir/metrics.json`` into a card at ``out`` (default ``run_dir/pretrained/README.md``)."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: missing; run training first (it writes metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    cfg_path = run_dir / "config.yaml"
    card = render_card(metrics, cfg_path.read_text() if cfg_path.exists() else "")
    out = Path(out) if out else run_dir / "pretrained" / "README.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(card)
    return out
