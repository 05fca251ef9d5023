"""Batched rollouts inside the world model (the hot loop of IRIS).

From real starting contexts (burn-in frames + a start frame), the actor's LSTM is burned in on the
tokenizer's reconstructions; the start frame's tokens prime the world model's KV cache; then for
each of ``horizon`` steps the actor acts on the current reconstructed frame, the world model
produces reward and end from the action token and the next frame token by token (K + 1 one-token
passes per step), and the decoder turns the tokens into the next frame the actor sees.
Gradients flow only into the actor-critic. :class:`DreamEnv` is the world model as an environment (its KV cache,
current frame and pending token), used by :func:`imagine_rollouts`, by ``IRIS.imagine`` and by ``sb3_iris.play``.
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


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, inverse_cdf: bool = False) -> torch.Tensor:
    """Sample one index per row of ``logits`` ``(..., N)`` at ``temperature`` (0 means argmax).

    :param logits: unnormalised log-probabilities
    :param temperature: sampling temperature (0: argmax)
    :param inverse_cdf: draw by inverting the cumulative distribution with one uniform number per row instead of
        ``torch.multinomial`` (which draws N exponential numbers per row: at MinAtar's 1000 codes and batch 64 that
        RNG is about a fifth of an actor-critic update on a CPU). The same distribution, a different random stream.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = F.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    if inverse_cdf:
        return inverse_cdf_indices(flat, torch.rand(flat.shape[0], 1, device=flat.device)).view(probs.shape[:-1])
    return torch.multinomial(flat, 1).view(probs.shape[:-1])


