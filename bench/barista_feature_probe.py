"""Why BaRISTA's grip-force fine-tune stays at R2 ~0: linear probes on the encoder's features vs band power.

On the held-out subject of ``bench/barista_quality.py --only subjects`` (cached pretraining
runs, reused), per seed and encoding scale, fit a linear read-out on the training block and
score the test block, on the same segments as the fine-tune's decode report
(:func:`neurofm.recipes.barista._segment_pass` over the recipe's own data module):

* ``token mean``: the frozen encoder's tokens averaged over channels and patches (d values):
  what the decode report's probe reads and what the fine-tuning head starts from;
* ``per channel``: each channel's tokens averaged over patches, channels concatenated
  (C x d values; the held-out subject has one fixed layout);
* ``token weighting (rank 1)``: the best read-out a token-weighting head (DESIGN.md 4: a
  weight per token, then one ``Linear(d -> out)``) can express with per-channel weights,
  ``y = sum_c w_c v . h_c + b``, fitted by alternating ridge from ``w = 1`` (the token mean);
* ``band power``: log band power per channel (the report's baseline features);
* the same read-outs on the CNN tokenizer's output (before the spatial embedding and the
  transformer) and on squared tokens (a quadratic read-out: power is quadratic in the signal);
* ``token -> own log power``: whether a channel's token carries that channel's log band
  power at all (:func:`neurofm.recipes.barista.token_power_r2`, the check every BaRISTA
  pretraining report now runs: ridge over (segment, channel) pairs, per band; test R2).

For the pretrained encoder and a random one of the same shape (seeded as the recipe's
random-init arm). Regression (``grip_force``): ridge (:class:`neurofm.baselines.Ridge`,
penalty by blocked 5-fold CV of the training segments), test R2; classification (``word_onset``):
logistic (:class:`neurofm.baselines.Logistic`), test AUROC.

Measured (2026-12-03 10:49-11:08, shared 2-core CPU at load ~7, one thread; the 9 cached
1,520-step pretraining runs of ``barista_quality.py`` part 3, quick sizes: held-out subject of
30 contacts, 149 training / 119 test force segments and 51 / 38-39 event segments per seed;
mean [95% t-interval] over seeds 0, 1, 2; the token-mean and band-power columns equal the
fine-tune reports' probe and baseline rows, so these are the same segments). Grip-force R2:

| scale  | encoder     | token mean | per channel | per channel, 6 PCs | rank 1 (token weighting) | squared, per channel | tokenizer, per channel | band power |
|--------|-------------|------------|-------------|--------------------|--------------------------|----------------------|------------------------|------------|
| coords | pretrained  | -0.05      | -0.03       | -0.02              | -0.40                    | -0.03                | -0.01                  | 0.75 [0.61, 0.89] |
| coords | random init | -0.01      | -0.01       | -0.01              | -0.65                    | -0.01                | -0.01                  | 0.75       |
| parcel | pretrained  | -0.04      | 0.05 [-0.25, 0.34] | -0.18       | -0.49                    | -0.07                | 0.06                   | 0.75       |
| parcel | random init | -0.08      | -0.01       | -0.01              | -0.55                    | -0.01                | -0.01                  | 0.75       |
| lobe   | pretrained  | -0.05      | -0.08       | -0.02              | -0.63                    | -0.05                | -0.10                  | 0.75       |
| lobe   | random init | -0.12      | -0.01       | -0.20              | -0.83                    | -0.01                | -0.01                  | 0.75       |

Best single run: 0.22 (seed 0 parcel, squared tokenizer output per channel; band power 0.72
there); best mean over seeds 0.07 (parcel, the same with 6 PCs per channel). Event
AUROC (pretrained; random init): token mean 0.66 / 0.69 / 0.68 (0.59 / 0.58 / 0.51), per
channel 0.64 / 0.69 / 0.68 (0.50 / 0.47 / 0.47), rank 1 0.62 / 0.68 / 0.67, band power 0.90
(coords / parcel / lobe). Does a channel's token carry its own log band power (test R2 over
~3,600 test (segment, channel) pairs)? High gamma (70-128 Hz, what drives the force): encoder
0.22 / 0.26 / 0.10 pretrained, 0.17 / 0.13 / 0.05 random init; the CNN tokenizer's output
alone 0.09 / 0.12 / 0.01 pretrained, 0.01 / 0.01 / 0.01 random; beta (13-30 Hz) through the
encoder 0.41 / 0.51 / 0.44 (random 0.30 / 0.34 / 0.34).

Reading: per-channel features are NOT close to band power (best mean 0.07 vs 0.75), with as
many features as band power (6 PCs per channel) or all of them, linear or squared, after the
tokenizer or after the transformer, pretrained or random. So the fine-tuning head's start is
not what fails: the frozen encoder does not carry the force signal in any form a read-out
can use, because its tokens barely carry a channel's high-gamma power (R2 <= 0.26 after the
encoder, <= 0.12 at the tokenizer, against 0.41-0.51 for beta after the encoder). Neither head could start at a per-channel probe anyway:
a token-weighting head computes ``W (sum_t w_t h_t) / n``, i.e. per-channel read-outs
``w_c W`` that share one direction (rank 1 over channels), the pooled head one ``W`` after a
content-weighted mean; the best rank-1 fit scores below the token mean out of sample. Fine-
tuning does not build the missing feature from ~150 training segments either (seed 0/1/2,
parcel, 30 epochs as ``neurofm finetune``, probe start, best check): test R2 CNN frozen
-0.039 / -0.054 / +0.002 (random init -0.269 / -0.217 / -0.015), CNN trained too
(``task.freeze_cnn=false``) -0.026 / -0.055 / -0.001 (random init -0.151 / -0.386 / -0.015);
band power 0.723 / 0.818 / 0.719. Cause, measured since (``bench/barista_token_power.py``, per patch): not the 256 Hz rate but
the tokenizer's parameter-free LayerNorms, which set every convolution's output map to unit
variance inside each patch; the log scales they remove carry a patch's log high-gamma power
at R2 0.76-0.87 (also at 2048 Hz with 512-sample patches, untrained), the token <= 0.14. Every
BaRISTA pretraining now reports this check (``token_own_power_r2_*`` in ``metrics.json``, via
:func:`neurofm.recipes.barista.token_power_r2`), and ``model.token_scales`` adds those scales
to each token.

Usage::

    OMP_NUM_THREADS=1 python bench/barista_feature_probe.py --runs '/tmp/bpre/bq/s{seed}' --seeds 0 1 2 \\
        --json /tmp/itable/probe.json   # ~20 min at load 7
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from neurofm.baselines import BandPowerRidge, Logistic, Ridge  # noqa: E402
from neurofm.config import from_dict  # noqa: E402
from neurofm.hub import load_pretrained  # noqa: E402
from neurofm.metrics import auroc, r2_score  # noqa: E402
from neurofm.models.barista import BaristaEncoder  # noqa: E402
from neurofm.recipes import barista as recipe  # noqa: E402
from neurofm.recipes.barista import token_power_r2  # noqa: E402  (the pretraining report's check)

sys.path.insert(0, str(ROOT / "bench"))
from barista_quality import SCALES, _seed_ci, _subjects_data, _subject_size  # noqa: E402


def flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(len(a), -1)


def channel_pcs(train: np.ndarray, test: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel features ``(n, C, d)`` projected on the first ``k`` principal components of
    the training tokens (pooled over segments and channels): ``(n, C * k)``, as many features
    as band power has, so the probe's penalty faces the same count."""
    Z = train.reshape(-1, train.shape[2])
    mu = Z.mean(0)
    _, _, vt = np.linalg.svd(Z - mu, full_matrices=False)
    return flat((train - mu) @ vt[:k].T), flat((test - mu) @ vt[:k].T)


