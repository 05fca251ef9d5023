"""RL Zoo registration: the start-up hook, the explicit fallback, the sampler and the yml files."""

import argparse
import importlib.metadata
import inspect
import os
import site
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

import sb3_iris
from sb3_iris import zoo

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY_PREFIXES = ("torch", "stable_baselines3", "rl_zoo3", "sb3_iris")
ZOO_SCRIPTS = ("train", "enjoy", "record_video", "record_training", "push_to_hub", "load_from_hub")
HAS_IRIS = hasattr(sb3_iris, "IRIS")


def run_python(code, cwd, disable_hook=False, timeout=300, args=("-c",)):
    env = dict(os.environ)
    env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
    env.pop("PYTHONPATH", None)
    if disable_hook:
        env["SB3_IRIS_NO_ZOO_HOOK"] = "1"
    result = subprocess.run(
        [sys.executable, *args, code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def installed_pth():
    """Path of the installed sb3_iris_zoo.pth; skip if sb3-iris is not installed at all."""
    try:
        importlib.metadata.distribution("sb3-iris")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("sb3-iris is not installed (pip install --no-deps -e .)")
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    for directory in site_dirs:
        if (Path(directory) / "sb3_iris_zoo.pth").is_file():
            return Path(directory) / "sb3_iris_zoo.pth"
    pytest.fail(
        f"sb3-iris is installed but sb3_iris_zoo.pth is not in {site_dirs}: reinstall (pip install --no-deps -e .)"
    )


# --------------------------------------------------------------------------------------------
# The start-up hook
# --------------------------------------------------------------------------------------------
def test_pth_file_is_one_import_line():
    assert (REPO_ROOT / "sb3_iris_zoo.pth").read_text() == "import _sb3_iris_zoo_hook\n"


def test_hook_is_stdlib_only_and_imports_nothing_heavy():
    # `python -S`: no .pth processing, so the hook is imported here, from the repo root (the cwd).
    code = (
        "import sys; before = set(sys.modules); import _sb3_iris_zoo_hook; "
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY_PREFIXES!r}))); "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))"
    )
    heavy, non_stdlib = run_python(code, cwd=REPO_ROOT, args=("-S", "-c")).stdout.splitlines()
    assert heavy == "[]"
    assert non_stdlib == "['_sb3_iris_zoo_hook']"


def test_installed_hook_is_active_and_imports_nothing_heavy(tmp_path):
    installed_pth()
    code = (
        "import sys; "
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY_PREFIXES!r}))); "
        "print('_sb3_iris_zoo_hook' in sys.modules)"
    )
    heavy, hook_loaded = run_python(code, cwd=tmp_path).stdout.splitlines()
    assert heavy == "[]"
    assert hook_loaded == "True"


def test_installed_hook_registers_iris(tmp_path):
    installed_pth()
    code = (
        "import sys; assert 'sb3_iris' not in sys.modules; "
        "import rl_zoo3; import rl_zoo3.utils; print('iris' in rl_zoo3.ALGOS); "
        "import rl_zoo3.hyperparams_opt as h; print(h.HYPERPARAMS_SAMPLER['iris'].__name__); "
        "import rl_zoo3.exp_manager; "
        "import _sb3_iris_zoo_hook as hook; print(hook._finder in sys.meta_path)"
    )
    in_algos, sampler, finder_left = run_python(code, cwd=tmp_path).stdout.splitlines()[-3:]
    assert in_algos == "True"
    assert sampler == "sample_iris_params"
    assert finder_left == "False"  # the finder removes itself once the three modules are patched


def test_hook_defers_sb3_iris_import_until_rl_zoo3_loads():
    code = (
        "import sys, _sb3_iris_zoo_hook; "
        "print('sb3_iris' in sys.modules); "
        "import rl_zoo3.utils; "
        "print('sb3_iris' in sys.modules, 'sb3_iris.zoo' in sys.modules); "
        "print(rl_zoo3.utils.ALGOS.get('iris') is getattr(sys.modules['sb3_iris'], 'IRIS', 'missing'))"
    )
    lines = run_python(code, cwd=REPO_ROOT).stdout.splitlines()[-3:]
    assert lines[0] == "False"
    assert lines[1] == "True True"
    if HAS_IRIS:
        assert lines[2] == "True"


