"""A minGPT-style causal transformer (pre-LayerNorm, GELU) with a preallocated key/value cache.

The full-sequence path (training) and the cached path (imagination, one or a few tokens at a time)
share the same weights and attention code; ``F.scaled_dot_product_attention`` picks the fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from sb3_iris.nn.config_checks import check_ints, check_reals


@dataclass
class TransformerConfig:
    """Size of the transformer (defaults: the published IRIS world model).

    :param tokens_per_block: tokens per environment step (16 observation tokens + 1 action token)
    :param max_blocks: context length in steps (20)
    :param num_layers: transformer blocks (10)
    :param num_heads: attention heads (4)
    :param embed_dim: width (256)
    :param embed_dropout: dropout on the summed embeddings (0.1)
    :param residual_dropout: dropout on each residual branch (0.1)
    :param attention_dropout: dropout on attention weights (0.1)
    """

    tokens_per_block: int = 17
    max_blocks: int = 20
    num_layers: int = 10
    num_heads: int = 4
    embed_dim: int = 256
    embed_dropout: float = 0.1
    residual_dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        check_ints(self, ("tokens_per_block", "max_blocks", "num_layers", "num_heads", "embed_dim"))
        check_reals(self, ("embed_dropout", "residual_dropout", "attention_dropout"), high=1.0, high_open=True)

    @property
    def max_tokens(self) -> int:
        return self.tokens_per_block * self.max_blocks

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible configurations."""
        if self.num_heads >= 1 and self.embed_dim % self.num_heads != 0:
            raise ValueError(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        for name in ("tokens_per_block", "max_blocks", "num_layers", "num_heads", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


class KVCache:
    """Preallocated keys and values of every layer for a batch of sequences decoded in lockstep.

    Writing ``T`` new tokens costs no allocation: they go into ``keys[layer, :, :, size:size + T]``.

    :param num_layers: number of transformer layers
    :param batch_size: number of sequences
    :param num_heads: attention heads
    :param max_tokens: capacity in tokens
    :param head_dim: per-head dimension
    :param device: torch device
    :param dtype: storage dtype
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_tokens: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (num_layers, batch_size, num_heads, max_tokens, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_tokens = max_tokens
        self.size = 0
        #: whether ``keys``/``values`` are marked as static addresses for CUDA graphs (see OneTokenStepper)
        self.static_addresses = False

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def reset(self) -> None:
        """Forget all cached tokens (the memory is kept and reused)."""
        self.size = 0

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``keys``/``values`` ``(B, H, T, Dh)`` of ``layer`` after the cached ones and return all of them.

        :return: keys and values ``(B, H, size + T, Dh)`` (views into the cache)
        """
        n_new = keys.shape[2]
        end = self.size + n_new
        if end > self.max_tokens:
            raise RuntimeError(f"KV cache overflow: {self.size} cached + {n_new} new > max_tokens={self.max_tokens}")
        self.keys[layer, :, :, self.size : end] = keys
        self.values[layer, :, :, self.size : end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = nn.Dropout(config.residual_dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        past = 0
        if cache is not None:
            past = cache.size
            k, v = cache.append(layer, k.to(cache.keys.dtype), v.to(cache.values.dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        dropout = self.attention_dropout if self.training else 0.0
        if t == 1:
            # A single new token may attend to everything before it: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        else:
            # New token i sits at absolute position past + i and sees positions <= past + i.
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.residual_dropout(self.proj(y))

    def forward_one_token(
        self, x: torch.Tensor, cached_keys: torch.Tensor, cached_values: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new token against a full-size cache, with static shapes and without writing to the cache.

        Attention is split into the cached part (a masked product with every cache slot) and the new token's
        own key, so the cache is only read: the caller writes the returned key and value. Equal to
        :meth:`forward` with a cache within float tolerance (a different summation order). Eval mode only.

        :param x: ``(B, 1, D)`` normalised input of the new token
        :param cached_keys: ``(B, H, T_max, Dh)`` keys of this layer (slots at and after the position are ignored)
        :param cached_values: ``(B, H, T_max, Dh)`` values of this layer
        :param visible: ``(T_max,)`` bool, True for the cache slots before the new token's position
        :return: the block output ``(B, 1, D)`` and the new key and value ``(B, H, 1, Dh)``
        """
        b, _, c = x.shape
        q, k, v = self.qkv(x).view(b, 1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scale = self.head_dim**-0.5
        q_cache = q.to(cached_keys.dtype)
        scores_cached = (q_cache @ cached_keys.transpose(-1, -2)) * scale  # (B, H, 1, T_max)
        scores_cached = scores_cached.masked_fill(~visible, float("-inf"))
        score_new = (q_cache * k.to(cached_keys.dtype)).sum(-1, keepdim=True) * scale  # (B, H, 1, 1)
        weights = torch.softmax(torch.cat([scores_cached, score_new], dim=-1).float(), dim=-1)
        max_tokens = cached_keys.shape[2]
        weights_cached = weights[..., :max_tokens].to(cached_values.dtype)
        weights_new = weights[..., max_tokens:].to(cached_values.dtype)
        y = weights_cached @ cached_values + weights_new * v.to(cached_values.dtype)
        y = y.to(x.dtype).transpose(1, 2).reshape(b, 1, c)
        return self.proj(y), k, v


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` with a GELU MLP of width 4x."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_attention = nn.LayerNorm(config.embed_dim)
        self.attention = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.embed_dim, 4 * config.embed_dim),
            nn.GELU(),
            nn.Linear(4 * config.embed_dim, config.embed_dim),
            nn.Dropout(config.residual_dropout),
        )

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attention(self.ln_attention(x), cache, layer)
        return x + self.mlp(self.ln_mlp(x))

    def forward_one_token(
        self, x: torch.Tensor, cached_keys: torch.Tensor, cached_values: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Static-shape one-token pass (see :meth:`CausalSelfAttention.forward_one_token`)."""
        attended, key, value = self.attention.forward_one_token(
            self.ln_attention(x), cached_keys, cached_values, visible
        )
        x = x + attended
        return x + self.mlp(self.ln_mlp(x)), key, value


class Transformer(nn.Module):
    """Stack of causal blocks over already-embedded tokens.

    :param config: transformer size
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.dropout = nn.Dropout(config.embed_dropout)
        self.blocks = nn.ModuleList([TransformerBlock(config) for _ in range(config.num_layers)])
        self.ln_final = nn.LayerNorm(config.embed_dim)

    def new_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype = torch.float32) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_tokens`` tokens."""
        config = self.config
        return KVCache(
            config.num_layers,
            batch_size,
            config.num_heads,
            config.max_tokens,
            config.embed_dim // config.num_heads,
            device,
            dtype,
        )

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Run the blocks on embeddings ``x`` ``(B, T, D)``; with a cache, ``x`` continues the cached tokens.

        :return: hidden states ``(B, T, D)`` after the final LayerNorm
        """
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.size += x.shape[1]
        return self.ln_final(x)

    def forward_one_token(
        self, x: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One embedded token at ``position`` against a full :class:`KVCache`'s tensors, with static shapes.

        Every shape is independent of the position, so the pass can be captured in a CUDA graph or compiled
        once. The cache is only read; the caller writes the returned keys and values at ``position``.
        Eval mode only (no dropout).

        :param x: ``(B, 1, D)`` embedding of the new token
        :param position: 0-d long tensor, the new token's absolute position (= the number of cached tokens)
        :param keys: ``(L, B, H, T_max, Dh)`` the cache's keys
        :param values: ``(L, B, H, T_max, Dh)`` the cache's values
        :return: hidden state ``(B, 1, D)`` after the final LayerNorm, new keys and values ``(L, B, H, 1, Dh)``
        """
        visible = torch.arange(keys.shape[3], device=x.device) < position
        new_keys, new_values = [], []
        for layer, block in enumerate(self.blocks):
            x, key, value = block.forward_one_token(x, keys[layer], values[layer], visible)
            new_keys.append(key)
            new_values.append(value)
        return self.ln_final(x), torch.stack(new_keys), torch.stack(new_values)