def _raw_weights(model) -> np.ndarray:
    """First-column weights of a fitted Ridge / Logistic on the unstandardised features."""
    coef = model.coef_[:-1] if isinstance(model, Logistic) else model.coef_  # Logistic: bias in the last row
    return coef.reshape(len(coef), -1)[:, 0] / model.x_std_


def rank_one(H: np.ndarray, y: np.ndarray, fit, iters: int = 8) -> tuple[object, np.ndarray]:
    """``y = sum_c w_c v . h_c + b`` on per-channel training features ``H`` (n, C, d): alternate a
    fit (``fit(X, y)``: a fitted Ridge or Logistic) of ``v`` on ``sum_c w_c h_c`` and of ``w`` on
    ``(v . h_c)_c``, starting from ``w = 1`` (the token mean up to scale). Returns the last
    ``v`` model and ``w``; predict with ``model`` on ``einsum("c,ncd->nd", w, H_test)``."""
    w = np.ones(H.shape[1])
    for _ in range(iters):
        v = _raw_weights(fit(np.einsum("c,ncd->nd", w, H), y))
        w = _raw_weights(fit(np.einsum("ncd,d->nc", H, v), y))
        w = w / (np.abs(w).max() or 1.0)
    return fit(np.einsum("c,ncd->nd", w, H), y), w


