"""Hand-written kernels for BaRISTA on CPU, each behind a switch, each with a plain PyTorch
reference that tests compare it with (values and gradients: ``tests/nn/test_kernels.py``).

* :class:`PatchConv` -- the CNN tokenizer's 'same' dilated 1-D convolution of many patches,
  one matrix product per kernel tap and a hand-written backward. Reference: ``nn.Conv1d``
  (``F.conv1d``) per patch.
* :class:`RecomputedGatedMLP` -- ``W_out (value * GELU(gate))`` keeping only its input for the
  backward pass. Reference: the same expression through autograd.
* :class:`Recompute` -- activation checkpoint of a function as one autograd node. Reference:
  :func:`torch.utils.checkpoint.checkpoint`.

The switch is :attr:`neurofm.models.barista.BaristaConfig.fast_kernels` (default on: these
are several times faster on CPU and change no number beyond float round-off); ``False`` runs
the references. The tokenizer uses :class:`PatchConv` and :class:`Recompute` on CPU only: on
CUDA each per-tap product is a kernel launch, and cuDNN's convolution is far faster there
(:meth:`neurofm.models.barista.CNNTokenizer._use_fast`). The kernels know nothing about the models.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PatchConv", "RecomputedGatedMLP", "Recompute", "patch_conv1d", "gated_mlp"]


# --------------------------------------------------------------------------------------------
# patch convolution
# --------------------------------------------------------------------------------------------


def _shifted_terms(kernel: int, dilation: int, L: int) -> list[tuple[int, int]]:
    """``(tap j, shift s_j)`` of the off-centre taps that reach inside a patch of ``L`` samples."""
    centre = (kernel - 1) // 2
    return [(j, (j - centre) * dilation) for j in range(kernel)
            if j != centre and abs((j - centre) * dilation) < L]


def _shift_mm(out: Tensor, w: Tensor, src: Tensor, s: int, P: int, L: int) -> None:
    """``out[:, t] += w @ src[:, t + s]`` for every sample ``t`` whose ``t + s`` lies in the
    same patch (``out``/``src`` are ``(C, P*L)``; contributions from beyond a patch edge are 0).

    One matrix product over the flattened samples reads ``src`` through a column-offset view
    (no copy); it also adds, at the ``|s|`` edge samples of each patch, terms from the
    neighbouring patch, which a small product over just those samples then takes away.
    """
    N = P * L
    if s > 0:
        out[:, :N - s].addmm_(w, src[:, s:])
        if P > 1:  # samples L-s.. of patch p received patch p+1's first s samples
            wrong = w @ src.view(-1, P, L)[:, 1:, :s].reshape(src.shape[0], -1)
            out.view(-1, P, L)[:, :-1, L - s:] -= wrong.view(-1, P - 1, s)
    else:
        a = -s
        out[:, a:].addmm_(w, src[:, :N - a])
        if P > 1:  # samples ..a of patch p received patch p-1's last a samples
            wrong = w @ src.view(-1, P, L)[:, :-1, L - a:].reshape(src.shape[0], -1)
            out.view(-1, P, L)[:, 1:, :a] -= wrong.view(-1, P - 1, a)


def _shift_mm_weight(g: Tensor, x: Tensor, s: int, P: int, L: int) -> Tensor:
    """``sum_t g[:, t] x[:, t + s]^T`` over the samples ``t`` whose ``t + s`` is in the same patch."""
    N = P * L
    if s > 0:
        grad = g[:, :N - s] @ x[:, s:].t()
        if P > 1:
            gw = g.view(-1, P, L)[:, :-1, L - s:].reshape(g.shape[0], -1)
            xw = x.view(-1, P, L)[:, 1:, :s].reshape(x.shape[0], -1)
            grad -= gw @ xw.t()
    else:
        a = -s
        grad = g[:, a:] @ x[:, :N - a].t()
        if P > 1:
            gw = g.view(-1, P, L)[:, 1:, :a].reshape(g.shape[0], -1)
            xw = x.view(-1, P, L)[:, :-1, L - a:].reshape(x.shape[0], -1)
            grad -= gw @ xw.t()
    return grad


class PatchConv(torch.autograd.Function):
    """'Same' dilated 1-D convolution of many patches, channel-major ``(C, P, L)`` layout.

    With 1-5 channels, ``conv1d`` on CPU spends its time in layout handling and its backward
    is slow. Here each kernel tap is one matrix product ``W_j (C_out, C_in) @ x (C_in, P*L)``
    over all samples of all patches, read at an offset of ``s_j`` samples (a view: no im2col
    copy), with a small correction at each patch's edges (:func:`_shift_mm`). The backward
    pass is built the same way by hand. Equal to ``F.conv1d(x.transpose(0, 1), w, b,
    padding=dilation * (k - 1) // 2, dilation=dilation)`` per patch; keeps only ``x``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):  # computes in x's dtype (bf16 under autocast)
            return PatchConv._forward(ctx, x, weight, bias, dilation)

    @staticmethod
    def _forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
        c_in, P, L = x.shape
        c_out, _, k = weight.shape
        x = x.contiguous()
        w = weight.to(x.dtype)
        X = x.view(c_in, P * L)
        centre = (k - 1) // 2
        out = torch.addmm(bias[:, None].to(x.dtype), w[:, :, centre], X)
        for j, s in _shifted_terms(k, dilation, L):
            _shift_mm(out, w[:, :, j], X, s, P, L)
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        return out.view(c_out, P, L)

    @staticmethod
    def backward(ctx, grad: Tensor):
        with torch.autocast(grad.device.type, enabled=False):
            return PatchConv._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        c_in, P, L = x.shape
        c_out, _, k = weight.shape
        centre = (k - 1) // 2
        taps = _shifted_terms(k, ctx.dilation, L)
        G = grad.contiguous().to(x.dtype).view(c_out, P * L)  # under autocast: bf16 activations, fp32 weights
        X = x.view(c_in, P * L)
        w = weight.to(x.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # grad_x[u] = sum_j W_j^T g[u - s_j]: the same shifted products with W transposed, shift reversed
            gx = w[:, :, centre].t() @ G
            for j, s in taps:
                _shift_mm(gx, w[:, :, j].t(), G, -s, P, L)
            grad_x = gx.view(c_in, P, L)
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            grad_w[:, :, centre] = G @ X.t()
            for j, s in taps:
                grad_w[:, :, j] = _shift_mm_weight(G, X, s, P, L)
        if ctx.needs_input_grad[2]:
            grad_b = G.sum(1, dtype=torch.float32).to(weight.dtype)
        return grad_x, grad_w, grad_b, None


def patch_conv1d(x: Tensor, weight: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """``(C_in, P, L)`` channel-major patches -> ``(C_out, P, L)``: :class:`PatchConv`."""
    return PatchConv.apply(x, weight, bias, dilation)


# --------------------------------------------------------------------------------------------
# gated MLP
# --------------------------------------------------------------------------------------------


class RecomputedGatedMLP(torch.autograd.Function):
    """``W_out (value * GELU(gate)) + b_out`` with ``[value, gate] = W_in x + b_in``, keeping
    only ``x`` for the backward pass and recomputing the 8d-wide hidden layer there.

    The hidden activations are 12x the block's input per token; storing them was most of
    the backbone's activation memory. Recomputing costs one ``d x 8d`` matrix product per
    layer (under a tenth of the layer's time: attention dominates).
    """

    @staticmethod
    def forward(ctx, x, w_in, b_in, w_out, b_out):
        ctx.save_for_backward(x, w_in, b_in, w_out)
        ctx.device_type = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(ctx.device_type), torch.get_autocast_dtype(ctx.device_type))
        value, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
        return F.linear(value * F.gelu(gate), w_out, b_out)

    @staticmethod
    def backward(ctx, grad):
        x, w_in, b_in, w_out = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        with torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            value, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
            act = F.gelu(gate)
            hidden = value * act
            g = grad.reshape(-1, grad.shape[-1])
            grad_hidden = (g @ w_out.to(g.dtype)).view_as(hidden)
            grad_w_out = g.t() @ hidden.reshape(-1, hidden.shape[-1]).to(g.dtype)
            grad_b_out = g.sum(0)
            grad_value = grad_hidden * act
            grad_gate = torch.ops.aten.gelu_backward(grad_hidden * value, gate)
            grad_u = torch.cat((grad_value, grad_gate), dim=-1).reshape(-1, w_in.shape[0])
            x2 = x.reshape(-1, x.shape[-1])
            grad_x = (grad_u @ w_in.to(grad_u.dtype)).view_as(x) if ctx.needs_input_grad[0] else None
            grad_w_in = grad_u.t() @ x2.to(grad_u.dtype)
            grad_b_in = grad_u.sum(0)
        return (None if grad_x is None else grad_x.to(x.dtype), grad_w_in.to(w_in.dtype), grad_b_in.to(b_in.dtype),
                grad_w_out.to(w_out.dtype), grad_b_out.to(w_out.dtype))


def gated_mlp(x: Tensor, w_in: Tensor, b_in: Tensor, w_out: Tensor, b_out: Tensor, *, recompute: bool) -> Tensor:
    """``W_out (value * GELU(gate)) + b_out``, ``[value, gate] = W_in x + b_in``; ``recompute``
    (and gradients on): :class:`RecomputedGatedMLP`, else plain autograd (the reference)."""
    if recompute and torch.is_grad_enabled():
        return RecomputedGatedMLP.apply(x, w_in, b_in, w_out, b_out)
    value, gate = F.linear(x, w_in, b_in).chunk(2, dim=-1)
    return F.linear(value * F.gelu(gate), w_out, b_out)


# --------------------------------------------------------------------------------------------
# recomputation
# --------------------------------------------------------------------------------------------


class Recompute(torch.autograd.Function):
    """Activation checkpoint of ``fn(x)`` (``fn`` reads ``params``) as one autograd node: the
    forward runs without building a graph and keeps only ``x``; the backward runs ``fn`` again
    with gradients (under the forward's autocast state) and back-propagates through it.

    (``torch.utils.checkpoint`` in its non-reentrant form keeps every op's autograd node
    alive until the backward; with hundreds of small chunks those nodes interleave with the
    large freed activations on the C heap and glibc then keeps gigabytes of freed memory
    mapped. One node per chunk avoids that.)

    Use: ``Recompute.apply(x, fn, *params)`` with every tensor ``fn`` reads that may need a
    gradient in ``params``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor], *params: Tensor) -> Tensor:
        ctx.fn = fn
        ctx.device_type = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(ctx.device_type), torch.get_autocast_dtype(ctx.device_type))
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad
        inputs = x.detach().requires_grad_(needs[0])
        wanted = ([inputs] if needs[0] else []) + [p for p, n in zip(params, needs[2:]) if n]
        enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            out = ctx.fn(inputs)
        got = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        grad_x = next(got) if needs[0] else None
        return (grad_x, None, *[next(got) if n else None for n in needs[2:]])
