"""RL Zoo (``rl_zoo3``) integration: registration, ``-optimize`` sampler, default config, CLI fallback.

After ``pip install sb3-iris`` the start-up hook ``_sb3_iris_zoo_hook`` (installed through
``sb3_iris_zoo.pth``) calls :func:`patch_module` when rl_zoo3 loads, so the unmodified RL Zoo
commands accept ``--algo iris``::

    python -m rl_zoo3.train --algo iris --env PongNoFrameskip-v4
    python -m rl_zoo3.enjoy --algo iris --env PongNoFrameskip-v4 -f logs/

Where ``.pth`` files are not processed (``python -S``, a ``--target`` install on ``PYTHONPATH``, or
``SB3_IRIS_NO_ZOO_HOOK=1``), this module is the fallback: it calls :func:`register` and then runs
the rl_zoo3 script::

    python -m sb3_iris.zoo train --algo iris --env CartPole-v1
    python -m sb3_iris.zoo enjoy --algo iris --env CartPole-v1 -f logs/

What gets patched (each patch is guarded: a future rl_zoo3 that no longer fits gives a warning):

- ``rl_zoo3.utils.ALGOS["iris"] = sb3_iris.IRIS`` (the ``--algo`` choices of ``train``, ``enjoy``,
  ``record_video``, ``record_training``, ``push_to_hub`` and ``load_from_hub`` are built from it);
- ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER["iris"] = sample_iris_params`` and
  ``HYPERPARAMS_CONVERTER["iris"] = convert_iris_params`` (``-optimize``, ``--trial-id``);
- ``rl_zoo3.exp_manager.ExperimentManager.__init__``: for ``--algo iris`` without ``--conf-file``,
  when rl_zoo3 has no ``hyperparams/iris.yml`` of its own, the config is the packaged
  ``sb3_iris/hyperparams/iris.yml``. An explicit ``--conf-file`` always wins.
- Atari evaluation settings. RL Zoo builds its evaluation envs with the training ``env_wrapper``;
  IRIS evaluates with other Atari settings (one no-op at reset, no episode end on life loss,
  108 000-frame limit: ``IrisAtariWrapper(training=False)``). When ``env_wrapper`` names
  :class:`sb3_iris.atari.IrisAtariWrapper` (or a subclass), for any ``--algo``:

  * ``ExperimentManager._preprocess_hyperparams`` / ``create_envs``: the env made by
    ``create_envs(..., eval_env=True)`` (the ``EvalCallback`` env of ``train``, the trial
    evaluation env of ``-optimize``) gets the same wrapper arguments plus ``training=False``;
  * ``rl_zoo3.utils.create_test_env`` (``enjoy``, ``record_video``, ``push_to_hub``): the same.

  Wrapper arguments given explicitly in the yml (e.g. ``noop_max``) are kept; those left unset
  take the evaluation reference values. Training envs are not changed.
- Resuming ``--algo iris`` runs (``ExperimentManager.create_callbacks``, ``_load_pretrained_agent``, ``learn``):

  * ``--save-freq N --save-replay-buffer``: each checkpoint ``rl_model_<steps>_steps.zip`` gets its replay
    buffer ``rl_model_replay_buffer_<steps>_steps.pkl`` (RL Zoo alone saves the replay only at the end);
  * ``-i <folder>/rl_model_<steps>_steps.zip`` loads that checkpoint's replay buffer when it is there (RL Zoo
    alone looks for ``<folder>/replay_buffer.pkl``, the replay at the end of that run);
  * ``-i`` continues the step counter (``learn(..., reset_num_timesteps=False)``): ``-n`` is still the number
    of steps to add, as in RL Zoo, but checkpoints, evaluations and logs count from the loaded model's
    ``num_timesteps`` instead of from 0, so ``-i rl_model_40000_steps.zip -n 60000`` ends at 100 000 steps.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import optuna

__all__ = [
    "ALGO_NAME",
    "DEFAULT_CONFIG",
    "checkpoint_replay_buffer_path",
    "convert_iris_params",
    "eval_env_wrapper_spec",
    "main",
    "patch_exp_manager",
    "patch_hyperparams_opt",
    "patch_module",
    "patch_utils",
    "register",
    "sample_iris_params",
]

ALGO_NAME = "iris"
#: The packaged RL Zoo hyperparameter file (same content as ``hyperparams/iris.yml`` in the repo).
DEFAULT_CONFIG = Path(__file__).resolve().parent / "hyperparams" / "iris.yml"

_PATCHED_MARKER = "_sb3_iris_patched"


def _warn(message: str) -> None:
    warnings.warn(f"sb3-iris RL Zoo registration: {message}", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# Hyperparameter search (rl_zoo3 ``-optimize``)
# --------------------------------------------------------------------------------------------
def sample_iris_params(
    trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict[str, Any]
) -> dict[str, Any]:
    """Optuna sampler for IRIS, with rl_zoo3's sampler signature.

    Samples the optimiser and imagination settings that matter most; the network sizes stay those
    of the yml entry. Batch sizes and updates per epoch are small categorical sets so that a trial
    fits a CPU budget.

    :param trial: the Optuna trial
    :param n_actions: number of continuous action dimensions (unused: IRIS has discrete actions)
    :param n_envs: number of envs (unused)
    :param additional_args: rl_zoo3 extras (unused)
    :return: keyword arguments for :class:`sb3_iris.IRIS`
    """
    del n_actions, n_envs, additional_args
    sampled = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3, log=True),
        "tokenizer_batch_size": trial.suggest_categorical("tokenizer_batch_size", [64, 128, 256]),
        "world_model_batch_size": trial.suggest_categorical("world_model_batch_size", [16, 32, 64]),
        "actor_critic_batch_size": trial.suggest_categorical("actor_critic_batch_size", [16, 32, 64]),
        "imagination_horizon": trial.suggest_categorical("imagination_horizon", [10, 15, 20]),
        "ent_coef": trial.suggest_float("ent_coef", 1e-4, 1e-2, log=True),
        "gamma": trial.suggest_categorical("gamma", [0.98, 0.99, 0.995, 0.999]),
        "tokenizer_updates_per_epoch": trial.suggest_categorical("tokenizer_updates_per_epoch", [25, 50, 100, 200]),
        "world_model_updates_per_epoch": trial.suggest_categorical("world_model_updates_per_epoch", [25, 50, 100, 200]),
        "actor_critic_updates_per_epoch": trial.suggest_categorical(
            "actor_critic_updates_per_epoch", [25, 50, 100, 200]
        ),
    }
    return convert_iris_params(sampled)


def convert_iris_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Optuna trial parameters -> IRIS keyword arguments (the names are the same: a copy).

    ``sequence_length`` is not sampled: it must fit the yml entry's ``max_blocks``, which the sampler does not
    see. IRIS warns when a sampled ``imagination_horizon`` reaches world-model positions that
    ``sequence_length`` does not train.
    """
    return dict(sampled_params)


