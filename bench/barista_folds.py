"""Pretrained vs from scratch on a held-out simulated subject, cross-validated (``neurofm finetune --folds 5``).

The held-out subject of ``bench/barista_quality.py --only subjects --quick`` (300 s, 30 contacts;
its pretraining runs reused from that bench's ``--out``) is fine-tuned with the CLI and its
defaults only (``--task classify --events word_onset`` and ``--task regress --behavior
grip_force``), once from the pretrained encoder and once ``--from-scratch``, each with ``--folds
5``: every event and force segment of the recording is scored once, by the fold that held it
out. Per seed and task, one decode report with both runs' models as arms on the same segments
(paired CIs; blocks resampled within their fold, AUROC per fold averaged, R2 pooled:
:func:`neurofm.report.pool_folds`), beside each baseline of the pretrained run's folds and both
runs' frozen-encoder probes.

Measured 2026-12-04 15:47-16:28 UTC (shared 2-core CPU, one thread, nice 5; pretraining runs of
``barista_quality.py --only subjects --quick --scales parcel --finetune-patience 15 --seeds S``,
run the same day; 60 fold fine-tunes, every one kept its step-0 start). Event AUROC (about 98
segments, 25 blocks) and grip-force R2 (600 segments, 50 blocks) [95% CI]:

| seed | pretrained | from scratch | pretrained - scratch | logistic on band power | evoked waveform | probe: pretrained / random |
|------|------------|--------------|----------------------|------------------------|-----------------|----------------------------|
| 0 events | 0.981 [0.960, 0.996] | 0.983 | -0.002 [-0.012, +0.018] | 0.947 | 0.957 | 0.817 / 0.685 |
| 1 events | 0.931 [0.900, 0.974] | 0.931 | +0.000 | 0.905 | 0.920 | 0.752 / 0.561 |
| 2 events | 0.966 [0.929, 0.991] | 0.972 | -0.006 [-0.024, +0.002] | 0.889 | 0.980 | 0.440 / 0.429 |
| 0 force  | 0.770 [0.736, 0.804] | 0.770 | 0.000 | 0.770 (ridge) | - | 0.106 / -0.012 |
| 1 force  | 0.839 [0.810, 0.859] | 0.839 | 0.000 | 0.839 (ridge) | - | -0.049 / -0.011 |
| 2 force  | 0.738 [0.704, 0.759] | 0.738 | 0.000 | 0.738 (ridge) | - | -0.027 / -0.022 |

Pretrained minus band power (events): +0.034 [+0.005, +0.082], +0.026 [-0.033, +0.093], +0.077
[+0.022, +0.137]; minus the waveform arm: +0.024 [+0.003, +0.063], +0.011 [-0.022, +0.075],
-0.014 [-0.050, +0.014]. Pretrained > random init does not hold: every fine-tune kept its
closed-form start, and both arms' starts took the same feature blocks except where the token
mean joined (3 of 15 pretrained folds, 4 of 15 from scratch).

Rerun 2026-12-04 (seed 0 19:00-19:15 UTC), after the baselines' and starts' penalties moved from the
last 20% of the training segments to blocked 5-fold CV (3b711dd), same pretraining: events
pretrained 0.987 [0.966, 1.000], from scratch 0.989 (-0.002 [-0.010, +0.000]), logistic on band
power 0.947, ridge on band power 0.956, evoked waveform 0.977, probes 0.797 / 0.636; force
pretrained 0.770 [0.735, 0.803], from scratch 0.775 = ridge on band power 0.775: pretrained LOSES
by -0.005 [-0.009, -0.002], because in fold 3 its start took the pretrained token mean beside band
power (blocked-CV gain on the training segments) and scored 0.809 on that fold's test block where
band power alone scored 0.838. Seeds 1 and 2, rerun 19:27-19:46: events 0.905 (was 0.931; now
equal to logistic on band power 0.905, below the waveform's 0.917) and 0.970 (was 0.966; waveform
0.973); force 0.840 and 0.745 (were 0.839 and 0.738), equal to from scratch and to ridge on band power.
Pretrained = from scratch in every seed-1 and seed-2 arm. All 60 folds again kept their step-0 start.

Rerun 2026-12-04 21:36-21:42 UTC after the start rule's bar rose from one paired SE to two
(``neurofm.report.START_SE``): the 12 folds whose start had taken a feature block at 1-2 SE (the
waveform in 9, the token mean in 3) were fine-tuned again, the other 48 re-evaluated unchanged.
Seed 0: events pretrained 0.987 = from scratch 0.987 (was 0.989); force 0.775 = from scratch = ridge
on band power (pretrained no longer loses). Seed 2 events: 0.919 [0.868, 0.961] in both arms (was
0.970: the waveform no longer joins band power in 3 folds), matching logistic on band power (0.893)
and below the waveform arm (0.973) within the CI. Every other arm unchanged. Pretrained = from
scratch exactly, in every seed and task.

Usage::

    OMP_NUM_THREADS=1 python bench/barista_quality.py --only subjects --quick --scales parcel \\
        --finetune-patience 15 --seeds 0 --out /tmp/bq/s0      # the pretraining (and its own table)
    OMP_NUM_THREADS=1 python bench/barista_folds.py --bench-out '/tmp/bq/s{seed}' --seeds 0 1 2 --out /tmp/cvb
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurofm.report import DECODE_INPUTS, decode_report, fold_blocks, load_inputs  # noqa: E402

TASKS = {"classify": ["--task", "classify", "--events", "word_onset"],
         "regress": ["--task", "regress", "--behavior", "grip_force"]}
ARMS = {"pretrained": [], "from scratch": ["--from-scratch"]}


def finetune(pretrained: Path, held: Path, task: str, arm: str, run_dir: Path, folds: int) -> None:
    if (run_dir / "metrics.json").exists():
        return
    cmd = [sys.executable, "-m", "neurofm.cli", "finetune", "--pretrained", str(pretrained), "--data", str(held),
           *TASKS[task], *ARMS[arm], "--folds", str(folds), "--run-dir", str(run_dir), "trainer.progress_bar=false"]
    log = run_dir.with_suffix(".log")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")


def paired(runs: dict[str, Path], folds: int, seed: int):
    """One fold-stratified decode report with both runs' models (and the pretrained run's
    baselines, both runs' probes) as arms on the same segments."""
    parts = {arm: [load_inputs(r / f"fold-{k}" / DECODE_INPUTS)[0] for k in range(1, folds + 1)]
             for arm, r in runs.items()}
    first = parts["pretrained"]
    y = np.concatenate([m["targets"] for m in first])
    if not np.array_equal(y, np.concatenate([m["targets"] for m in parts["from scratch"]])):
        raise SystemExit("the two runs scored different segments")
    blocks, strata = fold_blocks(first)
    ref = first[0]["reference"]
    arms = {arm: np.concatenate([m["preds"][ref] for m in parts[arm]]) for arm in runs}
    for a in first[0]["arms"]:
        if a != ref and not a.startswith(("linear probe", "null")):
            arms[a] = np.concatenate([m["preds"][a] for m in first])
    for arm in runs:
        probe = next(a for a in parts[arm][0]["arms"] if a.startswith("linear probe"))
        arms[f"frozen probe ({arm})"] = np.concatenate([m["preds"][probe] for m in parts[arm]])
    return decode_report(arms, y, blocks, task=first[0]["task"], target=first[0]["target"],
                         strata=strata, unit="segments", seed=seed,
                         scored=f"every segment once, {folds} blocked folds")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-out", required=True, help="barista_quality.py's --out per seed, with {seed}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "barista-folds")
    args = ap.parse_args(argv)
    for seed in args.seeds:
        src = Path(args.bench_out.format(seed=seed))
        held = next(src.glob(f"subjects_seed{seed}_*/sub-*.h5")).parent
        held = sorted(held.glob("sub-*.h5"))[-1]
        pretrained = src / f"subj{seed}-pretrain-parcel" / "pretrained"
        for task in TASKS:
            runs = {arm: args.out / f"s{seed}-{task}-{arm.replace(' ', '-')}" for arm in ARMS}
            for arm, run_dir in runs.items():
                finetune(pretrained, held, task, arm, run_dir, args.folds)
            rep = paired(runs, args.folds, seed)
            print(f"\n## seed {seed}, {rep.target}\n{rep.to_text()}", flush=True)


if __name__ == "__main__":
    main()
