"""GPU benchmark: attention correctness and speed, training throughput and MFU, KV-cache generation.

One script for a lent GPU with torch and no network: it installs nothing, downloads nothing,
writes only its JSON (``--out``, atomically, after every row, so a killed run still leaves
what it measured) and prints each row as soon as it is measured. Every row runs in its own
``try``: a missing piece (no flash-attn, a kernel that refuses the inputs, out of memory) is
recorded in that row and the run goes on.

Sections
--------
1. **correctness** -- every attention path against a float64 SDPA reference with an explicit
   boolean mask, on the same (dtype-rounded) inputs: causal self-attention, bidirectional
   with key padding (BaRISTA's channel padding), cross-attention (Lq != Lk, with and without
   key padding), causal with Lq < Lk (a KV cache, bottom-right aligned), and packed
   variable-length sequences (:func:`~neurofm.nn.attention.varlen_attention`) against the
   reference and against the padded path. Relative error ``||out - ref|| / ||ref||`` over the
   real (non-padded) query positions; pass: fp32 <= 1e-4, bf16 <= 1e-2. SDPA backends are
   forced one at a time (``sdpa_kernel``); a backend that refuses the inputs is
   ``unsupported``. flash-attn's own functions are called directly when it is installed.
2. **attention** -- forward + backward ms/iter for Neuroformer-sized problems (batch 32, 8
   heads x 32, causal, seq 100 and 800) and BaRISTA-sized ones (batch 8, 4 heads x 16,
   bidirectional, 98 x 12 = 1,176 and 200 x 12 = 2,400 tokens). Sequences have real lengths
   uniform in 40-100% of the maximum. FLOPs: ``4 B H Lq Lk Dh`` forward, x3.5 forward +
   backward (flash-attn's convention: the backward recomputes the scores), halved when causal.
   ``TFLOP/s`` counts the work a kernel is given (every padded position for the dense rows,
   real tokens for the varlen rows); ``useful`` counts real tokens only for every row, so
   rows compare directly.
3. **train** -- end-to-end optimizer steps (bf16 autocast on CUDA, fp32 on CPU; fused AdamW
   from ``neurofm.tasks.optim.adamw``; dropout on; gradients clipped at 1 for Neuroformer, not
   for BaRISTA, as their training does): Neuroformer at the paper size
   (``NeuroformerConfig.paper``: n_embd 256, 8 heads, 6 state + 1 previous-encoder + 6 history
   + 6 self-attention layers, 200 units; no stimulus, so no contrastive term and not the
   DESIGN.md 11 workload), batch 64 of synthetic windows at four firing rates (~31-79 spikes
   each), padded vs packed (:func:`~neurofm.data.datasets.pack_spikes`);
   BaRISTA at the paper size with 200 channels, batch 8, 120-200 real channels per sample,
   ``BaristaBackbone.pack`` False vs True. Tokens/s counts real tokens (current-window tokens
   for Neuroformer; channel x patch tokens for BaRISTA).

   **Model FLOPs** (for MFU) count the work on real tokens only, the same for the padded and
   the packed rows::

       F_step = 3 * F_dense_fwd(trained) + 1 * F_dense_fwd(no-grad) + 3 * F_attn_fwd

   ``F_dense_fwd`` is the forward matmul/convolution FLOPs, counted by
   :class:`torch.utils.flop_counter.FlopCounterMode` on one forward of the packed batch
   (every matmul sees real tokens only) -- i.e. ``2 * (matmul parameters) * (tokens through
   them)`` per stage, which is the usual ``6 * N_params * tokens`` once the backward's 2x is
   added. Parts run without gradient (BaRISTA's EMA target tokenizer) count once.
   ``F_attn_fwd = 4 * d * sum(Lq * Lk)`` over layers and samples, halved for causal
   self-attention (d = heads x head dim);
   Neuroformer: state and self-attention stages causal over the current window, previous
   encoder over the previous window, history cross-attention current x previous; BaRISTA:
   every layer over all ``n_patches * C_real`` tokens. MFU = ``F_step / step time / peak``,
   with the peak dense bf16 throughput of the GPU from :data:`PEAK_BF16_TFLOPS` (n/a for an
   unknown device or CPU).
4. **fit** -- the users' training path: each Lightning task (Neuroformer, BaRISTA pretraining and
   fine-tuning) through :func:`neurofm.experiment.build_trainer` with the ``TrainerConfig``
   defaults (gradient clip 1.0, ``precision: auto`` = bf16-mixed on CUDA, forced on CPU) and the
   tasks' fused AdamW, a few steps: status and ms per step, Lightning's overhead included.
5. **generate** -- :meth:`Neuroformer.generate` with the KV cache, small and paper sizes,
   batch 1 and 256, ``stop_at_eos=False`` and a fixed ``max_spikes``: windows/s.

Output
------
The JSON (schema ``neurofm-bench-gpu/1``)::

    {"schema", "header": {torch, cuda, python, device, device_name, capability, memory_gb,
                          bf16, cudnn, flash_attn ("absent" or its version), sdpa_backends,
                          peak_bf16_tflops (number or "n/a"), time},
     "args": {...},
     "sections": {"correctness" | "attention" | "train" | "fit" | "generate":
                      {"columns": [...the printed ones], "rows": [{...}], "error": null or text,
                       "skipped": null or the time-budget reason, "elapsed_s"}},
     "summary": {"complete", "elapsed_s", "correctness_failed": [...], "neurofm_failed": [...],
                 "skipped_rows"}}

Every row has ``status``: ``pass`` / ``FAIL`` (correctness), ``ok`` (measured), ``absent``
(flash-attn not installed), ``unsupported`` (a kernel refused the inputs), ``oom``, ``error``
(with ``note`` and ``traceback``) or ``skipped`` (time budget); ``note`` says why. Row
fields: correctness -- ``case, dtype, path, backend, rel_err, threshold``; attention --
``problem, B, H, Dh, L, causal, lengths, real_frac, path, ms, tflops, useful_tflops``; train
-- ``model, variant, precision, batch, params, size, step_ms, tokens_per_step, tokens_per_s,
padded_tokens, peak_mem_gb (CUDA), flops {dense_fwd, attn_fwd, step...},
model_tflop_per_step, achieved_tflops, mfu, loss``; fit -- ``task, size, precision, batch, steps, step_ms,
loss``; generate -- ``model, batch, precision,
max_spikes, s_per_call, windows_per_s, ms_per_token, spikes_per_window``.

Usage::

    python bench/gpu.py                                 # CUDA, ~1-3 min on an H100
    python bench/gpu.py --device cpu --quick --out /tmp/g.json   # CI smoke test, < 60 s
    python bench/gpu.py --compile                       # adds a torch.compile training row
    python bench/gpu.py --sections correctness attention --time-budget 60

``--time-budget`` (default 240 s, quick 50 s) is checked before each row: a row that would
start too late is recorded as ``skipped`` with the reason, so one run stays under 5 minutes
on an H100. ``--compile`` is off by default: compiling the paper-size model can take a
minute, and torch.compile keeps its caches outside ``--out``'s folder (inductor's temp dir).

Exit status: 0; 1 when a correctness row of neurofm's own paths (``neurofm.attention``,
``neurofm.varlen_attention``, varlen vs padded) fails or errors, or a fit row errors; 2 for a bad
command line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.barista import make_batch as make_barista_batch  # noqa: E402
from bench.neuroformer import N_UNITS, RATE_HZ, autocast, train_step  # noqa: E402
from neurofm.data.datasets import pack_spikes  # noqa: E402
from neurofm.atomic import atomic_write  # noqa: E402
from neurofm.models.barista import Barista, BaristaConfig  # noqa: E402
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig  # noqa: E402
from neurofm.testing import synthetic_batch  # noqa: E402
from neurofm.nn.attention import (  # noqa: E402
    HAS_FLASH_ATTN, attention, attention_backend, flash_attn_func, flash_attn_varlen_func, pack, unpack,
    varlen_attention,
)
from neurofm.tasks.optim import adamw, param_groups  # noqa: E402

SCHEMA = "neurofm-bench-gpu/1"
SECTIONS = ("correctness", "attention", "train", "fit", "generate")
THRESHOLDS = {"fp32": 1e-4, "bf16": 1e-2}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

#: Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment, first match wins.
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def peak_tflops_for(name: str) -> float | None:
    """Dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name``); None if unknown."""
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment in name:
            return tflops
    return None


def peak_tflops(device: torch.device) -> float | None:
    return peak_tflops_for(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def flash_attn_status() -> str:
    """flash-attn's version, or ``absent`` with the reason."""
    try:
        import flash_attn  # type: ignore
    except ImportError:
        return "absent"
    except Exception as exc:  # installed but broken (CUDA / ABI mismatch)
        return f"absent (import failed: {type(exc).__name__}: {exc})"
    if not HAS_FLASH_ATTN:
        return "absent (imported, but neurofm.nn.attention could not load its functions)"
    return str(getattr(flash_attn, "__version__", "installed"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int,
               max_s: float = 10.0) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls; CUDA events on GPU.

    The number of timed calls drops below ``iters`` when the warm-up says they would take
    longer than ``max_s`` in all (slow CPU rows).
    """
    t0 = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
    sync(device)
    per_call = (time.perf_counter() - t0) / max(warmup, 1)
    iters = max(1, min(iters, int(max_s / max(per_call, 1e-6))))
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


_SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                  "math": SDPBackend.MATH}
if hasattr(SDPBackend, "CUDNN_ATTENTION"):  # torch >= 2.5
    _SDPA_BACKENDS["cudnn"] = SDPBackend.CUDNN_ATTENTION


def force_sdpa(name: str):
    """Context in which SDPA may use only the backend ``name`` (a key of ``_SDPA_BACKENDS``)."""
    return sdpa_kernel([_SDPA_BACKENDS[name]])


#: SDPA backends forced in rows of their own. cuDNN attention joins with ``--sdpa-cudnn`` only:
#: on some torch/cuDNN versions it has failed with an illegal memory access, which poisons the
#: CUDA context for every later row of a one-shot run.
SDPA_ROWS = ["flash", "efficient", "math"]


class Unsupported(Exception):
    """A kernel refused the inputs (dtype, mask, head size, device): not a failure."""


# How SDPA and flash-attn word a refusal of the inputs (a RuntimeError); anything else is an error.
_REFUSALS = ("No available kernel", "No viable backend", "only supports", "not supported", "doesn't support",
             "does not support")


def classify_error(exc: BaseException) -> tuple[str, str]:
    """``(status, note)`` of an exception raised by a row: ``unsupported``, ``oom`` or ``error``."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc):
        return "oom", text
    if isinstance(exc, Unsupported) or (isinstance(exc, (RuntimeError, NotImplementedError))
                                        and any(r in str(exc) for r in _REFUSALS)):
        return "unsupported", text
    return "error", text


def to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def select_rows(batch: Any, idx: slice) -> Any:
    """Rows ``idx`` of every (B, ...) tensor of a padded batch (nested dicts too)."""
    if torch.is_tensor(batch):
        return batch[idx]
    if isinstance(batch, dict):
        return {k: select_rows(v, idx) for k, v in batch.items()}
    return batch


def cat_batches(parts: list[Any]) -> Any:
    if torch.is_tensor(parts[0]):
        return torch.cat(parts)
    if isinstance(parts[0], dict):
        return {k: cat_batches([p[k] for p in parts]) for k in parts[0]}
    return parts[0]


def free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# --------------------------------------------------------------------------------------------
# report: progressive table + atomic JSON
# --------------------------------------------------------------------------------------------
COLUMNS = {
    "correctness": [("case", 26), ("dtype", 5), ("path", 24), ("backend", 18), ("rel_err", 9), ("threshold", 9),
                    ("status", 11)],
    "attention": [("problem", 36), ("path", 29), ("ms", 9), ("tflops", 8), ("useful_tflops", 13),
                  ("real_frac", 9), ("status", 11)],
    "train": [("model", 12), ("variant", 18), ("precision", 9), ("batch", 5), ("step_ms", 9), ("tokens_per_s", 12),
              ("peak_mem_gb", 11), ("model_tflop_per_step", 20), ("mfu", 6), ("status", 11)],
    "fit": [("task", 18), ("size", 6), ("precision", 10), ("batch", 5), ("steps", 5), ("step_ms", 9), ("loss", 8),
            ("status", 11)],
    "generate": [("model", 10), ("batch", 5), ("precision", 9), ("max_spikes", 10), ("s_per_call", 10),
                 ("windows_per_s", 13), ("ms_per_token", 12), ("status", 11)],
}


_TEXT_COLUMNS = ("case", "path", "problem", "model", "variant", "backend", "status", "dtype", "precision", "task",
                 "size")


def _fmt(value: Any, width: int, text: bool) -> str:
    if value is None:
        s = "-"
    elif isinstance(value, bool):
        s = str(value)
    elif isinstance(value, int):
        s = f"{value:,}"
    elif isinstance(value, float):
        if math.isnan(value):
            s = "nan"
        elif value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e6):
            s = f"{value:.2e}"
        elif abs(value) >= 100:
            s = f"{value:,.0f}"
        else:
            s = f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    else:
        s = str(value)
    return s.ljust(width) if text else s.rjust(width)


