"""Folders and checkpoints written before the BaRISTA backbone moved onto nn/transformer.Block
(state-dict layout 1, neurofm cfbc09f) still load strictly and compute the same outputs.

The fixtures in tests/data/barista_v1 were written by that revision's code (make.py there):
weights moved off their init (norms included), so a wrong key mapping changes the outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neurofm.hub import PretrainedError, load_pretrained, load_state_strict
from neurofm.models.barista import STATE_VERSION, BaristaEncoder, BaristaFinetuned, upgrade_state_dict
from neurofm.tasks.barista import CHECKPOINT_STATE_VERSION, BaristaPretrainTask

V1 = Path(__file__).resolve().parents[1] / "data" / "barista_v1"


def _io():
    io = load_file(str(V1 / "io.safetensors"))
    return {k: io[k] for k in ("x", "channel_mask", "parcel")}, io


def _assert_same_real_tokens(out, ref, channel_mask):
    if out.dim() == 4:  # (B, n, C, d): padded channels' outputs are undefined, compare the real ones
        out, ref = out.transpose(1, 2)[channel_mask], ref.transpose(1, 2)[channel_mask]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_v1_folders_hold_the_old_keys_and_fail_without_the_migration():
    state = load_file(str(V1 / "encoder" / "model.safetensors"))
    assert "backbone.blocks.0.norm1.weight" in state and "backbone.blocks.1.mlp.w_out.bias" in state
    assert "state_version" not in json.loads((V1 / "encoder" / "config.json").read_text())
    model = BaristaEncoder(json.loads((V1 / "encoder" / "config.json").read_text())["config"])
    with pytest.raises(PretrainedError, match="unexpected keys backbone.blocks.0.attn.out"):
        load_state_strict(model, state)


@pytest.mark.parametrize("name, cls", [("encoder", BaristaEncoder), ("finetuned", BaristaFinetuned)])
def test_v1_folder_loads_strictly_with_the_same_outputs(name, cls):
    batch, io = _io()
    model = load_pretrained(V1 / name)
    assert type(model) is cls
    with torch.no_grad():
        _assert_same_real_tokens(model(batch), io[f"out_{name}"], batch["channel_mask"])
        (model.encoder.backbone if name == "finetuned" else model.backbone).pack = True  # packed: same numbers
        _assert_same_real_tokens(model(batch), io[f"out_{name}"], batch["channel_mask"])


def test_v1_folder_saved_again_is_current_layout_and_round_trips(tmp_path):
    batch, io = _io()
    model = load_pretrained(V1 / "encoder")
    model.save_pretrained(tmp_path / "v2")
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["state_version"] == STATE_VERSION == 2
    keys = load_file(str(tmp_path / "v2" / "model.safetensors"))
    assert "backbone.blocks.0.ln1.weight" in keys and "backbone.blocks.0.mlp.fc.weight" in keys
    assert not any(".norm1." in k or ".w_in." in k or "attn.out." in k for k in keys)
    with torch.no_grad():
        _assert_same_real_tokens(load_pretrained(tmp_path / "v2")(batch), io["out_encoder"], batch["channel_mask"])


def test_folder_from_a_newer_layout_is_refused(tmp_path):
    shutil.copytree(V1 / "encoder", tmp_path / "enc")
    meta = json.loads((tmp_path / "enc" / "config.json").read_text())
    meta["state_version"] = STATE_VERSION + 1
    (tmp_path / "enc" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="state_version 3 is newer"):
        load_pretrained(tmp_path / "enc")


def test_v1_lightning_checkpoint_loads_and_new_ones_record_the_layout(tmp_path):
    batch, io = _io()
    task = BaristaPretrainTask.load_from_checkpoint(V1 / "pretrain_task.ckpt", map_location="cpu",
                                                    weights_only=True).eval()
    with torch.no_grad():
        _assert_same_real_tokens(task.model.encode(batch), io["out_pretrain_encode"], batch["channel_mask"])
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    assert ckpt[CHECKPOINT_STATE_VERSION] == STATE_VERSION
    task.on_load_checkpoint(ckpt)  # the current layout passes through unchanged
    assert set(ckpt["state_dict"]) == set(task.state_dict())


def test_upgrade_renames_only_backbone_block_keys_under_any_prefix():
    t = torch.zeros(1)
    old = {"model.encoder.backbone.blocks.3.attn.out.weight": t, "model.encoder.backbone.blocks.3.mlp.w_in.bias": t,
           "encoder.backbone.norm.weight": t, "encoder.tokenizer.proj.weight": t, "head.out.weight": t}
    assert set(upgrade_state_dict(old, 1)) == {
        "model.encoder.backbone.blocks.3.attn.proj.weight", "model.encoder.backbone.blocks.3.mlp.fc.bias",
        "encoder.backbone.norm.weight", "encoder.tokenizer.proj.weight", "head.out.weight"}
    assert upgrade_state_dict(old, 2) == old
