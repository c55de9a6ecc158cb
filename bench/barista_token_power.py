"""Where BaRISTA's tokenizer loses a patch's band power: read-outs stage by stage, per patch.

For the held-out subject of ``bench/barista_quality.py --only subjects`` (its cached
pretraining runs), every (segment, channel, patch) of the recipe's own grip-force data module
(training block fits, test block scores) is one sample. Targets: the patch's own log band
power (:func:`neurofm.baselines.band_power`, high gamma and beta, on the z-scored input the
model sees) and its log RMS. Features, each read out by ridge (:class:`neurofm.baselines.Ridge`),
test R2:

* ``input``: the patch's L samples themselves (a linear read-out of a waveform cannot see its
  power: the floor);
* ``block k``: the output of CNN block k (``C_k x L`` values);
* ``block k energy``: the log mean square over time of each of block k's output maps (a
  rectified read-out: what a power detector downstream could use);
* ``LN scales``: the log standard deviation each of the tokenizer's parameter-free LayerNorms
  removes (one per convolution output map: 42 at widths 1-5-5-5-5-1), plus the patch's log RMS;
* ``token``: the tokenizer's output (Linear(L -> d)); ``encoder``: the contextual token.

For the pretrained encoder and a random one of the same shape, and (``--fs``) for an
untrained tokenizer on a fresh simulation at another sampling rate. ``--pretraining-check``
runs only the check every pretraining report now carries
(:func:`neurofm.recipes.barista.token_power_check`) on the cached runs.

Measured (2026-12-03 12:44-12:49, shared 2-core CPU at load ~7-11, one thread; the cached
1,520-step parcel pretraining runs of seeds 0, 1, 2, quick sizes; 3,000 training and 3,000 test
(segment, channel, patch) samples of the held-out subject, 256 Hz, 64-sample patches of 0.5 s
segments z-scored per channel); test R2, range over the 3 seeds:

| read-out from              | HG, pretrained | beta, pretrained | log RMS, pretrained | HG, random | beta, random | log RMS, random |
|----------------------------|-----------|-----------|-----------|-----------|-----------|-----------|
| input samples (linear)     | -0.01-0.00 | -0.01-0.00 | 0.00      | -0.01-0.00 | -0.01-0.00 | 0.00 |
| block 0 output             | 0.47-0.63 | -0.02-0.05 | 0.64-0.75 | 0.50-0.61 | -0.03-0.05 | 0.46-0.69 |
| block 1 output             | 0.08-0.37 | -0.01-0.20 | 0.33-0.46 | 0.21-0.33 | 0.00-0.22 | 0.32-0.41 |
| block 2 output             | 0.00-0.26 | 0.00-0.08 | 0.14-0.27 | 0.02-0.16 | 0.01-0.05 | 0.15-0.27 |
| block 3 output             | 0.00-0.21 | 0.02-0.08 | 0.05-0.16 | 0.01-0.12 | 0.01-0.06 | 0.00-0.07 |
| block 4 output             | 0.00-0.14 | 0.03-0.07 | -0.02-0.03 | 0.00-0.03 | 0.00      | 0.00 |
| token (tokenizer output)   | 0.00-0.14 | 0.01-0.07 | -0.03-0.04 | -0.01-0.03 | -0.01-0.00 | 0.00 |
| contextual token (encoder) | 0.10-0.21 | 0.34-0.41 | -0.02-0.03 | 0.03-0.08 | 0.10-0.24 | 0.00 |
| the patch's log RMS alone  | 0.00-0.01 | 0.02-0.10 | 1.00      | 0.00-0.01 | 0.02-0.10 | 1.00 |
| the 42 log scales the LayerNorms remove | 0.76-0.86 | 0.66-0.72 | 0.88-0.90 | 0.82-0.87 | 0.61-0.64 | 0.88-0.90 |

Untrained tokenizer on a fresh two-subject simulation (120 s, no mains), 0.25 s patches, 3,000
samples per half: at 256 Hz (64 samples) token HG -0.01, LN scales 0.82 (beta 0.60); at 2048 Hz
(512 samples, the paper's patch) token HG -0.00, LN scales 0.75 (beta 0.34).

Reading: a patch's band power is in what the tokenizer's parameter-free LayerNorms remove (R2
0.76-0.87 for high gamma), not in the patch's overall amplitude (its log RMS: <= 0.01; the
input is z-scored per segment, so a 2-patch segment's patches have RMS ~1), and not in what
the tokenizer passes on: each block's LayerNorm sets every map to unit variance inside the
patch, the only term that scales with the patch is the residual skip (block 0's 1x1 projector
``w x + b``; identity in blocks 1-3), and each further block adds a fresh unit-variance branch
that dilutes it (the log RMS read-out falls 0.7 -> 0.4 -> 0.2 -> 0.1 -> 0.0 block by block), so
the token keeps R2 <= 0.14. The same holds at 2048 Hz with 512-sample patches: the sampling
rate is not the cause. A patch-amplitude embedding (log RMS before the LayerNorms) would not
help here either; the LayerNorms' own scales would (``model.token_scales``).

What the simulation's targets are made of (``neurofm.data.synthetic.simulate_ieeg``): a speech
event adds an evoked waveform (an ERP, 1.2x, phase-locked) and a high-gamma burst (0.4x) to
the responsive regions, so events have a waveform a linear read-out of tokens can use; the grip
force is ONLY a high-gamma amplitude modulation (an OU latent, softplus, times a 70-128 Hz
carrier of random phase in the behaviour regions): no evoked or slow component, no beta change.
Recorded motor cortex during gripping also shows a movement-related low-frequency potential
that tracks force, and beta/mu desynchronisation; neither is simulated, so here the force is
reachable only through band power, the one thing the faithful tokenizer drops.

The report's check on the 9 cached pretraining runs (``--pretraining-check``, segment level,
pretraining subjects, ~128 + ~128 segments spread through each block; 2026-12-03 13:13-13:18):
high gamma 0.18 / 0.31 / 0.03 (coords / parcel / lobe, seed 0), 0.06 / 0.24 / 0.08 (seed 1),
0.22 / 0.17 / 0.09 (seed 2), random init 0.01-0.15: under 0.5 everywhere, so each of those runs
would now carry the LIMITATION line; beta 0.27-0.53 (random init 0.00-0.38).

With ``model.token_scales`` at its first, random (fan-in) init of the scales' projection
(commit fd894a2; it now starts at zero, so a random-init encoder's tokens are the faithful
ones), seed 0, parcel, pretrained 1,520 steps as the cached runs (``--runs /tmp/hg/ts``):
token HG 0.54 pretrained / 0.59 random init (faithful 0.14 / 0.03), contextual token 0.23 /
0.43 (faithful 0.18 / 0.03); beta token 0.29 / 0.18, contextual 0.31 / 0.29. The check of the pretraining report (segment level, on the pretraining subjects): HG 0.32
pretrained / 0.52 random init, beta 0.35 / 0.36 (faithful seed 0 parcel: 0.31 / 0.12, 0.53 /
0.37). Decoding with it: ``bench/barista_quality.py`` (its ``model.token_scales`` table).

Usage::

    OMP_NUM_THREADS=1 python bench/barista_token_power.py --seeds 0 1 2 --fs 256 2048 --json tp.json  # ~5 min
    OMP_NUM_THREADS=1 python bench/barista_token_power.py --pretraining-check --seeds 0 1 2 \
        --scales coords parcel lobe   # the report's check on the 9 cached runs
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from neurofm.baselines import BandPowerRidge, Ridge, band_power  # noqa: E402
from neurofm.config import from_dict  # noqa: E402
from neurofm.hub import load_pretrained  # noqa: E402
from neurofm.metrics import r2_score  # noqa: E402
from neurofm.models.barista import BaristaConfig, BaristaEncoder  # noqa: E402
from neurofm.nn.norms import time_layer_norm  # noqa: E402
from neurofm.recipes import barista as recipe  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from barista_quality import _subjects_data, _subject_size  # noqa: E402


@torch.no_grad()
def stages(tokenizer, patches: torch.Tensor) -> dict[str, np.ndarray]:
    """Every stage of the CNN tokenizer for ``patches`` (P, L), the plain-PyTorch path of
    :class:`~neurofm.models.barista.ResidualBlock` written out to keep what each LayerNorm removes."""
    out, scales = {}, []
    h = patches[:, None]
    for k, block in enumerate(tokenizer.blocks):
        a = block.conv1(h)
        scales.append(a.std(-1))
        g = F.gelu(time_layer_norm(a, block.eps))
        b = block.conv2(g)
        scales.append(b.std(-1))
        h = F.gelu(time_layer_norm(b, block.eps) + (h if block.proj is None else block.proj(h)))
        out[f"block {k}"] = h.reshape(len(h), -1).numpy()
        out[f"block {k} energy"] = np.log(h.pow(2).mean(-1) + 1e-12).numpy()
    rms = patches.pow(2).mean(-1, keepdim=True).sqrt()
    out["LN scales"] = torch.log(torch.cat(scales + [rms], 1) + 1e-12).numpy()
    out["token"] = tokenizer(patches).numpy()  # the tokenizer's own forward (with token_scales: + the scales' term)
    return out


def collect(loader, encoder, fs: float, limit: int) -> tuple[dict, np.ndarray, list[str]]:
    """Features per stage and targets (log HG power, log beta power, log RMS) for up to
    ``limit`` real (segment, channel, patch) samples of ``loader``."""
    bands = {k: v for k, v in BandPowerRidge(fs).bands.items() if k in ("beta", "high_gamma")}
    feats: dict[str, list] = {}
    ys, n = [], 0
    for batch in loader:
        x, m = batch["x"], batch["channel_mask"].bool()
        B, C, T = x.shape
        L = encoder.config.patch_len
        with torch.no_grad():
            enc = encoder(batch)  # (B, n, C, d)
        p = x.view(B, C, -1, L)
        sel = m[:, :, None].expand(B, C, p.shape[2])
        patches = p[sel]  # (P, L) in (b, c, n) order
        enc_tok = enc.permute(0, 2, 1, 3)[sel]  # (P, d)
        st = stages(encoder.tokenizer, patches)
        _add_parts(st, patches)
        st["encoder"] = enc_tok.numpy()
        for key, v in st.items():
            feats.setdefault(key, []).append(v)
        bp = band_power(patches.numpy(), fs, bands)  # (P, 2) log10
        rms = np.log10(patches.pow(2).mean(-1).sqrt().numpy() + 1e-12)
        ys.append(np.column_stack([bp, rms]))
        n += len(patches)
        if n >= limit:
            break
    names = [f"log {b} power" for b in bands] + ["log RMS"]
    return {k: np.concatenate(v)[:limit] for k, v in feats.items()}, np.concatenate(ys)[:limit], names


def readouts(train, test, names: list[str]) -> dict[str, dict[str, float]]:
    (Ftr, Ytr), (Fte, Yte) = train, test
    return {stage: {name: float(r2_score(Yte[:, i], Ridge().fit(Ftr[stage], Ytr[:, i]).predict(Fte[stage])))
                    for i, name in enumerate(names)} for stage in Ftr}


def held_out(runs: str, seed: int, scale: str, limit: int) -> dict:
    folder = Path(runs.format(seed=seed))
    n_pre = _subject_size("n_pretrain_subjects", True)
    pre_s, held_s = _subject_size("pretrain_s", True), _subject_size("heldout_s", True)
    held = sorted((folder / f"subjects_seed{seed}_{n_pre}x{pre_s:.0f}s_{held_s:.0f}s").glob("sub-*.h5"))[-1]
    pretrained = folder / f"subj{seed}-pretrain-{scale}" / "pretrained"
    tree = {"family": "barista", "seed": seed, "resume": "none", "run_dir": f"/tmp/unused-{seed}-{scale}",
            "data": {**_subjects_data([str(held)], _subject_size("segment", True)), "target": "grip_force"},
            "task": {"mode": "finetune", "finetune_task": "regression", "pretrained": str(pretrained)}}
    cfg = recipe.prepare(from_dict(recipe.RunConfig, tree, where="barista_token_power"))
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    dm.setup("test")
    loaded = load_pretrained(str(pretrained))
    enc = getattr(loaded, "encoder", loaded).eval()
    torch.manual_seed(cfg.seed)
    out = {}
    for name, e in (("pretrained", enc), ("random init", BaristaEncoder(enc.config).eval())):
        tr = collect(dm.loader("train"), e, cfg.model.sampling_rate, limit)
        te = collect(dm.loader("test"), e, cfg.model.sampling_rate, limit)
        out[name] = readouts(tr[:2], te[:2], tr[2])
        out[name]["n"] = {"train": len(tr[1]), "test": len(te[1])}
    return out


def untrained_at(fs: float, patch_s: float, seconds: float, limit: int, seed: int = 0) -> dict:
    """An untrained tokenizer (``patch_s`` patches at ``fs``) on a fresh two-subject simulation
    (:func:`~neurofm.data.synthetic.simulate_ieeg_subjects`, no mains): the last subject's
    continuous data cut into segments of 2 patches, z-scored per channel per segment as the
    recipe does; first half of the recording fits, second half scores."""
    import h5py

    from neurofm.data.synthetic import simulate_ieeg_subjects

    folder = Path(f"/tmp/hg/sim_{fs:g}Hz_{seconds:g}s_seed{seed}")
    paths = sorted(folder.glob("sub-*.h5")) or simulate_ieeg_subjects(
        folder, 2, duration=seconds, sampling_rate=fs, seed=seed, line_noise=None)
    with h5py.File(paths[-1], "r") as f:
        data = np.asarray(f["continuous/data"], dtype=np.float32)  # (T, C)
    L = int(round(patch_s * fs))
    n_seg = data.shape[0] // (2 * L)
    seg = data[: n_seg * 2 * L].reshape(n_seg, 2 * L, -1).transpose(0, 2, 1)  # (S, C, 2L)
    seg = (seg - seg.mean(-1, keepdims=True)) / (seg.std(-1, keepdims=True) + 1e-8)
    torch.manual_seed(seed)
    enc = BaristaEncoder(BaristaConfig(patch_len=L, n_patches=2, n_layers=1, sampling_rate=fs)).eval()
    bands = {k: v for k, v in BandPowerRidge(fs).bands.items() if k in ("beta", "high_gamma")}
    out = {}
    for split, part in (("train", seg[: n_seg // 2]), ("test", seg[n_seg // 2:])):
        patches = torch.from_numpy(np.ascontiguousarray(part.reshape(-1, L)))
        idx = np.random.default_rng(seed).permutation(len(patches))[:limit]
        patches = patches[np.sort(idx)]
        st = stages(enc.tokenizer, patches)
        y = np.column_stack([band_power(patches.numpy(), fs, bands),
                             np.log10(patches.pow(2).mean(-1).sqrt().numpy() + 1e-12)])
        out[split] = (_add_parts(st, patches), y)
    names = [f"log {b} power" for b in bands] + ["log RMS"]
    return readouts(out["train"], out["test"], names)


def _add_parts(st: dict, patches: torch.Tensor) -> dict:
    """The LN scales without the patch RMS, and the patch RMS alone."""
    st["LN scales without RMS"] = st["LN scales"][:, :-1]
    st["patch log RMS only"] = st["LN scales"][:, -1:]
    st["input"] = patches.numpy()
    return st


def pretraining_check(runs: str, seed: int, scale: str, name: str = "subj{seed}-pretrain-{scale}") -> dict:
    """The pretraining report's check (:func:`neurofm.recipes.barista.token_power_check`) on a
    cached pretraining run of ``barista_quality.py --only subjects --quick``: its pretrained
    encoder and a random one, on the pretraining subjects' training / test blocks."""
    folder = Path(runs.format(seed=seed))
    n_pre = _subject_size("n_pretrain_subjects", True)
    pre_s, held_s = _subject_size("pretrain_s", True), _subject_size("heldout_s", True)
    sessions = sorted((folder / f"subjects_seed{seed}_{n_pre}x{pre_s:.0f}s_{held_s:.0f}s").glob("sub-*.h5"))[:-1]
    run = folder / name.format(seed=seed, scale=scale)
    loaded = load_pretrained(str(run / "pretrained"))
    enc = getattr(loaded, "encoder", loaded).eval()
    tree = {"family": "barista", "seed": seed, "resume": "none", "run_dir": f"/tmp/unused-pre-{seed}-{scale}",
            "data": _subjects_data([str(p) for p in sessions], _subject_size("segment", True), batch_size=8),
            "model": {**enc.config.to_dict(), "spatial_vocab": None, "preprocessing": None},
            "task": {"mode": "pretrain"}}
    cfg = recipe.prepare(from_dict(recipe.RunConfig, tree, where="barista_token_power"))
    dm = recipe.datamodule(cfg)
    dm.setup("fit")
    dm.setup("test")
    torch.manual_seed(seed)
    return recipe.token_power_check({"pretrained": enc, "random init": BaristaEncoder(enc.config)}, dm,
                                    cfg.model.sampling_rate)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="/tmp/bpre/bq/s{seed}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--scales", nargs="+", default=["parcel"])
    ap.add_argument("--limit", type=int, default=3000, help="(segment, channel, patch) samples per split")
    ap.add_argument("--fs", type=float, nargs="*", default=[],
                    help="also: an untrained tokenizer on a fresh simulation at these rates (0.25 s patches)")
    ap.add_argument("--pretraining-check", action="store_true",
                    help="only: the pretraining report's token -> own band power check on the cached runs")
    ap.add_argument("--run-name", default="subj{seed}-pretrain-{scale}")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    result = {}
    if args.pretraining_check:
        for seed in args.seeds:
            for scale in args.scales:
                r = result[f"{seed}/{scale}"] = pretraining_check(args.runs, seed, scale, args.run_name)
                print(f"seed {seed} {scale:<6} " + "  ".join(f"{arm}: " + ", ".join(f"{b} {v:+.3f}" for b, v in
                                                                                     bands.items())
                                                          for arm, bands in r.items()), flush=True)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return result
    for seed in args.seeds:
        for scale in args.scales:
            r = held_out(args.runs, seed, scale, args.limit)
            result[f"{seed}/{scale}"] = r
            for arm, rows in r.items():
                for stage, v in rows.items():
                    if stage != "n":
                        print(f"seed {seed} {scale:<6} {arm:<11} {stage:<16} "
                              + "  ".join(f"{k} {x:+.3f}" for k, x in v.items()), flush=True)
    for fs in args.fs:
        r = untrained_at(fs, 0.25, 120.0, args.limit)
        result[f"untrained/{fs:g} Hz"] = r
        for stage, v in r.items():
            print(f"untrained {fs:g} Hz, 0.25 s patches  {stage:<22} "
                  + "  ".join(f"{k} {x:+.3f}" for k, x in v.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
