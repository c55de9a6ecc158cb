"""Gradient clipping with the fused AdamW under mixed precision: the GPU default.

On CUDA ``precision: auto`` is bf16-mixed and :func:`~neurofm.tasks.optim.adamw` is fused;
Lightning's mixed-precision plugin refused to clip for that pair, so every GPU run stopped at its
first step (seen on an H200). CPU has the fused AdamW and bf16 autocast too, so these tests take
the same path here, through :func:`neurofm.experiment.build_trainer` with the default clip.
"""

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from neurofm.experiment import build_trainer
from neurofm.models.barista import Barista
from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask
from neurofm.tasks.clipping import clip_gradients
from neurofm.tasks.neuroformer import NeuroformerTask
from neurofm.tasks.optim import adamw
from neurofm.tasks.trainer import TrainerConfig
from tests.tasks.test_barista_task import Segments, tiny
from tests.tasks.test_neuroformer_task import batches, tiny_config

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _grad_norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params if p.grad is not None])))


class GradNorms(L.Callback):
    """The gradient norm each optimizer step used (the gradients stay until the next zero_grad)."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.norms.append(_grad_norm(module.parameters()))


def _tasks():
    nf = tiny_config()
    ba = tiny()
    yield "neuroformer", NeuroformerTask(nf, lr=1e-3), batches(nf, 3)
    segments = DataLoader(Segments(24, ba), batch_size=8)
    yield "barista pretrain", BaristaPretrainTask(ba), segments
    encoder = Barista(ba).export_encoder()
    yield "barista finetune", BaristaFinetuneTask(encoder, task="classification", n_channels=10), segments


@pytest.mark.parametrize("index", [0, 1, 2], ids=["neuroformer", "barista-pretrain", "barista-finetune"])
def test_every_task_trains_under_bf16_with_the_fused_optimizer_and_clips(tmp_path, index):
    name, task, data = list(_tasks())[index]
    if name == "neuroformer":
        data = DataLoader(data, batch_size=None)
    clip = 1e-3  # far below any of these models' gradient norms: every step is clipped
    tc = TrainerConfig(accelerator="cpu", devices="1", precision="bf16-mixed", max_steps=2, progress_bar=False,
                       logger="csv", gradient_clip_val=clip, threads="1")
    norms = GradNorms()
    trainer = build_trainer(tc, tmp_path, extra_callbacks=[norms])
    assert isinstance(trainer.precision_plugin, MixedPrecision)
    trainer.fit(task, data)
    assert trainer.global_step == 2
    assert getattr(trainer.optimizers[0], "_step_supports_amp_scaling", False), "expected the fused AdamW"
    assert len(norms.norms) == 2 and all(n <= clip * 1.01 for n in norms.norms), norms.norms


class _Task:
    def __init__(self, plugin):
        self.trainer = type("T", (), {"precision_plugin": plugin})()


def _fused_step_setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    opt = adamw(model.parameters(), lr=1e-2)
    assert getattr(opt, "_step_supports_amp_scaling", False)
    x = torch.randn(16, 8)
    return model, opt, (model(x) ** 2).sum() * 100


def test_bf16_clips_the_gradients_as_they_are_by_norm_or_value():
    model, opt, loss = _fused_step_setup()
    loss.backward()
    clip_gradients(_Task(MixedPrecision("bf16-mixed", "cpu")), opt, 0.5, "norm")
    assert _grad_norm(model.parameters()) == pytest.approx(0.5, rel=1e-4)
    model, opt, loss = _fused_step_setup()
    loss.backward()
    clip_gradients(_Task(MixedPrecision("bf16-mixed", "cpu")), opt, 0.01, "value")
    assert max(float(p.grad.abs().max()) for p in model.parameters()) == pytest.approx(0.01)
    before = [p.grad.clone() for p in model.parameters()]
    clip_gradients(_Task(MixedPrecision("bf16-mixed", "cpu")), opt, None)  # no clip value: untouched
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_fp16_unscales_before_clipping_and_the_scaler_then_steps_on_true_gradients():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    model, opt, loss = _fused_step_setup()
    scaler.scale(loss).backward()
    clip_gradients(_Task(plugin), opt, 0.5)
    assert _grad_norm(model.parameters()) == pytest.approx(0.5, rel=1e-4)  # unscaled, then clipped
    # the same step with an unfused AdamW on unscaled, clipped gradients
    ref_model, ref_opt, ref_loss = _fused_step_setup()
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, fused=False)
    ref_loss.backward()
    torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
    ref_opt.step()
    scaler.step(opt)
    scaler.update()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
