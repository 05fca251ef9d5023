"""Checks of a saved IRIS model file before SB3 reads it, so that a damaged file fails with a clear message.

A model is a zip archive (``BaseAlgorithm.save``) holding ``data`` and one ``<name>.pth`` per state dict of
:data:`STATE_DICT_NAMES`.
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from typing import Union

__all__ = ["STATE_DICT_NAMES", "check_model_archive"]

# The state dicts saved with the model (policy, then the three optimisers), each as ``<name>.pth`` in the zip.
STATE_DICT_NAMES = (
    "policy",
    "policy.tokenizer_optimizer",
    "policy.world_model_optimizer",
    "policy.actor_critic_optimizer",
)


def check_model_archive(path: Union[str, pathlib.Path, io.BufferedIOBase]) -> None:
    """Raise ``ValueError`` if ``path`` is not a readable IRIS model archive (file-likes are left to SB3)."""
    if not isinstance(path, (str, pathlib.Path)):
        return
    file_path = pathlib.Path(path)
    if not file_path.exists() and file_path.suffix != ".zip":
        file_path = file_path.with_name(file_path.name + ".zip")  # SB3's open_path adds the suffix too
    if not file_path.is_file():
        return  # SB3 raises FileNotFoundError
    try:
        with zipfile.ZipFile(file_path) as archive:
            names = set(archive.namelist())
            corrupted = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        size = os.path.getsize(file_path)
        raise ValueError(
            f"could not load IRIS model from {path}: not a valid zip archive ({size} bytes; truncated or not a "
            f"file written by IRIS.save()): {e}"
        ) from e
    if corrupted is not None:
        raise ValueError(f"could not load IRIS model from {path}: member {corrupted!r} of the zip archive is corrupted")
    expected = ["data", *(f"{n}.pth" for n in STATE_DICT_NAMES)]
    missing = [name for name in expected if name not in names]
    if len(missing) == len(expected):
        raise ValueError(
            f"could not load IRIS model from {path}: no IRIS model in this zip archive (none of {expected} found); "
            "the file is truncated or was not written by IRIS.save()"
        )
    if missing:
        raise ValueError(
            f"could not load IRIS model from {path}: the archive lacks {missing} (a model of another algorithm, "
            "or a damaged file?)"
        )
