"""Unit tests of the three IRIS networks: shapes, causality, KV cache, straight-through VQ, loss labels,
lambda-returns, the actor-critic loss, burn-in masking, small learning checks and parameter counts.

Every network here is tiny so that the whole file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sb3_iris.nn.actor_critic import (
    ActorCritic,
    ActorCriticConfig,
    actor_critic_loss,
    compute_lambda_returns,
)
from sb3_iris.nn.tokenizer import (
    ConvTokenizer,
    ConvTokenizerConfig,
    MlpTokenizer,
    MlpTokenizerConfig,
    codebook_usage,
    count_parameters,
)
from sb3_iris.nn.transformer import Transformer, TransformerConfig
from sb3_iris.nn.world_model import (
    IGNORE_INDEX,
    WorldModel,
    WorldModelConfig,
    interleave_tokens,
    world_model_labels,
)

# --------------------------------------------------------------------------------------------------
# Tiny configurations
# --------------------------------------------------------------------------------------------------

K = 4  # observation tokens per step in the world-model tests
VOCAB = 16
ACTIONS = 3


def tiny_conv_config(levels: int = 3, **overrides) -> ConvTokenizerConfig:
    """16x16 RGB; 3 levels -> 4x4 = 16 tokens, 4 levels -> 2x2 = 4 tokens."""
    kwargs = dict(
        resolution=16,
        in_channels=3,
        base_channels=8,
        channel_multipliers=(1,) * levels,
        encoder_res_blocks=1,
        attention_resolutions=(4,),
        z_channels=16,
        embed_dim=16,
        vocab_size=32,
    )
    kwargs.update(overrides)
    return ConvTokenizerConfig(**kwargs)


def tiny_world_model(max_blocks: int = 4, tokens_per_obs: int = K, dropout: float = 0.0, **overrides) -> WorldModel:
    kwargs = dict(
        obs_vocab_size=VOCAB,
        num_actions=ACTIONS,
        tokens_per_obs=tokens_per_obs,
        max_blocks=max_blocks,
        num_layers=2,
        num_heads=2,
        embed_dim=32,
        embed_dropout=dropout,
        residual_dropout=dropout,
        attention_dropout=dropout,
    )
    kwargs.update(overrides)
    return WorldModel(WorldModelConfig(**kwargs))


def random_sequence(batch: int, blocks: int, tokens_per_obs: int = K, generator=None) -> torch.Tensor:
    """Interleaved (obs tokens, action) sequence ``(B, blocks * (K + 1))`` with valid token ranges."""
    obs = torch.randint(0, VOCAB, (batch, blocks, tokens_per_obs), generator=generator)
    actions = torch.randint(0, ACTIONS, (batch, blocks), generator=generator)
    return interleave_tokens(obs, actions)


def random_token_at(position: int, tokens_per_obs: int = K) -> int:
    """A valid token for ``position`` of the interleaved sequence (an action id at action positions)."""
    is_action = position % (tokens_per_obs + 1) == tokens_per_obs
    return int(torch.randint(0, ACTIONS if is_action else VOCAB, ()))


def head_logits_by_position(output, start: int) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Observation logits and (reward, end) logits of a run, keyed by absolute position."""
    obs = {start + int(p): output.logits_observations[:, i] for i, p in enumerate(output.obs_positions)}
    act = {
        start + int(p): torch.cat([output.logits_rewards[:, i], output.logits_ends[:, i]], -1)
        for i, p in enumerate(output.action_positions)
    }
    return obs, act


def load_param_counts_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "param_counts.py"
    spec = importlib.util.spec_from_file_location("param_counts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Shapes and dtypes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels, side", [(3, 4), (4, 2)])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_tokenizer_shapes(levels, side, batch):
    torch.manual_seed(0)
    config = tiny_conv_config(levels)
    tokenizer = ConvTokenizer(config)
    n_tokens = side * side
    assert config.latent_resolution == side
    assert tokenizer.tokens_per_obs == config.tokens_per_obs == n_tokens

    raw = torch.randint(0, 256, (batch, 3, 16, 16), dtype=torch.uint8)
    x = tokenizer.preprocess(raw)
    assert x.dtype == torch.float32 and x.shape == (batch, 3, 16, 16)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert torch.equal(ConvTokenizer.to_uint8(x), raw)

    encoding = tokenizer.encode(x)
    assert encoding.z.shape == encoding.z_quantized.shape == (batch, n_tokens, config.embed_dim)
    assert encoding.z.dtype == encoding.z_quantized.dtype == torch.float32
    assert encoding.tokens.shape == (batch, n_tokens) and encoding.tokens.dtype == torch.int64
    assert encoding.tokens.min() >= 0 and encoding.tokens.max() < config.vocab_size
    assert torch.equal(tokenizer.tokenize(x), encoding.tokens)

    decoded = tokenizer.decode(encoding.z_quantized)
    assert decoded.shape == (batch, 3, 16, 16) and decoded.dtype == torch.float32
    # decode_tokens clamps to the valid range [-1, 1] (what the actor sees); z + (zq - z) rounding: atol.
    assert torch.allclose(tokenizer.decode_tokens(encoding.tokens), decoded.clamp(-1, 1), atol=1e-4)
    reconstruction = tokenizer.reconstruct(x)
    assert reconstruction.shape == x.shape and not reconstruction.requires_grad

    losses, tokens = tokenizer.compute_loss(x)
    assert torch.equal(tokens, encoding.tokens)
    for value in losses:
        assert value.shape == () and torch.isfinite(value)
    assert torch.allclose(losses.total, losses.reconstruction + losses.commitment + losses.perceptual)
    assert losses.perceptual == 0.0  # LPIPS is off by default


