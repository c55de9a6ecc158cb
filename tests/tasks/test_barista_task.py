"""BaRISTA Lightning tasks: pretraining fit, schedules, EMA each step, fine-tuning modes."""

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader, Dataset

from neurofm.models.barista import Barista, BaristaConfig, BaristaEncoder
from neurofm.tasks.barista import BaristaFinetuneTask, BaristaPretrainTask


def tiny(**kw) -> BaristaConfig:
    base = dict(d_model=16, n_layers=2, n_heads=2, patch_len=32, n_patches=4, n_parcels=6, dropout=0.0,
                predictor_dropout=0.0, cnn_chunk=64)
    base.update(kw)
    return BaristaConfig(**base)


class Segments(Dataset):
    """Items by the BaRISTA batch contract. Channels of a parcel share a source (a masked
    channel is predictable from its parcel's other channels); label 1 adds a rhythm of two
    cycles per patch to parcels 1-2; ``target`` is the rhythm's amplitude."""

    def __init__(self, n: int, cfg: BaristaConfig, C: int = 10, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        T = cfg.segment_len
        t = torch.arange(T) / cfg.patch_len
        self.parcel = torch.arange(C) % 5 + 1
        src = torch.randn(n, 5, T, generator=g).cumsum(-1)
        src = (src - src.mean(-1, keepdim=True)) / src.std(-1, keepdim=True)
        self.label = torch.randint(0, 2, (n,), generator=g)
        self.amp = torch.rand(n, generator=g) * 2 * self.label
        rhythm = torch.sin(2 * math.pi * 2 * t)
        x = src[:, self.parcel - 1] + 0.3 * torch.randn(n, C, T, generator=g)
        x = x + (self.amp[:, None, None] * rhythm) * (self.parcel <= 2)[None, :, None]
        self.x = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
        self.coords = torch.randint(0, 200, (C, 3), generator=g)
        self.lobe = self.parcel + 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "channel_mask": torch.ones(len(self.parcel), dtype=torch.bool), "coords": self.coords,
                "parcel": self.parcel, "lobe": self.lobe, "label": self.label[i], "target": self.amp[i, None],
                "session": torch.tensor(0)}


class Record(L.Callback):
    def __init__(self):
        self.train, self.val = [], []

    def on_train_epoch_end(self, trainer, module):
        self.train.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})

    def on_validation_end(self, trainer, module):  # after the module's epoch-end metrics
        if not trainer.sanity_checking:
            self.val.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


def trainer(epochs: int, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     callbacks=list(callbacks))


def test_pretraining_fit_decreases_the_loss_and_updates_ema_each_step():
    torch.manual_seed(0)
    cfg = tiny(mask_scale="parcel")
    task = BaristaPretrainTask(cfg, lr=3e-3, warmup_epochs=1, ema_epochs=2)
    loader = DataLoader(Segments(64, cfg), batch_size=16, shuffle=True)
    rec = Record()
    seen = []

    class EMAWatch(L.Callback):  # state after the previous step's optimizer and EMA updates
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen.append((module.global_step, module.model.target_tokenizer.proj.weight.detach().clone(),
                         module.model.encoder.tokenizer.proj.weight.detach().clone()))

    trainer(8, rec, EMAWatch()).fit(task, loader)
    losses = [e["train/loss_epoch"] for e in rec.train]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert rec.train[-1]["train/target_std"] > 1e-3 and rec.train[-1]["train/pred_std"] > 1e-3
    # the collapse watch, logged every epoch: from an untrained predictor (worse than the mean
    # target, latent R2 < 0) towards and past the mean target on these predictable segments
    r2 = [e["train/latent_r2_epoch"] for e in rec.train]
    assert all(math.isfinite(v) for v in r2) and r2[-1] > r2[0] + 0.3, r2
    # EMA: momentum 0 after the first step (target = online), then every step moves the target
    step1, target1, online1 = seen[1]
    assert step1 == 1 and torch.equal(target1, online1)
    steps_per_epoch = 4
    assert task.steps_per_epoch() == steps_per_epoch
    assert task.ema_momentum(0) == 0.0
    assert task.ema_momentum(steps_per_epoch) == pytest.approx(0.996 / 2)
    assert task.ema_momentum(10 * steps_per_epoch) == pytest.approx(0.996)
    moved = [not torch.equal(a[1], b[1]) for a, b in zip(seen, seen[1:])]
    assert all(moved)
    last_t, last_o = seen[-1][1], seen[-1][2]
    assert not torch.equal(last_t, last_o)  # an average, not a copy, once momentum > 0


