"""Generalisation harness (issue 10): does the fine-tuning recipe hold on recordings nobody tuned on?

For every session below, with the recipe's defaults only (``finetune_config`` is what ``neurofm
finetune`` runs; no per-session flags beyond the behaviour name and the split):

1. pretrain a small Neuroformer on the session's spikes (cached per session: resumable);
2. fine-tune with 100 % of the training labels: the decode report's arms (model, linear probe on
   the frozen pretrained features, ridge on 50 ms binned counts, Poisson Bayes, training-mean null)
   on the same scored test windows, with block-bootstrap CIs;
3. with 10 % of the labels, over ``--draws`` label draws: the pretrained model vs the same model
   from scratch vs ridge (every arm on the same labelled windows of each draw);
4. the fraction of spikes the tokenizer drops (block overflow).

Sessions and settings were chosen ONCE, written here before any result was seen, and are not
tuned on (``HELD_OUT`` is not run until ``--held-out``):

=================  ==========================================================================
place-sparse-25    25 place/speed cells, median 0.5 Hz (~18 spikes/s summed: like the issue's
                   tetrode recording), 2-D arena, runs ~40 s / rests ~30 s, 1200 s; position
place-dense-120    120 cells, median 3 Hz (~500 spikes/s), runs ~20 s / rests ~20 s, 900 s; position
place-runrest-60   60 cells, median 1 Hz, runs ~60 s / rests ~60 s and the last 40 % at rest
                   (a session that ends in the home cage), 1200 s; position
speed-network-200  200-unit recurrent Poisson GLM network driven by running speed (the demo's
                   simulator), 600 s; speed
linear-track       the shared real recording (31 units, ~15 spikes/s, run then rest); position
HELD OUT:
place-heldout-40   40 cells, median 1.5 Hz, runs ~30 s / rests ~15 s, 900 s; position
=================  ==========================================================================

Rules applied to every session alike (none chosen per session):

* split: blocked cross-validation, ``N_FOLDS`` (3) folds over the *behaving* span (from the start
  up to the end of the last moving stretch, so a session that ends at rest is not tested on rest).
  Fold k's test block is the last 10 % of the span's k-th third, its validation block the 10 % just
  before it, 5 s gaps; every other second trains (both sides of the held-out blocks, and the rest
  after the behaving span). One undecodable block cannot decide a session: the table gives each
  fold and the mean over folds. Fold 2 is the old single split (the last 10 % + 10 %).
* scored windows: the CLI default (``eval.score_when: auto``): position is scored on moving windows
  (speed of the smoothed position > 0.2 x the training blocks' 95th-percentile speed: ~18 px/s on
  linear-track, near DESIGN.md 8's 20), speed on every window. The split rule uses the same rule
  (0.2 x p95 over the whole recording) for "moving".
* pretraining: configs/neuroformer/demo.yaml's model (n_embd 64, 1 layer per stage), current
  window 0.1 s + previous window 0.2 s (the 300 ms ridge reads: 6 x 50 ms bins), dt 10 ms, block
  sizes = 99.9th percentile of spikes per window (+ SOS/EOS), a fixed step budget, once per session
  on the spikes of the whole recording's default 80 % training block (self-supervised: spikes
  only, no behaviour; a user pretrains on their recording's spikes the same way). It is shared
  by the folds, so it has seen spikes (never labels) of folds 0 and 1's test blocks.
* fine-tuning: the recipe's defaults (``FINETUNE_RECIPE``); from scratch = the same config with
  random initialisation. 100 % labels: every fold. 10 % labels: draw k (seed k) on fold k, so the
  ``--draws`` (3) draws also cover every fold; the same draw for every arm of a seed.

``--quick`` pretrains for 600 steps (not 3000) and caps every fine-tuning run at 150 optimizer steps
(validation every 8), the same caps for every session, with the same folds and draws; the table
says so. A quick session is 9 fine-tuning runs (3 folds at 100 %, 3 draws x 2 arms at 10 %): about
40 min on one shared CPU core. Runs go under ``--out`` (default runs/generalisation/) and are reused
when their metrics.json exists, so an interrupted harness resumes. Run it under ``nice -n 10``
with ``OMP_NUM_THREADS=1`` on a shared machine (two torch threads on two busy cores ran ~10x
slower per step than one here).

    OMP_NUM_THREADS=1 nice -n 10 python bench/generalisation.py --quick
    python bench/generalisation.py --sessions place-sparse-25 linear-track
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINEAR_TRACK_NWB = ROOT.parent / "shared" / "data" / "spikes" / "linear-track.nwb"

SESSIONS = {
    "place-sparse-25": dict(kind="place", behavior="position",
                            args=dict(n_units=25, rate_hz=0.5, duration=1200.0, run_s=40.0, rest_s=30.0, seed=101)),
    "place-dense-120": dict(kind="place", behavior="position",
                            args=dict(n_units=120, rate_hz=3.0, duration=900.0, run_s=20.0, rest_s=20.0, seed=102)),
    "place-runrest-60": dict(kind="place", behavior="position",
                             args=dict(n_units=60, rate_hz=1.0, duration=1200.0, run_s=60.0, rest_s=60.0,
                                       final_rest=0.4, seed=103)),
    "speed-network-200": dict(kind="network", behavior="speed", args=dict(n_units=200, duration=600.0, seed=104)),
    "linear-track": dict(kind="nwb", behavior="position", args={}),
}
HELD_OUT = {
    "place-heldout-40": dict(kind="place", behavior="position",
                             args=dict(n_units=40, rate_hz=1.5, duration=900.0, run_s=30.0, rest_s=15.0, seed=105)),
}

WINDOW = dict(curr=0.1, prev=0.2, dt=0.01)
PRETRAIN_STEPS = {"full": 3000, "quick": 600}
FINETUNE_CAP = {"full": None, "quick": 150}
DRAWS = {"full": 3, "quick": 3}
N_FOLDS = 3
GAP = 5.0


# -- sessions --------------------------------------------------------------------------------------


def make_session(name: str, spec: dict, out: Path) -> Path:
    """The session's file (simulated from its seed, or the shared recording converted), without
    intervals: pretraining splits it by the default 80/10/10 time blocks."""
    from neurofm.data.synthetic import simulate_place_cells, simulate_spikes

    path = out / "data" / f"{name}.h5"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.h5")
    if spec["kind"] == "place":
        simulate_place_cells(tmp, session_id=name, **spec["args"])
    elif spec["kind"] == "network":
        simulate_spikes(tmp, session_id=name, **spec["args"])
    else:
        from neurofm.data.nwb import convert_nwb

        if not LINEAR_TRACK_NWB.exists():
            raise FileNotFoundError(f"{LINEAR_TRACK_NWB}: the shared linear-track recording is missing")
        convert_nwb(LINEAR_TRACK_NWB, tmp)
    tmp.replace(path)
    return path


def fold_file(path: Path, behavior: str, fold: int) -> Path:
    """A copy of the session file with fold ``fold``'s blocks as its /intervals (``neurofm split``)."""
    import shutil

    fpath = path.with_name(f"{path.stem}-fold{fold}.h5")
    if not fpath.exists():
        tmp = fpath.with_suffix(".tmp.h5")
        shutil.copyfile(path, tmp)
        set_split(tmp, behavior, fold)
        tmp.replace(fpath)
    return fpath


