"""Data-path speed and memory: spike tokenization, iEEG segmentation, streaming reads, peak RSS.

What is measured (one process, numbers printed as a table):

* **tokenization** -- a simulated session of 1,000 units x 1 h at ~5 Hz (Poisson, written with
  ``SessionWriter``), read into memory, then every 50 ms window (previous window 50 ms, dt
  10 ms, block 300 / 300) turned into model-ready padded batches of 1,024 windows (torch
  tensors). Throughput = recording spikes / s (each spike is tokenized twice: once in its
  current window, once as some window's previous window). Target >= 2 M spikes/s.
* **segmentation** -- 100 channels x 60 s at 2,048 Hz cut into 3 s / 12-patch segments,
  z-scored (default settings, then with a 60 Hz notch + Laplacian): input samples / s.
* **streaming** -- the session file read block by block in shuffled order through the
  streaming dataset's read path (``Session.spikes`` per block, as a shard of an epoch), over
  reading the raw HDF5 datasets sequentially in chunk-sized slices (h5py): ratio, target
  >= 0.5. The full pipeline (read + tokenize + shuffle buffer + batches) is shown next to it.
* **peak RSS** -- a fresh subprocess per file size streams one whole epoch of batches
  from a 1/4-length and a full-length session file (file several times the working set);
  peak RSS minus RSS before iterating should not grow with the file.

Usage::

    python bench/data.py            # 1 h session, about 2-3 min on 2 cores
    python bench/data.py --quick    # 12 min session, about 30 s
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neurofm.data.datasets import StreamingSpikeDataset  # noqa: E402
from neurofm.data.samplers import stream_pieces  # noqa: E402
from neurofm.data.segmenter import IEEGSegmenter  # noqa: E402
from neurofm.data.session import Channels, Session, SessionWriter  # noqa: E402
from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab  # noqa: E402

TOKENIZER = dict(window_curr=0.05, window_prev=0.05, dt=0.01, block_size=300, block_size_prev=300)


def simulate_session(path: Path, n_units: int, duration_s: float, rate_hz: float, seed: int = 0) -> int:
    """Homogeneous Poisson spikes (each unit ``rate_hz``) written as a session file; returns the spike count."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(n_units * rate_hz * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, n))
    units = rng.integers(0, n_units, n).astype(np.int32)
    with SessionWriter(path, session_id=path.stem, source="bench/data.py simulation") as w:
        w.add_units([f"u{i}" for i in range(n_units)])
        w.add_spikes(times, units, t_start=0.0, t_end=duration_s)
    return n


