"""The environments IRIS is evaluated and watched in: one factory for evaluate, play and the callbacks.

:func:`make_env` builds one Gymnasium env as the trained agent saw it: Atari ids (``*NoFrameskip-v4``, ``ALE/*``)
get the IRIS preprocessing (:mod:`sb3_iris.atari`), other ids ``gym.make``; the wrappers, ``gym.make`` kwargs and
packages of the training run (RL Zoo's run folder, :mod:`sb3_iris.run_config`) are applied on top. The helpers
below bring env observations to the policy's layout, check that an env fits a model, and read the truncation
flags of a ``VecEnv`` step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import yaml
from gymnasium import spaces

from sb3_iris.run_config import EnvSettings, find_run_settings, load_wrappers, parse_env_kwargs, parse_wrapper_specs

__all__ = [
    "ATARI_WRAPPER",
    "UsageError",
    "add_env_settings_arguments",
    "check_compatible",
    "env_supports_rgb_render",
    "import_env_modules",
    "is_atari_id",
    "make_env",
    "observation_to_policy",
    "resolve_env_settings",
    "truncations_from_infos",
]

# Evaluation builds the Atari preprocessing itself (with the evaluation settings): a saved entry's is skipped.
ATARI_WRAPPER = "sb3_iris.atari.IrisAtariWrapper"


class UsageError(Exception):
    """A problem with the command-line arguments, the env or the model (printed without a traceback)."""


def import_env_modules(modules: Sequence[str]) -> None:
    """Import modules that register Gymnasium envs (dotted names, or paths to ``.py`` files)."""
    for module in modules:
        for name in (part.strip() for part in module.split(",")):
            if not name:
                continue
            if name.endswith(".py") or os.sep in name:
                path = os.path.abspath(name)
                if not os.path.isfile(path):
                    raise UsageError(f"--env-module {name!r}: no such file")
                module_name = os.path.splitext(os.path.basename(path))[0]
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec is not None and spec.loader is not None
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = loaded
                spec.loader.exec_module(loaded)
            else:
                try:
                    importlib.import_module(name)
                except ImportError as error:
                    raise UsageError(f"--env-module {name!r} cannot be imported: {error}") from error


def is_atari_id(env_id: str) -> bool:
    """Whether ``env_id`` names an ALE Atari game that gets the IRIS preprocessing (``*NoFrameskip-v4``, ``ALE/*``)."""
    base = env_id.split(":")[-1]
    return base.startswith("ALE/") or base.endswith("NoFrameskip-v4")


def _make_atari_env(env_id: str, training: bool, seed: Optional[int], render_mode: Optional[str]) -> gym.Env:
    from sb3_iris.atari import make_iris_atari_env

    env_kwargs: dict[str, Any] = {}
    if env_id.split(":")[-1].startswith("ALE/"):
        env_kwargs["frameskip"] = 1  # the IRIS wrapper does the frame skipping
    return make_iris_atari_env(
        env_id, training=training, seed=seed, render_mode=render_mode, env_kwargs=env_kwargs or None
    )


def make_env(
    env_id: str,
    training: bool = False,
    seed: Optional[int] = None,
    render_mode: Optional[str] = None,
    env_modules: Sequence[str] = (),
    settings: Optional[EnvSettings] = None,
) -> gym.Env:
    """Make one environment as IRIS sees it.

    Atari ids get the IRIS preprocessing (evaluation settings unless ``training``); other ids are made with
    ``gym.make`` (``module:EnvId`` ids import ``module`` first, as Gymnasium does). ``settings`` add what the
    model was trained with (RL Zoo's ``env_wrapper``, ``env_kwargs``, ``gym_packages``).

    :param env_id: Gymnasium id
    :param training: Atari only: the training settings (life-loss ends, 30 no-ops, 20 000-frame limit)
    :param seed: seeds the first reset and the action space
    :param render_mode: ``"rgb_array"`` to be able to call ``render()``
    :param env_modules: modules imported first (to register custom envs)
    :param settings: the training env's wrappers, ``gym.make`` kwargs and packages (see :mod:`sb3_iris.run_config`)
    """
    settings = settings or EnvSettings()
    import_env_modules([*settings.gym_packages, *env_modules])
    # Only envs that can render get a render_mode: a constructor without the argument would reject even None.
    make_kwargs = dict(settings.env_kwargs)
    if render_mode is not None:
        make_kwargs["render_mode"] = render_mode
    try:
        wrappers = load_wrappers(settings.wrappers, skip=(ATARI_WRAPPER,) if is_atari_id(env_id) else ())
        if is_atari_id(env_id):
            env = _make_atari_env(env_id, training, seed, render_mode)
        else:
            env = gym.make(env_id, **make_kwargs)
        for wrap in wrappers:
            env = wrap(env)
    except gym.error.Error as error:
        raise UsageError(f"cannot make env {env_id!r}: {error}") from error
    except (ValueError, TypeError) as error:
        raise UsageError(f"cannot make env {env_id!r} with {settings.describe()}: {error}") from error
    if seed is not None:
        env.action_space.seed(seed)
    return env


def resolve_env_settings(
    model_path: str,
    env_id: str,
    wrapper_args: Sequence[str] = (),
    env_kwargs_args: Sequence[str] = (),
    use_run_config: bool = True,
) -> EnvSettings:
    """The training env's settings: ``--env-wrapper`` / ``--env-kwargs`` where given, else what RL Zoo saved.

    :param model_path: the model file (an RL Zoo run folder holds ``<env>/config.yml`` and ``args.yml`` next to it)
    :param env_id: the Gymnasium id
    :param wrapper_args: ``--env-wrapper`` values: dotted names or YAML ``{name: kwargs}`` mappings
    :param env_kwargs_args: ``--env-kwargs`` values (``key:value``)
    :param use_run_config: read the run folder's files (``--no-run-config`` turns it off)
    """
    try:
        saved = find_run_settings(model_path, env_id) if use_run_config else None
        settings = saved or EnvSettings()
        if wrapper_args:
            settings.wrappers = parse_wrapper_specs([yaml.safe_load(spec) for spec in wrapper_args])
            settings.source = "the command line"
        if env_kwargs_args:
            settings.env_kwargs = parse_env_kwargs(list(env_kwargs_args))
            settings.source = "the command line"
    except (ValueError, yaml.YAMLError) as error:
        raise UsageError(str(error)) from error
    if settings.source is not None:
        print(f"env settings from {settings.source}: {settings.describe()}", file=sys.stderr)
    return settings


def add_env_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--env-wrapper``, ``--env-kwargs`` and ``--no-run-config`` options of evaluate and play."""
    parser.add_argument(
        "--env-wrapper",
        action="append",
        default=[],
        metavar="SPEC",
        help="wrap the env as in training: a dotted class name or a YAML mapping '{name: {kwarg: value}}', "
        "repeatable, applied in order (default: the env_wrapper RL Zoo saved in the model's run folder)",
    )
    parser.add_argument(
        "--env-kwargs",
        nargs="+",
        default=[],
        metavar="KEY:VALUE",
        help="keyword arguments of gym.make, as RL Zoo's --env-kwargs (default: those saved in the run folder)",
    )
    parser.add_argument(
        "--no-run-config",
        action="store_true",
        help="ignore the <run>/<env>/config.yml and args.yml that RL Zoo wrote next to the model",
    )


def env_supports_rgb_render(env_id: str, env_modules: Sequence[str] = ()) -> bool:
    """Whether the env lists ``"rgb_array"`` among its render modes (without making it)."""
    if is_atari_id(env_id):
        return True
    import_env_modules(env_modules)
    module, _, name = env_id.rpartition(":")
    if module:
        import_env_modules([module])
    try:
        creator = gym.spec(name).entry_point
        if isinstance(creator, str):
            from gymnasium.envs.registration import load_env_creator

            creator = load_env_creator(creator)
        return "rgb_array" in getattr(creator, "metadata", {}).get("render_modes", [])
    except Exception:
        return False


def observation_to_policy(observation: np.ndarray, observation_space: spaces.Box) -> np.ndarray:
    """Bring one env observation to the policy's layout (transposes HWC images to the policy's CHW)."""
    observation = np.asarray(observation)
    shape = tuple(observation_space.shape)
    if observation.shape == shape:
        return observation
    if observation.ndim == 3 and observation.transpose(2, 0, 1).shape == shape:
        return np.ascontiguousarray(observation.transpose(2, 0, 1))
    raise UsageError(f"the env's observations have shape {observation.shape}, the model expects {shape}")


def check_compatible(model: Any, env: gym.Env, env_id: str) -> None:
    """Raise :class:`UsageError` if the env's spaces do not fit the model."""
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(action_space, spaces.Discrete) or action_space.n != model.action_space.n:
        raise UsageError(f"{env_id} has action space {action_space}, the model was trained with {model.action_space}")
    shape = tuple(model.observation_space.shape)
    env_shape = tuple(obs_space.shape or ())
    if env_shape != shape and not (len(env_shape) == 3 and (env_shape[2], env_shape[0], env_shape[1]) == shape):
        hint = (
            " (Atari ids get the IRIS 64x64 preprocessing)"
            if is_atari_id(env_id)
            else "; a model trained with an env_wrapper needs the same wrapper: --env-wrapper module.Class, or "
            "evaluate the model inside its RL Zoo run folder, whose <env>/config.yml names it"
        )
        raise UsageError(f"{env_id} has observations of shape {env_shape}, the model expects {shape}{hint}")


def truncations_from_infos(infos: Sequence[dict], dones: np.ndarray) -> np.ndarray:
    """Which of a ``VecEnv`` step's ``dones`` are time-limit truncations (SB3's ``TimeLimit.truncated`` info).

    :param infos: the step's infos, one per env
    :param dones: ``(n_envs,)`` the step's dones
    :return: ``(n_envs,)`` bool, True where an episode was truncated rather than terminated
    """
    return np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos]) & np.asarray(dones, dtype=bool)
