"""How the baselines' penalty rule scores: the old single holdout block vs blocked K-fold CV.

:class:`neurofm.baselines.Ridge` and :class:`~neurofm.baselines.Logistic` choose their penalty
among ``DEFAULT_ALPHAS`` on the labelled training samples alone. Three rules, each refitted on
all the labelled training samples with its alpha and scored on the same test samples:

* **old**: the last 20% of the time-ordered training samples held out, fitted on the rest
  (:func:`neurofm.evaluation.holdout_fold`, no gap): the rule before blocked CV. Logistic
  failed (no number) when that block held one class or the samples before it lacked one;
* **new**: what ``Ridge()`` / ``Logistic()`` do now (:func:`neurofm.baselines.penalty_folds`:
  5 contiguous folds, every sample held out once; Ridge's score pooled over all held-out
  predictions, Logistic's AUROC averaged over the folds that hold both classes);
* **oracle**: the best single alpha in hindsight, chosen on the test samples (a ceiling no
  rule can reach honestly).

Data (nothing here was tuned on them):

* simulated sEEG (:func:`neurofm.data.synthetic.simulate_ieeg`, 600 s, 24 contacts, seeds
  0-4, layouts and response amplitudes varied): speech/nonspeech event segments (1 s from
  onset; training = the first 80% of the recording (EventProtocol's train + valid blocks),
  test = the last 20%, 2 s gaps) classified by logistic and by ridge (+-1 targets, penalty by
  AUROC) on log band power, test AUROC over every test event; grip force regressed by ridge on
  band power of 1 s segments (first 75% train, last 25% test), test R2 over every test segment;
* simulated place cells (:func:`~neurofm.data.synthetic.simulate_place_cells`, seeds 0-4):
  position decoded by ridge on 6 bins of counts, 5 blocked outer folds with 5 s gaps, R2 on
  moving bins pooled over folds, x and y averaged (:func:`neurofm.evaluation.decoding_setup`);
* the real linear-track recording (``../shared/data/spikes/linear-track.nwb``), same protocol,
  5 draws of the labelled chunks;
* ``--ieeg FILE:TARGET`` (repeatable): any other session with a continuous ``/behavior/TARGET``,
  band-power ridge as for the grip force.

Labelled fraction 100%, 20%, 10% of the training samples, in 10 s chunks (5 s for spikes, the
decoding protocol's) drawn by :func:`neurofm.data.splits.labelled_windows`. Per row: each
rule's score averaged over seeds/draws, how often new beats / ties / loses to old, and how
often old could not choose.

Usage::

    python bench/penalty_cv.py            # about 5 minutes on 1 core
    python bench/penalty_cv.py --quick    # one seed, no linear track
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurofm import metrics  # noqa: E402
from neurofm.baselines import DEFAULT_ALPHAS, BandPowerRidge, Logistic, Ridge, auroc_or_mse, history_features  # noqa: E402
from neurofm.data.session import Session  # noqa: E402
from neurofm.data.splits import labelled_windows  # noqa: E402
from neurofm.data.synthetic import simulate_ieeg, simulate_place_cells  # noqa: E402
from neurofm.evaluation import DecodingProtocol, decoding_setup, holdout_fold  # noqa: E402
from neurofm.evaluation_ieeg import EventProtocol, ReconstructionProtocol, event_data, reconstruction_data  # noqa: E402

ALPHAS = np.asarray(DEFAULT_ALPHAS)
FRACTIONS = (1.0, 0.2, 0.1)
RULES = ("old", "new", "oracle")
TIE = 1e-3  # score differences below this count as ties


# --------------------------------------------------------------------------------------------
# the rules
# --------------------------------------------------------------------------------------------


def mse_score(y, p) -> float:
    return -float(np.mean((y - p) ** 2))


def ridge_alpha_old(X, Y, score) -> float | None:
    try:
        fold = holdout_fold(len(X))
    except ValueError:
        return None
    te = fold[0][1]
    P = Ridge(ALPHAS).cv_predictions(X, Y, fold)[:, te]
    return float(ALPHAS[int(np.nanargmax([score(Y[te], p) for p in P]))])


def logistic_alpha_old(X, y) -> float | None:
    try:
        (tr, te), = holdout_fold(len(X))
    except ValueError:
        return None
    classes = np.unique(y)
    if np.unique(y[tr]).size < classes.size or np.unique(y[te]).size < 2:
        return None  # the old rule raised here
    model = Logistic(ALPHAS)
    model.classes_ = classes
    scores = []
    for a in ALPHAS:
        s = model._scores(X[te], *model._fit(X[tr], y[tr], a))[:, 0]
        scores.append(metrics.auroc((y[te] == classes[1]).astype(int), s))
    return float(ALPHAS[int(np.argmax(scores))])


def rule_scores(kind: str, Xtr, ytr, Xte, yte) -> dict[str, float]:
    """Test score of each rule for one fit: kind "logistic" (AUROC), "ridge_auroc" (ridge on +-1,
    AUROC) or "ridge" (R2)."""
    def test_score(alpha):
        if kind == "logistic":
            return metrics.auroc(yte, Logistic(alpha).fit(Xtr, ytr).decision_function(Xte))
        if kind == "ridge_auroc":
            return metrics.auroc(yte, Ridge(alpha).fit(Xtr, 2.0 * ytr - 1).predict(Xte))
        return metrics.r2_score(yte, Ridge(alpha).fit(Xtr, ytr).predict(Xte))

    Y2 = (2.0 * ytr - 1 if kind == "ridge_auroc" else ytr).reshape(len(ytr), -1)
    if kind == "logistic":
        old = logistic_alpha_old(Xtr, ytr)
        try:
            new = Logistic().fit(Xtr, ytr).alpha_
        except ValueError:
            new = None
    else:
        score = auroc_or_mse if kind == "ridge_auroc" else mse_score
        old = ridge_alpha_old(Xtr, Y2, score)
        try:
            new = Ridge(score=score).fit(Xtr, Y2).alpha_
        except ValueError:
            new = None
    oracle = max(float(test_score(a)) for a in ALPHAS)
    return {"old": np.nan if old is None else float(test_score(old)),
            "new": np.nan if new is None else float(test_score(new)), "oracle": oracle,
            "alpha_old": old, "alpha_new": new, "n_train": len(Xtr), "n_test": len(Xte)}


def decoding_rule_scores(setup, X) -> dict[str, float]:
    """The spike decoding protocol (outer blocked folds, moving bins scored) with each rule."""
    def fp(rule):
        def fit_predict(Xtr, Ytr, Xte):
            Ytr = np.asarray(Ytr, dtype=np.float64).reshape(len(Ytr), -1)
            alpha = ridge_alpha_old(Xtr, Ytr, mse_score) if rule == "old" else Ridge().fit(Xtr, Ytr).alpha_
            if alpha is None:
                raise ValueError("too few rows")
            return Ridge(alpha).fit(Xtr, Ytr).predict(Xte)
        return fit_predict

    out = {}
    for rule in ("old", "new"):
        try:
            out[rule] = float(setup.evaluate(fp(rule), X)["r2_mean"])
        except ValueError:
            out[rule] = np.nan
    fixed = []
    for a in ALPHAS:
        fixed.append(float(setup.evaluate(lambda Xtr, Ytr, Xte, a=a: Ridge(a).fit(Xtr, Ytr).predict(Xte), X)["r2_mean"]))
    out["oracle"] = max(fixed)
    return out


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def labelled(t_end, fraction, chunk_s, seed) -> np.ndarray:
    return labelled_windows(np.zeros(len(t_end), dtype=np.int64), t_end, fraction, chunk_s, seed)


def ieeg_sessions(tmp: Path, seeds) -> list[tuple[str, Path]]:
    """Simulated sEEG with events and grip force, varied per seed (layout, regions, amplitude)."""
    out = []
    variants = [dict(n_regions=10, regions=[9, 0, 2, 1], response_amplitude=1.0),
                dict(n_regions=12, regions=[8, 9, 3, 0, 5], response_amplitude=0.6),
                dict(n_regions=10, regions=[9, 1, 4], response_amplitude=0.4)]
    for s in seeds:
        path = tmp / f"ieeg{s}.h5"
        simulate_ieeg(path, n_channels=24, duration=600.0, sampling_rate=256.0, seed=s, behavior="grip_force",
                      **variants[s % len(variants)])
        out.append((f"sim sEEG seed {s}", path))
    return out


def ieeg_event_rows(name, path, seed, fractions):
    data = event_data(path, EventProtocol(segment_s=1.0, n_patches=4, line_noise=60.0, gap_s=2.0))
    bp = BandPowerRidge(data.plan.rate)
    Xtr, Xte = bp.features(np.concatenate([data.train.x, data.valid.x])), bp.features(data.test.x)
    ytr, yte = np.concatenate([data.train.label, data.valid.label]), data.test.label
    t_end = np.concatenate([data.train.t0, data.valid.t0]) + 1.0
    rows = []
    for f in fractions:
        keep = labelled(t_end, f, 10.0, seed)
        for kind, arm in (("logistic", "logistic on band power (AUROC)"), ("ridge_auroc", "ridge on band power (AUROC)")):
            if np.unique(ytr[keep]).size < 2:
                r = {k: np.nan for k in RULES}
            else:
                r = rule_scores(kind, Xtr[keep], ytr[keep], Xte, yte)
            rows.append((arm, f, name, r))
    return rows


def ieeg_regression_rows(name, path, target, seed, fractions, segment_s=1.0):
    with Session(path) as s:
        ts, v = s.behavior(target)
    v = np.asarray(v, dtype=np.float64).reshape(len(ts), -1)[:, 0]
    data = reconstruction_data(path, ReconstructionProtocol(segment_s=segment_s, n_patches=4, test_fraction=0.25,
                                                            gap_s=2.0, line_noise=None))
    bp = BandPowerRidge(data.plan.rate)

    def target_of(seg):
        i0 = np.searchsorted(ts, seg.t0)
        i1 = np.searchsorted(ts, seg.t0 + segment_s)
        return np.array([v[a:b].mean() if b > a else np.nan for a, b in zip(i0, i1)])

    ytr, yte = target_of(data.train), target_of(data.test)
    ok_tr, ok_te = np.isfinite(ytr), np.isfinite(yte)
    Xtr, Xte = bp.features(data.train.x)[ok_tr], bp.features(data.test.x)[ok_te]
    ytr, yte, t_end = ytr[ok_tr], yte[ok_te], data.train.t0[ok_tr] + segment_s
    rows = []
    for f in fractions:
        keep = labelled(t_end, f, 10.0, seed)
        rows.append((f"ridge on band power ({target}, R2)", f, name, rule_scores("ridge", Xtr[keep], ytr[keep], Xte, yte)))
    return rows


def spike_rows(name, path, seeds, fractions, speed_threshold=None):
    base = DecodingProtocol() if speed_threshold is None else DecodingProtocol(speed_threshold=speed_threshold)
    setup = decoding_setup(path, base)
    X = history_features(setup.data.counts, base.n_history, include_current=True)
    rows = []
    for f in fractions:
        for seed in (seeds if f < 1 else seeds[:1]):
            s = decoding_setup(None, base.replace(label_fraction=f, seed=seed), data=setup.data)
            rows.append(("ridge on counts (position, R2)", f, f"{name} draw {seed}" if f < 1 else name,
                         decoding_rule_scores(s, X)))
    return rows


# --------------------------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------------------------


def family(data: str) -> str:
    """The data a run belongs to, without its seed or draw ("sim sEEG", "linear-track (real)", a file)."""
    return data.split(" seed ")[0].split(" draw ")[0]


def print_table(rows) -> None:
    """One row per baseline, labelled fraction and data family: means over the runs where both
    rules gave a number (old and new on the same runs), the oracle on those runs too."""
    print("| baseline | labels | data | runs | old (last 20%) | new (blocked CV) | oracle (best fixed) | new - old | "
          "new vs old (win/tie/loss) | old failed | new failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = []
    for arm, f, d, _ in rows:
        if (arm, f, family(d)) not in keys:
            keys.append((arm, f, family(d)))
    for arm, f, fam in keys:
        group = [r for a, ff, d, r in rows if a == arm and ff == f and family(d) == fam]
        old, new, orc = (np.array([r[k] for r in group], dtype=np.float64) for k in RULES)
        both = np.isfinite(old) & np.isfinite(new)
        d = new[both] - old[both]
        wtl = f"{int((d > TIE).sum())}/{int((abs(d) <= TIE).sum())}/{int((d < -TIE).sum())}"
        mean = lambda x: f"{x[both].mean():.3f}" if both.any() else "-"  # noqa: E731
        print(f"| {arm} | {f:.0%} | {fam} | {int(both.sum())} | {mean(old)} | {mean(new)} | {mean(orc)} | "
              f"{d.mean() if d.size else np.nan:+.3f} | {wtl} | {int((~np.isfinite(old)).sum())} | "
              f"{int((~np.isfinite(new)).sum())} |")
    print("\nper run:")
    print("| baseline | labels | data | n train | old | new | oracle | alpha old | alpha new |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, f, d, r in rows:
        fmt = lambda x: "-" if x is None or not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
        al = lambda x: "-" if x is None else f"{x:g}"  # noqa: E731
        print(f"| {arm} | {f:.0%} | {d} | {r.get('n_train', '')} | {fmt(r['old'])} | {fmt(r['new'])} | "
              f"{fmt(r['oracle'])} | {al(r.get('alpha_old'))} | {al(r.get('alpha_new'))} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, no linear track")
    ap.add_argument("--nwb", type=Path, default=ROOT / ".." / "shared" / "data" / "spikes" / "linear-track.nwb")
    ap.add_argument("--ieeg", action="append", default=[], metavar="FILE:TARGET",
                    help="another sEEG session with a continuous /behavior/TARGET")
    args = ap.parse_args(argv)
    seeds = (0,) if args.quick else (0, 1, 2, 3, 4)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp)
        for (name, path), seed in zip(ieeg_sessions(tmp, seeds), seeds):
            rows += ieeg_event_rows(name, path, seed, FRACTIONS)
            rows += ieeg_regression_rows(name, path, "grip_force", seed, FRACTIONS)
            print(f"done {name}", file=sys.stderr)
        for spec in args.ieeg:
            path, target = spec.rsplit(":", 1)
            for seed in seeds:
                rows += ieeg_regression_rows(f"{Path(path).name} draw {seed}", path, target, seed,
                                             FRACTIONS if seed == seeds[0] else FRACTIONS[1:])
            print(f"done {path}", file=sys.stderr)
        for s in seeds:
            path = simulate_place_cells(tmp / f"place{s}.h5", n_units=40, duration=600.0, seed=s)
            rows += spike_rows(f"sim place cells seed {s}", path, (s,), FRACTIONS, speed_threshold=5.0)
            print(f"done place cells {s}", file=sys.stderr)
        if not args.quick and args.nwb.exists():
            from neurofm.data.nwb import convert_nwb

            path = convert_nwb(args.nwb, tmp / "linear-track.h5")
            rows += spike_rows("linear-track (real)", path, seeds, FRACTIONS)
            print("done linear track", file=sys.stderr)
    print_table(rows)


if __name__ == "__main__":
    main()