def _moving(session, behavior: str) -> tuple[np.ndarray, np.ndarray]:
    """(bin times, moving): the recipe's moving rule with its data-derived threshold
    (:data:`~neurofm.recipes.neuroformer.MOVING_FRACTION` x the 95th-percentile speed, the rule's
    own speed: /behavior/speed smoothed when the file has it, else that of the smoothed position)."""
    from neurofm.evaluation import DecodingProtocol, session_position_data, smoothing_from_jitter
    from neurofm.recipes.neuroformer import MOVING_FRACTION, NeuroformerEvalConfig

    d = session_position_data(session, DecodingProtocol(behavior="position" if "position" in session.behavior_names
                                                        else behavior))
    smooth_s = NeuroformerEvalConfig().speed_smooth_s
    if smooth_s <= 0:  # from the data, as resolve_scoring chooses it
        smooth_s = smoothing_from_jitter(d.jitter_sd(), d.bin_size,
                                         lambda s: MOVING_FRACTION * np.nanpercentile(d.moving_speed(s), 95),
                                         d.speed_measured)
    speed = d.moving_speed(smooth_s)
    return d.bin_times, d.moving_mask(MOVING_FRACTION * np.nanpercentile(speed, 95), smooth_s)


def set_split(path: Path, behavior: str, fold: int = N_FOLDS - 1, n_folds: int = N_FOLDS) -> dict:
    """Fold ``fold`` of the blocked folds over the behaving span (see the module docstring)."""
    from neurofm.data.session import Session, set_intervals

    with Session(path) as s:
        t0, t1 = s.t_start, s.t_end
        t, moving = _moving(s, behavior)
        end = float(t[np.flatnonzero(moving)[-1]]) + 1.0 if moving.any() else t1
    end = min(t1, end)
    span = end - t0
    test_end = t0 + span * (fold + 1) / n_folds
    test = (test_end - 0.1 * span, test_end)
    valid = (test[0] - GAP - 0.1 * span, test[0] - GAP)
    train = [(t0, valid[0] - GAP)]
    if t1 - (test_end + GAP) > 2 * GAP:
        train.append((test_end + GAP, t1))
    blocks = {"train": train, "valid": [valid], "test": [test]}
    set_intervals(path, blocks, overwrite=True)
    return blocks


