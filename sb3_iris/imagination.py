"""Batched rollouts inside the world model (the hot loop of IRIS).

From real starting contexts (burn-in frames + a start frame), the actor's LSTM is burned in on the
tokenizer's reconstructions; the start frame's tokens prime the world model's KV cache; then for
each of ``horizon`` steps the actor acts on the current reconstructed frame, the world model
produces reward and end from the action token and the next frame token by token (K + 1 one-token
passes per step), and the decoder turns the tokens into the next frame the actor sees.
Gradients flow only into the actor-critic.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from sb3_iris.nn.actor_critic import ActorCritic, LSTMState
from sb3_iris.nn.tokenizer import Tokenizer
from sb3_iris.nn.transformer import KVCache
from sb3_iris.nn.world_model import WorldModel


class ImaginationOutput(NamedTuple):
    """Imagined trajectories, everything the actor-critic loss needs.

    :param actions: ``(B, H)`` sampled actions
    :param logits: ``(B, H, A)`` policy logits (with gradient)
    :param values: ``(B, H)`` value estimates (with gradient)
    :param rewards: ``(B, H)`` predicted rewards in {-1, 0, 1}
    :param ends: ``(B, H)`` predicted episode ends
    :param observations: ``(B, H, *obs_shape)`` the frames the actor saw (preprocessed space), or None
    """

    actions: torch.Tensor
    logits: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    ends: torch.Tensor
    observations: Optional[torch.Tensor]


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Sample one index per row of ``logits`` ``(..., N)`` at ``temperature`` (0 means argmax)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1).view(probs.shape[:-1])


def prime_cache(world_model: WorldModel, cache: KVCache, obs_tokens: torch.Tensor) -> None:
    """Reset ``cache`` and fill it with the tokens ``(B, K)`` of one frame."""
    cache.reset()
    world_model(obs_tokens, cache, compute_observation_logits=False, compute_action_logits=False)


def world_model_step(
    world_model: WorldModel,
    cache: KVCache,
    actions: torch.Tensor,
    current_obs_tokens: torch.Tensor,
    predict_next_obs: bool,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Advance the world model by one environment step with the KV cache.

    If the cache cannot hold another step it is re-primed from the current frame only (IRIS).

    :param world_model: the world model (called without gradient by the caller)
    :param cache: KV cache holding the context so far, ending with ``current_obs_tokens``
    :param actions: ``(B,)`` actions
    :param current_obs_tokens: ``(B, K)`` tokens of the current frame (used for re-priming)
    :param predict_next_obs: also generate the next frame's tokens (K more passes)
    :param temperature: sampling temperature for observation tokens
    :return: rewards ``(B,)`` in {-1, 0, 1}, ends ``(B,)`` bool, next tokens ``(B, K)`` or None
    """
    k = world_model.config.tokens_per_obs
    passes = 1 + k if predict_next_obs else 1
    if cache.size + passes > cache.max_tokens:
        prime_cache(world_model, cache, current_obs_tokens)
    output = world_model(actions.unsqueeze(1), cache, compute_observation_logits=predict_next_obs)
    rewards = sample_from_logits(output.logits_rewards[:, -1]).float() - 1.0
    ends = sample_from_logits(output.logits_ends[:, -1]).bool()
    if not predict_next_obs:
        return rewards, ends, None
    next_tokens = torch.empty(actions.shape[0], k, dtype=torch.long, device=actions.device)
    next_tokens[:, 0] = sample_from_logits(output.logits_observations[:, -1], temperature)
    for i in range(1, k):
        output = world_model(next_tokens[:, i - 1 : i], cache, compute_action_logits=False)
        next_tokens[:, i] = sample_from_logits(output.logits_observations[:, -1], temperature)
    # The last token has no head to evaluate: this pass only writes its keys and values.
    world_model(next_tokens[:, k - 1 :], cache, compute_observation_logits=False, compute_action_logits=False)
    return rewards, ends, next_tokens


@torch.no_grad()
def burn_in_start_state(
    tokenizer: Tokenizer,
    actor_critic: ActorCritic,
    context_tokens: torch.Tensor,
    mask_padding: torch.Tensor,
) -> tuple[LSTMState, torch.Tensor]:
    """Reconstruct the context frames from their tokens and burn the LSTM in on all but the last.

    :param tokenizer: frozen tokenizer
    :param actor_critic: the actor-critic
    :param context_tokens: ``(B, T + 1, K)`` tokens of the burn-in frames and the start frame
    :param mask_padding: ``(B, T + 1)`` True for real frames (the last one must be real)
    :return: the LSTM state after burn-in and the reconstructed start frame ``(B, *obs_shape)``
    """
    b, length, k = context_tokens.shape
    reconstructions = tokenizer.decode_tokens(context_tokens.reshape(b * length, k))
    reconstructions = reconstructions.view(b, length, *reconstructions.shape[1:])
    state = actor_critic.burn_in(reconstructions[:, :-1], mask_padding[:, :-1])
    return state, reconstructions[:, -1]


def imagine_rollouts(
    tokenizer: Tokenizer,
    world_model: WorldModel,
    actor_critic: ActorCritic,
    context_tokens: torch.Tensor,
    mask_padding: torch.Tensor,
    horizon: int,
    temperature: float = 1.0,
    keep_observations: bool = False,
    cache: Optional[KVCache] = None,
) -> ImaginationOutput:
    """Imagine ``horizon`` steps from real contexts; only the actor-critic receives gradient.

    :param tokenizer: frozen tokenizer (decodes generated tokens into frames)
    :param world_model: frozen world model
    :param actor_critic: the actor-critic being trained
    :param context_tokens: ``(B, T + 1, K)`` tokens of the burn-in frames followed by the start frame
    :param mask_padding: ``(B, T + 1)`` True for real frames; the last frame of each context must be real
    :param horizon: imagined steps H
    :param temperature: sampling temperature of the world model's observation tokens
    :param keep_observations: also return the frames the actor saw (for videos)
    :param cache: a KV cache of batch size B to reuse (allocated if None)
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1")
    if not bool(mask_padding[:, -1].all()):
        raise ValueError("the last frame of every imagination context must be a real frame (mask_padding[:, -1])")
    batch_size = context_tokens.shape[0]
    state, observations = burn_in_start_state(tokenizer, actor_critic, context_tokens, mask_padding)
    obs_tokens = context_tokens[:, -1]
    if cache is None or cache.batch_size != batch_size:
        cache = world_model.new_cache(batch_size, context_tokens.device)
    with torch.no_grad():
        prime_cache(world_model, cache, obs_tokens)

    actions, logits, values, rewards, ends, seen = [], [], [], [], [], []
    for step in range(horizon):
        if keep_observations:
            seen.append(observations)
        output = actor_critic(observations, state)
        state = output.state
        action = sample_from_logits(output.logits.detach())
        actions.append(action)
        logits.append(output.logits)
        values.append(output.values)
        predict_next = step < horizon - 1
        with torch.no_grad():
            reward, end, next_tokens = world_model_step(
                world_model, cache, action, obs_tokens, predict_next, temperature
            )
            if next_tokens is not None:
                obs_tokens = next_tokens
                observations = tokenizer.decode_tokens(next_tokens)
        rewards.append(reward)
        ends.append(end)

    return ImaginationOutput(
        actions=torch.stack(actions, 1),
        logits=torch.stack(logits, 1),
        values=torch.stack(values, 1),
        rewards=torch.stack(rewards, 1),
        ends=torch.stack(ends, 1),
        observations=torch.stack(seen, 1) if keep_observations else None,
    )
