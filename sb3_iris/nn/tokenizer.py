"""Discrete autoencoders (tokenizers) that turn observations into a few integer tokens and back.

``ConvTokenizer`` is the VQ autoencoder of IRIS for images (64x64 RGB -> 4x4 = 16 tokens from a
512-entry codebook in the published configuration). ``MlpTokenizer`` does the same for 1-D vector
observations with MLPs. Both share ``VectorQuantizer`` and the ``Tokenizer`` interface used by the
world model, the imagination loop and the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sb3_iris.nn.config_checks import check_bools, check_int_tuples, check_ints, check_reals, check_scales
from sb3_iris.nn.finite_scalar_quantizer import FiniteScalarQuantizer, check_fsq_levels
from sb3_iris.nn.tokenizer_types import TokenizerEncoding


class TokenizerLosses(NamedTuple):
    """Losses of one tokenizer update (all scalars); ``total`` is what the optimiser minimises."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    commitment: torch.Tensor
    perceptual: torch.Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantisation with a straight-through estimator (no EMA), as in IRIS.

    :param vocab_size: number of codebook entries
    :param embed_dim: dimension of each codebook vector
    :param beta: weight of the commitment term ``beta * ||z - sg(zq)||^2`` (IRIS: 1)
    :param restart_unused_codes: not in IRIS (False). In training mode, keep a moving average of how often each
        code is chosen (decay ``usage_decay``); a code whose average falls below ``usage_threshold`` is moved onto a
        badly represented encoder output of the current batch: one whose squared distance from its nearest code is
        above ``error_threshold`` times the batch's mean squared norm, drawn with probability proportional to that
        distance. Against codebook collapse, where a few codes take every input and the others are never chosen
        again. Once every input is represented, nothing is restarted, so the codes stop moving.
    :param usage_decay: decay of the usage moving average
    :param usage_threshold: average uses per batch below which a code counts as unused
    :param error_threshold: relative squared quantisation error above which an input counts as badly represented
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        beta: float = 1.0,
        restart_unused_codes: bool = False,
        usage_decay: float = 0.99,
        usage_threshold: float = 0.01,
        error_threshold: float = 0.01,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.beta = beta
        self.codebook = nn.Embedding(vocab_size, embed_dim)
        # IRIS initialises the codebook with U(-1/V, 1/V).
        nn.init.uniform_(self.codebook.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        self.restart_unused_codes = restart_unused_codes
        self.usage_decay = usage_decay
        self.usage_threshold = usage_threshold
        self.error_threshold = error_threshold
        if restart_unused_codes:
            self.register_buffer("code_usage", torch.ones(vocab_size))

    def nearest_tokens(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each vector of ``z`` (``(..., E)`` -> ``(...)``)."""
        flat = z.reshape(-1, self.embed_dim).float()
        codebook = self.codebook.weight.float()
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
        distances = codebook.pow(2).sum(dim=1) - 2.0 * flat @ codebook.t()
        return distances.argmin(dim=1).view(z.shape[:-1])

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of ``tokens`` (``(...)`` -> ``(..., E)``)."""
        return self.codebook(tokens)

    def forward(self, z: torch.Tensor) -> TokenizerEncoding:
        """Quantise ``z`` (``(B, K, E)``) with a straight-through gradient."""
        tokens = self.nearest_tokens(z)
        if self.restart_unused_codes and self.training:
            self._restart_unused(z.detach(), tokens)
        z_q = self.embed(tokens).to(z.dtype)
        z_straight_through = z + (z_q - z).detach()
        return TokenizerEncoding(z, z_straight_through, tokens)

    @torch.no_grad()
    def _restart_unused(self, z: torch.Tensor, tokens: torch.Tensor) -> None:
        """Update the usage averages with ``tokens`` and move the unused codes onto badly represented ``z``."""
        counts = torch.bincount(tokens.reshape(-1), minlength=self.vocab_size).to(self.code_usage.dtype)
        self.code_usage.mul_(self.usage_decay).add_(counts, alpha=1.0 - self.usage_decay)
        unused = torch.nonzero(self.code_usage < self.usage_threshold).squeeze(1)
        if unused.numel() == 0:
            return
        flat = z.reshape(-1, self.embed_dim).float()
        errors = (flat - self.codebook.weight[tokens.reshape(-1)].float()).pow(2).sum(1)
        errors = torch.where(errors > self.error_threshold * flat.pow(2).sum(1).mean(), errors, 0.0)
        if not bool((errors > 0).any()):
            return  # every input is well represented: nothing to restart onto
        chosen = torch.multinomial(errors, unused.numel(), replacement=True)
        self.codebook.weight[unused] = flat[chosen].to(self.codebook.weight.dtype)
        self.code_usage[unused] = 1.0

    def commitment_loss(self, encoding: TokenizerEncoding) -> torch.Tensor:
        """``||sg(z) - zq||^2 + beta ||z - sg(zq)||^2`` (VQ-VAE codebook + commitment terms)."""
        z_q = self.embed(encoding.tokens)
        z = encoding.z.float()
        return F.mse_loss(z_q, z.detach()) + self.beta * F.mse_loss(z, z_q.detach())


def codebook_usage(tokens: torch.Tensor, vocab_size: int) -> tuple[float, float]:
    """Fraction of codebook entries used by ``tokens`` and the perplexity of their distribution.

    :param tokens: integer tokens of any shape
    :param vocab_size: size of the codebook
    :return: (fraction of codes used, perplexity ``exp(H)``)
    """
    counts = torch.bincount(tokens.reshape(-1).cpu(), minlength=vocab_size).float()
    probs = counts / counts.sum().clamp(min=1.0)
    entropy = -(probs * torch.log(probs.clamp(min=1e-12))).sum()
    return float((counts > 0).float().mean()), float(entropy.exp())


class Tokenizer(nn.Module):
    """Common interface of the tokenizers.

    Observations given to :meth:`encode` are *preprocessed* tensors (see :meth:`preprocess`);
    :meth:`decode` returns tensors in the same preprocessed space.

    :param vocab_size: codebook size
    :param embed_dim: codebook vector dimension
    :param tokens_per_obs: number of tokens per observation (K)
    :param beta: commitment weight
    :param restart_unused_codes: restart codes that fall out of use (see :class:`VectorQuantizer`; not in IRIS)
    :param fsq_levels: empty: the learned codebook of IRIS (:class:`VectorQuantizer`); otherwise finite scalar
        quantisation with these levels per latent dimension (:class:`FiniteScalarQuantizer`; not in IRIS), which
        needs ``vocab_size = prod(fsq_levels)`` and ``embed_dim = len(fsq_levels)``
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        tokens_per_obs: int,
        beta: float = 1.0,
        restart_unused_codes: bool = False,
        fsq_levels: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.tokens_per_obs = tokens_per_obs
        self.quantizer: nn.Module
        if fsq_levels:
            self.quantizer = FiniteScalarQuantizer(tuple(fsq_levels))
        else:
            self.quantizer = VectorQuantizer(vocab_size, embed_dim, beta, restart_unused_codes)

    def preprocess(self, observations: torch.Tensor) -> torch.Tensor:
        """Map raw observations (as stored in the replay) to the network's input space."""
        raise NotImplementedError

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder: preprocessed observations ``(B, ...)`` -> ``(B, K, E)``."""
        raise NotImplementedError

    def decode(self, z_quantized: torch.Tensor) -> torch.Tensor:
        """Decoder: ``(B, K, E)`` -> preprocessed observations ``(B, ...)``."""
        raise NotImplementedError

    def reconstruction_loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (pixel/feature reconstruction loss, perceptual loss)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> TokenizerEncoding:
        """Encode preprocessed observations into tokens.

        :param x: preprocessed observations ``(B, ...)``
        """
        return self.quantizer(self.encode_continuous(x))

    def to_valid_range(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp decoder outputs to the range of preprocessed observations (identity where it has none)."""
        return x

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode tokens ``(B, K)`` to preprocessed observations, clamped to their valid range.

        This is what the actor-critic sees (in imagination, at burn-in and when acting); the IRIS reference
        clamps every such frame too. The training loss uses the raw :meth:`decode`.
        """
        return self.to_valid_range(self.decode(self.quantizer.embed(tokens)))

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, K)`` of preprocessed observations, without gradient."""
        return self.quantizer.nearest_tokens(self.encode_continuous(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode then decode preprocessed observations without gradient (what the actor sees)."""
        return self.decode_tokens(self.tokenize(x))

    def compute_loss(self, x: torch.Tensor) -> tuple[TokenizerLosses, torch.Tensor]:
        """Tokenizer training loss on a batch of preprocessed observations.

        :param x: preprocessed observations ``(B, ...)``
        :return: the losses and the tokens of the batch (for codebook statistics)
        """
        encoding = self.encode(x)
        reconstruction = self.decode(encoding.z_quantized)
        commitment = self.quantizer.commitment_loss(encoding)
        reconstruction_loss, perceptual = self.reconstruction_loss(x, reconstruction)
        total = reconstruction_loss + commitment + perceptual
        return TokenizerLosses(total, reconstruction_loss, commitment, perceptual), encoding.tokens


# --------------------------------------------------------------------------------------------------
# Convolutional VQ autoencoder (images)
# --------------------------------------------------------------------------------------------------


@dataclass
class ConvTokenizerConfig:
    """Configuration of :class:`ConvTokenizer` (defaults: the published IRIS tokenizer).

    :param resolution: input height = width
    :param in_channels: image channels
    :param base_channels: channels of the first level
    :param channel_multipliers: one multiplier per resolution level; ``len - 1`` downsamplings
    :param encoder_res_blocks: residual blocks per level in the encoder (decoder uses one more)
    :param attention_resolutions: resolutions at which spatial self-attention follows each block
    :param z_channels: channels of the encoder output before the 1x1 projection to ``embed_dim``
    :param embed_dim: codebook vector dimension
    :param vocab_size: codebook size
    :param dropout: dropout in residual blocks
    :param beta: commitment weight
    :param l1_weight: weight of the L1 reconstruction term
    :param l2_weight: weight of the L2 reconstruction term (0 in IRIS, used by Delta-IRIS)
    :param perceptual_weight: weight of the LPIPS term (IRIS: 1; needs locally cached weights)
    :param local_patches: encode and decode every token's image patch on its own (not in IRIS; False: the
        published U-Net-style encoder and decoder, whose receptive fields span the whole image). With True, the
        encoder is a patch embedding (a convolution whose kernel and stride are the patch size) followed by
        ``encoder_res_blocks`` 1x1 convolutions, and the decoder mirrors it, with ``base_channels *
        channel_multipliers[-1]`` hidden channels. A token's code then depends only on its own patch: equal
        patches get equal codes wherever they are and whatever surrounds them, so the world model predicts
        local content instead of codes that also encode the rest of the frame (for small synthetic grids
        such as MinAtar's). ``attention_resolutions`` and ``dropout`` do not apply then.
    :param restart_unused_codes: restart codes that fall out of use during training (see :class:`VectorQuantizer`;
        not in IRIS)
    :param foreground_weight: weight of the L1 and L2 errors at the pixels that are not black in the target (any
        channel above the minimum, -1), relative to black ones (1: unweighted, IRIS). For small synthetic frames on a
        black background, such as MinAtar's, where a one-pixel ball is 1/256 of the loss and is otherwise dropped
    :param fsq_levels: empty (IRIS): a learned codebook of ``vocab_size`` vectors of ``embed_dim``. Otherwise finite
        scalar quantisation (:class:`FiniteScalarQuantizer`; not in IRIS) with these levels per latent dimension;
        then ``vocab_size`` must be ``prod(fsq_levels)``, ``embed_dim`` must be ``len(fsq_levels)``, ``beta`` does
        not apply and ``restart_unused_codes`` must be False (there is no codebook)
    """

    resolution: int = 64
    in_channels: int = 3
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 1, 1, 1, 1)
    encoder_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (8, 16)
    z_channels: int = 512
    embed_dim: int = 512
    vocab_size: int = 512
    dropout: float = 0.0
    beta: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0
    local_patches: bool = False
    restart_unused_codes: bool = False
    foreground_weight: float = 1.0
    fsq_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_bools(self, ("local_patches", "restart_unused_codes"))
        self.fsq_levels = tuple(self.fsq_levels)
        if self.fsq_levels:
            check_fsq_levels(self.fsq_levels, self.vocab_size, self.embed_dim)
            if self.restart_unused_codes:
                raise ValueError("restart_unused_codes=True needs a codebook; fsq_levels has none (set one of them)")
        check_ints(self, ("resolution", "in_channels", "base_channels", "encoder_res_blocks", "z_channels"))
        check_ints(self, ("embed_dim",))
        check_ints(self, ("vocab_size",), minimum=2)
        check_int_tuples(self, ("channel_multipliers", "attention_resolutions"))
        check_reals(self, ("dropout",), high=1.0, high_open=True)
        check_reals(self, ("beta", "l1_weight", "l2_weight", "perceptual_weight"))
        if not self.foreground_weight > 0:
            raise ValueError(f"foreground_weight={self.foreground_weight!r} must be > 0 (1: unweighted, as in IRIS)")

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.channel_multipliers) - 1)

    @property
    def tokens_per_obs(self) -> int:
        return self.latent_resolution**2

    @property
    def patch_size(self) -> int:
        """Height and width of the image patch of one token."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible configurations."""
        levels = len(self.channel_multipliers)
        if levels < 1:
            raise ValueError(f"channel_multipliers={self.channel_multipliers!r}: need at least one level")
        if self.resolution < 1 or self.resolution % 2 ** (levels - 1) != 0:
            raise ValueError(
                f"resolution={self.resolution} must be divisible by 2**(levels-1)={2 ** (levels - 1)} "
                f"(levels=len(channel_multipliers)={levels})"
            )
        if self.base_channels % 32 != 0 and self.base_channels % 8 != 0:
            raise ValueError(f"base_channels={self.base_channels} must be a multiple of 8 (GroupNorm groups)")
        for name in ("vocab_size", "embed_dim", "z_channels", "encoder_res_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else 8
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResidualBlock(nn.Module):
    """GroupNorm + swish + conv3x3, twice, with a (1x1 if needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels of a feature map (residual)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (b, 1, hw, c)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 conv3x3 with the asymmetric (0, 1, 0, 1) padding of the VQGAN family."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by conv3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level_blocks(
    in_channels: int, out_channels: int, n_blocks: int, with_attention: bool, dropout: float
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n_blocks):
        layers.append(ResidualBlock(in_channels if i == 0 else out_channels, out_channels, dropout))
        if with_attention:
            layers.append(SpatialSelfAttention(out_channels))
    return nn.Sequential(*layers)


def _middle_block(channels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        ResidualBlock(channels, channels, dropout),
        SpatialSelfAttention(channels),
        ResidualBlock(channels, channels, dropout),
    )


class ConvEncoder(nn.Module):
    """Image -> ``(B, z_channels, h, w)`` feature map (published layout: 64 -> 32 -> 16 -> 8 -> 4)."""

    def __init__(self, config: ConvTokenizerConfig) -> None:
        super().__init__()
        ch = config.base_channels
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        levels: list[nn.Module] = []
        resolution = config.resolution
        in_ch = ch
        for level, multiplier in enumerate(config.channel_multipliers):
            out_ch = ch * multiplier
            blocks = _level_blocks(
                in_ch, out_ch, config.encoder_res_blocks, resolution in config.attention_resolutions, config.dropout
            )
            if level != len(config.channel_multipliers) - 1:
                blocks.append(Downsample(out_ch))
                resolution //= 2
            levels.append(blocks)
            in_ch = out_ch
        self.levels = nn.Sequential(*levels)
        self.middle = _middle_block(in_ch, config.dropout)
        self.norm_out = _group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, config.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.middle(self.levels(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ConvDecoder(nn.Module):
    """``(B, z_channels, h, w)`` -> image; mirrors :class:`ConvEncoder` with one more block per level."""

    def __init__(self, config: ConvTokenizerConfig) -> None:
        super().__init__()
        ch = config.base_channels
        multipliers = config.channel_multipliers
        in_ch = ch * multipliers[-1]
        resolution = config.latent_resolution
        self.conv_in = nn.Conv2d(config.z_channels, in_ch, 3, padding=1)
        self.middle = _middle_block(in_ch, config.dropout)
        levels: list[nn.Module] = []
        for level in reversed(range(len(multipliers))):
            out_ch = ch * multipliers[level]
            blocks = _level_blocks(
                in_ch, out_ch, config.encoder_res_blocks + 1, resolution in config.attention_resolutions, config.dropout
            )
            if level != 0:
                blocks.append(Upsample(out_ch))
                resolution *= 2
            levels.append(blocks)
            in_ch = out_ch
        self.levels = nn.Sequential(*levels)
        self.norm_out = _group_norm(in_ch)
        self.conv_out = nn.Conv2d(in_ch, config.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.levels(self.middle(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


def _pointwise_stack(in_channels: int, hidden: int, out_channels: int, layers: int) -> list[nn.Module]:
    """``layers`` 1x1 convolutions with SiLU from ``in_channels`` through ``hidden`` to ``out_channels``."""
    modules: list[nn.Module] = []
    for _ in range(layers):
        modules += [nn.Conv2d(in_channels, hidden, 1), nn.SiLU()]
        in_channels = hidden
    modules.append(nn.Conv2d(in_channels, out_channels, 1))
    return modules


class PatchEncoder(nn.Sequential):
    """Image -> ``(B, z_channels, h, w)``, every output position computed from its own patch only."""

    def __init__(self, config: ConvTokenizerConfig) -> None:
        hidden = config.base_channels * config.channel_multipliers[-1]
        patch = config.patch_size
        super().__init__(
            nn.Conv2d(config.in_channels, hidden, patch, stride=patch),
            nn.SiLU(),
            *_pointwise_stack(hidden, hidden, config.z_channels, config.encoder_res_blocks),
        )


class PatchDecoder(nn.Sequential):
    """``(B, z_channels, h, w)`` -> image, every patch decoded from its own latent only."""

    def __init__(self, config: ConvTokenizerConfig) -> None:
        hidden = config.base_channels * config.channel_multipliers[-1]
        patch = config.patch_size
        super().__init__(
            *_pointwise_stack(config.z_channels, hidden, hidden, config.encoder_res_blocks),
            nn.SiLU(),
            nn.ConvTranspose2d(hidden, config.in_channels, patch, stride=patch),
        )


def _weighted_mean(values: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of ``values`` with per-pixel ``weights`` (broadcast over channels), or the plain mean if None."""
    return values.mean() if weights is None else (values * weights).mean()


def load_local_lpips() -> nn.Module:
    """Build an LPIPS(VGG16) module from weights already on this machine, never downloading.

    :raises RuntimeError: if the ``lpips`` package or its VGG16 weights are not available locally
    """
    import os

    try:
        import lpips  # type: ignore[import-not-found]
    except ImportError as error:
        raise RuntimeError(
            "perceptual_weight > 0 needs the 'lpips' package (pip install lpips) and its VGG16 weights cached "
            "locally; set perceptual_weight=0 to train with L1 (+ L2) only"
        ) from error
    hub_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.isdir(hub_dir) and any(name.startswith("vgg16") for name in os.listdir(hub_dir))
    if not cached:
        raise RuntimeError(
            f"perceptual_weight > 0 needs the VGG16 weights in {hub_dir} (no download is attempted); "
            "set perceptual_weight=0 to train with L1 (+ L2) only"
        )
    module = lpips.LPIPS(net="vgg", verbose=False).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class ConvTokenizer(Tokenizer):
    """VQ autoencoder for images: frames in [-1, 1] <-> ``latent_resolution**2`` tokens.

    :param config: architecture and loss weights (defaults: the published IRIS tokenizer, about 4.0M parameters)
    """

    def __init__(self, config: Optional[ConvTokenizerConfig] = None) -> None:
        config = config or ConvTokenizerConfig()
        config.validate()
        super().__init__(
            config.vocab_size,
            config.embed_dim,
            config.tokens_per_obs,
            config.beta,
            config.restart_unused_codes,
            config.fsq_levels,
        )
        self.config = config
        self.encoder = PatchEncoder(config) if config.local_patches else ConvEncoder(config)
        self.pre_quant = nn.Conv2d(config.z_channels, config.embed_dim, 1)
        self.post_quant = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        self.decoder = PatchDecoder(config) if config.local_patches else ConvDecoder(config)
        # Kept out of state_dict and parameters(): pretrained, frozen, optional.
        self._lpips: list[nn.Module] = [load_local_lpips()] if config.perceptual_weight > 0 else []

    def preprocess(self, observations: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` in [0, 255] -> float in [-1, 1]."""
        return observations.float().div(127.5).sub(1.0)

    def to_valid_range(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp decoded images to [-1, 1], the range of preprocessed frames."""
        return x.clamp(-1.0, 1.0)

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """Preprocessed images in [-1, 1] -> uint8 in [0, 255] (for display and logging)."""
        return x.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre_quant(self.encoder(x))  # (B, E, h, w)
        return z.flatten(2).transpose(1, 2)  # (B, h*w, E), tokens in raster order

    def decode(self, z_quantized: torch.Tensor) -> torch.Tensor:
        b, k, e = z_quantized.shape
        side = self.config.latent_resolution
        z = z_quantized.transpose(1, 2).reshape(b, e, side, side)
        return self.decoder(self.post_quant(z))

    def reconstruction_loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        reconstruction = reconstruction.float()
        error = x - reconstruction
        weights = None
        if config.foreground_weight != 1.0:
            foreground = (x > -1.0 + 1e-3).any(dim=1, keepdim=True)
            weights = torch.where(foreground, config.foreground_weight, 1.0)
        loss = config.l1_weight * _weighted_mean(error.abs(), weights)
        if config.l2_weight > 0:
            loss = loss + config.l2_weight * _weighted_mean(error.pow(2), weights)
        perceptual = torch.zeros((), device=x.device)
        if self._lpips:
            lpips_module = self._lpips[0].to(x.device)
            perceptual = config.perceptual_weight * lpips_module(x, reconstruction).mean()
        return loss, perceptual


# --------------------------------------------------------------------------------------------------
# MLP tokenizer (vector observations)
# --------------------------------------------------------------------------------------------------


@dataclass
class MlpTokenizerConfig:
    """Configuration of :class:`MlpTokenizer`.

    :param obs_dim: size of the observation vector
    :param tokens_per_obs: number of tokens per observation (K)
    :param hidden_sizes: hidden layer sizes of the encoder (the decoder mirrors them)
    :param embed_dim: codebook vector dimension
    :param vocab_size: codebook size
    :param beta: commitment weight
    :param l1_weight: weight of the L1 reconstruction term
    :param l2_weight: weight of the L2 reconstruction term
    :param obs_scale: per-feature scale applied before encoding (``x / obs_scale``); the decoder output is in
        the scaled space. ``None``: see ``normalize_observations``.
    :param normalize_observations: when ``obs_scale`` is None, standardise each feature with the mean and std
        of the replay data, fitted once before the first tokenizer update (:meth:`MlpTokenizer.fit_normalization`)
        and saved with the model. Without it, small-scale features (e.g. CartPole's pole angle) are reconstructed
        poorly because the loss weighs every feature in raw units.
    """

    obs_dim: int = 4
    tokens_per_obs: int = 4
    hidden_sizes: tuple[int, ...] = (256, 256)
    embed_dim: int = 64
    vocab_size: int = 512
    beta: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    obs_scale: Optional[list[float]] = field(default=None)
    normalize_observations: bool = True

    def __post_init__(self) -> None:
        check_ints(self, ("obs_dim", "tokens_per_obs", "embed_dim"))
        check_ints(self, ("vocab_size",), minimum=2)
        check_int_tuples(self, ("hidden_sizes",))
        check_reals(self, ("beta", "l1_weight", "l2_weight"))
        check_bools(self, ("normalize_observations",))
        check_scales(self, ("obs_scale",))

    def validate(self) -> None:
        for name in ("obs_dim", "tokens_per_obs", "embed_dim", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.obs_scale is not None and len(self.obs_scale) != self.obs_dim:
            raise ValueError(f"obs_scale has {len(self.obs_scale)} entries, expected obs_dim={self.obs_dim}")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class MlpTokenizer(Tokenizer):
    """VQ autoencoder for 1-D vectors: MLP encoder -> K codebook vectors -> MLP decoder.

    :param config: architecture and loss weights
    """

    def __init__(self, config: Optional[MlpTokenizerConfig] = None) -> None:
        config = config or MlpTokenizerConfig()
        config.validate()
        super().__init__(config.vocab_size, config.embed_dim, config.tokens_per_obs, config.beta)
        self.config = config
        k, e = config.tokens_per_obs, config.embed_dim
        self.encoder = _mlp([config.obs_dim, *config.hidden_sizes, k * e])
        self.decoder = _mlp([k * e, *reversed(config.hidden_sizes), config.obs_dim])
        scale = torch.ones(config.obs_dim) if config.obs_scale is None else torch.as_tensor(config.obs_scale).float()
        self.register_buffer("obs_scale", scale, persistent=False)
        # Data-fitted standardisation (saved with the model): x -> (x - obs_mean) / obs_std.
        self.register_buffer("obs_mean", torch.zeros(config.obs_dim))
        self.register_buffer("obs_std", torch.ones(config.obs_dim))
        self.register_buffer("normalization_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def needs_normalization_fit(self) -> bool:
        """True until :meth:`fit_normalization` ran, if this tokenizer standardises its inputs."""
        return (
            self.config.obs_scale is None and self.config.normalize_observations and not bool(self.normalization_fitted)
        )

    @torch.no_grad()
    def fit_normalization(self, observations: torch.Tensor, min_std: float = 1e-3) -> None:
        """Set the per-feature mean and std from raw observations ``(N, obs_dim)`` (once, before training).

        :param observations: a sample of replay observations
        :param min_std: lower bound of the std (constant features)
        """
        x = observations.float()
        self.obs_mean.copy_(x.mean(0))
        self.obs_std.copy_(x.std(0, unbiased=False).clamp(min=min_std) if len(x) > 1 else torch.ones_like(x[0]))
        self.normalization_fitted.fill_(True)

    def preprocess(self, observations: torch.Tensor) -> torch.Tensor:
        return (observations.float() / self.obs_scale - self.obs_mean) / self.obs_std

    def encode_continuous(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).view(x.shape[0], self.tokens_per_obs, self.embed_dim)

    def decode(self, z_quantized: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_quantized.reshape(z_quantized.shape[0], -1))

    def reconstruction_loss(self, x: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.config
        reconstruction = reconstruction.float()
        loss = (
            config.l1_weight * (x - reconstruction).abs().mean() + config.l2_weight * (x - reconstruction).pow(2).mean()
        )
        return loss, torch.zeros((), device=x.device)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "ConvTokenizer",
    "ConvTokenizerConfig",
    "MlpTokenizer",
    "MlpTokenizerConfig",
    "Tokenizer",
    "TokenizerEncoding",
    "TokenizerLosses",
    "VectorQuantizer",
    "FiniteScalarQuantizer",
    "codebook_usage",
    "count_parameters",
]
