"""Imagination and world-model throughput at the size of an ``hyperparams/iris.yml`` entry; prints JSON.

Builds IRIS from the entry (MinAtar Breakout by default), fills the replay with random play, and times real
training phases: actor-critic updates (imagine ``batch x horizon`` transitions, loss, backward, step) at several
batch sizes, with the sequential (IRIS) and the parallel observation prediction of the world model, and
world-model updates. Networks are untrained: the cost of a pass does not depend on the weights.

    python benchmarks/imagination_throughput.py --threads 1 --batch-sizes 32 256 1024 --parallel off on
    python benchmarks/imagination_throughput.py --config benchmarks/probes/minatar_l15a_argmax_outcomes.yml \
        --batch-sizes 64 --parallel off --sampling multinomial inverse_cdf --updates 10

``--sampling``: how imagined tokens, rewards and ends are drawn (IRIS's ``inverse_cdf_sampling`` switch), each timed
on the same model, in the order given.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import yaml
from stable_baselines3.common.env_util import make_vec_env

from sb3_iris import IRIS

REPO_HYPERPARAMS = "hyperparams/iris.yml"


def entry_kwargs(env_id: str, path: str = REPO_HYPERPARAMS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(IRIS keyword arguments, env settings) of an ``iris.yml`` entry, with ``policy_kwargs`` evaluated."""
    with open(path) as file:
        entry = dict(yaml.safe_load(file)[env_id])
    not_iris_arguments = ("n_timesteps", "policy", "env_wrapper", "n_envs", "callback")
    env_settings = {key: entry.pop(key) for key in not_iris_arguments if key in entry}
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"])  # a "dict(...)" string, as RL Zoo evaluates it
    return entry, env_settings


def build_model(env_id: str, parallel: bool, replay_steps: int, seed: int = 0, path: str = REPO_HYPERPARAMS) -> IRIS:
    """IRIS of the entry with ``parallel_observations`` set, its replay filled with ``replay_steps`` random steps.

    :param env_id: the entry's id
    :param parallel: the world model's ``parallel_observations``
    :param replay_steps: random-play transitions collected first (no training phase runs)
    :param seed: seed of the model and the envs
    :param path: the hyperparameter file that holds the entry
    """
    import importlib

    kwargs, settings = entry_kwargs(env_id, path)
    wrappers = settings.get("env_wrapper") or []
    wrapper_class, wrapper_kwargs = None, None
    if wrappers:
        name = wrappers[0]
        if isinstance(name, dict):  # RL Zoo's form with keyword arguments: {"module.Class": {...}}
            ((name, wrapper_kwargs),) = name.items()
        module_name, class_name = name.rsplit(".", 1)
        wrapper_class = getattr(importlib.import_module(module_name), class_name)
    if env_id.startswith("MinAtar/"):
        import sb3_iris.minatar  # noqa: F401  (registers the ids)
    env = make_vec_env(
        env_id,
        n_envs=int(settings.get("n_envs", 1)),
        seed=seed,
        wrapper_class=wrapper_class,
        wrapper_kwargs=wrapper_kwargs,
    )
    kwargs["policy_kwargs"].setdefault("world_model_kwargs", {})["parallel_observations"] = parallel
    kwargs.update(final_training_epochs=0, device="cpu", seed=seed)
    model = IRIS(settings.get("policy", "CnnPolicy"), env, **kwargs)
    model.tokenizer_start_after_epochs = model.world_model_start_after_epochs = 10**9
    model.actor_critic_start_after_epochs = 10**9
    model.learn(replay_steps)  # random-ish play (untrained actor), no training phase runs
    return model


def time_phase(model: IRIS, phase: str, updates: int) -> float:
    """Seconds per update of one training phase (after one warm-up update)."""
    setattr(model, f"{phase}_updates_per_epoch", 1)
    model.train_part(phase)
    setattr(model, f"{phase}_updates_per_epoch", updates)
    start = time.perf_counter()
    model.train_part(phase)
    return (time.perf_counter() - start) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=REPO_HYPERPARAMS, help="hyperparameter file holding the entry")
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256, 1024])
    parser.add_argument("--parallel", choices=["off", "on"], nargs="+", default=["off", "on"])
    parser.add_argument("--horizon", type=int, default=None, help="imagination horizon (default: the entry's)")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--replay-steps", type=int, default=2000)
    parser.add_argument(
        "--sampling", choices=["multinomial", "inverse_cdf"], nargs="+", default=["multinomial"], help="token draws"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = dict(env=args.env, threads=args.threads, torch=torch.__version__, runs=[])
    for mode in args.parallel:
        model = build_model(args.env, mode == "on", args.replay_steps, path=args.config)
        if args.horizon is not None:
            model.imagination_horizon = args.horizon
        model.policy.tokenizer.eval()
        world_model_seconds = time_phase(model, "world_model", args.updates)
        for batch_size, sampling in [(batch, sampling) for batch in args.batch_sizes for sampling in args.sampling]:
            model.actor_critic_batch_size = batch_size
            model.dream_env.inverse_cdf_sampling = sampling == "inverse_cdf"
            seconds = time_phase(model, "actor_critic", args.updates)
            transitions = batch_size * model.imagination_horizon
            results["runs"].append(
                dict(
                    parallel_observations=mode == "on",
                    sampling=sampling,
                    actor_critic_batch_size=batch_size,
                    imagination_horizon=model.imagination_horizon,
                    actor_critic_update_seconds=round(seconds, 4),
                    imagined_transitions_per_second=round(transitions / seconds, 1),
                    world_model_batch_size=model.world_model_batch_size,
                    world_model_update_seconds=round(world_model_seconds, 4),
                    world_model_updates_per_second=round(1 / world_model_seconds, 2),
                )
            )
            print(json.dumps(results["runs"][-1]), flush=True)
    results["replay_steps"] = args.replay_steps
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
