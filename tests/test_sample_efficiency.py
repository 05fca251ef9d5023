"""benchmarks/sample_efficiency.py: argument parsing, command building and the report from fake RL Zoo logs.

The end-to-end test (``slow``) trains IRIS, PPO and DQN for a few hundred MinAtar steps through RL Zoo.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "sample_efficiency.py"
BREAKOUT = "MinAtar/Breakout-v1"


def _load_script():
    spec = importlib.util.spec_from_file_location("sample_efficiency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


se = _load_script()
ENTRY_POINT = ["python", "-m", "rl_zoo3.train"]


def _args(tmp_path: Path, *extra: str):
    return se.parse_args(["--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), *extra])


def _run(args, env: str, algo: str, seed: int):
    return se.Run(env, algo, seed, args.budget[env], args.log_dir / se._env_slug(env) / algo / f"seed{seed}")


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


def test_budget_parsing_per_env_and_for_all(tmp_path):
    args = _args(tmp_path, "--envs", BREAKOUT, "CartPole-v1", "--budget", f"{BREAKOUT}=50000", "CartPole-v1=1e4")
    assert args.budget == {BREAKOUT: 50000, "CartPole-v1": 10000}
    args = _args(tmp_path, "--envs", BREAKOUT, "CartPole-v1", "--budget", "2000")
    assert args.budget == {BREAKOUT: 2000, "CartPole-v1": 2000}
    assert args.threshold == {BREAKOUT: 2.0, "CartPole-v1": 475.0}
    args = _args(tmp_path, "--envs", BREAKOUT, "--budget", "100", "--threshold", f"{BREAKOUT}=3.5")
    assert args.threshold == {BREAKOUT: 3.5}


def test_missing_budget_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _args(tmp_path, "--envs", BREAKOUT, "CartPole-v1", "--budget", "CartPole-v1=1000")
    assert "no --budget for ['MinAtar/Breakout-v1']" in capsys.readouterr().err


def test_eval_freq_per_env_reaches_each_command(tmp_path):
    args = _args(
        tmp_path,
        *("--envs", BREAKOUT, "CartPole-v1", "--budget", f"{BREAKOUT}=50000", "CartPole-v1=10000"),
        *("--eval-freq", f"{BREAKOUT}=5000", "CartPole-v1=1000"),
    )
    assert args.eval_freq == {BREAKOUT: 5000, "CartPole-v1": 1000}
    for env, freq in args.eval_freq.items():
        command = se.build_command(_run(args, env, "iris", 0), args, ENTRY_POINT)
        assert command[command.index("--eval-freq") + 1] == str(freq)
    assert _args(tmp_path, "--envs", BREAKOUT, "--budget", "100").eval_freq == {BREAKOUT: 2000}


def test_missing_eval_freq_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _args(tmp_path, "--envs", BREAKOUT, "CartPole-v1", "--budget", "1000", "--eval-freq", "CartPole-v1=500")
    assert "no --eval-freq for ['MinAtar/Breakout-v1']" in capsys.readouterr().err


def test_report_budgets():
    assert se.report_budgets(50000, 5000) == [10000, 25000, 50000]
    assert se.report_budgets(10000, 2000) == [2000, 4000, 10000]
    assert se.report_budgets(50000, 2000, [25000, 10000, 50000, 60000]) == [10000, 25000, 50000]


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def test_minatar_commands_get_gym_package_and_baseline_confs(tmp_path):
    args = _args(tmp_path, "--envs", BREAKOUT, "--budget", "50000", "--eval-freq", "5000")
    iris = se.build_command(_run(args, BREAKOUT, "iris", 0), args, ENTRY_POINT)
    assert iris[:3] == ENTRY_POINT
    assert iris[iris.index("-n") + 1] == "50000" and iris[iris.index("--eval-freq") + 1] == "5000"
    assert iris[iris.index("-conf") + 1] == str(REPO_ROOT / "hyperparams" / "iris.yml")
    assert iris[iris.index("--gym-packages") + 1 :][:1] == ["sb3_iris.minatar"]
    for algo in ("ppo", "dqn"):
        command = se.build_command(_run(args, BREAKOUT, algo, 1), args, ENTRY_POINT)
        assert command[command.index("-conf") + 1] == str(REPO_ROOT / "hyperparams" / "baselines" / f"{algo}.yml")
        assert command[command.index("--seed") + 1] == "1"
        assert "sb3_iris.minatar" in command


def test_classic_envs_keep_rl_zoo_hyperparameters(tmp_path):
    args = _args(tmp_path, "--envs", "CartPole-v1", "--budget", "1000")
    ppo = se.build_command(_run(args, "CartPole-v1", "ppo", 0), args, ENTRY_POINT)
    assert "-conf" not in ppo and "--gym-packages" not in ppo
    iris = se.build_command(_run(args, "CartPole-v1", "iris", 0), args, ENTRY_POINT)
    assert "-conf" in iris


def test_baseline_conf_dir_can_be_disabled_and_extra_args_pass_through(tmp_path):
    args = _args(
        tmp_path,
        *("--envs", BREAKOUT, "--budget", "1000", "--baseline-conf-dir", ""),
        *("--gym-packages", "sb3_iris.minatar", "other_pkg", "--zoo-arg", "ppo:-params n_epochs:2"),
    )
    command = se.build_command(_run(args, BREAKOUT, "ppo", 0), args, ENTRY_POINT)
    assert "-conf" not in command
    assert command[command.index("--gym-packages") + 1 :][:2] == ["sb3_iris.minatar", "other_pkg"]
    assert command.count("sb3_iris.minatar") == 1
    assert command[-2:] == ["-params", "n_epochs:2"]


def test_baseline_files_list_only_minatar():
    for algo in ("ppo", "dqn"):
        envs = se.conf_envs(REPO_ROOT / "hyperparams" / "baselines" / f"{algo}.yml")
        assert BREAKOUT in envs and all(env.startswith("MinAtar/") for env in envs), envs
    assert se.conf_envs(REPO_ROOT / "hyperparams" / "baselines" / "a2c.yml") == set()


# --------------------------------------------------------------------------------------------------
# Report from fake evaluations
# --------------------------------------------------------------------------------------------------

# Mean evaluation return per algorithm at steps 5000, 10000, ..., 50000 (seed s adds s * 0.1).
FAKE_CURVES = {
    "iris": np.linspace(0.5, 6.0, 10),
    "ppo": np.linspace(0.4, 3.0, 10),
    "dqn": np.linspace(0.3, 1.7, 10),
}


def _write_fake_run(
    args, algo: str, seed: int, env: str = BREAKOUT, scale: float = 1.0, jobs: Optional[int] = None
) -> None:
    """Fake RL Zoo output: 10 evaluations at 1/10, 2/10, ... of the budget, ``FAKE_CURVES * scale``."""
    folder = args.log_dir / se._env_slug(env) / algo / f"seed{seed}"
    zoo_folder = folder / algo / f"{env.replace('/', '-')}_1"
    zoo_folder.mkdir(parents=True)
    budget = args.budget[env]
    timesteps = np.arange(1, 11) * (budget // 10)
    means = (FAKE_CURVES[algo] + 0.1 * seed) * scale
    results = means[:, None] + np.array([-0.5, 0.5])[None, :]  # two episodes per evaluation
    np.savez(zoo_folder / "evaluations.npz", timesteps=timesteps, results=results, ep_lengths=np.ones_like(results))
    info = dict(env=env, algo=algo, seed=seed, budget=budget, wall_time_s=60.0 * (seed + 1), returncode=0)
    info["command"] = f"python -m rl_zoo3.train --algo {algo} --env {env} --seed {seed} --num-threads 1"
    if jobs is not None:
        info["jobs"] = jobs
    (folder / "run.json").write_text(json.dumps(info))


def test_report_from_fake_evaluations(tmp_path):
    args = _args(
        tmp_path,
        *("--envs", BREAKOUT, "--algos", "iris", "ppo", "dqn", "--seeds", "0", "1", "2", "--budget", "50000"),
        *("--eval-freq", "5000", "--eval-episodes", "2", "--bootstrap-reps", "50", "--report-only"),
    )
    for algo in FAKE_CURVES:
        for seed in (0, 1, 2):
            _write_fake_run(args, algo, seed)
    argv = [
        *("--envs", BREAKOUT, "--algos", "iris", "ppo", "dqn", "--seeds", "0", "1", "2", "--budget", "50000"),
        *("--eval-freq", "5000", "--eval-episodes", "2", "--bootstrap-reps", "50", "--report-only"),
        *("--report-at", "10000", "25000", "50000"),
        *("--log-dir", str(args.log_dir), "--out", str(tmp_path / "out")),
    ]
    assert se.main(argv) == 0
    out = tmp_path / "out"
    report = (out / "results.md").read_text()
    assert "| algo | seeds | return @ 10k | return @ 25k | return @ 50k | steps to >= 2 (per seed) |" in report
    # iris at 50k: 6.0, 6.1, 6.2 -> mean 6.1; at 10k (second evaluation): 1.11, 1.21, 1.31 -> 1.2.
    iris_row = next(line for line in report.splitlines() if line.startswith("| iris | 3 |"))
    assert "6.1 ± 0.1 [6.0, 6.2]" in iris_row and "| 1.2 ± 0.1 [1.1, 1.3] |" in iris_row
    assert "1 min [1.0, 3.0]" not in iris_row and "2.0 min [1.0, 3.0]" in iris_row
    assert "(2 episodes, deterministic)" in report
    # rliable: reference None -> best mean return of any run (iris seed 2 at 50k: 6.2).
    assert "MinAtar/Breakout-v1: random 0.38, reference 6.2 = best mean evaluation return" in report
    assert "| iris | 3 x 1 |" in report
    assert (out / "learning_curves_MinAtar_Breakout-v1.png").stat().st_size > 1000
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 * 10 and {row["algo"] for row in rows} == {"iris", "ppo", "dqn"}
    with open(out / "summary.csv") as f:
        summary = {row["algo"]: row for row in csv.DictReader(f)}
    assert float(summary["ppo"]["mean_return_at_50000"]) == pytest.approx(3.1)
    assert summary["dqn"]["reached"] == "0" and summary["iris"]["reached"] == "3"
    copied = json.loads((out / "run_info" / "MinAtar_Breakout-v1" / "dqn" / "seed1.json").read_text())
    assert copied["wall_time_s"] == 120.0


def test_cross_env_report_aggregates_both_envs(tmp_path):
    argv = [
        *("--envs", BREAKOUT, "CartPole-v1", "--algos", "iris", "ppo", "--seeds", "0", "1"),
        *("--budget", f"{BREAKOUT}=50000", "CartPole-v1=10000", "--eval-freq", f"{BREAKOUT}=5000", "CartPole-v1=1000"),
        *("--eval-episodes", "2", "--bootstrap-reps", "50", "--report-only"),
        *("--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out")),
    ]
    args = se.parse_args(argv)
    for algo in ("iris", "ppo"):
        for seed in (0, 1):
            _write_fake_run(args, algo, seed, jobs=2)
            _write_fake_run(args, algo, seed, env="CartPole-v1", scale=80.0)
    assert se.main(argv) == 0
    report = (tmp_path / "out" / "results.md").read_text()
    assert "### CartPole-v1" in report and f"### {BREAKOUT}" in report
    # Default report points per env on its own evaluation grid: a quarter, half and all of its budget.
    assert "| algo | seeds | return @ 2k | return @ 5k | return @ 10k |" in report
    assert "| algo | seeds | return @ 10k | return @ 25k | return @ 50k |" in report
    assert f"every 5000 env steps ({BREAKOUT}), 1000 env steps (CartPole-v1)" in report
    # rliable over 2 seeds x 2 envs per algorithm; both normalisations listed.
    assert "| iris | 2 x 2 |" in report and "| ppo | 2 x 2 |" in report
    assert "CartPole-v1: random 22" in report and f"{BREAKOUT}: random 0.38" in report
    # How the runs were made comes from their run.json files, not from this report-only invocation.
    concurrency = (
        "`--num-threads 1` per run; runs in parallel (`--jobs`): 2; 4 run(s) trained before `--jobs` was recorded"
    )
    assert concurrency in report
    assert (tmp_path / "out" / "learning_curves_CartPole-v1.png").is_file()


def test_missing_runs_and_single_run_are_reported(tmp_path):
    argv = [
        *("--envs", BREAKOUT, "--algos", "iris", "ppo", "--seeds", "0", "--budget", "50000", "--report-only"),
        *("--log-dir", str(tmp_path / "logs"), "--out", str(tmp_path / "out"), "--eval-freq", "5000"),
    ]
    args = se.parse_args(argv)
    _write_fake_run(args, "iris", 0)
    assert se.main(argv) == 1  # ppo has no evaluations
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| ppo | 0 |" in report and "ppo seed 0: no evaluations.npz" in report
    assert "fewer than 2 runs per algorithm" in report


def test_normalization_bounds_and_run_helpers(tmp_path):
    args = _args(tmp_path, "--envs", BREAKOUT, "--budget", "50000")
    run = _run(args, BREAKOUT, "iris", 0)
    assert se.normalization_bounds(BREAKOUT, [run]) is None  # no evaluations yet
    run.timesteps = np.array([5000, 10000])
    run.returns = np.array([[0.0, 1.0], [3.0, 5.0]])
    assert se.normalization_bounds(BREAKOUT, [run]) == (0.38, 4.0)
    assert se.normalization_bounds("CartPole-v1", []) == (22.0, 500.0)
    assert se.normalization_bounds("Pong-v5", [run]) is None
    assert np.isnan(run.value_at(4999)) and run.value_at(9999) == 0.5 and run.value_at(50000) == 4.0
    assert run.steps_to(2.0) == 10000 and run.steps_to(5.0) is None
    assert se.gym_packages_for("CartPole-v1") == []
    assert se.gym_packages_for(BREAKOUT, ["x"]) == ["x", "sb3_iris.minatar"]


def test_random_policy_return_is_low_on_breakout():
    mean, std = se.random_policy_return(BREAKOUT, episodes=200)
    assert 0.2 < mean < 0.6 and std > 0


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_minatar_benchmark_end_to_end(tmp_path):
    """One seed of IRIS, PPO and DQN for 1000 MinAtar steps through RL Zoo, then the report."""
    out = tmp_path / "out"
    command = [
        sys.executable, str(SCRIPT),
        "--envs", BREAKOUT, "--algos", "iris", "ppo", "dqn", "--seeds", "0",
        "--budget", "1000", "--eval-freq", "500", "--eval-episodes", "2", "--bootstrap-reps", "50",
        "--zoo-arg", "dqn:-params learning_starts:100",
        "--log-dir", str(tmp_path / "logs"), "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    report = (out / "results.md").read_text()
    for algo in ("iris", "ppo", "dqn"):
        assert f"| {algo} | 1 |" in report
        assert (out / "run_info" / "MinAtar_Breakout-v1" / algo / "seed0.json").is_file()
    assert "--gym-packages sb3_iris.minatar" in report
    assert "-conf hyperparams/baselines/ppo.yml" in report and "-conf hyperparams/baselines/dqn.yml" in report
    assert (out / "learning_curves_MinAtar_Breakout-v1.png").stat().st_size > 1000
    with open(out / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(row["timesteps"]) for row in rows if row["algo"] == "iris"} == {500, 1000}
