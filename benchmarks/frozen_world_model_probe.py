"""Which part fails? Train only the actor-critic inside a saved model's frozen world model; prints JSON.

    OMP_NUM_THREADS=1 python -m benchmarks.frozen_world_model_probe \
        --model logs/probe_b1/MinAtar_Breakout-v1/iris/seed0/iris/MinAtar-Breakout-v1_1/MinAtar-Breakout-v1.zip \
        --env MinAtar/Breakout-v1 --updates 400 --eval-every 50

Loads an IRIS model saved by RL Zoo (the env is rebuilt from the run folder, as ``sb3_iris.evaluate`` does),
fills a fresh replay with ``--replay-steps`` steps of its own policy, then freezes the tokenizer and the world
model and runs ``--updates`` actor-critic updates only (optionally from a re-initialised actor-critic),
evaluating ``--eval-episodes`` deterministic episodes in the real env every ``--eval-every`` updates.

If the actor-critic reaches a good real return here, the world model is good enough and the actor-critic lacked
updates (compute); if it stays at random play with many updates, the world model (or the actor-critic's reading
of it) is the part that fails.

It also measures whether imagination responds to actions (MinAtar Breakout only, ``--paddle-check``): from the
same real start frames, it imagines ``--paddle-steps`` steps of "always left" and of "always right" and reports
the mean paddle column of the decoded last frame of each (a world model that ignores actions gives equal columns).
``--policy-check H`` compares imagined and real returns of scripted policies over ``H`` steps, and ``--drift-check
H`` compares imagined with real frames under the same actions, step by step (:func:`open_loop_drift`).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_iris.envs import add_env_settings_arguments
from sb3_iris.evaluate import load_model, make_env, resolve_env_settings
from sb3_iris.imagination import DreamEnv


def probe_dream_env(model: Any, temperature: float = 1.0) -> DreamEnv:
    """A :class:`DreamEnv` in ``model``'s world model, with rewards and ends at its ``imagination_outcome_temperature``.

    :param temperature: sampling temperature of the observation tokens
    """
    return DreamEnv(
        model.policy.world_model, temperature=temperature, outcome_temperature=model.imagination_outcome_temperature
    )


def paddle_row(image_size: int) -> int:
    """Image row of Breakout's paddle (grid row 9, one pixel per cell, the 10x10 grid centred in the frame)."""
    return (image_size - 10) // 2 + 9


def paddle_columns(frames: torch.Tensor, row: int) -> np.ndarray:
    """Paddle column (white: all channels > 0.5 in [-1, 1]) in ``row`` of each frame ``(B, 3, H, W)``; NaN if none."""
    white = (frames[:, :, row, :] > 0.5).all(dim=1).float()  # (B, W)
    columns = torch.arange(white.shape[-1], dtype=torch.float32)
    found = white.sum(-1) > 0
    mean_column = (white * columns).sum(-1) / white.sum(-1).clamp(min=1)
    return np.where(found.numpy(), mean_column.numpy(), np.nan)


