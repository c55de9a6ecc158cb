"""Model cards written from a run's files, never by hand.

A run directory (written by :mod:`neurofm.experiment`) holds ``config.yaml`` (the resolved run
config), ``metrics.json`` and ``pretrained/config.json`` (the exported model's own config)::

    {"family": "neuroformer", "name": "...",
     "data": {"description": "...", "datasets": [...], "sources": [{session attrs}], "n_train_windows": ...},
     "protocol": "how the numbers were measured (split, gap, bins...)",
     "metrics": {"speed_r2": 0.89, "speed_n_scored": 1187, ...},
     "baselines": {"ridge on window counts": {"speed_r2": 0.85}, ...},
     "training": {"steps": ..., "epochs": ..., "wall_time_s": ..., "device": "cpu"},
     "n_params": 340000, "neurofm_version": "0.1.0"}

:func:`render_card` turns that into a Hugging Face model card: YAML metadata written with
huggingface_hub's own :class:`~huggingface_hub.ModelCardData` (``library_name``, ``license``,
``tags``, ``metrics`` as Hub metric ids, a ``model-index`` holding the held-out metrics and
the baselines), then markdown: the model and the config that matches its weights, a usage
snippet, the data and their licence, training provenance, evaluation (metrics and counts in
separate tables), intended use, limitations and BibTeX for the paper(s).

Licences. The neurofm code is MIT. Weights are derived from their training data, so the card's
``license`` is the data's when every session file states the same one (root attr ``license``,
an SPDX id such as ``MIT`` or ``CC-BY-4.0``); when the files do not say, the card leaves the
``license`` field out and says so, showing the files' ``lab`` / ``source`` attrs instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from neurofm.atomic import atomic_write

CODE_LICENSE = "MIT"

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

#: model_type (config.json) -> family
_FAMILY = {"Neuroformer": "neuroformer", "Barista": "barista", "BaristaEncoder": "barista",
           "BaristaFinetuned": "barista"}

#: BibTeX of the papers. Titles, authors and arXiv ids as on the arXiv listings (Neuroformer:
#: arXiv 2311.00136, ICLR 2024; BaRISTA: arXiv 2512.12135, NeurIPS 2025).
BIBTEX = {
    "neuroformer": """@inproceedings{antoniades2024neuroformer,
  title         = {Neuroformer: Multimodal and Multitask Generative Pretraining for Brain Data},
  author        = {Antoniades, Antonis and Yu, Yiyi and Canzano, Joseph and Wang, William and Smith, Spencer LaVere},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2024},
  eprint        = {2311.00136},
  archivePrefix = {arXiv}
}""",
    "barista": """@inproceedings{oganesian2025barista,
  title         = {{BaRISTA}: Brain Scale Informed Spatiotemporal Representation of Human Intracranial Neural Activity},
  author        = {Oganesian, Lucine L. and Hashemi, Saba and Shanechi, Maryam M.},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2512.12135},
  archivePrefix = {arXiv}
}""",
}

#: Hub licence ids (https://huggingface.co/docs/hub/repositories-licenses) a data licence maps to,
#: keyed by its lower-cased SPDX id.
_HUB_LICENSES = {
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "cc0-1.0", "cc-by-2.0",
    "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0",
    "cc-by-nc-sa-4.0", "odc-by", "odbl", "pddl", "gpl-2.0", "gpl-3.0", "lgpl-2.1", "lgpl-3.0", "agpl-3.0",
    "mpl-2.0", "unlicense", "wtfpl", "isc", "zlib",
}

#: Spellings datasets use (BIDS recommends "CC0") -> the Hub id.
_LICENSE_ALIASES = {"cc0": "cc0-1.0", "cc-0": "cc0-1.0", "public domain": "pddl"}

#: Hub metric ids for neurofm metric names (by suffix); metrics without one are only in the
#: model-index and the tables.
_HUB_METRIC = (("_pearson_r", "pearsonr"), ("_r2", "r2"), ("auroc", "roc_auc"), ("_f1", "f1"),
               ("_precision", "precision"), ("_recall", "recall"), ("_mse", "mse"))

#: A metrics entry is a count (how many windows / spikes / events a number rests on), not a
#: score, when a word of its name is ``n`` (``speed_n_scored``, ``n_test_windows``).
_COUNT = re.compile(r"(^|_)n_")


def is_count(name: str) -> bool:
    """Whether a ``metrics`` entry is a count rather than a score (see :data:`_COUNT`)."""
    return bool(_COUNT.search(name))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, float) for x in v):  # a CI: [lo, hi]
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


# -- data provenance ------------------------------------------------------------------------------


def data_sources(paths: Iterable[str | Path]) -> list[dict]:
    """Provenance of each session file: ``path``, ``session_id``, ``lab``, ``source``,
    ``license`` (root attrs; "" when absent). Files that do not exist are listed with
    ``missing: True`` (a card can still be written from an old run). Only the root attributes
    are read (h5py directly: cards sit below the data layer, since every saved model writes one)."""
    import h5py

    out = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            out.append({"path": str(p), "missing": True})
            continue
        with h5py.File(p, "r") as f:
            a = {k: v.decode() if isinstance(v, bytes) else v for k, v in f.attrs.items()}
        out.append({"path": str(p), "session_id": str(a.get("session_id", p.stem)),
                    **{k: str(a.get(k, "")) for k in ("lab", "source", "license")}})
    return out


def run_session_paths(run_config: dict) -> list[str]:
    """The session files a run read: ``data.sessions``, else the simulated ``data.simulate.path``."""
    data = run_config.get("data", {}) or {}
    sessions = list(data.get("sessions") or [])
    if not sessions and (data.get("simulate") or {}).get("path"):
        sessions = [data["simulate"]["path"]]
    return [str(s) for s in sessions]


def weights_license(sources: list[dict]) -> str | None:
    """The Hub licence id of weights trained on ``sources``: the data's licence when every
    file states the same Hub-known one, ``"other"`` when they state different or unknown
    ones, ``None`` when any file states none (the card then omits the field and says so)."""
    found = {s.get("license", "").strip() for s in sources}
    if not sources or "" in found or any(s.get("missing") for s in sources):
        return None
    ids = {_LICENSE_ALIASES.get(f.lower(), f.lower()) for f in found}
    if len(ids) == 1 and next(iter(ids)) in _HUB_LICENSES:
        return next(iter(ids))
    return "other"


# -- the card ---------------------------------------------------------------------------------------


def render_card(metrics: dict | None, config_yaml: str = "", *, model_meta: dict | None = None,
                repo_id: str | None = None, n_params: int | None = None) -> str:
    """Markdown model card (with YAML front matter).

    Parameters
    ----------
    metrics : a run's ``metrics.json`` content, or None for a card of the weights alone
        (:meth:`neurofm.hub.PretrainedMixin.generate_model_card`).
    config_yaml : the run's ``config.yaml``: shown for its data / task / trainer settings (its
        ``model`` section is the recipe's request; the model's real shape is ``model_meta``).
    model_meta : the exported model's ``config.json`` (:func:`neurofm.hub.model_meta`): the
        config that matches the weights, embedded in the card.
    repo_id : what the usage snippet loads (default: ``"PATH_OR_REPO_ID"``).
    n_params : parameter count, when ``metrics`` (which records it) is None.
    """
    from huggingface_hub import EvalResult, ModelCardData

    m = dict(metrics or {})
    if n_params is not None:
        m.setdefault("n_params", int(n_params))
    model_type = (model_meta or {}).get("model_type", "")
    family = m.get("family") or _FAMILY.get(model_type, "unknown")
    data = m.get("data", {})
    sources = data.get("sources", [])
    scores, counts = _split_counts(m.get("metrics", {}))
    baselines = {name: _split_counts(row)[0] for name, row in m.get("baselines", {}).items()}
    name = m.get("name") or (f"neurofm-{model_type.lower()}" if model_type else f"neurofm-{family}")
    licence = weights_license(sources) if metrics is not None else None

    eval_results = []
    if scores:
        dataset_name = data.get("description") or "held-out test block"
        # every session the numbers come from (a two-day pretraining was typed as its first day alone)
        dataset_type = _slug("-".join(map(str, data.get("datasets") or [dataset_name])))
        task_name = f"{family} evaluation on the held-out test block"
        rows = [(None, scores)] + list(baselines.items())
        for who, row in rows:
            for key, value in row.items():
                if not isinstance(value, (int, float)) or value != value:  # skip NaN: not valid in model-index
                    continue
                eval_results.append(EvalResult(
                    task_type="other", task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                    dataset_split="test", metric_type=key, metric_value=float(value),
                    metric_name=key if who is None else f"{key} (baseline: {who})",
                    metric_config=None if who is None else f"baseline: {who}"))
    hub_metrics = sorted({hub for key in scores for suffix, hub in _HUB_METRIC if key.endswith(suffix)})
    card_data = ModelCardData(
        library_name="neurofm",
        license=licence,
        tags=["neuroscience", family, {"neuroformer": "spikes", "barista": "ieeg"}.get(family, "neural-data"),
              "pytorch", "model_hub_mixin"],
        datasets=[d for d in data.get("datasets", []) if "/" in str(d)] or None,  # Hub ids only
        metrics=hub_metrics or None,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
    )

    intended = _finetuned_text(family, config_yaml) or _INTENDED.get(family, "")
    lines = [f"# {name}", "", intended, ""]
    lines += _model_section(model_meta, m)
    lines += _usage_section(family, model_type, repo_id, model_meta, config_yaml)
    if metrics is not None:
        lines += _data_section(data, sources)
    lines += _licence_section(sources, licence, metrics is not None)
    if metrics is not None:
        lines += _training_section(m.get("training", {}), config_yaml)
        lines += _evaluation_section(m.get("protocol", "(not recorded)"), scores, baselines, counts,
                                     {k: v for k, v in data.items() if k not in _DATA_TEXT})
        lines += _generation_section(m.get("generation"))
    else:
        lines += ["## Evaluation", "",
                  "None recorded with these weights. A training run's card (`neurofm card RUN_DIR`) has the "
                  "held-out metrics and baselines.", ""]
    lines += [
        "## Intended use", "",
        intended,
        "Research use on neural recordings; not a medical device and not for clinical decisions.", "",
        "## Limitations", "",
        *[f"- {x}" for x in _limitations(m)],
    ]
    if metrics is not None:
        train = m.get("training", {})
        kept = train.get("selection") or {}
        start = (f"; the exported weights are the starting state (step 0: {kept.get('why', 'no check beat it')}), "
                 f"not the last step" if kept.get("kept") == "start" else
                 f"; the exported weights are step {kept['selected_step']}'s, the best validation check"
                 if kept.get("kept") == "check" and kept.get("selected_step") is not None else "")
        lines.append(f"- Trained on the data above only ({train.get('device', '?')}, {train.get('steps', '?')} "
                     f"steps{start}); numbers on other recordings will differ.")
    lines += [f"- neurofm {m.get('neurofm_version') or (model_meta or {}).get('neurofm_version', '?')}.", ""]
    lines += _citation_section(family)
    return "---\n" + card_data.to_yaml() + "\n---\n\n" + "\n".join(lines)


def _limitations(m: dict) -> list[str]:
    """``metrics.json`` ``limitations``, plus every decode-report verdict where the model loses to
    a baseline (``... LOSES to ...``) that is not among them already: a fine-tuned Neuroformer's
    run records its verdicts only in ``decode_report`` (one report per target), and its card said
    nothing of a loss its decode report stated."""
    out = list(m.get("limitations", []))
    reports = list((m.get("decode_report") or {}).values()) + [m.get("report") or {}]
    for rep in reports:
        for verdict in (rep.get("verdicts", []) if isinstance(rep, dict) else []):
            if " LOSES to " in verdict and verdict not in out and not any(verdict in x for x in out):
                out.append(verdict)
    return out


#: ``metrics.json`` ``data`` entries that describe the data; every other entry is a size the
#: numbers rest on (n_units, n_test_windows, test_segments, per-class counts...).
_DATA_TEXT = ("description", "datasets", "sources")


def _split_counts(row: dict) -> tuple[dict, dict]:
    scores = {k: v for k, v in row.items() if not is_count(k)}
    counts = {k: v for k, v in row.items() if is_count(k)}
    return scores, counts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-") or "dataset"


def _model_section(model_meta: dict | None, m: dict) -> list[str]:
    lines = ["## Model", ""]
    if model_meta is None:
        if "n_params" in m:
            lines += [f"- parameters: {m['n_params']:,}", ""]
        return lines + ["(config.json of the exported model not found: the run folder has no `pretrained/`.)", ""]
    cfg = model_meta.get("config", {})
    lines.append(f"- class: `{model_meta.get('model_type')}` (neurofm {model_meta.get('neurofm_version', '?')})")
    if "n_params" in m:
        lines.append(f"- parameters: {m['n_params']:,}")
    units = cfg.get("units")
    if isinstance(units, list) and units:
        lines.append(f"- unit vocabulary: {len(units)} units (`{units[0]}` ... `{units[-1]}`); "
                     f"new units get new embedding rows when fine-tuning")
    for key in ("n_embd", "n_head", "d_model", "n_layers", "n_heads", "encode_scale", "mask_scale", "task", "head"):
        if key in cfg and not isinstance(cfg[key], (dict, list)):
            lines.append(f"- {key}: {cfg[key]}")
    enc = cfg.get("encoder")
    if isinstance(enc, dict):
        lines += [f"- encoder {k}: {enc[k]}" for k in ("d_model", "n_layers", "encode_scale") if k in enc]
    lines += ["", "<details><summary>config.json (the config that matches these weights)</summary>", "",
              "```json", json.dumps(model_meta, indent=2), "```", "", "</details>", ""]
    return lines


def _usage_section(family: str, model_type: str, repo_id: str | None, model_meta: dict | None = None,
                   config_yaml: str = "") -> list[str]:
    where = repo_id or "PATH_OR_REPO_ID"
    # the behaviour this model decodes, if it was trained to (a speed model's card said "--behavior position")
    targets = [v.get("name") for v in ((model_meta or {}).get("config", {}).get("behavior") or [])
               if isinstance(v, dict) and v.get("target") and v.get("name")]
    behavior = " ".join(targets) or "position"
    lines = ["## Usage", "", "```python", "import neurofm", "",
             f'model = neurofm.from_pretrained("{where}")  # a local folder, or a Hub repo id (revision=, cache_dir=)']
    if model_type:
        lines.append(f"# or: from neurofm import {model_type}; model = {model_type}.from_pretrained(\"{where}\")")
    lines += ["```", ""]
    if family == "neuroformer":
        lines += ["Fine-tune behaviour decoding on your own session file and score it on its test block:", "",
                  "```bash",
                  f"neurofm finetune --pretrained {where} --data my_recording.h5 --behavior {behavior} --run-dir runs/ft",
                  f"neurofm evaluate --pretrained runs/ft/pretrained --data my_recording.h5 --behavior {behavior}",
                  "```", ""]
    elif family == "barista":
        lines += _barista_usage(where, model_type, (model_meta or {}).get("config", {}), _config_section(config_yaml))
    return lines


def _config_section(config_yaml: str, section: str = "data") -> dict:
    """A section (``data``, ``task``) of a run's config.yaml ({} when there is none or it does not parse)."""
    if not config_yaml:
        return {}
    import yaml

    try:
        data = (yaml.safe_load(config_yaml) or {}).get(section) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _finetuned_text(family: str, config_yaml: str) -> str:
    """What a fine-tuning run's model is, from its config.yaml: what it decodes and what it started
    from (the pretrained folder, or random init for ``--from-scratch``); ``""`` for any other run.
    A fine-tuned envelope regressor's card read "Pretrained iEEG encoder for event detection,
    behaviour regression and channel reconstruction after fine-tuning on a new subject"."""
    task, data = _config_section(config_yaml, "task"), _config_section(config_yaml)
    if task.get("mode") != "finetune":
        return ""
    if family == "barista":
        kind = task.get("finetune_task", "")
        what = {"classification": f"classification of the events '{data.get('events', '')}'"
                + (f" ({', '.join(map(str, data['labels']))})" if data.get("labels") else ""),
                "regression": f"regression of the behaviour '{data.get('target', '')}' (its mean over each segment)",
                }.get(kind, f"{kind or 'the task in its config'}")
        model = "BaRISTA model"
    else:
        names = [b.get("name", b) if isinstance(b, dict) else b for b in (data.get("behavior") or [])]
        what = f"decoding of {', '.join(map(str, names)) or 'behaviour'}"
        model = "Neuroformer"
    start = (f"from random init in the shape of {task.get('pretrained', '?')} (--from-scratch: the control for "
             f"what pretraining adds)" if task.get("from_scratch") else
             f"from the pretrained model {task.get('pretrained') or '?'}")
    return (f"{model} fine-tuned for {what} on the recordings below, {start}. Its numbers hold for these "
            f"recordings (Evaluation); on another recording or subject, fine-tune again from the pretrained model.")


