"""Held-out channel reconstruction on the real sample sEEG: the baselines a BaRISTA R2 is quoted against.

Converts ``../shared/data/ieeg/sample_seeg.edf`` with its electrodes TSV (98 contacts, 1000 Hz,
20 s; resolved from the repository root) to a session file in a temporary folder and runs the
reconstruction protocol of :mod:`neurofm.evaluation_ieeg` (DESIGN.md 10): every contact with
both same-shaft neighbours is hidden in turn and reconstructed from the other channels; R2 is
pooled over every held-out (channel, segment, sample) of the test block. Rows:

* **neighbour mean**: the z-scored mean of the two neighbours (no fitting);
* **LS neighbours**: least-squares weights of the two neighbours, fitted on the training block;
* **LS all channels**: least squares on every other neural channel (a linear spatial filter).

Segments: the recording is 20 s, so BaRISTA's 3 s segments leave one test segment; the
default here is 1 s segments of 4 patches x 250 samples (the same 250-sample patch as 3 s x 12
patches at 1000 Hz), test block = the last 30% (14.5-20 s: 5 segments), 1 s gap, training block
0-13.5 s (13 segments). The protocol line printed under the table states all of it.

Adding a model row (e.g. BaRISTA) is one callable that builds a predictor from the data::

    from bench.seeg_reconstruction import run
    run({"BaRISTA (parcel)": lambda data: make_predict(encoder, head)})

where ``predict(batch) -> (B, T)`` reconstructs ``batch["held_out"]`` from a batch of
:func:`neurofm.evaluation_ieeg.reconstruction_batches` (see
:func:`neurofm.evaluation_ieeg.score_reconstruction` for a BaRISTA example). Pass the model's
spatial vocabulary with ``spatial_vocab=`` so ``parcel`` indices match its table.

Usage::

    python bench/seeg_reconstruction.py                  # about 10 s on 2 cores
    python bench/seeg_reconstruction.py --segment-s 3 --n-patches 12 --test-fraction 0.3
    python bench/seeg_reconstruction.py --json out.json
"""

from __future__ import annotations

import os

# Small dense solves: BLAS threads cost more than they give on a shared 2-core machine.
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
from typing import Any, Callable, Mapping  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neurofm import evaluation_ieeg as ei  # noqa: E402
from neurofm.data.ieeg import convert_ieeg  # noqa: E402

DEFAULT_EDF = ROOT / ".." / "shared" / "data" / "ieeg" / "sample_seeg.edf"
DEFAULT_ELECTRODES = ROOT / ".." / "shared" / "data" / "ieeg" / "sample_seeg_electrodes.tsv"
DEFAULT_PROTOCOL = ei.ReconstructionProtocol(segment_s=1.0, n_patches=4, test_fraction=0.3, gap_s=1.0)

#: ``name -> factory(data) -> predict``: how a row's predictor is built from the protocol data
#: (baselines fit on ``data.train`` here; a model would load a checkpoint).
PredictorFactory = Callable[[ei.ReconstructionData], ei.Predictor]

BASELINES: dict[str, PredictorFactory] = {
    "neighbour mean": lambda data: ei.neighbour_mean_baseline,
    "LS neighbours": lambda data: ei.LeastSquaresBaseline("neighbours").fit(data),
    "LS all channels": lambda data: ei.LeastSquaresBaseline("all").fit(data),
}


def load(edf: Path = DEFAULT_EDF, electrodes: Path = DEFAULT_ELECTRODES,
         protocol: ei.ReconstructionProtocol = DEFAULT_PROTOCOL, workdir: Path | None = None,
         spatial_vocab="auto") -> ei.ReconstructionData:
    """Convert the EDF to a session file (in ``workdir`` or a temporary folder) and read the protocol's data."""
    if not Path(edf).exists():
        raise FileNotFoundError(f"{edf}: not found; pass --edf (the shared data folder is ../shared/data)")
    with tempfile.TemporaryDirectory(prefix="seeg_recon_") as tmp:
        folder = Path(workdir or tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unmatched MARK rows in the TSV; coordinate unit inferred as mm
            path = convert_ieeg(edf, folder / "sample_seeg.h5", electrodes=electrodes)
        # every segment is read into memory here, so the temporary file may go afterwards
        data = ei.reconstruction_data(path, protocol, spatial_vocab=spatial_vocab)
    return data


def score(name: str, predict: ei.Predictor, data: ei.ReconstructionData, batch_size: int = 64,
          spatial_vocab=None) -> dict[str, Any]:
    """One table row: ``predict`` scored on the test block of ``data``."""
    t = time.perf_counter()
    res = ei.score_reconstruction(predict, data, "test", batch_size, spatial_vocab=spatial_vocab)
    return {"name": name, "r2": res["r2"], "pearson_r": res["pearson_r"],
            "median_channel_r2": float(np.nanmedian(res["r2_per_channel"])), "n_channels": res["n_channels"],
            "n_segments": res["n_segments"], "n_scored": res["n_scored"], "seconds": time.perf_counter() - t}


def run(predictors: Mapping[str, PredictorFactory] | None = None, *, data: ei.ReconstructionData | None = None,
        protocol: ei.ReconstructionProtocol = DEFAULT_PROTOCOL, baselines: bool = True, batch_size: int = 64,
        spatial_vocab=None) -> tuple[list[dict[str, Any]], ei.ReconstructionData]:
    """Rows for the baselines (unless ``baselines=False``) and each extra predictor, on one data set."""
    data = data or load(protocol=protocol, spatial_vocab=spatial_vocab or "auto")
    factories = {**(BASELINES if baselines else {}), **(predictors or {})}
    rows = [score(name, make(data), data, batch_size, spatial_vocab) for name, make in factories.items()]
    return rows, data


def format_table(rows: list[dict[str, Any]], data: ei.ReconstructionData) -> str:
    head = (f"| {'predictor':<22} | {'R2 pooled':>9} | {'r pooled':>8} | {'median ch R2':>12} | {'channels':>8} "
            f"| {'test segs':>9} | {'scored (ch, seg)':>16} |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        lines.append(f"| {r['name']:<22} | {r['r2']:9.3f} | {r['pearson_r']:8.3f} | {r['median_channel_r2']:12.3f} "
                     f"| {r['n_channels']:8d} | {r['n_segments']:9d} | {r['n_scored']:16d} |")
    lines.append("")
    lines.append("protocol: " + data.describe())
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--edf", type=Path, default=DEFAULT_EDF)
    ap.add_argument("--electrodes", type=Path, default=DEFAULT_ELECTRODES)
    ap.add_argument("--segment-s", type=float, default=DEFAULT_PROTOCOL.segment_s)
    ap.add_argument("--n-patches", type=int, default=DEFAULT_PROTOCOL.n_patches)
    ap.add_argument("--stride-s", type=float, default=None)
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_PROTOCOL.test_fraction)
    ap.add_argument("--gap-s", type=float, default=DEFAULT_PROTOCOL.gap_s)
    ap.add_argument("--line-noise", type=float, default=None, help="notch at 50 or 60 Hz (default: none)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows and protocol here")
    args = ap.parse_args(argv)
    protocol = ei.ReconstructionProtocol(segment_s=args.segment_s, n_patches=args.n_patches, stride_s=args.stride_s,
                                         test_fraction=args.test_fraction, gap_s=args.gap_s,
                                         line_noise=args.line_noise)
    t = time.perf_counter()
    data = load(args.edf, args.electrodes, protocol)
    rows, data = run(data=data)
    print(format_table(rows, data))
    print(f"({time.perf_counter() - t:.1f} s including conversion)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "protocol": data.describe()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
