"""Writes this folder's BaRISTA fixtures with the code of neurofm cfbc09f (state-dict layout 1:
blocks with norm1/norm2, attn.out, mlp.w_in/mlp.w_out). Kept to show how they were made; it
only reproduces them when run against that revision:

    git archive cfbc09f | tar -x -C /tmp/neurofm-cfbc09f
    cd /tmp/neurofm-cfbc09f && PYTHONPATH=$PWD python $REPO/tests/data/barista_v1/make.py $REPO/tests/data/barista_v1

tests/models/test_barista_migration.py loads them with the current code and compares the outputs.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

from neurofm.models.barista import BaristaConfig, BaristaEncoder, BaristaFinetuned, BaristaFinetunedConfig
from neurofm.tasks.barista import BaristaPretrainTask

CONFIG = dict(d_model=8, n_layers=2, n_heads=2, patch_len=16, n_patches=3, cnn_channels=2, cnn_dilations=(1, 2),
              n_parcels=5, predictor_layers=1)


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every tensor off its init (norms included), so a wrong key mapping changes outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = BaristaConfig(**CONFIG)
    g = torch.Generator().manual_seed(1)
    batch = {"x": torch.randn(2, 3, cfg.segment_len, generator=g),
             "channel_mask": torch.tensor([[True, True, True], [True, True, False]]),
             "parcel": torch.tensor([[1, 2, 4], [3, 0, 0]])}
    enc = BaristaEncoder(cfg)
    perturb(enc, 2)
    enc.eval().save_pretrained(out / "encoder")
    ft = BaristaFinetuned(BaristaFinetunedConfig(encoder=cfg, task="classification", head="pooled", out_dim=2))
    perturb(ft, 3)
    ft.eval().save_pretrained(out / "finetuned")
    task = BaristaPretrainTask(cfg)
    perturb(task.model, 4)
    task.eval()
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": L.__version__, "epoch": 0, "global_step": 0}, out / "pretrain_task.ckpt")
    with torch.no_grad():
        outputs = {"encoder": enc(batch), "finetuned": ft(batch), "pretrain_encode": task.model.encode(batch)}
    save_file({**{k: v.contiguous() for k, v in batch.items()}, **{f"out_{k}": v.contiguous() for k, v in outputs.items()}},
              str(out / "io.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
