"""How much of a pretrained Neuroformer's next-ID gain is the tokenizer's within-bin order? (issue 10)

The tokenizer orders the spikes of one dt bin by ascending unit index. A model trained on those
sequences can lower its next-ID loss by learning that sort ("after unit 40 in this bin only units
> 40 can follow"), which says nothing about the neural state. ``data.shuffle_within_bin`` trains on
a fresh random order per draw instead. This script scores a pretrained model on the test block of
its own pretraining split (the run's config.yaml: same windows as its metrics.json) three ways,
each in bits per spike over the unigram (firing-rate) null fitted on the training windows, current
window spikes only (the ``id_bits_per_spike`` of metrics.json):

* ``canonical``: the tokenizer's order (what metrics.json reports);
* ``shuffled``: the spikes of each bin in a random order (``--draws`` seeded draws, mean);
* ``order-free``: a lower bound on the log-probability of the WINDOW'S SPIKES PER BIN AS A
  MULTISET, the only quantity on which a sorted and a shuffled model can be compared. For one
  window with orderings ``N = prod_b n_b! / prod_(b,u) m_bu!`` (``n_b`` spikes in bin ``b``,
  ``m_bu`` of them from unit ``u``): ``p(multiset) = sum over orders p(order) >= p(canonical)``
  and ``>= N * exp(mean over random orders of log p(order))`` (Jensen); the larger of the two
  per window. The null (order-blind) gets ``log N + sum log p(u)``, so a model that only knows
  the order gains nothing here. ``order info`` = ``log2 N`` per spike: the most any model can
  gain from knowing the order.

    OMP_NUM_THREADS=1 nice -n 10 python bench/order_bits.py RUN_DIR [--sessions FILE] [--draws 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def window_logp(model, batch) -> np.ndarray:
    """(B,) sum over each window's spike targets of the model's log p(next ID) (natural log)."""
    import torch

    from neurofm.tokens import N_SPECIAL

    with torch.no_grad():
        out = model(batch)
    n = out["id_logits"].shape[1]
    tid = batch["target_id"][:, :n]
    logp = torch.log_softmax(out["id_logits"][..., N_SPECIAL:].float(), -1)
    lp = logp.gather(-1, (tid - N_SPECIAL).clamp(min=0)[..., None])[..., 0]
    return (lp * (tid >= N_SPECIAL)).sum(1).double().numpy()


def run_config(run_dir: Path, sessions: list[str] | None):
    """A pretraining run's config (its config.yaml), with other session files and the canonical order."""
    from neurofm.experiment import load_config

    overrides = ["data.shuffle_within_bin=false"] + ([f"data.sessions=[{','.join(sessions)}]"] if sessions else [])
    raw = (run_dir / "config.yaml").read_text()
    cfg_path = run_dir / "config.yaml"
    if "head_only_fraction" in raw:  # a field older runs wrote and the config no longer has (unused in pretraining)
        cfg_path = Path("/tmp") / f"order_bits-{run_dir.parent.name}-config.yaml"
        cfg_path.write_text("".join(l for l in raw.splitlines(True) if "head_only_fraction" not in l))
    cfg = load_config(cfg_path, overrides)
    return cfg


