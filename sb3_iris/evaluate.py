"""Evaluate a trained IRIS agent with the evaluation protocol of the paper.

Usage::

    python -m sb3_iris.evaluate MODEL.zip --env PongNoFrameskip-v4 --episodes 100
    python -m sb3_iris.evaluate MODEL.zip --env CartPole-v1 --episodes 10 --seed 0 --json
    python -m sb3_iris.evaluate MODEL.zip --env my_pkg.envs:MyEnv-v0 --episodes 5        # module:id syntax
    python -m sb3_iris.evaluate MODEL.zip --env MyEnv-v0 --env-module my_pkg.envs --episodes 5
    python -m sb3_iris.evaluate logs/iris/MinAtar-Breakout-v1_1/MinAtar-Breakout-v1.zip --env MinAtar/Breakout-v1

A model inside an RL Zoo run folder is evaluated on the env it was trained on: the ``env_wrapper`` of
``<run>/<env>/config.yml`` and the ``--env-kwargs`` and ``--gym-packages`` of ``<run>/<env>/args.yml`` (as
``rl_zoo3.enjoy`` does; :mod:`sb3_iris.run_config`). ``--env-wrapper`` and ``--env-kwargs`` give or replace them
(``--env-wrapper sb3_iris.minatar.MinAtarImageWrapper``, or with arguments
``--env-wrapper "{sb3_iris.minatar.MinAtarImageWrapper: {cell_size: 1, image_size: 16}}"``).

Protocol (IRIS): actions sampled from the policy at temperature 0.5 (``--temperature``; ``--deterministic`` takes
the most likely action instead), no epsilon-greedy exploration, the actor's LSTM state carried through the episode
and reset at its start. For Atari ids (``*NoFrameskip-v4``) the env is built with the IRIS evaluation
preprocessing: 64x64 RGB, frame skip 4 (max over the last 2 frames), one no-op at reset, no episode end on life
loss (an episode is a whole game, its return the game score), unclipped rewards, 108 000-frame limit. ``ALE/*-v5``
ids get the same preprocessing on top of ``frameskip=1`` but keep their sticky actions (the v5 protocol).

For the 26 Atari 100k games the human-normalised score HNS = (score - random) / (human - random) of the mean
return is printed too (scores in :mod:`sb3_iris.atari_scores`).

Output: mean and standard deviation of the episode returns (and lengths) on stdout; ``--json`` prints one JSON
object instead. Exit status 0, or 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from sb3_iris.atari_scores import ATARI_SCORES, atari_game_name, human_normalized_score

# The env factory lives in sb3_iris.envs; these names stay importable from here as before.
from sb3_iris.envs import (  # noqa: F401
    UsageError,
    add_env_settings_arguments,
    check_compatible,
    env_supports_rgb_render,
    import_env_modules,
    is_atari_id,
    make_env,
    observation_to_policy,
    resolve_env_settings,
)
from sb3_iris.nn.actor_critic import LSTMState

__all__ = [
    "EvaluationResult",
    "IrisAgent",
    "evaluate_model",
    "import_env_modules",
    "is_atari_id",
    "load_model",
    "main",
    "make_env",
    "resolve_env_settings",
]

DEFAULT_TEMPERATURE = 0.5


# --------------------------------------------------------------------------------------------------
# Model and agent
# --------------------------------------------------------------------------------------------------


def load_model(path: str, device: str = "auto"):
    """Load a saved :class:`sb3_iris.IRIS` model (``.zip``) without an env."""
    from sb3_iris import IRIS

    if not os.path.exists(path) and os.path.exists(path + ".zip"):
        path = path + ".zip"
    if not os.path.exists(path):
        raise UsageError(f"model file {path!r} does not exist")
    return IRIS.load(path, device=device)


class IrisAgent:
    """Acts in a single real env with an IRIS policy, carrying the actor's LSTM state.

    :param model: an :class:`sb3_iris.IRIS` model
    :param temperature: policy sampling temperature (IRIS evaluation: 0.5)
    :param deterministic: take the most likely action instead of sampling
    """

    def __init__(self, model: Any, temperature: float = DEFAULT_TEMPERATURE, deterministic: bool = False) -> None:
        self.model = model
        self.policy = model.policy
        self.policy.set_training_mode(False)
        self.temperature = temperature
        self.deterministic = deterministic
        self.state = self.policy.initial_state(1)
        self._episode_start = True

    def reset(self) -> None:
        """Start a new episode (the LSTM state is reset at the next :meth:`act`)."""
        self._episode_start = True

    def lstm_state(self) -> LSTMState:
        """The LSTM state the next :meth:`act` starts from (the initial one when a new episode starts)."""
        return self.policy.initial_state(1) if self._episode_start else self.state

    def to_tensor(self, observation: np.ndarray) -> torch.Tensor:
        """``(1, *policy_obs_shape)`` tensor of one env observation."""
        array = observation_to_policy(observation, self.policy.observation_space)
        return torch.as_tensor(array[None], device=self.policy.device)

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> int:
        """Action for one env observation."""
        starts = torch.tensor([self._episode_start], device=self.policy.device)
        action, self.state = self.policy.act(
            self.to_tensor(observation),
            self.state,
            starts,
            temperature=self.temperature,
            deterministic=self.deterministic,
        )
        self._episode_start = False
        return int(action[0])


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Episode returns and lengths of an evaluation, and their statistics."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths)) if self.lengths else float("nan")


def evaluate_model(
    model: Any,
    env: gym.Env,
    n_episodes: int,
    temperature: float = DEFAULT_TEMPERATURE,
    deterministic: bool = False,
    seed: Optional[int] = None,
    max_episode_steps: Optional[int] = None,
    verbose: int = 0,
) -> EvaluationResult:
    """Run ``n_episodes`` episodes of the agent in ``env`` (returns are sums of the env's rewards).

    :param model: an IRIS model
    :param env: a single Gymnasium env (e.g. from :func:`make_env`)
    :param n_episodes: episodes to run
    :param temperature: policy temperature (IRIS: 0.5)
    :param deterministic: most likely action instead of sampling
    :param seed: seeds torch's sampling and the first env reset
    :param max_episode_steps: stop an episode after this many agent steps (None: until the env ends it)
    :param verbose: 1 prints each episode to stderr
    """
    if n_episodes < 1:
        raise UsageError(f"--episodes must be >= 1, got {n_episodes}")
    if seed is not None:
        torch.manual_seed(seed)
    agent = IrisAgent(model, temperature, deterministic)
    result = EvaluationResult()
    for episode in range(n_episodes):
        observation, _ = env.reset(seed=seed if episode == 0 else None)
        agent.reset()
        total, steps, truncated = 0.0, 0, False
        while True:
            observation, reward, terminated, truncated, _ = env.step(agent.act(observation))
            total += float(reward)
            steps += 1
            if max_episode_steps is not None and steps >= max_episode_steps and not terminated:
                truncated = True
            if terminated or truncated:
                break
        result.returns.append(total)
        result.lengths.append(steps)
        result.truncated.append(bool(truncated))
        if verbose:
            print(f"episode {episode + 1}/{n_episodes}: return {total:g}, {steps} steps", file=sys.stderr)
    return result


def summarize(result: EvaluationResult, env_id: str, **extra: Any) -> dict[str, Any]:
    """JSON-serialisable summary, with the human-normalised score for Atari 100k games."""
    summary: dict[str, Any] = {
        "env_id": env_id,
        "episodes": len(result.returns),
        "mean_return": result.mean_return,
        "std_return": result.std_return,
        "min_return": float(np.min(result.returns)),
        "max_return": float(np.max(result.returns)),
        "mean_length": result.mean_length,
        **extra,
        **asdict(result),
    }
    game = atari_game_name(env_id) if is_atari_id(env_id) else None
    summary["game"] = game
    if game is not None:
        reference = ATARI_SCORES[game]
        summary["hns"] = human_normalized_score(result.mean_return, game)
        summary["random_score"] = reference.random
        summary["human_score"] = reference.human
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sb3_iris.evaluate",
        description="Evaluate a trained IRIS agent (IRIS protocol: temperature 0.5; Atari: evaluation settings) "
        "and print the mean/std return and, for Atari 100k games, the human-normalised score.",
    )
    parser.add_argument("model", help="saved IRIS model (.zip)")
    parser.add_argument("--env", required=True, help="Gymnasium id, e.g. PongNoFrameskip-v4 or module:EnvId")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes (default: 10)")
    parser.add_argument(
        "--temperature", type=float, default=DEFAULT_TEMPERATURE, help="policy temperature (default: 0.5, as IRIS)"
    )
    parser.add_argument("--deterministic", action="store_true", help="take the most likely action (no sampling)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the env and of the action sampling")
    parser.add_argument("--max-episode-steps", type=int, default=None, help="cut episodes after this many steps")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument(
        "--env-module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (dotted name or .py file) before making the env, to register custom envs; repeatable",
    )
    add_env_settings_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every episode to stderr")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.temperature <= 0 and not args.deterministic:
            raise UsageError("--temperature must be > 0 (use --deterministic for greedy actions)")
        model = load_model(args.model, args.device)
        settings = resolve_env_settings(
            args.model, args.env, args.env_wrapper, args.env_kwargs, use_run_config=not args.no_run_config
        )
        env = make_env(args.env, training=False, seed=args.seed, env_modules=args.env_module, settings=settings)
        check_compatible(model, env, args.env)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = evaluate_model(
                model,
                env,
                args.episodes,
                temperature=args.temperature,
                deterministic=args.deterministic,
                seed=args.seed,
                max_episode_steps=args.max_episode_steps,
                verbose=int(args.verbose),
            )
        env.close()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary = summarize(
        result,
        args.env,
        model=args.model,
        temperature=None if args.deterministic else args.temperature,
        deterministic=args.deterministic,
        seed=args.seed,
        seconds=round(time.perf_counter() - start, 3),
    )
    if args.json:
        print(json.dumps(summary))
        return 0
    sampling = "deterministic" if args.deterministic else f"temperature {args.temperature:g}"
    print(f"IRIS evaluation of {args.model} on {args.env}: {summary['episodes']} episodes ({sampling})")
    print(f"mean return: {summary['mean_return']:.3f} +/- {summary['std_return']:.3f} (std)")
    print(f"min/max return: {summary['min_return']:g} / {summary['max_return']:g}")
    print(f"mean episode length: {summary['mean_length']:.1f} steps")
    if any(result.truncated):
        print(f"truncated episodes: {sum(result.truncated)}")
    if summary["game"] is not None:
        print(
            f"human-normalised score ({summary['game']}): {summary['hns']:.4f} "
            f"(random {summary['random_score']:g}, human {summary['human_score']:g})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
