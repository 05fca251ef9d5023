"""Switches for small synthetic images (MinAtar), all off by default and not in IRIS: the local-patch tokenizer,
unused-code restarts and the actor-critic that reads flattened frames."""

from __future__ import annotations

import pytest
import torch

from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig, VectorQuantizer


def small_config(**overrides) -> ConvTokenizerConfig:
    settings = dict(
        resolution=16,
        base_channels=8,
        channel_multipliers=(1, 2, 2),
        encoder_res_blocks=1,
        attention_resolutions=(),
        z_channels=16,
        embed_dim=4,
        vocab_size=32,
        local_patches=True,
    )
    settings.update(overrides)
    return ConvTokenizerConfig(**settings)


def test_local_patch_codes_depend_only_on_their_own_patch() -> None:
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(small_config())
    patch = tokenizer.config.patch_size
    assert patch == 4 and tokenizer.tokens_per_obs == 16
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    changed = x.clone()
    changed[:, :, 4:8, 8:12] = torch.rand(1, 3, 4, 4) * 2 - 1  # the patch of token 1 * 4 + 2 = 6
    z, z_changed = tokenizer.encode_continuous(x), tokenizer.encode_continuous(changed)
    differs = (z - z_changed).abs().amax(-1)[0] > 0
    assert differs.tolist() == [k == 6 for k in range(16)]
    # The published encoder's receptive field spans the image: one patch moves every code.
    torch.manual_seed(0)
    published = ConvTokenizer(small_config(local_patches=False))
    z, z_changed = published.encode_continuous(x), published.encode_continuous(changed)
    assert bool(((z - z_changed).abs().amax(-1)[0] > 0).sum() > 1)


def test_local_patch_decoder_decodes_each_token_into_its_patch_alone() -> None:
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(small_config())
    tokens = torch.randint(0, 32, (1, 16))
    changed = tokens.clone()
    changed[0, 6] = (tokens[0, 6] + 1) % 32
    with torch.no_grad():
        difference = (tokenizer.decode_tokens(tokens) - tokenizer.decode_tokens(changed)).abs().amax(1)[0]  # (16, 16)
    outside = difference.clone()
    outside[4:8, 8:12] = 0
    assert float(difference[4:8, 8:12].max()) > 0 and float(outside.max()) == 0.0


def test_equal_patches_get_equal_codes_anywhere() -> None:
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(small_config())
    x = -torch.ones(2, 3, 16, 16)
    x[0, :, 0:4, 0:4] = 1.0  # the same white patch at token 0 in one frame and token 15 in the other
    x[1, :, 12:16, 12:16] = 1.0
    tokens = tokenizer.tokenize(x)
    assert tokens[0, 0] == tokens[1, 15]
    assert tokens[0, 1:].unique().numel() == 1 and tokens[0, 1] == tokens[1, 0]  # every black patch: one code


def test_unused_codes_restart_onto_batch_vectors_in_training_only() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 2, restart_unused_codes=True, usage_decay=0.5, usage_threshold=0.1)
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.tensor([[0.0, 0.0]] + [[100.0, 100.0]] * 7))
    z = torch.randn(4, 16, 2)  # every vector is nearest to code 0: codes 1-7 are never chosen
    quantizer.eval()
    for _ in range(10):
        quantizer(z)
    assert torch.equal(quantizer.codebook.weight[1:], torch.full((7, 2), 100.0))  # eval mode: never restarted
    quantizer.train()
    for _ in range(3):  # usage 1 -> 0.5 -> 0.25 -> 0.125: not yet below 0.1
        quantizer(z)
    assert torch.equal(quantizer.codebook.weight[1:], torch.full((7, 2), 100.0))
    quantizer(z)  # 0.0625 < 0.1: restarted onto vectors of this batch
    flat = z.reshape(-1, 2)
    for code in quantizer.codebook.weight[1:]:
        assert bool((flat == code).all(1).any())
    assert bool((quantizer.code_usage[1:] == 1.0).all())
    assert len(set(quantizer(z).tokens.reshape(-1).tolist())) > 1  # the restarted codes now take inputs


