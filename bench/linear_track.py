"""Linear-track position decoding floor: ridge on binned counts under the DESIGN.md 8 protocol.

Converts ``../shared/data/spikes/linear-track.nwb`` (resolved from the repository root) to a
session file in a temporary folder, then scores, on the same bins, folds and moving mask
(:func:`neurofm.evaluation.decoding_setup`):

* **ridge** on every unit's counts in the current and 5 previous 50 ms bins, trained on all
  moving training bins (the floor DESIGN.md 8 quotes as R2 about 0.19, x and y averaged; that
  was measured when speed was the smoothed norm of the frame-to-frame change, which counted
  jittery pauses as moving: with the speed of the smoothed position it is 0.252 on 6,766 bins);
* **ridge, 10% labelled**: only 10% of the training bins labelled, in 5 s chunks (the
  few-shot floor), mean +- sd over ``--seeds`` draws of the chunks;
* **null**: the training mean position (R2 near 0 by construction; slightly below 0 when
  block means differ);

and, unless ``--quick``, a sensitivity sweep that changes one protocol choice at a time
(speed threshold and smoothing, alpha selection, training on rest bins, random single
labelled bins instead of chunks). Position is in camera pixels (the file's unit); R2 and r
do not depend on the unit of position, only the speed threshold does (px/s here).

Usage::

    python bench/linear_track.py           # about 25 s on 2 cores (1 BLAS thread)
    python bench/linear_track.py --quick   # main table and few-shot only, about 10 s
"""

from __future__ import annotations

import os

# Ridge here solves 186 x 186 systems: BLAS threads cost more than they give on a shared
# 2-core machine (measured 3x slower with 2 threads under load). Override by setting it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurofm.data.nwb import convert_nwb  # noqa: E402
from neurofm.evaluation import DecodingProtocol, decoding_setup, ridge_floor  # noqa: E402

DEFAULT_NWB = ROOT / ".." / "shared" / "data" / "spikes" / "linear-track.nwb"
DESIGN_FLOOR = 0.19  # DESIGN.md 8: ridge R2, x and y averaged


def _row(name: str, r: dict, design: str = "") -> str:
    r2 = r["r2"]
    return (f"| {name:<34} | {r2[0]:7.3f} | {r2[1]:7.3f} | {r['r2_mean']:7.3f} | {r['pearson_r_mean']:9.3f} "
            f"| {r['n_scored']:8,d} | {design:>8} |")


