"""Parameter groups and learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from neurofm.nn.embedding import UnitEmbedding
from neurofm.tasks.optim import (
    param_groups, warmup_cosine, warmup_cosine_scheduler, warmup_steps_for, warmup_then_exponential,
    warmup_then_exponential_scheduler,
)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = UnitEmbedding(5, 4)
        self.pos = nn.Parameter(torch.zeros(1, 3, 4))
        self.lin = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.conv = nn.Conv1d(4, 4, 1)
        self.head = nn.Linear(4, 2, bias=False)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_decay_on_linear_weights_only():
    net = _Net()
    decay, no_decay = param_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(net.lin.weight), id(net.head.weight)}
    assert ids(no_decay["params"]) == {id(p) for p in (net.emb.weight, net.pos, net.lin.bias, net.norm.weight,
                                                       net.norm.bias, net.conv.weight, net.conv.bias)}
    # frozen parameters are left out unless asked for (gradual unfreezing); the groups drive AdamW
    assert id(net.frozen.weight) in ids(param_groups(net, 0.1, include_frozen=True)[0]["params"])
    torch.optim.AdamW(param_groups(net, 0.1), lr=1e-3, betas=(0.9, 0.95))


def test_warmup_sized_to_the_run():
    assert warmup_steps_for(100) == 5  # 5% of a short run: the schedule leaves warm-up
    assert warmup_steps_for(1_000_000) == 2000  # capped for long runs
    assert warmup_steps_for(3) == 1 and warmup_steps_for(0) == 0


def test_warmup_cosine_shape():
    w, total = 10, 110
    assert warmup_cosine(0, w, total) == pytest.approx(0.1)
    assert warmup_cosine(9, w, total) == pytest.approx(1.0)
    assert warmup_cosine(10, w, total) == pytest.approx(1.0)
    assert warmup_cosine(60, w, total) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way down the cosine
    assert warmup_cosine(110, w, total) == pytest.approx(0.1)
    assert warmup_cosine(500, w, total) == pytest.approx(0.1)
    values = [warmup_cosine(s, w, total) for s in range(w, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_cosine_scheduler_follows_the_function():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine_scheduler(opt, total_steps=40, warmup_fraction=0.1)
    lrs = []
    for _ in range(45):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.0 / 4) and lrs[3] == pytest.approx(2.0)
    assert lrs[40] == pytest.approx(0.2) and lrs[44] == pytest.approx(0.2)


def test_warmup_then_exponential_barista():
    assert warmup_then_exponential(0, 5) == pytest.approx(0.2)
    assert warmup_then_exponential(4, 5) == pytest.approx(1.0)
    assert warmup_then_exponential(5, 5) == pytest.approx(0.99)
    assert warmup_then_exponential(14, 5) == pytest.approx(0.99 ** 10)
    assert warmup_then_exponential(2.5, 5) == pytest.approx(0.7)  # fractional epochs: per-step use
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    per_step = warmup_then_exponential_scheduler(opt, warmup_epochs=5, steps_per_epoch=10)
    for _ in range(60):
        opt.step()
        per_step.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.99 ** 2)  # epoch 6.0
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    per_epoch = warmup_then_exponential_scheduler(opt2, warmup_epochs=5)
    for _ in range(6):
        opt2.step()
        per_epoch.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.99 ** 2)
    assert math.isclose(warmup_then_exponential(0, 0), 1.0)


def test_adamw_is_fused_and_updates_like_the_default():
    from neurofm.tasks.optim import adamw

    torch.manual_seed(0)
    a = nn.Linear(8, 4)
    b = nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    frozen = nn.Parameter(torch.ones(3))  # grad None: skipped, as by the default AdamW
    fused = adamw(param_groups(a, 0.1) + [{"params": [frozen], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95))
    plain = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2, betas=(0.9, 0.95))
    assert fused.defaults["fused"] is True  # CPU has a fused kernel in this torch
    x = torch.randn(16, 8)
    for _ in range(3):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    assert torch.equal(frozen, torch.ones(3))
