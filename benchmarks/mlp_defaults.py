"""CartPole-v1 with the MlpPolicy defaults, as the README's first example runs it; prints JSON.

    OMP_NUM_THREADS=1 python -m benchmarks.mlp_defaults --seed 0 --out benchmarks/results/mlp_defaults/seed0.json

Trains ``IRIS("MlpPolicy", "CartPole-v1", seed=seed)`` (no other argument: the vector preset of
``sb3_iris/defaults.py``) for ``--timesteps`` steps on one torch thread. SB3's ``EvalCallback`` evaluates every
``--eval-freq`` env steps on a separate env with ``--eval-episodes`` deterministic episodes (the protocol of
``benchmarks/sample_efficiency.py``). The JSON has every evaluation, the first step whose mean return reaches
``--threshold``, the wall time of the whole run and the part of it spent evaluating, and the process's CPU time
(with one thread, what the run takes on one idle core; on a shared machine the wall time is longer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.monitor import Monitor

from sb3_iris import IRIS


class TimedEvalCallback(EvalCallback):
    """``EvalCallback`` that also adds up the wall time its evaluations take."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_seconds = 0.0
        self.results: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        if not (self.eval_freq > 0 and self.n_calls % self.eval_freq == 0):
            return super()._on_step()
        start = time.perf_counter()
        keep_going = super()._on_step()
        self.eval_seconds += time.perf_counter() - start
        self.results.append({"timesteps": int(self.num_timesteps), "mean_return": float(self.last_mean_reward)})
        return keep_going


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run(seed: int, timesteps: int, eval_freq: int, eval_episodes: int, threshold: float) -> dict[str, Any]:
    """One training run; returns the JSON record."""
    torch.set_num_threads(1)
    eval_env = Monitor(gym.make("CartPole-v1"))
    callback = TimedEvalCallback(eval_env, eval_freq=eval_freq, n_eval_episodes=eval_episodes, deterministic=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    model = IRIS("MlpPolicy", "CartPole-v1", seed=seed, device="cpu")
    model.learn(timesteps, callback=callback)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    reached = [r["timesteps"] for r in callback.results if r["mean_return"] >= threshold]
    return {
        "env": "CartPole-v1",
        "seed": seed,
        "timesteps": timesteps,
        "preset": model.preset,
        "eval_freq": eval_freq,
        "eval_episodes": eval_episodes,
        "threshold": threshold,
        "evaluations": callback.results,
        "steps_to_threshold": reached[0] if reached else None,
        "final_mean_return": callback.results[-1]["mean_return"] if callback.results else None,
        "wall_seconds": round(wall, 1),
        "eval_seconds": round(callback.eval_seconds, 1),
        "train_seconds": round(wall - callback.eval_seconds, 1),
        # CPU time of this single-threaded process: its wall time on one idle core (the machine may be shared).
        "cpu_seconds": round(cpu, 1),
        "load_average_at_end": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "commit": git_commit(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=10_000)
    parser.add_argument("--eval-freq", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=475.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args()
    record = run(args.seed, args.timesteps, args.eval_freq, args.eval_episodes, args.threshold)
    text = json.dumps(record, indent=1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