@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_tokenizer_shapes(batch):
    torch.manual_seed(0)
    config = MlpTokenizerConfig(
        obs_dim=6, tokens_per_obs=3, hidden_sizes=(16,), embed_dim=8, vocab_size=12, obs_scale=[2.0] * 6
    )
    tokenizer = MlpTokenizer(config)
    raw = torch.randn(batch, 6)
    x = tokenizer.preprocess(raw)
    assert torch.allclose(x, raw / 2.0)
    encoding = tokenizer.encode(x)
    assert encoding.z.shape == encoding.z_quantized.shape == (batch, 3, 8)
    assert encoding.tokens.shape == (batch, 3) and encoding.tokens.dtype == torch.int64
    assert encoding.tokens.max() < 12
    assert tokenizer.decode(encoding.z_quantized).shape == (batch, 6)
    assert tokenizer.decode_tokens(encoding.tokens).shape == (batch, 6)
    assert tokenizer.reconstruct(x).shape == (batch, 6)
    losses, tokens = tokenizer.compute_loss(x)
    assert tokens.shape == (batch, 3)
    assert losses.total.shape == () and torch.isfinite(losses.total)


def test_codebook_usage_hand_example():
    tokens = torch.tensor([[0, 0, 1, 1]])
    used, perplexity = codebook_usage(tokens, vocab_size=4)
    assert used == pytest.approx(0.5)
    assert perplexity == pytest.approx(2.0)  # two equally likely codes
    used, perplexity = codebook_usage(torch.tensor([3, 3, 3]), vocab_size=8)
    assert used == pytest.approx(1 / 8) and perplexity == pytest.approx(1.0)


@pytest.mark.parametrize("batch", [1, 3])
def test_world_model_shapes(batch):
    torch.manual_seed(0)
    world_model = tiny_world_model().eval()
    blocks = 3
    tokens = random_sequence(batch, blocks)
    length = blocks * (K + 1)
    assert tokens.shape == (batch, length) and tokens.dtype == torch.int64

    output = world_model(tokens)
    assert output.hidden.shape == (batch, length, 32) and output.hidden.dtype == torch.float32
    # Observation head everywhere except the last observation token of each block.
    assert output.logits_observations.shape == (batch, blocks * K, VOCAB)
    assert output.logits_rewards.shape == (batch, blocks, 3)
    assert output.logits_ends.shape == (batch, blocks, 2)
    assert output.action_positions.tolist() == [K + i * (K + 1) for i in range(blocks)]
    assert all(int(p) % (K + 1) != K - 1 for p in output.obs_positions)

    # Heads can be switched off.
    output = world_model(tokens, compute_observation_logits=False, compute_action_logits=False)
    assert output.logits_observations.shape[1] == 0 and output.logits_rewards.shape[1] == 0

    obs = tokens.view(batch, blocks, K + 1)[..., :K]
    actions = tokens.view(batch, blocks, K + 1)[..., K]
    losses = world_model.compute_loss(
        obs,
        actions,
        torch.randn(batch, blocks),
        torch.zeros(batch, blocks, dtype=torch.bool),
        torch.ones(batch, blocks, dtype=torch.bool),
    )
    for value in losses:
        assert value.shape == () and torch.isfinite(value)
    assert torch.allclose(losses.total, losses.observations + losses.rewards + losses.ends)


