"""The real RL Zoo command lines (``python -m rl_zoo3.train / enjoy``) with ``--algo iris``, in subprocesses.

Complements ``tests/test_zoo_hook.py`` (whose slow test runs a CartPole train / enjoy / ``-i`` / ``-optimize``
round trip with the packaged config): here PongNoFrameskip-v4 with the packaged ``atari`` entry (IRIS Atari
wrapper, evaluation env, ``--save-replay-buffer`` and ``-i`` restoring the replay buffer), a ``--conf-file``
with ``-params`` on top for CartPole-v1, ``-optimize`` with two random-sampler trials and its report, and the
Atari evaluation settings of the envs RL Zoo builds for evaluation.

Every run is tiny (a few tens of env steps, one update per phase, networks of a few thousand parameters) and
uses one torch thread (``--num-threads 1``): the test machine has 2 shared cores.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import sb3_iris
from sb3_iris import zoo

pytest.importorskip("rl_zoo3")
pytestmark = pytest.mark.skipif(not hasattr(sb3_iris, "IRIS"), reason="sb3_iris.IRIS does not exist yet")

PONG = "PongNoFrameskip-v4"
CARTPOLE = "CartPole-v1"

# Shared by every phase: all phases train from the first epoch, one update each, short sequences.
TINY_SCHEDULE = [
    "tokenizer_updates_per_epoch:1",
    "world_model_updates_per_epoch:1",
    "actor_critic_updates_per_epoch:1",
    "tokenizer_start_after_epochs:0",
    "world_model_start_after_epochs:0",
    "actor_critic_start_after_epochs:0",
    "sequence_length:4",
    "burn_in:2",
    "imagination_horizon:3",
    "final_training_epochs:0",
]
# -params values are Python expressions (rl_zoo3 StoreDict evaluates what follows the first ':').
TINY_PONG = [
    "n_steps_per_epoch:20",
    "tokenizer_batch_size:4",
    "world_model_batch_size:2",
    "actor_critic_batch_size:2",
    *TINY_SCHEDULE,
    "policy_kwargs:dict("
    "tokenizer_kwargs=dict(base_channels=8, channel_multipliers=(1, 1, 1, 1, 1), encoder_res_blocks=1, "
    "attention_resolutions=(), z_channels=16, embed_dim=16, vocab_size=32), "
    "world_model_kwargs=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=4), "
    "actor_critic_kwargs=dict(conv_channels=(8, 8, 8, 8), lstm_dim=32))",
]
TINY_MLP_POLICY_KWARGS = (
    "dict(tokenizer_kwargs=dict(tokens_per_obs=4, hidden_sizes=(32,), embed_dim=16, vocab_size=32), "
    "world_model_kwargs=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=4), "
    "actor_critic_kwargs=dict(mlp_hidden_sizes=(32,), lstm_dim=32))"
)


def _require_installed_hook() -> None:
    """The CLI tests need the start-up hook, i.e. sb3-iris installed (``pip install --no-deps -e .``)."""
    try:
        importlib.metadata.distribution("sb3-iris")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sb3-iris is not installed (pip install --no-deps -e .): `--algo iris` needs its start-up hook")


def zoo_cli(module: str, *args: str, cwd: Path, timeout: float = 600) -> str:
    """Run ``python -m <module> <args>`` and return stdout + stderr; fail with the tail of both on error."""
    _require_installed_hook()
    env = dict(os.environ)
    env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
    env.update(PYTHONUNBUFFERED="1", SDL_VIDEODRIVER="dummy", MPLBACKEND="Agg")
    command = [sys.executable, "-m", module, *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)}\nexit status {result.returncode}\n{output[-6000:]}"
    return output


def logged_values(output: str, key: str) -> list[float]:
    """Values of ``key`` (e.g. ``"replay_steps"``) in SB3's stdout tables, in order."""
    return [float(value) for value in re.findall(rf"\|\s+{re.escape(key)}\s+\|\s+(\S+)\s+\|", output)]


def read_saved_yaml(path: Path) -> dict:
    # RL Zoo writes OrderedDicts (and tuples): its own files need the unsafe loader, as rl_zoo3 uses.
    with open(path) as file:
        return dict(yaml.load(file, Loader=yaml.UnsafeLoader))