# --------------------------------------------------------------------------------------------
# Patches (called by the start-up hook, or by register())
# --------------------------------------------------------------------------------------------
def patch_utils(module: Any) -> bool:
    """Add ``iris`` to ``module.ALGOS`` (``rl_zoo3.utils``) and give ``create_test_env`` the Atari
    evaluation settings (see :func:`eval_env_wrapper_spec`). Returns True if both applied."""
    ok = True
    try:
        algos = module.ALGOS
        if not isinstance(algos, dict):
            raise TypeError(f"ALGOS is a {type(algos).__name__}, expected a dict")
        if ALGO_NAME not in algos:
            from sb3_iris import IRIS

            algos[ALGO_NAME] = IRIS
    except Exception as exc:
        _warn(f"could not add '{ALGO_NAME}' to {getattr(module, '__name__', module)}.ALGOS ({exc!r})")
        ok = False
    return _patch_create_test_env(module) and ok


def patch_hyperparams_opt(module: Any) -> bool:
    """Add the IRIS sampler and converter to ``rl_zoo3.hyperparams_opt``. Returns True on success."""
    ok = True
    name = getattr(module, "__name__", module)
    for table, function in (
        ("HYPERPARAMS_SAMPLER", sample_iris_params),
        ("HYPERPARAMS_CONVERTER", convert_iris_params),
    ):
        try:
            getattr(module, table).setdefault(ALGO_NAME, function)
        except Exception as exc:
            _warn(f"could not add '{ALGO_NAME}' to {name}.{table} ({exc!r}); -optimize may not work for IRIS")
            ok = False
    return ok


def _packaged_config_if_default(manager: Any, explicit_config: Optional[str]) -> None:
    if explicit_config or getattr(manager, "algo", None) != ALGO_NAME:
        return
    current = manager.config  # AttributeError -> warning: rl_zoo3 renamed it
    if current and os.path.isfile(current):
        return  # rl_zoo3 ships (or the user put) its own iris.yml: keep it
    manager.config = str(DEFAULT_CONFIG)