@pytest.mark.parametrize("batch", [1, 4])
def test_actor_critic_shapes(batch):
    torch.manual_seed(0)
    image = ActorCritic(
        ActorCriticConfig(num_actions=5, observation_shape=(3, 16, 16), conv_channels=(4, 8), lstm_dim=16)
    )
    vector = ActorCritic(ActorCriticConfig(num_actions=2, observation_shape=(6,), mlp_hidden_sizes=(16,), lstm_dim=8))
    for model, obs_shape, n_actions, lstm_dim in ((image, (3, 16, 16), 5, 16), (vector, (6,), 2, 8)):
        state = model.initial_state(batch)
        assert state[0].shape == state[1].shape == (batch, lstm_dim)
        output = model(torch.randn(batch, *obs_shape), state)
        assert output.logits.shape == (batch, n_actions) and output.logits.dtype == torch.float32
        assert output.values.shape == (batch,)
        assert output.state[0].shape == output.state[1].shape == (batch, lstm_dim)
        state = model.burn_in(torch.randn(batch, 3, *obs_shape), torch.ones(batch, 3, dtype=torch.bool))
        assert state[0].shape == (batch, lstm_dim)


# --------------------------------------------------------------------------------------------------
# Causality and the KV cache
# --------------------------------------------------------------------------------------------------


def test_world_model_is_causal():
    torch.manual_seed(0)
    world_model = tiny_world_model().eval()
    tokens = random_sequence(2, 3)
    length = tokens.shape[1]
    with torch.no_grad():
        reference = world_model(tokens)
        ref_obs, ref_act = head_logits_by_position(reference, 0)
        for t in (0, 1, K - 1, K, K + 1, 2 * (K + 1) - 1, length - 1):
            changed = tokens.clone()
            new = random_token_at(t)
            while new == int(changed[0, t]):
                new = random_token_at(t)
            changed[:, t] = new
            output = world_model(changed)
            obs, act = head_logits_by_position(output, 0)
            assert torch.equal(output.hidden[:, :t], reference.hidden[:, :t]), f"position {t} leaked backwards"
            assert not torch.allclose(output.hidden[0, t], reference.hidden[0, t]), "the change must be visible at t"
            for p in ref_obs:
                if p < t:
                    assert torch.equal(obs[p], ref_obs[p])
            for p in ref_act:
                if p < t:
                    assert torch.equal(act[p], ref_act[p])


@pytest.mark.parametrize("batch", [1, 3])
def test_kv_cache_matches_full_forward(batch):
    torch.manual_seed(0)
    world_model = tiny_world_model(max_blocks=4).eval()
    max_tokens = world_model.max_tokens
    assert max_tokens == 4 * (K + 1)
    tokens = random_sequence(batch, 4)
    # Mixed chunk sizes: prime with 5 tokens, then one at a time, then 3 at once, ..., up to the full context.
    chunks = [5, 1, 1, 1, 3, 1, 4, 2, 2]
    assert sum(chunks) == max_tokens

    with torch.no_grad():
        full = world_model(tokens)
        full_obs, full_act = head_logits_by_position(full, 0)
        cache = world_model.new_cache(batch)
        start = 0
        for size in chunks:
            assert cache.size == start
            output = world_model(tokens[:, start : start + size], cache)
            assert torch.allclose(output.hidden, full.hidden[:, start : start + size], atol=1e-5)
            obs, act = head_logits_by_position(output, start)
            assert set(obs) == {p for p in full_obs if start <= p < start + size}
            assert set(act) == {p for p in full_act if start <= p < start + size}
            for p, logits in obs.items():
                assert torch.allclose(logits, full_obs[p], atol=1e-5)
            for p, logits in act.items():
                assert torch.allclose(logits, full_act[p], atol=1e-5)
            start += size
        assert cache.size == max_tokens

        # Overflow: the world model refuses, and the cache is left as it was.
        with pytest.raises(ValueError, match="exceeds the context"):
            world_model(tokens[:, :1], cache)
        assert cache.size == max_tokens
        # The raw transformer's cache refuses too.
        with pytest.raises(RuntimeError, match="overflow"):
            world_model.transformer(torch.zeros(batch, 1, 32), cache)

        # Re-priming: after reset the cache must behave exactly like a fresh full pass on the new tokens
        # (stale keys/values left in the preallocated memory must not leak).
        cache.reset()
        assert cache.size == 0
        new_tokens = random_sequence(batch, 2)[:, :9]
        fresh = world_model(new_tokens)
        start = 0
        for size in (3, 1, 1, 4):
            output = world_model(new_tokens[:, start : start + size], cache)
            assert torch.allclose(output.hidden, fresh.hidden[:, start : start + size], atol=1e-5)
            start += size
        assert cache.size == 9


