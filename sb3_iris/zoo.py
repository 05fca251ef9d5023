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
    "convert_iris_params",
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
    """Optuna trial parameters -> IRIS keyword arguments (the names are the same: a copy)."""
    return dict(sampled_params)


# --------------------------------------------------------------------------------------------
# Patches (called by the start-up hook, or by register())
# --------------------------------------------------------------------------------------------
def patch_utils(module: Any) -> bool:
    """Add ``iris`` to ``module.ALGOS`` (``rl_zoo3.utils``). Returns True on success."""
    try:
        algos = module.ALGOS
        if not isinstance(algos, dict):
            raise TypeError(f"ALGOS is a {type(algos).__name__}, expected a dict")
        if ALGO_NAME not in algos:
            from sb3_iris import IRIS

            algos[ALGO_NAME] = IRIS
        return True
    except Exception as exc:
        _warn(f"could not add '{ALGO_NAME}' to {getattr(module, '__name__', module)}.ALGOS ({exc!r})")
        return False


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


def patch_exp_manager(module: Any) -> bool:
    """Make the packaged ``iris.yml`` the default config of ``--algo iris``. Returns True on success."""
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
