"""BaRISTA speed and memory, next to the public reference code (DESIGN.md 11).

Configurations: the published encoder size (d 64, 12 layers, 4 heads, 12 patches x 512
samples = 3 s at 2048 Hz), parcel encoding with channel masking (30%), batch 8, 98 and 200
channels, synthetic z-scored data (every channel real, so no padding mask).

* **pretraining step** -- ``Barista.pretrain_loss`` forward + backward (mask choice, online
  tokenizer on observed channels, EMA target tokenizer on masked ones, backbone, predictor,
  MSE); the AdamW step and EMA update are timed separately (they are small). Tokens/s counts
  ``batch * channels * patches`` per step, the reference's convention (644 tok/s * 14.6 s =
  8 * 98 * 12).
* **latency** -- exported encoder, eval mode, no grad, one 3 s segment of 98 channels.
* **peak memory** -- each configuration runs in a fresh subprocess; peak RSS is the kernel's
  high-water mark (``VmHWM``) and the delta is that minus the RSS just before the first step
  (model and batch already built). The reference figure is a peak RSS, compared with ours.

Usage::

    python bench/barista.py            # 98 and 200 channels, a few steps each (~2-4 min, 2 cores)
    python bench/barista.py --quick    # one timed step each
    python bench/barista.py --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from neurofm.models.barista import Barista, BaristaConfig  # noqa: E402
from neurofm.tasks.optim import adamw  # noqa: E402

# DESIGN.md 11: reference code, 2-core CPU, torch 2.13.
REFERENCE = {98: {"step_s": 14.6, "tok_s": 644.0, "peak_gb": 4.6},
             200: {"step_s": 36.8, "tok_s": 522.0, "peak_gb": 9.1}}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def make_batch(batch: int, channels: int, cfg: BaristaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic BaRISTA batch: z-scored noise, every channel real, random categories."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, cfg.segment_len, generator=g)
    x = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
    return {
        "x": x,
        "channel_mask": torch.ones(batch, channels, dtype=torch.bool),
        "coords": torch.randint(0, cfg.n_coord_bins, (batch, channels, 3), generator=g),
        "parcel": torch.randint(1, cfg.n_parcels, (batch, channels), generator=g),
        "lobe": torch.randint(1, cfg.n_lobes, (batch, channels), generator=g),
    }


def run_one(channels: int, batch: int, steps: int, precision: str, latency: bool) -> dict:
    """One configuration in this process (called in a fresh subprocess by ``main``)."""
    torch.manual_seed(0)
    cfg = BaristaConfig()
    model = Barista(cfg).train()
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=1e-2)  # fused, as in training
    data = make_batch(batch, channels, cfg)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
    rss_before = _rss_kb("VmRSS")
    times, opt_times, cpu_times = [], [], []
    for i in range(steps + 1):  # first step is warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        with amp:
            out = model.pretrain_loss(data)
        out["loss"].backward()
        t1, c1 = time.perf_counter(), time.process_time()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_ema(0.99)
        t2 = time.perf_counter()
        if i > 0:
            times.append(t1 - t0)
            cpu_times.append(c1 - c0)
            opt_times.append(t2 - t1)
    peak = _rss_kb("VmHWM")
    step = sorted(times)[len(times) // 2]
    res = {"channels": channels, "batch": batch, "steps": steps, "step_s": step, "min_step_s": min(times),
           "opt_ema_s": sorted(opt_times)[len(opt_times) // 2], "cpu_s": sorted(cpu_times)[len(cpu_times) // 2],
           "threads": torch.get_num_threads(), "load": os.getloadavg()[0],
           "samples_s": batch / step, "tok_s": batch * channels * cfg.n_patches / step,
           "peak_gb": peak / 1e6 * 1.024, "peak_delta_gb": (peak - rss_before) / 1e6 * 1.024,
           "loss": float(out["loss"])}
    if latency:
        enc = model.export_encoder().eval()
        one = make_batch(1, 98, cfg, seed=1)
        lat = []
        with torch.no_grad(), amp:
            for _ in range(6):
                t0 = time.perf_counter()
                enc(one)
                lat.append(time.perf_counter() - t0)
        res["latency_ms"] = sorted(lat[1:])[len(lat[1:]) // 2] * 1e3
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one timed step per configuration")
    ap.add_argument("--channels", type=int, nargs="+", default=[98, 200])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 3, quick 1)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    ap.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = args.steps or (1 if args.quick else 3)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # subprocess: one configuration, JSON on stdout
        ch, lat = (int(v) for v in args.child.split(","))
        print(json.dumps(run_one(ch, args.batch, steps, args.precision, bool(lat))))
        return

    print(f"BaRISTA benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'PASSIVE')}, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}, "
          f"precision {args.precision}, batch {args.batch}, {steps} timed step(s) after 1 warm-up")
    results = []
    for i, ch in enumerate(args.channels):
        cmd = [sys.executable, __file__, "--child", f"{ch},{int(i == 0)}", "--batch", str(args.batch),
               "--steps", str(steps), "--precision", args.precision]
        env = dict(os.environ)
        # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning
        # thread steals the core its partner needs (several-fold slower steps under load).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"benchmark child for {ch} channels failed")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    head = (f"{'channels':>8} {'step s':>7} {'ref s':>6} {'samples/s':>9} {'tok/s':>7} {'ref tok/s':>9} "
            f"{'x ref':>6} {'peak GB':>8} {'(delta)':>8} {'ref GB':>6} {'/ ref':>6}")
    print("\npretraining forward + backward (Barista.pretrain_loss; AdamW + EMA step reported apart)")
    print(head)
    print("-" * len(head))
    for r in results:
        ref = REFERENCE.get(r["channels"])
        rs = f"{ref['step_s']:6.1f}" if ref else f"{'-':>6}"
        rt = f"{ref['tok_s']:9.0f}" if ref else f"{'-':>9}"
        xr = f"{r['tok_s'] / ref['tok_s']:5.1f}x" if ref else f"{'-':>6}"
        rg = f"{ref['peak_gb']:6.1f}" if ref else f"{'-':>6}"
        gr = f"{r['peak_gb'] / ref['peak_gb']:6.2f}" if ref else f"{'-':>6}"
        print(f"{r['channels']:8d} {r['step_s']:7.2f} {rs} {r['samples_s']:9.2f} {r['tok_s']:7.0f} {rt} {xr} "
              f"{r['peak_gb']:8.2f} {r['peak_delta_gb']:8.2f} {rg} {gr}")
    print("targets: >= 3x reference tokens/s, <= 1/3 reference peak memory (peak = process VmHWM; delta = "
          "VmHWM minus RSS before the first step)")
    for r in results:
        print(f"  {r['channels']} ch: fastest step {r['min_step_s']:.2f} s; process CPU time {r['cpu_s']:.2f} s/step "
              f"over {r['threads']} thread(s) (load average {r['load']:.1f} at the end: the machine is shared); "
              f"AdamW + EMA update {r['opt_ema_s'] * 1e3:.0f} ms/step")
    lat = [r for r in results if "latency_ms" in r]
    if lat:
        print(f"forward latency, exported encoder, one 3 s segment x 98 channels (eval, no grad): "
              f"{lat[0]['latency_ms']:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