_EVAL_WARNING = (
    "evaluation envs of Atari runs with sb3_iris.atari.IrisAtariWrapper will use its training settings "
    "(30 no-ops, life loss ends episodes, 20 000-frame limit) instead of the IRIS evaluation settings"
)


def _names_iris_atari_wrapper(name: Any) -> bool:
    """Whether an ``env_wrapper`` entry name (dotted path or class) is ``IrisAtariWrapper`` or a subclass."""
    if isinstance(name, str):
        module_name, _, class_name = name.rpartition(".")
        if not module_name:
            return False
        try:
            import importlib

            name = getattr(importlib.import_module(module_name), class_name)
        except Exception:  # rl_zoo3 reports unknown wrappers itself
            return False
    if not isinstance(name, type):
        return False
    from sb3_iris.atari import IrisAtariWrapper

    return issubclass(name, IrisAtariWrapper)


def eval_env_wrapper_spec(spec: Any) -> Any:
    """The RL Zoo ``env_wrapper`` value for evaluation envs.

    Each entry that names :class:`sb3_iris.atari.IrisAtariWrapper` (or a subclass) gets
    ``training=False`` added to its keyword arguments (explicit arguments are kept), so the
    evaluation env uses the IRIS evaluation settings. ``spec`` itself is returned when it names no
    such wrapper; otherwise a new list (``spec`` is not modified).

    >>> eval_env_wrapper_spec(["sb3_iris.atari.IrisAtariWrapper"])
    [{'sb3_iris.atari.IrisAtariWrapper': {'training': False}}]
    """
    if spec is None:
        return spec
    entries = spec if isinstance(spec, list) else [spec]
    converted = []
    changed = False
    for entry in entries:
        if isinstance(entry, dict) and len(entry) == 1:
            name, kwargs = next(iter(entry.items()))
        else:
            name, kwargs = entry, None
        if _names_iris_atari_wrapper(name):
            converted.append({name: {**(kwargs or {}), "training": False}})
            changed = True
        else:
            converted.append(entry)
    return converted if changed else spec


def _patch_create_test_env(module: Any) -> bool:
    """``rl_zoo3.utils.create_test_env`` (enjoy, record_video, push_to_hub): IRIS evaluation settings."""
    try:
        import inspect

        original = module.create_test_env
        if getattr(original, _PATCHED_MARKER, False):
            return True
        signature = inspect.signature(original)
        if "hyperparams" not in signature.parameters:
            raise TypeError("create_test_env has no parameter 'hyperparams'")

        @functools.wraps(original)
        def create_test_env(*args: Any, **kwargs: Any) -> Any:
            try:
                hyperparams = signature.bind(*args, **kwargs).arguments.get("hyperparams")
                if isinstance(hyperparams, dict) and "env_wrapper" in hyperparams:
                    # In place, as create_test_env itself deletes the key from the caller's dict.
                    hyperparams["env_wrapper"] = eval_env_wrapper_spec(hyperparams["env_wrapper"])
            except Exception as exc:
                _warn(f"{_EVAL_WARNING} ({exc!r})")
            return original(*args, **kwargs)

        setattr(create_test_env, _PATCHED_MARKER, True)
        module.create_test_env = create_test_env
        # `rl_zoo3/__init__.py` re-exports it (enjoy imports it from there): when rl_zoo3.utils was patched
        # after that import (register() without the start-up hook), update the re-export too.
        package = sys.modules.get(getattr(module, "__name__", "").rpartition(".")[0])
        if package is not None and getattr(package, "create_test_env", None) is original:
            package.create_test_env = create_test_env
        return True
    except Exception as exc:
        _warn(f"could not patch {getattr(module, '__name__', module)}.create_test_env ({exc!r}): {_EVAL_WARNING}")
        return False


