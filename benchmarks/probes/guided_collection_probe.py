"""Diagnostic (an oracle, not an algorithm): does IRIS pass its Breakout plateau when its replay holds catches?

    OMP_NUM_THREADS=1 python -m benchmarks.probes.guided_collection_probe \
        --config benchmarks/probes/minatar_l15a_argmax_outcomes.yml --guided-steps 10000 --guide-probability 0.9 \
        --out benchmarks/results/minatar/probe_g1/seed0.json --save logs/probe_g1/model.zip

IRIS from a probe entry (``--config``, MinAtar Breakout), trained for ``--steps`` env steps, with one change to its
collection: during the first ``--guided-steps`` env steps, each env's action is, with probability
``--guide-probability``, replaced by a scripted catcher's, which reads the game's own state (not the frame) and moves
the paddle towards the column where the ball next reaches the paddle's row (``failure_point_probe.landing``). The
replay stores the executed action, as in any collection. Everything else, including the steps counted against
``--steps``, is the entry's. The guided steps are part of the 50k budget, but the scripted player is an oracle that
no IRIS user has, so a result here is evidence about the parts, not a score. Alone, the catcher keeps the ball for
2000 steps (return 59 in 20 episodes); at probability 0.9 with uniform random actions otherwise, it returns 11.4 in
episodes of 195 steps; at 0.75, 3.2 in 40 steps.

Why: every probe so far plateaus at a return of about 3, with a near-still paddle; in the world model the catches
the policy never makes (at other columns) end in imagination (``failure_point_probe``: the end head ends the
catcher's imagined rollouts with every frame right). If IRIS learns past 3 from a replay that holds such catches,
the missing piece is exploration; if not, the world model or the actor fails even with the data.

Prints one JSON object: the arguments, the evaluations (10 deterministic episodes every 5000 steps on a separate
env) and how many of the collected steps were guided.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecTransposeImage

from benchmarks.failure_point_probe import LEFT, NOOP, RIGHT, landing
from benchmarks.imagination_throughput import entry_kwargs
from sb3_iris import IRIS
from sb3_iris.callbacks import WorldModelEvalCallback
from sb3_iris.run_config import load_wrappers

ENV_ID = "MinAtar/Breakout-v1"


def catcher_action(game: Any) -> int:
    """Gym action of Breakout's scripted catcher in the game state ``game``: towards the ball's landing column
    (the nearer of the two that keep the ball), or towards the ball's column while it is not coming down."""
    found = landing(game, 30)
    if found is None:
        target = game.ball_x
    else:
        _, ball_x, new_x = found
        target = min((ball_x, new_x), key=lambda column: abs(column - game.pos))
    if target > game.pos:
        return RIGHT
    if target < game.pos:
        return LEFT
    return NOOP


class GuidedIRIS(IRIS):
    """IRIS whose collection takes the scripted catcher's action with some probability for its first steps.

    :param guided_steps: env steps (``num_timesteps``) during which the catcher may act
    :param guide_probability: per env and step, the probability of the catcher's action then
    """

    def __init__(self, *args: Any, guided_steps: int, guide_probability: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guided_steps = guided_steps
        self.guide_probability = guide_probability
        self.guided_actions = 0

    def _sample_collection_actions(self, episode_starts: np.ndarray) -> np.ndarray:
        actions = super()._sample_collection_actions(episode_starts)
        if self.num_timesteps >= self.guided_steps:
            return actions
        envs = self.env.unwrapped.envs
        for index, env in enumerate(envs):
            if np.random.random_sample() < self.guide_probability:
                actions[index] = catcher_action(env.unwrapped.game.env)
                self.guided_actions += 1
        return actions


def make_env(settings: dict[str, Any], n_envs: int, seed: int) -> Any:
    """The entry's MinAtar env with its ``env_wrapper`` list applied, ``n_envs`` copies."""
    import sb3_iris.minatar  # noqa: F401  (registers the ids)

    wrappers = load_wrappers(settings.get("env_wrapper") or [])

    def wrap(env: Any) -> Any:
        for wrapper in wrappers:
            env = wrapper(env)
        return env

    return make_vec_env(ENV_ID, n_envs=n_envs, seed=seed, wrapper_class=wrap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="probe YAML holding a MinAtar/Breakout-v1 entry")
    parser.add_argument("--steps", type=int, default=50000)
    parser.add_argument("--guided-steps", type=int, default=10000)
    parser.add_argument("--guide-probability", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the JSON here too")
    parser.add_argument("--save", default=None, help="save the final model here (for failure_point_probe)")
    args = parser.parse_args()
    if not 0.0 <= args.guide_probability <= 1.0:
        raise ValueError(f"--guide-probability={args.guide_probability} must be in [0, 1]")
    torch.set_num_threads(1)
    kwargs, settings = entry_kwargs(ENV_ID, args.config)
    env = make_env(settings, int(settings.get("n_envs", 1)), args.seed)
    eval_env = VecTransposeImage(make_env(settings, 1, args.seed + 1000))
    model = GuidedIRIS(
        settings.get("policy", "CnnPolicy"),
        env,
        seed=args.seed,
        device="cpu",
        verbose=1,
        guided_steps=args.guided_steps,
        guide_probability=args.guide_probability,
        **kwargs,
    )
    evaluation = EvalCallback(
        eval_env,
        eval_freq=5000 // env.num_envs,
        n_eval_episodes=10,
        deterministic=True,
        log_path=tempfile.mkdtemp(prefix="guided_collection_probe_"),
        verbose=1,
    )
    model.learn(args.steps, callback=[evaluation, WorldModelEvalCallback(every_n_epochs=1)])
    if args.save:
        model.save(args.save)
    record = dict(
        vars(args),
        guided_actions=model.guided_actions,
        evaluations=[
            dict(timesteps=int(t), mean_return=float(np.mean(r)))
            for t, r in zip(evaluation.evaluations_timesteps, evaluation.evaluations_results)
        ],
    )
    print(json.dumps(record))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
