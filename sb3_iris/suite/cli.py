"""Command line of the suite: ``python -m sb3_iris.suite run|status|report --out DIR ...``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from sb3_iris.suite.runs import SuiteConfig

__all__ = ["main", "parser"]

_DEFAULTS = SuiteConfig()


def parser() -> argparse.ArgumentParser:
    """The argument parser of the three commands."""
    root = argparse.ArgumentParser(
        prog="python -m sb3_iris.suite",
        description="The Atari 100k suite as RL Zoo runs on a Ray cluster: run, status, report.",
    )
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train every unfinished (game, seed) run; resumes from checkpoints")
    run.add_argument("--out", required=True, type=Path, help="suite folder (on a filesystem all nodes see)")
    run.add_argument(
        "--games", nargs="+", default=list(_DEFAULTS.games), help="game names or env ids (default: the 26 games)"
    )
    run.add_argument("--seeds", nargs="+", type=int, default=list(_DEFAULTS.seeds))
    run.add_argument("--budget", type=int, default=_DEFAULTS.budget, help="env steps per run (-n)")
    run.add_argument("--save-freq", type=int, default=_DEFAULTS.save_freq, help="env steps between checkpoints")
    run.add_argument("--eval-freq", type=int, default=_DEFAULTS.eval_freq, help="env steps between evaluations")
    run.add_argument("--eval-episodes", type=int, default=_DEFAULTS.eval_episodes)
    run.add_argument(
        "--final-eval-episodes",
        type=int,
        default=_DEFAULTS.final_eval_episodes,
        help="episodes of the final evaluation with the IRIS protocol (python -m sb3_iris.evaluate); 0 skips it",
    )
    run.add_argument(
        "--final-eval-max-steps", type=int, default=0, help="cut final-evaluation episodes after this many steps"
    )
    run.add_argument(
        "--params", nargs="+", default=[], metavar="KEY:VALUE", help="IRIS hyperparameters (rl_zoo3 -params)"
    )
    run.add_argument(
        "--zoo-args",
        default="",
        help='other rl_zoo3.train arguments, one string, e.g. "--conf-file my.yml --eval-env-kwargs ..."',
    )
    run.add_argument("--address", default=None, help="Ray cluster address ('auto': the running cluster)")
    run.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    run.add_argument("--num-gpus", type=int, default=None, help="GPUs of a local Ray instance (default: all)")
    run.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs per run (and its torch threads)")
    run.add_argument(
        "--gpus-per-run",
        default="auto",
        help="GPUs per run: auto (1 if the cluster has GPUs, else 0), or a "
        "number; fractions pack runs onto one GPU (0.25: 4 runs)",
    )
    run.add_argument("--max-retries", type=int, default=2, help="further attempts of a failing run")

    status = commands.add_parser("status", help="state, env steps, last evaluation and logs of every run")
    status.add_argument("--out", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    report = commands.add_parser("report", help="the paper's table side by side (markdown, CSV, PNG)")
    report.add_argument("--out", required=True, type=Path)
    report.add_argument("--bootstrap-reps", type=int, default=2000)
    report.add_argument("--folder", type=Path, default=None, help="where to write (default: <out>/report)")
    return root


def main(argv: Optional[list[str]] = None) -> int:
    """Run one command; the exit status is 0 when every run is finished (``run``) or the command succeeded."""
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        return _report(args)
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        print(f"sb3_iris.suite {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from sb3_iris.suite.scheduler import run_suite

    config = SuiteConfig(
        games=tuple(args.games),
        seeds=tuple(args.seeds),
        budget=args.budget,
        save_freq=args.save_freq,
        eval_freq=args.eval_freq,
        eval_episodes=args.eval_episodes,
        final_eval_episodes=args.final_eval_episodes,
        final_eval_max_steps=args.final_eval_max_steps,
        params=tuple(args.params),
        zoo_args=tuple(shlex.split(args.zoo_args)),
    )
    not_finished = run_suite(
        config,
        args.out,
        address=args.address,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        max_retries=args.max_retries,
    )
    print(f"suite: {not_finished} run(s) not finished" if not_finished else "suite: every run finished")
    return 1 if not_finished else 0


def _status(args: argparse.Namespace) -> int:
    from sb3_iris.suite.status import format_status, status_rows

    _, rows = status_rows(args.out)
    print(json.dumps(rows, indent=2) if args.json else format_status(rows))
    return 0


def _report(args: argparse.Namespace) -> int:
    from sb3_iris.suite.report import write_report
    from sb3_iris.suite.status import load_config

    if args.bootstrap_reps < 1:
        raise ValueError(f"--bootstrap-reps must be >= 1, got {args.bootstrap_reps}")
    path = write_report(args.out, load_config(args.out), reps=args.bootstrap_reps, folder=args.folder)
    print(path.read_text())
    print(f"report: {path}")
    return 0
