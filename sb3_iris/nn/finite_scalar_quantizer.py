"""Finite scalar quantisation (FSQ; Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024).

Not in IRIS, which uses a learned codebook (:class:`sb3_iris.nn.tokenizer.VectorQuantizer`). FSQ has no codebook:
each of the ``len(levels)`` latent dimensions is bounded with ``tanh`` and rounded to one of ``levels[i]``
integer values, with a straight-through gradient. The token is the mixed-radix number of those digits, so the
vocabulary is ``prod(levels)``. There is nothing to collapse, restart or commit to, which makes it a robust
choice where every distinct patch must keep its own code (MinAtar's small synthetic grids).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sb3_iris.nn.tokenizer_types import TokenizerEncoding

__all__ = ["FiniteScalarQuantizer", "check_fsq_levels"]


def check_fsq_levels(levels: tuple[int, ...], vocab_size: int, embed_dim: int) -> None:
    """Raise ``ValueError`` unless ``levels`` are integers >= 2 that match ``vocab_size`` and ``embed_dim``.

    :param levels: quantisation levels per latent dimension
    :param vocab_size: the tokenizer's vocabulary size, which must be ``prod(levels)``
    :param embed_dim: the tokenizer's latent dimension, which must be ``len(levels)``
    """
    if not all(isinstance(level, int) and not isinstance(level, bool) and level >= 2 for level in levels):
        raise ValueError(f"fsq_levels={levels!r} must be integers >= 2, e.g. (5, 5, 5)")
    if vocab_size != math.prod(levels) or embed_dim != len(levels):
        raise ValueError(
            f"fsq_levels={levels!r} needs vocab_size={math.prod(levels)} and embed_dim={len(levels)} "
            f"(got vocab_size={vocab_size}, embed_dim={embed_dim})"
        )


class FiniteScalarQuantizer(nn.Module):
    """Round each latent dimension to a few levels; the token is the mixed-radix number of the digits.

    Same interface as :class:`sb3_iris.nn.tokenizer.VectorQuantizer`. Dimension ``i`` takes the integer values
    ``-(L // 2) .. (L - 1) - L // 2`` with ``L = levels[i]`` (for odd ``L``, symmetric around 0), reached by
    ``tanh(z + shift) * (L - 1) / 2 - offset`` (``offset = 0.5`` for even ``L``, ``shift`` so that 0 maps to 0).
    The quantised vector handed to the decoder is the integers divided by ``L // 2``, in ``[-1, 1]``.

    :param levels: levels per latent dimension (at least 2 each); ``embed_dim = len(levels)``
    """

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        check_fsq_levels(tuple(levels), math.prod(levels), len(levels))
        self.vocab_size = math.prod(levels)
        self.embed_dim = len(levels)
        levels_tensor = torch.tensor(levels, dtype=torch.long)
        # Plain attributes, not buffers: derived from the config, so state dicts carry nothing new.
        self.levels = levels_tensor
        self.basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), levels_tensor[:-1]]), dim=0)

    def _digits(self, z: torch.Tensor) -> torch.Tensor:
        """Bounded and rounded ``z`` (integers as floats, straight-through gradient), ``(..., E)``."""
        levels = self.levels.to(z.device, torch.float32)
        half_width = (levels - 1) / 2
        offset = torch.where(self.levels.to(z.device) % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_width)
        bounded = torch.tanh(z.float() + shift) * half_width - offset
        return bounded + (bounded.round() - bounded).detach()

    def _scale(self, device: torch.device) -> torch.Tensor:
        return (self.levels // 2).to(device, torch.float32)

    def _tokens_from_digits(self, digits: torch.Tensor) -> torch.Tensor:
        shifted = digits.detach().round().long() + (self.levels // 2).to(digits.device)
        return (shifted * self.basis.to(digits.device)).sum(dim=-1)

    def nearest_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Token of each vector of ``z`` (``(..., E)`` -> ``(...)``)."""
        return self._tokens_from_digits(self._digits(z))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Quantised vectors of ``tokens`` (``(...)`` -> ``(..., E)``), in ``[-1, 1]``."""
        levels, basis = self.levels.to(tokens.device), self.basis.to(tokens.device)
        digits = (tokens.unsqueeze(-1) // basis) % levels - levels // 2
        return digits.float() / self._scale(tokens.device)

    def forward(self, z: torch.Tensor) -> TokenizerEncoding:
        """Quantise ``z`` (``(B, K, E)``) with a straight-through gradient."""
        digits = self._digits(z)
        z_quantized = (digits / self._scale(z.device)).to(z.dtype)
        return TokenizerEncoding(z, z_quantized, self._tokens_from_digits(digits))

    def commitment_loss(self, encoding: TokenizerEncoding) -> torch.Tensor:
        """Zero: FSQ has no codebook to learn or commit to (kept for the quantiser interface)."""
        return encoding.z.new_zeros(())