class Report:
    """Rows by section; printed as they come and saved after each one."""

    def __init__(self, out: Path, header: dict, args: dict, budget_s: float):
        self.out = out
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {
            "schema": SCHEMA, "header": header, "args": args,
            "sections": {s: {"columns": [c for c, _ in COLUMNS[s]], "rows": [], "error": None, "skipped": None,
                             "elapsed_s": None}
                         for s in SECTIONS},
            "summary": {"complete": False},
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def start_section(self, name: str, title: str) -> None:
        print(f"\n== {name}: {title}", flush=True)
        cols = COLUMNS[name]
        line = "  ".join(c.ljust(w) if c in _TEXT_COLUMNS else c.rjust(w) for c, w in cols)
        print(line, flush=True)
        print("-" * len(line), flush=True)
        self._section_t0 = time.perf_counter()

    def end_section(self, name: str, error: BaseException | None = None) -> None:
        sec = self.data["sections"][name]
        sec["elapsed_s"] = round(time.perf_counter() - self._section_t0, 3)
        if error is not None:
            sec["error"] = "".join(traceback.format_exception_only(type(error), error)).strip()[:2000]
            print(f"   section error: {sec['error']}", flush=True)
        self.save()

    def add(self, section: str, row: dict) -> None:
        self.data["sections"][section]["rows"].append(row)
        cols = COLUMNS[section]
        print("  ".join(_fmt(row.get(c), w, c in _TEXT_COLUMNS) for c, w in cols), flush=True)
        if row.get("note") and row["status"] != "absent":  # "flash-attn absent" once, in the header
            print(f"      {row['note'][:110]}", flush=True)
        self.save()

    def save(self, complete: bool = False) -> None:
        s = self.data["summary"]
        s["complete"] = complete
        s["elapsed_s"] = round(self.elapsed(), 3)
        corr = self.data["sections"]["correctness"]["rows"]
        failed = [r for r in corr if r["status"] in ("FAIL", "error")]
        s["correctness_failed"] = [f"{r['case']} / {r['dtype']} / {r['path']}" for r in failed]
        # neurofm's own paths (the exit status): a forced torch backend or flash-attn itself
        # disagreeing is worth seeing, but it is not a bug in this package
        s["neurofm_failed"] = [f"{r['case']} / {r['dtype']} / {r['path']}" for r in failed
                               if r["path"].startswith("neurofm.") or r["path"] == "varlen vs padded"]
        # the users' training path failing is neurofm's bug too (out of memory is the machine's)
        s["neurofm_failed"] += [f"fit / {r['task']}" for r in self.data["sections"]["fit"]["rows"]
                                if r["status"] == "error"]
        s["skipped_rows"] = sum(r["status"] == "skipped" for sec in self.data["sections"].values()
                                for r in sec["rows"])
        atomic_write(self.out, json.dumps(self.data, indent=1, default=_json_default))

    def over_budget(self, need_s: float = 0.0) -> str | None:
        if self.left() < need_s:
            return (f"skipped: time budget ({self.budget_s:.0f} s) "
                    f"{'spent' if self.left() <= 0 else f'has {self.left():.0f} s left, row needs ~{need_s:.0f} s'}")
        return None


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    return str(o)


def run_row(report: Report, section: str, base: dict, fn: Callable[[], dict], need_s: float = 0.0) -> dict:
    """``fn()`` -> measured fields; any exception becomes the row's status and note."""
    row = dict(base)
    skip = report.over_budget(need_s)
    if skip:
        row.update(status="skipped", note=skip)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SDPA explains every refused kernel in a warning
                row.update(fn())
            row.setdefault("status", "ok")
        except Exception as exc:  # noqa: BLE001 - a benchmark row must never stop the run
            row["status"], row["note"] = classify_error(exc)
            if row["status"] == "error":
                row["traceback"] = traceback.format_exc(limit=6)[-2000:]
            if row["status"] == "oom" and torch.cuda.is_available():
                torch.cuda.empty_cache()
    report.add(section, row)
    return row


# --------------------------------------------------------------------------------------------
# 1. correctness
# --------------------------------------------------------------------------------------------
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """float64 SDPA (math backend) with an explicit boolean mask ``allowed`` (B or 1, 1, Lq, Lk);
    query rows that see no key are zero (the convention of :func:`neurofm.nn.attention.attention`)."""
    q, k, v = q.double(), k.double(), v.double()
    empty = ~allowed.any(-1, keepdim=True)
    with force_sdpa("math"):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed | empty)
    return out.masked_fill(empty, 0.0)