def _barista_usage(where: str, model_type: str, config: dict, data: dict) -> list[str]:
    """A BaRISTA card's commands, with the events / target / classes its run used (a card of a
    model fine-tuned on 'annotations' S1/S2 said `--events word_onset`, the demo's group)."""
    events = data.get("events") or "word_onset"
    labels = [str(x) for x in (data.get("labels") or [])]
    pick = f" data.labels='[{','.join(labels)}]'" if labels else ""
    if model_type == "BaristaFinetuned" and config.get("task") == "regression" and data.get("target"):
        return ["Score it on a session file with the same behaviour (predictions come back in its units):", "",
                "```bash", f"neurofm evaluate --pretrained {where} --data my_ieeg.h5 --behavior {data['target']}",
                "```", ""]
    if model_type == "BaristaFinetuned" and config.get("task") == "classification":
        names = ", ".join(config.get("label_names") or [])
        return [f"Score it on a session file whose /events/{events} carry its classes ({names}):", "",
                "```bash", f"neurofm evaluate --pretrained {where} --data my_ieeg.h5 --events {events}{pick}",
                "```", ""]
    return ["Fine-tune event detection on your own session file (any channel count):", "",
            "```bash", f"neurofm finetune --pretrained {where} --data my_ieeg.h5 --task classify --events {events}{pick}",
            "```", ""]


