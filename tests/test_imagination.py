"""Tests of imagination in the world model: shapes, gradient isolation, the KV cache against full passes
(including re-priming), and a two-state toy on which the actor-critic learns the rewarding action.

Everything is tiny so that the file runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

import sb3_iris.imagination as imagination
from sb3_iris.imagination import (
    burn_in_start_state,
    imagine_rollouts,
    prime_cache,
    sample_from_logits,
    sample_outcomes,
    world_model_step,
)
from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig, actor_critic_loss, compute_lambda_returns
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig, MlpTokenizer, MlpTokenizerConfig
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig

VOCAB = 16
ACTIONS = 3


def tiny_world_model(
    tokens_per_obs: int, max_blocks: int = 4, vocab: int = VOCAB, actions: int = ACTIONS, parallel: bool = False
):
    return WorldModel(
        WorldModelConfig(
            obs_vocab_size=vocab,
            num_actions=actions,
            tokens_per_obs=tokens_per_obs,
            max_blocks=max_blocks,
            num_layers=1,
            num_heads=2,
            embed_dim=16,
            embed_dropout=0.0,
            residual_dropout=0.0,
            attention_dropout=0.0,
            parallel_observations=parallel,
        )
    )


def record_sampling(monkeypatch, keep: Callable[[torch.Tensor, float], Any]) -> list[Any]:
    """Make imagination's ``sample_from_logits`` record ``keep(logits, temperature)`` of every draw."""
    records: list[Any] = []

    def recording_sampler(logits, temperature=1.0, inverse_cdf=False):
        records.append(keep(logits, temperature))
        return sample_from_logits(logits, temperature, inverse_cdf)

    monkeypatch.setattr(imagination, "sample_from_logits", recording_sampler)
    return records


def record_sampled_logits(monkeypatch) -> list[torch.Tensor]:
    """Make imagination's ``sample_from_logits`` keep a copy of every logits tensor it samples from."""
    return record_sampling(monkeypatch, lambda logits, _: logits.detach().clone())


