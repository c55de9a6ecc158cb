"""NeuroformerTask: a tiny CPU fit learns, NaN stops training, fine-tuning freezes and unfreezes."""

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from neurofm.data.datasets import pack_spikes
from neurofm.models.neuroformer import Neuroformer, NeuroformerConfig
from neurofm.testing import synthetic_batch
from neurofm.tasks.neuroformer import NeuroformerTask

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*GPU available.*")


def tiny_config(**overrides) -> NeuroformerConfig:
    base = dict(
        n_units=10, n_embd=32, n_head=4, temporal_hidden=16,
        window=dict(curr=0.03, prev=0.03, dt=0.01), block_size=dict(id=12, prev_id=12),
        layers=dict(state=1, prev_encoder=1, state_history=1, stimulus_encoder=0, stimulus=0, behavior=1, self_att=1),
        dropout=dict(embd=0.0, attn=0.0, resid=0.0),
        behavior=[dict(name="speed", group="motion"), dict(name="position", dim=2, target=True)],
    )
    base.update(overrides)
    return NeuroformerConfig(**base)


def batches(config, n, b=8, seed=0):
    """Random-but-structured windows (unit u fires at offset u mod 3; the behaviour target is
    the window's standardised spike count)."""
    return [synthetic_batch(config, b, rate_hz=30.0, generator=torch.Generator().manual_seed(seed + i))
            for i in range(n)]


def loader(items):
    return DataLoader(items, batch_size=None, shuffle=False)


def trainer(**kw):
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, gradient_clip_val=1.0, num_sanity_val_steps=0)
    args.update(kw)
    return L.Trainer(**args)


def eval_loss(task, items):
    task.model.eval()
    with torch.no_grad():
        return sum(float(task.model.loss(b, task.model(b))["total"]) for b in items) / len(items)


def test_tiny_fit_decreases_the_loss_and_logs_every_term():
    torch.manual_seed(0)
    c = tiny_config()
    train = batches(c, 4)
    task = NeuroformerTask(c, lr=3e-3, warmup_fraction=0.1)
    before = eval_loss(task, train)
    t = trainer(max_steps=40, log_every_n_steps=1)
    t.fit(task, train_dataloaders=loader(train), val_dataloaders=loader(batches(c, 2, seed=100)))
    after = eval_loss(task, train)
    assert after < 0.8 * before, (before, after)
    m = t.callback_metrics
    for key in ("train/id", "train/dt", "train/contrastive", "train/behavior/position", "train/total",
                "train/id_acc", "train/dt_acc", "train/n_dropped", "train/n_dropped_prev",
                "val/total", "val/id_acc", "val/position_r2", "val/position_pearson"):
        assert key in m, key
    # warm-up + cosine sized from the run: 40 steps, the schedule ends at 10% of the peak
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(3e-4, rel=1e-3)
    assert t.optimizers[0].param_groups[0]["betas"] == (0.9, 0.95)


def test_packed_training_follows_the_padded_run():
    """A Lightning fit on packed batches takes the same steps as on padded ones (same loss at
    every step, same final weights within float32 noise) and logs the same terms."""
    c = tiny_config()
    train = batches(c, 3, seed=5)
    runs = []
    for items in (train, [pack_spikes(b) for b in train]):
        torch.manual_seed(0)
        task = NeuroformerTask(c, lr=3e-3, warmup_fraction=0.1)
        t = trainer(max_steps=6, log_every_n_steps=1)
        t.fit(task, train_dataloaders=loader(items))
        runs.append((task, t.callback_metrics))
    (a, ma), (b, mb) = runs
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pb, pa, atol=2e-5, rtol=1e-4, msg=name)
    for key in ("train/total", "train/id", "train/id_acc", "train/behavior/position"):
        torch.testing.assert_close(mb[key], ma[key], atol=1e-5, rtol=1e-4)


def test_nan_loss_raises_with_step_and_windows():
    c = tiny_config()
    task = NeuroformerTask(c)
    with torch.no_grad():
        task.model.head_id.weight[5, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"global step 0.*sessions \[0, 0.*window end times"):
        trainer(max_steps=2).fit(task, train_dataloaders=loader(batches(c, 2)))


def test_finetune_freezes_backbone_and_unfreezes_gradually():
    torch.manual_seed(0)
    c = tiny_config()
    pretrained = Neuroformer(c)
    state0 = {k: v.clone() for k, v in pretrained.state_dict().items()}
    task = NeuroformerTask(model=pretrained, mode="finetune", freeze_backbone=True, unfreeze_every=1, lr=1e-2)
    assert task.objectives == ("behavior",)
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("behavior_heads", "contrastive_proj")) for n in trainable)
    # epoch 0: heads only; epoch 1: the top stage (self_att + final norm + token heads) joins
    trainer(max_epochs=2).fit(task, train_dataloaders=loader(batches(c, 2)))
    sd = task.model.state_dict()
    assert not torch.equal(sd["behavior_heads.position.weight"], state0["behavior_heads.position.weight"])
    assert not torch.equal(sd["self_att_blocks.0.mlp.fc.weight"], state0["self_att_blocks.0.mlp.fc.weight"])
    for frozen in ("state_blocks.0.attn.qkv.weight", "tok_emb.weight", "history_blocks.0.mlp.fc.weight"):
        assert torch.equal(sd[frozen], state0[frozen]), frozen


def test_checkpoint_reload_after_vocab_extension(tmp_path):
    c = tiny_config()
    task = NeuroformerTask(c)
    task.model.extend_vocab(3)  # after the task saved its hyperparameters
    t = trainer(max_steps=1)
    train = batches(c, 1)
    t.fit(task, train_dataloaders=loader(train))
    path = tmp_path / "last.ckpt"
    t.save_checkpoint(path)
    again = NeuroformerTask.load_from_checkpoint(path)
    assert again.model.config.n_units == 13
    for k, v in task.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k


def test_label_subset_draws_whole_chunks_and_each_seed_its_own():
    from neurofm.tasks.neuroformer import LabelSubset

    t = torch.arange(0.0, 4000.0, 0.25, dtype=torch.float64)
    s = torch.zeros(len(t), dtype=torch.long)
    chunk = torch.floor(t / 5.0).long()
    draws = []
    for seed in range(3):
        m = LabelSubset(0.1, 5.0, seed)(s, t)
        assert torch.equal(m, LabelSubset(0.1, 5.0, seed)(s, t))  # deterministic
        assert 0.06 < m.float().mean() < 0.14
        labelled = set(chunk[m].tolist())
        assert not (set(chunk[~m].tolist()) & labelled)  # whole chunks, never part of one
        draws.append(labelled)
    # another seed (or session) is a new draw: the overlap is what independent 10% draws give (~10%)
    for other in draws[1:]:
        assert len(draws[0] & other) < 0.3 * len(draws[0])
    m_other_session = LabelSubset(0.1, 5.0, 0)(torch.ones_like(s), t)
    assert len(set(chunk[m_other_session].tolist()) & draws[0]) < 0.3 * len(draws[0])
