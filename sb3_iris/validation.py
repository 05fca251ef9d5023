"""Checks of user input that fail early with an error naming the argument, the value and what is valid.

Used by :class:`~sb3_iris.iris.IRIS` (hyperparameters, ``learn``'s budget, what the env returns) and
:class:`~sb3_iris.policies.IrisPolicy` (``predict``'s inputs). Every check raises ``ValueError``, also for
values of the wrong type (``buffer_size="4"``, ``gamma=None``), as the existing hyperparameter checks do.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from sb3_iris.schedule import check_final_training_epochs

__all__ = [
    "check_actor_critic_epochs",
    "check_env_step",
    "check_hyperparameters",
    "check_networks_fit",
    "check_integer",
    "check_policy_kwargs",
    "check_predict_image",
    "check_predict_state",
    "check_real",
    "check_total_timesteps",
]

# The keys of policy_kwargs that hold keyword dicts of a part (validated by the parts' config dataclasses).
PART_KWARGS = ("tokenizer_kwargs", "world_model_kwargs", "actor_critic_kwargs", "optimizer_kwargs")


def _show(value: Any) -> str:
    """How a received value appears in an error message: numbers plainly, everything else as repr."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def is_integer(value: Any) -> bool:
    """True for Python and NumPy integers, False for bools, floats (even 4.0) and strings."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
    """True for Python and NumPy real numbers (NaN and inf included), False for bools and strings."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_integer(name: str, value: Any, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``.

    :param name: the argument's name, for the message
    :param value: the value received
    :param minimum: the smallest valid value
    """
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name}={_show(value)} must be an integer >= {minimum}")


def check_real(
    name: str,
    value: Any,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_inclusive: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real number in the given range.

    NaN fails every comparison, so finiteness is checked explicitly; the message keeps the range wording of
    the range checks (``gamma=nan must be in [0, 1]``).

    :param name: the argument's name, for the message
    :param value: the value received
    :param low: the lower bound (None: none)
    :param high: the upper bound, inclusive (None: none)
    :param low_inclusive: whether ``low`` itself is valid
    """
    if low is not None and high is not None:
        valid = f"in [{low:g}, {high:g}]" if low_inclusive else f"in ({low:g}, {high:g}]"
    elif low is not None:
        valid = f">= {low:g}" if low_inclusive else f"> {low:g}"
    elif high is not None:
        valid = f"<= {high:g}"
    else:
        valid = "a finite number"
    if not is_real(value):
        raise ValueError(f"{name}={_show(value)} must be a number {valid} (got {type(value).__name__})")
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        suffix = "" if math.isfinite(value) or valid == "a finite number" else " (and finite)"
        raise ValueError(f"{name}={_show(value)} must be {valid}{suffix}")


def check_total_timesteps(total_timesteps: Any) -> int:
    """``learn``'s budget as an int; ``ValueError`` for negative, non-integral or non-numeric values.

    :param total_timesteps: the value received (integral floats such as ``1e5`` are accepted)
    :return: the budget as an int
    """
    value = total_timesteps
    if is_real(value) and math.isfinite(value) and float(value).is_integer() and value >= 0:
        return int(value)
    raise ValueError(
        f"total_timesteps={_show(total_timesteps)} must be an integer >= 0 (the number of environment steps "
        "to collect, summed over envs)"
    )


def check_policy_kwargs(policy_kwargs: Optional[Mapping[str, Any]]) -> None:
    """Types of ``policy_kwargs``' own entries (the parts' fields are checked by their config dataclasses).

    :param policy_kwargs: the ``policy_kwargs`` given to IRIS
    """
    if policy_kwargs is None:
        return
    if not isinstance(policy_kwargs, Mapping):
        raise ValueError(f"policy_kwargs={_show(policy_kwargs)} must be a dict or None")
    for key in PART_KWARGS:
        value = policy_kwargs.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"policy_kwargs['{key}']={_show(value)} must be a dict or None")
    if "world_model_weight_decay" in policy_kwargs:
        check_real("policy_kwargs['world_model_weight_decay']", policy_kwargs["world_model_weight_decay"], low=0.0)


def check_env_step(observations: np.ndarray, rewards: np.ndarray, num_timesteps: int) -> None:
    """Refuse non-finite observations or rewards returned by the env, before they reach the replay.

    A NaN or inf observation poisons the tokenizer (and a vector tokenizer's standardisation), and a NaN reward
    would be read as 0 by the world model's reward classes: both would corrupt the model silently.

    :param observations: ``(n_envs, *obs_shape)`` from ``VecEnv.step`` or ``reset``
    :param rewards: ``(n_envs,)`` (None for a reset)
    :param num_timesteps: the model's step count, for the message
    """
    for what, values in (("observation", observations), ("reward", rewards)):
        if values is None:
            continue
        values = np.asarray(values)
        if values.dtype.kind not in "fc" or np.isfinite(values).all():
            continue
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
        example = values[bad[0]]
        shown = example if example.ndim == 0 else example[~np.isfinite(example)][0]
        raise ValueError(
            f"the env returned a non-finite {what} ({shown}) in env {int(bad[0])} at timestep {num_timesteps}: "
            f"IRIS refuses to store it (it would corrupt the tokenizer or the world model). Fix the env, or wrap "
            "it to replace such values (SB3's VecCheckNan finds where they come from)."
        )


