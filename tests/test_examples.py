"""The examples run as written (slow: each trains for real, with tiny settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    env = dict(os.environ)
    # One thread per process: on a small shared machine, oversubscribed threads slow everything down many times.
    env.update(PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    command = [sys.executable, str(EXAMPLES / script), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)}\nexit status {result.returncode}\n{output[-6000:]}"
    return output


def last_json_line(output: str) -> dict:
    """The last line of ``output`` that is a JSON object (progress bars on stderr may follow the result line)."""
    import json

    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the output:\n{output[-3000:]}")


@pytest.mark.slow
def test_atari_example_tiny(tmp_path):
    pytest.importorskip("ale_py")
    out = run_example("atari.py", "PongNoFrameskip-v4", "--tiny", "--timesteps", "100", cwd=tmp_path)
    assert (tmp_path / "iris_PongNoFrameskip-v4.zip").is_file()
    assert "trained for 100 steps" in out
    assert "evaluation on PongNoFrameskip-v4: 1 games" in out


@pytest.mark.slow
def test_side_by_side_example_tiny(tmp_path):
    pytest.importorskip("rl_zoo3")
    pytest.importorskip("seaborn")
    pytest.importorskip("pytablewriter")
    iris_params = [
        "n_steps_per_epoch:50",
        "tokenizer_updates_per_epoch:2",
        "world_model_updates_per_epoch:2",
        "actor_critic_updates_per_epoch:2",
        "tokenizer_start_after_epochs:0",
        "world_model_start_after_epochs:0",
        "actor_critic_start_after_epochs:0",
        "final_training_epochs:0",
    ]
    logs = tmp_path / "logs"
    args = ["--budget", "300", "--eval-freq", "100", "--eval-episodes", "2", "--seeds", "0", "1"]
    out = run_example("side_by_side.py", *args, "--log-folder", str(logs), "--iris-params", *iris_params, cwd=tmp_path)
    for algo in ("iris", "ppo", "dqn"):
        for run in (1, 2):
            assert (logs / algo / f"CartPole-v1_{run}" / "evaluations.npz").is_file(), (algo, run)
    assert "|CartPole-v1 |" in out  # the Markdown table of rl_zoo3.plots.all_plots
    plots = logs / "plots"
    expected = {
        "eval_Results_CartPole-v1.png",
        "from_file_Results_CartPole-v1.png",
        "from_file_Sensitivity_plot.png",
        *(f"train_{algo}_Training_Episodic_Reward.png" for algo in ("iris", "ppo", "dqn")),
    }
    assert expected <= {path.name for path in plots.glob("*.png")}
    assert all(path.stat().st_size > 1000 for path in plots.glob("*.png"))
    assert (plots / "results.pkl").is_file()

    # --plot-only on the same folder redraws without training.
    out = run_example("side_by_side.py", "--plot-only", "--log-folder", str(logs), "--seeds", "0", cwd=tmp_path)
    assert "rl_zoo3.train" not in out and "needs at least two seeds" in out


def test_quickstart_runs(tmp_path):
    """The README's main job, shortened: it trains, evaluates before and after, and saves the model."""

    out = run_example("quickstart.py", "--timesteps", "200", "--eval-episodes", "2", "--save", "m", cwd=tmp_path)
    result = last_json_line(out)
    assert result["timesteps"] == 200 and 0 <= result["before"] <= 20 and 0 <= result["after"] <= 20
    assert (tmp_path / "m.zip").is_file()


@pytest.mark.slow
def test_quickstart_learns(tmp_path):
    """The full quickstart: the evaluation return rises from random (~10) to near perfect (20)."""

    out = run_example("quickstart.py", "--save", "m", cwd=tmp_path, timeout=1200)
    result = last_json_line(out)
    assert result["after"] >= 18, result