def test_transformer_cache_direct():
    """The bare transformer: cached one-token steps equal the full causal pass."""
    torch.manual_seed(0)
    config = TransformerConfig(
        tokens_per_block=3,
        max_blocks=3,
        num_layers=2,
        num_heads=4,
        embed_dim=16,
        embed_dropout=0.0,
        residual_dropout=0.0,
        attention_dropout=0.0,
    )
    transformer = Transformer(config).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        full = transformer(x)
        cache = transformer.new_cache(2, torch.device("cpu"))
        steps = [transformer(x[:, t : t + 1], cache) for t in range(9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    with pytest.raises(RuntimeError, match="overflow"), torch.no_grad():
        transformer(x[:, :1], cache)


# --------------------------------------------------------------------------------------------------
# Vector quantisation: straight-through gradients and the commitment loss
# --------------------------------------------------------------------------------------------------


def test_straight_through_and_commitment():
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(tiny_conv_config(3))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codebook = tokenizer.quantizer.codebook.weight

    encoding = tokenizer.encode(x)
    # Forward value of z_quantized is the nearest codebook vector.
    assert torch.allclose(encoding.z_quantized, codebook[encoding.tokens], atol=1e-6)
    distances = torch.cdist(encoding.z.detach().reshape(-1, 16), codebook.detach())
    assert torch.equal(distances.argmin(1), encoding.tokens.reshape(-1))

    # Reconstruction loss alone: the encoder gets gradient through the quantiser, the codebook none.
    reconstruction = tokenizer.decode(encoding.z_quantized)
    reconstruction_loss, _ = tokenizer.reconstruction_loss(x, reconstruction)
    reconstruction_loss.backward()
    encoder_parameters = list(tokenizer.encoder.parameters()) + list(tokenizer.pre_quant.parameters())
    for parameter in encoder_parameters:
        assert parameter.grad is not None
    assert all(p.grad.abs().sum() > 0 for p in tokenizer.encoder.conv_in.parameters())
    assert all(p.grad.abs().sum() > 0 for p in tokenizer.pre_quant.parameters())
    assert sum(float(p.grad.abs().sum()) for p in encoder_parameters) > 0
    assert codebook.grad is None

    # Commitment loss: gradient reaches the used codebook entries (only them) and the encoder; a step moves
    # the used codebook vectors towards the encoder outputs.
    tokenizer.zero_grad(set_to_none=True)
    encoding = tokenizer.encode(x)
    commitment = tokenizer.quantizer.commitment_loss(encoding)
    commitment.backward()
    used = torch.zeros(codebook.shape[0], dtype=torch.bool)
    used[encoding.tokens.unique()] = True
    row_norms = codebook.grad.abs().sum(1)
    assert (row_norms[used] > 0).all() and (row_norms[~used] == 0).all()
    assert tokenizer.pre_quant.weight.grad.abs().sum() > 0

    before = codebook.detach().clone()
    z = encoding.z.detach()
    distance_before = (z - before[encoding.tokens]).pow(2).mean()
    torch.optim.SGD([codebook], lr=1.0).step()
    assert not torch.equal(codebook.detach()[used], before[used])
    assert torch.equal(codebook.detach()[~used], before[~used])
    distance_after = (z - codebook.detach()[encoding.tokens]).pow(2).mean()
    assert distance_after < distance_before


# --------------------------------------------------------------------------------------------------
# World-model labels and padding
# --------------------------------------------------------------------------------------------------


def test_world_model_labels_hand_example():
    obs_tokens = torch.tensor([[[1, 2], [3, 4], [5, 6]]])  # B=1, L=3, K=2
    rewards = torch.tensor([[0.5, -2.0, 1e-3]])
    ends = torch.tensor([[False, True, True]])
    mask = torch.tensor([[True, True, False]])
    labels_obs, labels_rewards, labels_ends = world_model_labels(obs_tokens, rewards, ends, mask)
    # Observation tokens shifted by one (the first token of the segment has no predictor); padded -> ignored.
    assert labels_obs.tolist() == [[2, 3, 4, IGNORE_INDEX, IGNORE_INDEX]]
    assert labels_rewards.tolist() == [[2, 0, IGNORE_INDEX]]  # sign(r) + 1
    assert labels_ends.tolist() == [[0, 1, IGNORE_INDEX]]

    # Reward label is sign(r) + 1 for every sign, whatever the magnitude.
    rewards = torch.tensor([[-7.0, -0.01, 0.0, 0.3, 12.0]])
    _, labels_rewards, _ = world_model_labels(
        torch.zeros(1, 5, 2, dtype=torch.long),
        rewards,
        torch.zeros(1, 5, dtype=torch.bool),
        torch.ones(1, 5, dtype=torch.bool),
    )
    assert labels_rewards.tolist() == [[0, 0, 1, 2, 2]]

    assert interleave_tokens(obs_tokens, torch.tensor([[7, 8, 9]])).tolist() == [[1, 2, 7, 3, 4, 8, 5, 6, 9]]


def test_world_model_loss_matches_manual_cross_entropy():
    """Each observation logit is scored against the next token of the interleaved sequence."""
    torch.manual_seed(0)
    world_model = tiny_world_model().eval()
    batch, blocks = 2, 3
    obs = torch.randint(0, VOCAB, (batch, blocks, K))
    actions = torch.randint(0, ACTIONS, (batch, blocks))
    rewards = torch.tensor([[1.5, 0.0, -3.0], [0.0, 2.0, 0.0]])
    ends = torch.tensor([[False, False, True], [False, False, False]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        losses = world_model.compute_loss(obs, actions, rewards, ends, mask)
        sequence = interleave_tokens(obs, actions)
        hidden = world_model(sequence).hidden
        obs_logits, obs_targets, act_logits_r, act_logits_e, targets_r, targets_e = [], [], [], [], [], []
        for b in range(batch):
            for p in range(sequence.shape[1] - 1):
                step_next, slot_next = divmod(p + 1, K + 1)
                if slot_next < K and mask[b, step_next]:  # next token is a real observation token
                    obs_logits.append(world_model.head_observations(hidden[b, p]))
                    obs_targets.append(sequence[b, p + 1])
            for step in range(blocks):
                if mask[b, step]:
                    p = step * (K + 1) + K
                    act_logits_r.append(world_model.head_rewards(hidden[b, p]))
                    act_logits_e.append(world_model.head_ends(hidden[b, p]))
                    targets_r.append(torch.sign(rewards[b, step]).long() + 1)
                    targets_e.append(ends[b, step].long())
        expected_obs = F.cross_entropy(torch.stack(obs_logits), torch.stack(obs_targets))
        expected_r = F.cross_entropy(torch.stack(act_logits_r), torch.stack(targets_r))
        expected_e = F.cross_entropy(torch.stack(act_logits_e), torch.stack(targets_e))
    assert losses.observations.item() == pytest.approx(expected_obs.item(), rel=1e-5)
    assert losses.rewards.item() == pytest.approx(expected_r.item(), rel=1e-5)
    assert losses.ends.item() == pytest.approx(expected_e.item(), rel=1e-5)


@pytest.mark.parametrize("parallel", [False, True])
def test_world_model_loss_and_gradients_equal_the_full_logits_path(parallel):
    """The loss evaluates the observation head only where a target exists; the plain path evaluates it at every
    position, drops the last one and lets cross-entropy ignore the padded targets. Same loss, same gradients."""
    torch.manual_seed(0)
    world_model = tiny_world_model(parallel_observations=parallel)
    batch, blocks = 3, 4
    obs = torch.randint(0, VOCAB, (batch, blocks, K))
    actions = torch.randint(0, ACTIONS, (batch, blocks))
    rewards, ends = torch.randn(batch, blocks), torch.zeros(batch, blocks, dtype=torch.bool)
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])

    world_model.zero_grad()
    world_model.compute_loss(obs, actions, rewards, ends, mask).observations.backward()
    fast = {name: p.grad.clone() for name, p in world_model.named_parameters() if p.grad is not None}

    world_model.zero_grad()
    logits = world_model(interleave_tokens(obs, actions)).logits_observations[:, :-1]
    if parallel:
        labels = obs[:, 1:].masked_fill(~mask[:, 1:].unsqueeze(-1), -100)
    else:
        labels = obs.masked_fill(~mask.unsqueeze(-1), -100).flatten(1)[:, 1:]
    plain_loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)
    plain_loss.backward()
    plain = {name: p.grad.clone() for name, p in world_model.named_parameters() if p.grad is not None}

    assert fast.keys() == plain.keys() and "head_observations.2.weight" in fast
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_world_model_loss_ignores_padded_steps():
    torch.manual_seed(0)
    world_model = tiny_world_model().eval()
    batch, blocks = 2, 4
    obs = torch.randint(0, VOCAB, (batch, blocks, K))
    actions = torch.randint(0, ACTIONS, (batch, blocks))
    rewards = torch.randn(batch, blocks)
    ends = torch.zeros(batch, blocks, dtype=torch.bool)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])  # right padding (episode end)

    with torch.no_grad():
        reference = world_model.compute_loss(obs, actions, rewards, ends, mask)
        # Change everything at the padded steps: inputs (so the logits there change) and targets.
        obs2, actions2, rewards2, ends2 = obs.clone(), actions.clone(), rewards.clone(), ends.clone()
        obs2[1, 2:] = (obs2[1, 2:] + 5) % VOCAB
        actions2[1, 2:] = (actions2[1, 2:] + 1) % ACTIONS
        rewards2[1, 2:] = torch.tensor([-9.0, 9.0])
        ends2[1, 2:] = True
        changed = world_model.compute_loss(obs2, actions2, rewards2, ends2, mask)
        for a, b in zip(reference, changed):
            assert a.item() == pytest.approx(b.item(), abs=1e-6)
        # The change did move the logits at the padded positions (so the test is not vacuous) ...
        hidden_a = world_model(interleave_tokens(obs, actions)).hidden
        hidden_b = world_model(interleave_tokens(obs2, actions2)).hidden
        assert not torch.allclose(hidden_a[1, 2 * (K + 1) :], hidden_b[1, 2 * (K + 1) :])
        # ... and the same change at a real step does change the loss.
        rewards3 = rewards.clone()
        rewards3[1, 1] = -rewards3[1, 1] if rewards3[1, 1] != 0 else 1.0
        assert world_model.compute_loss(obs, actions, rewards3, ends, mask).rewards != reference.rewards

        # Left padding (episode start): reward and end targets of the padded steps are ignored too.
        left_mask = torch.tensor([[True, True, True, True], [False, False, True, True]])
        left = world_model.compute_loss(obs, actions, rewards, ends, left_mask)
        rewards_left, ends_left = rewards.clone(), ends.clone()
        rewards_left[1, :2] = torch.tensor([-9.0, 9.0])
        ends_left[1, :2] = True
        left_changed = world_model.compute_loss(obs, actions, rewards_left, ends_left, left_mask)
        assert left.rewards.item() == pytest.approx(left_changed.rewards.item(), abs=1e-6)
        assert left.ends.item() == pytest.approx(left_changed.ends.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Lambda-returns and the actor-critic loss
# --------------------------------------------------------------------------------------------------


def test_lambda_returns_hand_example():
    gamma, lambda_ = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 3.0]])
    ends = torch.tensor([[False, False, False, False], [False, True, False, False]])
    returns = compute_lambda_returns(rewards, values, ends, gamma, lambda_)

    # Row 0, no end: G3 = V3 = 3
    # G2 = 2 + 0.9 * (0.2 * 3.0 + 0.8 * 3.0)   = 2 + 0.9 * 3.0    = 4.7
    # G1 = 0 + 0.9 * (0.2 * 2.0 + 0.8 * 4.7)   = 0.9 * 4.16       = 3.744
    # G0 = 1 + 0.9 * (0.2 * 1.0 + 0.8 * 3.744) = 1 + 0.9 * 3.1952 = 3.87568
    # Row 1, the episode ends with the action of step 1: nothing after it is bootstrapped.
    # G3 = 3, G2 = 4.7 (computed but unreachable), G1 = r1 = 0
    # G0 = 1 + 0.9 * (0.2 * 1.0 + 0.8 * 0.0)   = 1.18
    expected = torch.tensor([[3.87568, 3.744, 4.7, 3.0], [1.18, 0.0, 4.7, 3.0]])
    assert torch.allclose(returns, expected, atol=1e-5)

    # lambda = 0: one-step TD targets; lambda = 1 and no ends: discounted rewards + discounted last value.
    td = compute_lambda_returns(rewards[:1], values[:1], ends[:1], gamma, 0.0)
    assert torch.allclose(td, torch.tensor([[1 + 0.9 * 1.0, 0 + 0.9 * 2.0, 2 + 0.9 * 3.0, 3.0]]), atol=1e-6)
    mc = compute_lambda_returns(rewards[:1], values[:1], ends[:1], gamma, 1.0)
    expected_mc0 = 1 + 0.9 * 0 + 0.81 * 2 + 0.729 * 3.0
    assert mc[0, 0].item() == pytest.approx(expected_mc0, abs=1e-5)


