"""What drives and reads RL Zoo training runs, shared by the suite and ``benchmarks/sample_efficiency.py``.

- :func:`zoo_entry_point`: ``-m rl_zoo3.train`` when ``--algo iris`` is registered (start-up hook), else the
  ``sb3_iris.zoo train`` fallback;
- :func:`read_evaluations`: the ``EvalCallback`` results of one RL Zoo run (``evaluations.npz``);
- :func:`machine_description`: one line about the machine, for reports;
- :func:`interval_estimates`: IQM, mean and median with rliable's stratified-bootstrap confidence intervals.

Nothing here imports rl_zoo3, rliable or Ray at module level.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["AGGREGATES", "interval_estimates", "machine_description", "read_evaluations", "zoo_entry_point"]

#: The rliable aggregates of :func:`interval_estimates`, in the order of their values.
AGGREGATES = ("iqm", "mean", "median")


def zoo_entry_point(python: Optional[str] = None) -> list[str]:
    """The interpreter arguments that run ``rl_zoo3.train`` with ``--algo iris`` available.

    ``[python, "-m", "rl_zoo3.train"]`` when the sb3-iris start-up hook registers IRIS in that interpreter (the
    command a user types), else ``[python, "-m", "sb3_iris.zoo", "train"]`` (the explicit registration).

    :param python: the interpreter (default: this one)
    """
    python = python or sys.executable
    if python == sys.executable and "_sb3_iris_zoo_hook" in sys.modules and not os.environ.get("SB3_IRIS_NO_ZOO_HOOK"):
        # This interpreter ran the start-up hook (sb3_iris_zoo.pth): a child with the same environment runs it too.
        return [python, "-m", "rl_zoo3.train"]
    probe = [python, "-c", "import rl_zoo3.utils as u, sys; sys.exit(0 if 'iris' in u.ALGOS else 1)"]
    try:
        registered = subprocess.run(probe, capture_output=True, timeout=300).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        registered = False
    if registered:
        return [python, "-m", "rl_zoo3.train"]
    return [python, "-m", "sb3_iris.zoo", "train"]


def read_evaluations(path: Union[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps and episode returns of an ``evaluations.npz`` written by SB3's ``EvalCallback``.

    :param path: the file
    :return: ``timesteps`` (int, ``(n_evals,)``) and ``returns`` (float, ``(n_evals, n_episodes)``)
    """
    with np.load(path) as data:
        timesteps = np.asarray(data["timesteps"]).astype(int)
        returns = np.asarray(data["results"], dtype=float).reshape(len(timesteps), -1)
    return timesteps, returns


def machine_description() -> str:
    """CPU cores and model, Python and torch versions (and the GPU when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    import torch

    text = f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return text


def interval_estimates(
    score_dict: dict[str, np.ndarray], reps: int = 2000, seed: Optional[int] = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """IQM, mean and median (:data:`AGGREGATES`) of normalised scores with 95% stratified-bootstrap CIs (rliable).

    :param score_dict: name -> scores of shape ``(runs, tasks)``
    :param reps: bootstrap replications
    :param seed: seed of the bootstrap (None: numpy's global generator)
    :return: name -> estimates ``(3,)`` and name -> intervals ``(2, 3)`` (lower, upper)
    :raises ImportError: if rliable is not installed
    """
    from rliable import library as rly
    from rliable import metrics

    def aggregate(scores: np.ndarray) -> np.ndarray:
        return np.array(
            [metrics.aggregate_iqm(scores), metrics.aggregate_mean(scores), metrics.aggregate_median(scores)]
        )

    import warnings

    random_state = None if seed is None else np.random.RandomState(seed)
    with warnings.catch_warnings():  # arch (under rliable) deprecates the RandomState that rliable passes
        warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
        return rly.get_interval_estimates(score_dict, aggregate, reps=reps, random_state=random_state)