def check_predict_image(observation: np.ndarray) -> None:
    """Refuse float images that are not integral values in [0, 255] (CnnPolicy takes uint8 frames).

    Frames scaled to [0, 1] would otherwise be read as almost black.

    :param observation: the observation(s) given to ``predict``
    """
    observation = np.asarray(observation)
    if observation.dtype.kind not in "fc" or observation.size == 0:
        return
    finite = np.isfinite(observation).all()
    low, high = (float(observation.min()), float(observation.max())) if finite else (math.nan, math.nan)
    integral = finite and bool(np.all(observation == np.round(observation)))
    if not integral or low < 0 or high > 255 or (0 < high <= 1):
        raise ValueError(
            f"CnnPolicy takes uint8 images with values in [0, 255], got {observation.dtype} values in "
            f"[{low:g}, {high:g}]: pass the env's uint8 frames (images in [0, 1]: "
            "(obs * 255).round().astype(np.uint8))"
        )


def check_predict_state(state: Any, episode_start: Any, n_envs: int, lstm_dim: int) -> None:
    """Shapes of ``predict``'s recurrent state ``(h, c)`` and ``episode_start`` for a batch of ``n_envs``.

    :param state: ``(h, c)``, each ``(1, n_envs, lstm_dim)``, or None
    :param episode_start: ``(n_envs,)`` or None
    :param n_envs: batch size of the observations
    :param lstm_dim: the actor-critic's state size
    """
    expected = (1, n_envs, lstm_dim)
    if state is not None:
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(
                f"state must be a tuple (h, c) of two arrays of shape (1, n_envs, lstm_dim)={expected}, got "
                f"{type(state).__name__}" + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
            )
        for name, part in zip(("h", "c"), state):
            shape = tuple(np.shape(part))
            if shape != expected:
                raise ValueError(
                    f"state {name} has shape {shape}, expected (1, n_envs, lstm_dim)={expected} for a batch of "
                    f"{n_envs} observation(s) (pass the state predict returned for this batch, or None)"
                )
    if episode_start is not None and np.size(episode_start) != n_envs:
        raise ValueError(
            f"episode_start has {np.size(episode_start)} entries (shape {np.shape(episode_start)}), expected one per "
            f"observation: n_envs={n_envs}"
        )