# --------------------------------------------------------------------------------------------
# PongNoFrameskip-v4: the packaged `atari` entry, train -> enjoy -> continue with the replay buffer
# --------------------------------------------------------------------------------------------
def test_pong_train_enjoy_and_continue_with_replay_buffer(tmp_path):
    logs = tmp_path / "logs"
    common = ["--algo", "iris", "--env", PONG, "-f", str(logs), "--num-threads", "1"]
    # Evaluation every 40 steps in the evaluation env; the ALE frame limit keeps its episode short.
    train = [*common, "--seed", "0", "--save-replay-buffer", "--eval-episodes", "1"]
    train += ["--eval-env-kwargs", "max_num_frames_per_episode:200"]
    out = zoo_cli("rl_zoo3.train", *train, "-n", "60", "--eval-freq", "40", "-params", *TINY_PONG, cwd=tmp_path)

    assert f"Loading hyperparameters from: {zoo.DEFAULT_CONFIG}" in out
    run_dir = logs / "iris" / f"{PONG}_1"
    model_path = run_dir / f"{PONG}.zip"
    assert model_path.is_file() and (run_dir / "replay_buffer.pkl").is_file()
    assert logged_values(out, "replay_steps")[-1] == 60
    config = read_saved_yaml(run_dir / PONG / "config.yml")
    assert config["env_wrapper"] == ["sb3_iris.atari.IrisAtariWrapper"] and config["policy"] == "CnnPolicy"
    assert config["n_steps_per_epoch"] == 20  # -params on top of the packaged atari entry
    evaluations = np.load(run_dir / "evaluations.npz")
    assert list(evaluations["timesteps"]) == [40]
    assert evaluations["ep_lengths"].tolist() == [[200]]  # Monitor (below the wrapper) counts raw frames
    monitor_lines = (run_dir / "0.monitor.csv").read_text().splitlines()
    assert monitor_lines[1] == "r,l,t"

    out = zoo_cli("rl_zoo3.enjoy", *common, "-n", "50", "--no-render", cwd=tmp_path)
    assert f"Loading {model_path}" in out

    # Continue training: the replay buffer saved next to the model is loaded (60 + 20 steps). RL Zoo passes the
    # yml hyperparameters (all but policy_kwargs) to IRIS.load(): the same -params are needed again.
    continue_training = [*train, "-n", "20", "--eval-freq", "-1", "-i", str(model_path), "-params", *TINY_PONG]
    out = zoo_cli("rl_zoo3.train", *continue_training, cwd=tmp_path)
    assert "Loading pretrained agent" in out and "Loading replay buffer" in out
    assert logged_values(out, "replay_steps")[-1] == 80
    assert (logs / "iris" / f"{PONG}_2" / f"{PONG}.zip").is_file()


# --------------------------------------------------------------------------------------------
# CartPole-v1: --conf-file wins over the packaged config, -params win over --conf-file
# --------------------------------------------------------------------------------------------
def test_cartpole_conf_file_params_precedence_and_replay_buffer(tmp_path):
    conf = {
        CARTPOLE: {
            "n_timesteps": 1000,
            "policy": "MlpPolicy",
            "n_steps_per_epoch": 30,
            "tokenizer_batch_size": 8,
            "world_model_batch_size": 4,
            "actor_critic_batch_size": 4,
            "ent_coef": 0.0123,  # distinctive: the packaged CartPole entry has 0.001
            "gamma": 0.9,
            "policy_kwargs": TINY_MLP_POLICY_KWARGS,
            **{key: yaml.safe_load(value) for key, value in (item.split(":", 1) for item in TINY_SCHEDULE)},
        }
    }
    conf_file = tmp_path / "my_iris.yml"
    conf_file.write_text(yaml.safe_dump(conf))
    logs = tmp_path / "logs"
    common = ["--algo", "iris", "--env", CARTPOLE, "-f", str(logs), "--num-threads", "1"]
    train = [*common, "--conf-file", str(conf_file), "--seed", "1", "--eval-freq", "-1", "--save-replay-buffer"]
    out = zoo_cli("rl_zoo3.train", *train, "-n", "60", "-params", "gamma:0.97", cwd=tmp_path)

    assert f"Loading hyperparameters from: {conf_file}" in out
    assert str(zoo.DEFAULT_CONFIG) not in out
    run_dir = logs / "iris" / f"{CARTPOLE}_1"
    config = read_saved_yaml(run_dir / CARTPOLE / "config.yml")
    assert config["ent_coef"] == 0.0123 and config["n_steps_per_epoch"] == 30 and config["gamma"] == 0.97
    assert read_saved_yaml(run_dir / CARTPOLE / "args.yml")["conf_file"] == str(conf_file)
    model = sb3_iris.IRIS.load(run_dir / f"{CARTPOLE}.zip", device="cpu")
    assert model.ent_coef == 0.0123 and model.gamma == 0.97 and model.n_steps_per_epoch == 30
    assert logged_values(out, "replay_steps")[-1] == 60

    out = zoo_cli("rl_zoo3.enjoy", *common, "-n", "50", "--no-render", cwd=tmp_path)
    assert f"Loading {run_dir / CARTPOLE}.zip" in out

    out = zoo_cli("rl_zoo3.train", *train, "-n", "30", "-i", str(run_dir / f"{CARTPOLE}.zip"), cwd=tmp_path)
    assert "Loading replay buffer" in out
    assert logged_values(out, "replay_steps")[-1] == 90