def block_sizes(*paths: Path) -> tuple[int, int]:
    """99.9th percentile of spikes per current / previous window over the recordings' windows
    (pooled over every file given), + SOS/EOS."""
    from neurofm.data.session import Session

    counts = {w: [] for w in (WINDOW["curr"], WINDOW["prev"])}
    for path in paths:
        with Session(path) as s:
            times, _ = s.spikes()
            t0, t1 = s.t_start, s.t_end
        for w in counts:
            counts[w].append(np.histogram(times, bins=np.arange(t0, t1, w))[0])
    out = [int(np.ceil(np.percentile(np.concatenate(c), 99.9))) + 2 for c in counts.values()]
    return out[0], out[1]


def dropped_fraction(path: Path, pretrained: Path) -> dict:
    """Fraction of current- and previous-window spikes the tokenizer drops (all windows)."""
    from neurofm.data.session import Session
    from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab
    from neurofm.hub import pretrained_config

    c = pretrained_config(pretrained)["config"]
    vocab = UnitVocab(c["units"])
    tok = SpikeTokenizer(c["window"]["curr"], c["window"]["prev"], c["window"]["dt"], c["block_size"]["id"],
                         c["block_size"]["prev_id"], vocab)
    with Session(path) as s:
        ends = np.arange(s.t_start + c["window"]["prev"] + c["window"]["curr"], s.t_end, c["window"]["curr"])
        arr = tok.tokenize_session(s, ends)
        times, _ = s.spikes()
    n_curr = np.diff(np.searchsorted(times, np.stack([ends - c["window"]["curr"], ends]), side="left"), axis=0).sum()
    n_prev = np.diff(np.searchsorted(times, np.stack([ends - c["window"]["curr"] - c["window"]["prev"],
                                                      ends - c["window"]["curr"]]), side="left"), axis=0).sum()
    return {"curr": float(arr["n_dropped"].sum() / max(1, n_curr)),
            "prev": float(arr["n_dropped_prev"].sum() / max(1, n_prev))}


# -- runs -------------------------------------------------------------------------------------------


def _done(run_dir: Path) -> dict | None:
    f = run_dir / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else None


def pretrain(name: str, path: Path, out: Path, mode: str, others: tuple[Path, ...] = ()) -> Path:
    """Pretrain on the session's spikes (and on those of ``others``, e.g. other days of the same
    animal: ``bench/multiday.py``), each file split by the default 80/10/10 time blocks."""
    from neurofm.experiment import load_config, run

    run_dir = out / name / "pretrain"
    if _done(run_dir):
        return run_dir / "pretrained"
    bid, bprev = block_sizes(path, *others)
    files = ",".join(str(p) for p in (path, *others))
    overrides = [f"run_dir={run_dir}", f"data.sessions=[{files}]", "data.behavior=[]", "model.behavior=[]",
                 f"model.window.curr={WINDOW['curr']}", f"model.window.prev={WINDOW['prev']}",
                 f"model.window.dt={WINDOW['dt']}", f"model.block_size.id={bid}", f"model.block_size.prev_id={bprev}",
                 f"trainer.max_steps={PRETRAIN_STEPS[mode]}", "trainer.max_epochs=-1", "trainer.progress_bar=false",
                 "eval.generate_windows=0", "data.split.gap=5.0"]
    run(load_config(ROOT / "neurofm" / "configs" / "neuroformer" / "demo.yaml", overrides))
    return run_dir / "pretrained"