def _data_section(data: dict, sources: list[dict]) -> list[str]:
    lines = ["## Data", "", data.get("description", "(not recorded)"), ""]
    if sources:
        lines += ["| session file | session_id | lab | source | licence |", "|---|---|---|---|---|"]
        for s in sources:
            if s.get("missing"):
                lines.append(f"| {s['path']} | (file not found when the card was written) | | | |")
            else:
                lines.append(f"| {s['path']} | {s.get('session_id', '')} | {s.get('lab', '')} | "
                             f"{s.get('source', '')} | {s.get('license') or 'not recorded'} |")
        lines.append("")
    return lines


def _licence_section(sources: list[dict], licence: str | None, from_run: bool) -> list[str]:
    lines = ["## Licence", "", f"- Code (neurofm): {CODE_LICENSE}."]
    if not from_run:
        lines.append("- Weights: follow the licence of the data they were trained on, which this card does not "
                     "record (write the card from the training run: `neurofm card RUN_DIR`).")
    elif licence is None:
        labs = sorted({s.get("lab", "") for s in sources if s.get("lab")})
        lines.append("- Weights: derived from the training data, whose licence the session files do not record "
                     "(no `license` attribute)"
                     + (f"; their `lab` attribute reads: {'; '.join(repr(x) for x in labs)}" if labs else "")
                     + ". Check the data's terms before you redistribute these weights; the card's `license` "
                       "field is left out for that reason.")
    else:
        stated = sorted({s.get("license", "") for s in sources})
        lines.append(f"- Weights: `{licence}`, the licence the training data state "
                     f"({', '.join(stated)}; session files' `license` attribute).")
    return lines + [""]