def test_hook_degrades_to_warning_when_sb3_iris_cannot_be_imported():
    # sys.modules[name] = None makes any import of sb3_iris fail: rl_zoo3 must still import.
    code = (
        "import sys, warnings; warnings.simplefilter('always'); import _sb3_iris_zoo_hook; "
        "sys.modules['sb3_iris'] = None; "
        "import rl_zoo3.utils; print('iris' in rl_zoo3.utils.ALGOS)"
    )
    result = run_python(code, cwd=REPO_ROOT, disable_hook=False)
    assert result.stdout.splitlines()[-1] == "False"
    assert "RuntimeWarning" in result.stderr and "could not import sb3_iris.zoo" in result.stderr


def test_disabled_hook_and_explicit_fallback():
    code = (
        "import sys, _sb3_iris_zoo_hook, rl_zoo3.utils; print('iris' in rl_zoo3.utils.ALGOS); "
        "from sb3_iris import zoo; print(zoo.register(), 'iris' in rl_zoo3.utils.ALGOS)"
    )
    lines = run_python(code, cwd=REPO_ROOT, disable_hook=True).stdout.splitlines()[-2:]
    assert lines[0] == "False"
    if HAS_IRIS:
        assert lines[1] == "True True"


def test_all_zoo_scripts_accept_algo_iris_through_the_fallback():
    # `--help` lists the --algo choices; the hook is disabled to test `python -m sb3_iris.zoo` alone.
    code = (
        "import contextlib, io, sys\n"
        "from sb3_iris import zoo\n"
        f"for script in {ZOO_SCRIPTS!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            zoo.main([script, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "        except ImportError as exc:\n"
        "            out.write(f'unavailable {exc!r}')\n"
        "    help_text = ' '.join(out.getvalue().split())\n"
        "    if help_text.startswith('unavailable'):\n"
        "        print(script, help_text)\n"
        "    else:\n"
        "        print(script, \"'iris'\" in help_text or ',iris' in help_text or 'iris,' in help_text)\n"
    )
    if not HAS_IRIS:
        pytest.skip("sb3_iris.IRIS does not exist yet")
    lines = run_python(code, cwd=REPO_ROOT, disable_hook=True).stdout.splitlines()[-len(ZOO_SCRIPTS) :]
    results = dict(line.split(" ", 1) for line in lines)
    assert list(results) == list(ZOO_SCRIPTS)
    for script in ("train", "enjoy", "record_video"):
        assert results[script] == "True", script
    # push_to_hub / load_from_hub need a matching huggingface_sb3: an ImportError there is not ours.
    for script, result in results.items():
        assert result == "True" or result.startswith("unavailable ImportError"), (script, result)


def test_main_usage_and_unknown_script(capsys):
    assert zoo.main([]) == 0
    assert "python -m sb3_iris.zoo" in capsys.readouterr().out
    assert zoo.main(["not_a_script"]) == 2
    assert "unknown script 'not_a_script'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Patches degrade to warnings