def finetune(name: str, path: Path, behavior: str, pretrained: Path, out: Path, mode: str, *, label_fraction: float,
             seed: int, scratch: bool, fold: int) -> dict:
    from neurofm.experiment import run
    from neurofm.recipes import neuroformer as recipe

    tag = f"fold{fold}-{'scratch' if scratch else 'pretrained'}-{int(round(label_fraction * 100))}pct-seed{seed}"
    run_dir = out / name / tag
    done = _done(run_dir)
    if done:
        return done
    overrides = [f"seed={seed}", "trainer.progress_bar=false"]  # scoring: the CLI default (eval.score_when auto)
    if FINETUNE_CAP[mode]:
        overrides.append(f"task.step_budget={FINETUNE_CAP[mode]}")
    cfg = recipe.finetune_config(str(pretrained), [str(path)], behavior=[behavior], label_fraction=label_fraction,
                                 run_dir=str(run_dir), overrides=overrides)
    if scratch:  # the same model shape and recipe, random initialisation
        cfg = recipe.prepare(cfg)
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, pretrained=""))
    return run(cfg).metrics


def session_results(name: str, spec: dict, out: Path, mode: str) -> dict:
    res_file = out / name / f"results-{mode}.json"
    if res_file.exists():
        return json.loads(res_file.read_text())
    t0 = time.time()
    path = make_session(name, spec, out)
    behavior = spec["behavior"]
    pre = pretrain(name, path, out, mode)
    folds = [fold_file(path, behavior, k) for k in range(N_FOLDS)]
    result = {"session": name, "behavior": behavior, "mode": mode, "dropped": dropped_fraction(path, pre)}
    result["full"] = []
    for k, fpath in enumerate(folds):
        m = finetune(name, fpath, behavior, pre, out, mode, label_fraction=1.0, seed=0, scratch=False, fold=k)
        result["full"].append({"fold": k, "report": m["decode_report"][behavior], "training": m.get("training", {}),
                               "protocol": m["protocol"], "start": m.get("start", {}).get(behavior)})
    few = []
    for seed in range(DRAWS[mode]):
        k = seed % N_FOLDS
        row = {"seed": seed, "fold": k}
        for scratch in (False, True):
            m = finetune(name, folds[k], behavior, pre, out, mode, label_fraction=0.1, seed=seed, scratch=scratch,
                         fold=k)
            rep = m["decode_report"][behavior]
            arm = "scratch" if scratch else "pretrained"
            row[arm] = _row(rep, "model")
            row[f"{arm}_selected_step"] = m.get("training", {}).get("evaluated_checkpoint", {}).get("step")
            row[f"{arm}_start"] = m.get("start", {}).get(behavior)
            row["ridge"] = _row(rep, "ridge on binned counts")
            row["n_labelled"] = m["data"].get("n_labelled_train_windows", {}).get(behavior)
            row["label_draw"] = m["data"].get("label_draw")
        few.append(row)
    result["few_shot"] = few
    result["wall_s"] = round(time.time() - t0, 1)
    res_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _shares(few: list[dict]) -> str:
    """Each draw's labelled share of the training windows / of the scored (moving) ones, as metrics.json's
    ``data.label_draw`` gives it ("-": a run from before the draw was recorded)."""
    out = []
    for f in few:
        d = f.get("label_draw")
        out.append("-" if not d else f"{d['share']:.1%}" + (f" / {d['scored_share']:.1%}" if "scored_share" in d else ""))
    return ", ".join(out)


def _row(rep: dict, arm: str) -> dict:
    return next(r for r in rep["rows"] if r["arm"] == arm)


# -- diagnosis (forward passes only) -----------------------------------------------------------------