def _training_section(train: dict, config_yaml: str) -> list[str]:
    lines = ["## Training", ""]
    lines += [f"- {k}: {_fmt(v) if not isinstance(v, dict) else json.dumps(v)}" for k, v in train.items()]
    trainer = _config_section(config_yaml, "trainer")
    cap, epochs = trainer.get("max_steps"), trainer.get("max_epochs")
    # pretraining only: a fine-tune's config.yaml holds the recipe's step budget as max_steps (its schedule)
    pretraining = _config_section(config_yaml, "task").get("mode", "pretrain") == "pretrain"
    steps, done = train.get("steps"), train.get("epochs")
    if (pretraining and isinstance(cap, int) and cap > 0 and isinstance(steps, int) and steps >= cap
            and isinstance(epochs, int) and isinstance(done, int) and done < epochs):
        # a pretraining cut short to fit a machine: 240 steps, 9 of the config's 15 epochs, read as a full run
        lines.append(f"- stopped by the cap trainer.max_steps={cap}, in epoch {train['epochs']} of the config's "
                     f"max_epochs={epochs}: a shortened run, not the config's schedule")
    if config_yaml:
        lines += ["", "<details><summary>Run config (config.yaml: data, task and trainer settings; the model's "
                  "shape is config.json above)</summary>", "", "```yaml", _without_model(config_yaml).rstrip(),
                  "```", "", "</details>"]
    return lines + [""]