def check_hyperparameters(model: Any) -> None:
    """Refuse impossible hyperparameters of an IRIS model before any work, naming the argument, the value and
    what is valid. Also non-finite numbers (NaN fails every comparison) and values of the wrong type
    (``buffer_size="4"``).

    :param model: the IRIS model (its constructor arguments, after the preset filled them in)
    """
    positive = (
        "n_steps_per_epoch",
        "tokenizer_batch_size",
        "world_model_batch_size",
        "actor_critic_batch_size",
        "sequence_length",
        "imagination_horizon",
    )
    for name in positive:
        check_integer(name, getattr(model, name), 1)
    non_negative = (
        # 0 updates per epoch freezes that part (its phase is skipped).
        "tokenizer_updates_per_epoch",
        "world_model_updates_per_epoch",
        "actor_critic_updates_per_epoch",
        "tokenizer_start_after_epochs",
        "world_model_start_after_epochs",
        "actor_critic_start_after_epochs",
        "burn_in",
    )
    for name in non_negative:
        check_integer(name, getattr(model, name), 0)
    check_final_training_epochs(model.final_training_epochs)
    if model.tokenizer_stop_after_epochs is not None:
        check_integer("tokenizer_stop_after_epochs", model.tokenizer_stop_after_epochs, 0)
    if model.imagination_horizon < 2:
        raise ValueError(f"imagination_horizon={model.imagination_horizon} must be >= 2 (the loss uses H - 1 steps)")
    for name in ("gamma", "gae_lambda", "collect_epsilon"):
        check_real(name, getattr(model, name), 0.0, 1.0)
    check_integer("collect_epsilon_decay_steps", model.collect_epsilon_decay_steps, 0)
    if model.collect_epsilon_initial is not None:
        check_real("collect_epsilon_initial", model.collect_epsilon_initial, 0.0, 1.0)
        if model.collect_epsilon_decay_steps < 1:
            raise ValueError(
                f"collect_epsilon_decay_steps={model.collect_epsilon_decay_steps} must be >= 1 when "
                f"collect_epsilon_initial={model.collect_epsilon_initial} is set (the env steps of its fall to "
                f"collect_epsilon={model.collect_epsilon})"
            )
    for name in ("collect_temperature", "max_grad_norm"):
        check_real(name, getattr(model, name), low=0.0, low_inclusive=False)
    for name in ("imagination_temperature", "imagination_outcome_temperature"):
        check_real(name, getattr(model, name), low=0.0)
    check_real("ent_coef", model.ent_coef, low=0.0)
    if not callable(model.learning_rate):
        check_real("learning_rate", model.learning_rate, low=0.0, low_inclusive=False)
    if model.tokenizer_learning_rate is not None:
        check_real("tokenizer_learning_rate", model.tokenizer_learning_rate, low=0.0, low_inclusive=False)
    if model.buffer_size is not None and (not is_integer(model.buffer_size) or model.buffer_size < 1):
        raise ValueError(f"buffer_size={model.buffer_size!r} must be >= 1 (an integer) or None")
    check_real("reconstruction_cache_gb", model.reconstruction_cache_gb, low=0.0)
    if model.replay_memory_budget_gb is not None:
        check_real("replay_memory_budget_gb", model.replay_memory_budget_gb, low=0.0, low_inclusive=False)
    if model.actor_critic_epochs is not None:
        check_integer("actor_critic_epochs", model.actor_critic_epochs, 1)
    check_integer("actor_critic_minibatches", model.actor_critic_minibatches, 1)
    steps = model.actor_critic_batch_size * (model.imagination_horizon - 1)
    if model.actor_critic_minibatches > steps:
        raise ValueError(
            f"actor_critic_minibatches={model.actor_critic_minibatches} must be <= the steps of an imagined batch, "
            f"actor_critic_batch_size * (imagination_horizon - 1) = {steps}"
        )
    check_real("actor_critic_clip_range", model.actor_critic_clip_range, low=0.0, low_inclusive=False)
    for part in ("world_model", "actor_critic"):
        recent, event = f"{part}_recent_fraction", f"{part}_event_fraction"
        check_real(recent, getattr(model, recent), 0.0, 1.0)
        check_real(event, getattr(model, event), 0.0, 1.0)
        if getattr(model, recent) + getattr(model, event) > 1.0:
            raise ValueError(
                f"{recent} + {event} must be <= 1 (shares of one batch), got {recent}={getattr(model, recent)!r} "
                f"and {event}={getattr(model, event)!r}"
            )
    check_integer("recent_window_steps", model.recent_window_steps, 1)
    check_policy_kwargs(model.policy_kwargs)


def check_actor_critic_epochs(actor_critic_epochs: Optional[int], actor_critic_config: Any) -> None:
    """Refuse clipped passes (``actor_critic_epochs``) with a recurrent actor, whose steps cannot be re-evaluated
    one by one without its LSTM states.

    :param actor_critic_epochs: the IRIS argument (None: IRIS's one REINFORCE step)
    :param actor_critic_config: the actor-critic's :class:`~sb3_iris.nn.actor_critic.ActorCriticConfig`
    """
    if actor_critic_epochs is not None and actor_critic_config.recurrent:
        raise ValueError(
            f"actor_critic_epochs={actor_critic_epochs} needs a feed-forward actor-critic: pass "
            "policy_kwargs=dict(actor_critic_kwargs=dict(recurrent=False)), or actor_critic_epochs=None (IRIS)"
        )


def check_networks_fit(
    world_model_config: Any, sequence_length: int, imagination_horizon: int, performance: Any
) -> None:
    """Refuse segments longer than the world model's context and switches that exclude each other; warn when
    imagination reaches block positions that training never does.

    :param world_model_config: the world model's :class:`~sb3_iris.nn.world_model.WorldModelConfig`
    :param sequence_length: steps per world-model training segment
    :param imagination_horizon: imagined steps per trajectory
    :param performance: the resolved :class:`~sb3_iris.performance.PerformanceOptions`
    """
    if world_model_config.parallel_observations and performance.compile_imagination:
        raise ValueError(
            "compile_imagination=True cannot be combined with world_model_kwargs parallel_observations=True "
            "(the compiled pass generates one token at a time); set one of them to False"
        )
    max_blocks = world_model_config.max_blocks
    if sequence_length > max_blocks:
        raise ValueError(
            f"sequence_length={sequence_length} exceeds the world model's context "
            f"(world_model_kwargs max_blocks={max_blocks})"
        )
    imagined_blocks = min(imagination_horizon + 1, max_blocks)
    if imagined_blocks > sequence_length:
        warnings.warn(
            f"imagination_horizon={imagination_horizon} reaches block position {imagined_blocks} of the "
            f"world model, but it is trained on segments of sequence_length={sequence_length} blocks: the "
            f"last {imagined_blocks - sequence_length} imagined steps use position embeddings that never "
            f"receive training. Use sequence_length >= min(imagination_horizon + 1, max_blocks={max_blocks}) "
            "(IRIS: 20 and 20, re-priming at max_blocks=20).",
            UserWarning,
            stacklevel=3,
        )
