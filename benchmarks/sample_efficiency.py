"""Sample-efficiency comparison: IRIS against PPO and DQN through RL Zoo, side by side.

Every run is an unmodified RL Zoo training command in a subprocess (one seed, one algorithm, one env),
with the same evaluation protocol for all algorithms (``EvalCallback``: every ``--eval-freq`` env
steps, ``--eval-episodes`` episodes on one separate eval env, deterministic actions)::

    python -m rl_zoo3.train --algo <algo> --env <env> --seed <seed> -n <budget> \\
        --eval-freq 2000 --eval-episodes 10 --n-eval-envs 1 --num-threads 1 --device cpu \\
        -f <log-dir>/<env>/<algo>/seed<seed> [-conf <file>] [--gym-packages <module>]

Hyperparameters (``-conf``):

- IRIS: ``hyperparams/iris.yml`` (``--iris-conf``).
- PPO, DQN (any algorithm but IRIS): RL Zoo's own tuned ``rl_zoo3/hyperparams/<algo>.yml``, except for the
  envs listed in ``hyperparams/baselines/<algo>.yml`` (``--baseline-conf-dir``), which then gets passed as
  ``-conf``. RL Zoo has no MinAtar entries, so ``hyperparams/baselines/{ppo,dqn}.yml`` hold MinAtar settings
  from the literature (their comments say which); CartPole-v1 and the other classic envs keep RL Zoo's
  tuned values. A baseline file therefore only needs the envs RL Zoo lacks.

``-n <budget>`` overrides ``n_timesteps`` for every algorithm, so linear schedules (PPO's ``lin_1e-3``
learning rate and clip range, DQN's exploration fraction) are compressed to the budget. Env ids of
packages that register their own Gymnasium ids get ``--gym-packages`` (``GYM_PACKAGES``: ``MinAtar/*``
-> ``sb3_iris.minatar``, which registers the MinAtar ids and holds IRIS's image wrapper). The script then
reads the ``evaluations.npz`` files RL Zoo writes and produces, in ``--out``:

- ``results.md``: per env, the mean and spread of the evaluation return at fixed budgets (``--report-at``;
  default a quarter, half and all of the budget), the env steps to reach a threshold per seed
  (``--threshold``; defaults in ``DEFAULT_THRESHOLDS``), and the wall time per run; rliable IQM with 95%
  stratified-bootstrap CIs across envs when ``rliable`` is importable and there are at least 2 runs per
  algorithm (skipped with a note otherwise);
- ``curves.csv`` (every evaluation of every run) and ``summary.csv`` (one row per env and algorithm);
- ``learning_curves_<env>.png``: mean evaluation return of each algorithm over seeds, shaded min-max;
- ``run_info/<env>/<algo>/seed<seed>.json``: a copy of each run's ``run.json`` (command, wall time, exit code).

Model files and logs stay in ``--log-dir`` (default ``logs/sample_efficiency``), outside ``--out``.

Examples (the CartPole comparison of ``docs/results.md``, whose PPO and DQN runs used longer budgets to find
their steps to 475; the MinAtar Breakout comparison of ``benchmarks/results/minatar_breakout``)::

    python benchmarks/sample_efficiency.py --envs CartPole-v1 --algos iris ppo dqn --seeds 0 1 2 \\
        --budget CartPole-v1=10000 --eval-freq 1000 --out benchmarks/results/cartpole
    python benchmarks/sample_efficiency.py --envs MinAtar/Breakout-v1 --algos iris ppo dqn --seeds 0 1 2 \\
        --budget 50000 --eval-freq 5000 --report-at 10000 25000 50000 --out benchmarks/results/minatar_breakout

Runs whose ``run.json`` already exists are skipped unless ``--force``; ``--report-only`` re-reads the
logs without training. Runs execute one at a time by default (``--jobs`` for more). ``--budget`` and
``--eval-freq`` take one number or ``ENV=STEPS`` per env, so one invocation can cover envs with different
budgets and give the cross-env rliable aggregate (the combined report of ``docs/results.md``)::

    python benchmarks/sample_efficiency.py --envs CartPole-v1 MinAtar/Breakout-v1 --algos iris ppo dqn \
        --seeds 0 1 2 --budget CartPole-v1=10000 MinAtar/Breakout-v1=50000 \
        --eval-freq CartPole-v1=1000 MinAtar/Breakout-v1=5000 --out benchmarks/results/all_envs
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from sb3_iris.suite.zoo_runs import interval_estimates, machine_description, read_evaluations, zoo_entry_point

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IRIS_CONF = REPO_ROOT / "hyperparams" / "iris.yml"
DEFAULT_BASELINE_CONF_DIR = REPO_ROOT / "hyperparams" / "baselines"

#: Return threshold for the steps-to-threshold column per env; envs not listed have none.
#: MinAtar/Breakout-v1: 2.0, about five times the return of a uniformly random policy (0.38).
DEFAULT_THRESHOLDS = {
    "CartPole-v1": 475.0,
    "CartPole-v0": 195.0,
    "Acrobot-v1": -100.0,
    "LunarLander-v3": 200.0,
    "MinAtar/Breakout-v1": 2.0,
}

#: (random, reference) returns used to normalise scores for the cross-env rliable aggregate.
#: Reference = maximum return where the env has one, otherwise a commonly used "solved" level; None: the best
#: mean evaluation return that any run of the report reached on that env (the report says so).
#: MinAtar/Breakout-v1 random: 0.38, the mean return of uniformly random actions over 10 000 episodes
#: (seeds 0-9999, gymnasium's default sticky actions 0.1), measured with ``random_policy_return``.
NORMALIZATION: dict[str, tuple[float, Optional[float]]] = {
    "CartPole-v1": (22.0, 500.0),
    "Acrobot-v1": (-500.0, -60.0),
    "MountainCar-v0": (-200.0, -100.0),
    "LunarLander-v3": (-180.0, 200.0),
    "MinAtar/Breakout-v1": (0.38, None),
}

#: The rliable aggregate needs at least this many (run, env) scores for one algorithm.
MIN_RLIABLE_SCORES = 2

#: Env id prefix -> module to import (``--gym-packages``) so that RL Zoo finds the id.
GYM_PACKAGES = {"MinAtar/": "sb3_iris.minatar"}


def _env_slug(env_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", env_id)


@dataclass
class Run:
    """One (env, algo, seed) training run and what it produced."""

    env: str
    algo: str
    seed: int
    budget: int
    folder: Path
    timesteps: Optional[np.ndarray] = None
    returns: Optional[np.ndarray] = None  # (n_evals, n_episodes)
    wall_time: Optional[float] = None
    returncode: Optional[int] = None
    command: list[str] = field(default_factory=list)
    jobs: Optional[int] = None  # runs in parallel when this one was trained

    @property
    def mean_curve(self) -> Optional[np.ndarray]:
        return None if self.returns is None else self.returns.mean(axis=1)

    def value_at(self, step: int) -> float:
        """Mean eval return of the last evaluation at or before ``step`` (NaN if none)."""
        if self.timesteps is None or len(self.timesteps) == 0:
            return float("nan")
        index = np.searchsorted(self.timesteps, step, side="right") - 1
        return float("nan") if index < 0 else float(self.mean_curve[index])

    def steps_to(self, threshold: float) -> Optional[int]:
        """First evaluated step whose mean return is >= threshold (None if never within the run)."""
        if self.timesteps is None:
            return None
        hits = np.flatnonzero(self.mean_curve >= threshold)
        return int(self.timesteps[hits[0]]) if len(hits) else None


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


# ``python -m rl_zoo3.train`` when ``--algo iris`` is registered (start-up hook), else the fallback.
_zoo_entry_point = zoo_entry_point


def gym_packages_for(env_id: str, extra: Optional[list[str]] = None) -> list[str]:
    """Modules RL Zoo must import (``--gym-packages``) to find ``env_id``: those of ``GYM_PACKAGES`` plus ``extra``.

    :param env_id: Gymnasium env id
    :param extra: modules given on the command line, kept first and in order
    :return: module names without duplicates
    """
    packages = list(extra or [])
    for prefix, module in GYM_PACKAGES.items():
        if env_id.startswith(prefix) and module not in packages:
            packages.append(module)
    return packages


def conf_envs(path: Path) -> set[str]:
    """Env ids (top-level keys) of an RL Zoo hyperparameter file; empty if the file does not exist."""
    if not path.is_file():
        return set()
    import yaml

    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping of env ids to hyperparameters, got {type(content).__name__}")
    return set(content)


def baseline_conf(algo: str, env_id: str, conf_dir: Optional[Path]) -> Optional[Path]:
    """The ``-conf`` file for a non-IRIS run: ``<conf_dir>/<algo>.yml`` if it has ``env_id``, else None (RL Zoo's).

    :param algo: RL Zoo algorithm name
    :param env_id: Gymnasium env id
    :param conf_dir: folder of the baseline files (None: always RL Zoo's own hyperparameters)
    """
    if conf_dir is None:
        return None
    path = Path(conf_dir) / f"{algo}.yml"
    return path if env_id in conf_envs(path) else None


def build_command(run: Run, args: argparse.Namespace, entry_point: list[str]) -> list[str]:
    """The RL Zoo training command of one run (see the module docstring)."""
    command = [
        *entry_point,
        "--algo", run.algo,
        "--env", run.env,
        "--seed", str(run.seed),
        "-n", str(run.budget),
        "--eval-freq", str(args.eval_freq[run.env]),
        "--eval-episodes", str(args.eval_episodes),
        "--n-eval-envs", "1",
        "--num-threads", str(args.num_threads),
        "--device", "cpu",
        "-f", str(run.folder),
    ]  # fmt: skip
    if run.algo == "iris":
        command += ["-conf", str(args.iris_conf)]
    else:
        conf = baseline_conf(run.algo, run.env, args.baseline_conf_dir)
        if conf is not None:
            command += ["-conf", str(conf)]
    packages = gym_packages_for(run.env, args.gym_packages)
    if packages:
        command += ["--gym-packages", *packages]
    extra = args.zoo_args.get(run.algo, []) + args.zoo_args.get("all", [])
    return command + extra


def train(run: Run, args: argparse.Namespace, entry_point: list[str]) -> None:
    """Run one RL Zoo training in a subprocess; writes ``run.json`` (command, wall time, exit code)."""
    run.folder.mkdir(parents=True, exist_ok=True)
    run.command = build_command(run, args, entry_point)
    run.jobs = args.jobs
    env = dict(os.environ, OMP_NUM_THREADS=str(args.num_threads), MKL_NUM_THREADS=str(args.num_threads))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    print(f"[{time.strftime('%H:%M:%S')}] {run.env} {run.algo} seed {run.seed}: {shlex.join(run.command)}", flush=True)
    start = time.perf_counter()
    with open(run.folder / "train.log", "w") as log:
        process = subprocess.run(run.command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    run.wall_time = time.perf_counter() - start
    run.returncode = process.returncode
    info = dict(
        env=run.env,
        algo=run.algo,
        seed=run.seed,
        budget=run.budget,
        wall_time_s=run.wall_time,
        returncode=run.returncode,
        jobs=args.jobs,
        num_threads=args.num_threads,
        command=shlex.join(run.command),
        machine=machine_description(),
    )
    (run.folder / "run.json").write_text(json.dumps(info, indent=2))
    status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see {run.folder / 'train.log'})"
    print(f"    done in {run.wall_time:.0f} s: {status}", flush=True)


def load(run: Run) -> None:
    """Read ``run.json`` and the latest ``evaluations.npz`` under the run folder."""
    info_path = run.folder / "run.json"
    if info_path.exists():
        info = json.loads(info_path.read_text())
        run.wall_time = info.get("wall_time_s")
        run.returncode = info.get("returncode")
        run.jobs = info.get("jobs")
        run.command = shlex.split(info.get("command", ""))
    candidates = glob.glob(str(run.folder / "**" / "evaluations.npz"), recursive=True)
    if not candidates:
        return
    run.timesteps, run.returns = read_evaluations(max(candidates, key=os.path.getmtime))


def random_policy_return(env_id: str, episodes: int, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the return of uniformly random actions over ``episodes`` episodes (reset seeds
    ``seed, seed + 1, ...``), for the random level of ``NORMALIZATION``.

    :param env_id: Gymnasium env id (``GYM_PACKAGES`` modules are imported first)
    :param episodes: number of episodes
    :param seed: seed of the first episode and of the action sampler
    """
    import importlib

    import gymnasium as gym

    for module in gym_packages_for(env_id):
        importlib.import_module(module)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def concurrency_description(runs: list[Run]) -> str:
    """How the runs were made, from their ``run.json`` (``--jobs`` of the invocation that trained them)."""
    threads = sorted({_flag_value(r.command, "--num-threads") for r in runs if r.command} - {None})
    jobs = sorted({r.jobs for r in runs if r.jobs is not None})
    unrecorded = sum(1 for r in runs if r.command and r.jobs is None)
    parts = [f"`--num-threads {'/'.join(threads)}` per run" if threads else "threads per run not recorded"]
    if jobs:
        parts.append("runs in parallel (`--jobs`): " + "/".join(map(str, jobs)))
    if unrecorded:
        parts.append(f"{unrecorded} run(s) trained before `--jobs` was recorded")
    return "; ".join(parts) + "."


def _flag_value(command: list[str], flag: str) -> Optional[str]:
    return command[command.index(flag) + 1] if flag in command[:-1] else None


def display_command(command: list[str]) -> str:
    """A run's command as a reader would type it: ``python`` for the interpreter, paths relative to the repo."""
    shown = []
    for i, part in enumerate(command):
        if i == 0 and (part == sys.executable or Path(part).name.startswith("python")):
            shown.append("python")
            continue
        try:
            path = Path(part)
            shown.append(str(path.relative_to(REPO_ROOT)) if path.is_absolute() else part)
        except ValueError:
            shown.append(part)
    return shlex.join(shown)


def report_budgets(budget: int, eval_freq: int, requested: Optional[list[int]] = None) -> list[int]:
    """Env steps at which the table reports returns.

    :param budget: env steps of the runs
    :param eval_freq: env steps between evaluations
    :param requested: explicit steps (``--report-at``); those above the budget are dropped. None: a quarter, half
        and all of the budget, rounded to the evaluation grid
    :return: sorted, distinct steps
    """
    if requested:
        return sorted({int(step) for step in requested if 0 < int(step) <= budget})
    points = {budget}
    for fraction in (0.25, 0.5):
        step = int(round(budget * fraction / eval_freq)) * eval_freq
        if 0 < step < budget:
            points.add(step)
    return sorted(points)


def summarize(runs: list[Run], envs: list[str], algos: list[str], args: argparse.Namespace) -> tuple[str, list[dict]]:
    lines: list[str] = []
    rows: list[dict] = []
    for env in envs:
        budget = args.budget[env]
        threshold = args.threshold.get(env)
        points = report_budgets(budget, args.eval_freq[env], args.report_at)
        lines += [f"### {env}", ""]
        header = ["algo", "seeds"] + [f"return @ {p // 1000 if p % 1000 == 0 else p / 1000}k" for p in points]
        if threshold is not None:
            header += [f"steps to >= {threshold:g} (per seed)", "median"]
        header += ["wall time / run"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for algo in algos:
            selected = [r for r in runs if r.env == env and r.algo == algo and r.timesteps is not None]
            if not selected:
                lines.append(f"| {algo} | 0 | " + " | ".join(["n/a"] * (len(header) - 2)) + " |")
                continue
            row: dict = dict(env=env, algo=algo, n_seeds=len(selected), budget=budget)
            cells = [algo, str(len(selected))]
            for p in points:
                values = np.array([r.value_at(p) for r in selected])
                mean, std = float(np.nanmean(values)), float(np.nanstd(values))
                lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
                cells.append(f"{mean:.1f} ± {std:.1f} [{lo:.1f}, {hi:.1f}]")
                row[f"mean_return_at_{p}"] = mean
                row[f"std_return_at_{p}"] = std
                row[f"min_return_at_{p}"] = lo
                row[f"max_return_at_{p}"] = hi
            if threshold is not None:
                steps = [r.steps_to(threshold) for r in selected]
                per_seed = ", ".join("—" if s is None else f"{s / 1000:g}k" for s in steps)
                # Not reached counts as beyond the budget for the median (reported as "> budget").
                ranked = sorted(math.inf if s is None else s for s in steps)
                median = float(np.median(ranked)) if ranked else math.inf
                median_text = f"> {budget / 1000:g}k" if math.isinf(median) else f"{median / 1000:g}k"
                cells += [per_seed, median_text]
                row["steps_to_threshold"] = ";".join("" if s is None else str(s) for s in steps)
                row["threshold"] = threshold
                row["reached"] = sum(s is not None for s in steps)
            walls = [r.wall_time for r in selected if r.wall_time is not None]
            if walls:
                cells.append(f"{np.mean(walls) / 60:.1f} min [{min(walls) / 60:.1f}, {max(walls) / 60:.1f}]")
                row["mean_wall_time_s"] = float(np.mean(walls))
            else:
                cells.append("n/a")
            lines.append("| " + " | ".join(cells) + " |")
            rows.append(row)
        lines += [
            "",
            f"Return: mean ± std over seeds of the mean evaluation return ({args.eval_episodes} episodes, "
            "deterministic) at the last evaluation at or before that many env steps; [min, max] over seeds. "
            + (
                "Steps to threshold: first evaluation whose mean return reaches it (— = not within the budget). "
                if threshold is not None
                else ""
            )
            + "Wall time: whole RL Zoo process (training + evaluations), mean [min, max].",
            "",
        ]  # fmt: skip
    return "\n".join(lines), rows


def rliable_section(runs: list[Run], envs: list[str], algos: list[str], args: argparse.Namespace) -> str:
    try:
        import rliable  # noqa: F401
    except ImportError:
        return "rliable is not installed: no IQM aggregate (`pip install rliable` and rerun with `--report-only`).\n"
    usable = [env for env in envs if env in NORMALIZATION]
    if not usable:
        return "rliable: no env with known random/reference returns for normalisation; no aggregate.\n"
    bounds = {env: normalization_bounds(env, runs) for env in usable}
    usable = [env for env in usable if bounds[env] is not None]
    if not usable:
        return "rliable: no finished run to set the reference return of the normalisation; no aggregate.\n"
    score_dict = {}
    for algo in algos:
        columns = []
        for env in usable:
            low, high = bounds[env]
            values = [
                r.value_at(args.budget[env])
                for r in runs
                if r.env == env and r.algo == algo and r.timesteps is not None
            ]
            columns.append([(v - low) / (high - low) for v in values])
        n = min((len(c) for c in columns), default=0)
        if n == 0:
            continue
        score_dict[algo] = np.array([c[:n] for c in columns]).T  # (runs, tasks)
    if not score_dict or max(scores.size for scores in score_dict.values()) < MIN_RLIABLE_SCORES:
        return (
            f"rliable: fewer than {MIN_RLIABLE_SCORES} runs per algorithm over {', '.join(usable)}; no bootstrap "
            "aggregate (run more seeds or envs).\n"
        )

    estimates, intervals = interval_estimates(score_dict, reps=args.bootstrap_reps, seed=None)
    described = []
    for env in usable:
        low, high = bounds[env]
        source = "" if NORMALIZATION[env][1] is not None else " = best mean evaluation return of any run here"
        described.append(f"{env}: random {low:g}, reference {high:g}{source}")
    lines = [
        f"Normalised score (return - random) / (reference - random) at each env's budget, over {', '.join(usable)} "
        f"({'; '.join(described)}); 95% stratified-bootstrap CIs ({args.bootstrap_reps} reps)."
        + (" With a single env and 3 seeds these intervals are very wide." if len(usable) == 1 else ""),
        "",
        "| algo | runs | IQM | mean | median |",
        "|---|---|---|---|---|",
    ]
    for algo in score_dict:
        est, ci = estimates[algo], intervals[algo]
        cells = [f"{est[i]:.2f} [{ci[0, i]:.2f}, {ci[1, i]:.2f}]" for i in range(3)]
        lines.append(
            f"| {algo} | {score_dict[algo].shape[0]} x {score_dict[algo].shape[1]} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def normalization_bounds(env: str, runs: list[Run]) -> Optional[tuple[float, float]]:
    """(random, reference) return of ``env`` for the normalised scores, None if unknown.

    A reference of None in ``NORMALIZATION`` means the best mean evaluation return that any run of ``env`` reached
    (None when no run has evaluations or none beats the random return).
    """
    if env not in NORMALIZATION:
        return None
    low, high = NORMALIZATION[env]
    if high is None:
        best = [float(r.mean_curve.max()) for r in runs if r.env == env and r.returns is not None and len(r.returns)]
        if not best or max(best) <= low:
            return None
        high = max(best)
    return float(low), float(high)


def plot(runs: list[Run], env: str, algos: list[str], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for algo in algos:
        selected = [r for r in runs if r.env == env and r.algo == algo and r.timesteps is not None]
        if not selected:
            continue
        grid = sorted(set.intersection(*(set(r.timesteps.tolist()) for r in selected)))
        if not grid:
            continue
        curves = np.array([[r.value_at(t) for t in grid] for r in selected])
        mean = curves.mean(axis=0)
        (line,) = ax.plot(grid, mean, label=f"{algo.upper()} ({len(selected)} seeds)")
        ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=line.get_color(), alpha=0.2)
    threshold = args.threshold.get(env)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    if env in NORMALIZATION:
        random_return = NORMALIZATION[env][0]
        ax.axhline(random_return, color="black", linestyle=":", linewidth=1, label=f"random {random_return:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"mean eval return ({args.eval_episodes} episodes)")
    ax.set_title(f"{env}: mean over seeds, shaded min-max")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(runs: list[Run], args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env", "algo", "seed", "timesteps", "mean_return", "std_return"])
        for r in runs:
            if r.timesteps is None:
                continue
            for t, episode_returns in zip(r.timesteps, r.returns):
                writer.writerow(
                    [r.env, r.algo, r.seed, int(t), f"{episode_returns.mean():.2f}", f"{episode_returns.std():.2f}"]
                )
    tables, rows = summarize(runs, args.envs, args.algos, args)
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("env", "algo", "n_seeds", "budget"), k))
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    for env in args.envs:
        plot(runs, env, args.algos, args, out / f"learning_curves_{_env_slug(env)}.png")
    for r in runs:
        info_path = r.folder / "run.json"
        if info_path.is_file():
            copy = out / "run_info" / _env_slug(r.env) / r.algo / f"seed{r.seed}.json"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(info_path.read_text())
    failed = [r for r in runs if r.returncode not in (None, 0)]
    missing = [r for r in runs if r.timesteps is None]
    commands = sorted({display_command(r.command) for r in runs if r.command})
    text = [
        "# Sample efficiency: " + ", ".join(a.upper() for a in args.algos),
        "",
        f"Machine: {machine_description()}. {concurrency_description(runs)}",
        "Evaluation: every "
        + ", ".join(f"{args.eval_freq[env]} env steps ({env})" for env in args.envs)
        + f", {args.eval_episodes} episodes, deterministic, 1 eval env.",
        f"Seeds: {', '.join(map(str, args.seeds))}. Budgets: "
        + ", ".join(f"{env} {args.budget[env]}" for env in args.envs)
        + ".",
        "",
        tables,
        "### Aggregate (rliable)",
        "",
        rliable_section(runs, args.envs, args.algos, args),
        "### Learning curves",
        "",
        *[f"![{env}](learning_curves_{_env_slug(env)}.png)" for env in args.envs],
        "",
    ]
    if failed or missing:
        text += ["### Problems", ""]
        text += [f"- {r.env} {r.algo} seed {r.seed}: exit code {r.returncode}" for r in failed]
        text += [f"- {r.env} {r.algo} seed {r.seed}: no evaluations.npz in {r.folder}" for r in missing]
        text.append("")
    text += ["### Commands", "", "```", *commands, "```", ""]
    text += ["Per-run details (command, wall time, exit code, machine): `run_info/<env>/<algo>/seed<seed>.json`.", ""]
    (out / "results.md").write_text("\n".join(text))
    return out / "results.md"


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parse_mapping(items: list[str], envs: list[str], name: str, cast=float) -> dict:
    """``["ENV=VALUE", ...]`` or a single ``VALUE`` for every env."""
    mapping = {}
    for item in items:
        if "=" in item:
            env, value = item.rsplit("=", 1)
            mapping[env] = cast(float(value))
        else:
            mapping.update({env: cast(float(item)) for env in envs})
    return mapping


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1"], help="env ids")
    parser.add_argument("--algos", nargs="+", default=["iris", "ppo", "dqn"], help="RL Zoo algorithm names")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--budget",
        nargs="+",
        default=["10000"],
        help="env steps per run: ENV=STEPS entries, or one number for all envs",
    )
    parser.add_argument(
        "--threshold",
        nargs="*",
        default=[],
        help="ENV=RETURN for the steps-to-threshold column (defaults: CartPole-v1=475)",
    )
    parser.add_argument(
        "--out", default="benchmarks/results/sample_efficiency", help="folder for results.md, CSVs, PNGs"
    )
    parser.add_argument("--log-dir", default=None, help="RL Zoo log folders (default: logs/sample_efficiency)")
    parser.add_argument(
        "--eval-freq",
        nargs="+",
        default=["2000"],
        help="env steps between evaluations: ENV=STEPS entries, or one number for all envs",
    )
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--report-at",
        nargs="+",
        type=int,
        default=None,
        help="env steps at which results.md reports returns (default: a quarter, half and all of the budget)",
    )
    parser.add_argument("--iris-conf", default=str(DEFAULT_IRIS_CONF), help="RL Zoo config file for IRIS")
    parser.add_argument(
        "--baseline-conf-dir",
        default=str(DEFAULT_BASELINE_CONF_DIR),
        help="folder of <algo>.yml files used (-conf) for the envs they list; other envs use RL Zoo's own files. "
        "'' disables",
    )
    parser.add_argument(
        "--gym-packages",
        nargs="*",
        default=[],
        help="passed to rl_zoo3.train, in addition to those of GYM_PACKAGES (MinAtar/* -> sb3_iris.minatar)",
    )
    parser.add_argument(
        "--measure-random",
        type=int,
        default=0,
        metavar="EPISODES",
        help="print the mean return of uniformly random actions over EPISODES episodes per env, then exit",
    )
    parser.add_argument(
        "--zoo-arg",
        action="append",
        default=[],
        metavar="ALGO:ARGS",
        help="extra rl_zoo3.train arguments for one algorithm (or 'all'), e.g. 'iris:-params n_steps_per_epoch:100'",
    )
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads per run (and OMP_NUM_THREADS)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--bootstrap-reps", type=int, default=2000)
    parser.add_argument("--force", action="store_true", help="retrain runs that already have a run.json")
    parser.add_argument("--report-only", action="store_true", help="only read existing logs and write the report")
    args = parser.parse_args(argv)
    args.budget = _parse_mapping(args.budget, args.envs, "budget", int)
    args.eval_freq = _parse_mapping(args.eval_freq, args.envs, "eval-freq", int)
    for name, mapping in (("--budget", args.budget), ("--eval-freq", args.eval_freq)):
        missing = [env for env in args.envs if env not in mapping]
        if missing:
            parser.error(f"no {name} for {missing} (give ENV=STEPS for each env, or one number for all)")
    args.threshold = {
        **{e: t for e, t in DEFAULT_THRESHOLDS.items() if e in args.envs},
        **_parse_mapping(args.threshold, args.envs, "threshold"),
    }
    zoo_args: dict[str, list[str]] = {}
    for item in args.zoo_arg:
        algo, _, extra = item.partition(":")
        zoo_args.setdefault(algo, []).extend(shlex.split(extra))
    args.zoo_args = zoo_args
    args.log_dir = Path(args.log_dir or REPO_ROOT / "logs" / "sample_efficiency")
    args.baseline_conf_dir = Path(args.baseline_conf_dir) if args.baseline_conf_dir else None
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.measure_random:
        for env in args.envs:
            mean, std = random_policy_return(env, args.measure_random)
            print(f"{env}: random policy return {mean:.3f} ± {std:.3f} over {args.measure_random} episodes")
        return 0
    runs = [
        Run(env, algo, seed, args.budget[env], args.log_dir / _env_slug(env) / algo / f"seed{seed}")
        for env in args.envs
        for algo in args.algos
        for seed in args.seeds
    ]
    if not args.report_only:
        todo = [r for r in runs if args.force or not (r.folder / "run.json").exists()]
        if todo:
            entry_point = _zoo_entry_point()
            if args.jobs > 1:
                with ThreadPoolExecutor(args.jobs) as pool:
                    list(pool.map(lambda r: train(r, args, entry_point), todo))
            else:
                for run in todo:
                    train(run, args, entry_point)
    for run in runs:
        load(run)
    path = write_outputs(runs, args)
    print(f"report: {path}")
    print(path.read_text())
    return 0 if all(r.timesteps is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