def test_pretraining_lr_schedule_warms_up_then_decays():
    cfg = tiny()
    task = BaristaPretrainTask(cfg, lr=1e-3, warmup_epochs=2, lr_gamma=0.5, steps_per_epoch=4)
    opt_conf = task.configure_optimizers()
    opt, sched = opt_conf["optimizer"], opt_conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5e-3)  # (epoch 0 + 1) / 2 warm-up epochs
    assert lrs[4] == pytest.approx(1e-3)  # end of warm-up (epoch 1)
    assert lrs[8] == pytest.approx(0.5e-3) and lrs[12] == pytest.approx(0.25e-3)
    assert lrs[:5] == sorted(lrs[:5])
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(task.model.encoder.backbone.blocks[0].attn.qkv.weight) in decay
    assert id(task.model.encoder.spatial.parcel.weight) not in decay
    assert not any(id(p) == id(q) for g in opt.param_groups for p in g["params"]
                   for q in task.model.target_tokenizer.parameters())


def test_pretrain_checkpoint_round_trip(tmp_path):
    cfg = tiny(encode_scale="lobe")
    task = BaristaPretrainTask(cfg)
    loader = DataLoader(Segments(8, cfg), batch_size=4)
    tr = trainer(1)
    tr.fit(task, loader)
    path = tmp_path / "p.ckpt"
    tr.save_checkpoint(path)
    again = BaristaPretrainTask.load_from_checkpoint(path)
    assert again.model.config == task.model.config
    for (k, a), b in zip(task.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("head", ["pooled", "token_weighting"])
def test_finetune_classification_freezes_cnn_and_logs_auroc(head):
    torch.manual_seed(0)
    cfg = tiny()
    encoder = Barista(cfg).export_encoder()
    cnn_before = [p.clone() for p in encoder.tokenizer.blocks.parameters()]
    backbone_before = encoder.backbone.blocks[0].attn.qkv.weight.clone()
    task = BaristaFinetuneTask(encoder, task="classification", head=head, n_channels=10, lr_head=1e-2)
    assert task.monitor == "val/auroc"
    lrs = {}
    for g in task.configure_optimizers().param_groups:
        for p in g["params"]:
            lrs[id(p)] = g["lr"]
    assert lrs[id(encoder.backbone.blocks[0].mlp.fc.weight)] == 1e-4
    assert lrs[id(encoder.spatial.parcel.weight)] == 1e-3
    assert lrs[id(task.head.out.weight)] == 1e-2
    assert not any(id(p) in lrs for p in encoder.tokenizer.blocks.parameters())
    rec = Record()
    train, val = DataLoader(Segments(48, cfg), batch_size=16, shuffle=True), DataLoader(Segments(32, cfg, seed=1), 16)
    trainer(6, rec).fit(task, train, val)
    assert all(torch.equal(a, b) for a, b in zip(cnn_before, encoder.tokenizer.blocks.parameters()))
    assert not torch.equal(backbone_before, encoder.backbone.blocks[0].attn.qkv.weight)
    aurocs = [e["val/auroc"] for e in rec.val]
    assert len(aurocs) == 6 and all(0.0 <= a <= 1.0 for a in aurocs)
    assert aurocs[-1] > 0.6 and aurocs[-1] > aurocs[0]  # the rhythm is easy to find


def test_finetune_regression_and_reconstruction_log_r2(tmp_path):
    torch.manual_seed(0)
    cfg = tiny()
    model = Barista(cfg)
    train, val = DataLoader(Segments(32, cfg), batch_size=16), DataLoader(Segments(16, cfg, seed=1), 16)
    reg = BaristaFinetuneTask.from_pretraining(model, task="regression", target_dim=1, freeze_cnn=False)
    rec = Record()
    trainer(2, rec).fit(reg, train, val)
    assert reg.monitor == "val/r2" and all(math.isfinite(e["val/r2"]) for e in rec.val)
    rec2 = Record()
    recon = BaristaFinetuneTask.from_pretraining(model, task="reconstruction")
    assert torch.equal(recon.head.mask_token, model.mask_token)
    tr = trainer(2, rec2)
    tr.fit(recon, train, val)
    assert all(math.isfinite(e["val/r2"]) and e["val/r2"] < 1 for e in rec2.val)
    out = recon(next(iter(val)))
    assert out.shape[1:] == (cfg.n_patches, cfg.patch_len)
    path = tmp_path / "r.ckpt"
    tr.save_checkpoint(path)
    again = BaristaFinetuneTask.load_from_checkpoint(path)
    assert isinstance(again.encoder, BaristaEncoder) and again.hparams.task == "reconstruction"
    assert torch.equal(again.head.out.weight, recon.head.out.weight)


def test_finetune_argument_errors():
    cfg = tiny()
    with pytest.raises(ValueError, match="n_channels"):
        BaristaFinetuneTask(cfg, head="token_weighting")
    with pytest.raises(ValueError, match="task"):
        BaristaFinetuneTask(cfg, task="segmentation")
    task = BaristaFinetuneTask(cfg.to_dict(), task="regression")
    batch = next(iter(DataLoader(Segments(4, cfg), batch_size=4)))
    del batch["target"]
    with pytest.raises(KeyError, match="target"):
        task.training_step(batch, 0)


class Scaled(Segments):
    """The rhythm amplitude as a raw target far from unit scale (a force in mN, say)."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["target"] = 5000.0 + 2000.0 * item["target"]
        return item


def test_regression_target_is_standardised_and_comes_back_in_the_recordings_units(tmp_path):
    from neurofm.models.barista import BaristaFinetuned

    torch.manual_seed(0)
    cfg = tiny()
    data = Scaled(48, cfg)
    ys = torch.stack([data[i]["target"] for i in range(len(data))])
    mean, std = ys.mean(0).tolist(), ys.std(0, unbiased=False).tolist()
    task = BaristaFinetuneTask(BaristaEncoder(cfg), task="regression", target_mean=mean, target_std=std,
                               freeze_cnn=False, lr_head=1e-2, lr_backbone=1e-3)
    batch = next(iter(DataLoader(data, batch_size=48)))
    loss, pred, y = task._loss(batch)
    # the loss is on the standardised target (order 1), predictions and truth in mN
    assert float(loss.detach()) < 10.0 and float(y.mean()) > 1000.0 and float(pred.mean()) > 1000.0

    def fit(t):
        rec = Record()
        torch.manual_seed(1)
        trainer(6, rec).fit(t, DataLoader(data, batch_size=16, shuffle=True), DataLoader(Scaled(24, cfg, seed=1), 24))
        return rec.val[-1]["val/r2"]

    raw = BaristaFinetuneTask(BaristaEncoder(cfg), task="regression", freeze_cnn=False, lr_head=1e-2,
                              lr_backbone=1e-3)
    raw.encoder.load_state_dict(task.encoder.state_dict())
    raw.head.load_state_dict(task.head.state_dict())
    with pytest.warns(UserWarning, match="RMS"):
        r2_raw = fit(raw)
    r2 = fit(task)
    assert r2 > 0.1 and r2_raw < -1.0  # the raw 5000 +- 2000 mN target is still far off after the same steps
    # round trip: the Lightning checkpoint and the exported model keep the statistics
    tr = trainer(0)
    tr.strategy.connect(task)
    tr.save_checkpoint(tmp_path / "reg.ckpt")
    again = BaristaFinetuneTask.load_from_checkpoint(tmp_path / "reg.ckpt")
    assert again.hparams.target_mean == mean and again.hparams.target_std == std
    exported = again.export_model().eval()
    exported.save_pretrained(tmp_path / "reg")
    loaded = BaristaFinetuned.from_pretrained(tmp_path / "reg").eval()
    task.eval()
    with torch.no_grad():
        out = task(batch)  # (B, 1) standardised
        units = loaded(batch)
    torch.testing.assert_close(units, out * torch.tensor(std) + torch.tensor(mean), rtol=1e-5, atol=1e-2)


def test_unstandardised_regression_target_warns():
    cfg = tiny()
    task = BaristaFinetuneTask(BaristaEncoder(cfg), task="regression")
    batch = next(iter(DataLoader(Scaled(8, cfg), batch_size=8)))
    with pytest.warns(UserWarning, match="target_mean"):
        task._loss(batch)
    with pytest.raises(ValueError, match="target_std"):
        BaristaFinetuneTask(BaristaEncoder(cfg), task="regression", target_mean=[0.0], target_std=[0.0])


def test_finetune_early_stopping_waits_for_the_first_validation(tmp_path):
    """A task built with its default patience brings the early stopping runs get from
    build_trainer (one class): a step limit that ends training before any validation ends it
    quietly, where Lightning's own EarlyStopping raised 'val/r2 which is not available'."""
    from neurofm.experiment import build_trainer
    from neurofm.tasks.callbacks import EarlyStoppingAfterValidation, StartingPoint
    from neurofm.tasks.trainer import TrainerConfig

    cfg = tiny()
    task = BaristaFinetuneTask(cfg, task="regression")  # default early_stopping_patience (15)
    callbacks = task.configure_callbacks()
    assert [type(c) for c in callbacks] == [StartingPoint, EarlyStoppingAfterValidation]
    assert callbacks[1].patience == 15 and callbacks[1].monitor == "val/r2"
    run = build_trainer(TrainerConfig(max_epochs=1, early_stopping_patience=3, accelerator="cpu", devices=1,
                                      progress_bar=False), tmp_path, monitor="val/r2", mode="max")
    assert [type(c) for c in run.callbacks if isinstance(c, EarlyStopping)] == [EarlyStoppingAfterValidation]
    fit = L.Trainer(max_epochs=3, max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    fit.fit(task, DataLoader(Segments(8, cfg), batch_size=4), DataLoader(Segments(8, cfg, seed=1), batch_size=4))
    assert fit.global_step == 1  # stopped by the step limit, before the first validation, without an error