# --------------------------------------------------------------------------------------------
def test_broken_targets_degrade_to_warnings():
    fake_utils = types.ModuleType("rl_zoo3.utils")  # no ALGOS, no create_test_env
    with pytest.warns(RuntimeWarning) as record:
        assert zoo.patch_module(fake_utils) is False
    messages = " | ".join(str(warning.message) for warning in record)
    assert "could not add 'iris' to rl_zoo3.utils.ALGOS" in messages
    assert "could not patch rl_zoo3.utils.create_test_env" in messages and "training settings" in messages
    fake_utils.ALGOS = {}
    fake_utils.create_test_env = lambda env_id, n_envs=1: None  # a future rl_zoo3 without `hyperparams`
    with pytest.warns(RuntimeWarning, match=r"create_test_env has no parameter 'hyperparams'"):
        assert zoo.patch_module(fake_utils) is False
    assert "iris" in fake_utils.ALGOS

    fake_opt = types.ModuleType("rl_zoo3.hyperparams_opt")
    fake_opt.HYPERPARAMS_SAMPLER = {}  # no HYPERPARAMS_CONVERTER
    with pytest.warns(RuntimeWarning, match=r"HYPERPARAMS_CONVERTER"):
        assert zoo.patch_module(fake_opt) is False
    assert fake_opt.HYPERPARAMS_SAMPLER["iris"] is zoo.sample_iris_params

    fake_manager = types.ModuleType("rl_zoo3.exp_manager")
    with pytest.warns(RuntimeWarning, match=r"ExperimentManager"):
        assert zoo.patch_module(fake_manager) is False

    class ExperimentManager:  # a future rl_zoo3 without the `config` argument, create_envs without `eval_env`
        def __init__(self, args, algo):
            self.algo = algo

        def _preprocess_hyperparams(self, hyperparams):
            return hyperparams

        def create_envs(self, n_envs):
            return n_envs

    fake_manager.ExperimentManager = ExperimentManager
    with pytest.warns(RuntimeWarning) as record:
        assert zoo.patch_module(fake_manager) is False
    messages = " | ".join(str(warning.message) for warning in record)
    assert "no parameter(s) ['config']" in messages
    assert "create_envs has no parameter 'eval_env'" in messages and "training settings" in messages
    assert ExperimentManager.create_envs(None, 3) == 3  # left as it was

    assert zoo.patch_module(types.ModuleType("rl_zoo3.something_else")) is False


def test_hook_after_import_warns_on_broken_target():
    sys.path.insert(0, str(REPO_ROOT))
    try:
        hook = importlib.import_module("_sb3_iris_zoo_hook")
    finally:
        sys.path.remove(str(REPO_ROOT))
    with pytest.warns(RuntimeWarning) as record:
        hook._after_import(types.ModuleType("rl_zoo3.utils"))
    assert any("ALGOS" in str(warning.message) for warning in record)


# --------------------------------------------------------------------------------------------
# Default config, sampler
# --------------------------------------------------------------------------------------------
def test_default_config_is_packaged_and_conf_file_wins(tmp_path):
    exp_manager = pytest.importorskip("rl_zoo3.exp_manager")
    zoo.register()
    log_folder = str(tmp_path / "logs")
    manager = exp_manager.ExperimentManager(argparse.Namespace(), "iris", "CartPole-v1", log_folder)
    assert Path(manager.config) == zoo.DEFAULT_CONFIG
    assert zoo.DEFAULT_CONFIG.is_file()
    custom = str(tmp_path / "my.yml")
    manager = exp_manager.ExperimentManager(argparse.Namespace(), "iris", "CartPole-v1", log_folder, config=custom)
    assert manager.config == custom
    manager = exp_manager.ExperimentManager(argparse.Namespace(), "ppo", "CartPole-v1", log_folder)
    assert Path(manager.config).name == "ppo.yml"
    # Idempotent: registering again does not wrap __init__ twice.
    init = exp_manager.ExperimentManager.__init__
    zoo.register()
    assert exp_manager.ExperimentManager.__init__ is init


def test_sampler_signature_and_values():
    optuna = pytest.importorskip("optuna")
    hyperparams_opt = pytest.importorskip("rl_zoo3.hyperparams_opt")
    zoo_params = list(inspect.signature(zoo.sample_iris_params).parameters)
    assert zoo_params == list(inspect.signature(hyperparams_opt.sample_ppo_params).parameters)

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        params = zoo.sample_iris_params(trial, 0, 1, {})
        assert 1e-5 <= params["learning_rate"] <= 1e-3
        assert 1e-4 <= params["ent_coef"] <= 1e-2
        assert params["imagination_horizon"] in (10, 15, 20)
        assert params["gamma"] in (0.98, 0.99, 0.995, 0.999)
        assert zoo.convert_iris_params(trial.params) == params
        if HAS_IRIS:
            assert set(params) <= set(inspect.signature(sb3_iris.IRIS.__init__).parameters)


# --------------------------------------------------------------------------------------------
# hyperparams/iris.yml
# --------------------------------------------------------------------------------------------
def test_packaged_yml_equals_top_level_yml():
    assert (REPO_ROOT / "sb3_iris" / "hyperparams" / "iris.yml").read_bytes() == (
        REPO_ROOT / "hyperparams" / "iris.yml"
    ).read_bytes()
    assert zoo.DEFAULT_CONFIG == (REPO_ROOT / "sb3_iris" / "hyperparams" / "iris.yml")


