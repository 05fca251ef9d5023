"""The training phases of an IRIS epoch: one runner for the tokenizer, the world model and the actor-critic.

Each part is a :class:`Phase`: a number of updates, one ``update()`` that samples a batch, computes the part's
loss and takes an optimiser step (returning the values to log, as tensors), and hooks around the updates. The
runner :func:`run_phase` reports progress, turns each update's values into floats and returns them per update;
:func:`phase_metrics` averages them under the documented log keys (``train/...``).

The three updates (IRIS, Micheli et al. 2023, Algorithm 1): the tokenizer on single replay frames (VQ-VAE losses),
the world model on replay segments (cross-entropies of next tokens, rewards and ends), the actor-critic on
trajectories imagined in the world model (lambda-returns, REINFORCE with a value baseline and an entropy bonus).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np
import torch

from sb3_iris.nn.actor_critic import (
    ActorCriticLosses,
    actor_critic_loss,
    clipped_actor_critic_loss,
    compute_lambda_returns,
    standardize_advantages,
    taken_action_log_probs,
)
from sb3_iris.nn.tokenizer import codebook_usage

if TYPE_CHECKING:
    from sb3_iris.imagination import ImaginationOutput
    from sb3_iris.iris import IRIS
    from sb3_iris.progress import TrainingProgress

__all__ = [
    "ActorCriticUpdateSettings",
    "Phase",
    "clip_and_step",
    "make_phases",
    "phase_metrics",
    "phase_runs",
    "run_clipped_passes",
    "run_phase",
    "train_actor_critic",
    "train_epoch",
    "train_phase",
]

# Replay observations used to fit a vector tokenizer's input standardisation (once, before its first update).
NORMALIZATION_SAMPLE = 10_000


def _nothing() -> None:
    return None


@dataclass
class Phase:
    """One part's training in an epoch.

    :param name: ``"tokenizer"``, ``"world_model"`` or ``"actor_critic"``
    :param n_updates: gradient steps in the phase
    :param update: one gradient step; returns the scalars to log (tensors, turned into floats by the runner)
    :param log_keys: the name of each scalar's mean in the logs (``train/...``)
    :param start: before the first update (train / eval modes, one-off fits)
    :param end: when the phase ends, also by an error or an interrupt (e.g. invalidate the tokenizer's caches)
    :param extra_metrics: metrics of the whole phase beyond the means (e.g. codebook usage)
    """

    name: str
    n_updates: int
    update: Callable[[], dict[str, torch.Tensor]]
    log_keys: dict[str, str]
    start: Callable[[], None] = _nothing
    end: Callable[[], None] = _nothing
    extra_metrics: Callable[[], dict[str, float]] = field(default=dict)


def run_phase(phase: Phase, report: Optional[Callable[[int, int], None]] = None) -> list[dict[str, float]]:
    """Run the updates of ``phase``; return each update's logged values as floats.

    :param phase: the phase
    :param report: called with ``(update, n_updates)`` before each update (progress)
    """
    history = []
    try:
        phase.start()
        for update in range(phase.n_updates):
            if report is not None:
                report(update, phase.n_updates)
            history.append({name: value.item() for name, value in phase.update().items()})
    finally:
        phase.end()
    return history


def phase_metrics(phase: Phase, history: list[dict[str, float]]) -> dict[str, float]:
    """The means of a phase's per-update values under their log keys, and its extra metrics.

    :param phase: the phase that ran
    :param history: what :func:`run_phase` returned
    """
    means = {key: float(np.mean([values[name] for values in history])) for name, key in phase.log_keys.items()}
    return {**means, **phase.extra_metrics()}


def clip_and_step(
    loss: torch.Tensor, module: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float
) -> None:
    """Backpropagate ``loss``, clip the gradient norm of ``module``'s parameters, take an optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()


def _losses(losses: object, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {name: getattr(losses, name) for name in names}


def tokenizer_phase(model: IRIS) -> Phase:
    """The tokenizer's phase: VQ-VAE updates on frames sampled from the replay."""
    tokenizer, replay = model.policy.tokenizer, model.replay_buffer
    epoch_tokens: list[torch.Tensor] = []

    def start() -> None:
        if getattr(tokenizer, "needs_normalization_fit", False):
            frames, _, _ = replay.sample_frames(min(NORMALIZATION_SAMPLE, replay.n_steps))
            tokenizer.fit_normalization(model.to_tensor(frames))
        tokenizer.train()

    def update() -> dict[str, torch.Tensor]:
        frames, _, _ = replay.sample_frames(model.tokenizer_batch_size)
        with model.autocast():
            losses, tokens = tokenizer.compute_loss(tokenizer.preprocess(model.to_tensor(frames)))
        clip_and_step(losses.total, tokenizer, model.policy.tokenizer_optimizer, model.max_grad_norm)
        epoch_tokens.append(tokens.detach())
        return _losses(losses, ("reconstruction", "commitment", "perceptual", "total"))

    def extra_metrics() -> dict[str, float]:
        used, perplexity = codebook_usage(torch.cat(epoch_tokens), tokenizer.vocab_size)
        return {"train/codebook_usage": used, "train/codebook_perplexity": perplexity}

    keys = {
        "total": "train/tokenizer_loss",
        "reconstruction": "train/tokenizer_reconstruction_loss",
        "commitment": "train/tokenizer_commitment_loss",
        "perceptual": "train/tokenizer_perceptual_loss",
    }
    # Tokens cached with the previous tokenizer are stale when the phase ends (also after an interrupted one).
    end = model.tokenizer_cache.invalidate
    return Phase("tokenizer", model.tokenizer_updates_per_epoch, update, keys, start, end, extra_metrics)


def world_model_phase(model: IRIS) -> Phase:
    """The world model's phase: next-token, reward and end cross-entropies on replay segments."""
    tokenizer, world_model = model.policy.tokenizer, model.policy.world_model

    def start() -> None:
        tokenizer.eval()
        world_model.train()

    def update() -> dict[str, torch.Tensor]:
        batch = model.sample_replay_segments(
            model.world_model_batch_size,
            model.sequence_length,
            "right",
            model.world_model_recent_fraction,
            model.world_model_event_fraction,
        )
        obs_tokens = model.tokenizer_cache.segment_tokens(
            batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding
        )
        with model.autocast():
            losses = world_model.compute_loss(
                obs_tokens,
                model.to_tensor(batch.actions).long(),
                model.to_tensor(batch.rewards).float(),
                model.to_tensor(batch.terminations),
                model.to_tensor(batch.mask_padding),
            )
        clip_and_step(losses.total, world_model, model.policy.world_model_optimizer, model.max_grad_norm)
        return _losses(losses, ("total", "observations", "rewards", "ends"))

    keys = {
        "total": "train/world_model_loss",
        "observations": "train/world_model_observation_loss",
        "rewards": "train/world_model_reward_loss",
        "ends": "train/world_model_end_loss",
    }
    return Phase("world_model", model.world_model_updates_per_epoch, update, keys, start)


def actor_critic_phase(model: IRIS) -> Phase:
    """The actor-critic's phase: lambda-return losses on trajectories imagined in the world model."""
    actor_critic = model.policy.actor_critic
    settings = actor_critic_update_settings(model)

    def update() -> dict[str, torch.Tensor]:
        clipped = settings.epochs is not None
        # The clipped passes recompute the logits and values from the frames the actor saw: no graph needed.
        with torch.no_grad() if clipped else nullcontext():
            rollout = model.imagine(model.actor_critic_batch_size, keep_observations=clipped)
        returns = compute_lambda_returns(
            rollout.rewards.float(), rollout.values.detach().float(), rollout.ends, model.gamma, model.gae_lambda
        )
        losses = train_actor_critic(
            actor_critic, model.policy.actor_critic_optimizer, rollout, returns, settings, model.autocast
        )
        return {
            **_losses(losses, ("total", "policy", "value", "entropy")),
            "imagined_return": returns[:, 0].mean(),
            "imagined_reward_sum": rollout.rewards.sum(1).mean(),
            "imagined_reward_per_step": rollout.rewards.mean(),
        }

    keys = {
        "total": "train/actor_critic_loss",
        "policy": "train/policy_loss",
        "value": "train/value_loss",
        "entropy": "train/entropy",
        "imagined_return": "train/imagined_return",
        "imagined_reward_sum": "train/imagined_reward_sum",
        "imagined_reward_per_step": "train/imagined_reward_per_step",
    }
    return Phase("actor_critic", model.actor_critic_updates_per_epoch, update, keys, actor_critic.train)


@dataclass
class ActorCriticUpdateSettings:
    """Settings of an actor-critic update (:func:`train_actor_critic`).

    :param epochs: None: IRIS's one REINFORCE step on the batch; N: N PPO-clipped passes over it
        (:func:`run_clipped_passes`)
    :param minibatches: shuffled minibatches per clipped pass
    :param clip_range: PPO's clip range of the probability ratio
    :param ent_coef: entropy weight
    :param normalize_advantage: standardise the advantages over the batch
    :param max_grad_norm: gradient-norm clip
    """

    epochs: Optional[int]
    minibatches: int
    clip_range: float
    ent_coef: float
    normalize_advantage: bool
    max_grad_norm: float


def actor_critic_update_settings(model: IRIS) -> ActorCriticUpdateSettings:
    """``model``'s actor-critic update settings (``actor_critic_epochs``, ``actor_critic_minibatches``,
    ``actor_critic_clip_range``, ``ent_coef``, ``normalize_advantage``, ``max_grad_norm``)."""
    return ActorCriticUpdateSettings(
        epochs=model.actor_critic_epochs,
        minibatches=model.actor_critic_minibatches,
        clip_range=model.actor_critic_clip_range,
        ent_coef=model.ent_coef,
        normalize_advantage=model.normalize_advantage,
        max_grad_norm=model.max_grad_norm,
    )


def train_actor_critic(
    actor_critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: ImaginationOutput,
    returns: torch.Tensor,
    settings: ActorCriticUpdateSettings,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> ActorCriticLosses:
    """One actor-critic update on a batch of trajectories: IRIS's one REINFORCE step (``settings.epochs`` None;
    the logits and values must carry their graph) or :func:`run_clipped_passes`.

    :param actor_critic: the actor-critic
    :param optimizer: its optimiser
    :param rollout: the trajectories (imagined, or real ones in ``benchmarks/oracle_actor_critic.py``)
    :param returns: ``(B, H)`` lambda-returns of the batch
    :param settings: the update's settings
    :param autocast: the context of the clipped passes' forward passes (mixed precision)
    :return: the losses (for the clipped passes, their means over the minibatch steps)
    """
    if settings.epochs is not None:
        return run_clipped_passes(actor_critic, optimizer, rollout, returns, settings, autocast)
    losses = actor_critic_loss(
        rollout.logits[:, :-1],
        rollout.actions[:, :-1],
        rollout.values[:, :-1],
        returns[:, :-1],
        settings.ent_coef,
        normalize_advantage=settings.normalize_advantage,
    )
    clip_and_step(losses.total, actor_critic, optimizer, settings.max_grad_norm)
    return losses


def run_clipped_passes(
    actor_critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rollout: ImaginationOutput,
    returns: torch.Tensor,
    settings: ActorCriticUpdateSettings,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> ActorCriticLosses:
    """``settings.epochs`` (an int) passes over a batch of trajectories, each in ``settings.minibatches`` shuffled
    minibatches of its ``B x (H - 1)`` steps, with PPO's clipped loss (:func:`clipped_actor_critic_loss`; not in
    IRIS). The returns and advantages are computed once, from the batch's values. A feed-forward actor only
    (``recurrent=False``): each step is re-evaluated on the frame the actor saw, without an LSTM state.

    :param actor_critic: the feed-forward actor-critic
    :param optimizer: its optimiser
    :param rollout: the trajectories (imagined, or real ones in ``benchmarks/oracle_actor_critic.py``), with
        ``observations``: ``(B, H, *obs_shape)`` the frames the actor saw
    :param returns: ``(B, H)`` lambda-returns of the batch
    :param settings: the passes' settings
    :param autocast: the context of the forward passes (mixed precision)
    :return: the mean of each loss over the minibatch steps
    """
    frames = rollout.observations[:, :-1].flatten(0, 1)
    actions = rollout.actions[:, :-1].flatten(0, 1)
    old_log_probs = torch.log_softmax(rollout.logits[:, :-1].detach().float(), -1).flatten(0, 1)
    old_log_probs = taken_action_log_probs(old_log_probs, actions)
    step_returns = returns[:, :-1].detach().flatten(0, 1)
    advantages = step_returns - rollout.values[:, :-1].detach().float().flatten(0, 1)
    if settings.normalize_advantage:
        advantages = standardize_advantages(advantages)
    steps: list[ActorCriticLosses] = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(actions), device=actions.device)
        for indices in order.chunk(settings.minibatches):
            with autocast():
                output = actor_critic(frames[indices], actor_critic.initial_state(len(indices)))
            losses = clipped_actor_critic_loss(
                output.logits,
                actions[indices],
                old_log_probs[indices],
                output.values,
                step_returns[indices],
                advantages[indices],
                settings.ent_coef,
                settings.clip_range,
            )
            clip_and_step(losses.total, actor_critic, optimizer, settings.max_grad_norm)
            steps.append(ActorCriticLosses(*(value.detach() for value in losses)))
    return ActorCriticLosses(*(torch.stack(values).mean() for values in zip(*steps)))


#: The phases of an epoch, in order.
PHASE_FACTORIES = {"tokenizer": tokenizer_phase, "world_model": world_model_phase, "actor_critic": actor_critic_phase}


def make_phases(model: IRIS) -> list[Phase]:
    """The three phases of an epoch of ``model``, in training order (tokenizer, world model, actor-critic)."""
    return [factory(model) for factory in PHASE_FACTORIES.values()]


def phase_runs(model: IRIS, epoch: int, name: str) -> bool:
    """Whether part ``name`` trains in ``epoch``: after its warm-up, before its stop, with updates to do."""
    if epoch <= getattr(model, f"{name}_start_after_epochs") or getattr(model, f"{name}_updates_per_epoch") == 0:
        return False  # a part frozen with 0 updates per epoch: no phase, no (NaN) losses logged
    stop = model.tokenizer_stop_after_epochs  # the tokenizer trains no more after this epoch
    return not (name == "tokenizer" and stop is not None and epoch > stop)


def train_epoch(
    model: IRIS, epoch: int, progress: Optional[TrainingProgress] = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Run the phases due in ``epoch`` (:func:`phase_runs`), in order; count their updates on the model.

    :param model: the IRIS model
    :param epoch: the epoch (1-based, counted over ``learn()`` calls)
    :param progress: what reports the phases' progress (None: nothing)
    :return: the phases' metrics (``train/...`` keys) and their seconds, by part
    """
    metrics: dict[str, float] = {}
    phase_seconds: dict[str, float] = {}
    for phase in make_phases(model):
        if not phase_runs(model, epoch, phase.name):
            continue
        report = None
        if progress is not None:
            progress.note(f"IRIS epoch {epoch}: training {phase.name}", verbose=2)
            report = _reporter(progress, epoch, phase.name)
        start = time.perf_counter()
        metrics.update(train_phase(model, phase, report))
        phase_seconds[phase.name] = time.perf_counter() - start
    return metrics, phase_seconds


def train_phase(model: IRIS, phase: Phase, report: Optional[Callable[[int, int], None]] = None) -> dict[str, float]:
    """Run ``phase`` (:func:`run_phase`) and count its updates on ``model``; return its metrics (``train/...``)."""
    metrics = phase_metrics(phase, run_phase(phase, report))
    model._n_updates += phase.n_updates
    return metrics


def _reporter(progress: TrainingProgress, epoch: int, name: str) -> Callable[[int, int], None]:
    return lambda done, total: progress.phase_update(epoch, name, done, total)