def diagnose(name: str, spec: dict, out: Path, mode: str) -> dict:
    """Linear read-outs of what each representation holds, on the 100 %-label run's windows:
    ridge on window counts (2 bins), on 50 ms binned counts (the ridge arm), on the frozen
    pretrained pooled state, on the fine-tuned pooled state (its own head's input), and on
    pooled state + binned counts; beside the fine-tuned head's own R2. If ridge on the fine-tuned
    pooled state beats the head, training (not the representation) is short; if the pooled states
    hold less than the counts, the head's input loses what ridge reads."""
    import torch

    from neurofm import metrics as M
    from neurofm.hub import load_pretrained
    from neurofm.recipes import neuroformer as recipe

    path = out / "data" / f"{name}-fold{N_FOLDS - 1}.h5"
    run_dir = out / name / f"fold{N_FOLDS - 1}-pretrained-100pct-seed0"
    behavior = spec["behavior"]
    cfg = recipe.finetune_config(str(out / name / "pretrain" / "pretrained"), [str(path)], behavior=[behavior],
                                 run_dir=str(out / name / "diagnose"))
    cfg = recipe.prepare(cfg)
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    dm.setup("test")
    tuned = load_pretrained(run_dir / "pretrained").eval()
    frozen = recipe.build_model(cfg, dm).eval()
    torch.manual_seed(0)
    feats = {}
    for label, model in (("frozen", frozen), ("tuned", tuned)):
        tr = recipe._collect(model, recipe._train_windows_loader(dm))
        te = recipe._collect(model, dm.loader("test"))
        feats[label] = (tr, te)
    tr, te = feats["tuned"]
    scored = recipe._moving_windows(cfg, dm, te) & te["beh_mask"][behavior]
    lab = tr["beh_mask"][behavior]
    ytr, yte = tr["beh_true"][behavior][lab], te["beh_true"][behavior][scored]
    stride = cfg.model.window.curr
    fit = lambda a, b: float(M.r2_score(yte, recipe._ridge_fit_predict(a[lab], ytr, b[scored], stride)))  # noqa: E731
    n_tr = len(ytr)
    both_tr = np.concatenate([tr["pooled"], tr["binned"]], 1)
    both_te = np.concatenate([te["pooled"], te["binned"]], 1)
    out_d = {
        "fine-tuned head (the model arm)": float(M.r2_score(yte, te["beh_pred"][behavior][scored])),
        "ridge: window counts (curr + prev per unit)": fit(tr["counts"], te["counts"]),
        "ridge: 50 ms binned counts": fit(tr["binned"], te["binned"]),
        "ridge: frozen pretrained pooled state": fit(feats["frozen"][0]["pooled"], feats["frozen"][1]["pooled"]),
        "ridge: fine-tuned pooled state": fit(tr["pooled"], te["pooled"]),
        "ridge: fine-tuned pooled state + binned counts": fit(both_tr, both_te),
        "n_train": n_tr, "n_scored": int(scored.sum()),
    }
    (out / name / "diagnosis.json").write_text(json.dumps(out_d, indent=2) + "\n")
    return out_d


# -- table ------------------------------------------------------------------------------------------


def _ci(r: dict, m: str = "r2") -> str:
    v, ci = r.get(m), r.get(f"{m}_ci") or [None, None]
    f = lambda x: "nan" if x is None else f"{x:.3f}"  # noqa: E731
    return f"{f(v)} [{f(ci[0])}, {f(ci[1])}]"


def _verdict(d: list) -> str:
    """The decode report's verdict (:func:`neurofm.report.verdict`) on a ``[diff, lo, hi]`` row."""
    from neurofm.report import verdict

    return {"below": "matches (below)"}.get(kind := verdict(*d), kind)


ARMS = ("model", "linear probe", "ridge on binned counts", "Poisson Bayes", "null (training mean)")


def _start_text(start: dict | None) -> str:
    """Which features the fine-tuning read-out started from (metrics.json ``start``), with the CV R2 of each."""
    if not start:
        return "-"
    cv = start["cv_r2"]
    fmt = lambda x: "nan" if x is None else f"{x:.3f}"  # noqa: E731
    return f"{start['features']} ({fmt(cv.get('counts'))} / {fmt(cv.get('counts+pooled'))})"


def _selected_text(training: dict) -> str:
    """The evaluated checkpoint's step, with the best check's paired gain over the start and its
    paired SE (metrics.json ``training.selection``) when a check scored above the start."""
    step = training.get("evaluated_checkpoint", {}).get("step")
    sel = training.get("selection") or {}
    if sel.get("gain") is None or sel.get("paired_se") is None:
        return f"{step}"
    return f"{step} (step {sel['best_check_step']}: {sel['gain']:+.3f}, SE {sel['paired_se']:.3f})"


