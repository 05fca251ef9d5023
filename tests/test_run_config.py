"""evaluate and play rebuild the training env: from an RL Zoo run folder, or from --env-wrapper / --env-kwargs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from sb3_iris.evaluate import make_env
from sb3_iris.run_config import EnvSettings, find_run_settings, parse_env_kwargs, parse_wrapper_specs

BREAKOUT = "MinAtar/Breakout-v1"
# The MinAtar entry of hyperparams/iris.yml (its env_wrapper is what this file is about), shrunk to seconds.
TINY_MINATAR = [
    "n_envs:1",
    "n_steps_per_epoch:20",
    "tokenizer_updates_per_epoch:1",
    "world_model_updates_per_epoch:1",
    "actor_critic_updates_per_epoch:1",
    "tokenizer_batch_size:4",
    "world_model_batch_size:2",
    "actor_critic_batch_size:2",
    "tokenizer_start_after_epochs:0",
    "world_model_start_after_epochs:0",
    "actor_critic_start_after_epochs:0",
    "final_training_epochs:0",
]


def run_module(module: str, *args: str, cwd: Path, expect: int = 0) -> str:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
    command = [sys.executable, "-m", module, *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == expect, f"{' '.join(command)}\nexit status {result.returncode}\n{output[-6000:]}"
    return output


@pytest.fixture(scope="module")
def minatar_run(tmp_path_factory) -> Path:
    """A tiny IRIS model trained by the RL Zoo CLI on the MinAtar entry (env_wrapper MinAtarImageWrapper)."""
    pytest.importorskip("rl_zoo3")
    pytest.importorskip("minatar")
    cwd = tmp_path_factory.mktemp("zoo")
    train = ["--algo", "iris", "--env", BREAKOUT, "--gym-packages", "sb3_iris.minatar", "-n", "40"]
    run_module("rl_zoo3.train", *train, "--num-threads", "1", "--device", "cpu", "-f", "logs", "-params",
               *TINY_MINATAR, cwd=cwd)  # fmt: skip
    run_dir = cwd / "logs" / "iris" / "MinAtar-Breakout-v1_1"
    assert (run_dir / "MinAtar-Breakout-v1.zip").is_file()
    return run_dir


def test_run_folder_settings_are_the_training_ones(minatar_run):
    settings = find_run_settings(str(minatar_run / "MinAtar-Breakout-v1.zip"), BREAKOUT)
    assert settings is not None and settings.gym_packages == ["sb3_iris.minatar"]
    assert [spec if isinstance(spec, str) else next(iter(spec)) for spec in settings.wrappers] == [
        "sb3_iris.minatar.MinAtarImageWrapper"
    ]
    env = make_env(BREAKOUT, settings=settings)
    assert env.observation_space.dtype == np.uint8 and env.observation_space.shape[-1] == 3  # an RGB image


def test_evaluate_and_play_a_zoo_model_trained_with_an_env_wrapper(minatar_run, tmp_path):
    model = str(minatar_run / "MinAtar-Breakout-v1.zip")
    out = run_module("sb3_iris.evaluate", model, "--env", BREAKOUT, "--episodes", "1", "--max-episode-steps", "30",
                     "--seed", "0", "--json", cwd=tmp_path)  # fmt: skip
    assert "env settings from" in out and "MinAtarImageWrapper" in out
    summary = next(line for line in out.splitlines() if line.startswith("{"))  # stdout's JSON (stderr follows it)
    assert json.loads(summary)["episodes"] == 1
    for mode in ("real", "dream"):
        video = tmp_path / f"{mode}.gif"
        run_module("sb3_iris.play", model, "--env", BREAKOUT, "--mode", mode, "--steps", "4", "--seed", "0",
                   "--output", str(video), cwd=tmp_path)  # fmt: skip
        assert video.is_file() and video.stat().st_size > 0, mode


def test_outside_the_run_folder_the_error_hints_and_env_wrapper_fixes_it(minatar_run, tmp_path):
    model = tmp_path / "breakout.zip"
    shutil.copy(minatar_run / "MinAtar-Breakout-v1.zip", model)
    common = [str(model), "--env", BREAKOUT, "--env-module", "sb3_iris.minatar", "--episodes", "1"]
    out = run_module("sb3_iris.evaluate", *common, "--max-episode-steps", "10", cwd=tmp_path, expect=2)
    assert "the model expects" in out and "--env-wrapper" in out
    # The wrapper as the run folder saved it (with its kwargs), on the command line as a YAML mapping.
    settings = find_run_settings(str(minatar_run / "MinAtar-Breakout-v1.zip"), BREAKOUT)
    assert settings is not None
    spec = json.dumps(settings.wrappers[0])
    out = run_module("sb3_iris.evaluate", *common, "--max-episode-steps", "10", "--env-wrapper", spec, cwd=tmp_path)
    assert "env settings from the command line" in out and "mean return" in out


class NoRenderModeEnv(gym.Env):
    """A constructor without ``render_mode`` (like the quickstart's env): gym.make(render_mode=None) rejects it."""

    def __init__(self, size: int = 3) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape, dtype=np.float32), 0.0, True, False, {}


def test_make_env_passes_no_render_mode_and_the_env_kwargs():
    env_id = "NoRenderModeTest-v0"
    if env_id not in gym.envs.registry:
        gym.register(env_id, entry_point=NoRenderModeEnv)
    assert make_env(env_id).observation_space.shape == (3,)
    env = make_env(env_id, settings=EnvSettings(env_kwargs={"size": 5}))
    assert env.observation_space.shape == (5,)


def test_parsers_name_the_bad_value():
    assert parse_env_kwargs(["size:5", "name:abc", "scale:(1, 2)"]) == {"size": 5, "name": "abc", "scale": (1, 2)}
    with pytest.raises(ValueError, match="--env-kwargs 'size5'"):
        parse_env_kwargs(["size5"])
    assert parse_wrapper_specs("a.B") == ["a.B"]
    with pytest.raises(ValueError, match="one key"):
        parse_wrapper_specs([{"a.B": {}, "c.D": {}}])
