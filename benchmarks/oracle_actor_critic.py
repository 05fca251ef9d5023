"""How many transitions does IRIS's actor-critic need with a perfect world model? Prints JSON lines.

    OMP_NUM_THREADS=1 python -m benchmarks.oracle_actor_critic \
        --config benchmarks/probes/minatar_l8_exact_tokenizer.yml --updates 8000 --eval-every 500

The actor-critic of an ``iris.yml``-style entry (``--config``: its ``actor_critic_kwargs``, ``gamma``, ``gae_lambda``,
``ent_coef``, ``normalize_advantage``, ``imagination_horizon``, ``actor_critic_batch_size``, ``learning_rate`` and
``max_grad_norm``) is trained exactly as IRIS trains it in imagination, with the same lambda-returns and loss
(:func:`sb3_iris.nn.actor_critic.compute_lambda_returns`, :func:`~sb3_iris.nn.actor_critic.actor_critic_loss`),
but its rollouts run in the real env (``actor_critic_batch_size`` envs, ``imagination_horizon`` steps per update,
the envs continuing from one update to the next; an env that ends is reset) on the real frames, where IRIS uses the
world model and the tokenizer's reconstructions. So this is the actor-critic's sample need with a perfect world
model: if it needs N transitions here, IRIS needs at least N imagined transitions (a world model only adds error).
Every ``--eval-every`` updates: ``--eval-episodes`` deterministic (argmax) episodes on a separate env.

``--starts replay`` (MinAtar only) restarts every rollout as IRIS's imagination does instead: from steps drawn
uniformly from a replay of what the actor played (``--initial-replay-steps`` of the untrained actor's play, then
``--collect-steps-per-update`` more of the current actor's, with ``--collect-epsilon`` random actions), restoring the
real game state of each drawn step. With that, the only difference left to IRIS is the world model.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.imagination_throughput import entry_kwargs
from sb3_iris.envs import import_env_modules
from sb3_iris.imagination import ImaginationOutput
from sb3_iris.nn.actor_critic import (
    ActorCritic,
    ActorCriticConfig,
    compute_lambda_returns,
)
from sb3_iris.run_config import load_wrappers, parse_wrapper_specs
from sb3_iris.training import ActorCriticUpdateSettings, train_actor_critic


def frames_to_input(observations: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, C)`` frames -> float ``(B, C, H, W)`` in [-1, 1] (the conv tokenizer's input space)."""
    return torch.as_tensor(observations).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def evaluate(actor_critic: ActorCritic, env: Any, episodes: int) -> float:
    """Mean return of ``episodes`` deterministic (argmax) episodes on the 1-env vector env ``env``."""
    returns, episode_return = [], 0.0
    observations = env.reset()
    state = actor_critic.initial_state(1)
    while len(returns) < episodes:
        with torch.no_grad():
            action = actor_critic(frames_to_input(observations), state).logits.argmax(-1).numpy()
        observations, rewards, dones, _ = env.step(action)
        episode_return += float(rewards[0])
        if dones[0]:
            returns.append(episode_return)
            episode_return = 0.0
    return float(np.mean(returns))


class GameStateReplay:
    """The frames and MinAtar game states of the steps a policy played, to restart real rollouts from."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.states: list[tuple[Any, int]] = []

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, frame: np.ndarray, game: Any) -> None:
        """Store ``frame`` and a copy of the game (a ``minatar.Environment``) that shows it."""
        self.frames.append(frame.copy())
        self.states.append((copy.deepcopy(game.env), int(game.last_action)))


def minatar_games(env: Any) -> list[Any]:
    """The ``minatar.Environment`` behind each env of the DummyVecEnv ``env``."""
    games = [vec_env.unwrapped.game for vec_env in env.envs]
    if not all(hasattr(game, "env") and hasattr(game, "last_action") for game in games):
        raise ValueError("--starts replay needs MinAtar envs (it restores their game states)")
    return games


def collect(
    actor_critic: ActorCritic, env: Any, observations: np.ndarray, steps: int, epsilon: float, replay: GameStateReplay
) -> np.ndarray:
    """Play ``steps`` steps of each env of ``env`` with the sampled policy (a uniform action with probability
    ``epsilon``), storing every step's frame and game state in ``replay``; returns the last observations."""
    games = minatar_games(env)
    num_actions = int(env.action_space.n)
    for _ in range(steps):
        for frame, game in zip(observations, games):
            replay.add(frame, game)
        with torch.no_grad():
            logits = actor_critic(frames_to_input(observations), actor_critic.initial_state(len(games))).logits
        actions = torch.distributions.Categorical(logits=logits).sample().numpy()
        random = np.random.random(len(games)) < epsilon
        actions[random] = np.random.randint(num_actions, size=int(random.sum()))
        observations, _, _, _ = env.step(actions)
    return observations


