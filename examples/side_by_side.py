"""IRIS next to PPO and DQN: the same env, the same budget of env steps, trained and plotted by RL Zoo.

    pip install "sb3-iris[zoo]"
    python examples/side_by_side.py                                     # CartPole-v1, 5000 steps, seeds 0 and 1
    python examples/side_by_side.py --env Acrobot-v1 --budget 20000 --seeds 0 1 2 --eval-freq 2000
    python examples/side_by_side.py --budget 300 --iris-params n_steps_per_epoch:50   # a quick smoke run

Each (algorithm, seed) pair is one unmodified RL Zoo run, one after the other::

    python -m rl_zoo3.train --algo ALGO --env ENV -n BUDGET --seed SEED -f LOG_FOLDER \
        --eval-freq EVAL_FREQ --eval-episodes EVAL_EPISODES --num-threads 1

with RL Zoo's own hyperparameters for PPO and DQN (``rl_zoo3/hyperparams/{ppo,dqn}.yml``) and the packaged
``iris.yml`` for IRIS (``--iris-params`` adds ``-params`` overrides for IRIS only). ``-n`` overrides each file's
``n_timesteps``: every algorithm gets the same number of env steps. (IRIS then runs its ``final_training_epochs``,
which train on the collected data without any new env step.) The stdout of each run goes to
``LOG_FOLDER/ALGO_ENV_seedSEED.txt``.

The comparison is drawn with RL Zoo's plotting scripts, called in this process with the non-interactive
``Agg`` matplotlib backend so that every figure they draw is saved as a PNG in ``LOG_FOLDER/plots``:

- ``rl_zoo3.plots.all_plots``: evaluation return (``evaluations.npz``) against env steps, all algorithms on one
  figure, mean and standard error over seeds, and a Markdown table of the last evaluation; its data is saved
  to ``LOG_FOLDER/plots/results.pkl``;
- ``rl_zoo3.plots.plot_from_file`` on that file (needs at least two seeds): learning curves and a bar chart of
  the last evaluation (RL Zoo titles it "PyBullet envs");
- ``rl_zoo3.plots.plot_train``: training episode returns (``Monitor`` files), one figure per algorithm.

The same plots interactively: ``python -m rl_zoo3.plots.all_plots -a iris ppo dqn -e CartPole-v1 -f LOG_FOLDER``,
``python -m rl_zoo3.plots.plot_train -a iris -e CartPole-v1 -f LOG_FOLDER``.

Use a fresh ``--log-folder``: RL Zoo's plots aggregate every run of the env found in it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="CartPole-v1", help="Gymnasium id (default: CartPole-v1)")
    parser.add_argument("--budget", type=int, default=5000, help="env steps per run, all algorithms (default: 5000)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default: 0 1)")
    parser.add_argument("--algos", nargs="+", default=["iris", "ppo", "dqn"], help="RL Zoo algorithms")
    parser.add_argument("--log-folder", default="logs/side_by_side", help="RL Zoo log folder (default: %(default)s)")
    parser.add_argument("--eval-freq", type=int, default=None, help="evaluate every N env steps (default: budget/10)")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (>= 2; default: 5)")
    parser.add_argument("--num-threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument(
        "--iris-params", nargs="+", default=[], metavar="KEY:VALUE", help="RL Zoo -params overrides for IRIS only"
    )
    parser.add_argument("--window", type=int, default=10, help="plot_train rolling window in episodes (default: 10)")
    parser.add_argument("--plot-only", action="store_true", help="skip training, plot the runs in --log-folder")
    args = parser.parse_args(argv)
    if args.eval_freq is None:
        args.eval_freq = max(args.budget // 10, 1)
    if args.eval_episodes < 2:
        # rl_zoo3.plots.all_plots squeezes the episode axis away with a single episode per evaluation.
        parser.error("--eval-episodes must be >= 2 (RL Zoo's all_plots needs several episodes per evaluation)")
    return args


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", SDL_VIDEODRIVER="dummy")
    return env


def train(args: argparse.Namespace, algo: str, seed: int) -> float:
    """One RL Zoo training run; returns its wall time in seconds."""
    command = [sys.executable, "-m", "rl_zoo3.train", "--algo", algo, "--env", args.env, "-n", str(args.budget)]
    command += ["--seed", str(seed), "-f", args.log_folder, "--eval-freq", str(args.eval_freq)]
    command += ["--eval-episodes", str(args.eval_episodes), "--num-threads", str(args.num_threads)]
    if algo == "iris" and args.iris_params:
        command += ["-params", *args.iris_params]
    log_file = Path(args.log_folder) / f"{algo}_{args.env}_seed{seed}.txt"
    print(f"[{algo} seed {seed}] {' '.join(command[1:])}  (output: {log_file})", flush=True)
    start = time.perf_counter()
    with open(log_file, "w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=subprocess_env())
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"[{algo} seed {seed}] failed (exit status {result.returncode}):\n{tail}")
    print(f"[{algo} seed {seed}] done in {seconds:.1f} s", flush=True)
    return seconds


def run_rl_zoo_plot(
    function: Callable[[], None], argv: list[str], prefix: Path, title: Optional[str] = None
) -> list[Path]:
    """Run an RL Zoo plotting function with ``argv`` and save every figure it drew as ``PREFIX_<figure>.png``
    (with ``title`` as the title of its axes, if given)."""
    import matplotlib

    matplotlib.use("Agg")  # plt.show() is then a no-op and the figures stay open
    from matplotlib import pyplot as plt

    plt.close("all")
    saved_argv = sys.argv
    sys.argv = [function.__module__, *argv]
    try:
        function()
    finally:
        sys.argv = saved_argv
    paths = []
    for number in plt.get_fignums():
        figure = plt.figure(number)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", figure.get_label() or f"figure{number}").strip("_")
        if title is not None:
            for axes in figure.axes:
                axes.set_title(title)
        path = prefix.parent / f"{prefix.name}_{name}.png"
        figure.savefig(path, dpi=100)
        paths.append(path)
    plt.close("all")
    return paths


def import_rl_zoo_plots() -> tuple[Callable[[], None], ...]:
    """RL Zoo's plotting functions (checked before training: rl_zoo3 does not declare their dependencies)."""
    try:
        from rl_zoo3.plots.all_plots import all_plots
        from rl_zoo3.plots.plot_from_file import plot_from_file
        from rl_zoo3.plots.plot_train import plot_train
    except ImportError as error:
        raise SystemExit(
            f"RL Zoo's plots need matplotlib, seaborn and scipy ({error}): pip install matplotlib seaborn scipy"
        ) from error
    return all_plots, plot_from_file, plot_train


