"""Parameter counts of the published-size IRIS networks against the figures of the paper.

Builds the default (published) tokenizer, world model (18 actions, the full Atari action set) and
actor-critic (64x64 RGB, 18 actions) and prints one JSON object: for each network its trainable
parameter count, the paper's figure and the relative difference ``(count - target) / target``.

Usage::

    python benchmarks/param_counts.py
"""

from __future__ import annotations

import json

from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig
from sb3_iris.nn.tokenizer import ConvTokenizer, count_parameters
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig

# Figures given by the IRIS paper (Micheli et al., ICLR 2023) for its Atari configuration.
TARGETS = {"tokenizer": 4.0e6, "world_model": 8.4e6, "actor_critic": 3.2e6}


def parameter_counts() -> dict[str, dict[str, float]]:
    """Trainable parameters of the three published-size networks, their targets and relative differences.

    :return: ``{name: {"parameters": int, "target": float, "relative_difference": float}}``
    """
    networks = {
        "tokenizer": ConvTokenizer(),
        "world_model": WorldModel(WorldModelConfig(num_actions=18)),
        "actor_critic": ActorCritic(ActorCriticConfig(num_actions=18)),
    }
    result = {}
    for name, network in networks.items():
        count = count_parameters(network)
        target = TARGETS[name]
        result[name] = {
            "parameters": count,
            "target": target,
            "relative_difference": round((count - target) / target, 4),
        }
    return result


def main() -> None:
    print(json.dumps(parameter_counts(), indent=2))


if __name__ == "__main__":
    main()