def _without_model(config_yaml: str) -> str:
    """The run config without its ``model:`` section (the recipe's request, e.g. ``n_units: 1``
    before the data set it; the exported config.json is the truth about the weights)."""
    out, skipping = [], False
    for line in config_yaml.splitlines():
        if re.match(r"^model:", line):
            skipping = True
            out.append("model: (see config.json: the exported model's config)")
            continue
        if skipping and (line.startswith((" ", "-")) or not line.strip()):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def _evaluation_section(protocol: str, scores: dict, baselines: dict, counts: dict, data_counts: dict) -> list[str]:
    lines = ["## Evaluation", "", f"Protocol: {protocol}", ""]
    rows = {"this model": scores, **{f"baseline: {k}": v for k, v in baselines.items()}}
    cols = sorted({c for r in rows.values() for c in r})
    if cols:
        lines += ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for who, r in rows.items():
            # None: a metric metrics.json records as undefined (null_reasons), e.g. the Pearson r of
            # the training-mean null's constant prediction; "None" in a table reads as a bug
            lines.append(f"| {who} | " + " | ".join(("undefined" if r[c] is None else _fmt(r[c])) if c in r else ""
                                                    for c in cols) + " |")
        lines.append("")
    all_counts = {**data_counts, **counts}
    if all_counts:
        lines += ["What the numbers rest on:", "", "| count | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v) if not isinstance(v, dict) else json.dumps(v)} |" for k, v in all_counts.items()]
        lines.append("")
    return lines