def order_bits(run_dir: Path, sessions: list[str] | None, draws: int, glm: bool = False) -> dict:
    import torch

    from neurofm.data.datasets import WithinBinShuffle
    from neurofm.hub import load_pretrained
    from neurofm.recipes import neuroformer as recipe
    from neurofm.data.tokenizer import log_orderings
    from neurofm.tokens import N_SPECIAL

    cfg = run_config(run_dir, sessions)
    model = load_pretrained(run_dir / "pretrained").eval()
    dm = recipe.datamodule(cfg)
    if dm.vocab.units[:model.config.n_units] != list(model.config.units):
        raise ValueError(f"{run_dir}: the session's unit vocabulary is not the model's")
    dm.setup("fit")
    dm.setup("test")
    n_units = model.config.n_units
    counts = np.zeros(n_units)
    for b in recipe._train_windows_loader(dm):
        t = b["target_id"][b["target_id"] >= N_SPECIAL] - N_SPECIAL
        counts += np.bincount(t.numpy(), minlength=n_units)
    logp_unigram = np.log((counts + 0.5) / (counts + 0.5).sum())
    canon, shuf, log_n, null, n_spk = [], [], [], [], []
    torch.manual_seed(0)
    for i, b in enumerate(dm.loader("test")):
        tid, tdt = b["target_id"].numpy(), b["target_dt"].numpy()
        spike = tid >= N_SPECIAL
        canon.append(window_logp(model, b))
        shuf.append(np.stack([window_logp(model, WithinBinShuffle(k)(b, 0, i)) for k in range(draws)], 1))
        log_n.append(log_orderings(tid, tdt))
        null.append(np.where(spike, logp_unigram[np.clip(tid - N_SPECIAL, 0, n_units - 1)], 0.0).sum(1))
        n_spk.append(spike.sum(1))
    canon, shuf, log_n = np.concatenate(canon), np.concatenate(shuf), np.concatenate(log_n)
    null, n = np.concatenate(null), float(np.concatenate(n_spk).sum())
    per = lambda x: float(x.sum() / (n * math.log(2)))  # noqa: E731 - nats summed -> bits per spike
    free = np.maximum(canon, log_n + shuf.mean(1))
    glm = history_glm_bits(dm, n_units) if glm else None
    return {"run": str(run_dir), "history_glm": glm, "n_test_spikes": int(n), "n_test_windows": len(canon), "draws": draws,
            "canonical": per(canon - null), "shuffled": per(shuf.mean(1) - null),
            "shuffled_per_draw": [per(shuf[:, k] - null) for k in range(draws)],
            "order-free": per(free - (log_n + null)), "order info": per(log_n),
            "order-free from canonical": per(canon - log_n - null), "order-free from shuffled": per(shuf.mean(1) - null)}


def _history_samples(loader, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, unit) per current-window spike: log1p of the previous window's counts per unit."""
    import torch

    from neurofm.tokens import N_SPECIAL

    X, y = [], []
    for b in loader:
        prev = b["id_prev"]
        c = torch.zeros(len(prev), n_units).scatter_add_(1, (prev - N_SPECIAL).clamp(0, n_units - 1),
                                                         (prev >= N_SPECIAL).float())
        tid = b["target_id"]
        rows, cols = torch.nonzero(tid >= N_SPECIAL, as_tuple=True)
        X.append(torch.log1p(c)[rows].numpy())
        y.append((tid[rows, cols] - N_SPECIAL).numpy())
    return np.concatenate(X), np.concatenate(y)


