"""Saving and loading IRIS models and replays: atomic writes, the run's random streams, clear errors.

:class:`IrisPersistence` is the part of :class:`~sb3_iris.iris.IRIS` that overrides ``BaseAlgorithm``'s
``save`` / ``load`` / ``set_parameters`` and ``save_replay_buffer`` / ``load_replay_buffer``: a file is written
through a temporary file, the random-number streams travel with the model, and a damaged or foreign file is refused
with a message naming the problem (:mod:`sb3_iris.archive`, :mod:`sb3_iris.checkpoint`) before anything changes.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import zipfile
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.save_util import load_from_pkl, load_from_zip_file, save_to_pkl
from stable_baselines3.common.type_aliases import GymEnv

from sb3_iris.archive import STATE_DICT_NAMES, check_model_archive
from sb3_iris.buffers import EpisodeReplayBuffer
from sb3_iris.checkpoint import atomic_write, capture_rng_states, check_state_dict_shapes, restore_rng_states

if TYPE_CHECKING:
    from sb3_iris.caches import FrozenTokenizerCache
    from sb3_iris.policies import IrisPolicy

__all__ = ["IrisPersistence"]

SelfPersistence = TypeVar("SelfPersistence", bound="IrisPersistence")


class IrisPersistence(BaseAlgorithm):
    """Model and replay files of IRIS (a base of :class:`~sb3_iris.iris.IRIS`; see the module docstring)."""

    policy: IrisPolicy
    replay_buffer: EpisodeReplayBuffer
    tokenizer_cache: FrozenTokenizerCache

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return list(STATE_DICT_NAMES), []

    def save(
        self,
        path: Union[str, pathlib.Path, io.BufferedIOBase],
        exclude: Optional[Iterable[str]] = None,
        include: Optional[Iterable[str]] = None,
    ) -> None:
        """Save the model (see ``BaseAlgorithm.save``), atomically, with the random-number streams of the run.

        A path is written through a temporary file in the same folder that replaces the target only once it
        is complete: a save that fails halfway leaves the previous file as it was. The states of torch's,
        NumPy's and Python's generators are saved too, and :meth:`load` restores them, so that
        ``save`` -> ``load`` -> ``learn(..., reset_num_timesteps=False)`` continues the same random streams.

        :param path: file (``.zip`` added when the name has no suffix) or writable file-like object
        :param exclude: attributes not to save, in addition to the default ones
        :param include: attributes to save although excluded by default
        """
        save = super().save
        self._rng_states = capture_rng_states()
        try:
            if isinstance(path, (str, os.PathLike)):
                atomic_write(path, "zip", lambda temporary: save(temporary, exclude, include))
            else:
                save(path, exclude, include)
        finally:
            del self._rng_states

    def set_parameters(
        self,
        load_path_or_dict: Union[str, pathlib.Path, io.BufferedIOBase, dict[str, Any]],
        exact_match: bool = True,
        device: Union[torch.device, str] = "auto",
    ) -> None:
        """Load parameters and optimiser states (see ``BaseAlgorithm.set_parameters``), all or nothing.

        Every tensor's shape (and, with ``exact_match``, every name) is checked before anything is loaded: a
        file of another architecture raises a ``ValueError`` listing the differences and changes nothing.

        :param load_path_or_dict: a model file, or a dict of state dicts by name (``get_parameters()``)
        :param exact_match: also refuse missing or unexpected state dicts and tensors
        :param device: where to load the tensors of a file
        """
        if isinstance(load_path_or_dict, dict):
            params = load_path_or_dict
        else:
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        objects = {name: getattr(self.policy, name.split(".", 1)[1], None) for name in STATE_DICT_NAMES[1:]}
        objects["policy"] = self.policy
        check_state_dict_shapes(objects, params, list(STATE_DICT_NAMES), exact_match)
        super().set_parameters(params, exact_match=exact_match, device=device)

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfPersistence],
        path: Union[str, pathlib.Path, io.BufferedIOBase],
        env: Optional[GymEnv] = None,
        device: Union[torch.device, str] = "auto",
        custom_objects: Optional[dict[str, Any]] = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfPersistence:
        """Load a model saved with :meth:`save` (see ``BaseAlgorithm.load``).

        A file that is not a zip archive, is truncated or corrupted, or lacks the IRIS parts raises a
        ``ValueError`` that names the file and the problem. The random-number streams (torch, NumPy, Python)
        continue from their state at :meth:`save`, also when ``seed`` is given (it only sets ``model.seed``);
        call ``model.set_random_seed(seed)`` afterwards to restart them instead. With ``env`` and
        ``force_reset=False``, a live env in the same process continues its episodes too (see the README's
        Reliability section).
        """
        check_model_archive(path)
        try:
            model = super().load(
                path,
                env=env,
                device=device,
                custom_objects=custom_objects,
                print_system_info=print_system_info,
                force_reset=force_reset,
                **kwargs,
            )
        except (
            zipfile.BadZipFile,
            KeyError,
            EOFError,
            AssertionError,
            pickle.UnpicklingError,
            RuntimeError,
            json.JSONDecodeError,
            UnicodeDecodeError,
        ) as e:
            raise ValueError(f"could not load IRIS model from {path}: {type(e).__name__}: {e}") from e
        # BaseAlgorithm.load re-seeded the generators from `seed`; continue the saved streams instead.
        rng_states = model.__dict__.pop("_rng_states", None)
        if rng_states is not None:
            restore_rng_states(rng_states)
        return model

    def save_replay_buffer(self, path: Union[str, pathlib.Path, io.BufferedIOBase]) -> None:
        """Save the replay buffer (pickled, trimmed to the stored data, with its sampling RNG) to ``path``.

        A path is written atomically, as :meth:`save` does (``.pkl`` added when the name has no suffix).

        :param path: file or writable file-like object
        """
        self.replay_buffer.action_space = self.action_space
        if isinstance(path, (str, os.PathLike)):
            atomic_write(path, "pkl", lambda temporary: save_to_pkl(temporary, self.replay_buffer, self.verbose))
        else:
            save_to_pkl(path, self.replay_buffer, self.verbose)

    def load_replay_buffer(self, path, truncate_last_traj: bool = True) -> None:
        """Load a replay buffer saved by :meth:`save_replay_buffer`.

        :param path: file written by :meth:`save_replay_buffer`
        :param truncate_last_traj: kept for SB3 signature compatibility; the ongoing episodes of a loaded
            buffer are always closed when the env is reset
        """
        try:
            buffer = load_from_pkl(path, self.verbose)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, ValueError) as e:
            raise ValueError(
                f"could not load an IRIS replay buffer from {path!s}: not a file written by save_replay_buffer() "
                f"({type(e).__name__}: {e})"
            ) from e
        if not isinstance(buffer, EpisodeReplayBuffer):
            raise TypeError(f"{path!s} does not contain an IRIS EpisodeReplayBuffer (found {type(buffer).__name__})")
        self._check_loaded_replay(buffer, path)
        self.replay_buffer = buffer
        self.tokenizer_cache.attach(buffer)

    def _check_loaded_replay(self, buffer: EpisodeReplayBuffer, path: Any) -> None:
        """Refuse a replay of other spaces or envs, or one whose arrays are inconsistent, before using it."""
        if buffer.observation_space.shape != self.observation_space.shape:
            raise ValueError(
                f"replay observations of shape {buffer.observation_space.shape} do not match the model's "
                f"{self.observation_space.shape}"
            )
        expected_dtype = self.replay_buffer.observation_dtype  # the model's own (empty or not) replay
        if buffer.observation_dtype != expected_dtype:
            raise ValueError(
                f"replay observations stored as {buffer.observation_dtype} do not match the model's "
                f"{expected_dtype} (observation_space={self.observation_space}; replay: {buffer.observation_space})"
            )
        n_actions = int(self.action_space.n)
        if buffer.action_space is not None and int(buffer.action_space.n) != n_actions:
            raise ValueError(
                f"the replay in {path!s} holds actions of {buffer.action_space} but the model has "
                f"action_space={self.action_space}: its actions would be read as other actions"
            )
        try:
            buffer.check_integrity(n_actions)
        except ValueError as e:
            raise ValueError(f"could not load the replay buffer in {path!s}: {e}") from e
