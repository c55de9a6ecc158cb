"""Shared layers: the attention function, RoPE, norms and transformer blocks."""

from neurofm.nn.attention import attention, attention_backend, varlen_attention

__all__ = ["attention", "attention_backend", "varlen_attention"]