def test_switches_default_to_the_published_tokenizer() -> None:
    config = ConvTokenizerConfig()
    assert config.local_patches is False and config.restart_unused_codes is False
    tokenizer = ConvTokenizer(small_config(local_patches=False))
    assert "quantizer.code_usage" not in tokenizer.state_dict()  # published state dicts keep their keys
    restarting = ConvTokenizer(small_config(restart_unused_codes=True))
    assert "quantizer.code_usage" in restarting.state_dict()  # saved and loaded with the model


@pytest.mark.parametrize("name", ["local_patches", "restart_unused_codes"])
def test_switches_must_be_bools(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        small_config(**{name: 1})


def test_no_restart_once_every_input_is_well_represented() -> None:
    quantizer = VectorQuantizer(4, 2, restart_unused_codes=True, usage_decay=0.5, usage_threshold=0.1)
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [50.0, 50.0], [60.0, 60.0]]))
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(8, 1).unsqueeze(0)  # exactly codes 0 and 1
    quantizer.train()
    for _ in range(10):  # codes 2 and 3 fall out of use, but nothing is badly represented
        quantizer(z)
    assert bool((quantizer.code_usage[2:] < 0.1).all())
    assert torch.equal(quantizer.codebook.weight[2:], torch.tensor([[50.0, 50.0], [60.0, 60.0]]))


def test_flattened_image_actor_reads_every_pixel_through_the_mlp() -> None:
    torch.manual_seed(0)
    config = ActorCriticConfig(
        num_actions=3, observation_shape=(3, 16, 16), mlp_hidden_sizes=(32,), lstm_dim=16, flatten_images=True
    )
    actor_critic = ActorCritic(config)
    assert not any(isinstance(module, torch.nn.Conv2d) for module in actor_critic.modules())
    first = next(module for module in actor_critic.modules() if isinstance(module, torch.nn.Linear))
    assert first.in_features == 3 * 16 * 16
    observations = torch.zeros(2, 3, 16, 16)
    moved = observations.clone()
    moved[1, 0, 15, 15] = 1.0  # one pixel, in the corner a 2x2 max-pool would merge with its neighbours
    with torch.no_grad():
        output = actor_critic(observations, actor_critic.initial_state(2))
        output_moved = actor_critic(moved, actor_critic.initial_state(2))
    assert output.logits.shape == (2, 3) and output.values.shape == (2,)
    assert torch.equal(output.logits[0], output_moved.logits[0])
    assert not torch.equal(output.logits[1], output_moved.logits[1])


def test_flatten_images_defaults_to_the_published_conv_actor() -> None:
    assert ActorCriticConfig().flatten_images is False
    actor_critic = ActorCritic(ActorCriticConfig(num_actions=3, observation_shape=(3, 16, 16), conv_channels=(8,)))
    assert any(isinstance(module, torch.nn.Conv2d) for module in actor_critic.modules())
    with pytest.raises(ValueError, match="flatten_images"):
        ActorCriticConfig(flatten_images="yes")


def test_foreground_weight_weights_the_non_black_pixels() -> None:
    x = -torch.ones(1, 3, 4, 4)
    x[0, :, 1, 2] = 1.0  # one white pixel on black
    reconstruction = torch.zeros_like(x)  # error 1 on every black pixel, 1 on the white one too
    plain = ConvTokenizer(small_config(resolution=4, channel_multipliers=(1,), l1_weight=1.0, l2_weight=1.0))
    weighted = ConvTokenizer(
        small_config(resolution=4, channel_multipliers=(1,), l1_weight=1.0, l2_weight=1.0, foreground_weight=16.0)
    )
    plain_loss, _ = plain.reconstruction_loss(x, reconstruction)
    weighted_loss, _ = weighted.reconstruction_loss(x, reconstruction)
    assert float(plain_loss) == pytest.approx(2.0)  # L1 mean 1 + L2 mean 1
    # 15 black pixels of weight 1 and one of weight 16, over 16 pixels: mean 31/16, for L1 and for L2.
    assert float(weighted_loss) == pytest.approx(2 * 31 / 16)


def test_foreground_weight_must_be_positive() -> None:
    assert ConvTokenizerConfig().foreground_weight == 1.0
    with pytest.raises(ValueError, match="foreground_weight"):
        small_config(foreground_weight=0.0)