def _few_shot(setup, protocol: DecodingProtocol, seeds: int) -> dict:
    """ridge_floor with few labels over several chunk draws: mean and sd of each score."""
    both = [ridge_floor(None, protocol.replace(seed=s), setup=setup) for s in range(seeds)]
    runs = [b["ridge"] for b in both]
    out = {k: np.mean([r[k] for r in runs], axis=0) for k in ("r2", "r2_mean", "pearson_r_mean")}
    out["null"] = {k: np.mean([b["null"][k] for b in both], axis=0) for k in ("r2", "r2_mean", "pearson_r_mean")}
    out["null"]["n_scored"] = runs[0]["n_scored"]
    out["r2_mean_sd"] = float(np.std([r["r2_mean"] for r in runs]))
    out["pearson_r_sd"] = float(np.std([r["pearson_r_mean"] for r in runs]))
    out["n_scored"] = runs[0]["n_scored"]
    out["n_train"] = runs[0]["n_train"]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nwb", type=Path, default=DEFAULT_NWB, help="linear-track NWB file")
    ap.add_argument("--quick", action="store_true", help="main table only (no sensitivity sweep)")
    ap.add_argument("--seeds", type=int, default=5, help="chunk draws for the few-shot floor")
    ap.add_argument("--fraction", type=float, default=0.1, help="labelled fraction for the few-shot floor")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    if not args.nwb.exists():
        sys.exit(f"{args.nwb}: not found (the shared recordings live in ../shared/data next to the repository)")

    t_start = time.perf_counter()
    protocol = DecodingProtocol()
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = convert_nwb(args.nwb, Path(tmp) / "linear-track.h5")
        for w in caught:  # whole: a converter warning names the file, the field and the fix
            print(f"(convert warning: {w.message})")
        setup = decoding_setup(path, protocol)
        data = setup.data
        print(f"linear-track: {data.counts.shape[1]} units, {data.n_bins:,} bins of {protocol.bin_size * 1e3:g} ms "
              f"({data.bin_times[0]:.1f}-{data.bin_times[-1] + data.bin_size:.1f} s), "
              f"{int(setup.score_mask.sum()):,} moving bins; speed from {data.speed_source} ({data.unit}/s)")
        print("folds (test bins, moving test bins): "
              + ", ".join(f"{len(te)}/{int(setup.score_mask[te].sum())}" for _, te in setup.folds))

        floor = ridge_floor(path, setup=setup)
        few = _few_shot(setup, protocol.replace(label_fraction=args.fraction), args.seeds)

        print(f"\nprotocol: {floor['protocol']}\n")
        print("| decoder                            |  R2 x   |  R2 y   | R2 mean | Pearson r | n scored | DESIGN   |")
        print("|------------------------------------|---------|---------|---------|-----------|----------|----------|")
        print(_row("ridge (all training bins)", floor["ridge"], f"~{DESIGN_FLOOR}"))
        few_row = dict(few, r2=few["r2"])
        print(_row(f"ridge, {args.fraction:.0%} labelled ({args.seeds} draws)", few_row))
        print(f"|   sd over draws                    |         |         | {few['r2_mean_sd']:7.3f} | "
              f"{few['pearson_r_sd']:9.3f} |          |          |")
        print(_row("null (training mean position)", floor["null"], "~0"))
        print(_row(f"null, {args.fraction:.0%} labelled (labelled mean)", few["null"]))
        print(f"\nridge alpha per fold (folds with moving test bins): {[f'{a:g}' for a in floor['ridge']['alphas']]}; "
              f"training bins per fold: {floor['ridge']['n_train']} (10%: {few['n_train']})")

        results = {"protocol": floor["protocol"], "design_floor": DESIGN_FLOOR,
                   "ridge": {k: np.asarray(floor["ridge"][k]).tolist() for k in
                             ("r2", "r2_mean", "pearson_r", "pearson_r_mean", "n_scored", "alphas")},
                   "few_shot": {k: (np.asarray(v).tolist() if k != "null" else
                                    {kk: np.asarray(vv).tolist() for kk, vv in v.items()}) for k, v in few.items()},
                   "null": {k: np.asarray(floor["null"][k]).tolist() for k in ("r2", "r2_mean", "pearson_r_mean")},
                   "sweep": []}

        if not args.quick:
            variants = [
                ("speed > 10 px/s", dict(speed_threshold=10.0)),
                ("speed > 30 px/s", dict(speed_threshold=30.0)),
                ("speed > 40 px/s", dict(speed_threshold=40.0)),
                ("smoothing sigma 0.25 s", dict(smooth_s=0.25)),
                ("smoothing sigma 1.0 s", dict(smooth_s=1.0)),
                ("alpha: last 20% holdout", dict(alpha="holdout")),
                ("alpha fixed 1e3", dict(alpha=1e3)),
                ("alpha fixed 1e4", dict(alpha=1e4)),
                ("trained on all bins (rest too)", dict(train_on="all")),
                ("folds tile the moving span only", dict(fold_span="moving")),
                ("1 bin, no history", dict(n_history=1)),
                (f"{args.fraction:.0%} labelled, random single bins", dict(label_fraction=args.fraction,
                                                                           contiguous_labels=False)),
            ]
            print("\nsensitivity (one choice changed from the protocol above; ridge):\n")
            print("| change                             |  R2 x   |  R2 y   | R2 mean | Pearson r | n scored |")
            print("|------------------------------------|---------|---------|---------|-----------|----------|")
            for name, change in variants:
                r = ridge_floor(path, protocol.replace(**change), setup=setup)["ridge"]
                print(_row(name, r)[:-11])
                results["sweep"].append({"change": name, "r2": r["r2"].tolist(), "r2_mean": r["r2_mean"],
                                         "pearson_r_mean": r["pearson_r_mean"], "n_scored": r["n_scored"]})
    print(f"\n({time.perf_counter() - t_start:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
