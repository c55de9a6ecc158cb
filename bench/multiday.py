"""Multi-day pretraining (issue 10's 10 %-label target): does pretraining on OTHER days of the same
animal make Neuroformer beat from-scratch fine-tuning on a new day with few labels?

``bench/generalisation.py`` pretrains each session's model on that session's own spikes only; at
10 % labels pretrained then ties scratch. A foundation model's regime is different: pretrain on
many unlabelled recordings, fine-tune on a new one with few labels. Here, for each place session
of the harness (same specs, seeds, fold files and label draws):

1. simulate ``--days`` (3) sibling days of the same animal: ``simulate_place_cells(...,
   seed=SEED + 1000 * k, units_seed=SEED)`` for k = 1..3 (the same units, place fields, speed
   tuning and base rates; another trajectory, run/rest epochs and spikes; no drift of fields
   across days; session id ``<session>-day<k>``, the session's other arguments unchanged);
2. pretrain ONE model on the sibling days + the session itself with the harness's rule
   (``generalisation.pretrain``: the same model, windows, step budget, each file's default 80 %
   training block, block sizes = 99.9th percentile of spikes per window pooled over the files);
3. at 10 % labels, draw k on fold k (k = 0..2, the harness's fold files and seeds), fine-tune with
   the recipe's defaults (``generalisation.finetune``: the harness's cap) from (a) the multi-day
   model, (b) scratch (the same recipe and shape as the harness's scratch arm: random init), and
   (c) the harness's single-session pretrained model; ridge on binned counts is read from the
   same runs' decode reports (same labelled windows).

Units are named by their session (README: ``m12-day1/5`` and ``m12-day2/5`` are two tokens), so
the sibling days' units get their own embedding rows: what can carry over from the other days is
the shared network (the unit rows of the session itself are pretrained on its own spikes, as in
the harness).

Decision rule, fixed before any run: multi-day pretraining helps if multi-day pretrained > scratch
(model R2 on the scored test windows) on >= 2 of the 3 draws on most sessions run.

    OMP_NUM_THREADS=1 nice -n 5 python bench/multiday.py --quick --sessions place-runrest-60 \\
        --out /tmp/nfdays --single-from /work/runs/gen6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import generalisation as G  # noqa: E402

from neurofm.report import SAME_AT_PRECISION  # noqa: E402

PLACE = {k: v for k, v in {**G.SESSIONS, **G.HELD_OUT}.items() if v["kind"] == "place"}
DAY_SEED_STEP = 1000


def sibling_days(name: str, spec: dict, out: Path, n_days: int) -> list[Path]:
    """The session's animal on ``n_days`` other days (see the module docstring)."""
    from neurofm.data.synthetic import simulate_place_cells

    paths = []
    seed = spec["args"]["seed"]
    for k in range(1, n_days + 1):
        path = out / "data" / f"{name}-day{k}.h5"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.h5")
            args = dict(spec["args"], seed=seed + DAY_SEED_STEP * k, units_seed=seed)
            simulate_place_cells(tmp, session_id=f"{name}-day{k}", **args)
            tmp.replace(path)
        paths.append(path)
    return paths


def _reuse(src: Path | None, dst: Path) -> None:
    """Copy a finished run folder (the harness's cached pretraining, its data files) once; read-only source."""
    if src is None or dst.exists() or not src.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)


def _arm(m: dict, behavior: str, wall_s: float, load: tuple) -> dict:
    rep = m["decode_report"][behavior]
    return {"model": G._row(rep, "model"), "ridge": G._row(rep, "ridge on binned counts"),
            "selected_step": m.get("training", {}).get("evaluated_checkpoint", {}).get("step"),
            "selection": m.get("training", {}).get("selection"), "start": m.get("start", {}).get(behavior),
            "n_labelled": m["data"].get("n_labelled_train_windows", {}).get(behavior),
            "label_draw": m["data"].get("label_draw"), "n_scored": rep.get("n_windows"),
            "train_wall_s": m.get("training", {}).get("wall_time_s"), "wall_s": round(wall_s, 1),
            "load": [round(x, 2) for x in load]}


