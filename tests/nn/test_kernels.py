"""The hand-written kernels of neurofm.nn.kernels against their plain PyTorch references:
values and gradients (double-precision gradcheck where the kernel has its own backward)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from neurofm.nn.kernels import PatchConv, Recompute, gated_mlp


@pytest.mark.parametrize("P, L, k, d", [(3, 20, 3, 1), (3, 20, 3, 4), (1, 20, 3, 4), (2, 10, 3, 16), (4, 12, 5, 3)])
def test_patch_conv_matches_conv1d_and_gradcheck(P, L, k, d):
    """Per-patch 'same' convolution, incl. shifts longer than a patch and a single patch."""
    torch.manual_seed(0)
    x = torch.randn(2, P, L, dtype=torch.double, requires_grad=True)  # (C_in, P, L)
    w = torch.randn(3, 2, k, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    ref = F.conv1d(x.transpose(0, 1), w, b, padding=d * (k - 1) // 2, dilation=d).transpose(0, 1)
    assert torch.allclose(PatchConv.apply(x, w, b, d), ref, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, w, b: PatchConv.apply(x, w, b, d), (x, w, b))


@pytest.mark.parametrize("shape", [(5, 6), (2, 3, 6)])
def test_recomputed_gated_mlp_equals_autograd_and_gradcheck(shape):
    torch.manual_seed(0)
    d, h = shape[-1], 8
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    w_in = torch.randn(2 * h, d, dtype=torch.double, requires_grad=True)
    b_in = torch.randn(2 * h, dtype=torch.double, requires_grad=True)
    w_out = torch.randn(d, h, dtype=torch.double, requires_grad=True)
    b_out = torch.randn(d, dtype=torch.double, requires_grad=True)
    args = (x, w_in, b_in, w_out, b_out)
    fast, plain = gated_mlp(*args, recompute=True), gated_mlp(*args, recompute=False)
    value, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
    assert torch.allclose(fast, F.linear(value * F.gelu(gate), w_out, b_out), atol=1e-12)
    assert torch.allclose(fast, plain, atol=1e-12)
    assert fast.grad_fn is not plain.grad_fn and "Recomputed" in type(fast.grad_fn).__name__
    assert torch.autograd.gradcheck(lambda *a: gated_mlp(*a, recompute=True), args)


def test_recompute_equals_torch_checkpoint():
    """One-node recomputation = torch.utils.checkpoint: same output, same input and parameter
    gradients, and parameters that need no gradient get none."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.GELU(), torch.nn.Linear(12, 4))
    net[0].requires_grad_(False)
    x = torch.randn(9, 6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    params = tuple(net.parameters())
    ya = Recompute.apply(xa, net, *params)
    yb = checkpoint(net, xb, use_reentrant=False)
    assert torch.allclose(ya, yb)
    g = torch.randn_like(ya)
    wanted = [p for p in params if p.requires_grad]
    for u, v in zip(torch.autograd.grad(ya, [xa, *wanted], g), torch.autograd.grad(yb, [xb, *wanted], g)):
        assert torch.allclose(u, v, atol=1e-6)
    ya = Recompute.apply(xa, net, *params)
    ya.sum().backward()
    assert net[0].weight.grad is None and net[2].weight.grad is not None
