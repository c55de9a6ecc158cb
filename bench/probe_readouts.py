"""Which read-out of a frozen pretrained Neuroformer is worth something to a decoder? (issue 10)

For each session of ``bench/generalisation.py`` (its cached pretraining and fold files), each
blocked fold, the frozen pretrained model is run once over the fold's training and test windows;
ridge (the package's blocked-CV ridge, ``recipes.neuroformer._ridge_fit_predict``) is fitted on
each candidate feature set and scored on the fold's scored test windows (the CLI default:
moving windows for position), with 100 % of the labels and with 10 % (``--draws`` label draws per
fold, ``LabelSubset`` as fine-tuning draws them). Candidates:

* ``counts``       every unit's counts in 50 ms bins over the 300 ms the model reads (the ridge arm)
* ``counts-curr``  the same, current window's bins only (how much the history bins give ridge)
* ``pooled``       masked mean of the final states over the current window's tokens (today's probe)
* ``last``         the final state at the last position with a real next-token target (EOS target)
* ``logp-last``    log-softmax over units of the next-ID logits at that position
* ``logp-mean``    log of the mean over the window's positions of the next-ID distribution over units
* ``binned-sum``   sums of the final states of the current window's tokens and of the previous
                   window's encoder states in the same 50 ms bins as ``counts`` (history kept in
                   bins, the spike count not divided out as a mean does)
* ``X+counts``     each of those beside ``counts``

    OMP_NUM_THREADS=1 nice -n 5 python bench/probe_readouts.py --out /work/runs/gen5 --sessions place-dense-120
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def collect(model, loader, n_units: int, window) -> dict:
    import torch

    from neurofm.recipes.neuroformer import _binned_counts
    from neurofm.tokens import EOS, N_SPECIAL

    keys = ("pooled", "last", "logp-last", "logp-mean", "binned-sum", "counts", "interval", "session")
    span, bin_s = window.curr + window.prev, 0.05
    n_bins = int(math.ceil(span / bin_s - 1e-9))  # as window_count_features bins
    out = {k: [] for k in keys}
    y, ymask = [], []
    name = model.config.behavior_targets()[0].name
    with torch.no_grad():
        for batch in loader:
            o = model(batch)
            n = o["id_logits"].shape[1]
            tid = batch["target_id"][:, :n]
            real = (tid >= N_SPECIAL) | (tid == EOS)  # positions with a trained next-token target
            end = (tid == EOS).float().argmax(1)  # the position whose target is EOS
            rows = torch.arange(len(end))
            unit_lp = torch.log_softmax(o["id_logits"][..., N_SPECIAL:N_SPECIAL + n_units].float(), -1)
            out["pooled"].append(o["pooled"].float().numpy())
            out["last"].append(o["hidden"][rows, end].float().numpy())
            out["logp-last"].append(unit_lp[rows, end].numpy())
            p = unit_lp.exp() * real[..., None]
            out["logp-mean"].append(torch.log(p.sum(1) / real.sum(1, keepdim=True).clamp(min=1)).numpy())
            out["counts"].append(_binned_counts(batch, n_units, window))
            src = model.encode_sources(batch)
            sums = torch.zeros(len(end), n_bins, o["hidden"].shape[-1])
            for h, ids, dts, back in ((o["hidden"], batch["id"][:, :n], batch["dt"][:, :n], window.curr),
                                      (src.prev, batch["id_prev"], batch["dt_prev"], span)):
                ids, dts = ids[:, :h.shape[1]], dts[:, :h.shape[1]]
                b = torch.clamp(torch.ceil((back - dts.double() * window.dt) / bin_s - 1e-9).long() - 1, 0, n_bins - 1)
                sums.index_put_((rows[:, None].expand_as(b), b), h.float() * (ids >= N_SPECIAL)[..., None],
                                accumulate=True)
            out["binned-sum"].append(sums.reshape(len(end), -1).numpy())
            out["interval"].append(np.asarray(batch["interval"], dtype=np.float64))
            out["session"].append(np.asarray(batch["session"], dtype=np.int64))
            y.append(batch["behavior"][name].reshape(len(end), -1).numpy())
            ymask.append(batch["behavior_mask"][name].numpy())
    d = {k: np.concatenate(v) for k, v in out.items()}
    d["y"], d["ymask"] = np.concatenate(y), np.concatenate(ymask).astype(bool)
    return d


SETS = ["counts", "counts-curr", "pooled", "last", "logp-last", "logp-mean", "binned-sum", "pooled+counts",
        "last+counts", "logp-last+counts", "logp-mean+counts", "binned-sum+counts"]


def fold_readouts(name: str, behavior: str, out: Path, fold: int, draws: int, fraction: float,
                  pretrained: Path | None = None, sets: list[str] | None = None) -> dict:
    """``pretrained``: the frozen model (default: the harness's ``out/<name>/pretrain/pretrained``);
    ``sets``: the feature sets to score (default :data:`SETS`; ``counts`` is always scored)."""
    import torch

    from neurofm import metrics as M
    from neurofm.recipes import neuroformer as recipe
    from neurofm.tasks.neuroformer import LabelSubset

    path = out / "data" / f"{name}-fold{fold}.h5"
    pretrained = pretrained or out / name / "pretrain" / "pretrained"
    cfg = recipe.finetune_config(str(pretrained), [str(path)], behavior=[behavior],
                                 run_dir=f"/tmp/nfprobe/{name}-diag")
    cfg = recipe.prepare(cfg)
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    dm.setup("test")
    torch.manual_seed(0)
    frozen = recipe.build_model(cfg, dm).eval()
    n_units, w = frozen.config.n_units, frozen.config.window
    tr = collect(frozen, recipe._train_windows_loader(dm), n_units, w)
    te = collect(frozen, dm.loader("test"), n_units, w)
    scored = recipe._moving_windows(cfg, dm, te) & te["ymask"]
    usable = recipe._moving_windows(cfg, dm, tr) & tr["ymask"]
    n_bins = tr["counts"].shape[1] // n_units
    n_curr = int(round(w.curr / recipe.RIDGE_BIN_S))
    curr_cols = (np.arange(n_units)[:, None] * n_bins + np.arange(n_curr)[None, :]).ravel()  # bin 0 = latest

    def X(d, k):
        if k == "counts-curr":
            return d["counts"][:, curr_cols]
        if k.endswith("+counts"):
            return np.concatenate([d[k[:-len("+counts")]], d["counts"]], 1)
        return d[k]

    sets = ["counts", *[k for k in (sets or SETS) if k != "counts"]]
    stride = cfg.data.stride or w.curr
    yte = te["y"][scored]

    def score(lab) -> dict:
        r = {}
        for k in sets:
            try:
                pred = recipe._ridge_fit_predict(X(tr, k)[lab], tr["y"][lab], X(te, k)[scored], stride)
                r[k] = float(M.r2_score(yte, pred))
            except Exception as e:  # noqa: BLE001 - report, do not hide
                r[k] = f"error: {e}"
        return r

    res = {"fold": fold, "n_train": int(usable.sum()), "n_scored": int(scored.sum()), "full": score(usable)}
    few = []
    for seed in range(draws):
        lab = LabelSubset(fraction, cfg.data.label_chunk_s, seed)(torch.as_tensor(tr["session"]),
                                                                   torch.as_tensor(tr["interval"])).numpy() & usable
        few.append({"seed": seed, "n_labelled": int(lab.sum()), **score(lab)})
    res["few"] = few
    return res


def table(results: list[dict]) -> str:
    """Markdown: per session, each feature set's R2 per fold (100 % labels) and its mean; at 10 %
    labels the mean over every draw of every fold, the range, and on how many draws it beats
    ridge on counts (the same labelled and scored windows)."""
    lines = []
    for r in results:
        folds = r["folds"]
        sets = list(folds[0]["full"])
        base_few = [d["counts"] for f in folds for d in f["few"]]
        lines += [f"### {r['session']} (folds {[f['fold'] for f in folds]}; scored test windows "
                  f"{[f['n_scored'] for f in folds]}; labelled moving training windows at 100 %: "
                  f"{[f['n_train'] for f in folds]}, at 10 %: {[[d['n_labelled'] for d in f['few']] for f in folds]})",
                  "", "| features | 100 %: R2 per fold | mean | 10 %: mean R2 over draws | min .. max | "
                  "> counts (draws) |", "|---|---|---|---|---|---|"]
        for k in sets:
            full = [f["full"][k] for f in folds]
            few = [d[k] for f in folds for d in f["few"]]
            wins = sum(a > b + 5e-4 for a, b in zip(few, base_few))
            lines.append(f"| {k} | {', '.join(f'{x:.3f}' for x in full)} | {np.mean(full):.3f} | {np.mean(few):.3f} | "
                         f"{min(few):.3f} .. {max(few):.3f} | {'-' if k == 'counts' else f'{wins}/{len(few)}'} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    from generalisation import HELD_OUT, N_FOLDS, SESSIONS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/work/runs/gen5", help="the harness's run folder (pretraining + fold files)")
    ap.add_argument("--sessions", nargs="*", default=list(SESSIONS))
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--results", default="/tmp/nfprobe/readouts")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="default: every fold")
    ap.add_argument("--table", action="store_true", help="only print the markdown table of --results")
    ap.add_argument("--pretrained-root", default=None,
                    help="read the frozen model from ROOT/<session>/pretrain/pretrained (default: --out's)")
    ap.add_argument("--sets", nargs="*", default=None, help=f"feature sets (default: all: {' '.join(SETS)})")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads((Path(args.results) / f"{n}.json").read_text()) for n in args.sessions
                     if (Path(args.results) / f"{n}.json").exists()]))
        return 0
    every = {**SESSIONS, **HELD_OUT}
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    for name in args.sessions:
        f = res_dir / f"{name}.json"
        if f.exists():
            continue
        t0 = time.time()
        root = Path(args.pretrained_root) if args.pretrained_root else Path(args.out)
        folds = [fold_readouts(name, every[name]["behavior"], Path(args.out), k, args.draws, args.fraction,
                               root / name / "pretrain" / "pretrained", args.sets)
                 for k in (args.folds if args.folds is not None else range(N_FOLDS))]
        f.write_text(json.dumps({"session": name, "folds": folds, "wall_s": time.time() - t0}, indent=1) + "\n")
        print(name, f"{time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