def inverse_cdf_indices(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of ``probs`` ``(B, N)``, the first index whose cumulative probability exceeds ``u * total``.

    With ``uniforms`` ``(B, 1)`` drawn from U[0, 1) the result is a draw from each row's distribution; an index of
    probability 0 is never returned (its cumulative sum equals the one before it).
    """
    cumulative = probs.cumsum(-1)
    thresholds = uniforms * cumulative[:, -1:]
    return torch.searchsorted(cumulative, thresholds, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def sample_outcomes(
    logits_rewards: torch.Tensor, logits_ends: torch.Tensor, temperature: float = 1.0, inverse_cdf: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw an imagined step's reward and end from the world model's heads.

    :param logits_rewards: ``(B, 3)`` logits of the reward's sign classes (-1, 0, +1)
    :param logits_ends: ``(B, 2)`` logits of continue / end
    :param temperature: sampling temperature (1.0: IRIS; 0: the most likely class)
    :param inverse_cdf: draw through :func:`inverse_cdf_indices` (see :func:`sample_from_logits`)
    :return: rewards ``(B,)`` float in {-1, 0, 1} and ends ``(B,)`` bool
    """
    rewards = sample_from_logits(logits_rewards, temperature, inverse_cdf).float() - 1.0
    ends = sample_from_logits(logits_ends, temperature, inverse_cdf).bool()
    return rewards, ends


class OneTokenStepper:
    """Runs the world model one token at a time through its static-shape pass, optionally compiled.

    Every call has the same shapes whatever the cache's fill level (the position is a tensor input and
    attention covers all cache slots with a mask), so ``torch.compile`` traces it once and, on CUDA with
    ``mode="reduce-overhead"``, replays it as a CUDA graph: the per-token launch overhead that dominates
    imagination at small batch sizes goes away. Results equal the dynamic cached pass within float tolerance
    (tests/test_performance.py). The cache tensors are marked as static addresses so a CUDA graph reads
    them in place instead of copying them on every replay.

    :param world_model: the world model (must be in eval mode when called)
    :param compile: wrap the pass in ``torch.compile`` (False: run it eagerly, the same computation)
    :param mode: ``torch.compile`` mode; None: ``"reduce-overhead"`` (CUDA graphs) on CUDA, ``"default"`` elsewhere
    :param backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without generating code)
    """

    def __init__(
        self, world_model: WorldModel, compile: bool = False, mode: Optional[str] = None, backend: str = "inductor"
    ) -> None:
        self.world_model = world_model
        self.compiled = compile
        self.mode = mode
        self.backend = backend
        self._step_function = world_model.forward_one_token
        self._compiled_by_device: dict[str, object] = {}
        self._positions: dict[str, torch.Tensor] = {}

    def _function_for(self, device: torch.device):
        if not self.compiled:
            return self._step_function
        key = str(device)
        if key not in self._compiled_by_device:
            options: dict = dict(fullgraph=True, dynamic=False, backend=self.backend)
            if self.backend == "inductor":
                options["mode"] = self.mode or ("reduce-overhead" if device.type == "cuda" else "default")
            self._compiled_by_device[key] = torch.compile(self._step_function, **options)
        return self._compiled_by_device[key]

    def _position(self, position: int, max_tokens: int, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._positions or self._positions[key].numel() < max_tokens:
            self._positions[key] = torch.arange(max_tokens, device=device)
        return self._positions[key][position]

    def _mark_static(self, cache: KVCache) -> None:
        if not self.compiled or cache.keys.device.type != "cuda" or cache.static_addresses:
            return
        mark_static_address = getattr(torch._dynamo, "mark_static_address", None)
        if mark_static_address is not None:
            mark_static_address(cache.keys)
            mark_static_address(cache.values)
            cache.static_addresses = True

    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Append one token per sequence to ``cache`` and return the logits at it.

        :param tokens: ``(B, 1)`` token ids (an action token where ``cache.size`` is an action position)
        :param cache: the KV cache, extended by one token
        :return: observation, reward and end logits, each ``(B, n)``
        """
        if self.world_model.training:
            raise RuntimeError("OneTokenStepper runs the world model in eval mode only (call world_model.eval())")
        position = cache.size
        if position >= cache.max_tokens:
            raise RuntimeError(f"KV cache overflow: {position} cached + 1 new > max_tokens={cache.max_tokens}")
        self._mark_static(cache)
        device = cache.keys.device
        step_function = self._function_for(device)
        logits_obs, logits_rewards, logits_ends, new_keys, new_values = step_function(
            tokens, self._position(position, cache.max_tokens, device), cache.keys, cache.values
        )
        cache.keys[:, :, :, position] = new_keys[:, :, :, 0].to(cache.keys.dtype)
        cache.values[:, :, :, position] = new_values[:, :, :, 0].to(cache.values.dtype)
        cache.size += 1
        return logits_obs[:, 0], logits_rewards[:, 0], logits_ends[:, 0]


def prime_cache(world_model: WorldModel, cache: KVCache, obs_tokens: torch.Tensor) -> None:
    """Reset ``cache`` and fill it with the tokens ``(B, K)`` of one frame (or a longer ``(B, T)`` context)."""
    cache.reset()
    world_model(obs_tokens, cache, compute_observation_logits=False, compute_action_logits=False)


class WorldModelStep(NamedTuple):
    """One imagined environment step.

    :param rewards: ``(B,)`` in {-1, 0, 1}
    :param ends: ``(B,)`` bool
    :param next_tokens: ``(B, K)`` tokens of the next frame, or None if not requested
    :param pending_tokens: ``(B, 1)`` last token of ``next_tokens`` not yet written to the cache (when deferred)
    """

    rewards: torch.Tensor
    ends: torch.Tensor
    next_tokens: Optional[torch.Tensor]
    pending_tokens: Optional[torch.Tensor]


def world_model_step(
    world_model: WorldModel,
    cache: KVCache,
    actions: torch.Tensor,
    current_obs_tokens: torch.Tensor,
    predict_next_obs: bool,
    temperature: float = 1.0,
    pending_tokens: Optional[torch.Tensor] = None,
    defer_last_token: bool = False,
    stepper: Optional[OneTokenStepper] = None,
    outcome_temperature: float = 1.0,
    inverse_cdf_sampling: bool = False,
) -> WorldModelStep:
    """Advance the world model by one environment step with the KV cache.

    If the cache cannot hold another step it is re-primed from the current frame only (IRIS).
    The last observation token of a frame has no head to evaluate: its pass only writes keys and
    values. With ``defer_last_token`` that write is returned as ``pending_tokens`` and done together
    with the next step's action token (one pass of two tokens instead of two passes), the same computation.

    :param world_model: the world model (called without gradient by the caller)
    :param cache: KV cache holding the context so far
    :param actions: ``(B,)`` actions
    :param current_obs_tokens: ``(B, K)`` tokens of the current frame (used for re-priming)
    :param predict_next_obs: also generate the next frame's tokens
    :param temperature: sampling temperature for observation tokens
    :param pending_tokens: ``(B, 1)`` deferred last token of the current frame, or None
    :param defer_last_token: leave the last generated token out of the cache and return it as pending
    :param stepper: run every pass as a static-shape one-token pass through this stepper (K + 1 passes; no
        deferral); None: the dynamic cached passes
    :param outcome_temperature: sampling temperature of the reward and the end (1.0: IRIS samples both; 0: the
        most likely class, so an end is predicted only where its probability passes 1/2)
    :param inverse_cdf_sampling: draw tokens, rewards and ends by inverse CDF (see :func:`sample_from_logits`)

    With ``parallel_observations`` the step is one pass (the current frame's tokens and the action together, the
    next frame's K tokens sampled from the action token's output); ``pending_tokens`` and ``defer_last_token``
    do not apply then.
    """
    if world_model.config.parallel_observations:
        if stepper is not None:
            raise ValueError(
                "a OneTokenStepper (compile_imagination) cannot run a world model with parallel_observations"
            )
        return _parallel_world_model_step(
            world_model,
            cache,
            actions,
            current_obs_tokens,
            predict_next_obs,
            temperature,
            outcome_temperature,
            inverse_cdf_sampling,
        )
    if stepper is not None:
        # The one-token pass writes every token itself: nothing is deferred.
        pending_tokens, defer_last_token = None, False
    k = world_model.config.tokens_per_obs
    n_pending = 0 if pending_tokens is None else pending_tokens.shape[1]
    passes = 1 + k if predict_next_obs else 1
    if cache.size + n_pending + passes > cache.max_tokens:
        prime_cache(world_model, cache, current_obs_tokens)
        pending_tokens = None
    step_tokens = (
        actions.unsqueeze(1) if pending_tokens is None else torch.cat([pending_tokens, actions.unsqueeze(1)], 1)
    )
    logits_obs, logits_rewards, logits_ends = _extend_cache(
        world_model, cache, step_tokens, stepper, observation_logits=predict_next_obs
    )
    rewards, ends = sample_outcomes(logits_rewards, logits_ends, outcome_temperature, inverse_cdf_sampling)
    if not predict_next_obs:
        return WorldModelStep(rewards, ends, None, None)
    next_tokens = torch.empty(actions.shape[0], k, dtype=torch.long, device=actions.device)
    next_tokens[:, 0] = sample_from_logits(logits_obs, temperature, inverse_cdf_sampling)
    for i in range(1, k):
        logits_obs, _, _ = _extend_cache(world_model, cache, next_tokens[:, i - 1 : i], stepper, action_logits=False)
        next_tokens[:, i] = sample_from_logits(logits_obs, temperature, inverse_cdf_sampling)
    if defer_last_token:
        return WorldModelStep(rewards, ends, next_tokens, next_tokens[:, k - 1 :])
    _extend_cache(world_model, cache, next_tokens[:, k - 1 :], stepper, observation_logits=False, action_logits=False)
    return WorldModelStep(rewards, ends, next_tokens, None)


class DreamEnv:
    """The world model as a batched environment: ``reset`` from real frames, then ``step`` with actions.

    Owns what travels from one imagined step to the next: the KV cache (reused across resets of the same batch
    size), the current frame's tokens, the optional static-shape :class:`OneTokenStepper`, and the frame's last
    token when it is merged into the next step's pass (``merge_last_token``; a stepper writes every token itself,
    see :func:`world_model_step`). Runs without gradient.

    :param world_model: the world model (in eval mode)
    :param temperature: default sampling temperature of the observation tokens
    :param merge_last_token: write each generated frame's last token together with the next action token
    :param stepper: generate through this one-token pass (None: the dynamic cached passes)
    :param cache: a KV cache to reuse (allocated at the first reset, or when the batch size changes)
    :param outcome_temperature: default sampling temperature of the rewards and ends (1.0: IRIS; 0: the most likely)
    :param inverse_cdf_sampling: draw tokens, rewards and ends by inverse CDF (see :func:`sample_from_logits`)
    """

    def __init__(
        self,
        world_model: WorldModel,
        temperature: float = 1.0,
        merge_last_token: bool = False,
        stepper: Optional[OneTokenStepper] = None,
        cache: Optional[KVCache] = None,
        outcome_temperature: float = 1.0,
        inverse_cdf_sampling: bool = False,
    ) -> None:
        self.world_model = world_model
        self.inverse_cdf_sampling = inverse_cdf_sampling
        self.temperature = temperature
        self.outcome_temperature = outcome_temperature
        self.merge_last_token = merge_last_token
        self.stepper = stepper
        self.cache = cache
        self.obs_tokens: Optional[torch.Tensor] = None
        self._pending_tokens: Optional[torch.Tensor] = None

    @torch.no_grad()
    def reset(self, obs_tokens: torch.Tensor, past: Optional[torch.Tensor] = None) -> None:
        """Start the dream at the frame of tokens ``obs_tokens`` ``(B, K)``.

        :param obs_tokens: tokens of the current (real) frame
        :param past: ``(B, T)`` interleaved tokens and actions of earlier steps to put in the context first (None:
            the frame alone, as in IRIS's imagination)
        """
        batch_size = obs_tokens.shape[0]
        if self.cache is None or self.cache.batch_size != batch_size:
            self.cache = self.world_model.new_cache(batch_size, obs_tokens.device)
        sequence = obs_tokens if past is None else torch.cat([past, obs_tokens], 1)
        prime_cache(self.world_model, self.cache, sequence)
        self.obs_tokens = obs_tokens
        self._pending_tokens = None

    @torch.no_grad()
    def step(
        self,
        actions: torch.Tensor,
        predict_next_obs: bool = True,
        temperature: Optional[float] = None,
        outcome_temperature: Optional[float] = None,
    ) -> WorldModelStep:
        """One imagined step from the current frame: rewards, ends and (unless not asked for) the next frame's tokens.

        :param actions: ``(B,)`` actions
        :param predict_next_obs: generate the next frame (False for the last step of a rollout)
        :param temperature: sampling temperature of the observation tokens (None: the env's)
        :param outcome_temperature: sampling temperature of the rewards and ends (None: the env's)
        """
        if self.cache is None or self.obs_tokens is None:
            raise RuntimeError("DreamEnv.step() before reset(): call reset(obs_tokens) first")
        step = world_model_step(
            self.world_model,
            self.cache,
            actions,
            self.obs_tokens,
            predict_next_obs,
            self.temperature if temperature is None else temperature,
            pending_tokens=self._pending_tokens,
            defer_last_token=self.merge_last_token,
            stepper=self.stepper,
            outcome_temperature=self.outcome_temperature if outcome_temperature is None else outcome_temperature,
            inverse_cdf_sampling=self.inverse_cdf_sampling,
        )
        self._pending_tokens = step.pending_tokens
        if step.next_tokens is not None:
            self.obs_tokens = step.next_tokens
        return step


def _parallel_world_model_step(
    world_model: WorldModel,
    cache: KVCache,
    actions: torch.Tensor,
    current_obs_tokens: torch.Tensor,
    predict_next_obs: bool,
    temperature: float,
    outcome_temperature: float = 1.0,
    inverse_cdf_sampling: bool = False,
) -> WorldModelStep:
    """One imagined step of a world model with ``parallel_observations``: one pass for the whole step.

    The current frame's K tokens (unless the cache already holds them, as after priming) and the action go
    through the transformer together; the action token's output gives the reward, the end and all K tokens
    of the next frame. The next frame enters the cache with the next step's action.
    """
    k = world_model.config.tokens_per_obs
    needs_frame = cache.size % world_model.tokens_per_block == 0
    if cache.size + (k if needs_frame else 0) + 1 > cache.max_tokens:
        prime_cache(world_model, cache, current_obs_tokens)
        needs_frame = False
    step_tokens = torch.cat([current_obs_tokens, actions.unsqueeze(1)], 1) if needs_frame else actions.unsqueeze(1)
    output = world_model(step_tokens, cache, compute_observation_logits=predict_next_obs)
    rewards, ends = sample_outcomes(
        output.logits_rewards[:, -1], output.logits_ends[:, -1], outcome_temperature, inverse_cdf_sampling
    )
    next_tokens = (
        sample_from_logits(output.logits_observations[:, -1], temperature, inverse_cdf_sampling)
        if predict_next_obs
        else None
    )
    return WorldModelStep(rewards, ends, next_tokens, None)


def _extend_cache(
    world_model: WorldModel,
    cache: KVCache,
    tokens: torch.Tensor,
    stepper: Optional[OneTokenStepper],
    observation_logits: bool = True,
    action_logits: bool = True,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Feed ``tokens`` ``(B, T)`` into ``cache`` and return the observation, reward and end logits at the last one.

    With a ``stepper`` every token goes through its static-shape one-token pass (all heads evaluated); without,
    one dynamic cached pass evaluates only the heads asked for. Logits not asked for are None.
    """
    if stepper is not None:
        for i in range(tokens.shape[1]):
            logits = stepper(tokens[:, i : i + 1], cache)
        return logits
    output = world_model(
        tokens, cache, compute_observation_logits=observation_logits, compute_action_logits=action_logits
    )
    return (
        output.logits_observations[:, -1] if observation_logits else None,
        output.logits_rewards[:, -1] if action_logits else None,
        output.logits_ends[:, -1] if action_logits else None,
    )


@torch.no_grad()
def reconstruct_context(tokenizer: Tokenizer, context_tokens: torch.Tensor, mask_padding: torch.Tensor) -> torch.Tensor:
    """Reconstructions ``(B, T + 1, *obs_shape)`` of the real frames of contexts; padded frames are zeros.

    Padded frames never reach the LSTM (burn-in leaves the state unchanged there), so they are not decoded.

    :param tokenizer: frozen tokenizer
    :param context_tokens: ``(B, T + 1, K)``
    :param mask_padding: ``(B, T + 1)`` True for real frames
    """
    real = mask_padding.bool()
    decoded = tokenizer.decode_tokens(context_tokens[real])
    reconstructions = decoded.new_zeros(*mask_padding.shape, *decoded.shape[1:])
    reconstructions[real] = decoded
    return reconstructions


@torch.no_grad()
def burn_in_start_state(
    tokenizer: Tokenizer,
    actor_critic: ActorCritic,
    context_tokens: torch.Tensor,
    mask_padding: torch.Tensor,
    context_reconstructions: Optional[torch.Tensor] = None,
) -> tuple[LSTMState, torch.Tensor]:
    """Reconstruct the context frames from their tokens and burn the LSTM in on all but the last.

    :param tokenizer: frozen tokenizer
    :param actor_critic: the actor-critic
    :param context_tokens: ``(B, T + 1, K)`` tokens of the burn-in frames and the start frame
    :param mask_padding: ``(B, T + 1)`` True for real frames (the last one must be real)
    :param context_reconstructions: reconstructions of the context frames if already known (e.g. cached),
        ``(B, T + 1, *obs_shape)``; computed from the tokens if None
    :return: the LSTM state after burn-in and the reconstructed start frame ``(B, *obs_shape)``
    """
    if context_reconstructions is None:
        context_reconstructions = reconstruct_context(tokenizer, context_tokens, mask_padding)
    state = actor_critic.burn_in(context_reconstructions[:, :-1], mask_padding[:, :-1])
    return state, context_reconstructions[:, -1]


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
    merge_last_token: bool = False,
    context_reconstructions: Optional[torch.Tensor] = None,
    stepper: Optional[OneTokenStepper] = None,
    dream: Optional[DreamEnv] = None,
    outcome_temperature: float = 1.0,
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
    :param merge_last_token: write each frame's last token together with the next action token
        (K passes per step instead of K + 1; same results within float tolerance)
    :param context_reconstructions: reconstructions of the context frames if already known (a cache),
        ``(B, T + 1, *obs_shape)``; decoded from ``context_tokens`` if None
    :param stepper: generate through this static-shape (optionally compiled) one-token pass; ``merge_last_token``
        does not apply then
    :param dream: the :class:`DreamEnv` to imagine in (its cache, stepper and merging; ``cache``,
        ``merge_last_token`` and ``stepper`` are then not used); None: one made from those arguments
    :param outcome_temperature: sampling temperature of the imagined rewards and ends (1.0: IRIS; 0: the most
        likely class)
    """
    if horizon < 1:
        raise ValueError(f"horizon={horizon} must be >= 1")
    if not bool(mask_padding[:, -1].all()):
        raise ValueError("the last frame of every imagination context must be a real frame (mask_padding[:, -1])")
    state, observations = burn_in_start_state(
        tokenizer, actor_critic, context_tokens, mask_padding, context_reconstructions
    )
    if dream is None:
        dream = DreamEnv(world_model, temperature, merge_last_token, stepper, cache)
    dream.reset(context_tokens[:, -1])

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
        step_output = dream.step(
            action,
            predict_next_obs=step < horizon - 1,
            temperature=temperature,
            outcome_temperature=outcome_temperature,
        )
        if step_output.next_tokens is not None:
            with torch.no_grad():
                observations = tokenizer.decode_tokens(step_output.next_tokens)
        rewards.append(step_output.rewards)
        ends.append(step_output.ends)

    return ImaginationOutput(
        actions=torch.stack(actions, 1),
        logits=torch.stack(logits, 1),
        values=torch.stack(values, 1),
        rewards=torch.stack(rewards, 1),
        ends=torch.stack(ends, 1),
        observations=torch.stack(seen, 1) if keep_observations else None,
    )