def restore_starts(env: Any, replay: GameStateReplay, rng: np.random.Generator) -> np.ndarray:
    """Put each env of ``env`` into the game state of a step drawn uniformly from ``replay``; returns its frames.
    The sticky-action draws stay each env's own, so two restarts from one step can differ, as in the real game."""
    games = minatar_games(env)
    indices = rng.integers(len(replay), size=len(games))
    for game, index in zip(games, indices):
        saved, last_action = replay.states[index]
        game.env = copy.deepcopy(saved)
        game.last_action = last_action
    return np.stack([replay.frames[index] for index in indices])


def rollout(
    actor_critic: ActorCritic, env: Any, observations: np.ndarray, state: Any, horizon: int
) -> tuple[ImaginationOutput, np.ndarray, Any]:
    """``horizon`` steps of the sampled policy in the real vector env ``env`` (an env that ends is reset: its next
    frame starts a new episode, so the returns do not bootstrap across it), in imagination's layout with the frames
    the actor saw as ``observations``. The logits and values keep their graph."""
    frames, logits, actions, values, rewards, ends = [], [], [], [], [], []
    for _ in range(horizon):
        inputs = frames_to_input(observations)
        output = actor_critic(inputs, state)
        action = torch.distributions.Categorical(logits=output.logits.detach()).sample()
        observations, step_rewards, dones, _ = env.step(action.numpy())
        frames.append(inputs)
        logits.append(output.logits)
        actions.append(action)
        values.append(output.values)
        rewards.append(torch.as_tensor(step_rewards, dtype=torch.float32))
        ends.append(torch.as_tensor(dones))
    trajectories = ImaginationOutput(
        actions=torch.stack(actions, 1),
        logits=torch.stack(logits, 1),
        values=torch.stack(values, 1),
        rewards=torch.stack(rewards, 1),
        ends=torch.stack(ends, 1),
        observations=torch.stack(frames, 1),
    )
    return trajectories, observations, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="hyperparameter file holding the entry")
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--updates", type=int, default=8000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--normalize-advantage", choices=["on", "off"], default=None, help="override the entry's")
    parser.add_argument("--learning-rate", type=float, default=None, help="override the entry's")
    parser.add_argument("--ent-coef", type=float, default=None, help="override the entry's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--horizon", type=int, default=None, help="override the entry's imagination_horizon")
    parser.add_argument("--batch-size", type=int, default=None, help="override the entry's actor_critic_batch_size")
    parser.add_argument(
        "--update-epochs",
        type=int,
        default=0,
        help="0: IRIS's one REINFORCE step per rollout; N >= 1: N PPO-clipped epochs over each rollout",
    )
    parser.add_argument("--minibatches", type=int, default=4, help="minibatches per epoch with --update-epochs")
    parser.add_argument("--clip-range", type=float, default=0.2, help="PPO clip range with --update-epochs")
    parser.add_argument(
        "--starts",
        choices=["continuing", "replay"],
        default="continuing",
        help="continuing: the envs run on across updates; replay: each rollout restarts from replay steps "
        "(imagination's starts; MinAtar only)",
    )
    parser.add_argument("--initial-replay-steps", type=int, default=7500, help="with --starts replay")
    parser.add_argument("--collect-steps-per-update", type=int, default=50, help="with --starts replay")
    parser.add_argument("--collect-epsilon", type=float, default=0.01, help="with --starts replay")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    kwargs, settings = entry_kwargs(args.env, args.config)
    if args.env.startswith("MinAtar/"):
        import_env_modules(["sb3_iris.minatar"])
    (wrapper,) = load_wrappers(parse_wrapper_specs(settings.get("env_wrapper") or []))
    batch = args.batch_size or int(kwargs["actor_critic_batch_size"])
    horizon = args.horizon or int(kwargs["imagination_horizon"])
    env = make_vec_env(args.env, n_envs=batch, seed=args.seed, wrapper_class=wrapper)
    eval_env = make_vec_env(args.env, n_envs=1, seed=10_000 + args.seed, wrapper_class=wrapper)
    height, width, channels = env.observation_space.shape
    config = ActorCriticConfig(
        num_actions=int(env.action_space.n),
        observation_shape=(channels, height, width),
        **kwargs["policy_kwargs"].get("actor_critic_kwargs", {}),
    )
    if config.recurrent:
        raise ValueError("this probe resets no LSTM state between episodes: use an entry with recurrent=False")
    actor_critic = ActorCritic(config)
    learning_rate = args.learning_rate if args.learning_rate is not None else float(kwargs.get("learning_rate", 1e-4))
    optimizer = torch.optim.Adam(actor_critic.parameters(), lr=learning_rate)
    normalize = bool(kwargs.get("normalize_advantage", False))
    if args.normalize_advantage is not None:
        normalize = args.normalize_advantage == "on"
    gamma, lambda_ = float(kwargs.get("gamma", 0.995)), float(kwargs.get("gae_lambda", 0.95))
    settings = ActorCriticUpdateSettings(
        epochs=args.update_epochs or None,  # None: IRIS's one REINFORCE step
        minibatches=args.minibatches,
        clip_range=args.clip_range,
        ent_coef=args.ent_coef if args.ent_coef is not None else float(kwargs.get("ent_coef", 0.001)),
        normalize_advantage=normalize,
        max_grad_norm=float(kwargs.get("max_grad_norm", 10.0)),
    )
    state = actor_critic.initial_state(batch)
    observations = env.reset()
    replay, rng = GameStateReplay(), np.random.default_rng(args.seed)
    if args.starts == "replay":
        np.random.seed(args.seed)
        collect_env = make_vec_env(args.env, n_envs=4, seed=20_000 + args.seed, wrapper_class=wrapper)
        collect_observations = collect(
            actor_critic, collect_env, collect_env.reset(), args.initial_replay_steps // 4, 1.0, replay
        )
    start = time.perf_counter()
    for update in range(args.updates + 1):
        if update % args.eval_every == 0:
            entry = dict(
                updates=update,
                transitions=update * batch * horizon,
                eval_mean_return=evaluate(actor_critic, eval_env, args.eval_episodes),
                seconds=round(time.perf_counter() - start, 1),
                replay_steps=len(replay),
            )
            print(json.dumps(entry), flush=True)
        if update == args.updates:
            break
        if args.starts == "replay":
            collect_observations = collect(
                actor_critic,
                collect_env,
                collect_observations,
                max(1, args.collect_steps_per_update // 4),
                args.collect_epsilon,
                replay,
            )
            observations = restore_starts(env, replay, rng)
        trajectories, observations, state = rollout(actor_critic, env, observations, state, horizon)
        returns = compute_lambda_returns(
            trajectories.rewards, trajectories.values.detach(), trajectories.ends, gamma, lambda_
        )
        # The same update as IRIS's actor-critic phase (sb3_iris.training.train_actor_critic), on real frames.
        entropy = train_actor_critic(actor_critic, optimizer, trajectories, returns, settings).entropy.item()
        if update % args.eval_every == 0:
            print(json.dumps(dict(updates=update, entropy=round(entropy, 4))), flush=True)


if __name__ == "__main__":
    main()
