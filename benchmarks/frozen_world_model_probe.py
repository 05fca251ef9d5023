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

from sb3_iris.evaluate import load_model, make_env, resolve_env_settings
from sb3_iris.imagination import prime_cache, world_model_step


def paddle_columns(frames: torch.Tensor, row: int) -> np.ndarray:
    """Paddle column (white: all channels > 0.5 in [-1, 1]) in ``row`` of each frame ``(B, 3, H, W)``; NaN if none."""
    white = (frames[:, :, row, :] > 0.5).all(dim=1).float()  # (B, W)
    columns = torch.arange(white.shape[-1], dtype=torch.float32)
    found = white.sum(-1) > 0
    mean_column = (white * columns).sum(-1) / white.sum(-1).clamp(min=1)
    return np.where(found.numpy(), mean_column.numpy(), np.nan)


@torch.no_grad()
def paddle_check(
    model: Any, steps: int, batch_size: int, left: int, right: int, row: int, temperature: float = 1.0
) -> dict[str, float]:
    """Mean decoded paddle column after ``steps`` imagined steps of always-``left`` and always-``right``."""
    batch = model.replay_buffer.sample_segments(batch_size, 1, "left")
    tokens = model.segment_tokens(batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
    start_tokens = tokens[:, -1]
    tokenizer, world_model = model.policy.tokenizer, model.policy.world_model
    start_columns = paddle_columns(tokenizer.decode_tokens(start_tokens), row)
    result: dict[str, float] = {
        "start_column": float(np.nanmean(start_columns)),
        "start_paddle_found": float(np.mean(~np.isnan(start_columns))),
    }
    for name, action in (("left", left), ("right", right)):
        cache = world_model.new_cache(batch_size, start_tokens.device)
        prime_cache(world_model, cache, start_tokens)
        obs_tokens = start_tokens
        actions = torch.full((batch_size,), action, dtype=torch.long)
        for _ in range(steps):
            obs_tokens = world_model_step(world_model, cache, actions, obs_tokens, True, temperature).next_tokens
        columns = paddle_columns(tokenizer.decode_tokens(obs_tokens), row)
        result[f"{name}_column"] = float(np.nanmean(columns))
        result[f"{name}_paddle_found"] = float(np.mean(~np.isnan(columns)))
    return result


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
    parser.add_argument("--paddle-check", action="store_true", help="MinAtar Breakout: does imagination follow actions")
    parser.add_argument("--paddle-steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = load_model(args.model, device="cpu")
    settings = resolve_env_settings(args.model, args.env)
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
    if args.reset_actor:
        model.policy.actor_critic.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    model.tokenizer_start_after_epochs = model.world_model_start_after_epochs = 10**9
    model.actor_critic_start_after_epochs = 10**9
    model.final_training_epochs = 0
    model.learn(args.replay_steps, reset_num_timesteps=True)  # collection only: fills the fresh replay
    eval_env = DummyVecEnv([make(10_000 + args.seed)])
    record: dict[str, Any] = dict(vars(args), evaluations=[], replay_steps_collected=int(model.replay_buffer.n_steps))
    if args.paddle_check:
        record["paddle_check"] = {
            str(temperature): paddle_check(model, args.paddle_steps, 256, 1, 2, 12, temperature)
            for temperature in (1.0, 0.5, 0.0)
        }
        print(json.dumps(record["paddle_check"]), flush=True)
    start = time.perf_counter()
    model.actor_critic_updates_per_epoch = args.eval_every
    for done in range(0, args.updates + 1, args.eval_every):
        if done:
            metrics = model.train_part("actor_critic")
        else:
            metrics = {}
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=args.eval_episodes, deterministic=True)
        entry = dict(
            updates=done,
            eval_mean_return=float(mean),
            eval_std=float(std),
            seconds=round(time.perf_counter() - start, 1),
            **{k.split("/")[-1]: round(v, 4) for k, v in metrics.items()},
        )
        record["evaluations"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(record, file, indent=1)


if __name__ == "__main__":
    main()