def test_actor_critic_loss_hand_example():
    # B=1, T=2, A=2. Step 0: pi = (0.5, 0.5), action 0; step 1: pi = (0.75, 0.25), action 1.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]], requires_grad=True)
    actions = torch.tensor([[0, 1]])
    values = torch.tensor([[1.0, 2.0]], requires_grad=True)
    returns = torch.tensor([[2.0, 1.0]], requires_grad=True)
    ent_coef = 0.01
    losses = actor_critic_loss(logits, actions, values, returns, ent_coef)

    # advantages G - V = (1, -1); log pi(a) = (log 0.5, log 0.25)
    policy = -(math.log(0.5) * 1.0 + math.log(0.25) * -1.0) / 2  # = -log(2) / 2
    entropy = (math.log(2.0) + -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    value = ((1.0 - 2.0) ** 2 + (2.0 - 1.0) ** 2) / 2
    assert losses.policy.item() == pytest.approx(policy, abs=1e-6)
    assert losses.policy.item() == pytest.approx(-math.log(2.0) / 2, abs=1e-6)
    assert losses.entropy.item() == pytest.approx(entropy, abs=1e-6)
    assert losses.value.item() == pytest.approx(value, abs=1e-6)
    assert losses.total.item() == pytest.approx(policy - ent_coef * entropy + value, abs=1e-6)

    losses.total.backward()
    # Values get gradient only from the MSE (the advantage uses sg(V)): d/dV mean((V - G)^2) = (V - G).
    assert torch.allclose(values.grad, torch.tensor([[-1.0, 1.0]]))
    # Returns are constants.
    assert returns.grad is None
    # Policy gradient at step 0 (entropy is at its maximum there, so only the policy term acts):
    # d/dlogits of -A * log pi(a) / T = -(onehot(a) - pi) * A / T = (-0.25, 0.25).
    assert torch.allclose(logits.grad[0, 0], torch.tensor([-0.25, 0.25]), atol=1e-6)


def test_burn_in_padding_leaves_state_unchanged():
    torch.manual_seed(0)
    model = ActorCritic(ActorCriticConfig(num_actions=2, observation_shape=(4,), mlp_hidden_sizes=(8,), lstm_dim=8))
    observations = torch.randn(2, 4, 4)
    mask = torch.tensor([[False, True, False, True], [False, True, True, False]])  # column 0 fully padded
    with torch.no_grad():
        state = model.burn_in(observations, mask)
        for b in range(2):
            expected = model.initial_state(1)
            for t in range(4):
                if mask[b, t]:
                    expected = model(observations[b : b + 1, t], expected).state
            assert torch.allclose(state[0][b], expected[0][0], atol=1e-6)
            assert torch.allclose(state[1][b], expected[1][0], atol=1e-6)

        # Whatever is stored at padded steps does not matter.
        noisy = observations.clone()
        noisy[~mask] = torch.randn(int((~mask).sum()), 4) * 10
        state_noisy = model.burn_in(noisy, mask)
        assert torch.equal(state_noisy[0], state[0]) and torch.equal(state_noisy[1], state[1])

        # A fully padded context leaves the given state as it was.
        start = (torch.randn(2, 8), torch.randn(2, 8))
        unchanged = model.burn_in(observations, torch.zeros(2, 4, dtype=torch.bool), start)
        assert torch.equal(unchanged[0], start[0]) and torch.equal(unchanged[1], start[1])

        # The one-step mask does the same.
        output = model(observations[:, 0], start, torch.tensor([False, True]))
        assert torch.equal(output.state[0][0], start[0][0]) and not torch.equal(output.state[0][1], start[0][1])


def test_actor_critic_recurrent_must_be_a_bool():
    with pytest.raises(ValueError, match=r"recurrent='no' must be True \(LSTMCell, IRIS\) or False"):
        ActorCritic(ActorCriticConfig(num_actions=2, observation_shape=(4,), recurrent="no"))


def test_feedforward_actor_critic_is_a_function_of_the_current_observation():
    torch.manual_seed(0)
    model = ActorCritic(
        ActorCriticConfig(num_actions=3, observation_shape=(4,), mlp_hidden_sizes=(8,), lstm_dim=8, recurrent=False)
    )
    assert not hasattr(model, "lstm")
    observations = torch.randn(2, 5, 4)
    with torch.no_grad():
        # Burn-in leaves the state as given, and the outputs do not depend on the state or the history.
        start = (torch.randn(2, 8), torch.randn(2, 8))
        burned = model.burn_in(observations, torch.ones(2, 5, dtype=torch.bool), start)
        assert burned[0] is start[0] and burned[1] is start[1]
        fresh = model(observations[:, 4], model.initial_state(2))
        after_history = model(observations[:, 4], start)
        assert torch.equal(fresh.logits, after_history.logits) and torch.equal(fresh.values, after_history.values)
        # The plain computation: encoder -> Linear + ReLU -> heads.
        hidden = torch.relu(model.feedforward[0](model.encoder(observations[:, 4])))
        assert torch.allclose(fresh.logits, model.actor(hidden), atol=1e-6)
        assert torch.allclose(fresh.values, model.critic(hidden).squeeze(-1), atol=1e-6)
        assert after_history.state[0] is start[0]


# --------------------------------------------------------------------------------------------------
# Learning sanity
# --------------------------------------------------------------------------------------------------


def test_conv_tokenizer_overfits_four_frames():
    torch.manual_seed(0)
    # L1 + L2 reconstruction (the Delta-IRIS variant without the max-pixel term) converges much faster than L1 alone.
    tokenizer = ConvTokenizer(tiny_conv_config(3, attention_resolutions=(), l2_weight=1.0))
    frames = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    colors = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)
    for i in range(4):
        frames[i, :, 2 + i : 10 + i, 4:12] = colors[i].view(3, 1, 1)
    x = tokenizer.preprocess(frames)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=3e-3)
    error_before = (tokenizer.reconstruct(x) - x).abs().mean().item()
    for _ in range(200):
        losses, _ = tokenizer.compute_loss(x)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    error_after = (tokenizer.reconstruct(x) - x).abs().mean().item()
    assert error_before / error_after > 5.0, (error_before, error_after)
    # The four frames got distinct token grids.
    tokens = tokenizer.tokenize(x)
    assert len({tuple(row.tolist()) for row in tokens}) == 4