def probe_table(runs: str, seed: int, scale: str, quick: bool = True) -> dict:
    folder = Path(runs.format(seed=seed))
    n_pre = _subject_size("n_pretrain_subjects", quick)
    pre_s, held_s = _subject_size("pretrain_s", quick), _subject_size("heldout_s", quick)
    held = sorted((folder / f"subjects_seed{seed}_{n_pre}x{pre_s:.0f}s_{held_s:.0f}s").glob("sub-*.h5"))[-1]
    pretrained = folder / f"subj{seed}-pretrain-{scale}" / "pretrained"
    out: dict = {}
    for kind, data in (("regression", {"target": "grip_force"}), ("classification", {"events": "word_onset"})):
        tree = {"family": "barista", "seed": seed, "resume": "none", "run_dir": f"/tmp/unused-{seed}-{scale}",
                "data": {**_subjects_data([str(held)], _subject_size("segment", quick)), **data},
                "task": {"mode": "finetune", "finetune_task": kind, "pretrained": str(pretrained)}}
        cfg = recipe.prepare(from_dict(recipe.RunConfig, tree, where="barista_feature_probe"))
        dm = recipe.datamodule(cfg)
        dm.setup("fit")
        dm.setup("test")
        loaded = load_pretrained(str(pretrained))
        encoder = getattr(loaded, "encoder", loaded)
        torch.manual_seed(cfg.seed)  # as the recipe draws its random-init encoder
        encoders = {"pretrained": encoder.eval(), "random init": BaristaEncoder(encoder.config).eval()}
        bands = BandPowerRidge(cfg.model.sampling_rate)
        for name, enc in encoders.items():
            tok = lambda b, e=enc: e.tokenize(b["x"], b["channel_mask"].bool())  # noqa: E731
            stages = {"": enc, "tokenizer ": tok, "squared ": lambda b, e=enc: e(b) ** 2,
                      "tokenizer squared ": lambda b: tok(b) ** 2}
            feats, rank1, power = {}, None, {}
            for stage, fn in stages.items():
                tr = recipe._segment_pass(dm.loader("train"), fn, bands, channels=True)
                te = recipe._segment_pass(dm.loader("test"), fn, bands, channels=True)
                k = tr["bp"].shape[2]  # as many features per channel as band power has
                feats[stage + "token mean"] = (tr["feat"], te["feat"])
                feats[stage + "per channel"] = (flat(tr["chan"]), flat(te["chan"]))
                feats[stage + f"per channel, {k} PCs"] = channel_pcs(tr["chan"], te["chan"], k)
                if not stage:
                    feats["band power"] = (flat(tr["bp"]), flat(te["bp"]))
                    rank1 = (tr["chan"], te["chan"])
                if kind == "regression" and stage in ("", "tokenizer "):
                    power[stage] = token_power_r2(tr, te, list(bands.bands))
            row = {}
            if kind == "regression":
                ytr, yte = tr["y"].reshape(len(tr["y"]), -1), te["y"].reshape(len(te["y"]), -1)
                for f, (a, b) in feats.items():
                    row[f] = float(r2_score(yte, Ridge().fit(a, ytr).predict(b)))
                model, w = rank_one(rank1[0], ytr, lambda X, y: Ridge().fit(X, y))
                row["token weighting (rank 1)"] = float(r2_score(yte, model.predict(np.einsum("c,ncd->nd", w, rank1[1]))))
            else:
                ytr, yte = tr["y"].astype(int), te["y"].astype(int)
                for f, (a, b) in feats.items():
                    row[f] = float(auroc(yte, Logistic().fit(a, ytr).decision_function(b)))
                model, w = rank_one(rank1[0], ytr, lambda X, y: Logistic().fit(X, y))
                row["token weighting (rank 1)"] = float(auroc(yte, model.decision_function(
                    np.einsum("c,ncd->nd", w, rank1[1]))))
            row.update(train_segments=int(len(ytr)), test_segments=int(len(yte)), channels=int(rank1[0].shape[1]))
            for stage, r2s in power.items():
                row.update({f"{stage or 'encoder '}token -> own log power, {b}": v for b, v in r2s.items()})
            out[f"{kind}/{name}"] = row
            print(f"  seed {seed} {scale:<6} {kind:<14} {name:<11} "
                  + "  ".join(f"{f} {v:+.3f}" for f, v in row.items() if isinstance(v, float)), flush=True)
    return out


def table(summary: dict, n_seeds: int) -> str:
    """One markdown table per target: mean [95% t-interval] over seeds of each read-out."""
    lines = []
    for kind, metric in (("regression", "R2"), ("classification", "AUROC")):
        keys = [k for k in summary if k.split("/")[1] == kind]
        if not keys:
            continue
        names = list(summary[keys[0]])
        lines += ["", f"{kind} ({metric}, test block)", "",
                  "| scale | encoder | " + " | ".join(names) + " |", "|---" * (2 + len(names)) + "|"]
        for key in keys:
            sc, _, enc = key.split("/")
            row = summary[key]
            cells = [f"{row[f]['mean']:.3f} [{row[f]['ci'][0]:.3f}, {row[f]['ci'][1]:.3f}]" if n_seeds > 1
                     else f"{row[f]['mean']:.3f}" for f in names]
            lines.append(f"| {sc} | {enc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="/tmp/bpre/bq/s{seed}",
                    help="barista_quality --only subjects output folder of each seed ({seed} is filled in)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scales", nargs="+", choices=SCALES, default=list(SCALES))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    runs = {f"{s}/{sc}": probe_table(args.runs, s, sc) for s in args.seeds for sc in args.scales}
    summary = {}
    for sc in args.scales:
        for key in ("regression/pretrained", "regression/random init", "classification/pretrained",
                    "classification/random init"):
            names = [f for f, v in runs[f"{args.seeds[0]}/{sc}"][key].items() if isinstance(v, float)]
            summary[f"{sc}/{key}"] = {f: _seed_ci([runs[f"{s}/{sc}"][key][f] for s in args.seeds]) for f in names}
    result = {"runs": runs, "summary": summary, "seeds": args.seeds}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(table(summary, len(args.seeds)))
    return result


if __name__ == "__main__":
    main()
