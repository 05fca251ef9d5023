"""How a trained CartPole-v1 policy fails: length, final state and cart range of a few deterministic episodes.

Used for the failure analysis in ``docs/results.md`` (cart leaving the track vs the pole falling)::

    python benchmarks/probes/failure_probe.py \
        logs/sample_efficiency/CartPole-v1/iris/seed0/iris/CartPole-v1_1/CartPole-v1.zip
"""

from __future__ import annotations

import argparse
import json

import gymnasium as gym
import numpy as np
import torch

from sb3_iris import IRIS

#: CartPole-v1 terminates when |x| > X_LIMIT or |angle| > ANGLE_LIMIT (radians).
X_LIMIT, ANGLE_LIMIT = 2.4, 0.2095


def probe(model: IRIS, episodes: int, first_seed: int) -> list[dict]:
    """Run ``episodes`` deterministic episodes (reset seeds ``first_seed, first_seed + 1, ...``).

    :param model: a trained IRIS model for CartPole-v1
    :param episodes: number of episodes
    :param first_seed: reset seed of the first episode
    :return: one dict per episode: length, why it ended, final observation, cart position range, mean velocity
    """
    env = gym.make("CartPole-v1")
    results = []
    for episode in range(episodes):
        observation, _ = env.reset(seed=first_seed + episode)
        state, done, length, observations = None, False, 0, []
        while not done:
            start = np.array([length == 0])
            action, state = model.predict(observation[None], state=state, episode_start=start, deterministic=True)
            observations.append(observation)
            observation, _, terminated, truncated, _ = env.step(int(action[0]))
            length += 1
            done = terminated or truncated
        states = np.array(observations)
        if truncated:
            reason = "time limit"
        elif abs(observation[0]) > X_LIMIT:
            reason = "cart left the track"
        elif abs(observation[2]) > ANGLE_LIMIT:
            reason = "pole fell"
        else:
            reason = "terminated"
        results.append(
            dict(
                length=length,
                end=reason,
                final_observation=np.round(observation, 3).tolist(),
                cart_range=[round(float(states[:, 0].min()), 2), round(float(states[:, 0].max()), 2)],
                mean_cart_velocity=round(float(states[:, 1].mean()), 3),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="IRIS .zip trained on CartPole-v1")
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = IRIS.load(args.model, device="cpu")
    print(json.dumps(probe(model, args.episodes, args.first_seed), indent=1))


if __name__ == "__main__":
    main()