def _rss_mb() -> float:
    """Peak RSS (MB) since the last :func:`_reset_peak` (Linux VmHWM), else since start."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except OSError:
        return _rss_mb()


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark so imports do not hide the streaming peak (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _tokenizer(session: Session) -> SpikeTokenizer:
    return SpikeTokenizer(vocab=UnitVocab.from_sessions([session]), **TOKENIZER)


def bench_tokenize(path: Path, batch_windows: int = 1024) -> dict:
    import torch

    s = Session(path)
    tk = _tokenizer(s)
    times, unit_index = s.spikes()
    tokens = tk.vocab.encode(s.session_id, unit_index)
    ends = np.round(np.arange(tk.span_before, s.t_end + 1e-9, tk.window_curr), 9)
    t0 = time.perf_counter()
    n_tokens = 0
    for i in range(0, len(ends), batch_windows):
        e = ends[i:i + batch_windows]
        a, b = np.searchsorted(times, [e[0] - tk.span_before - 1e-6, e[-1]])
        out = tk.tokenize(times[a:b], tokens[a:b], e)
        batch = {k: torch.from_numpy(v) for k, v in out.items()}  # model-ready: zero-copy tensors
        n_tokens += int(batch["mask"].count_nonzero() + batch["mask_prev"].count_nonzero())
    dt = time.perf_counter() - t0
    spikes = int(np.searchsorted(times, ends[-1]) - np.searchsorted(times, ends[0] - tk.window_curr))
    return {"spikes_per_s": spikes / dt, "tokens_per_s": n_tokens / dt, "windows_per_s": len(ends) / dt,
            "seconds": dt, "spikes": spikes}


def bench_segment(seconds: float = 60.0, channels: int = 100, rate: float = 2048.0) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(int(seconds * rate), channels)).astype(np.float32)
    ch = Channels(names=[f"SH{i // 10}-{i % 10 + 1}" for i in range(channels)], xyz=np.zeros((channels, 3)),
                  regions={}, bad=np.zeros(channels, bool), coordinate_space="unknown")
    out = {}
    for name, kw in (("default", {}), ("notch60+laplacian", dict(line_noise=60, laplacian=True))):
        seg = IEEGSegmenter(**kw)
        seg(x[: int(3 * rate)], rate, ch)  # warm-up
        t0 = time.perf_counter()
        res = seg(x, rate, ch)
        out[name] = x.size / (time.perf_counter() - t0)
        assert res.x.shape[-1] == 6144
    return out


def bench_stream(path: Path) -> dict:
    import h5py

    s = Session(path)
    n = s.n_spikes
    # raw: the two HDF5 datasets read front to back in chunk-sized slices (the ceiling)
    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        times, units = f["spikes/times"], f["spikes/unit_index"]
        step = times.chunks[0] if times.chunks else 1 << 16
        for i in range(0, times.shape[0], step):
            times[i:i + step], units[i:i + step]
    raw = n / (time.perf_counter() - t0)
    # streaming read path: one epoch's shuffled blocks, one Session.spikes call per block
    tk = _tokenizer(s)
    ds = StreamingSpikeDataset([s], tk, None, batch_size=64, seed=0, rank=0, world_size=1)
    blocks, pieces = stream_pieces(ds.index, seed=0, epoch=0, shuffle=True, rank=0, world_size=1, worker=0,
                                   n_workers=1, block=ds.block_windows, even_ranks=True)
    t0 = time.perf_counter()
    for r, j0, j1 in pieces:
        e = blocks.anchors(r, j0, j1)
        s.spikes(float(e[0]) - tk.span_before, float(e[-1]))
    read = n / (time.perf_counter() - t0)
    # full pipeline: read + tokenize + shuffle buffer + collated torch batches
    t0 = time.perf_counter()
    n_windows = sum(len(b["interval"]) for b in ds)
    full = n / (time.perf_counter() - t0)
    return {"raw_spikes_per_s": raw, "read_spikes_per_s": read, "pipeline_spikes_per_s": full,
            "block_windows": ds.block_windows, "windows": n_windows}


RSS_BLOCK = 256  # windows per read in the RSS runs: both file sizes hold many blocks


def rss_child(path: str) -> None:
    """Runs in a fresh interpreter: stream one epoch and report peak RSS (printed as JSON)."""
    importlib.import_module("torch")  # imported before the baseline, as in training

    s = Session(path)
    ds = StreamingSpikeDataset([s], _tokenizer(s), None, batch_size=64, seed=0, rank=0, world_size=1,
                               block_windows=RSS_BLOCK)
    base = _current_rss_mb()
    if not _reset_peak():
        print("warning: cannot reset the peak-RSS mark; the peak may include imports", file=sys.stderr)
    n = 0
    for b in ds:
        n += len(b["interval"])
    print(json.dumps({"base_mb": base, "peak_mb": _rss_mb(), "windows": n, "file_mb": os.path.getsize(path) / 2 ** 20,
                      "block_windows": ds.block_windows, "shuffle_buffer": ds.shuffle_buffer}))


def bench_rss(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        res = subprocess.run([sys.executable, __file__, "--rss-child", str(p)], capture_output=True, text=True,
                             check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="12-minute session instead of 1 hour (~30 s in all)")
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=5.0, help="Hz per unit")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--dir", default=None, help="where to write the simulated sessions (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    minutes = args.minutes or (12.0 if args.quick else 60.0)
    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    d = Path(tmp.name)
    t0 = time.perf_counter()
    big, small = d / "sim_full.h5", d / "sim_quarter.h5"
    n_big = simulate_session(big, args.units, minutes * 60, args.rate, seed=0)
    simulate_session(small, args.units, minutes * 15, args.rate, seed=1)
    t_write = time.perf_counter() - t0

    tok = bench_tokenize(big)
    seg = bench_segment(20.0 if args.quick else 60.0)
    stream = bench_stream(big)
    rss = bench_rss([small, big])

    rows = [
        ("session", f"{args.units} units x {minutes:g} min, {n_big / 1e6:.1f} M spikes "
                    f"({os.path.getsize(big) / 2**20:.0f} MB file, written in {t_write:.1f} s)", ""),
        ("tokenization (50/50 ms, dt 10 ms, block 300/300, batches of 1,024)",
         f"{tok['spikes_per_s'] / 1e6:.2f} M spikes/s", ">= 2 M spikes/s " + ("PASS" if tok["spikes_per_s"] >= 2e6 else "FAIL")),
        ("  same, model tokens out (current + previous)", f"{tok['tokens_per_s'] / 1e6:.2f} M tokens/s",
         f"{tok['windows_per_s']:,.0f} windows/s"),
        ("iEEG segmentation, 100 ch @ 2,048 Hz, 3 s / 12 patches", f"{seg['default'] / 1e6:.1f} M samples/s", ""),
        ("  with 60 Hz notch (+harmonics) + Laplacian", f"{seg['notch60+laplacian'] / 1e6:.1f} M samples/s", ""),
        ("raw HDF5 sequential read (h5py, chunk slices)", f"{stream['raw_spikes_per_s'] / 1e6:.2f} M spikes/s", ""),
        (f"streaming read, shuffled blocks of {stream['block_windows']} windows",
         f"{stream['read_spikes_per_s'] / 1e6:.2f} M spikes/s",
         f"ratio {stream['read_spikes_per_s'] / stream['raw_spikes_per_s']:.2f} (>= 0.5 "
         + ("PASS)" if stream["read_spikes_per_s"] >= 0.5 * stream["raw_spikes_per_s"] else "FAIL)")),
        ("streaming pipeline (read + tokenize + batches of 64)", f"{stream['pipeline_spikes_per_s'] / 1e6:.2f} M spikes/s",
         f"ratio {stream['pipeline_spikes_per_s'] / stream['raw_spikes_per_s']:.2f} (bounded by tokenization)"),
    ]
    for label, r in zip(("1/4-length file", "full-length file"), rss):
        rows.append((f"peak RSS streaming {label} ({r['file_mb']:.0f} MB, {r['windows']:,} windows, "
                     f"blocks of {r['block_windows']}, buffer {r['shuffle_buffer']})",
                     f"{r['peak_mb']:.0f} MB", f"+{r['peak_mb'] - r['base_mb']:.0f} MB over {r['base_mb']:.0f} MB before"))
    growth = (rss[1]["peak_mb"] - rss[1]["base_mb"]) - (rss[0]["peak_mb"] - rss[0]["base_mb"])
    ratio = rss[1]["file_mb"] / max(rss[0]["file_mb"], 1e-9)
    rows.append(("  working-set growth for a {:.1f}x larger file".format(ratio), f"{growth:+.0f} MB",
                 "independent of file size (< 16 MB) " + ("PASS" if growth < 16 else "FAIL")))
    w = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    print(f"{'neurofm data path (bench/data.py' + (' --quick' if args.quick else '') + ')':<{w}}  {'result':<{w2}}  target / note")
    print("-" * (w + w2 + 40))
    for label, value, note in rows:
        print(f"{label:<{w}}  {value:<{w2}}  {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"tokenize": tok, "segment": seg, "stream": stream, "rss": rss}, indent=2))
    tmp.cleanup()


if __name__ == "__main__":
    main()