def table(results: list[dict]) -> str:
    lines = ["## 100 % labels: R2 [95 % block-bootstrap CI] on the scored test windows, per blocked fold", "",
             "| session | fold | scored windows | model (fine-tuned) | linear probe | ridge | Bayes | null | "
             "model vs ridge | selected step (best check: paired gain, SE) | start (CV R2: counts / + pooled) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        means = {a: [] for a in ARMS}
        for f in r["full"]:
            rep = f["report"]
            arms = {row["arm"]: row for row in rep["rows"]}
            get = lambda a: _ci(arms[a]) if a in arms else "-"  # noqa: E731
            for a in ARMS:
                if a in arms and arms[a].get("r2") is not None:
                    means[a].append(arms[a]["r2"])
            d = arms["ridge on binned counts"]["r2_diff_vs_model"]
            step = _selected_text(f["training"])
            lines.append(f"| {r['session']} | {f['fold']} | {rep['n_windows']} | {get('model')} | "
                         f"{get('linear probe')} | {get('ridge on binned counts')} | {get('Poisson Bayes')} | "
                         f"{get('null (training mean)')} | {_verdict(d)} ({d[0]:+.3f}) | {step} | "
                         f"{_start_text(f.get('start'))} |")
        mean = lambda a: f"{np.mean(means[a]):.3f}" if means[a] else "-"  # noqa: E731
        diff = np.mean(means["model"]) - np.mean(means["ridge on binned counts"])
        lines.append(f"| **{r['session']}** | mean | | **{mean('model')}** | {mean('linear probe')} | "
                     f"{mean('ridge on binned counts')} | {mean('Poisson Bayes')} | {mean('null (training mean)')} | "
                     f"{diff:+.3f} | | |")
    lines += ["", "## 10 % labels: R2 per label draw (draw k on fold k; pretrained / scratch / ridge, same labelled "
              "windows)", "",
              "| session | draws | labelled share: training / scored windows | pretrained | scratch | ridge | "
              "pretrained > scratch | mean pre - scratch |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results:
        few = r["few_shot"]
        p = [f["pretrained"]["r2"] for f in few]
        s = [f["scratch"]["r2"] for f in few]
        g = [f["ridge"]["r2"] for f in few]
        fmt = lambda xs: ", ".join("nan" if x is None else f"{x:.3f}" for x in xs)  # noqa: E731
        wins = sum(1 for a, b in zip(p, s) if a is not None and b is not None and a > b)
        ok = [(a, b) for a, b in zip(p, s) if a is not None and b is not None]
        gap = f"{np.mean([a - b for a, b in ok]):+.3f}" if ok else "-"
        lines.append(f"| {r['session']} | {len(few)} | {_shares(few)} | {fmt(p)} | {fmt(s)} | {fmt(g)} | "
                     f"{wins}/{len(few)} | {gap} |")
    lines += ["", "## tokenizer: spikes dropped (block overflow), current / previous window", "",
              "| session | current | previous |", "|---|---|---|"]
    for r in results:
        lines.append(f"| {r['session']} | {r['dropped']['curr']:.2%} | {r['dropped']['prev']:.2%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="600 pretraining steps, fine-tuning capped at 150 steps")
    ap.add_argument("--sessions", nargs="*", help=f"subset of {list(SESSIONS)}")
    ap.add_argument("--held-out", action="store_true", help="run the held-out session(s) too (once, at the end)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "generalisation"))
    ap.add_argument("--diagnose", action="store_true", help="only: linear read-outs of each representation "
                    "(needs the sessions' runs)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = Path(args.out)
    unknown = set(args.sessions or ()) - set(SESSIONS) - set(HELD_OUT)
    if unknown:
        ap.error(f"unknown sessions {sorted(unknown)}; choose from {list(SESSIONS)}")
    todo = {k: SESSIONS[k] for k in args.sessions if k in SESSIONS} if args.sessions else dict(SESSIONS)
    if args.held_out:
        todo.update(HELD_OUT)
    if args.diagnose:
        for name, spec in todo.items():
            if (out / name / f"fold{N_FOLDS - 1}-pretrained-100pct-seed0" / "metrics.json").exists():
                print(name, json.dumps(diagnose(name, spec, out, mode), indent=1))
        return 0
    results = []
    for name, spec in todo.items():
        print(f"== {name} ({mode})", file=sys.stderr, flush=True)
        results.append(session_results(name, spec, out, mode))
        (out / f"table-{mode}.md").write_text(table(results) + "\n")
    print(f"mode: {mode} (pretraining {PRETRAIN_STEPS[mode]} steps; fine-tuning "
          f"{'the recipe budget' if not FINETUNE_CAP[mode] else f'capped at {FINETUNE_CAP[mode]} steps'}; "
          f"{DRAWS[mode]} label draw(s))")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
