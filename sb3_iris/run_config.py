"""The env a model was trained on, as RL Zoo saved it: ``env_wrapper``, ``env_kwargs`` and ``gym_packages``.

RL Zoo writes ``<run>/<env>/config.yml`` (the hyperparameters, with ``env_wrapper``) and ``<run>/<env>/args.yml``
(the command line, with ``--env-kwargs`` and ``--gym-packages``) next to the models it saves in ``<run>/``
(``<env>.zip``, ``best_model.zip``, ``rl_model_<n>_steps.zip``; ``<env>`` is the id with ``/`` replaced by ``-``).
``python -m sb3_iris.evaluate`` and ``python -m sb3_iris.play`` read them to rebuild the training env, as
``rl_zoo3.enjoy`` does; ``--env-wrapper`` / ``--env-kwargs`` replace what they find.

Wrapper specs have RL Zoo's format: a dotted class name, a one-key mapping ``{name: kwargs}``, or a list of them.
The files are read with a safe YAML loader that understands only the two Python tags RL Zoo writes
(``OrderedDict`` and ``tuple``), so a run folder cannot run code by being read.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

__all__ = ["EnvSettings", "find_run_settings", "load_wrappers", "parse_env_kwargs", "parse_wrapper_specs"]


class _ZooLoader(yaml.SafeLoader):
    """SafeLoader plus the ``OrderedDict`` and ``tuple`` tags of RL Zoo's files."""


def _ordered_dict(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    pairs = loader.construct_sequence(node.value[0] if isinstance(node, yaml.SequenceNode) else node, deep=True)
    return {key: value for key, value in pairs}


_ZooLoader.add_constructor("tag:yaml.org,2002:python/object/apply:collections.OrderedDict", _ordered_dict)
_ZooLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: tuple(loader.construct_sequence(node, deep=True))
)


@dataclass
class EnvSettings:
    """How to rebuild a training env around ``gym.make(env_id, **env_kwargs)``.

    :param wrappers: RL Zoo wrapper specs, applied in order
    :param env_kwargs: keyword arguments of ``gym.make``
    :param gym_packages: modules imported first (they register the ids)
    :param source: where the settings came from (a folder, or the command line)
    """

    wrappers: list[Any] = field(default_factory=list)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    gym_packages: list[str] = field(default_factory=list)
    source: Optional[str] = None

    def describe(self) -> str:
        parts = []
        if self.wrappers:
            parts.append(f"env_wrapper {self.wrappers}")
        if self.env_kwargs:
            parts.append(f"env_kwargs {self.env_kwargs}")
        if self.gym_packages:
            parts.append(f"gym_packages {self.gym_packages}")
        return ", ".join(parts) or "no wrapper, no env kwargs"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_ZooLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    return dict(data or {})


def find_run_settings(model_path: str, env_id: str) -> Optional[EnvSettings]:
    """The env settings RL Zoo saved next to ``model_path`` (None if it is not in an RL Zoo run folder).

    :param model_path: a model file inside an RL Zoo run folder
    :param env_id: the Gymnasium id the model is evaluated on
    """
    folder = Path(model_path).resolve().parent / env_id.split(":")[-1].replace("/", "-")
    config_file, args_file = folder / "config.yml", folder / "args.yml"
    if not config_file.is_file() and not args_file.is_file():
        return None
    config = _read_yaml(config_file) if config_file.is_file() else {}
    args = _read_yaml(args_file) if args_file.is_file() else {}
    return EnvSettings(
        wrappers=parse_wrapper_specs(config.get("env_wrapper")),
        env_kwargs=dict(args.get("env_kwargs") or {}),
        gym_packages=[str(p) for p in args.get("gym_packages") or []],
        source=str(folder),
    )


def parse_wrapper_specs(spec: Any) -> list[Any]:
    """RL Zoo's ``env_wrapper`` value (None, a name, a ``{name: kwargs}`` mapping or a list) as a list of specs."""
    if spec is None:
        return []
    specs = spec if isinstance(spec, list) else [spec]
    for item in specs:
        if isinstance(item, dict):
            if len(item) != 1 or not isinstance(next(iter(item)), str):
                raise ValueError(f"env_wrapper {item!r}: a mapping must have one key, the wrapper's dotted name")
        elif not isinstance(item, str):
            raise ValueError(f"env_wrapper {item!r}: expected a dotted class name or {{name: kwargs}}")
    return list(specs)


def parse_env_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``--env-kwargs key:value ...`` as RL Zoo reads it (values are Python literals, else strings)."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise ValueError(f"--env-kwargs {pair!r}: expected key:value")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _wrapper_name(spec: Any) -> str:
    return spec if isinstance(spec, str) else next(iter(spec))


def load_wrappers(specs: list[Any], skip: tuple[str, ...] = ()) -> list[Callable[[Any], Any]]:
    """Import each wrapper class and bind its kwargs; ``skip`` names wrappers applied another way.

    :param specs: wrapper specs (see :func:`parse_wrapper_specs`)
    :param skip: dotted names to leave out (e.g. the Atari preprocessing, which evaluation builds itself)
    """
    wrappers = []
    for spec in specs:
        name = _wrapper_name(spec)
        if name in skip:
            continue
        kwargs = dict(spec[name] or {}) if isinstance(spec, dict) else {}
        module_name, _, class_name = name.rpartition(".")
        try:
            wrapper_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise ValueError(f"env_wrapper {name!r} cannot be imported: {error}") from error
        wrappers.append(lambda env, wrapper_class=wrapper_class, kwargs=kwargs: wrapper_class(env, **kwargs))
    return wrappers