def test_world_model_overfits_a_sequence():
    torch.manual_seed(0)
    world_model = tiny_world_model()
    batch, blocks = 2, 4
    obs = torch.randint(0, VOCAB, (batch, blocks, K))
    actions = torch.randint(0, ACTIONS, (batch, blocks))
    rewards = torch.randint(-1, 2, (batch, blocks)).float()
    ends = torch.zeros(batch, blocks, dtype=torch.bool)
    ends[0, -1] = True
    mask = torch.ones(batch, blocks, dtype=torch.bool)
    optimizer = torch.optim.Adam(world_model.parameters(), lr=3e-3)
    for _ in range(150):
        losses = world_model.compute_loss(obs, actions, rewards, ends, mask)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    world_model.eval()
    with torch.no_grad():
        output = world_model(interleave_tokens(obs, actions))
    predicted = output.logits_observations[:, :-1].argmax(-1)
    accuracy = (predicted == obs.flatten(1)[:, 1:]).float().mean().item()
    assert accuracy > 0.95
    assert torch.equal(output.logits_rewards.argmax(-1), torch.sign(rewards).long() + 1)
    assert torch.equal(output.logits_ends.argmax(-1), ends.long())


# --------------------------------------------------------------------------------------------------
# Configuration errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, argument",
    [
        (lambda: ConvTokenizer(tiny_conv_config(3, resolution=18)), "resolution"),
        (lambda: ConvTokenizer(tiny_conv_config(6)), "resolution"),  # 16 is not divisible by 2**5
        (lambda: ConvTokenizer(tiny_conv_config(3, base_channels=12)), "base_channels"),
        (lambda: ConvTokenizer(tiny_conv_config(3, vocab_size=0)), "vocab_size"),
        (lambda: ConvTokenizer(tiny_conv_config(3, channel_multipliers=())), "channel_multipliers"),
        (lambda: MlpTokenizer(MlpTokenizerConfig(obs_dim=3, obs_scale=[1.0, 1.0])), "obs_scale"),
        (lambda: MlpTokenizer(MlpTokenizerConfig(tokens_per_obs=0)), "tokens_per_obs"),
        (lambda: tiny_world_model(embed_dim=30, num_heads=4), "embed_dim"),
        (lambda: tiny_world_model(num_layers=0), "num_layers"),
        (lambda: tiny_world_model(num_heads=0), "num_heads"),
        (lambda: tiny_world_model(max_blocks=0), "max_blocks"),
        (
            lambda: ActorCritic(ActorCriticConfig(observation_shape=(3, 20, 20), conv_channels=(8, 8, 8))),
            "observation_shape",
        ),
    ],
)
def test_bad_configs_raise_value_error(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


# --------------------------------------------------------------------------------------------------
# Published sizes
# --------------------------------------------------------------------------------------------------


def test_published_parameter_counts_within_ten_percent():
    counts = load_param_counts_module().parameter_counts()
    assert set(counts) == {"tokenizer", "world_model", "actor_critic"}
    for name, target in (("tokenizer", 4.0e6), ("world_model", 8.4e6), ("actor_critic", 3.2e6)):
        assert counts[name]["target"] == target
        assert abs(counts[name]["parameters"] - target) / target < 0.10, (name, counts[name])
    # count_parameters counts trainable parameters only.
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 6


@pytest.mark.parametrize("field", ["obs_vocab_size", "num_actions", "tokens_per_obs", "max_blocks"])
def test_world_model_config_rejects_non_positive_sizes(field):
    from sb3_iris.nn.world_model import WorldModel, WorldModelConfig

    config = WorldModelConfig(obs_vocab_size=8, num_actions=2, tokens_per_obs=2, num_layers=1, num_heads=1, embed_dim=8)
    setattr(config, field, 0)
    with pytest.raises(ValueError, match=field):
        WorldModel(config)


def test_actor_critic_loss_normalized_advantages_are_standardised():
    """With normalize_advantage, the policy term uses (A - mean) / std: adding a constant to returns changes nothing."""
    from sb3_iris.nn.actor_critic import actor_critic_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 5, 3, requires_grad=True)
    actions = torch.randint(0, 3, (4, 5))
    values = torch.randn(4, 5)
    returns = torch.randn(4, 5)
    plain = actor_critic_loss(logits, actions, values, returns, 0.0, normalize_advantage=True).policy
    shifted = actor_critic_loss(logits, actions, values, returns + 100.0, 0.0, normalize_advantage=True).policy
    torch.testing.assert_close(plain, shifted, rtol=1e-4, atol=1e-5)
    unnormalized = actor_critic_loss(logits, actions, values, returns + 100.0, 0.0).policy
    assert not torch.allclose(unnormalized, shifted)
