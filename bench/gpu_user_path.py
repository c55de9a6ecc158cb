"""The users' path on a GPU, as one prepared check: the commands a lab runs, end to end.

``bench/gpu.py`` measures kernels, training steps and Lightning fits on synthetic batches; this runs
the CLI as a user does, on simulated sessions, and prints one table: each command, its exit status,
its wall time, where the run trained (metrics.json ``training.device``), its steps and its last line.
Pretraining, fine-tuning, evaluation after training, checkpointing and export all run, so a bug
anywhere on the GPU path (device placement in evaluation, precision, checkpoints) shows as a
non-zero status with the command's own error. The first GPU session found every training run
stopping at its first step; evaluation after training on CUDA has not run to its end yet.

1. ``neurofm simulate spikes`` (200 units) and ``neurofm simulate ieeg`` (64 channels, 2048 Hz).
2. ``neurofm train neuroformer/paper`` and ``neurofm train barista/paper``, ``trainer.max_steps=N``.
3. ``neurofm finetune`` of each: Neuroformer decoding speed, BaRISTA classifying word onsets, both
   ``trainer.max_steps=N``.

Each command runs with a time limit (``--timeout``, seconds); what it printed is kept in
``OUT/<step>.log``; the table goes to stdout and ``OUT/user_path.json``. ``--quick`` runs the demo
configs on tiny sessions (a CPU smoke run of this script, about 2 minutes on 2 cores).

Usage::

    python bench/gpu_user_path.py --out runs/user_path                # on the GPU machine (not run there yet)
    python bench/gpu_user_path.py --quick --out /tmp/up --steps 2     # CPU smoke run

Exit status: 0 when every command exited 0; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _plan(out: Path, steps: int, quick: bool) -> list[tuple[str, list[str], Path | None]]:
    """``(name, neurofm arguments, run folder or None)`` in order."""
    spikes, ieeg = out / "spikes.h5", out / "ieeg.h5"
    nf_cfg, ba_cfg = ("neuroformer/demo", "barista/demo") if quick else ("neuroformer/paper", "barista/paper")
    duration = "120" if quick else "300"  # of the spike session; the iEEG one is 300 s (word onsets in every block)
    limit = [f"trainer.max_steps={steps}"]
    nf_pre, ba_pre = out / "nf-pretrain", out / "ba-pretrain"
    nf_ft, ba_ft = out / "nf-finetune", out / "ba-finetune"
    return [
        ("simulate spikes", ["simulate", "spikes", str(spikes), "--n-units", "40" if quick else "200",
                             "--duration", duration], None),
        ("simulate ieeg", ["simulate", "ieeg", str(ieeg), "--n-channels", "16" if quick else "64",
                           "--sampling-rate", "512" if quick else "2048", "--duration", "300"], None),
        ("pretrain neuroformer", ["train", nf_cfg, f"data.sessions=[{spikes}]", f"run_dir={nf_pre}", *limit], nf_pre),
        ("pretrain barista", ["train", ba_cfg, f"data.sessions=[{ieeg}]", f"run_dir={ba_pre}", *limit], ba_pre),
        ("finetune neuroformer", ["finetune", "--pretrained", str(nf_pre / "pretrained"), "--data", str(spikes),
                                  "--behavior", "speed", "--run-dir", str(nf_ft), *limit], nf_ft),
        ("finetune barista", ["finetune", "--pretrained", str(ba_pre / "pretrained"), "--data", str(ieeg),
                              "--task", "classify", "--events", "word_onset", "--run-dir", str(ba_ft), *limit], ba_ft),
    ]


def _training(run_dir: Path | None) -> dict:
    if run_dir is None or not (run_dir / "metrics.json").exists():
        return {}
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("training", {})
    except json.JSONDecodeError:
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/user_path"), help="sessions, runs, logs and the JSON")
    ap.add_argument("--steps", type=int, default=100, help="trainer.max_steps of every training run")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds each command may run")
    ap.add_argument("--quick", action="store_true", help="demo configs, tiny sessions (CPU smoke run)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    rows = []
    print(f"{'command':22s} {'status':>7s} {'seconds':>8s} {'device':>8s} {'steps':>6s}  last line", flush=True)
    for name, cli_args, run_dir in _plan(args.out, args.steps, args.quick):
        log = args.out / (name.replace(" ", "_") + ".log")
        start = time.monotonic()
        try:
            with open(log, "w") as f:
                rc = subprocess.run([sys.executable, "-m", "neurofm.cli", *cli_args], stdout=f,
                                    stderr=subprocess.STDOUT, env=env, timeout=args.timeout, cwd=ROOT).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        seconds = time.monotonic() - start
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        training = _training(run_dir)
        row = dict(command=name, argv=cli_args, status=rc, seconds=round(seconds, 1),
                   device=training.get("device", "-"), steps=training.get("steps", "-"),
                   last_line=lines[-1][:160] if lines else "")
        rows.append(row)
        print(f"{name:22s} {str(rc):>7s} {seconds:8.1f} {str(row['device']):>8s} {str(row['steps']):>6s}  "
              f"{row['last_line'][:100]}", flush=True)
        (args.out / "user_path.json").write_text(json.dumps({"quick": args.quick, "steps": args.steps,
                                                               "rows": rows}, indent=1))
    failed = [r["command"] for r in rows if r["status"] != 0]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} commands exited 0"
          + (f"; failed: {', '.join(failed)} (their logs: {args.out}/*.log)" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
