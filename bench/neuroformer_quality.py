"""Neuroformer quality evidence: held-out numbers next to baselines, from the run layer users run.

Every number comes from :func:`neurofm.experiment.run` with configs built from the recipe
(:func:`neurofm.experiment.load_config` over ``configs/neuroformer/demo.yaml``,
:func:`neurofm.recipes.neuroformer.finetune_config`), scored by the recipe's own
``evaluate`` on a held-out contiguous time block.

1. **Simulated network** (``neurofm simulate spikes``: 40 units, 600 s, speed-driven): the demo
   config pretrained for a few epochs, then fine-tuned on speed (behaviour objective only, the
   pooled head), as a practitioner would when the auxiliary head is not enough. Reported on the
   test block: next-spike ID bits/spike over the unigram (firing-rate) null, speed decoding R2
   next to ridge on the same windows' counts, window F1 of generated spikes (teacher-forced)
   next to a mean-rate Poisson generator.
2. **Real recording** (``../shared/data/spikes/linear-track.nwb``, 31 units, ~15 spikes/s,
   position): the animal runs for the first ~1000 s and rests afterwards, so the held-out
   blocks are put INSIDE the running period through ``/intervals/train|valid|test`` in the
   session file (the recipe's default split would test on rest). Pretraining reads every
   training spike (running and rest); position fine-tuning labels 10% of the running-period
   training windows (whole 10 s chunks, :class:`neurofm.tasks.neuroformer.LabelSubset`).
   Compared on the SAME held-out moving windows: (i) pretrained then fine-tuned, (ii) the same
   model from scratch on the same labels, (iii) ridge on the windows' counts with the same
   labels, (iv) ridge with every training label; (i)-(iii) over 5 label draws (seeds), because
   which 5 s chunks are labelled moves R2 by more than the decoder does; and, for context,
   (v) the pretrained model fine-tuned on every training label.

Usage::

    OMP_NUM_THREADS=1 python bench/neuroformer_quality.py           # 13.4 min on the shared 2-core CPU (load ~2)
    OMP_NUM_THREADS=1 python bench/neuroformer_quality.py --quick   # ~2 min: 1 epoch each, a smoke run, not evidence
    python bench/neuroformer_quality.py --only linear-track --out runs/q --json q.json

Prints both tables and writes ``OUT/quality.json`` (``--json`` elsewhere too). Run folders
(metrics.json, plots, pretrained models) stay under ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 threads on a shared 2-core machine are far slower
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from neurofm.config import from_dict  # noqa: E402
from neurofm.experiment import DEFAULT_CONFIG, load_config, run  # noqa: E402
from neurofm.recipes.neuroformer import RunConfig, finetune_config  # noqa: E402

DEFAULT_NWB = ROOT / ".." / "shared" / "data" / "spikes" / "linear-track.nwb"
SPEED_THRESHOLD = 20.0  # px/s, DecodingProtocol's linear-track threshold
TRAINER = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.progress_bar=false",
           "trainer.log_every_n_steps=50", "resume=none"]

# Sizes: (full, quick)
SIM = {"n_units": (40, 40), "duration": (600.0, 240.0), "pretrain_epochs": (5, 1), "finetune_epochs": (3, 1)}
LT = {"pretrain_epochs": (10, 1), "finetune_epochs": (40, 4), "full_label_epochs": (8, 1)}


def _size(table: dict, key: str, quick: bool):
    return table[key][1 if quick else 0]


def _timed_run(cfg, label: str) -> dict:
    t = time.time()
    print(f"\n== {label}: {cfg.run_dir}", flush=True)
    result = run(cfg)
    m = dict(result.metrics)
    m["bench_wall_s"] = round(time.time() - t, 1)
    m["pretrained_dir"] = str(result.pretrained_dir)
    print(f"   done in {m['bench_wall_s']:.0f} s ({m['training']['steps']} steps)", flush=True)
    return m


# -- 1. simulated network -------------------------------------------------------------------------


def simulated(out: Path, quick: bool) -> dict:
    sim_path = out / "sim" / "spikes.h5"
    pre_dir = out / "sim" / "pretrain"
    common = [f"data.simulate.path={sim_path}", f"data.simulate.n_units={_size(SIM, 'n_units', quick)}",
              f"data.simulate.duration={_size(SIM, 'duration', quick)}", "data.batch_size=64",
              "eval.generate_windows=256", *TRAINER]
    epochs = _size(SIM, "pretrain_epochs", quick)
    pre = load_config(DEFAULT_CONFIG, [f"run_dir={pre_dir}", f"trainer.max_epochs={epochs}", *common])
    m_pre = _timed_run(pre, "simulated: pretrain (next spike + dt + speed head, demo config)")
    # a practitioner's next step when the auxiliary head decodes worse than ridge: fine-tune the
    # pooled head and the backbone on speed alone, same split (gap as in pretraining)
    ft = finetune_config(m_pre["pretrained_dir"], [str(sim_path)], behavior=["speed"],
                         run_dir=str(out / "sim" / "finetune"),
                         overrides=[f"trainer.max_epochs={_size(SIM, 'finetune_epochs', quick)}", "data.split.gap=1.0",
                                    "data.batch_size=64", "task.lr=0.001", "trainer.early_stopping_patience=0",
                                    *TRAINER])
    m_ft = _timed_run(ft, "simulated: fine-tune on speed (behaviour objective only)")
    return {"pretrain": m_pre, "finetune": m_ft}


def _sim_table(r: dict) -> str:
    pre, ft = r["pretrain"], r["finetune"]
    mp, bp = pre["metrics"], pre["baselines"]
    ridge = bp["ridge on binned counts"]
    rows = [
        ("next-spike ID bits/spike (> 0 beats the null)", f"{mp['id_bits_per_spike']:+.3f}", "unigram null", "0"),
        ("window F1, generated vs recorded (teacher-forced)", f"{mp['window_f1']:.3f}",
         "mean-rate Poisson", f"{bp['mean-rate Poisson generator']['window_f1']:.3f}"),
        ("  precision / recall", f"{mp['window_precision']:.3f} / {mp['window_recall']:.3f}", "",
         f"{bp['mean-rate Poisson generator']['window_precision']:.3f} / "
         f"{bp['mean-rate Poisson generator']['window_recall']:.3f}"),
        ("speed R2, pretraining's auxiliary head", f"{mp['speed_r2']:.3f}", "ridge, binned counts",
         f"{ridge['speed_r2']:.3f}"),
        ("speed R2, fine-tuned on speed", f"{ft['metrics']['speed_r2']:.3f}", "ridge, binned counts",
         f"{ft['baselines']['ridge on binned counts']['speed_r2']:.3f}"),
        ("speed Pearson r, fine-tuned", f"{ft['metrics']['speed_pearson_r']:.3f}", "ridge",
         f"{ft['baselines']['ridge on binned counts']['speed_pearson_r']:.3f}"),
    ]
    lines = [f"| {'metric (held-out test block)':<52} | {'Neuroformer':>13} | {'baseline':<21} | {'baseline':>13} |",
             f"|{'-' * 54}|{'-' * 15}|{'-' * 23}|{'-' * 15}|"]
    lines += [f"| {a:<52} | {b:>13} | {c:<21} | {d:>13} |" for a, b, c, d in rows]
    t = pre["training"]
    lines.append(f"\ndata: {pre['data']['description']}, {pre['data']['n_units']} units; "
                 f"{pre['data']['n_test_spikes']:,} test spikes in {pre['data']['n_test_windows']:,} test windows")
    lines.append(f"pretraining: {t['steps']} steps ({t['epochs']} epochs) in {t['wall_time_s']:.0f} s; "
                 f"fine-tuning: {ft['training']['steps']} steps in {ft['training']['wall_time_s']:.0f} s; "
                 f"{pre['n_params']:,} parameters")
    lines.append(f"protocol: {pre['protocol']}")
    return "\n".join(lines)


# -- 2. linear-track --------------------------------------------------------------------------------


def _moving_stretches(d, blocks: list[tuple[float, float]], min_s: float) -> list[tuple[float, float]]:
    """Runs of consecutive moving bins (``d.moving``) at least ``min_s`` long, cut to ``blocks``."""
    m = np.concatenate([[False], d.moving, [False]]).astype(np.int8)
    starts, ends = np.flatnonzero(np.diff(m) == 1), np.flatnonzero(np.diff(m) == -1)  # bin ranges [a, b)
    out = []
    for a, b in zip(d.bin_times[starts], d.bin_times[ends - 1] + d.bin_size):
        for lo, hi in blocks:
            s, e = max(a, lo), min(b, hi)
            if e - s >= min_s:
                out.append((float(s), float(e)))
    return sorted(out)


def linear_track_sessions(nwb: Path, out: Path, window_s: float) -> dict:
    """Convert the NWB file, find the running period, and write two session files with the same
    session id and units that differ only in /intervals/train: ``pretrain.h5`` trains on every
    spike outside the held-out blocks (rest included); ``finetune.h5`` on the moving stretches of
    the running period (DecodingProtocol: decoders train on moving bins, as they are scored),
    those at least ``window_s`` long (a window, previous one included, must fit inside). The
    valid and test blocks lie inside the running period, 5 s gaps around them."""
    import shutil

    from neurofm.data.nwb import convert_nwb
    from neurofm.data.session import Session, set_intervals
    from neurofm.evaluation import DecodingProtocol, session_position_data

    raw = out / "linear_track" / "converted.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one repeated position timestamp, reported by convert
        convert_nwb(nwb, raw, overwrite=True)
    gap = 5.0
    with Session(raw) as s:
        d = session_position_data(s, DecodingProtocol(speed_threshold=SPEED_THRESHOLD))
        run_end = float(d.bin_end[np.flatnonzero(d.moving)[-1]]) + 2.0
        t0, t1 = float(s.t_start), float(s.t_end)
        span = run_end - t0
        valid = (t0 + 0.45 * span, t0 + 0.55 * span - gap)
        test = (t0 + 0.55 * span, t0 + 0.75 * span)
        train_run = [(t0, valid[0] - gap), (test[1] + gap, run_end)]
        blocks = {"pretrain": [(t0, valid[0] - gap), (test[1] + gap, t1)],
                  "finetune": _moving_stretches(d, train_run, window_s)}
        moving_test = float(d.moving[(d.bin_times >= test[0]) & (d.bin_end <= test[1])].mean())
    paths = {}
    for name, train in blocks.items():  # `neurofm split` does the same from the command line
        path = out / "linear_track" / f"{name}.h5"
        shutil.copy(raw, path)
        set_intervals(path, {"train": train, "valid": [valid], "test": [test]}, overwrite=True)
        paths[name] = str(path)
    return {"paths": paths, "t_start": t0, "t_end": t1, "run_end": run_end, "valid": valid, "test": test,
            "train_pretrain": blocks["pretrain"], "train_running": train_run, "train_finetune": blocks["finetune"],
            "train_finetune_s": float(sum(b - a for a, b in blocks["finetune"])), "moving_fraction_test": moving_test}


def _lt_model(n_embd: int = 64) -> dict:
    return {"n_embd": n_embd, "n_head": 4, "temporal_hidden": 64,
            "window": {"curr": 0.25, "prev": 0.5, "dt": 0.01}, "block_size": {"id": 32, "prev_id": 64},
            "layers": {"state": 1, "prev_encoder": 1, "state_history": 1, "stimulus_encoder": 0, "stimulus": 0,
                       "behavior": 0, "self_att": 1},
            "dropout": {"embd": 0.1, "attn": 0.1, "resid": 0.1}, "contrastive": {"enabled": False}}


def linear_track(nwb: Path, out: Path, quick: bool, seeds: int, label_fraction: float = 0.1) -> dict:
    model = _lt_model()
    info = linear_track_sessions(nwb, out, window_s=model["window"]["curr"] + model["window"]["prev"])
    trainer = {"max_epochs": _size(LT, "pretrain_epochs", quick), "accelerator": "cpu", "devices": "1",
               "progress_bar": False, "log_every_n_steps": 50}
    pre = from_dict(RunConfig, {
        "family": "neuroformer", "run_dir": str(out / "linear_track" / "pretrain"), "seed": 0, "resume": "none",
        "data": {"sessions": [info["paths"]["pretrain"]], "batch_size": 64},
        "model": model, "task": {"mode": "pretrain", "lr": 1e-3, "weight_decay": 0.1},
        "eval": {"generate_windows": 256}, "trainer": trainer,
    }, where="bench linear-track pretrain")
    m_pre = _timed_run(pre, "linear-track: pretrain on spikes (next spike + dt)")

    runs: dict[str, list[dict]] = {"pretrained_finetuned": [], "scratch": []}
    for seed in range(seeds):  # the seed draws the labelled chunks (and the new head's init, the data order)
        over = [f"seed={seed}", f"trainer.max_epochs={_size(LT, 'finetune_epochs', quick)}",
                "trainer.early_stopping_patience=0", "trainer.check_val_every_n_epoch=10", "data.batch_size=32",
                "data.label_chunk_s=5.0", "task.lr=0.001", f"eval.moving_threshold={SPEED_THRESHOLD}", *TRAINER]
        ft = finetune_config(m_pre["pretrained_dir"], [info["paths"]["finetune"]], behavior=["position"],
                             label_fraction=label_fraction,
                             run_dir=str(out / "linear_track" / f"finetune-pretrained-seed{seed}"), overrides=over)
        runs["pretrained_finetuned"].append(_timed_run(
            ft, f"linear-track: (i) pretrained, fine-tuned on {label_fraction:.0%} of position labels, seed {seed}"))
        # (ii) the same model, the same labels and schedule, from random weights
        scratch = from_dict(RunConfig, {
            "family": "neuroformer", "run_dir": str(out / "linear_track" / f"finetune-scratch-seed{seed}"),
            "data": {"sessions": [info["paths"]["finetune"]], "behavior": ["position"],
                     "label_fraction": label_fraction},
            "model": {**model, "behavior": [{"name": "position", "dim": 2, "task": "regression", "target": True}]},
            "task": {"mode": "finetune", "objectives": ["behavior"]},
        }, overrides=over, where="bench linear-track scratch")
        runs["scratch"].append(_timed_run(
            scratch, f"linear-track: (ii) from scratch on the same {label_fraction:.0%} of labels, seed {seed}"))
    # (v) context: the pretrained model fine-tuned on every training label
    full = finetune_config(m_pre["pretrained_dir"], [info["paths"]["finetune"]], behavior=["position"],
                           run_dir=str(out / "linear_track" / "finetune-pretrained-all-labels"),
                           overrides=[*over, "seed=0", f"trainer.max_epochs={_size(LT, 'full_label_epochs', quick)}",
                                      "trainer.check_val_every_n_epoch=4"])
    m_full = _timed_run(full, "linear-track: (v) pretrained, fine-tuned on every position label")
    return {"sessions": info, "pretrain": m_pre, **runs, "all_labels": m_full, "label_fraction": label_fraction,
            "seeds": seeds, "finetune_epochs": _size(LT, "finetune_epochs", quick)}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} +- {np.std(values, ddof=1):.3f}"


def _lt_rows(r: dict) -> list[tuple[str, str, list[float], list[float]]]:
    ft, sc = r["pretrained_finetuned"], r["scratch"]
    few = f"{r['label_fraction']:.0%}"
    n_lab = [m["data"]["n_labelled_train_windows"]["position"] for m in ft]
    n_lab_txt = f"{few} ({min(n_lab)}-{max(n_lab)})" if len(set(n_lab)) > 1 else f"{few} ({n_lab[0]})"
    same = [m["baselines"]["ridge on binned counts"] for m in ft]
    allb = [m["baselines"]["ridge on binned counts, every training label"] for m in ft]
    return [
        ("(i) Neuroformer, pretrained, fine-tuned", n_lab_txt, [m["metrics"]["position_r2"] for m in ft],
         [m["metrics"]["position_pearson_r"] for m in ft]),
        ("(ii) Neuroformer, from scratch", n_lab_txt, [m["metrics"]["position_r2"] for m in sc],
         [m["metrics"]["position_pearson_r"] for m in sc]),
        ("(iii) ridge on binned counts", n_lab_txt, [b["position_r2"] for b in same],
         [b["position_pearson_r"] for b in same]),
        ("(iv) ridge on binned counts", f"100% ({ft[0]['data']['n_train_windows']})", [allb[0]["position_r2"]],
         [allb[0]["position_pearson_r"]]),
        ("(v) Neuroformer, pretrained, fine-tuned", f"100% ({r['all_labels']['data']['n_train_windows']})",
         [r["all_labels"]["metrics"]["position_r2"]], [r["all_labels"]["metrics"]["position_pearson_r"]]),
    ]


def _lt_table(r: dict) -> str:
    ft, sc, pre = r["pretrained_finetuned"], r["scratch"], r["pretrain"]
    rows = _lt_rows(r)
    n = r["seeds"]
    head = f"R2 (x, y mean){', %d draws' % n if n > 1 else ''}"
    lines = [f"| {'decoder (same held-out moving windows)':<40} | {'labels (windows)':>16} | {head:>23} "
             f"| {'Pearson r':>15} |", f"|{'-' * 42}|{'-' * 18}|{'-' * 25}|{'-' * 17}|"]
    lines += [f"| {a:<40} | {lab:>16} | {_mean_sd(r2):>23} | {_mean_sd(pr):>15} |" for a, lab, r2, pr in rows]
    if n > 1:
        per = "; ".join(f"{name.split(')')[0]}) " + ", ".join(f"{v:.3f}" for v in r2)
                        for name, _, r2, _ in rows[:3])
        diff = [a - b for a, b in zip(rows[0][2], rows[1][2])]
        lines.append(f"\nper label draw (seed 0..{n - 1}), R2: {per}; (i) - (ii): "
                     + ", ".join(f"{d:+.3f}" for d in diff))
    s = r["sessions"]
    t0 = s["t_start"]
    rel = lambda a, b: f"{a - t0:.0f}-{b - t0:.0f} s"  # noqa: E731
    lines.append(f"\nscored: {ft[0]['metrics']['position_n_scored']} moving windows of "
                 f"{ft[0]['data']['n_test_windows']} in the test block ({rel(*s['test'])} after the recording start; "
                 f"the running period ends at {s['run_end'] - t0:.0f} s, then rest)")
    lines.append(f"pretraining: every spike outside valid/test (train blocks "
                 f"{', '.join(rel(a, b) for a, b in s['train_pretrain'])}, rest included), {pre['training']['steps']} "
                 f"steps in {pre['training']['wall_time_s']:.0f} s; held-out next-spike ID "
                 f"{pre['metrics']['id_bits_per_spike']:+.3f} bits/spike over the unigram null"
                 + (f", window F1 {pre['metrics']['window_f1']:.3f} vs mean-rate Poisson "
                    f"{pre['baselines']['mean-rate Poisson generator']['window_f1']:.3f}"
                    if "window_f1" in pre["metrics"] else ""))
    lines.append(f"fine-tuning: the {len(s['train_finetune'])} moving stretches (>= 0.75 s, "
                 f"{s['train_finetune_s']:.0f} s "
                 f"in all) of the running period's training blocks "
                 f"{', '.join(rel(a, b) for a, b in s['train_running'])}; few-shot: {r['finetune_epochs']} "
                 f"epochs ({'/'.join(str(m['training']['steps']) for m in ft)} steps, ~"
                 f"{np.mean([m['training']['wall_time_s'] for m in ft + sc]):.0f} s each); (v): "
                 f"{r['all_labels']['training']['steps']} steps; no early stopping (the valid block would be labels "
                 f"beyond the {r['label_fraction']:.0%}); lr 1e-3, whole model trained")
    lines.append(f"protocol: {ft[0]['protocol']}" + (f" (seeds 0..{n - 1} for the {n} draws)" if n > 1 else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and a shorter simulation (~3 min)")
    ap.add_argument("--only", choices=["simulated", "linear-track"], help="run one part only")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "neuroformer-quality", help="run folders go here")
    ap.add_argument("--nwb", type=Path, default=DEFAULT_NWB, help="linear-track NWB file")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--seeds", type=int, default=0, help="linear-track label draws (default 5, 1 with --quick)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    logging.getLogger("lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    out = args.out.resolve()
    t = time.time()
    results: dict = {"quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads()}
    tables = []
    if args.only in (None, "simulated"):
        results["simulated"] = simulated(out, args.quick)
        tables.append("Simulated network (neurofm simulate spikes)\n\n" + _sim_table(results["simulated"]))
    if args.only in (None, "linear-track"):
        if not args.nwb.exists():
            print(f"skipping linear-track: {args.nwb} not found (the shared data folder is absent)")
        else:
            results["linear_track"] = linear_track(args.nwb, out, args.quick, args.seeds or (1 if args.quick else 5))
            tables.append("Linear track (real recording, position decoding, few labels)\n\n"
                          + _lt_table(results["linear_track"]))
    results["wall_s"] = round(time.time() - t, 1)
    print("\n" + "\n\n".join(tables))
    print(f"\ntotal {results['wall_s'] / 60:.1f} min{' (--quick)' if args.quick else ''}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average "
          f"{os.getloadavg()[0]:.1f}")
    for path in [out / "quality.json", *([args.json] if args.json else [])]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