def history_glm_bits(dm, n_units: int, max_train: int = 100_000, seed: int = 0) -> dict:
    """A data-only next-ID predictor that knows the previous window and nothing else: softmax
    regression of each current-window spike's unit on log(1 + previous-window counts per unit),
    L2 penalty chosen on the validation block, fitted on (at most ``max_train``) training spikes.
    Bits/spike on the test block over the unigram null of the training spikes: what the recent
    population activity alone says about which unit fires next, order-free by construction."""
    import torch

    from neurofm.recipes import neuroformer as recipe

    Xtr, ytr = _history_samples(recipe._train_windows_loader(dm), n_units)
    Xva, yva = _history_samples(dm.loader("valid"), n_units)
    Xte, yte = _history_samples(dm.loader("test"), n_units)
    counts = np.bincount(ytr, minlength=n_units).astype(np.float64)
    logp_null = np.log((counts + 0.5) / (counts + 0.5).sum())
    if len(ytr) > max_train:
        keep = np.random.default_rng(seed).choice(len(ytr), max_train, replace=False)
        Xtr, ytr = Xtr[keep], ytr[keep]
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    t = lambda a: torch.as_tensor((a - mu) / sd, dtype=torch.float32)  # noqa: E731
    Xtr_t, Xva_t, Xte_t = t(Xtr), t(Xva), t(Xte)
    ytr_t, yva_t, yte_t = (torch.as_tensor(v) for v in (ytr, yva, yte))
    best = None
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        W = torch.zeros(Xtr.shape[1], n_units, requires_grad=True)
        b0 = torch.tensor(logp_null, dtype=torch.float32).clone().requires_grad_(True)
        opt = torch.optim.LBFGS([W, b0], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xtr_t @ W + b0, ytr_t) + l2 * (W ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            va = float(torch.nn.functional.cross_entropy(Xva_t @ W + b0, yva_t))
            lp = torch.log_softmax(Xte_t @ W + b0, -1).gather(1, yte_t[:, None])[:, 0].double().numpy()
        if best is None or va < best[0]:
            best = (va, l2, lp)
    _, l2, lp = best
    return {"history_glm_bits": float((lp - logp_null[yte]).sum() / (len(yte) * math.log(2))), "l2": l2,
            "n_train_spikes": int(len(ytr)), "n_test_spikes": int(len(yte))}


MODEL_SETS = ("pooled", "binned-sum", "pooled+counts", "binned-sum+counts")


def table(session: str, bits: list[dict], sorted_readouts: dict, shuffled_readouts: dict) -> str:
    """Markdown for one session: next-ID bits/spike of the sorted and the shuffled pretraining, then
    the frozen read-outs (fold 0 of bench/probe_readouts.py) side by side, with the rule's verdict:
    the shuffled features beat the sorted ones at 10 % labels when their mean R2 over the draws is
    higher on at least 3 of the 4 model feature sets (MODEL_SETS)."""
    lines = [f"#### {session}", "", "| pretraining | canonical order | shuffled order (mean of draws) | order-free "
             "(lower bound) | order info (log2 N / spike) |", "|---|---|---|---|---|"]
    for name, b in zip(("sorted (cached)", "shuffled (data.shuffle_within_bin)"), bits):
        lines.append(f"| {name} | {b['canonical']:.4f} | {b['shuffled']:.4f} | {b['order-free']:.4f} | "
                     f"{b['order info']:.4f} |")
    fs, fh = sorted_readouts["folds"][0], shuffled_readouts["folds"][0]
    n_lab = [d["n_labelled"] for d in fs["few"]]
    lines += ["", f"Fold 0: {fs['n_scored']} scored test windows; {fs['n_train']} labelled moving training windows "
              f"at 100 %, {n_lab} at 10 % (draws 0-2). R2 (mean over outputs); ridge on the same features.", "",
              "| features | 100 %: sorted | 100 %: shuffled | 10 % sorted (per draw) | 10 % shuffled (per draw) | "
              "10 % mean: sorted / shuffled |", "|---|---|---|---|---|---|"]
    wins = 0
    for k in ("counts",) + MODEL_SETS:
        a = [d[k] for d in fs["few"]]
        b = [d[k] for d in fh["few"]]
        if k in MODEL_SETS:
            wins += np.mean(b) > np.mean(a)
        lines.append(f"| {k} | {fs['full'][k]:.3f} | {fh['full'][k]:.3f} | {', '.join(f'{x:.3f}' for x in a)} | "
                     f"{', '.join(f'{x:.3f}' for x in b)} | {np.mean(a):.3f} / {np.mean(b):.3f} |")
    lines += ["", f"Shuffled > sorted at 10 % (mean over draws) on {wins} of {len(MODEL_SETS)} model feature sets: "
              f"{'BEATS' if wins >= 3 else 'does not beat'} the sorted pretraining by the rule.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="*", help="pretraining run folders (config.yaml + pretrained/)")
    ap.add_argument("--table", nargs=4, metavar=("SESSION", "BITS_JSON", "SORTED_DIR", "SHUFFLED_DIR"), default=None,
                    help="print the markdown table of one session from this script's JSON (sorted run first) and "
                         "bench/probe_readouts.py's results folders of the sorted and the shuffled runs")
    ap.add_argument("--sessions", nargs="*", default=None, help="session files in place of the config's")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--history-glm", action="store_true",
                    help="also fit the previous-window softmax regression (history_glm_bits) on the first run's data")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.table:
        import json

        name, bits, a, b = args.table
        load = lambda d: json.loads((Path(d) / f"{name}.json").read_text())  # noqa: E731
        print(table(name, json.loads(Path(bits).read_text()), load(a), load(b)))
        return 0
    res = [order_bits(Path(r), args.sessions, args.draws, glm=args.history_glm and k == 0)
           for k, r in enumerate(args.run_dirs)]
    from neurofm.atomic import atomic_write
    from neurofm.jsonio import dumps

    text = dumps(res, indent=1)
    if args.out:
        atomic_write(args.out, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
