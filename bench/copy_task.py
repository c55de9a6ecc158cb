"""Can Neuroformer pretraining learn population structure at the step budgets users run on CPU?

A copy task with a known answer. Every unit of a simulated session fires in bursts (``--burst-hz``
spikes/s for ``--burst-s`` seconds, bursts starting at ``--burst-rate`` per second, otherwise
silent), so a unit that fired in the last few hundred ms is very likely to fire next. A next-ID
model that reads the previous window (and the current window so far) should learn to copy.

Bar: the **copy predictor**, ``p(unit) = (n_unit + a * V * unigram(unit)) / (n + a * V)``, where
``n_unit`` counts the unit's spikes in the previous window and earlier in the current one, the
unigram is the training block's and ``a`` is chosen on the validation block. Model: the demo
Neuroformer (``configs/neuroformer/demo.yaml``: n_embd 64, 4 heads, 1 layer per stage, dropout
0.1, the same 0.1 s / 0.2 s windows and 10 ms dt as ``bench/generalisation.py``) trained from
random init on next-ID + next-dt (the pretraining loss, its weights) with pretraining's optimiser
(``neurofm.tasks.optim``: AdamW lr 1e-3, (0.9, 0.95), weight decay 0.1 on Linear weights, 5 % warm-up then
cosine to 0.1 x over ``--steps``), gradient clip 1, batch 32, a fresh within-bin order per batch
(``shuffle_within_bins``: the tokenizer's ascending order inside a 10 ms bin is a convention a
model can learn instead of the data). Scored: bits/spike over the training unigram on the test
block's current-window spikes, in one seeded within-bin order (the same for every arm and the
bar), i.e. the order-free quantity.

Arms (``--arms``), each one change from the default so that the cause of a plateau can be named:
``default``; ``dropout0`` (no dropout); ``token-std1`` (token table drawn N(0, 1) instead of the
reference N(0, 0.02)); ``no-temporal`` (the dt MLP's output layer zeroed and frozen: no temporal
embedding); ``all`` (the three together); ``width128`` (n_embd 128, 8 heads: more room for a bag of
units in one vector); ``layers2`` (2 layers per stage). This is a plain training loop on the model (no
Lightning), so the arms differ only in what they name.

    OMP_NUM_THREADS=1 python bench/copy_task.py --steps 3000 --arms default all
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WINDOW = dict(curr=0.1, prev=0.2, dt=0.01)
KEYS = ("id", "dt", "target_id", "target_dt", "mask", "id_prev", "dt_prev", "mask_prev")
ARMS = ("default", "dropout0", "token-std1", "no-temporal", "all", "width128", "layers2")


def simulate(n_units: int, duration: float, burst_rate: float, burst_hz: float, burst_s: float, seed: int):
    """Spike times (s) and unit indices, time-sorted."""
    rng = np.random.default_rng(seed)
    times, units = [], []
    for i in range(n_units):
        for start in rng.uniform(0, duration, rng.poisson(burst_rate * duration)):
            k = rng.poisson(burst_hz * burst_s)
            times.append(start + rng.uniform(0, burst_s, k))
            units.append(np.full(k, i))
    times, units = np.concatenate(times), np.concatenate(units).astype(np.int32)
    keep = times < duration
    order = np.argsort(times[keep], kind="stable")
    return times[keep][order], units[keep][order]


def write_session(path: Path, times, units, n_units: int, duration: float) -> None:
    from neurofm.data.session import SessionWriter

    with SessionWriter(path, session_id="copy-task", subject_id="copy-task", source="bench/copy_task.py") as w:
        w.add_units([f"u{i:03d}" for i in range(n_units)])
        w.add_spikes(times, units, t_start=0.0, t_end=duration)


def tokenize(path: Path, n_units: int, duration: float):
    """Training (first 80 %), validation (next 10 %) and test (last 10 %) windows, ends every
    0.1 s (non-overlapping current windows), block sizes = the longest window + SOS/EOS."""
    from neurofm.data.session import Session
    from neurofm.data.tokenizer import SpikeTokenizer, UnitVocab

    with Session(path) as s:
        times, _ = s.spikes()
        vocab = UnitVocab.from_sessions([s])
        span = WINDOW["curr"] + WINDOW["prev"]
        ends = np.arange(span + 0.05, duration, WINDOW["curr"])
        n_curr = np.diff(np.searchsorted(times, np.stack([ends - WINDOW["curr"], ends])), axis=0).max()
        n_prev = np.diff(np.searchsorted(times, np.stack([ends - span, ends - WINDOW["curr"]])), axis=0).max()
        block = (int(n_curr) + 2, int(n_prev) + 2)
        tok = SpikeTokenizer(WINDOW["curr"], WINDOW["prev"], WINDOW["dt"], block[0], block[1], vocab)
        parts = {"train": ends < 0.8 * duration, "valid": (ends >= 0.8 * duration + span) & (ends < 0.9 * duration),
                 "test": ends >= 0.9 * duration + span}
        return {k: tok.tokenize_session(s, ends[m]) for k, m in parts.items()}, block, len(vocab)


def shuffled(arr: dict, rng: np.random.Generator) -> dict:
    """``arr`` with a random within-bin order in both windows; targets follow the inputs."""
    from neurofm.data.tokenizer import N_SPECIAL, shuffle_within_bins

    out = dict(arr)
    full = np.concatenate([arr["id"][:, :1], arr["target_id"]], axis=1)  # [SOS] spikes [EOS] PAD...
    full_dt = np.concatenate([arr["dt"][:, :1], arr["target_dt"]], axis=1)
    full = shuffle_within_bins(full, full_dt, rng)
    out["id"], out["target_id"] = full[:, :-1], full[:, 1:]
    out["id_prev"] = shuffle_within_bins(arr["id_prev"], arr["dt_prev"], rng)
    assert (out["id"][:, 0] < N_SPECIAL).all()
    return out


def unigram(arr: dict, vocab_size: int) -> np.ndarray:
    from neurofm.data.tokenizer import N_SPECIAL

    t = arr["target_id"]
    p = np.bincount(t[t >= N_SPECIAL], minlength=vocab_size).astype(np.float64) + 1.0
    p[:N_SPECIAL] = 0.0
    return p / p.sum()


def copy_bits(arr: dict, uni: np.ndarray, a: float) -> float:
    """Bits/spike over the unigram of the copy predictor with pseudo-count weight ``a``."""
    from neurofm.data.tokenizer import N_SPECIAL

    V = len(uni)
    gain, n = 0.0, 0
    for ids, tgt, prev in zip(arr["id"], arr["target_id"], arr["id_prev"]):
        cnt = np.bincount(prev[prev >= N_SPECIAL], minlength=V).astype(np.float64)
        for pos, t in enumerate(tgt):
            if ids[pos] >= N_SPECIAL:
                cnt[ids[pos]] += 1
            if t < N_SPECIAL:
                continue
            p = (cnt[t] + a * V * uni[t]) / (cnt.sum() + a * V)
            gain += np.log2(p) - np.log2(uni[t])
            n += 1
    return gain / max(n, 1)


def build_model(arm: str, block: tuple[int, int], n_units: int, seed: int):
    import torch

    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    torch.manual_seed(seed)
    drop = 0.0 if arm in ("dropout0", "all") else 0.1
    width, depth = (128, 8) if arm == "width128" else (64, 4), 2 if arm == "layers2" else 1
    cfg = NeuroformerConfig(n_units=n_units, n_embd=width[0], n_head=width[1], temporal_hidden=64, window=WINDOW,
                            block_size={"id": block[0], "prev_id": block[1]},
                            layers=dict(state=depth, prev_encoder=depth, state_history=depth, stimulus_encoder=0,
                                        stimulus=0, behavior=0, self_att=depth),
                            dropout=dict(embd=drop, attn=drop, resid=drop), contrastive={"enabled": False})
    model = Neuroformer(cfg)
    if arm in ("token-std1", "all"):
        torch.nn.init.normal_(model.tok_emb.weight, 0.0, 1.0)
    if arm in ("no-temporal", "all"):
        for emb in (model.temp_emb, model.temp_emb_prev):
            out = emb.mlp[-1]
            torch.nn.init.zeros_(out.weight)
            torch.nn.init.zeros_(out.bias)
            out.requires_grad_(False)
    return model


def train(arm: str, data: dict, block, n_units: int, uni: np.ndarray, steps: int, every: int, seed: int) -> list:
    import torch

    from neurofm.data.tokenizer import N_SPECIAL

    from neurofm.tasks.optim import adamw, param_groups, warmup_cosine_scheduler

    model = build_model(arm, block, n_units, seed)
    opt = adamw(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))  # what pretraining builds
    sched = warmup_cosine_scheduler(opt, steps)
    test = data["test_shuffled"]
    log_uni = np.log2(np.where(uni > 0, uni, 1.0))

    def score() -> float:
        model.eval()
        gain, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(test["id"]), 256):
                b = {k: torch.as_tensor(np.asarray(test[k][i:i + 256])) for k in KEYS}
                lp = torch.log_softmax(model(b)["id_logits"].float(), -1) / np.log(2)
                tid = b["target_id"][:, :lp.shape[1]]
                m = tid >= N_SPECIAL
                gain += float(lp.gather(-1, tid.clamp(min=0).unsqueeze(-1)).squeeze(-1)[m].sum())
                gain -= float(log_uni[tid[m].numpy()].sum())
                n += int(m.sum())
        model.train()
        return gain / n

    rng = np.random.default_rng(seed)
    train_arr = data["train"]
    curve, t0 = [], time.time()
    for step in range(steps + 1):
        if step % every == 0:
            curve.append((step, score(), time.time() - t0))
            print(f"  {arm}: step {step}: {curve[-1][1]:+.3f} bits/spike ({curve[-1][2]:.0f} s)", flush=True)
        if step == steps:
            break
        idx = rng.choice(len(train_arr["id"]), 32, replace=False)
        sub = shuffled({k: np.asarray(train_arr[k][idx]) for k in KEYS}, rng)
        b = {k: torch.as_tensor(sub[k]) for k in KEYS}
        loss = model.loss(b, model(b), terms=("id", "dt"))["total"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return curve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--burst-rate", type=float, default=0.2, help="bursts per unit per second")
    ap.add_argument("--burst-hz", type=float, default=20.0)
    ap.add_argument("--burst-s", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=200, help="score every this many steps")
    ap.add_argument("--arms", nargs="+", default=["default", "all"], choices=ARMS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "copy_task"))
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "session.h5"
    times, units = simulate(args.units, args.duration, args.burst_rate, args.burst_hz, args.burst_s, args.seed)
    path.unlink(missing_ok=True)
    write_session(path, times, units, args.units, args.duration)
    parts, block, V = tokenize(path, args.units, args.duration)
    uni = unigram(parts["train"], V)
    rng = np.random.default_rng(args.seed + 1)
    valid, test = shuffled(parts["valid"], rng), shuffled(parts["test"], rng)
    a = max((0.1, 0.3, 1.0, 3.0), key=lambda a: copy_bits(valid, uni, a))
    bar = copy_bits(test, uni, a)
    print(f"session: {args.units} units, {len(times) / args.duration:.0f} spikes/s, bursts {args.burst_rate:g}/s x "
          f"{args.burst_s:g} s at {args.burst_hz:g} Hz; block sizes {block}; copy predictor (a={a:g}, chosen on the "
          f"validation block): {bar:+.3f} bits/spike on the test block", flush=True)
    data = {"train": parts["train"], "test_shuffled": test}
    curves = {arm: train(arm, data, block, args.units, uni, args.steps, args.every, args.seed) for arm in args.arms}

    steps = [s for s, _, _ in curves[args.arms[0]]]
    print(f"\nbits/spike over the training unigram, test block ({len(test['id'])} windows, current-window spikes, "
          f"one seeded within-bin order); copy predictor {bar:+.3f}\n")
    print("| arm | " + " | ".join(f"step {s}" for s in steps) + " | wall s |")
    print("|---|" + "---|" * (len(steps) + 1))
    for arm, c in curves.items():
        print(f"| {arm} | " + " | ".join(f"{v:+.3f}" for _, v, _ in c) + f" | {c[-1][2]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