# --------------------------------------------------------------------------------------------
# -optimize: two random-sampler trials, no pruner, the report
# --------------------------------------------------------------------------------------------
# -optimize trials of CartPole-v1 (-n 100): the sampler sets the batch sizes and updates per epoch (25..200), so the
# world model and actor-critic phases start after the end of the run and a trial costs seconds.
TINY_OPTIMIZE_PARAMS = [
    f"policy_kwargs:{TINY_MLP_POLICY_KWARGS}",
    "n_steps_per_epoch:50",
    "sequence_length:4",
    "burn_in:2",
    "tokenizer_start_after_epochs:0",
    "world_model_start_after_epochs:9",
    "actor_critic_start_after_epochs:9",
    "final_training_epochs:0",
]


def test_optimize_two_random_trials_writes_report(tmp_path):
    logs = tmp_path / "logs"
    params = TINY_OPTIMIZE_PARAMS
    optimize = ["-optimize", "--n-trials", "2", "--n-jobs", "1", "--sampler", "random", "--pruner", "none"]
    optimize += ["--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots"]
    out = zoo_cli(
        "rl_zoo3.train",
        *["--algo", "iris", "--env", CARTPOLE, "-f", str(logs), "--num-threads", "1", "--seed", "0"],
        *optimize,
        *["-n", "100", "-params", *params],
        cwd=tmp_path,
    )
    assert "Sampler: random - Pruner: none" in out
    assert re.search(r"Number of finished trials:\s+2", out)
    reports = list((logs / "iris").glob(f"report_{CARTPOLE}_2-trials-100-random-none_*.csv"))
    assert len(reports) == 1
    pandas = pytest.importorskip("pandas")
    report = pandas.read_csv(reports[0])
    assert len(report) == 2 and set(report["state"]) == {"COMPLETE"}
    assert {"params_learning_rate", "params_imagination_horizon"} <= set(report.columns)


# --------------------------------------------------------------------------------------------
# The evaluation envs RL Zoo builds for an Atari run use the IRIS evaluation settings
# --------------------------------------------------------------------------------------------
def _iris_wrapper(vec_env):
    from sb3_iris.atari import IrisAtariWrapper

    env = vec_env.venv.envs[0] if hasattr(vec_env, "venv") else vec_env.envs[0]
    while not isinstance(env, IrisAtariWrapper):
        env = env.env
    return env


def _settings(wrapper) -> tuple:
    return wrapper.training, wrapper.noop_max, wrapper.terminal_on_life_loss, wrapper.max_episode_frames


TRAINING = (True, 30, True, 20_000)
EVALUATION = (False, 1, False, 108_000)


