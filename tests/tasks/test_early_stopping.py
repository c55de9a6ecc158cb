"""Early stopping through neurofm's Trainer (experiment.build_trainer): a finished run stays finished."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from neurofm.experiment import build_trainer, resume_path
from neurofm.tasks.trainer import TrainerConfig


class Flat(L.LightningModule):
    """Trains a linear map; its validation metric never improves after the first check."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, i):
        x, y = batch
        return ((self.lin(x) - y) ** 2).mean()

    def validation_step(self, batch, i):
        self.log("val/loss", 1.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data():
    x = torch.randn(32, 2)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def test_a_rerun_of_a_run_early_stopping_ended_trains_nothing_more(tmp_path):
    """A finished run re-run with resume=auto (a --folds fold, a finished fine-tune): Lightning
    trained one more epoch from the last checkpoint, found no improvement and stopped again, so the
    re-run moved the results it was meant to re-evaluate. The stopped state in the checkpoint now
    ends the run at once, through neurofm's own Trainer (build_trainer) and its early stopping."""
    tc = TrainerConfig(accelerator="cpu", devices="1", max_epochs=20, early_stopping_patience=2, progress_bar=False,
                       threads="1")
    trainer = build_trainer(tc, tmp_path, monitor="val/loss", mode="min")
    trainer.fit(Flat(), _data(), _data())
    steps = trainer.global_step
    assert trainer.current_epoch < 19 and steps == 4 * trainer.current_epoch, (steps, trainer.current_epoch)
    again = build_trainer(tc, tmp_path, monitor="val/loss", mode="min")
    again.fit(Flat(), _data(), _data(), ckpt_path=resume_path("auto", tmp_path))
    assert again.global_step == steps
