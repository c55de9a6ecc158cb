"""RMSNorm and the parameter-free LayerNorm over time."""

import torch

from neurofm.nn.norms import RMSNorm, TimeLayerNorm, time_layer_norm


def test_rms_norm_matches_definition_and_handles_zeros():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 5, 8)
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), ref, atol=1e-5)
    assert torch.equal(norm(torch.zeros(2, 8)), torch.zeros(2, 8))  # padded tokens stay zero, no NaN
    assert sum(p.numel() for p in norm.parameters()) == 8
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_time_layer_norm_is_parameter_free_and_over_time():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 64) * 3 + 2
    y = time_layer_norm(x)
    assert torch.allclose(y.mean(-1), torch.zeros(4, 5), atol=1e-5)
    assert torch.allclose(y.std(-1, unbiased=False), torch.ones(4, 5), atol=1e-3)
    assert torch.equal(time_layer_norm(torch.zeros(2, 3, 10)), torch.zeros(2, 3, 10))
    assert list(TimeLayerNorm().parameters()) == []
    assert torch.allclose(TimeLayerNorm()(x), y)
