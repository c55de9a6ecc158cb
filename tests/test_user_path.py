"""A new lab's path on a real recording, through the commands a user types.

``neurofm convert nwb`` the linear-track recording -> pretrain a small Neuroformer on its
spikes -> ``neurofm finetune`` (a fresh process) to decode position from 10 % of the labels ->
load the fine-tuned folder with ``from_pretrained`` -> ``neurofm evaluate`` prints position R2
on the held-out block -> ``neurofm generate`` writes generated spikes that ``neurofm inspect``
reads. A plumbing test: every step runs and its outputs exist and are finite; how well the
models decode is measured elsewhere.

The recording is sparse (about 15 spikes/s over all 31 units), so windows are 250 ms with a
500 ms previous window. The animal runs in the first half and rests in the second, where the
position is constant: under the default 80/10/10 time-block split the test block is all rest
and R2 is undefined. The lab therefore marks its own blocks in the session file
(``/intervals/train|valid|test``, DESIGN.md 2.1), all inside the running half: test first,
then validation, then training, 5 s apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from neurofm import cli
from neurofm.jsonio import loads_strict  # every JSON neurofm writes parses strictly (no bare NaN)

ROOT = Path(__file__).resolve().parents[1]
NWB = ROOT / ".." / "shared" / "data" / "spikes" / "linear-track.nwb"

pytestmark = pytest.mark.skipif(not NWB.exists(), reason=f"real recording {NWB} not present (shared data folder)")

# block sizes left to the data, as a user leaves them
MODEL = ["model.window.curr=0.25", "model.window.prev=0.5", "model.window.dt=0.01", "model.n_embd=32", "model.n_head=2",
         "model.temporal_hidden=32"]
# windows every second (not every 250 ms): a fifth of the windows, the same plumbing
RUN = ["data.stride=1.0", "trainer.progress_bar=false", "trainer.max_epochs=1"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore"}


def _mark_blocks(path: Path) -> dict[str, tuple[float, float]]:
    """Write train/valid/test blocks into the session file, inside the running half (the
    first ~990 s): what a lab that defines its own held-out block does."""
    from neurofm.data.session import Session

    with Session(path) as s:
        t0 = s.t_start
    # 150 s of test: ~40 of its 1 s-stride windows are moving (the first 100 s hold ~20, the
    # minimum the check before training asks for, since jittery pauses no longer count as moving)
    blocks = {"test": (t0, t0 + 150.0), "valid": (t0 + 155.0, t0 + 205.0), "train": (t0 + 210.0, t0 + 950.0)}
    with h5py.File(path, "r+") as f:
        for name, (a, b) in blocks.items():
            g = f.require_group("intervals").create_group(name)
            g.create_dataset("start", data=np.array([a]))
            g.create_dataset("end", data=np.array([b]))
    return blocks


def test_new_lab_convert_pretrain_finetune_evaluate_generate(tmp_path, capsys, monkeypatch):
    data = tmp_path / "linear-track.h5"
    assert cli.main(["convert", "nwb", str(NWB), str(data)]) == 0
    blocks = _mark_blocks(data)
    capsys.readouterr()
    assert cli.main(["inspect", str(data), "--json"]) == 0
    summary = loads_strict(capsys.readouterr().out)
    assert summary["n_units"] == 31 and "position" in summary["behavior"]

    # pretrain on the spikes alone (no behaviour), briefly
    pre = tmp_path / "pre"
    assert cli.main(["train", f"run_dir={pre}", f"data.sessions=[{data}]", "data.behavior=[]", "model.behavior=[]",
                     *MODEL, *RUN, "trainer.limit_train_batches=8", "eval.generate_windows=8"]) == 0
    pre_metrics = loads_strict((pre / "metrics.json").read_text())
    assert np.isfinite(pre_metrics["metrics"]["id_bits_per_spike"])
    assert np.isfinite(pre_metrics["metrics"]["window_f1"])
    assert pre_metrics["data"]["n_units"] == 31
    assert "/intervals" in pre_metrics["protocol"]  # the file's own blocks were used

    # fine-tune in a fresh process: decode position from 10 % of the training labels
    ft = tmp_path / "ft"
    cmd = [sys.executable, "-m", "neurofm.cli", "finetune", "--pretrained", str(pre / "pretrained"),
           "--data", str(data), "--behavior", "position", "--label-fraction", "0.1", "--run-dir", str(ft), *RUN]
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "position_r2" in out.stdout
    ft_metrics = loads_strict((ft / "metrics.json").read_text())
    assert 0 < ft_metrics["data"]["n_labelled_train_windows"]["position"] < ft_metrics["data"]["n_train_windows"]
    assert np.isfinite(ft_metrics["metrics"]["position_r2"])
    # position is scored on moving windows (threshold from the data), and the protocol says how many
    assert "test windows where the animal moves" in ft_metrics["protocol"]
    assert f"{ft_metrics['metrics']['position_n_scored']} of " in ft_metrics["protocol"]
    # every loss the decode report states is a limitation of the run (terminal summary, card)
    losses = [v for rep in ft_metrics["decode_report"].values() for v in rep["verdicts"] if " LOSES to " in v]
    assert all(any(v in x for x in ft_metrics.get("limitations", [])) for v in losses)
    # block sizes: chosen from the pretraining data (<= 0.5% dropped there), kept by the fine-tune
    assert ft_metrics["tokenizer"]["block_size"] == pre_metrics["tokenizer"]["block_size"]
    assert max(pre_metrics["tokenizer"]["dropped_fraction_train"].values()) <= 0.005
    assert (ft / "pretrained" / "README.md").read_text().startswith("---\n")
    for folder in (pre, ft):  # the exported config.json parses strictly too
        loads_strict((folder / "pretrained" / "config.json").read_text())

    # the fine-tuned folder is a Neuroformer with the backbone's units and a position head
    from neurofm.models.neuroformer import Neuroformer

    model = Neuroformer.from_pretrained(ft / "pretrained")
    pretrained = Neuroformer.from_pretrained(pre / "pretrained")
    assert model.config.units == pretrained.config.units and len(model.config.units) == 31
    (position,) = [v for v in model.config.behavior if v.name == "position"]
    assert position.dim == 2 and len(position.mean) == 2 and all(s > 0 for s in position.std)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # evaluate the fine-tuned folder: position R2 on the held-out (test) block, printed as JSON (--json)
    # (every pass over the data reports its progress; a long one every 30 s, here every batch)
    ev = tmp_path / "eval"
    monkeypatch.setattr("neurofm.progress.PROGRESS_EVERY_S", 0.0)
    assert cli.main(["evaluate", "--pretrained", str(ft / "pretrained"), "--data", str(data), "--behavior",
                     "position", "--out", str(ev), "--json", "data.stride=1.0"]) == 0
    out = capsys.readouterr()
    for what in ("evaluation, training windows' counts", "evaluation, test windows", "linear probe, test windows"):
        assert f"neurofm: {what}: 1 of " in out.err and f"neurofm: {what}: done, " in out.err
    lines = out.out.splitlines()  # evaluate's stdout ends with one JSON object; files written go to stderr
    first = lines.index("{")
    assert lines[-1] == "}"
    printed = loads_strict("\n".join(lines[first:]))
    assert f"wrote {ev / 'metrics.json'}" in out.err.splitlines()
    report = loads_strict((ev / "metrics.json").read_text())
    assert printed["metrics"] == report["metrics"] and "position_r2" in printed["metrics"]
    r2 = report["metrics"]["position_r2"]
    assert np.isfinite(r2) and np.isfinite(report["baselines"]["ridge on binned counts"]["position_r2"])
    # evaluate's baselines fit the fine-tuning run's labels (10%, its seed), and the protocol says so
    assert "behaviour labels on 10% of the training windows" in report["protocol"]
    draw = report["data"]["label_draw"]  # what that 10% drew: chunks and windows, in the protocol too
    assert draw["requested"] == 0.1 and f"{draw['n_windows_labelled']:,} of {draw['n_windows']:,} training " \
        f"windows ({draw['share']:.1%})" in report["protocol"]
    assert abs(draw["n_chunks_labelled"] - 0.1 * draw["n_chunks"]) <= 2  # the stratified draw: 10% to within 2 chunks
    assert report["data"]["n_labelled_train_windows"] == ft_metrics["data"]["n_labelled_train_windows"]
    # the same model on the same test block scores what the fine-tuning run reported
    assert r2 == pytest.approx(ft_metrics["metrics"]["position_r2"], rel=1e-4, abs=1e-6)
    assert report["data"]["n_test_windows"] == ft_metrics["data"]["n_test_windows"] > 0
    assert blocks["test"][1] - blocks["test"][0] >= report["data"]["n_test_windows"] - 1  # 1 window a second

    # generate 5 s of spikes with the fine-tuned model; the result is a session file
    gen = tmp_path / "generated.h5"
    assert cli.main(["generate", str(ft / "pretrained"), str(data), str(gen), "--seconds", "5"]) == 0
    capsys.readouterr()
    assert gen.with_suffix(".png").stat().st_size > 0  # recorded-vs-generated raster
    assert cli.main(["inspect", str(gen), "--json"]) == 0
    info = loads_strict(capsys.readouterr().out)
    assert info["n_units"] == 31 and info["n_spikes"] >= 0
    assert 0 < info["duration_s"] <= 5.0 + 1e-6
