"""Safe checkpoints: atomic file writes, the random-number streams of a run, and parameter checks before a load.

- :func:`atomic_write`: a save goes to a temporary file in the target's folder, is flushed to disk, and only
  then replaces the target (``os.replace``, atomic on POSIX and Windows). A write that fails halfway (disk
  full, a file-size limit, an interrupt) leaves the previous file untouched.
- :func:`capture_rng_states` / :func:`restore_rng_states`: torch (CPU and, when initialised, CUDA), NumPy's
  global generator and Python's ``random``, as JSON-compatible values (saved in the model's ``data``).
- :func:`check_state_dict_shapes`: every tensor of a set of state dicts is compared with the model's before
  any of it is loaded, so a file of another architecture changes nothing.
"""

from __future__ import annotations

import base64
import os
import pathlib
import random
import shutil
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_write", "capture_rng_states", "check_state_dict_shapes", "restore_rng_states"]

# How many mismatched tensors an error message lists.
SHOWN_MISMATCHES = 5


def final_path(path: str | os.PathLike, suffix: str) -> pathlib.Path:
    """The file SB3's ``open_path`` would write: ``.<suffix>`` added when the name has none; symlinks followed.

    :param path: the path given to ``save``
    :param suffix: the default suffix (``"zip"``, ``"pkl"``)
    :return: the target file
    """
    target = pathlib.Path(path)
    if target.suffix == "":
        target = pathlib.Path(f"{target}.{suffix}")
    if target.is_symlink():
        target = pathlib.Path(os.path.realpath(target))
    return target


def atomic_write(path: str | os.PathLike, suffix: str, write: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """Write a file through a temporary file in the same folder and ``os.replace``.

    :param path: the target path (SB3 conventions: ``.<suffix>`` added when missing)
    :param suffix: the default suffix
    :param write: writes the complete file to the path it is given (a name that ends in ``.tmp``)
    :return: the target file
    """
    target = final_path(path, suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        if target.is_file():
            shutil.copymode(target, temporary)  # keep the permissions a user gave the previous file
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


def _fsync_folder(folder: pathlib.Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


# ----------------------------------------------------------------------------------------------
# Random-number streams
# ----------------------------------------------------------------------------------------------


def _encode_bytes(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _decode_bytes(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng_states() -> dict[str, Any]:
    """The states of the process-wide generators a run draws from, as JSON-compatible values.

    :return: ``{"torch": ..., "torch_cuda": [...], "numpy": {...}, "python": [...]}``
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": _encode_bytes(torch.get_rng_state()),
        "numpy": {
            "kind": str(kind),
            "keys": base64.b64encode(np.asarray(keys, dtype=np.uint32).tobytes()).decode("ascii"),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["torch_cuda"] = [_encode_bytes(state) for state in torch.cuda.get_rng_state_all()]
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Set the process-wide generators to states returned by :func:`capture_rng_states`.

    CUDA states are restored when CUDA is available with the same number of devices (else skipped).

    :param states: the captured states
    """
    torch.set_rng_state(_decode_bytes(states["torch"]))
    cuda_states = states.get("torch_cuda")
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all([_decode_bytes(state) for state in cuda_states])
    numpy_state = states["numpy"]
    keys = np.frombuffer(base64.b64decode(numpy_state["keys"]), dtype=np.uint32).copy()
    np.random.set_state(
        (
            numpy_state["kind"],
            keys,
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def _module_problems(name: str, module: torch.nn.Module, loaded: Mapping[str, Any], exact_match: bool) -> list[str]:
    current = module.state_dict()
    problems = []
    for key, value in loaded.items():
        if key not in current:
            if exact_match:
                problems.append(f"'{name}' has no tensor '{key}'")
            continue
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(current[key].shape):
            problems.append(
                f"'{name}.{key}' has shape {tuple(value.shape)} in the file, {tuple(current[key].shape)} in the model"
            )
    if exact_match:
        problems += [f"the file lacks '{name}.{key}'" for key in current if key not in loaded]
    return problems


def _optimizer_problems(name: str, optimizer: torch.optim.Optimizer, loaded: Mapping[str, Any]) -> list[str]:
    groups = loaded.get("param_groups") if isinstance(loaded, Mapping) else None
    if not isinstance(groups, list) or not isinstance(loaded.get("state"), Mapping):
        return [f"'{name}' is not an optimizer state dict"]
    if len(groups) != len(optimizer.param_groups):
        return [f"'{name}' has {len(groups)} parameter groups in the file, {len(optimizer.param_groups)} in the model"]
    problems = []
    parameters = {}
    for index, (group, current) in enumerate(zip(groups, optimizer.param_groups)):
        if len(group["params"]) != len(current["params"]):
            problems.append(
                f"'{name}' group {index} has {len(group['params'])} parameters in the file, "
                f"{len(current['params'])} in the model"
            )
            continue
        parameters.update(zip(group["params"], current["params"]))
    for key, state in loaded["state"].items():
        parameter = parameters.get(key)
        if parameter is None or not isinstance(state, Mapping):
            continue
        for field, value in state.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                problems.append(
                    f"'{name}' state '{field}' of parameter {key} has shape {tuple(value.shape)} in the file, "
                    f"{tuple(parameter.shape)} in the model"
                )
    return problems


def check_state_dict_shapes(
    objects: Mapping[str, Any], loaded: Mapping[str, Any], expected_names: list[str], exact_match: bool
) -> None:
    """Raise ``ValueError`` listing every difference before anything is loaded.

    :param objects: the model's module or optimizer for each name in ``loaded`` (None: not an attribute)
    :param loaded: state dicts by name, as ``BaseAlgorithm.set_parameters`` takes them
    :param expected_names: the state dicts the model saves
    :param exact_match: also refuse missing or unexpected names and tensors (SB3's meaning)
    """
    problems: list[str] = []
    total = 0
    for name, state in loaded.items():
        target = objects.get(name)
        if target is None:
            problems.append(f"'{name}' is not a part of this model (valid: {expected_names})")
        elif isinstance(target, torch.optim.Optimizer):
            problems += _optimizer_problems(name, target, state)
        elif isinstance(target, torch.nn.Module) and isinstance(state, Mapping):
            total += len(state)
            problems += _module_problems(name, target, state, exact_match)
        else:
            problems.append(f"'{name}' is not a state dict")
    if exact_match:
        problems += [f"the file lacks '{name}'" for name in expected_names if name not in loaded]
    if problems:
        shown = "; ".join(problems[:SHOWN_MISMATCHES])
        more = f"; and {len(problems) - SHOWN_MISMATCHES} more" if len(problems) > SHOWN_MISMATCHES else ""
        raise ValueError(
            f"the parameters do not fit this model ({len(problems)} problem(s) over {total} tensors; nothing was "
            f"changed): {shown}{more}. Was it saved by a model with other policy_kwargs or spaces?"
        )
