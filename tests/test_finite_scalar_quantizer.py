"""Finite scalar quantisation (``fsq_levels``; not in IRIS, off by default)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sb3_iris.nn.finite_scalar_quantizer import FiniteScalarQuantizer
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig, VectorQuantizer
from tests.test_small_image_switches import small_config


def fsq_config(**overrides) -> ConvTokenizerConfig:
    """The small local-patch tokenizer of ``test_small_image_switches``, on 10x10 frames with 2x2 patches and FSQ."""
    settings = dict(resolution=10, channel_multipliers=(1, 2), embed_dim=3, vocab_size=60, fsq_levels=(5, 4, 3))
    settings.update(overrides)
    return small_config(**settings)


def straightforward_digits(z: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """The nearest allowed integer of each bounded dimension, by searching every allowed value."""
    digits = []
    for i, level in enumerate(levels):
        allowed = torch.arange(level, dtype=torch.float32) - level // 2  # e.g. 4 -> -2, -1, 0, 1
        half_width, offset = (level - 1) / 2, 0.5 if level % 2 == 0 else 0.0
        bounded = torch.tanh(z[..., i] + torch.atanh(torch.tensor(offset / half_width))) * half_width - offset
        digits.append(allowed[(bounded.unsqueeze(-1) - allowed).abs().argmin(-1)])
    return torch.stack(digits, dim=-1)


def test_tokens_are_the_mixed_radix_number_of_the_nearest_levels() -> None:
    torch.manual_seed(0)
    levels = (5, 4, 3)
    quantizer = FiniteScalarQuantizer(levels)
    z = torch.randn(64, 7, 3) * 2
    digits = straightforward_digits(z, levels)
    shifted = (digits + torch.tensor([2.0, 2.0, 1.0])).long()
    expected_tokens = shifted[..., 0] + 5 * shifted[..., 1] + 20 * shifted[..., 2]
    encoding = quantizer(z)
    assert torch.equal(encoding.tokens, expected_tokens)
    assert torch.equal(quantizer.nearest_tokens(z), expected_tokens)
    assert torch.allclose(encoding.z_quantized, digits / torch.tensor([2.0, 2.0, 1.0]))
    assert torch.allclose(quantizer.embed(encoding.tokens), encoding.z_quantized)


def test_every_token_has_its_own_vector_in_the_unit_box() -> None:
    quantizer = FiniteScalarQuantizer((5, 4, 3))
    assert quantizer.vocab_size == 60 and quantizer.embed_dim == 3
    vectors = quantizer.embed(torch.arange(60))
    assert len({tuple(v.tolist()) for v in vectors}) == 60
    assert float(vectors.abs().max()) == 1.0
    # Zero input is level 0 in every dimension, odd or even.
    zero_token = quantizer.nearest_tokens(torch.zeros(1, 3))
    assert quantizer.embed(zero_token).abs().max() == 0.0
    # Every digit combination is reachable (the extremes too).
    reached = {
        int(quantizer.nearest_tokens(torch.tensor([list(corner)]) * 10))
        for corner in itertools.product((-1.0, 1.0), repeat=3)
    }
    assert len(reached) == 8 and min(reached) == 0 and max(reached) == 59


def test_straight_through_gradient_reaches_the_encoder() -> None:
    quantizer = FiniteScalarQuantizer((5, 5))
    z = torch.randn(4, 2, requires_grad=True)
    encoding = quantizer(z)
    encoding.z_quantized.sum().backward()
    assert z.grad is not None and bool((z.grad > 0).all())  # d tanh / dz > 0, through the rounding
    assert float(quantizer.commitment_loss(encoding)) == 0.0


def test_fsq_tokenizer_has_no_codebook_and_learns_distinct_patches_losslessly() -> None:
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(fsq_config(l1_weight=0.0, l2_weight=1.0))
    assert isinstance(tokenizer.quantizer, FiniteScalarQuantizer)
    assert not any(key.startswith("quantizer.") for key in tokenizer.state_dict())
    # Four distinct 2x2 patches tiled over a 10x10 frame, in shuffled positions per frame.
    patterns = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0] * 4])
    choice = torch.randint(0, 4, (32, 25))
    patches = patterns[choice].view(32, 5, 5, 2, 2).permute(0, 1, 3, 2, 4).reshape(32, 1, 10, 10)
    frames = patches.expand(32, 3, 10, 10).contiguous()
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    for _ in range(300):
        losses, _ = tokenizer.compute_loss(frames)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    tokenizer.eval()
    tokens = tokenizer.tokenize(frames)
    codes_of_pattern = [set(tokens[choice == k].tolist()) for k in range(4)]
    assert all(len(codes) == 1 for codes in codes_of_pattern)  # one code per pattern ...
    assert len(set.union(*codes_of_pattern)) == 4  # ... and a different one for each
    assert float((tokenizer.reconstruct(frames) - frames).abs().max()) < 0.5


def test_fsq_defaults_off() -> None:
    config = ConvTokenizerConfig()
    assert config.fsq_levels == ()
    assert isinstance(ConvTokenizer(fsq_config(fsq_levels=(), vocab_size=32, embed_dim=4)).quantizer, VectorQuantizer)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(vocab_size=64), "needs vocab_size=60 and embed_dim=3"),
        (dict(embed_dim=4), "needs vocab_size=60 and embed_dim=3"),
        (dict(fsq_levels=(5, 1), vocab_size=5, embed_dim=2), "must be integers >= 2"),
        (dict(fsq_levels=(5, 2.5), vocab_size=12, embed_dim=2), "must be integers >= 2"),
        (dict(restart_unused_codes=True), "restart_unused_codes=True needs a codebook"),
    ],
)
def test_fsq_levels_that_cannot_work_fail_clearly(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fsq_config(**overrides)


def test_iris_trains_saves_and_loads_an_fsq_tokenizer_on_borderless_minatar_frames(tmp_path) -> None:
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("minatar")
    import sb3_iris.minatar  # noqa: F401  (registers the ids)
    from sb3_iris import IRIS
    from sb3_iris.minatar import MinAtarImageWrapper
    from tests.conftest import tiny_iris_kwargs

    env = MinAtarImageWrapper(gym.make("MinAtar/Breakout-v1"), cell_size=1, image_size=10)
    kwargs = tiny_iris_kwargs(image=True)
    settings = dict(fsq_config().__dict__)
    del settings["resolution"], settings["in_channels"]  # derived from the observation space
    kwargs["policy_kwargs"]["tokenizer_kwargs"] = settings
    kwargs["policy_kwargs"]["actor_critic_kwargs"] = dict(flatten_images=True, mlp_hidden_sizes=(32,), lstm_dim=32)
    model = IRIS("CnnPolicy", env, seed=0, **kwargs)
    assert model.policy.tokenizer.tokens_per_obs == 25
    model.learn(2 * model.n_steps_per_epoch)
    frames = torch.as_tensor(np.stack([env.reset(seed=s)[0] for s in range(3)])).permute(0, 3, 1, 2)
    tokenizer = model.policy.tokenizer
    tokens = tokenizer.tokenize(tokenizer.preprocess(frames))
    model.save(tmp_path / "fsq")
    loaded = IRIS.load(tmp_path / "fsq", device="cpu")
    assert isinstance(loaded.policy.tokenizer.quantizer, FiniteScalarQuantizer)
    assert torch.equal(loaded.policy.tokenizer.tokenize(tokenizer.preprocess(frames)), tokens)
