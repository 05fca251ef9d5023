"""Quickstart: IRIS learns a small pixel task on a CPU in about two minutes.

    python examples/quickstart.py

The task (``ColourMatchEnv`` below): each step shows a 16x16 RGB image with a red or a green square;
action 0 pays 1 for red, action 1 for green; episodes last 20 steps. A random policy scores about 10,
a perfect one 20. Everything IRIS does is exercised: the tokenizer learns to encode the frames, the
world model learns which action is rewarded in which frame, and the actor-critic, trained only on
imagined rollouts, learns to choose. The script prints the evaluation return before and after.

For the published Atari configuration use ``IRIS("CnnPolicy", env)`` with its defaults; RL Zoo
entries are in ``hyperparams/iris.yml``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_iris import IRIS

RED, GREEN, GREY = (255, 0, 0), (0, 255, 0), 128


class ColourMatchEnv(gym.Env):
    """A red or green square on grey; reward 1 when the action is the colour's index (0 red, 1 green)."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 16, episode_length: int = 20) -> None:
        super().__init__()
        self.size, self.episode_length = size, episode_length
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)
        self._colour, self._t = 0, 0

    def _observation(self) -> np.ndarray:
        frame = np.full((self.size, self.size, 3), GREY, dtype=np.uint8)
        quarter = self.size // 4
        frame[quarter:-quarter, quarter:-quarter] = (RED, GREEN)[self._colour]
        return frame

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._t, self._colour = 0, int(self.np_random.integers(2))
        return self._observation(), {}

    def step(self, action):
        reward = float(int(action) == self._colour)
        self._t += 1
        self._colour = int(self.np_random.integers(2))
        return self._observation(), reward, self._t >= self.episode_length, False, {}


# Small networks for 16x16 frames (3 tokenizer levels -> 4x4 tokens); every part trains from the first epochs.
QUICKSTART_KWARGS = dict(
    n_steps_per_epoch=100,
    tokenizer_updates_per_epoch=20,
    world_model_updates_per_epoch=40,
    actor_critic_updates_per_epoch=20,
    tokenizer_batch_size=32,
    world_model_batch_size=16,
    actor_critic_batch_size=32,
    tokenizer_start_after_epochs=0,
    world_model_start_after_epochs=0,
    actor_critic_start_after_epochs=1,
    sequence_length=4,
    burn_in=2,
    imagination_horizon=4,
    gamma=0.9,
    learning_rate=1e-3,
    final_training_epochs=0,
    policy_kwargs=dict(
        tokenizer_kwargs=dict(
            base_channels=8,
            channel_multipliers=(1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        ),
        world_model_kwargs=dict(
            num_layers=2,
            num_heads=2,
            embed_dim=64,
            max_blocks=4,
            embed_dropout=0.0,
            residual_dropout=0.0,
            attention_dropout=0.0,
        ),
        actor_critic_kwargs=dict(conv_channels=(8, 8), lstm_dim=32),
    ),
)


def evaluate(model: IRIS, episodes: int, seed: int) -> float:
    """Mean deterministic evaluation return over ``episodes`` episodes."""
    env = ColourMatchEnv()
    env.reset(seed=seed)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, warn=False)
    return float(mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=3000, help="environment steps to train for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default="iris_colour_match", help="where to save the trained model (.zip)")
    parser.add_argument("--verbose", type=int, default=0, help="1: the schedule, per-epoch lines and SB3's log tables")
    parser.add_argument("--no-progress-bar", action="store_true", help="no tqdm bar over the epochs (stderr)")
    args = parser.parse_args()

    model = IRIS(
        "CnnPolicy", ColourMatchEnv(), seed=args.seed, device=args.device, verbose=args.verbose, **QUICKSTART_KWARGS
    )
    before = evaluate(model, args.eval_episodes, args.seed + 1000)
    print(f"before training: mean evaluation return {before:.1f} (random ~10, perfect 20)", flush=True)
    start = time.perf_counter()
    model.learn(args.timesteps, progress_bar=not args.no_progress_bar)
    seconds = time.perf_counter() - start
    after = evaluate(model, args.eval_episodes, args.seed + 1000)
    print(f"after {args.timesteps} steps ({seconds:.0f} s): mean evaluation return {after:.1f}")
    model.save(args.save)
    print(json.dumps({"before": before, "after": after, "timesteps": args.timesteps, "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