def start_tokens(model: Any, batch_size: int) -> torch.Tensor:
    """Tokens ``(B, K)`` of ``batch_size`` real frames drawn from the model's replay."""
    batch = model.replay_buffer.sample_segments(batch_size, 1, "left")
    tokens = model.segment_tokens(batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
    return tokens[:, -1]


@torch.no_grad()
def paddle_check(
    model: Any, steps: int, batch_size: int, left: int, right: int, row: int, temperature: float = 1.0
) -> dict[str, float]:
    """Mean decoded paddle column after ``steps`` imagined steps of always-``left`` and always-``right``."""
    tokens = start_tokens(model, batch_size)
    tokenizer = model.policy.tokenizer
    dream = probe_dream_env(model, temperature)
    start_columns = paddle_columns(tokenizer.decode_tokens(tokens), row)
    result: dict[str, float] = {
        "start_column": float(np.nanmean(start_columns)),
        "start_paddle_found": float(np.mean(~np.isnan(start_columns))),
    }
    for name, action in (("left", left), ("right", right)):
        dream.reset(tokens)
        actions = torch.full((batch_size,), action, dtype=torch.long)
        for _ in range(steps):
            dream.step(actions)
        columns = paddle_columns(tokenizer.decode_tokens(dream.obs_tokens), row)
        result[f"{name}_column"] = float(np.nanmean(columns))
        result[f"{name}_paddle_found"] = float(np.mean(~np.isnan(columns)))
    return result


def ball_mask(frames: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` True where Breakout's ball is (red: channel 0 > 0.5, channels 1 and 2 < 0) in ``(B, 3, H, W)``."""
    return (frames[:, 0] > 0.5) & (frames[:, 1] < 0) & (frames[:, 2] < 0)


def ball_columns(frames: torch.Tensor) -> np.ndarray:
    """Column of Breakout's ball (:func:`ball_mask`) in each frame; NaN if none."""
    red = ball_mask(frames)
    columns = torch.arange(red.shape[-1], dtype=torch.float32)
    found = red.flatten(1).any(1)
    mean_column = (red.float().sum(1) * columns).sum(-1) / red.float().sum((1, 2)).clamp(min=1)
    return np.where(found.numpy(), mean_column.numpy(), np.nan)


def tracking_actions(frames: torch.Tensor, left: int, right: int, noop: int, row: int) -> torch.Tensor:
    """Breakout's scripted policy: move the paddle towards the ball's column (noop when aligned or unseen)."""
    ball, paddle = ball_columns(frames), paddle_columns(frames, row)
    actions = np.full(len(frames), noop)
    actions[ball < paddle] = left
    actions[ball > paddle] = right
    return torch.as_tensor(actions, dtype=torch.long)


@torch.no_grad()
def imagined_policy_returns(
    model: Any, horizon: int, batch_size: int, row: int = 12, left: int = 1, right: int = 2, noop: int = 0
) -> dict[str, float]:
    """Imagined return until the first predicted end, over ``horizon`` steps, of three policies from the same starts.

    ``tracking`` follows the ball (a competent Breakout policy), ``always_left`` and ``uniform`` (random) do not;
    a world model that supports learning gives ``tracking`` clearly more than the other two.
    """
    tokens = start_tokens(model, batch_size)
    tokenizer = model.policy.tokenizer
    dream = probe_dream_env(model)
    results: dict[str, float] = {}
    for name in ("tracking", "always_left", "uniform"):
        dream.reset(tokens)
        alive = torch.ones(batch_size)
        total = torch.zeros(batch_size)
        for _ in range(horizon):
            frames = tokenizer.decode_tokens(dream.obs_tokens)
            if name == "tracking":
                actions = tracking_actions(frames, left, right, noop, row)
            elif name == "always_left":
                actions = torch.full((batch_size,), left, dtype=torch.long)
            else:
                actions = torch.randint(0, 3, (batch_size,))
            step = dream.step(actions)
            total += alive * step.rewards
            alive = alive * (~step.ends).float()
        results[f"{name}_return"] = round(float(total.mean()), 3)
        results[f"{name}_alive_at_end"] = round(float(alive.mean()), 3)
    return results


def real_policy_returns(make_env: Any, tokenizer: Any, horizon: int, episodes: int, row: int = 12) -> dict[str, float]:
    """The same three policies in the real env, from resets, over at most ``horizon`` steps.

    :param tokenizer: the model's tokenizer, whose ``preprocess`` maps a frame to the space the policies read
    """
    env = make_env()
    results: dict[str, float] = {}
    for name in ("tracking", "always_left", "uniform"):
        returns = []
        for episode in range(episodes):
            obs, _ = env.reset(seed=episode)
            total = 0.0
            for _ in range(horizon):
                frame = tokenizer.preprocess(torch.as_tensor(obs).permute(2, 0, 1).unsqueeze(0))
                if name == "tracking":
                    action = int(tracking_actions(frame, 1, 2, 0, row)[0])
                elif name == "always_left":
                    action = 1
                else:
                    action = int(env.action_space.sample())
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
            returns.append(total)
        results[f"{name}_return"] = round(float(np.mean(returns)), 3)
    return results


@torch.no_grad()
def open_loop_drift(
    make_env: Any, model: Any, horizon: int, episodes: int, row: int, temperature: float
) -> list[dict[str, float]]:
    """Imagined against real frames under the same actions, step by step, from the same real starts (Breakout).

    Plays ``episodes`` real episodes of the ball-tracking policy for up to ``horizon`` steps, then imagines from
    each one's first real frame with the same actions. At every step, over the episodes still running in the real
    game: the fraction the world model has not ended yet (``imagined_alive``), and among those, the fraction
    whose decoded imagined paddle (ball) is in the real frame's column (``paddle_match``, ``ball_match``; the ball
    also matches when neither frame has one).
    """
    env, tokenizer = make_env(), model.policy.tokenizer
    frames, actions, running = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        episode_frames, episode_actions, episode_running, done = [], [], [], False
        for t in range(horizon + 1):
            frame = tokenizer.preprocess(torch.as_tensor(obs).permute(2, 0, 1).unsqueeze(0))
            episode_frames.append(frame[0])
            episode_running.append(not done)
            if t == horizon:
                break
            action = int(tracking_actions(frame, 1, 2, 0, row)[0]) if not done else 0
            episode_actions.append(action)
            if not done:
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
        frames.append(torch.stack(episode_frames))
        actions.append(torch.as_tensor(episode_actions))
        running.append(torch.as_tensor(episode_running))
    real, real_actions, real_running = torch.stack(frames), torch.stack(actions), torch.stack(running)
    dream = probe_dream_env(model, temperature)
    dream.reset(tokenizer.tokenize(real[:, 0]))
    alive = torch.ones(episodes, dtype=torch.bool)
    results = []
    for t in range(1, horizon + 1):
        step = dream.step(real_actions[:, t - 1])
        imagined = tokenizer.decode_tokens(dream.obs_tokens)
        in_game = real_running[:, t]
        if not bool(in_game.any()):
            break
        both = in_game & alive
        true_ball, drawn_ball = ball_columns(real[:, t]), ball_columns(imagined)
        ball_match = (true_ball == drawn_ball) | (np.isnan(true_ball) & np.isnan(drawn_ball))
        paddle_match = paddle_columns(real[:, t], row) == paddle_columns(imagined, row)
        mask = both.numpy()
        results.append(
            dict(
                step=t,
                real_running=round(float(in_game.float().mean()), 3),
                imagined_alive=round(float(alive[in_game].float().mean()), 3),
                paddle_match=round(float(paddle_match[mask].mean()), 3) if mask.any() else float("nan"),
                ball_match=round(float(ball_match[mask].mean()), 3) if mask.any() else float("nan"),
            )
        )
        alive = alive & ~step.ends  # the step's end applies from the next frame on
    return results


def load_probe_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """One torch thread, seeded; the saved model on the CPU and its env settings (from the run folder unless
    ``--no-run-config``), for the probes' command lines.

    :param args: parsed arguments with ``model``, ``env``, ``seed`` and those of ``add_env_settings_arguments``
    :return: ``(model, settings)``
    """
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load_model(args.model, device="cpu")
    settings = resolve_env_settings(
        args.model, args.env, args.env_wrapper, args.env_kwargs, use_run_config=not args.no_run_config
    )
    return model, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--env-module", action="append", default=["sb3_iris.minatar"])
    parser.add_argument("--replay-steps", type=int, default=5000)
    parser.add_argument("--updates", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="actor-critic batch (default: the model's)")
    parser.add_argument("--horizon", type=int, default=None, help="imagination horizon (default: the model's)")
    parser.add_argument("--reset-actor", action="store_true", help="re-initialise the actor-critic first")
    parser.add_argument(
        "--normalize-advantage", choices=["on", "off"], default=None, help="override the model's normalize_advantage"
    )
    parser.add_argument("--ent-coef", type=float, default=None, help="override the model's ent_coef")
    parser.add_argument("--gamma", type=float, default=None, help="override the model's gamma")
    parser.add_argument(
        "--imagination-temperature", type=float, default=None, help="override the model's imagination_temperature"
    )
    parser.add_argument(
        "--imagination-outcome-temperature",
        type=float,
        default=None,
        help="override the model's imagination_outcome_temperature (0: the most likely reward and end)",
    )
    parser.add_argument(
        "--actor-critic-event-fraction",
        type=float,
        default=None,
        help="override the model's actor_critic_event_fraction (imagination starts before rewards and ends)",
    )
    parser.add_argument("--paddle-check", action="store_true", help="MinAtar Breakout: does imagination follow actions")
    parser.add_argument("--paddle-steps", type=int, default=4)
    parser.add_argument(
        "--policy-check", type=int, default=0, metavar="H", help="Breakout: imagined vs real return of 3 policies"
    )
    parser.add_argument(
        "--drift-check", type=int, default=0, metavar="H", help="Breakout: imagined vs real frames, same actions"
    )
    parser.add_argument(
        "--collect-steps-per-eval",
        type=int,
        default=0,
        help="env steps the current actor adds to the replay after every --eval-every updates, so that imagination "
        "starts follow the policy as in training (0: the replay stays the first --replay-steps)",
    )
    parser.add_argument(
        "--collect-epsilon",
        type=float,
        default=None,
        help="override the model's collection epsilon for every collection, without its decay schedule "
        "(default: the model's schedule, which starts at collect_epsilon_initial in a fresh count)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    add_env_settings_arguments(parser)
    args = parser.parse_args()
    model, settings = load_probe_model(args)
    n_envs = 4

    def make(seed: int):
        return lambda: Monitor(make_env(args.env, seed=seed, env_modules=args.env_module, settings=settings))

    env = DummyVecEnv([make(args.seed + i) for i in range(n_envs)])
    model.set_env(env)
    model.set_random_seed(args.seed)
    if args.batch_size is not None:
        model.actor_critic_batch_size = args.batch_size
    if args.horizon is not None:
        model.imagination_horizon = args.horizon
    if args.normalize_advantage is not None:
        model.normalize_advantage = args.normalize_advantage == "on"
    if args.ent_coef is not None:
        model.ent_coef = args.ent_coef
    if args.gamma is not None:
        model.gamma = args.gamma
    if args.imagination_temperature is not None:
        model.imagination_temperature = args.imagination_temperature
    if args.imagination_outcome_temperature is not None:
        model.imagination_outcome_temperature = args.imagination_outcome_temperature
    if args.actor_critic_event_fraction is not None:
        model.actor_critic_event_fraction = args.actor_critic_event_fraction
    if args.collect_epsilon is not None:
        model.collect_epsilon, model.collect_epsilon_initial = args.collect_epsilon, None
    if args.reset_actor:
        model.policy.actor_critic.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    model.tokenizer_start_after_epochs = model.world_model_start_after_epochs = 10**9
    model.actor_critic_start_after_epochs = 10**9
    model.final_training_epochs = 0
    model.learn(args.replay_steps, reset_num_timesteps=True)  # collection only: fills the fresh replay
    eval_env = DummyVecEnv([make(10_000 + args.seed)])
    row = paddle_row(model.observation_space.shape[-1])
    record: dict[str, Any] = dict(vars(args), evaluations=[], replay_steps_collected=int(model.replay_buffer.n_steps))
    if args.paddle_check:
        record["paddle_check"] = {
            str(temperature): paddle_check(model, args.paddle_steps, 256, 1, 2, row, temperature)
            for temperature in (1.0, 0.5, 0.0)
        }
        print(json.dumps(record["paddle_check"]), flush=True)
    if args.policy_check:
        record["imagined_policy_returns"] = imagined_policy_returns(model, args.policy_check, 256, row)
        record["real_policy_returns"] = real_policy_returns(make(0), model.policy.tokenizer, args.policy_check, 50, row)
        print(json.dumps({k: record[k] for k in ("imagined_policy_returns", "real_policy_returns")}), flush=True)
    if args.drift_check:
        record["open_loop_drift"] = {
            str(temperature): open_loop_drift(make(0), model, args.drift_check, 100, row, temperature)
            for temperature in (1.0, 0.0)
        }
        print(json.dumps(record["open_loop_drift"]), flush=True)
    start = time.perf_counter()
    model.actor_critic_updates_per_epoch = args.eval_every
    for done in range(0, args.updates + 1, args.eval_every):
        if done:
            metrics = model.train_part("actor_critic")
            if args.collect_steps_per_eval:
                model.learn(args.collect_steps_per_eval, reset_num_timesteps=False)  # the current actor's play
        else:
            metrics = {}
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
        entry = dict(
            updates=done,
            eval_mean_return=float(mean),
            eval_std=float(std),
            seconds=round(time.perf_counter() - start, 1),
            replay_steps=int(model.replay_buffer.n_steps),
            **{k.split("/")[-1]: round(v, 4) for k, v in metrics.items()},
        )
        record["evaluations"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(record, file, indent=1)


if __name__ == "__main__":
    main()