def test_yml_entries():
    config = yaml.safe_load((REPO_ROOT / "hyperparams" / "iris.yml").read_text())
    assert {"atari", "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "default"} <= set(config)
    atari = config["atari"]
    assert atari["policy"] == "CnnPolicy" and atari["n_timesteps"] == 100_000 and atari["n_envs"] == 1
    assert atari["env_wrapper"] == ["sb3_iris.atari.IrisAtariWrapper"]
    assert "frame_stack" not in atari
    rl_zoo_keys = {"n_timesteps", "policy", "env_wrapper", "n_envs", "normalize", "frame_stack", "callback"}
    for name, entry in config.items():
        assert isinstance(entry["n_timesteps"], (int, float)) and entry["policy"] in ("CnnPolicy", "MlpPolicy"), name
        if "policy_kwargs" in entry:
            assert isinstance(eval(entry["policy_kwargs"]), dict), name
        if HAS_IRIS:
            iris_args = set(inspect.signature(sb3_iris.IRIS.__init__).parameters)
            unknown = set(entry) - rl_zoo_keys - iris_args
            assert not unknown, f"{name}: {sorted(unknown)} are not IRIS arguments"
    if HAS_IRIS:  # the atari entry is the published configuration = the constructor defaults of that preset
        from sb3_iris.defaults import PRESET_HYPERPARAMETERS

        defaults = {name: p.default for name, p in inspect.signature(sb3_iris.IRIS.__init__).parameters.items()}
        defaults.update(PRESET_HYPERPARAMETERS["published"])  # the arguments whose signature default is None
        for key, value in atari.items():
            if key in defaults and defaults[key] is not inspect.Parameter.empty:
                assert value == defaults[key], key


# --------------------------------------------------------------------------------------------
# Full RL Zoo round trip (slow: a tiny CartPole run on CPU)
# --------------------------------------------------------------------------------------------
TINY = [
    "tokenizer_start_after_epochs:0",
    "world_model_start_after_epochs:0",
    "actor_critic_start_after_epochs:0",
    "tokenizer_updates_per_epoch:1",
    "world_model_updates_per_epoch:1",
    "actor_critic_updates_per_epoch:1",
    "final_training_epochs:0",
    "n_steps_per_epoch:100",
    "imagination_horizon:5",
    "burn_in:2",
    "actor_critic_batch_size:4",
    "world_model_batch_size:4",
    "tokenizer_batch_size:16",
]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_IRIS, reason="sb3_iris.IRIS does not exist yet")
def test_rl_zoo_train_enjoy_continue_optimize(tmp_path):
    installed_pth()
    logs = str(tmp_path / "logs")
    common = ["--algo", "iris", "--env", "CartPole-v1", "-f", logs]
    train = ["-m", "rl_zoo3.train", *common, "-n", "200", "--eval-freq", "-1", "--seed", "0", "-params", *TINY]

    def run(argv, disable_hook=False):
        env = dict(os.environ)
        env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
        if disable_hook:
            env["SB3_IRIS_NO_ZOO_HOOK"] = "1"
        result = subprocess.run(
            [sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{argv}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        return result.stdout

    out = run(train)
    assert f"Loading hyperparameters from: {zoo.DEFAULT_CONFIG}" in out
    model = Path(logs) / "iris" / "CartPole-v1_1" / "CartPole-v1.zip"
    assert model.is_file()
    run(["-m", "rl_zoo3.enjoy", *common, "-n", "50", "--no-render"])
    run([*train, "-i", str(model)])  # continue training
    # -optimize: the sampled updates per epoch override TINY's, so only the cheap tokenizer trains.
    optimize = ["-optimize", "--n-trials", "1", "--n-evaluations", "1", "--eval-episodes", "1", "--no-optim-plots"]
    no_world_model = ["world_model_start_after_epochs:9", "actor_critic_start_after_epochs:9"]
    run(["-m", "rl_zoo3.train", *common, "-n", "200", *optimize, "-params", *TINY, *no_world_model])
    # The explicit fallback, without the start-up hook.
    run(["-m", "sb3_iris.zoo", "enjoy", *common, "--exp-id", "1", "-n", "50", "--no-render"], disable_hook=True)