def rel_err(out: torch.Tensor, ref: torch.Tensor, q_real: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` over real queries; ``out``/``ref`` (B, H, Lq, Dh), ``q_real`` (B, Lq)."""
    a = out.double().transpose(1, 2)[q_real]
    b = ref.double().transpose(1, 2)[q_real]
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp(min=1e-300))


def _lengths(n: int, lo: int, hi: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(lo, hi + 1, (n,), generator=g)


def _qkv(b: int, h: int, lq: int, lk: int, dh: int, g: torch.Generator, device: torch.device):
    return (torch.randn(b, h, lq, dh, generator=g).to(device), torch.randn(b, h, lk, dh, generator=g).to(device),
            torch.randn(b, h, lk, dh, generator=g).to(device))


def correctness_cases(device: torch.device) -> list[dict]:
    """The attention problems the models pose, fp32 master inputs (B, H, L, Dh) on ``device``.

    Each case: ``q, k, v``; ``allowed`` (B or 1, 1, Lq, Lk) the reference mask; ``q_real``
    (B, Lq); ``kw`` for :func:`attention`; then either ``sdpa`` (attn_mask, is_causal) for
    forced SDPA and ``flash`` kwargs for ``flash_attn_func`` (None: it cannot express the
    case), or, for the packed cases, ``varlen`` (q_real (S, Lq), k_real (S, Lk), causal).
    """
    g = torch.Generator().manual_seed(0)
    cases = []

    def tri(lq: int, lk: int) -> torch.Tensor:  # bottom-right causal, (1, 1, Lq, Lk)
        return (torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None])[None, None].to(device)

    # Neuroformer current window: causal self-attention, 8 heads x 32
    b, h, l, dh = 4, 8, 100, 32
    q, k, v = _qkv(b, h, l, l, dh, g, device)
    cases.append(dict(name="causal self", q=q, k=k, v=v, allowed=tri(l, l),
                      q_real=torch.ones(b, l, dtype=torch.bool, device=device), kw=dict(causal=True),
                      sdpa=(None, True), flash=dict(causal=True)))

    # BaRISTA: bidirectional over time-major (patch, channel) tokens, padded channels masked
    b, h, n, c, dh = 3, 4, 12, 20, 16
    q, k, v = _qkv(b, h, n * c, n * c, dh, g, device)
    ch_real = torch.arange(c)[None, :] < _lengths(b, c // 2, c, g)[:, None]  # (B, C)
    real = ch_real[:, None, :].expand(b, n, c).reshape(b, n * c).to(device)  # (B, N)
    cases.append(dict(name="bidirectional key padding", q=q, k=k, v=v, allowed=real[:, None, None, :],
                      q_real=real, kw=dict(key_padding_mask=real), sdpa=(real[:, None, None, :], False), flash=None))

    # Neuroformer stimulus cross-attention: Lq != Lk, no padding
    b, h, lq, lk, dh = 4, 8, 100, 120, 32
    q, k, v = _qkv(b, h, lq, lk, dh, g, device)
    cases.append(dict(name="cross Lq!=Lk", q=q, k=k, v=v,
                      allowed=torch.ones(1, 1, lq, lk, dtype=torch.bool, device=device),
                      q_real=torch.ones(b, lq, dtype=torch.bool, device=device), kw={},
                      sdpa=(None, False), flash=dict(causal=False)))

    # Neuroformer history cross-attention: previous window padded
    b, h, lq, lk, dh = 4, 8, 90, 160, 32
    q, k, v = _qkv(b, h, lq, lk, dh, g, device)
    k_real = (torch.arange(lk)[None, :] < _lengths(b, 20, lk, g)[:, None]).to(device)
    cases.append(dict(name="cross key padding", q=q, k=k, v=v, allowed=k_real[:, None, None, :],
                      q_real=torch.ones(b, lq, dtype=torch.bool, device=device), kw=dict(key_padding_mask=k_real),
                      sdpa=(k_real[:, None, None, :], False), flash=None))

    # KV-cache decoding: 8 new queries after 56 cached keys, causal bottom-right
    b, h, lq, lk, dh = 4, 8, 8, 64, 32
    q, k, v = _qkv(b, h, lq, lk, dh, g, device)
    cases.append(dict(name="causal Lq<Lk (KV cache)", q=q, k=k, v=v, allowed=tri(lq, lk),
                      q_real=torch.ones(b, lq, dtype=torch.bool, device=device), kw=dict(causal=True),
                      sdpa=(tri(lq, lk), False), flash=dict(causal=True)))

    # packed variable-length sequences (padded master tensors, right-padded)
    for name, s, h, lq, lk, dh, q_lo, k_lo, causal in (
            ("varlen causal self", 6, 8, 100, 100, 32, 40, None, True),
            ("varlen bidirectional", 4, 4, 240, 240, 16, 96, None, False),
            ("varlen cross", 6, 8, 100, 160, 32, 20, 30, False)):
        q, k, v = _qkv(s, h, lq, lk, dh, g, device)
        len_q = _lengths(s, q_lo, lq, g)
        len_k = len_q.clone() if k_lo is None else _lengths(s, k_lo, lk, g)
        q_real = (torch.arange(lq)[None, :] < len_q[:, None]).to(device)
        k_real = (torch.arange(lk)[None, :] < len_k[:, None]).to(device)
        allowed = k_real[:, None, None, :]
        if causal:
            allowed = allowed & tri(lq, lk)
        kw = dict(causal=True) if causal else dict(key_padding_mask=k_real)
        cases.append(dict(name=name, q=q, k=k, v=v, allowed=allowed, q_real=q_real, kw=kw,
                          varlen=(q_real, k_real, causal)))
    return cases


def _require_flash_inputs(q: torch.Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
        raise Unsupported("flash-attn needs fp16/bf16 CUDA tensors")


def _flash_dense(q, k, v, **kw) -> torch.Tensor:
    """``flash_attn_func`` on (B, L, H, Dh) tensors (its layout)."""
    _require_flash_inputs(q)
    return flash_attn_func(q, k, v, **kw)


def _pack_qkv(q, k, v, q_real: torch.Tensor, k_real: torch.Tensor):
    """Packed (N, H, Dh) copies of the real rows of (S, H, L, Dh) tensors, and the query and key
    layouts; ``q_real`` (S, Lq) and ``k_real`` (S, Lk) are right-padded masks."""
    qp, seqs_q = pack(q.transpose(1, 2), q_real)
    kp, seqs_k = pack(k.transpose(1, 2), k_real)
    vp, _ = pack(v.transpose(1, 2), k_real)
    return qp, kp, vp, seqs_q, seqs_k


def _unpacked(out: torch.Tensor, seqs, length: int) -> torch.Tensor:
    return unpack(out, seqs, length).transpose(1, 2)  # (S, H, L, Dh)


def section_correctness(report: Report, device: torch.device, dtypes: list[str]) -> None:
    """Every attention path on every case of :func:`correctness_cases`, in each dtype, against
    the float64 reference: relative error over real queries, pass/FAIL by ``THRESHOLDS``."""
    cases = correctness_cases(device)
    for dname in dtypes:
        dtype = DTYPES[dname]
        for case in cases:
            q, k, v = (t.to(dtype) for t in (case["q"], case["k"], case["v"]))
            ref = reference_attention(q, k, v, case["allowed"])
            thr = THRESHOLDS[dname]
            base = dict(case=case["name"], dtype=dname, threshold=thr)

            def check(out: torch.Tensor, backend: str, against: torch.Tensor = ref) -> dict:
                if not torch.isfinite(out[case["q_real"][:, None, :, None].expand_as(out)]).all():
                    return dict(backend=backend, rel_err=None, status="FAIL", note="non-finite output")
                e = rel_err(out, against, case["q_real"])
                return dict(backend=backend, rel_err=e, status="pass" if e <= thr else "FAIL")

            needs_mask = bool(case["kw"].get("key_padding_mask") is not None
                              or (case["kw"].get("causal") and q.shape[2] != k.shape[2]))
            padded_out: dict[str, torch.Tensor] = {}

            def neurofm_padded() -> dict:
                out = attention(q, k, v, **case["kw"])
                padded_out["out"] = out
                return check(out, attention_backend(q, needs_mask))

            run_row(report, "correctness", {**base, "path": "neurofm.attention"}, neurofm_padded)

            if "varlen" in case:
                _correctness_varlen(report, base, case, q, k, v, check, padded_out)
                continue

            attn_mask, is_causal = case["sdpa"]
            for backend in SDPA_ROWS:
                def forced(backend=backend) -> dict:
                    with force_sdpa(backend):
                        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
                    return check(out, f"sdpa {backend}")

                run_row(report, "correctness", {**base, "path": f"sdpa[{backend}]"}, forced)

            if case["flash"] is not None:
                def flash() -> dict:
                    out = _flash_dense(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **case["flash"])
                    return check(out.transpose(1, 2), "flash_attn")

                run_row(report, "correctness", {**base, "path": "flash_attn_func"}, _absent_or(flash))


def _absent_or(fn: Callable[[], dict]) -> Callable[[], dict]:
    """Rows that call flash-attn directly: ``absent`` without the package."""
    def wrapped() -> dict:
        if not HAS_FLASH_ATTN:
            return dict(status="absent", note=f"flash-attn {flash_attn_status()}")
        return fn()
    return wrapped


def _correctness_varlen(report, base, case, q, k, v, check, padded_out) -> None:
    """Rows of a packed case: neurofm's varlen path against the reference and against the
    padded path, and flash-attn's varlen function itself."""
    q_real, k_real, causal = case["varlen"]
    varlen_out: dict[str, torch.Tensor] = {}

    def neurofm_varlen() -> dict:
        qp, kp, vp, seqs_q, seqs_k = _pack_qkv(q, k, v, q_real, k_real)
        out = varlen_attention(qp, kp, vp, seqs_q, seqs_k, causal=causal)  # (Nq, H, Dh)
        varlen_out["out"] = _unpacked(out, seqs_q, q.shape[2])
        backend = "flash_attn_varlen" if attention_backend(qp) == "flash_attn" else "sdpa (pad, unpad)"
        return check(varlen_out["out"], backend)

    run_row(report, "correctness", {**base, "path": "neurofm.varlen_attention"}, neurofm_varlen)

    def versus() -> dict:
        if "out" not in varlen_out or "out" not in padded_out:
            raise RuntimeError("the varlen or the padded row failed; nothing to compare")
        return check(varlen_out["out"], "varlen vs padded", against=padded_out["out"])

    run_row(report, "correctness", {**base, "path": "varlen vs padded"}, versus)

    def flash_varlen() -> dict:
        _require_flash_inputs(q)
        qp, kp, vp, seqs_q, seqs_k = _pack_qkv(q, k, v, q_real, k_real)
        out = flash_attn_varlen_func(qp, kp, vp, seqs_q.cu_seqlens, seqs_k.cu_seqlens, seqs_q.max_seqlen,
                                     seqs_k.max_seqlen, causal=causal)
        return check(_unpacked(out, seqs_q, q.shape[2]), "flash_attn_varlen")

    run_row(report, "correctness", {**base, "path": "flash_attn_varlen_func"}, _absent_or(flash_varlen))


# --------------------------------------------------------------------------------------------
# 2. attention throughput
# --------------------------------------------------------------------------------------------
def attention_problems(quick: bool) -> list[dict]:
    if quick:
        return [dict(name="neuroformer L=100 causal", b=4, h=8, dh=32, l=100, causal=True),
                dict(name="barista 20ch x 12 = 240", b=2, h=4, dh=16, l=240, causal=False, patches=12)]
    return [dict(name="neuroformer L=100 causal", b=32, h=8, dh=32, l=100, causal=True),
            dict(name="neuroformer L=800 causal", b=32, h=8, dh=32, l=800, causal=True),
            dict(name="barista 98ch x 12 = 1,176", b=8, h=4, dh=16, l=1176, causal=False, patches=12),
            dict(name="barista 200ch x 12 = 2,400", b=8, h=4, dh=16, l=2400, causal=False, patches=12)]


def attn_flops(lengths_q: list[int], lengths_k: list[int], h: int, dh: int, causal: bool) -> float:
    """Forward + backward FLOPs: ``3.5 * 4 * H * Dh * sum(Lq * Lk)``, halved for causal."""
    pairs = sum(a * b for a, b in zip(lengths_q, lengths_k))
    return 3.5 * 4.0 * h * dh * pairs * (0.5 if causal else 1.0)


def real_lengths(p: dict, g: torch.Generator) -> list[int]:
    """Real lengths of problem ``p``'s sequences, uniform in 40-100% of the maximum (BaRISTA:
    whole channels of ``patches`` tokens each)."""
    n, per = (p["l"] // p["patches"], p["patches"]) if "patches" in p else (p["l"], 1)
    return (torch.randint(int(0.4 * n), n + 1, (p["b"],), generator=g) * per).tolist()


def section_attention(report: Report, device: torch.device, quick: bool) -> None:
    """Forward + backward ms per path (flash-attn varlen and dense, each forced SDPA backend,
    neurofm's varlen and padded paths) on :func:`attention_problems`; TFLOP/s by
    :func:`attn_flops` on the work given (``tflops``) and on real tokens only (``useful``)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dname = "bf16" if dtype == torch.bfloat16 else "fp32"
    warmup, iters = (1, 3) if quick else (3, 10)
    for p in attention_problems(quick):
        b, h, dh, length, causal = p["b"], p["h"], p["dh"], p["l"], p["causal"]
        g = torch.Generator().manual_seed(1)
        lengths = real_lengths(p, g)
        dense_flops = attn_flops([length] * b, [length] * b, h, dh, causal)
        useful_flops = attn_flops(lengths, lengths, h, dh, causal)
        base = dict(problem=f"{p['name']} ({dname})", B=b, H=h, Dh=dh, L=length, causal=causal,
                    real_frac=sum(lengths) / (b * length), lengths=lengths)
        q, k, v = (torch.randn(b, h, length, dh, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(b, h, length, dh, generator=g).to(device, dtype)
        key_real = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).to(device)

        def timed(f: Callable[[], torch.Tensor], inputs: tuple, g_out: torch.Tensor, flops: float) -> dict:
            def step():
                torch.autograd.grad(f(), inputs, g_out)
            ms = measure_ms(step, device, warmup, iters, max_s=3.0 if quick else 10.0)
            return dict(ms=ms, tflops=flops / ms / 1e9, useful_tflops=useful_flops / ms / 1e9)

        def packed():
            """(N, H, Dh) leaf copies of the real rows of q, k, v; their layout; the real rows of grad."""
            qp, kp, vp, seqs, _ = _pack_qkv(q.detach(), k.detach(), v.detach(), key_real, key_real)
            inputs = (qp.requires_grad_(), kp.requires_grad_(), vp.requires_grad_())
            return inputs, seqs, grad.transpose(1, 2)[key_real]

        def flash_varlen() -> dict:  # flash-attn over the real tokens only
            _require_flash_inputs(q)
            inputs, seqs, gp = packed()
            return timed(lambda: flash_attn_varlen_func(*inputs, seqs.cu_seqlens, seqs.cu_seqlens, seqs.max_seqlen,
                                                        seqs.max_seqlen, causal=causal), inputs, gp, useful_flops)

        def flash_dense() -> dict:
            inputs = tuple(t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
            return timed(lambda: _flash_dense(*inputs, causal=causal), inputs, grad.transpose(1, 2).contiguous(),
                         dense_flops)

        run_row(report, "attention", {**base, "path": "flash-attn varlen"}, _absent_or(flash_varlen))
        run_row(report, "attention", {**base, "path": "flash-attn dense"}, _absent_or(flash_dense))

        for backend in SDPA_ROWS:
            def sdpa_dense(backend=backend) -> dict:
                def f():
                    with force_sdpa(backend):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
                return timed(f, (q, k, v), grad, dense_flops)

            run_row(report, "attention", {**base, "path": f"SDPA {backend} dense"}, sdpa_dense)

        # what the models run: packed through neurofm, and (BaRISTA) the padded masked path
        def neurofm_varlen() -> dict:
            inputs, seqs, gp = packed()
            path = "flash-attn varlen" if attention_backend(inputs[0]) == "flash_attn" else "pad + SDPA + unpad"
            out = timed(lambda: varlen_attention(*inputs, seqs, causal=causal), inputs, gp,
                        useful_flops if path == "flash-attn varlen" else dense_flops)
            return dict(out, note=f"backend: {path}")

        run_row(report, "attention", {**base, "path": "neurofm.varlen_attention"}, neurofm_varlen)

        # right-padded causal windows need no mask (Neuroformer); BaRISTA's padding needs one
        kw = dict(causal=True) if causal else dict(key_padding_mask=key_real)
        run_row(report, "attention", {**base, "path": "neurofm.attention padded"},
                lambda: dict(timed(lambda: attention(q, k, v, **kw), (q, k, v), grad, dense_flops),
                             note=f"backend: {attention_backend(q, needs_mask=not causal)}"))
        q = k = v = grad = None  # free this problem's tensors before the next one's
        free_memory(device)


# --------------------------------------------------------------------------------------------
# 3. end-to-end training
# --------------------------------------------------------------------------------------------
def _count_dense_flops(model: torch.nn.Module, run: Callable[[], Any]) -> float:
    """Forward FLOPs of the matmuls and convolutions in ``run()`` (``model`` in eval mode, no
    gradient); attention kernels (SDPA ops, and the batched matmuls of its math fallback) are
    left out: they are counted from the real lengths instead."""
    counter = FlopCounterMode(display=False)
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            run()
    finally:
        model.train(was)
    ops = counter.get_flop_counts().get("Global", {})
    return float(sum(n for op, n in ops.items() if "attention" not in str(op) and "bmm" not in str(op)))


def neuroformer_model_flops(model: Neuroformer, packed: dict) -> dict:
    """Model FLOPs of one training step on a packed Neuroformer batch (see the module doc): the
    dense part from one forward, in which every matmul sees real tokens only; attention from
    the real lengths in ``cu_seqlens`` / ``cu_seqlens_prev``."""
    dense = _count_dense_flops(model, lambda: model(packed))
    l = packed["cu_seqlens"].diff().double().cpu()  # (B,) real current tokens, SOS and EOS included
    p = packed["cu_seqlens_prev"].diff().double().cpu() if "cu_seqlens_prev" in packed else torch.zeros_like(l)
    causal = len(model.state_blocks) + len(model.self_att_blocks)
    attn = 4.0 * model.config.n_embd * float(causal * (l * l / 2).sum() + len(model.prev_blocks) * (p * p).sum()
                                             + len(model.history_blocks) * (l * p).sum())
    return dict(dense_fwd=dense, attn_fwd=attn, step=3.0 * dense + 3.0 * attn)


def barista_model_flops(model: Barista, batch: dict, n_real: list[int], mask: torch.Tensor) -> dict:
    """Model FLOPs of one ``pretrain_loss`` step on ``batch`` whose sample ``i`` has its first
    ``n_real[i]`` channels real, masking ``mask`` (B, C) (see the module doc).

    The dense part is one forward with the backbone packing the real tokens
    (``BaristaBackbone.pack = True``); the EMA target tokenizer (no gradient) is counted apart."""
    cfg = model.config
    backbone = model.encoder.backbone
    was_pack, backbone.pack = backbone.pack, True
    try:
        dense = _count_dense_flops(model, lambda: model.pretrain_loss(batch, mask=mask))
        frozen = _count_dense_flops(model, lambda: model.target_tokenizer(
            model.encoder.patches(batch["x"])[mask].reshape(-1, cfg.patch_len)))
    finally:
        backbone.pack = was_pack
    t = torch.tensor(n_real, dtype=torch.float64) * cfg.n_patches
    attn = 4.0 * cfg.d_model * cfg.n_layers * float((t * t).sum())
    return dict(dense_fwd=dense, dense_fwd_no_grad=frozen, attn_fwd=attn,
                step=3.0 * (dense - frozen) + frozen + 3.0 * attn)


def train_rows(report: Report, device: torch.device, *, model_name: str, variant: str, model, make_step,
               tokens: int, flops: dict | None, warmup: int, steps: int, precision: str, batch_size: int,
               extra: dict, need_s: float) -> None:
    """One ``train`` row: ``make_step() -> (step, note)`` builds the optimizer (inside the row's
    ``try``), ``step()`` takes one optimizer step and returns the detached loss."""
    peak = peak_tflops(device)

    def fn() -> dict:
        step, note = make_step()
        free_memory(device)
        losses: list[torch.Tensor] = []
        ms = measure_ms(lambda: losses.append(step()), device, warmup, steps, max_s=20.0)
        row = dict(step_ms=ms, tokens_per_step=tokens, tokens_per_s=tokens / ms * 1e3, loss=float(losses[-1]))
        if device.type == "cuda":
            row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if flops:
            row["model_tflop_per_step"] = flops["step"] / 1e12
            row["achieved_tflops"] = flops["step"] / ms / 1e9
            row["mfu"] = row["achieved_tflops"] / peak if peak else "n/a"
        if note:
            row["note"] = note
        return row

    run_row(report, "train", dict(model=model_name, variant=variant, precision=precision, batch=batch_size,
                                  params=sum(p.numel() for p in model.parameters()), **extra),
            fn, need_s=need_s)


def _train_setup(report: Report, name: str, need_s: float, build: Callable[[], Any]) -> Any:
    """``build()``, or None once a row says why not (time budget spent, or the error)."""
    skip = report.over_budget(need_s)
    if skip:
        report.add("train", dict(model=name, variant="all", status="skipped", note=skip))
        return None
    try:
        return build()
    except Exception as exc:  # noqa: BLE001
        status, note = classify_error(exc)
        report.add("train", dict(model=name, variant="setup", status=status, note=note))
        return None


def _model_flops(extra: dict, count: Callable[[], dict]) -> dict | None:
    """``count()``, recorded in ``extra["flops"]``; on failure the error goes to
    ``extra["flops_error"]`` and the rows go on without MFU."""
    try:
        extra["flops"] = count()
        return extra["flops"]
    except Exception as exc:  # noqa: BLE001
        extra["flops_error"] = classify_error(exc)[1]
        return None


def neuroformer_train_batch(config, batch_size: int, seed: int = 0) -> dict:
    """Synthetic spike windows at four rates (0.5, 0.75, 1, 1.25 x 6.3 Hz for 200 units, i.e.
    ~31-79 spikes per 50 ms window), so windows differ in length as real ones do."""
    parts, sizes = [], [batch_size // 4 + (i < batch_size % 4) for i in range(4)]
    for i, (n, scale) in enumerate(zip(sizes, (0.5, 0.75, 1.0, 1.25))):
        if n:
            parts.append(synthetic_batch(config, n, rate_hz=RATE_HZ * scale, structured=False,
                                         generator=torch.Generator().manual_seed(seed + i)))
    return cat_batches(parts)


def section_train(report: Report, device: torch.device, quick: bool, compile_model: bool) -> None:
    """Optimizer steps/s, real tokens/s and MFU (model FLOPs of the module doc / step time /
    peak) of Neuroformer padded vs packed and BaRISTA ``pack`` False vs True."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    warmup, steps = (1, 2) if quick else (3, 10)
    need = 2.0 if quick else 15.0
    _train_neuroformer(report, device, quick, compile_model, precision, warmup, steps, need)
    free_memory(device)
    _train_barista(report, device, quick, precision, warmup, steps, need)
    free_memory(device)


def _train_neuroformer(report, device, quick, compile_model, precision, warmup, steps, need) -> None:
    """Padded vs packed batches (and, with ``--compile``, a compiled padded row)."""
    name = "neuroformer"
    batch_size = 4 if quick else 64

    def build():
        config = NeuroformerConfig.small(N_UNITS) if quick else NeuroformerConfig.paper(N_UNITS)
        torch.manual_seed(0)
        model = Neuroformer(config).to(device).train()
        batch_cpu = neuroformer_train_batch(config, batch_size)
        packed = pack_spikes(batch_cpu)  # on CPU: pack_spikes builds its masks there
        return model, batch_cpu, to_device(batch_cpu, device), to_device(packed, device)

    built = _train_setup(report, name, need, build)
    if built is None:
        return
    model, batch_cpu, padded, packed = built
    extra = dict(size="small" if quick else "paper", tokens_prev=int(batch_cpu["mask_prev"].sum()),
                 padded_tokens=int(batch_size * int(batch_cpu["mask"].sum(1).max())))
    flops = _model_flops(extra, lambda: neuroformer_model_flops(model, packed))

    def stepper(batch, net=None):
        def make():
            opt = adamw(param_groups(model, 0.1), lr=1e-4, betas=(0.9, 0.95))
            return (lambda: train_step(model, opt, batch, precision, device.type, net)), None
        return make

    common = dict(model_name=name, model=model, tokens=int(batch_cpu["mask"].sum()), flops=flops, warmup=warmup,
                  steps=steps, precision=precision, batch_size=batch_size, extra=extra, need_s=need)
    train_rows(report, device, variant="padded", make_step=stepper(padded), **common)
    train_rows(report, device, variant="packed", make_step=stepper(packed), **common)
    if compile_model:
        def compiled():
            step, _ = stepper(padded, torch.compile(model))()
            t = time.perf_counter()
            step()
            sync(device)
            return step, f"first step (compilation) {time.perf_counter() - t:.1f} s"

        train_rows(report, device, variant="padded, compiled", make_step=compiled,
                   **{**common, "need_s": 60.0 if not quick else need})


def barista_train_batch(cfg, batch_size: int, channels: int, lo: int, seed: int = 0) -> tuple[dict, list[int]]:
    """``bench/barista.py``'s synthetic batch with ``lo..channels`` real channels per sample
    (the rest padding: zeros in ``x``, False in ``channel_mask``)."""
    batch = make_barista_batch(batch_size, channels, cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    n_real = torch.randint(lo, channels + 1, (batch_size,), generator=g)
    n_real[0] = channels  # the batch keeps its full width
    real = torch.arange(channels)[None, :] < n_real[:, None]
    batch["channel_mask"] = real
    batch["x"] = batch["x"] * real[:, :, None]
    return batch, n_real.tolist()


def _train_barista(report, device, quick, precision, warmup, steps, need) -> None:
    """``BaristaBackbone.pack`` False (padded channels attended and masked) vs True (packed)."""
    name = "barista"
    if quick:
        cfg, batch_size, channels, lo = BaristaConfig(n_layers=2, n_patches=4, patch_len=64), 2, 20, 12
    else:
        cfg, batch_size, channels, lo = BaristaConfig(), 8, 200, 120

    def build():
        torch.manual_seed(0)
        model = Barista(cfg).to(device).train()
        batch_cpu, n_real = barista_train_batch(cfg, batch_size, channels, lo)
        return model, batch_cpu, to_device(batch_cpu, device), n_real

    built = _train_setup(report, name, need, build)
    if built is None:
        return
    model, batch_cpu, batch, n_real = built
    extra = dict(size="tiny" if quick else "paper", channels=channels, real_channels=n_real,
                 padded_tokens=batch_size * channels * cfg.n_patches)
    flops = _model_flops(extra, lambda: barista_model_flops(
        model, batch, n_real, model.choose_mask(batch_cpu, torch.Generator().manual_seed(0)).to(device)))
    backbone = model.encoder.backbone

    for pack_flag in (False, True):
        def make(pack_flag=pack_flag):
            backbone.pack = pack_flag
            opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))

            def step() -> torch.Tensor:
                with autocast(precision, device.type):
                    loss = model.pretrain_loss(batch)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                model.update_ema(0.99)
                return loss.detach()
            return step, None

        train_rows(report, device, model_name=name, variant=f"pack={pack_flag}", model=model, make_step=make,
                   tokens=sum(n_real) * cfg.n_patches, flops=flops, warmup=warmup, steps=steps,
                   precision=precision, batch_size=batch_size, extra=extra, need_s=need)
    backbone.pack = None


# --------------------------------------------------------------------------------------------
# 4. the users' training path
# --------------------------------------------------------------------------------------------


class _StepClock:
    """A Lightning callback's clock: wall time after each optimizer step (device synchronised)."""

    def __init__(self, device: torch.device, warmup: int):
        import lightning as L

        clock = self

        class Clock(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                sync(device)
                clock.times.append(time.perf_counter())
                clock.loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)

        self.callback, self.times, self.warmup, self.loss = Clock(), [], warmup, float("nan")

    def ms(self) -> float:
        t = self.times[self.warmup:]
        return (t[-1] - t[0]) / (len(t) - 1) * 1e3 if len(t) > 1 else float("nan")


def section_fit(report: Report, device: torch.device, quick: bool) -> None:
    """Each Lightning task through :func:`neurofm.experiment.build_trainer` with the
    :class:`~neurofm.tasks.trainer.TrainerConfig` defaults a run gets (gradient clip 1.0,
    ``precision: auto`` = bf16-mixed on CUDA; on CPU bf16-mixed is forced, the GPU's path) and the
    tasks' own optimizers (fused AdamW): the path ``neurofm train`` takes, which the ``train``
    section's hand-written steps skip. Every GPU run stopped at its first step on this path until
    Lightning's refusal to clip for a fused optimizer was handled (:mod:`neurofm.tasks.clipping`)."""
    import tempfile

    from torch.utils.data import DataLoader

    from neurofm.experiment import build_trainer
    from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask
    from neurofm.tasks.neuroformer import NeuroformerTask
    from neurofm.tasks.trainer import TrainerConfig

    warmup, steps = (1, 3) if quick else (3, 13)
    size = "tiny" if quick else "paper"
    nf_cfg = NeuroformerConfig.small(N_UNITS) if quick else NeuroformerConfig.paper(N_UNITS)
    ba_cfg = BaristaConfig(n_layers=2, n_patches=4, patch_len=64) if quick else BaristaConfig()
    nf_batch, ba_batch = (4, 2) if quick else (64, 8)
    channels, lo = (20, 12) if quick else (200, 120)

    def barista_batches(labels: bool) -> list[dict]:
        out = []
        for i in range(steps):
            batch, _ = barista_train_batch(ba_cfg, ba_batch, channels, lo, seed=i)
            if labels:
                batch["label"] = torch.arange(ba_batch) % 2
            out.append(batch)
        return out

    tasks = {
        "neuroformer": (lambda: NeuroformerTask(nf_cfg),
                        lambda: [neuroformer_train_batch(nf_cfg, nf_batch, seed=i) for i in range(steps)], nf_batch),
        "barista pretrain": (lambda: BaristaPretrainTask(ba_cfg), lambda: barista_batches(False), ba_batch),
        "barista finetune": (lambda: BaristaFinetuneTask(Barista(ba_cfg).export_encoder(), task="classification",
                                                         n_channels=channels),
                             lambda: barista_batches(True), ba_batch),
    }
    tc = TrainerConfig(accelerator="gpu" if device.type == "cuda" else "cpu", devices="1", max_steps=steps,
                       progress_bar=False, precision="auto" if device.type == "cuda" else "bf16-mixed",
                       checkpoint_every_minutes=0)
    for name, (make_task, make_batches, batch_size) in tasks.items():
        def fn(make_task=make_task, make_batches=make_batches) -> dict:
            torch.manual_seed(0)
            task, clock = make_task(), _StepClock(device, warmup)
            with (tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()),
                  contextlib.redirect_stderr(io.StringIO())):
                trainer = build_trainer(tc, Path(run_dir), extra_callbacks=[clock.callback])  # its summary: not ours
                trainer.fit(task, DataLoader(make_batches(), batch_size=None))
            row = dict(precision=str(trainer.precision), steps=int(trainer.global_step), step_ms=clock.ms(),
                       loss=clock.loss)
            if row["steps"] != steps:
                row.update(status="error", note=f"trained {row['steps']} of {steps} steps")
            return row

        run_row(report, "fit", dict(task=name, size=size, batch=batch_size), fn, need_s=2.0 if quick else 20.0)
        free_memory(device)


# --------------------------------------------------------------------------------------------
# 5. generation
# --------------------------------------------------------------------------------------------
def section_generate(report: Report, device: torch.device, quick: bool) -> None:
    """Windows/s of :meth:`Neuroformer.generate` (KV cache, every window decoded to
    ``max_spikes``), small and paper sizes, batch 1 and many."""
    max_spikes = 8 if quick else 98  # 98 = the whole block: SOS + 98 spikes + EOS
    sizes = (1, 8) if quick else (1, 256)
    runs = [("small", b, "fp32") for b in sizes] + [("paper", b, "fp32") for b in sizes]
    if device.type == "cuda":
        runs.append(("paper", sizes[-1], "bf16"))
    models: dict[str, Any] = {}
    for size, b, precision in runs:
        def fn(size=size, b=b, precision=precision) -> dict:
            if size not in models:
                models.clear()
                free_memory(device)
                cfg = (NeuroformerConfig.small if size == "small" else NeuroformerConfig.paper)(N_UNITS)
                torch.manual_seed(0)
                models[size] = Neuroformer(cfg).to(device).eval()
            model = models[size]
            batch = to_device(synthetic_batch(model.config, b, rate_hz=RATE_HZ, structured=False,
                                              generator=torch.Generator().manual_seed(2)), device)
            with autocast(precision, device.type):
                model.generate(select_rows(batch, slice(0, 1)), max_spikes=2, stop_at_eos=False, seed=0)  # warm-up
                sync(device)
                times = []
                for _ in range(1 if quick else 2):
                    t = time.perf_counter()
                    out = model.generate(batch, max_spikes=max_spikes, stop_at_eos=False, seed=0)
                    sync(device)
                    times.append(time.perf_counter() - t)
            s = min(times)
            n_tokens = max_spikes + 1  # decoding steps per window (SOS is given; spikes then EOS)
            spikes = sum(len(t) for t in out.tokens) / b
            return dict(s_per_call=s, windows_per_s=b / s, ms_per_token=1e3 * s / n_tokens,
                        tokens_per_s=b * n_tokens / s, spikes_per_window=spikes)

        run_row(report, "generate", dict(model=size, batch=b, precision=precision, max_spikes=max_spikes), fn,
                need_s=1.0 if quick else 8.0)
    models.clear()
    free_memory(device)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def header(device: torch.device) -> dict:
    h: dict[str, Any] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "device": str(device), "flash_attn": flash_attn_status(), "sdpa_backends": list(SDPA_ROWS),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        h.update(device_name=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                 memory_gb=round(props.total_memory / 2**30, 1), bf16=bool(torch.cuda.is_bf16_supported()),
                 cudnn=torch.backends.cudnn.version())
    else:
        h.update(device_name=platform.processor() or platform.machine(), capability=None,
                 cpu_threads=torch.get_num_threads(), bf16=True)
    peak = peak_tflops(device)
    h["peak_bf16_tflops"] = peak if peak is not None else "n/a"
    return h


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke test)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few steps (CI; < 60 s on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_gpu.json"), help="JSON results (written atomically)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds; rows that would start later are skipped with the reason (default 240, quick 50)")
    ap.add_argument("--compile", action="store_true", help="add a torch.compile Neuroformer training row")
    ap.add_argument("--sdpa-cudnn", action="store_true",
                    help="also force SDPA's cuDNN backend in rows of its own (torch >= 2.5)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run only these")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench/gpu.py: --device {args.device} but torch.cuda.is_available() is False (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); run on a GPU machine or pass --device cpu",
              file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"bench/gpu.py: --device must be cuda[:N] or cpu, got {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    if args.sdpa_cudnn and "cudnn" in _SDPA_BACKENDS and "cudnn" not in SDPA_ROWS:
        SDPA_ROWS.append("cudnn")
    budget = args.time_budget if args.time_budget is not None else (50.0 if args.quick else 240.0)

    h = header(device)
    report = Report(args.out, h, {k: str(v) for k, v in vars(args).items()}, budget)
    print(f"neurofm GPU benchmark  torch {h['torch']} (CUDA {h['cuda']})  device {h['device_name']}  "
          f"capability {h.get('capability')}  flash-attn {h['flash_attn']}  bf16 {h['bf16']}  "
          f"peak bf16 {h['peak_bf16_tflops']} TFLOP/s (for MFU)  budget {budget:.0f} s", flush=True)
    report.save()  # the header alone, so even a run killed at once leaves a file

    dtypes = ["fp32", "bf16"]
    plan = {
        "correctness": ("every attention path vs float64 SDPA (relative error over real queries)",
                        lambda: section_correctness(report, device, dtypes)),
        "attention": ("forward + backward; TFLOP/s on the work given, useful = real tokens only",
                      lambda: section_attention(report, device, args.quick)),
        "train": ("optimizer steps on synthetic batches; tokens/s of real tokens; MFU from model FLOPs",
                  lambda: section_train(report, device, args.quick, args.compile)),
        "fit": ("the users' path: each Lightning task through neurofm's Trainer, TrainerConfig defaults",
                lambda: section_fit(report, device, args.quick)),
        "generate": ("Neuroformer.generate with the KV cache, stop_at_eos=False",
                     lambda: section_generate(report, device, args.quick)),
    }
    for name in SECTIONS:
        if name not in args.sections:
            continue
        title, run = plan[name]
        skip = report.over_budget()
        if skip:
            report.data["sections"][name]["skipped"] = skip
            print(f"\n== {name}: {skip}", flush=True)
            continue
        report.start_section(name, title)
        try:
            run()
            report.end_section(name)
        except Exception as exc:  # noqa: BLE001 - record and go on to the next section
            report.end_section(name, exc)
        free_memory(device)

    report.save(complete=True)
    s = report.data["summary"]
    print(f"\ndone in {s['elapsed_s']:.1f} s; {s['skipped_rows']} row(s) skipped; "
          f"correctness failures: {s['correctness_failed'] or 'none'}; wrote {args.out}", flush=True)
    return 1 if s["neurofm_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
