"""Shared layers: the attention function, RoPE, norms and transformer blocks."""

from neurofm.nn.attention import Packed, attention, attention_backend, pack, unpack, varlen_attention, varlen_is_free

__all__ = ["Packed", "attention", "attention_backend", "pack", "unpack", "varlen_attention", "varlen_is_free"]
