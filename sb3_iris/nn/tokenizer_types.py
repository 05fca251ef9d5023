"""The encoding a tokenizer's quantiser returns (shared by :mod:`sb3_iris.nn.tokenizer` and its quantisers)."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TokenizerEncoding"]


class TokenizerEncoding(NamedTuple):
    """Output of :meth:`Tokenizer.encode`.

    :param z: continuous encoder output, ``(B, K, E)``
    :param z_quantized: nearest codebook vectors with straight-through gradient, ``(B, K, E)``
    :param tokens: codebook indices, ``(B, K)`` int64
    """

    z: torch.Tensor
    z_quantized: torch.Tensor
    tokens: torch.Tensor
