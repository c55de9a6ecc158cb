"""bench/gpu.py: the CPU smoke run (what CI can check of the GPU benchmark) and its helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402

HAS_FLASH_ATTN_PACKAGE = importlib.util.find_spec("flash_attn") is not None


def _run(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("bench_gpu") / "g.json"
    proc = _run("--device", "cpu", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, json.loads(out.read_text())


def _rows(data: dict, section: str) -> list[dict]:
    return data["sections"][section]["rows"]


def test_quick_run_has_every_section(quick_run):
    proc, data = quick_run
    assert data["schema"] == gpu.SCHEMA
    assert data["summary"]["complete"] is True
    assert set(data["sections"]) == set(gpu.SECTIONS)
    for name, section in data["sections"].items():
        assert section["error"] is None, (name, section["error"])
        assert section["rows"], name
        assert section["skipped"] is None
    h = data["header"]
    assert h["device"] == "cpu" and h["torch"] == torch.__version__
    assert h["peak_bf16_tflops"] == "n/a"
    # the table is printed as it is measured
    for name in gpu.SECTIONS:
        assert f"== {name}:" in proc.stdout


def test_quick_run_fits_every_task_through_neurofms_trainer_under_bf16(quick_run):
    """The users' path (build_trainer, default clip, the tasks' fused AdamW) under bf16-mixed, what
    precision auto gives on CUDA: on an H200 every run stopped at its first step there."""
    _, data = quick_run
    rows = {r["task"]: r for r in _rows(data, "fit")}
    assert set(rows) == {"neuroformer", "barista pretrain", "barista finetune"}
    for name, row in rows.items():
        assert row["status"] == "ok", (name, row)
        assert row["precision"] == "bf16-mixed" and row["steps"] == 3 and row["step_ms"] > 0, row


def test_quick_run_correctness_rows_pass_on_cpu(quick_run):
    _, data = quick_run
    rows = _rows(data, "correctness")
    assert {r["dtype"] for r in rows} == {"fp32", "bf16"}
    ours = [r for r in rows if r["path"].startswith("neurofm.") or r["path"] == "varlen vs padded"]
    # 8 cases x 2 dtypes through neurofm.attention, plus 3 varlen cases x 2 dtypes x (varlen, varlen vs padded)
    assert len(ours) == 8 * 2 + 3 * 2 * 2
    for r in ours:
        assert r["status"] == "pass", r
        assert 0.0 <= r["rel_err"] <= r["threshold"] == gpu.THRESHOLDS[r["dtype"]]
    # the CPU has an SDPA math and a flash kernel for every case; the CUDA-only ones are refused, not errors
    for backend in ("math", "flash"):
        forced = [r for r in rows if r["path"] == f"sdpa[{backend}]"]
        assert len(forced) == 5 * 2 and all(r["status"] == "pass" for r in forced)
    assert not [r for r in rows if r["status"] in ("FAIL", "error")]
    assert data["summary"]["correctness_failed"] == [] and data["summary"]["neurofm_failed"] == []


@pytest.mark.skipif(HAS_FLASH_ATTN_PACKAGE, reason="flash-attn is installed here: its rows are measured")
def test_quick_run_reports_flash_attn_absent(quick_run):
    _, data = quick_run
    assert data["header"]["flash_attn"] == "absent"
    flash = [r for s in ("correctness", "attention") for r in _rows(data, s)
             if "flash_attn" in r["path"] or r["path"].startswith("flash-attn")]
    assert len(flash) >= 4 and all(r["status"] == "absent" for r in flash)


def test_quick_run_measures_attention_training_and_generation(quick_run):
    _, data = quick_run
    attn = _rows(data, "attention")
    math_rows = [r for r in attn if r["path"] == "SDPA math dense"]
    assert len(math_rows) == 2
    for r in math_rows:
        assert r["status"] == "ok" and r["ms"] > 0 and 0 < r["useful_tflops"] < r["tflops"]
        assert 0.4 <= r["real_frac"] <= 1.0
    train = _rows(data, "train")
    assert [(r["model"], r["variant"]) for r in train] == [
        ("neuroformer", "padded"), ("neuroformer", "packed"), ("barista", "pack=False"), ("barista", "pack=True")]
    for r in train:
        assert r["status"] == "ok", r
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["mfu"] == "n/a"
        assert r["model_tflop_per_step"] > 0 and torch.isfinite(torch.tensor(r["loss"]))
        # model FLOPs count real tokens only, so padded and packed share them
        assert r["flops"]["step"] > 3 * r["flops"]["attn_fwd"] > 0
    assert train[0]["model_tflop_per_step"] == train[1]["model_tflop_per_step"]
    assert train[0]["tokens_per_step"] < train[0]["padded_tokens"]
    gen = _rows(data, "generate")
    assert {(r["model"], r["batch"]) for r in gen} == {("small", 1), ("small", 8), ("paper", 1), ("paper", 8)}
    for r in gen:
        assert r["status"] == "ok" and r["windows_per_s"] > 0
        assert r["spikes_per_window"] == r["max_spikes"]  # stop_at_eos=False: every window is full


def test_time_budget_skips_with_the_reason(tmp_path):
    out = tmp_path / "g.json"
    proc = _run("--device", "cpu", "--quick", "--time-budget", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["summary"]["complete"] is True
    for section in data["sections"].values():
        assert "time budget" in section["skipped"] and section["rows"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]  # the atomic write leaves no temp file


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path):
    proc = _run("--device", "cuda", "--out", str(tmp_path / "g.json"))
    assert proc.returncode == 2
    assert "torch.cuda.is_available() is False" in proc.stderr and "--device cpu" in proc.stderr
    assert not (tmp_path / "g.json").exists()


def test_peak_table_and_flop_count():
    assert gpu.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops_for("NVIDIA H200") == 989.0
    assert gpu.peak_tflops_for("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops_for("Some Future Accelerator") is None
    # 4 * H * Dh * L^2 forward, x3.5 with the backward, halved when causal
    assert gpu.attn_flops([10], [10], 2, 8, causal=False) == 3.5 * 4 * 2 * 8 * 100
    assert gpu.attn_flops([10, 20], [10, 20], 2, 8, causal=True) == 3.5 * 4 * 2 * 8 * 500 / 2


def test_reference_attention_zeroes_rows_without_keys_and_rel_err():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1, 3, 4, generator=g) for _ in range(3))
    allowed = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    allowed[1, :, 2] = False  # query 2 of sample 1 sees nothing
    ref = gpu.reference_attention(q, k, v, allowed)
    assert ref.dtype == torch.float64
    assert torch.equal(ref[1, :, 2], torch.zeros(1, 4, dtype=torch.float64))
    scores = (q[0, 0].double() @ k[0, 0].double().T) / 2.0
    torch.testing.assert_close(ref[0, 0], scores.softmax(-1) @ v[0, 0].double())
    q_real = torch.ones(2, 3, dtype=torch.bool)
    assert gpu.rel_err(ref, ref, q_real) == 0.0
    bumped = ref.clone()
    bumped[0, 0, 0] += 1.0
    assert gpu.rel_err(bumped, ref, q_real) > 0.1
    q_real[0, 0] = False  # a padded query does not count
    assert gpu.rel_err(bumped, ref, q_real) == 0.0


def test_a_failing_row_is_recorded_not_raised(tmp_path):
    report = gpu.Report(tmp_path / "r.json", {}, {}, budget_s=60.0)

    def broken() -> dict:
        raise ValueError("boom")

    def refused() -> dict:
        raise RuntimeError("No available kernel. Aborting execution.")

    row = gpu.run_row(report, "train", {"model": "x"}, broken)
    assert row["status"] == "error" and "ValueError: boom" in row["note"] and "traceback" in row
    row = gpu.run_row(report, "attention", {"path": "p"}, refused)
    assert row["status"] == "unsupported"
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["sections"]["train"]["rows"][0]["status"] == "error"
    assert saved["summary"]["complete"] is False


def test_model_flops_count_real_tokens_only():
    """The dense FLOPs of one packed forward match those of each sample run alone (no padding
    either way; the per-window count repeats the dt-embedding tables, a few %), and attention
    is counted from the real lengths."""
    from neurofm.data.datasets import pack_spikes
    from neurofm.models.barista import Barista, BaristaConfig
    from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig

    torch.manual_seed(0)
    model = Neuroformer(NeuroformerConfig.small(50))
    batch = gpu.neuroformer_train_batch(model.config, 4)
    packed = gpu.neuroformer_model_flops(model, pack_spikes(batch))
    per_window = sum(gpu._count_dense_flops(model, lambda: model(gpu.select_rows(batch, slice(i, i + 1))))
                     for i in range(4))
    assert 0.9 < packed["dense_fwd"] / per_window <= 1.0
    l, p = batch["mask"].sum(1).double(), batch["mask_prev"].sum(1).double()
    pairs = ((len(model.state_blocks) + len(model.self_att_blocks)) * (l * l / 2).sum()
             + len(model.prev_blocks) * (p * p).sum() + len(model.history_blocks) * (l * p).sum())
    assert packed["attn_fwd"] == pytest.approx(4 * model.config.n_embd * float(pairs)) and packed["attn_fwd"] > 0
    assert packed["step"] == 3 * packed["dense_fwd"] + 3 * packed["attn_fwd"]

    cfg = BaristaConfig(n_layers=1, n_patches=4, patch_len=64)
    bm = Barista(cfg)
    data, n_real = gpu.barista_train_batch(cfg, 3, 16, 8)
    mask = bm.choose_mask(data, torch.Generator().manual_seed(0))
    one = gpu.barista_model_flops(bm, data, n_real, mask)
    assert bm.encoder.backbone.pack is None  # restored
    alone = sum(gpu._count_dense_flops(bm, lambda: bm.pretrain_loss({k: v[i:i + 1, :c] for k, v in data.items()},
                                                                   mask=mask[i:i + 1, :c]))
                for i, c in enumerate(n_real))
    assert one["attn_fwd"] == 4 * 64 * 1 * sum((4 * c) ** 2 for c in n_real)
    assert one["dense_fwd"] == pytest.approx(alone, rel=0.01)
    assert 0 < one["dense_fwd_no_grad"] < one["dense_fwd"]
    trained = one["dense_fwd"] - one["dense_fwd_no_grad"]
    assert one["step"] == 3 * trained + one["dense_fwd_no_grad"] + 3 * one["attn_fwd"]
