"""Run real IRIS epochs and project the time of the full published schedule; prints one JSON object.

The replay is first filled with ``--replay-steps`` real transitions (random actions, not timed), then
``--epochs`` epochs run: collection of ``n_steps_per_epoch`` steps on the real env and the three
training phases, each with ``--updates`` gradient steps (the published 200 is far too slow on a CPU;
the per-update time is measured and scaled to 200). The projection uses the published schedule:
collection in epochs 1-500, tokenizer training in epochs 6-600, world model 26-600, actor-critic 51-600.

Usage::

    python benchmarks/epoch.py --env PongNoFrameskip-v4 --updates 2 --replay-steps 2000
    python benchmarks/epoch.py --env PongNoFrameskip-v4 --updates 200 --device cuda   # a full epoch on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np
import torch

from sb3_iris import IRIS

# Published schedule (the IRIS paper): 600 epochs, collection stops after epoch 500, warm-ups 5 / 25 / 50.
TOTAL_EPOCHS = 600
COLLECTION_EPOCHS = 500
PUBLISHED_UPDATES = 200
TRAINING_EPOCHS = {
    "tokenizer": TOTAL_EPOCHS - 5,
    "world_model": TOTAL_EPOCHS - 25,
    "actor_critic": TOTAL_EPOCHS - 50,
}


def make_env(env_id: str, seed: int):
    """The IRIS Atari env for ``*NoFrameskip-v4`` ids, a plain gymnasium env otherwise."""
    if "NoFrameskip" in env_id:
        from sb3_iris.atari import make_iris_atari_env

        return make_iris_atari_env(env_id, training=True, seed=seed)
    import gymnasium as gym

    return gym.make(env_id)


def fill_replay(model: IRIS, n_steps: int, rng: np.random.Generator) -> float:
    """Add ``n_steps`` random-action transitions from the model's env to its replay (seconds taken)."""
    env = model.get_env()
    start = time.perf_counter()
    observations = env.reset()
    for _ in range(-(-n_steps // env.num_envs)):
        actions = rng.integers(model.action_space.n, size=env.num_envs)
        new_observations, rewards, dones, infos = env.step(actions)
        truncations = np.array([info.get("TimeLimit.truncated", False) for info in infos]) & dones
        model.replay_buffer.add(observations, actions, rewards, dones & ~truncations, truncations)
        observations = new_observations
    model._last_obs = None  # learn() resets the env and closes the replay's ongoing episodes
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--replay-steps", type=int, default=2000, help="transitions in the replay before timing")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--updates", type=int, default=2, help="gradient steps per phase per timed epoch")
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--tokenizer-batch", type=int, default=256, help="published: 256")
    parser.add_argument("--wm-batch", type=int, default=64, help="published: 64")
    parser.add_argument("--ac-batch", type=int, default=64, help="published: 64")
    parser.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--token-cache", choices=["on", "off"], default="on")
    parser.add_argument(
        "--compile-imagination", choices=["on", "off"], default="off", help="compiled one-token pass (CUDA graphs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mixed_precision = {"auto": None, "on": True, "off": False}[args.mixed_precision]
    model = IRIS(
        "CnnPolicy" if "NoFrameskip" in args.env else "MlpPolicy",
        make_env(args.env, args.seed),
        n_steps_per_epoch=args.steps_per_epoch,
        tokenizer_batch_size=args.tokenizer_batch,
        world_model_batch_size=args.wm_batch,
        actor_critic_batch_size=args.ac_batch,
        tokenizer_updates_per_epoch=args.updates,
        world_model_updates_per_epoch=args.updates,
        actor_critic_updates_per_epoch=args.updates,
        tokenizer_start_after_epochs=0,
        world_model_start_after_epochs=0,
        actor_critic_start_after_epochs=0,
        final_training_epochs=0,
        use_token_cache=args.token_cache == "on",
        mixed_precision=mixed_precision,
        compile_imagination=args.compile_imagination == "on",
        device=args.device,
        seed=args.seed,
    )
    fill_seconds = fill_replay(model, args.replay_steps, np.random.default_rng(args.seed))
    total_steps = args.epochs * args.steps_per_epoch
    start = time.perf_counter()
    model.learn(total_steps)
    wall = time.perf_counter() - start

    # The logger is dumped after each epoch; the algorithm keeps the last epoch's timings.
    phase_seconds = dict(model.last_phase_seconds)
    collection_seconds = model.last_collection_seconds
    per_update = {name: seconds / args.updates for name, seconds in phase_seconds.items()}
    per_epoch_published = {name: value * PUBLISHED_UPDATES for name, value in per_update.items()}
    projected = COLLECTION_EPOCHS * collection_seconds + sum(
        TRAINING_EPOCHS[name] * seconds for name, seconds in per_epoch_published.items()
    )
    report = {
        "env": args.env,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "performance": model.performance.as_dict(),
        "use_token_cache": model.use_token_cache,
        "replay_steps": model.replay_buffer.n_steps,
        "fill_seconds": fill_seconds,
        "timed_epochs": args.epochs,
        "updates_per_phase": args.updates,
        "batch_sizes": {"tokenizer": args.tokenizer_batch, "world_model": args.wm_batch, "actor_critic": args.ac_batch},
        "published_batch_sizes": (args.tokenizer_batch, args.wm_batch, args.ac_batch) == (256, 64, 64),
        "wall_seconds": wall,
        "last_epoch": {
            "collection_seconds": collection_seconds,
            "phase_seconds": phase_seconds,
            "seconds_per_update": per_update,
        },
        "published_epoch_seconds": {"collection": collection_seconds, **per_epoch_published},
        "published_epoch_total_seconds": collection_seconds + sum(per_epoch_published.values()),
        "projected_full_run_hours": projected / 3600,
        "peak_cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
    }
    if args.device.startswith("cuda"):
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