def plot(args: argparse.Namespace) -> list[Path]:
    all_plots, plot_from_file, plot_train = import_rl_zoo_plots()

    plots = Path(args.log_folder) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    results = plots / "results"
    print("\n# Evaluation return (rl_zoo3.plots.all_plots)")
    paths = run_rl_zoo_plot(
        all_plots,
        ["-a", *args.algos, "-e", args.env, "-f", args.log_folder, "-l", "zoo", "--no-million", "--no-display"]
        + ["-o", str(results)],
        plots / "eval",
    )
    if len(args.seeds) >= 2:
        print("\n# Final scores (rl_zoo3.plots.plot_from_file)")
        paths += run_rl_zoo_plot(
            plot_from_file,
            ["-i", f"{results}.pkl", "--no-million"],
            plots / "from_file",
        )
    else:
        print("\n(rl_zoo3.plots.plot_from_file needs at least two seeds: skipped)")
    for algo in args.algos:
        paths += run_rl_zoo_plot(
            plot_train,
            ["-a", algo, "-e", args.env, "-f", args.log_folder, "-w", str(args.window)],
            plots / f"train_{algo}",
            title=f"{algo.upper()} on {args.env}: training episodic reward",
        )
    return paths


def main(argv=None) -> list[Path]:
    args = parse_args(argv)
    import_rl_zoo_plots()
    Path(args.log_folder).mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        for algo in args.algos:
            existing = sorted(Path(args.log_folder, algo).glob(f"{args.env}_*"))
            if existing:
                print(
                    f"warning: {len(existing)} earlier {algo} run(s) of {args.env} in {args.log_folder}: "
                    "the plots will include them",
                    flush=True,
                )
        seconds = {}
        for algo in args.algos:
            for seed in args.seeds:
                seconds[algo, seed] = train(args, algo, seed)
        print("\nwall time per run: " + ", ".join(f"{a} seed {s}: {t:.0f} s" for (a, s), t in seconds.items()))
    paths = plot(args)
    print("\nPNG files:\n" + "\n".join(f"  {path}" for path in paths))
    return paths


if __name__ == "__main__":
    main()