def _generation_section(generation: dict | None) -> list[str]:
    """The plain lines on generated spikes vs the generators they must beat (Neuroformer)."""
    if not generation or not generation.get("verdicts"):
        return []
    n, k, b = generation.get("n_windows"), generation.get("n_blocks"), generation.get("block_s")
    draws = generation.get("n_draws", 1)
    head = (f"Generated spikes (teacher-forced past), window F1 on {n} test windows (mean of {draws} draw"
            f"{'s' if draws != 1 else ''} per window), 95% CIs from a paired bootstrap over {k} blocks of {b:g} s:"
            if n and k and b else "Generated spikes (teacher-forced past):")
    return [head, "", *[f"- {v}" for v in generation["verdicts"]], ""]


def _citation_section(family: str) -> list[str]:
    order = [family] + [f for f in BIBTEX if f != family] if family in BIBTEX else list(BIBTEX)
    lines = ["## Citation", "", "If you use this model, cite the paper it implements"
             + (":" if family in BIBTEX else "s:"), "", "```bibtex", BIBTEX[order[0]], "```", ""]
    if family in BIBTEX:
        lines += ["neurofm also implements:", ""]
    lines += ["```bibtex", "\n\n".join(BIBTEX[f] for f in order[1:]), "```", ""]
    return lines


def write_card(run_dir: str | Path, out: str | Path | None = None, *, repo_id: str | None = None) -> Path:
    """Render a run's card at ``out`` (default ``run_dir/pretrained/README.md``) from
    ``metrics.json``, ``config.yaml`` and the exported ``pretrained/config.json``. The data's
    provenance (session attrs) is read from the session files when ``metrics.json`` lacks it.
    ``repo_id``: the Hub repo the usage snippet loads (default a placeholder)."""
    import yaml

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path}: missing; run training first (it writes metrics.json)")
    metrics = json.loads(metrics_path.read_text())
    if "cross_validation" in metrics:  # no model of its own: the folds' are the models
        folds = metrics["cross_validation"].get("folds", "K")
        raise ValueError(f"{run_dir}: a cross-validation run (finetune --folds {folds}) has no model of its own; "
                         f"each fold's model has its card: `neurofm card {run_dir / 'fold-1'}` (the pooled report "
                         f"is {run_dir / 'decode_report.md'})")
    cfg_path = run_dir / "config.yaml"
    config_yaml = cfg_path.read_text() if cfg_path.exists() else ""
    meta_path = run_dir / "pretrained" / "config.json"
    model_meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if config_yaml and "sources" not in metrics.get("data", {}):
        paths = run_session_paths(yaml.safe_load(config_yaml) or {})
        metrics.setdefault("data", {})["sources"] = data_sources(paths)
    card = render_card(metrics, config_yaml, model_meta=model_meta, repo_id=repo_id)
    out = Path(out) if out else run_dir / "pretrained" / "README.md"
    return atomic_write(out, card)
