"""What decodes the held-out simulated subject's events without any model: band power, the
evoked waveform, both (issue 11: is band power the ceiling a fine-tuned BaRISTA must reach?).

The subjects of ``bench/barista_quality.py --only subjects --quick`` (same seeds, durations and
``simulate_ieeg_subjects`` call), the held-out one only: ``word_onset`` speech / nonspeech
segments of 0.5 s at each onset, notched at 60 Hz (the recipe's preprocessing); training events
in the first 50% of the recording, test events from 60% on (the quality bench's 50 / 10 / 40
blocks, without its 2 s gaps). Features: log band power per channel and band of the raw
segment (the report's band-power arm), the evoked waveform (each channel's time course,
z-scored per segment as the model reads it, in :data:`neurofm.recipes.barista.WAVEFORM_BINS`
bins: the report's waveform arm), and both; an L2 logistic (:class:`neurofm.baselines.Logistic`,
penalty by AUROC in blocked 5-fold CV of the training events) per feature set; test ROC-AUC.

    python bench/barista_waveform.py --out runs/barista_waveform   # ~1 min per seed on 1 CPU thread
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def features(path: str, segment_s: float = 0.5, line: float = 60.0):
    from neurofm.baselines import band_power
    from neurofm.data.segmenter import notch
    from neurofm.data.session import Session
    from neurofm.nn.spectral import resolved_bands
    from neurofm.recipes.barista import evoked_waveform

    with Session(path) as s:
        fs, t0 = s.sampling_rate, s.continuous_t_start
        x = notch(s.continuous_samples(0, s.n_samples), fs, line).astype(np.float64)
        x = x[:, ~np.asarray(s.channels().bad, bool)]
        ev = s.events("word_onset")
    n = int(round(segment_s * fs))
    start = np.round((ev["onset"] - t0) * fs).astype(int)
    keep = (start >= 0) & (start + n <= len(x))
    raw = np.stack([x[i:i + n].T for i in start[keep]])  # (N, C, T)
    z = (raw - raw.mean(-1, keepdims=True)) / (raw.std((1, 2), keepdims=True) + 1e-12)
    bp = band_power(raw, fs, resolved_bands(fs, n)).reshape(len(raw), -1)
    wave = evoked_waveform(z).reshape(len(raw), -1)
    labels = np.asarray(ev["label"]).astype(str)[keep]
    onset, span = ev["onset"][keep], len(x) / fs
    return {"band power": bp, "evoked waveform": wave, "both": np.hstack([bp, wave])}, labels, onset - t0, span


def main(argv=None) -> int:
    from barista_quality import SUBJECT_BUDGET  # the quality bench's quick sizes

    from neurofm import metrics
    from neurofm.baselines import Logistic
    from neurofm.data.synthetic import simulate_ieeg_subjects

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/barista_waveform")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = p.parse_args(argv)
    n_pre, pre_s, held_s = (SUBJECT_BUDGET[k][1] for k in ("n_pretrain_subjects", "pretrain_s", "heldout_s"))
    print("| seed | training / test events | band power | evoked waveform | both |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        folder = Path(args.out) / f"subjects_seed{seed}_{n_pre}x{pre_s:.0f}s_{held_s:.0f}s"
        paths = sorted(folder.glob("sub-*.h5"))
        if len(paths) != n_pre + 1:
            paths = simulate_ieeg_subjects(folder, n_pre + 1, duration=(pre_s,) * n_pre + (held_s,), seed=seed)
        sets, labels, t, span = features(str(paths[-1]))
        y = (labels == np.unique(labels)[-1]).astype(int)
        train, test = t < 0.5 * span, t >= 0.6 * span
        auc = {}
        for name, X in sets.items():
            m = Logistic().fit(X[train], y[train])
            auc[name] = metrics.auroc(y[test], m.decision_function(X[test]))
        print(f"| {seed} | {int(train.sum())} / {int(test.sum())} | " + " | ".join(f"{auc[k]:.3f}" for k in sets)
              + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