@pytest.mark.parametrize("algo", ["iris", "ppo"])
def test_experiment_manager_eval_env_uses_evaluation_settings(tmp_path, algo):
    pytest.importorskip("ale_py")
    exp_manager = pytest.importorskip("rl_zoo3.exp_manager")
    zoo.register()
    conf = None
    if algo != "iris":  # IRIS preprocessing for a baseline: the same evaluation settings
        conf = tmp_path / "ppo.yml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "atari": {
                        "policy": "CnnPolicy",
                        "n_timesteps": 100,
                        "env_wrapper": [{"sb3_iris.atari.IrisAtariWrapper": {"max_episode_frames": 5000}}],
                    }
                }
            )
        )
    manager = exp_manager.ExperimentManager(
        argparse.Namespace(), algo, PONG, str(tmp_path / "logs"), config=None if conf is None else str(conf)
    )
    hyperparams, _ = manager.read_hyperparameters()
    _, manager.env_wrapper, _, _ = manager._preprocess_hyperparams(hyperparams)
    training_env = manager.create_envs(1)
    eval_env = manager.create_envs(1, eval_env=True)
    trial_env = manager.create_envs(1, no_log=True)  # -optimize's training env
    try:
        if algo == "iris":
            assert _settings(_iris_wrapper(training_env)) == TRAINING
            assert _settings(_iris_wrapper(eval_env)) == EVALUATION
            assert _settings(_iris_wrapper(trial_env)) == TRAINING
        else:  # an explicit wrapper argument is kept in the evaluation env
            assert _settings(_iris_wrapper(training_env)) == (True, 30, True, 5000)
            assert _settings(_iris_wrapper(eval_env)) == (False, 1, False, 5000)
    finally:
        for env in (training_env, eval_env, trial_env):
            env.close()


def test_create_test_env_uses_evaluation_settings():
    pytest.importorskip("ale_py")
    utils = pytest.importorskip("rl_zoo3.utils")
    zoo.register()
    import rl_zoo3

    assert rl_zoo3.create_test_env is utils.create_test_env  # what enjoy / record_video import
    hyperparams = {"env_wrapper": ["sb3_iris.atari.IrisAtariWrapper"]}
    env = utils.create_test_env(PONG, n_envs=1, should_render=False, hyperparams=hyperparams)
    try:
        assert _settings(_iris_wrapper(env)) == EVALUATION
    finally:
        env.close()
    assert "env_wrapper" not in hyperparams  # consumed, as rl_zoo3 does


def test_eval_env_wrapper_spec():
    iris = "sb3_iris.atari.IrisAtariWrapper"
    other = "rl_zoo3.wrappers.TimeFeatureWrapper"
    assert zoo.eval_env_wrapper_spec(None) is None
    spec = [other]
    assert zoo.eval_env_wrapper_spec(spec) is spec
    assert zoo.eval_env_wrapper_spec(iris) == [{iris: {"training": False}}]
    spec = [other, {iris: {"noop_max": 5, "training": True}}]
    assert zoo.eval_env_wrapper_spec(spec) == [other, {iris: {"noop_max": 5, "training": False}}]
    assert spec[1][iris]["training"] is True  # not modified
    from sb3_iris.atari import IrisAtariEvalWrapper, IrisAtariWrapper

    assert zoo.eval_env_wrapper_spec([IrisAtariWrapper]) == [{IrisAtariWrapper: {"training": False}}]
    assert zoo.eval_env_wrapper_spec("sb3_iris.atari.IrisAtariEvalWrapper") == [
        {"sb3_iris.atari.IrisAtariEvalWrapper": {"training": False}}
    ]
    assert IrisAtariEvalWrapper is not None
    assert zoo.eval_env_wrapper_spec("no_such_module.Wrapper") == "no_such_module.Wrapper"


def test_fallback_register_patches_the_create_test_env_that_enjoy_imports(tmp_path):
    """Without the start-up hook, register() runs after rl_zoo3/__init__ re-exported create_test_env."""
    code = (
        "from sb3_iris import zoo; zoo.register()\n"
        "import rl_zoo3, rl_zoo3.enjoy, rl_zoo3.utils\n"
        "patched = rl_zoo3.utils.create_test_env\n"
        "assert getattr(patched, '_sb3_iris_patched', False)\n"
        "assert rl_zoo3.create_test_env is patched and rl_zoo3.enjoy.create_test_env is patched\n"
    )
    env = dict(os.environ, SB3_IRIS_NO_ZOO_HOOK="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