def image_setup():
    """16x16 RGB -> 4x4 = 16 tokens."""
    tokenizer = ConvTokenizer(
        ConvTokenizerConfig(
            resolution=16,
            base_channels=8,
            channel_multipliers=(1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=8,
            embed_dim=8,
            vocab_size=VOCAB,
        )
    )
    world_model = tiny_world_model(tokenizer.tokens_per_obs)
    actor_critic = ActorCritic(
        ActorCriticConfig(num_actions=ACTIONS, observation_shape=(3, 16, 16), conv_channels=(4, 8), lstm_dim=16)
    )
    return tokenizer, world_model, actor_critic, (3, 16, 16)


def vector_setup():
    """5-D vectors -> 3 tokens."""
    tokenizer = MlpTokenizer(
        MlpTokenizerConfig(obs_dim=5, tokens_per_obs=3, hidden_sizes=(16,), embed_dim=8, vocab_size=VOCAB)
    )
    world_model = tiny_world_model(tokenizer.tokens_per_obs)
    actor_critic = ActorCritic(
        ActorCriticConfig(num_actions=ACTIONS, observation_shape=(5,), mlp_hidden_sizes=(16,), lstm_dim=16)
    )
    return tokenizer, world_model, actor_critic, (5,)


SETUPS = {"image": image_setup, "vector": vector_setup}


def contexts(batch: int, length: int, tokens_per_obs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random context tokens ``(B, length, K)``; the first sequence is left-padded (starts mid-context)."""
    tokens = torch.randint(0, VOCAB, (batch, length, tokens_per_obs))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, : length - 2] = False
    return tokens, mask


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "vector"])
@pytest.mark.parametrize("batch", [1, 3])
def test_imagine_rollouts_shapes(kind, batch):
    torch.manual_seed(0)
    tokenizer, world_model, actor_critic, obs_shape = SETUPS[kind]()
    tokenizer.eval()
    world_model.eval()
    k = tokenizer.tokens_per_obs
    horizon = 3
    context_tokens, mask = contexts(batch, 4, k)
    output = imagine_rollouts(
        tokenizer, world_model, actor_critic, context_tokens, mask, horizon, keep_observations=True
    )
    assert output.actions.shape == (batch, horizon) and output.actions.dtype == torch.int64
    assert output.actions.min() >= 0 and output.actions.max() < ACTIONS
    assert output.logits.shape == (batch, horizon, ACTIONS) and output.logits.requires_grad
    assert output.values.shape == (batch, horizon) and output.values.requires_grad
    assert output.rewards.shape == (batch, horizon) and output.rewards.dtype == torch.float32
    assert set(output.rewards.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert output.ends.shape == (batch, horizon) and output.ends.dtype == torch.bool
    assert output.observations.shape == (batch, horizon, *obs_shape)
    assert not output.observations.requires_grad
    # The first frame the actor sees is the reconstruction of the start frame.
    with torch.no_grad():
        start = tokenizer.decode_tokens(context_tokens[:, -1])
    assert torch.allclose(output.observations[:, 0], start, atol=1e-5)

    without = imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, 1)
    assert without.observations is None and without.actions.shape == (batch, 1)


def test_imagine_rollouts_rejects_bad_arguments():
    torch.manual_seed(0)
    tokenizer, world_model, actor_critic, _ = vector_setup()
    context_tokens, mask = contexts(2, 3, tokenizer.tokens_per_obs)
    with pytest.raises(ValueError, match="horizon"):
        imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, 0)
    mask[1, -1] = False
    with pytest.raises(ValueError, match="mask_padding"):
        imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, 2)


def test_sample_from_logits():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, -1.0]])
    assert sample_from_logits(logits, temperature=0).tolist() == [1, 0]
    # A dominant logit is always sampled; the output keeps the leading shape.
    peaked = torch.tensor([[[0.0, 100.0]] * 4] * 2)
    samples = sample_from_logits(peaked)
    assert samples.shape == (2, 4) and (samples == 1).all()


def test_sample_outcomes_at_zero_are_the_most_likely_reward_and_end():
    torch.manual_seed(0)
    logits_rewards, logits_ends = torch.randn(50, 3), torch.randn(50, 2)
    rewards, ends = sample_outcomes(logits_rewards, logits_ends, temperature=0.0)
    # The straightforward computation: class index to reward sign, end where its probability passes 1/2.
    assert torch.equal(rewards, logits_rewards.argmax(-1).float() - 1.0)
    assert torch.equal(ends, torch.softmax(logits_ends, -1)[:, 1] > 0.5)
    assert rewards.dtype == torch.float32 and ends.dtype == torch.bool


def test_sample_outcomes_default_samples_as_iris_does():
    logits_rewards, logits_ends = torch.randn(64, 3), torch.randn(64, 2)
    torch.manual_seed(3)
    rewards, ends = sample_outcomes(logits_rewards, logits_ends)
    torch.manual_seed(3)
    assert torch.equal(rewards, sample_from_logits(logits_rewards).float() - 1.0)
    assert torch.equal(ends, sample_from_logits(logits_ends).bool())
    # A sampled end happens where it is not the most likely class: temperature 1 draws, it does not take argmax.
    even = torch.zeros(2000, 2)
    even[:, 0] = 1.0  # P(end) = 0.27
    torch.manual_seed(0)
    share = sample_outcomes(torch.zeros(2000, 3), even)[1].float().mean().item()
    assert 0.22 < share < 0.32 and not sample_outcomes(torch.zeros(2000, 3), even, 0.0)[1].any()


@pytest.mark.parametrize("parallel", [False, True])
def test_outcome_temperature_reaches_only_the_reward_and_end_draws(monkeypatch, parallel):
    k, batch = 2, 3
    world_model = tiny_world_model(k, max_blocks=3, parallel=parallel).eval()
    current = torch.randint(0, VOCAB, (batch, k))
    records = record_sampling(monkeypatch, lambda logits, temperature: (logits.shape[-1], temperature))
    with torch.no_grad():
        cache = world_model.new_cache(batch)
        prime_cache(world_model, cache, current)
        world_model_step(world_model, cache, torch.zeros(batch, dtype=torch.long), current, True, 0.7,
                         outcome_temperature=0.0)  # fmt: skip
    assert records[:2] == [(3, 0.0), (2, 0.0)]  # the reward, then the end
    assert records[2:] and all(draw == (VOCAB, 0.7) for draw in records[2:])
    # The DreamEnv's own default, and a per-step override.
    records.clear()
    dream = imagination.DreamEnv(world_model, temperature=0.7, outcome_temperature=0.0)
    dream.reset(current)
    dream.step(torch.zeros(batch, dtype=torch.long))
    dream.step(torch.zeros(batch, dtype=torch.long), outcome_temperature=0.5)
    assert [draw for draw in records if draw[0] != VOCAB] == [(3, 0.0), (2, 0.0), (3, 0.5), (2, 0.5)]
    assert {draw[1] for draw in records if draw[0] == VOCAB} == {0.7}


def test_imagine_rollouts_at_outcome_temperature_zero_takes_the_heads_argmax(monkeypatch):
    torch.manual_seed(0)
    tokenizer, world_model, actor_critic, _ = vector_setup()
    context_tokens, mask = contexts(4, 2, tokenizer.tokens_per_obs)
    records = record_sampled_logits(monkeypatch)
    output = imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, 3, outcome_temperature=0.0)
    # Each step draws the action, the reward, the end, then the next frame: the reward comes just before the end.
    end_at = [i for i, logits in enumerate(records) if logits.shape[-1] == 2]
    reward_logits, end_logits = [records[i - 1] for i in end_at], [records[i] for i in end_at]
    assert len(reward_logits) == len(end_logits) == 3
    for step in range(3):
        assert torch.equal(output.rewards[:, step], reward_logits[step].argmax(-1).float() - 1.0)
        assert torch.equal(output.ends[:, step], end_logits[step].argmax(-1).bool())


# --------------------------------------------------------------------------------------------------
# Gradient isolation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_actor_critic_loss_sends_no_gradient_into_world_model_or_tokenizer(kind):
    torch.manual_seed(0)
    tokenizer, world_model, actor_critic, _ = SETUPS[kind]()
    tokenizer.eval()
    world_model.eval()
    context_tokens, mask = contexts(2, 3, tokenizer.tokens_per_obs)
    output = imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, horizon=3)
    returns = compute_lambda_returns(output.rewards, output.values.detach(), output.ends, 0.995, 0.95)
    losses = actor_critic_loss(
        output.logits[:, :-1], output.actions[:, :-1], output.values[:, :-1], returns[:, :-1], 0.001
    )
    losses.total.backward()
    for name, parameter in list(world_model.named_parameters()) + list(tokenizer.named_parameters()):
        assert parameter.requires_grad  # not frozen: the isolation comes from the imagination loop itself
        assert parameter.grad is None, name
    grads = [p.grad for p in actor_critic.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    for module in (actor_critic.actor, actor_critic.critic, actor_critic.lstm):
        assert any(float(p.grad.abs().sum()) > 0 for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# KV cache against full forward passes, with re-priming
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge_last_token", [False, True])
def test_cached_generation_matches_full_forward_and_reprimes(monkeypatch, merge_last_token):
    """Every logit sampled by ``world_model_step`` equals the logit of a full (cache-free) pass over the sequence
    generated so far since the last (re-)priming; the cache re-primes from the current frame when the next step
    would not fit and never holds more than ``max_tokens``. With ``defer_last_token`` each frame's last token is
    written together with the next action token, with the same logits."""
    torch.manual_seed(0)
    k, batch = 2, 2
    world_model = tiny_world_model(k, max_blocks=3).eval()  # max_tokens = 3 * (2 + 1) = 9
    assert world_model.max_tokens == 9

    records = record_sampled_logits(monkeypatch)

    cache = world_model.new_cache(batch)
    current = torch.randint(0, VOCAB, (batch, k))
    with torch.no_grad():
        prime_cache(world_model, cache, current)
        assert cache.size == k
        # The token sequence the model conditions on, built by hand (the cache plus any deferred token).
        sequence = current.clone()
        pending = None
        reprimes = 0
        for _ in range(6):
            will_reprime = sequence.shape[1] + k + 1 > cache.max_tokens
            if will_reprime:
                reprimes += 1
                sequence = current.clone()
            records.clear()
            actions = torch.randint(0, ACTIONS, (batch,))
            step = world_model_step(
                world_model,
                cache,
                actions,
                current,
                True,
                1.0,
                pending_tokens=pending,
                defer_last_token=merge_last_token,
            )
            assert step.rewards.shape == step.ends.shape == (batch,) and step.next_tokens.shape == (batch, k)
            assert set(step.rewards.unique().tolist()) <= {-1.0, 0.0, 1.0} and step.ends.dtype == torch.bool
            pending = step.pending_tokens
            if merge_last_token:
                assert torch.equal(pending, step.next_tokens[:, -1:])
            else:
                assert pending is None

            action_position = sequence.shape[1]
            sequence = torch.cat([sequence, actions[:, None], step.next_tokens], 1)
            n_pending = 0 if pending is None else 1
            assert cache.size + n_pending == sequence.shape[1] <= cache.max_tokens
            full = world_model(sequence)
            obs_logits = {int(p): full.logits_observations[:, i] for i, p in enumerate(full.obs_positions)}
            action_index = full.action_positions.tolist().index(action_position)
            # Sampling order inside a step: reward, end, then the K observation tokens.
            assert len(records) == 2 + k
            assert torch.allclose(records[0], full.logits_rewards[:, action_index], atol=1e-5)
            assert torch.allclose(records[1], full.logits_ends[:, action_index], atol=1e-5)
            for i in range(k):
                # Token i of the next frame is predicted at the position just before it.
                assert torch.allclose(records[2 + i], obs_logits[action_position + i], atol=1e-5)
            current = step.next_tokens
        assert reprimes == 2

        # A last step without the next frame (1 token) fits where a full step would not.
        records.clear()
        size_before = cache.size
        step = world_model_step(
            world_model, cache, torch.zeros(batch, dtype=torch.long), current, False, pending_tokens=pending
        )
        assert step.next_tokens is None and step.pending_tokens is None and len(records) == 2
        assert cache.size == size_before + 1 + (0 if pending is None else 1) <= cache.max_tokens


def naive_imagination(tokenizer, world_model, actor_critic, context_tokens, mask_padding, horizon, temperature):
    """Imagination without a KV cache: a full forward pass over the whole context for every sampled token, with the
    same re-priming rule (restart from the current frame when the next step would exceed the context) and the same
    order of random draws as :func:`imagine_rollouts`."""
    k = world_model.config.tokens_per_obs
    state, observations = burn_in_start_state(tokenizer, actor_critic, context_tokens, mask_padding)
    current = context_tokens[:, -1]
    sequence = current.clone()
    actions, logits, values, rewards, ends = [], [], [], [], []
    for step in range(horizon):
        output = actor_critic(observations, state)
        state = output.state
        action = sample_from_logits(output.logits.detach())
        actions.append(action)
        logits.append(output.logits)
        values.append(output.values)
        predict_next = step < horizon - 1
        with torch.no_grad():
            if sequence.shape[1] + (1 + k if predict_next else 1) > world_model.max_tokens:
                sequence = current.clone()
            sequence = torch.cat([sequence, action[:, None]], 1)
            full = world_model(sequence)
            rewards.append(sample_from_logits(full.logits_rewards[:, -1]).float() - 1.0)
            ends.append(sample_from_logits(full.logits_ends[:, -1]).bool())
            if predict_next:
                for _ in range(k):
                    token = sample_from_logits(world_model(sequence).logits_observations[:, -1], temperature)
                    sequence = torch.cat([sequence, token[:, None]], 1)
                current = sequence[:, -k:]
                observations = tokenizer.decode_tokens(current)
    stack = lambda xs: torch.stack(xs, 1)  # noqa: E731
    return stack(actions), stack(logits), stack(values), stack(rewards), stack(ends)


@pytest.mark.parametrize("merge_last_token", [False, True])
@pytest.mark.parametrize("kind", ["image", "vector"])
def test_cached_imagination_equals_uncached(kind, merge_last_token, monkeypatch):
    """With a fixed seed, ``imagine_rollouts`` (KV cache, re-priming) and the cache-free reference draw the same
    trajectories; the cache stays within ``max_tokens`` at every step."""
    torch.manual_seed(0)
    tokenizer, _, actor_critic, _ = SETUPS[kind]()
    k = tokenizer.tokens_per_obs
    world_model = tiny_world_model(k, max_blocks=3).eval()
    tokenizer.eval()
    context_tokens, mask = contexts(2, 3, k)
    horizon = 6

    sizes = []
    original_step = imagination.world_model_step

    def recording_step(world_model, cache, *args, **kwargs):
        result = original_step(world_model, cache, *args, **kwargs)
        pending = 0 if result.pending_tokens is None else result.pending_tokens.shape[1]
        assert cache.size + pending <= cache.max_tokens
        sizes.append(cache.size)
        return result

    monkeypatch.setattr(imagination, "world_model_step", recording_step)
    cache = world_model.new_cache(2)
    torch.manual_seed(123)
    cached = imagine_rollouts(
        tokenizer,
        world_model,
        actor_critic,
        context_tokens,
        mask,
        horizon,
        cache=cache,
        merge_last_token=merge_last_token,
    )
    torch.manual_seed(123)
    actions, logits, values, rewards, ends = naive_imagination(
        tokenizer, world_model, actor_critic, context_tokens, mask, horizon, 1.0
    )

    # Re-priming happened (sizes dropped) and the cache never overflowed.
    assert len(sizes) == horizon and max(sizes) <= world_model.max_tokens
    assert any(b < a for a, b in zip(sizes, sizes[1:]))
    assert cache.size == sizes[-1]

    assert torch.equal(cached.actions, actions)
    assert torch.equal(cached.rewards, rewards)
    assert torch.equal(cached.ends, ends)
    assert torch.allclose(cached.logits, logits, atol=1e-5)
    assert torch.allclose(cached.values, values, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# A two-state toy: the actor-critic learns the rewarding action in imagination
# --------------------------------------------------------------------------------------------------


def test_actor_critic_learns_rewarding_action_in_imagination():
    """Two observation tokens, two actions; the world model is trained on synthetic data where reward = action
    (action 1 -> +1, action 0 -> 0). Trained only on imagined rollouts, the policy must come to prefer action 1."""
    torch.manual_seed(0)
    tokenizer = MlpTokenizer(
        MlpTokenizerConfig(obs_dim=2, tokens_per_obs=1, hidden_sizes=(8,), embed_dim=4, vocab_size=2)
    )
    world_model = tiny_world_model(1, max_blocks=6, vocab=2, actions=2)
    world_model_optimizer = torch.optim.Adam(world_model.parameters(), lr=3e-3)
    batch, length = 16, 6
    for _ in range(150):
        obs_tokens = torch.randint(0, 2, (batch, length, 1))
        actions = torch.randint(0, 2, (batch, length))
        losses = world_model.compute_loss(
            obs_tokens,
            actions,
            actions.float(),  # reward = action
            torch.zeros(batch, length, dtype=torch.bool),
            torch.ones(batch, length, dtype=torch.bool),
        )
        world_model_optimizer.zero_grad()
        losses.total.backward()
        world_model_optimizer.step()
    assert losses.rewards.item() < 0.05
    world_model.eval()
    tokenizer.eval()

    actor_critic = ActorCritic(
        ActorCriticConfig(num_actions=2, observation_shape=(2,), mlp_hidden_sizes=(16,), lstm_dim=16)
    )
    optimizer = torch.optim.Adam(actor_critic.parameters(), lr=3e-3)
    context_tokens = torch.randint(0, 2, (32, 3, 1))
    mask = torch.ones(32, 3, dtype=torch.bool)

    def probability_of_action_1() -> float:
        with torch.no_grad():
            output = imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, horizon=1)
        return output.logits.softmax(-1)[..., 1].mean().item()

    before = probability_of_action_1()
    assert 0.3 < before < 0.7
    rewards_seen = []
    for _ in range(40):
        rollout = imagine_rollouts(tokenizer, world_model, actor_critic, context_tokens, mask, horizon=6)
        returns = compute_lambda_returns(rollout.rewards, rollout.values.detach(), rollout.ends, 0.9, 0.95)
        losses = actor_critic_loss(
            rollout.logits[:, :-1], rollout.actions[:, :-1], rollout.values[:, :-1], returns[:, :-1], 0.001
        )
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
        # The imagined reward is (almost always: rewards are sampled) the action taken.
        assert (rollout.rewards == rollout.actions.float()).float().mean() > 0.9
        rewards_seen.append(rollout.rewards.mean().item())
    after = probability_of_action_1()
    assert after > 0.8, (before, after)
    assert after > before + 0.25
    assert sum(rewards_seen[-5:]) / 5 > sum(rewards_seen[:5]) / 5


@pytest.mark.parametrize("merge_last_token", [False, True])
def test_dream_env_equals_threading_the_cache_by_hand(merge_last_token):
    """``DreamEnv`` (cache, current frame and pending token inside) draws what ``world_model_step`` does when the
    caller threads them through, with the same seed; a context of past steps primes the cache with them."""
    k, batch = 2, 3
    world_model = tiny_world_model(k, max_blocks=3).eval()
    current = torch.randint(0, VOCAB, (batch, k))
    past = torch.randint(0, ACTIONS, (batch, k + 1))  # one earlier block: frame tokens then an action token
    actions = torch.randint(0, ACTIONS, (5, batch))

    torch.manual_seed(1)
    cache = world_model.new_cache(batch)
    expected, tokens, pending = [], current, None
    with torch.no_grad():
        prime_cache(world_model, cache, torch.cat([past, current], 1))
        for step_actions in actions:
            step = world_model_step(
                world_model, cache, step_actions, tokens, True, 1.0, pending, defer_last_token=merge_last_token
            )
            expected.append(step)
            tokens, pending = step.next_tokens, step.pending_tokens

    torch.manual_seed(1)
    dream = imagination.DreamEnv(world_model, merge_last_token=merge_last_token)
    with pytest.raises(RuntimeError, match="before reset"):
        dream.step(actions[0])
    dream.reset(current, past)
    for step_actions, reference in zip(actions, expected):
        step = dream.step(step_actions)
        assert torch.equal(step.rewards, reference.rewards) and torch.equal(step.ends, reference.ends)
        assert torch.equal(step.next_tokens, reference.next_tokens) and torch.equal(dream.obs_tokens, step.next_tokens)
    assert dream.cache is not None and dream.cache.batch_size == batch
