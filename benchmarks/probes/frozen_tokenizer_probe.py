"""Probe: does the world model of the MinAtar Breakout pilot learn better once the tokenizer stops changing?

The pilot of ``notes.md`` (the shipped ``MinAtar/Breakout-v1`` entry with 48 world-model and 16 actor-critic updates
per epoch, actor-critic from epoch 21, feed-forward actor, no burn-in) with one change: after
``--freeze-after-epochs`` epochs the tokenizer is no longer trained (its phase is skipped, so the per-epoch token
cache also stays valid). Evaluation as in the comparison (10 deterministic episodes every 5000 env steps on a
separate env). Prints one JSON object with the per-epoch world-model losses and the evaluations::

    python benchmarks/probes/frozen_tokenizer_probe.py --steps 30000 --freeze-after-epochs 30
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecTransposeImage

from sb3_iris import IRIS
from sb3_iris.minatar import MinAtarImageWrapper

ENV_ID = "MinAtar/Breakout-v1"
REPO_ROOT = Path(__file__).resolve().parents[2]
PILOT_OVERRIDES = dict(
    world_model_updates_per_epoch=48,
    actor_critic_updates_per_epoch=16,
    actor_critic_start_after_epochs=20,
    burn_in=0,
)


def pilot_kwargs() -> dict:
    """IRIS keyword arguments of the shipped entry with the pilot's changes."""
    with open(REPO_ROOT / "hyperparams" / "iris.yml") as file:
        entry = dict(yaml.safe_load(file)[ENV_ID])
    for key in ("n_timesteps", "policy", "env_wrapper", "n_envs"):
        entry.pop(key)
    entry["policy_kwargs"] = eval(entry["policy_kwargs"])  # a "dict(...)" string, as RL Zoo evaluates it
    entry["policy_kwargs"]["actor_critic_kwargs"]["recurrent"] = False
    entry.update(PILOT_OVERRIDES)
    return entry


class FreezeTokenizer(BaseCallback):
    """Skip the tokenizer phase from epoch ``freeze_after_epochs + 1`` on; record each epoch's world-model losses.

    :param freeze_after_epochs: last epoch in which the tokenizer trains
    """

    def __init__(self, freeze_after_epochs: int) -> None:
        super().__init__()
        self.freeze_after_epochs = freeze_after_epochs
        self.epochs: list[dict] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        model = self.model
        if model._n_epochs >= self.freeze_after_epochs:
            model.tokenizer_start_after_epochs = 10**9  # the tokenizer phase never runs again
        values = model.logger.name_to_value
        if "train/world_model_observation_loss" in values:
            self.epochs.append(
                dict(
                    epoch=model._n_epochs,
                    timesteps=model._n_epochs * model.n_steps_per_epoch,  # env steps collected up to that epoch
                    world_model_observation_loss=values["train/world_model_observation_loss"],
                    entropy=values.get("train/entropy"),
                    imagined_return=values.get("train/imagined_return"),
                    phases_trained=sorted(model.last_phase_seconds),
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--freeze-after-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = make_vec_env(ENV_ID, n_envs=4, seed=args.seed, wrapper_class=MinAtarImageWrapper)
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=args.seed + 1000, wrapper_class=MinAtarImageWrapper)
    eval_env = VecTransposeImage(eval_env)  # as the model wraps its training env (and RL Zoo its eval env)
    model = IRIS("CnnPolicy", env, seed=args.seed, device="cpu", **pilot_kwargs())
    freeze = FreezeTokenizer(args.freeze_after_epochs)
    # EvalCallback keeps its evaluation history only when it has a log_path.
    evaluation = EvalCallback(
        eval_env,
        eval_freq=5000 // 4,
        n_eval_episodes=10,
        deterministic=True,
        log_path=tempfile.mkdtemp(prefix="frozen_tokenizer_probe_"),
        verbose=0,
    )
    # log_interval=0: no dumps, so the logger keeps the last epoch's values for FreezeTokenizer to read.
    model.learn(args.steps, callback=[freeze, evaluation], log_interval=0)
    print(
        json.dumps(
            dict(
                freeze_after_epochs=args.freeze_after_epochs,
                evaluations=[
                    dict(timesteps=int(t), mean_return=float(np.mean(r)))
                    for t, r in zip(evaluation.evaluations_timesteps, evaluation.evaluations_results)
                ],
                epochs=freeze.epochs,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