def session_results(name: str, spec: dict, out: Path, mode: str, n_days: int, single_from: Path | None,
                    steps: int | None = None) -> dict:
    """``steps``: pretrain the multi-day model for this many steps instead of the mode's budget (a
    separate arm, ``multi-<steps>steps``; the scratch and single-session arms are the same runs)."""
    multi_dir = "multi" if steps is None else f"multi-{steps}steps"
    res_file = out / f"multiday-{name}-{mode}{'' if steps is None else f'-{steps}steps'}.json"
    if res_file.exists():
        return json.loads(res_file.read_text())
    behavior = spec["behavior"]
    t0 = time.time()
    for suffix in ["", *(f"-fold{k}" for k in range(G.N_FOLDS))]:  # the harness's session and fold files
        _reuse(single_from and single_from / "data" / f"{name}{suffix}.h5", out / "data" / f"{name}{suffix}.h5")
    _reuse(single_from and single_from / name / "pretrain", out / "single" / name / "pretrain")
    path = G.make_session(name, spec, out)
    days = sibling_days(name, spec, out, n_days)
    tp = time.time()
    budget = G.PRETRAIN_STEPS[mode]
    G.PRETRAIN_STEPS[mode] = steps or budget
    try:
        multi = G.pretrain(name, path, out / multi_dir, mode, tuple(days))
    finally:
        G.PRETRAIN_STEPS[mode] = budget
    pre_metrics = json.loads((out / multi_dir / name / "pretrain" / "metrics.json").read_text())
    result = {"session": name, "behavior": behavior, "mode": mode, "days": [str(d) for d in days],
              "multi_dir": multi_dir,
              "pretrain": {"multi": {"wall_s": round(time.time() - tp, 1),
                                     "train_wall_s": pre_metrics["training"]["wall_time_s"],
                                     "steps": pre_metrics["training"]["steps"],
                                     "n_train_windows": pre_metrics["data"]["n_train_windows"],
                                     "block_size": pre_metrics["tokenizer"]["block_size"],
                                     "dropped_train": pre_metrics["tokenizer"]["dropped_fraction_train"]}}}
    single = G.pretrain(name, path, out / "single", mode)  # the harness's (reused when copied)
    sm = json.loads((out / "single" / name / "pretrain" / "metrics.json").read_text())
    result["pretrain"]["single"] = {"train_wall_s": sm["training"]["wall_time_s"], "steps": sm["training"]["steps"],
                                    "n_train_windows": sm["data"]["n_train_windows"],
                                    "block_size": sm["tokenizer"]["block_size"]}
    folds = [G.fold_file(path, behavior, k) for k in range(G.N_FOLDS)]
    draws = []
    for seed in range(G.DRAWS[mode]):
        k = seed % G.N_FOLDS
        row = {"seed": seed, "fold": k}
        for arm, pre, arm_out, scratch in (("multi", multi, out / multi_dir, False),
                                           ("scratch", single, out / "single", True),
                                           ("single", single, out / "single", False)):
            ts, load = time.time(), os.getloadavg()
            m = G.finetune(name, folds[k], behavior, pre, arm_out, mode, label_fraction=0.1, seed=seed,
                           scratch=scratch, fold=k)
            row[arm] = _arm(m, behavior, time.time() - ts, load)
        draws.append(row)
        res_partial = dict(result, draws=draws)
        res_file.with_suffix(".partial.json").write_text(json.dumps(res_partial, indent=2) + "\n")
    result["draws"] = draws
    result["wall_s"] = round(time.time() - t0, 1)
    res_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


ARMS = (("multi", "multi-day pretrained"), ("single", "single-session pretrained"), ("scratch", "scratch"))


def report_r2(out: Path, name: str, arm: str, fold: int, seed: int, multi_dir: str = "multi") -> dict:
    """Every decode-report arm's R2 of one 10 %-label run (its metrics.json), by arm name."""
    arm_out, tag = {"multi": (multi_dir, "pretrained"), "single": ("single", "pretrained"),
                    "scratch": ("single", "scratch")}[arm]
    m = json.loads((out / arm_out / name / f"fold{fold}-{tag}-10pct-seed{seed}" / "metrics.json").read_text())
    rep = next(iter(m["decode_report"].values()))
    return {r["arm"]: r.get("r2") for r in rep["rows"]}


