"""Quickstart: train IRIS on CartPole-v1 on a CPU and compare the evaluation return before and after.

    python examples/quickstart.py                    # a few minutes on 2 CPU cores
    python examples/quickstart.py --timesteps 10000  # longer: closer to solving CartPole

The configuration is the small CPU-sized one of ``QUICKSTART_KWARGS`` below (the published Atari
configuration is the default of ``IRIS(...)``; ``hyperparams/iris.yml`` has the RL Zoo entries).
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_iris import IRIS

# Small networks and short warm-ups so that every part trains from the first epochs on a CPU.
QUICKSTART_KWARGS = dict(
    n_steps_per_epoch=200,
    tokenizer_updates_per_epoch=50,
    world_model_updates_per_epoch=40,
    actor_critic_updates_per_epoch=20,
    tokenizer_batch_size=64,
    world_model_batch_size=32,
    actor_critic_batch_size=32,
    tokenizer_start_after_epochs=0,
    world_model_start_after_epochs=1,
    actor_critic_start_after_epochs=2,
    sequence_length=10,
    imagination_horizon=10,
    burn_in=5,
    gamma=0.99,
    learning_rate=1e-3,
    ent_coef=0.01,
    final_training_epochs=0,
    policy_kwargs=dict(
        tokenizer_kwargs=dict(tokens_per_obs=4, hidden_sizes=(64,), embed_dim=16, vocab_size=64),
        world_model_kwargs=dict(num_layers=2, num_heads=2, embed_dim=64, max_blocks=10),
        actor_critic_kwargs=dict(mlp_hidden_sizes=(64,), lstm_dim=64),
    ),
)


def evaluate(model: IRIS, seed: int, episodes: int) -> tuple[float, float]:
    """Mean and std of the deterministic evaluation return over ``episodes`` episodes."""
    env = gym.make("CartPole-v1")
    env.reset(seed=seed)
    mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    env.close()
    return float(mean), float(std)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=4000, help="environment steps to train for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default="iris_cartpole", help="where to save the trained model (.zip)")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args()

    model = IRIS(
        "MlpPolicy", "CartPole-v1", seed=args.seed, device=args.device, verbose=args.verbose, **QUICKSTART_KWARGS
    )
    before = evaluate(model, args.seed + 1000, args.eval_episodes)
    print(f"before training: mean evaluation return {before[0]:.1f} +- {before[1]:.1f}", flush=True)
    start = time.perf_counter()
    model.learn(args.timesteps, progress_bar=False)
    seconds = time.perf_counter() - start
    after = evaluate(model, args.seed + 1000, args.eval_episodes)
    print(f"after {args.timesteps} steps ({seconds:.0f} s): mean evaluation return {after[0]:.1f} +- {after[1]:.1f}")
    model.save(args.save)
    print(json.dumps({"before": before[0], "after": after[0], "timesteps": args.timesteps, "seconds": seconds}))


if __name__ == "__main__":
    main()