def _patch_eval_envs(manager_class: Any) -> bool:
    """``ExperimentManager``: ``create_envs(eval_env=True)`` uses the IRIS evaluation settings."""
    try:
        import inspect

        from rl_zoo3.utils import get_wrapper_class

        original_preprocess = manager_class._preprocess_hyperparams
        original_create_envs = manager_class.create_envs
        if getattr(original_create_envs, _PATCHED_MARKER, False):
            return True
        create_signature = inspect.signature(original_create_envs)
        if "eval_env" not in create_signature.parameters:
            raise TypeError("ExperimentManager.create_envs has no parameter 'eval_env'")
        preprocess_signature = inspect.signature(original_preprocess)
        if "hyperparams" not in preprocess_signature.parameters:
            raise TypeError("ExperimentManager._preprocess_hyperparams has no parameter 'hyperparams'")

        @functools.wraps(original_preprocess)
        def _preprocess_hyperparams(self: Any, *args: Any, **kwargs: Any) -> Any:
            eval_wrapper = None
            try:
                hyperparams = preprocess_signature.bind(self, *args, **kwargs).arguments["hyperparams"]
                spec = hyperparams.get("env_wrapper")
                eval_spec = eval_env_wrapper_spec(spec)
                if eval_spec is not spec:
                    eval_wrapper = get_wrapper_class({"env_wrapper": eval_spec})
            except Exception as exc:
                _warn(f"{_EVAL_WARNING} ({exc!r})")
            self._sb3_iris_eval_env_wrapper = eval_wrapper
            return original_preprocess(self, *args, **kwargs)

        @functools.wraps(original_create_envs)
        def create_envs(self: Any, *args: Any, **kwargs: Any) -> Any:
            eval_wrapper = getattr(self, "_sb3_iris_eval_env_wrapper", None)
            if eval_wrapper is None or not create_signature.bind(self, *args, **kwargs).arguments.get("eval_env"):
                return original_create_envs(self, *args, **kwargs)
            training_wrapper = self.env_wrapper
            self.env_wrapper = eval_wrapper
            try:
                return original_create_envs(self, *args, **kwargs)
            finally:
                self.env_wrapper = training_wrapper

        for function in (_preprocess_hyperparams, create_envs):
            setattr(function, _PATCHED_MARKER, True)
        manager_class._preprocess_hyperparams = _preprocess_hyperparams
        manager_class.create_envs = create_envs
        return True
    except Exception as exc:
        _warn(f"could not patch ExperimentManager for evaluation envs ({exc!r}): {_EVAL_WARNING}")
        return False


def checkpoint_replay_buffer_path(checkpoint: str) -> Optional[str]:
    """The replay buffer that ``CheckpointCallback`` saved with a model checkpoint, if it exists.

    ``<folder>/<prefix>_<steps>_steps.zip`` -> ``<folder>/<prefix>_replay_buffer_<steps>_steps.pkl``.

    :param checkpoint: path of a model checkpoint
    :return: the path of its replay buffer, or None if the name is not a checkpoint's or the file is missing
    """
    import re

    match = re.fullmatch(r"(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip", os.path.basename(checkpoint))
    if match is None:
        return None
    name = f"{match.group('prefix')}_replay_buffer_{match.group('steps')}_steps.pkl"
    path = os.path.join(os.path.dirname(checkpoint), name)
    return path if os.path.isfile(path) else None