def probe_table(results: list[dict], out: Path) -> str:
    """What the frozen pretrained representation holds: the decode report's linear probe (ridge on
    the frozen pooled state, same labelled and scored windows) of the multi-day and the
    single-session model, beside ridge on binned counts, Poisson Bayes and the null."""
    f3 = lambda x: "nan" if x is None else f"{x:.3f}"  # noqa: E731
    lines = ["| session | draw (fold) | probe: multi-day | probe: single-session | ridge on counts | Poisson Bayes | "
             "null |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for d in r["draws"]:
            mu = report_r2(out, r["session"], "multi", d["fold"], d["seed"], r.get("multi_dir", "multi"))
            si = report_r2(out, r["session"], "single", d["fold"], d["seed"])
            lines.append(f"| {_label(r)} | {d['seed']} ({d['fold']}) | {f3(mu.get('linear probe'))} | "
                         f"{f3(si.get('linear probe'))} | {f3(mu.get('ridge on binned counts'))} | "
                         f"{f3(mu.get('Poisson Bayes'))} | {f3(mu.get('null (training mean)'))} |")
    return "\n".join(lines)


def _wtl(a: list, b: list, tie: float = SAME_AT_PRECISION) -> str:
    """wins / ties / losses of a over b; a tie is |a - b| <= ``tie`` (the decode report's 'equals' band)."""
    d = np.subtract(a, b)
    return f"{int((d > tie).sum())}/{int((np.abs(d) <= tie).sum())}/{int((d < -tie).sum())}"


def _label(r: dict) -> str:
    """The session's name, with the multi-day pretraining budget when it is not the mode's."""
    d = r.get("multi_dir", "multi")
    return r["session"] if d == "multi" else f"{r['session']} ({d})"


def table(results: list[dict]) -> str:
    f3 = lambda x: "nan" if x is None else f"{x:.3f}"  # noqa: E731
    start = lambda a: G._start_text(a["start"])  # noqa: E731
    lines = ["| session | draw (fold) | label windows | scored windows | multi-day pretrained | single-session "
             "pretrained | scratch | ridge | start, CV R2 counts / + pooled (multi; single; scratch) | "
             "selected step (multi / single / scratch) |", "|---|---|---|---|---|---|---|---|---|---|"]
    summary = ["| session | multi > scratch (strict) | multi vs scratch W/T/L | multi vs single W/T/L | multi vs ridge "
               "W/T/L | mean multi - scratch | mean multi - single | mean multi - ridge | mean single - scratch |",
               "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        r2 = {a: [d[a]["model"]["r2"] for d in r["draws"]] for a, _ in ARMS}
        r2["ridge"] = [d["multi"]["ridge"]["r2"] for d in r["draws"]]
        for d in r["draws"]:
            ridges = {round(d[a]["ridge"]["r2"], 3) for a, _ in ARMS}
            ridge = f3(d["multi"]["ridge"]["r2"]) + ("" if len(ridges) == 1 else " (differs by arm: "
                                                     + ", ".join(f3(x) for x in sorted(ridges)) + ")")
            lines.append(f"| {_label(r)} | {d['seed']} ({d['fold']}) | {d['multi']['n_labelled']} | "
                         f"{d['multi']['n_scored']} | {f3(d['multi']['model']['r2'])} | "
                         f"{f3(d['single']['model']['r2'])} | {f3(d['scratch']['model']['r2'])} | {ridge} | "
                         f"{start(d['multi'])}; {start(d['single'])}; {start(d['scratch'])} | "
                         f"{d['multi']['selected_step']} / {d['single']['selected_step']} / "
                         f"{d['scratch']['selected_step']} |")
        n = len(r["draws"])
        wins = lambda a, b: sum(x > y for x, y in zip(r2[a], r2[b]))  # noqa: E731
        gap = lambda a, b: f"{np.mean(np.subtract(r2[a], r2[b])):+.4f}"  # noqa: E731
        summary.append(f"| {_label(r)} | {wins('multi', 'scratch')}/{n} | {_wtl(r2['multi'], r2['scratch'])} | "
                       f"{_wtl(r2['multi'], r2['single'])} | {_wtl(r2['multi'], r2['ridge'])} | "
                       f"{gap('multi', 'scratch')} | {gap('multi', 'single')} | "
                       f"{gap('multi', 'ridge')} | {gap('single', 'scratch')} |")
    return "\n".join(lines + [""] + summary)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the harness's quick rule: 600 pretraining steps, "
                    "fine-tuning capped at 150 steps")
    ap.add_argument("--sessions", nargs="*", default=list(PLACE), help=f"subset of {list(PLACE)}")
    ap.add_argument("--days", type=int, default=3, help="sibling days of the same animal to pretrain on (default 3)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "multiday"))
    ap.add_argument("--pretrain-steps", type=int, default=None, help="multi-day pretraining budget (default: the "
                    "mode's, as the harness; another value is a separate arm beside the same scratch / single runs)")
    ap.add_argument("--single-from", default=None, help="a generalisation.py --out folder whose session files, "
                    "fold files and single-session pretraining to reuse (copied, never written)")
    args = ap.parse_args(argv)
    unknown = set(args.sessions) - set(PLACE)
    if unknown:
        ap.error(f"unknown sessions {sorted(unknown)}; choose from {list(PLACE)}")
    mode = "quick" if args.quick else "full"
    out = Path(args.out)
    results = []
    suffix = "" if args.pretrain_steps is None else f"-{args.pretrain_steps}steps"
    for name in args.sessions:
        print(f"== {name} ({mode}, {args.days} sibling days)", file=sys.stderr, flush=True)
        results.append(session_results(name, PLACE[name], out, mode, args.days,
                                       Path(args.single_from) if args.single_from else None, args.pretrain_steps))
        text = table(results) + "\n\n" + probe_table(results, out) + "\n"
        (out / f"multiday-table-{mode}{suffix}.md").write_text(text)
    print(table(results))
    print()
    print(probe_table(results, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