class _ContinuingModel:
    """What ``ExperimentManager.learn`` gets for a continued run: ``learn()`` keeps the step counter; everything
    else is the model's (a proxy, so that the model itself is not changed and saves as usual)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.learn(*args, reset_num_timesteps=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _patch_resume(manager_class: Any) -> bool:
    """``--algo iris``: checkpoints with their replay buffer, ``-i`` from them, and a continued step counter."""
    try:
        from stable_baselines3.common.callbacks import CheckpointCallback

        original_callbacks = manager_class.create_callbacks
        original_load = manager_class._load_pretrained_agent
        original_learn = manager_class.learn
        if getattr(original_learn, _PATCHED_MARKER, False):
            return True

        @functools.wraps(original_callbacks)
        def create_callbacks(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original_callbacks(self, *args, **kwargs)
            if self.algo == ALGO_NAME and self.save_replay_buffer:
                for callback in self.callbacks:
                    if isinstance(callback, CheckpointCallback):
                        callback.save_replay_buffer = True
            return result

        @functools.wraps(original_load)
        def _load_pretrained_agent(self: Any, *args: Any, **kwargs: Any) -> Any:
            model = original_load(self, *args, **kwargs)
            replay_path = checkpoint_replay_buffer_path(self.trained_agent) if self.algo == ALGO_NAME else None
            if replay_path is not None:
                print(f"Loading replay buffer of the checkpoint: {replay_path}")
                model.load_replay_buffer(replay_path)
            return model

        @functools.wraps(original_learn)
        def learn(self: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            if self.algo != ALGO_NAME or not self.continue_training:
                return original_learn(self, model, *args, **kwargs)
            print(f"Continuing the step counter from {model.num_timesteps} (sb3-iris)")
            return original_learn(self, _ContinuingModel(model), *args, **kwargs)

        for function in (create_callbacks, _load_pretrained_agent, learn):
            setattr(function, _PATCHED_MARKER, True)
        manager_class.create_callbacks = create_callbacks
        manager_class._load_pretrained_agent = _load_pretrained_agent
        manager_class.learn = learn
        return True
    except Exception as exc:
        _warn(
            f"could not patch ExperimentManager for resuming ({exc!r}): checkpoints will not hold the replay buffer "
            "and -i restarts the step counter at 0"
        )
        return False


def patch_exp_manager(module: Any) -> bool:
    """Make the packaged ``iris.yml`` the default config of ``--algo iris``, give evaluation envs the IRIS Atari
    evaluation settings (see :func:`eval_env_wrapper_spec`), and make ``--algo iris`` runs resumable from their
    checkpoints (see the module docstring). Returns True if all applied."""
    manager_class = getattr(module, "ExperimentManager", None)
    eval_ok = _patch_eval_envs(manager_class) if manager_class is not None else False
    resume_ok = _patch_resume(manager_class) if manager_class is not None else False
    return _patch_default_config(module) and eval_ok and resume_ok


def _patch_default_config(module: Any) -> bool:
    try:
        import inspect

        manager_class = module.ExperimentManager
        original = manager_class.__init__
        if getattr(original, _PATCHED_MARKER, False):
            return True
        signature = inspect.signature(original)
        missing = [p for p in ("algo", "config") if p not in signature.parameters]
        if missing:
            raise TypeError(f"ExperimentManager.__init__ has no parameter(s) {missing}")

        @functools.wraps(original)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            try:
                arguments = signature.bind(self, *args, **kwargs).arguments
                _packaged_config_if_default(self, arguments.get("config"))
            except Exception as exc:
                _warn(
                    f"could not select the packaged {DEFAULT_CONFIG.name} ({exc!r}); pass --conf-file {DEFAULT_CONFIG}"
                )

        setattr(__init__, _PATCHED_MARKER, True)
        manager_class.__init__ = __init__
        return True
    except Exception as exc:
        _warn(
            f"could not patch {getattr(module, '__name__', module)}.ExperimentManager for the default config "
            f"({exc!r}); pass --conf-file {DEFAULT_CONFIG}"
        )
        return False


_PATCHES = {
    "rl_zoo3.utils": patch_utils,
    "rl_zoo3.hyperparams_opt": patch_hyperparams_opt,
    "rl_zoo3.exp_manager": patch_exp_manager,
}


def patch_module(module: Any) -> bool:
    """Apply the patch that belongs to ``module`` (by its ``__name__``); others are left alone."""
    patch = _PATCHES.get(getattr(module, "__name__", ""))
    return patch(module) if patch is not None else False


def register() -> bool:
    """Import the rl_zoo3 modules and register IRIS in them (idempotent).

    Needed only where the start-up hook is not active. Returns True if every patch applied.
    """
    import importlib

    ok = True
    for module_name, patch in _PATCHES.items():
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            _warn(f"could not import {module_name} ({exc!r})")
            ok = False
            continue
        ok = patch(module) and ok
    return ok


# --------------------------------------------------------------------------------------------
# CLI fallback: python -m sb3_iris.zoo <script> [args...]
# --------------------------------------------------------------------------------------------
SCRIPTS = {
    "train": "rl_zoo3.train",
    "enjoy": "rl_zoo3.enjoy",
    "record_video": "rl_zoo3.record_video",
    "record_training": "rl_zoo3.record_training",
    "push_to_hub": "rl_zoo3.push_to_hub",
    "load_from_hub": "rl_zoo3.load_from_hub",
    "benchmark": "rl_zoo3.benchmark",
    "plot_train": "rl_zoo3.plots.plot_train",
    "plot_from_file": "rl_zoo3.plots.plot_from_file",
    "all_plots": "rl_zoo3.plots.all_plots",
}


def main(argv: Optional[list[str]] = None) -> int:
    """Run an rl_zoo3 script after :func:`register`, e.g. ``python -m sb3_iris.zoo train --algo iris``."""
    import runpy

    argv = sys.argv[1:] if argv is None else list(argv)
    usage = f"usage: python -m sb3_iris.zoo {{{','.join(SCRIPTS)}}} [rl_zoo3 arguments...]"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    script, script_args = argv[0], argv[1:]
    if script not in SCRIPTS:
        print(f"sb3_iris.zoo: unknown script {script!r}; valid: {', '.join(SCRIPTS)}\n{usage}", file=sys.stderr)
        return 2
    register()
    module_name = SCRIPTS[script]
    sys.argv = [module_name, *script_args]
    runpy.run_module(module_name, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
