"""IRIS as a Stable-Baselines3 algorithm.

``learn()`` runs the IRIS schedule in epochs: collect ``n_steps_per_epoch`` real transitions, then
train the tokenizer, the world model and the actor-critic (in imagination), each after its warm-up.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import sys
import time
import warnings
import zipfile
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any, Callable, ClassVar, Optional, TypeVar, Union

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecEnv

from sb3_iris.archive import STATE_DICT_NAMES, check_model_archive
from sb3_iris.buffers import EpisodeReplayBuffer
from sb3_iris.caches import FrozenTokenizerCache
from sb3_iris.checkpoint import atomic_write, capture_rng_states, check_state_dict_shapes, restore_rng_states
from sb3_iris.defaults import PRESET_HYPERPARAMETERS, merge_policy_kwargs, resolve_preset
from sb3_iris.envs import truncations_from_infos
from sb3_iris.imagination import DreamEnv, OneTokenStepper, imagine_rollouts
from sb3_iris.nn.actor_critic import LSTMState
from sb3_iris.performance import PerformanceOptions, apply_process_options, autocast_context, configure_modules
from sb3_iris.policies import CnnPolicy, IrisPolicy, MlpPolicy
from sb3_iris.progress import TrainingProgress, network_summary, schedule_line
from sb3_iris.schedule import PARTS, check_final_training_epochs, final_epochs, plan_epochs, unreachable_message
from sb3_iris.spaces import check_env_spaces, check_spaces
from sb3_iris.training import make_phases, phase_metrics, run_phase
from sb3_iris.validation import (
    check_env_step,
    check_integer,
    check_policy_kwargs,
    check_real,
    check_total_timesteps,
    is_integer,
)

SelfIRIS = TypeVar("SelfIRIS", bound="IRIS")

# At verbose >= 1, a training phase running longer than this prints its progress this often (seconds).
PROGRESS_PRINT_SECONDS = 30.0


class IRIS(BaseAlgorithm):
    """IRIS: Transformers are Sample-Efficient World Models (Micheli et al., ICLR 2023).

    Paper: https://arxiv.org/abs/2209.00588. Defaults depend on the policy (``preset``, :mod:`sb3_iris.defaults`):
    ``CnnPolicy`` gets the published Atari 100k configuration, ``MlpPolicy`` the CPU-sized one of the tuned
    ``CartPole-v1`` entry. An argument shown as ``(a / b)`` below defaults to ``a`` under the published preset and
    to ``b`` under the vector one; ``None`` means "the preset's value".

    :param policy: ``"CnnPolicy"`` (images), ``"MlpPolicy"`` (1-D vectors) or an :class:`IrisPolicy` subclass
    :param env: environment (Gymnasium env, VecEnv or registered id); only ``Discrete`` actions
    :param learning_rate: learning rate of the three optimisers, constant or schedule (1e-4 / 1e-3)
    :param n_steps_per_epoch: real transitions collected per epoch, summed over envs, rounded up to a multiple
        of ``n_envs`` (200)
    :param tokenizer_updates_per_epoch: tokenizer gradient steps per epoch (200)
    :param world_model_updates_per_epoch: world-model gradient steps per epoch (200 / 100)
    :param actor_critic_updates_per_epoch: actor-critic gradient steps per epoch (200 / 50)
    :param tokenizer_batch_size: frames per tokenizer step (256)
    :param world_model_batch_size: segments per world-model step (64 / 32)
    :param actor_critic_batch_size: imagined trajectories per actor-critic step (64)
    :param tokenizer_start_after_epochs: the tokenizer trains from epoch ``this + 1`` (5 / 0)
    :param world_model_start_after_epochs: the world model trains from epoch ``this + 1`` (25 / 2)
    :param actor_critic_start_after_epochs: the actor-critic trains from epoch ``this + 1`` (50 / 5)
    :param tokenizer_stop_after_epochs: the tokenizer trains no more after epoch ``this``: its tokens then stay fixed
        under the world model, and the per-epoch token and reconstruction caches stay valid across epochs (None:
        it trains in every epoch, as in IRIS; not in IRIS)
    :param sequence_length: steps per world-model segment; must not exceed the world model's ``max_blocks`` (20 / 16)
    :param imagination_horizon: imagined steps per trajectory H (20 / 15)
    :param burn_in: real frames fed to the actor's LSTM before imagining, and re-fed at each collection start
        (20 / 5)
    :param gamma: discount (0.995 / 0.99)
    :param gae_lambda: lambda of the lambda-returns (0.95)
    :param ent_coef: entropy weight of the actor loss (0.001 / 0.01)
    :param normalize_advantage: standardise the actor's advantages over each batch (False, as in IRIS; True helps
        dense-reward tasks such as CartPole, where returns are large while the value head catches up)
    :param max_grad_norm: gradient-norm clip of the three optimisers (10)
    :param collect_epsilon: probability of a uniformly random action during collection (0.01)
    :param collect_temperature: policy temperature during collection (1.0)
    :param imagination_temperature: sampling temperature of the world model's observation tokens (1.0)
    :param final_training_epochs: training-only epochs after the last collection of a ``learn()`` call: an int is a
        number of epochs, a float a fraction of the call's collecting epochs, rounded (0.2 / 0: the published 100k
        steps collect for 500 epochs and then train for 100 more; ``learn(256)`` then runs 2 + 0 epochs; use 0 for the
        SB3 habit of stopping when ``total_timesteps`` is reached); see :mod:`sb3_iris.schedule`
    :param buffer_size: maximum number of stored transitions (None: keep everything, as IRIS does)
    :param replay_memory_budget_gb: evict the oldest episodes once the replay data exceeds this many GB (None: no limit)
    :param use_token_cache: cache the frozen tokenizer's tokens per replay frame within an epoch (same results,
        much faster); False recomputes them for every batch
    :param reconstruction_cache_gb: memory for caching the frozen tokenizer's reconstructions of the replay frames
        used as imagination burn-in within an epoch (same results; 0 disables)
    :param mixed_precision: bf16 autocast for the forward passes where the device supports it (None: off;
        see the README's performance section for when it pays off); losses and optimiser states stay float32
    :param channels_last: NHWC memory format for the convolutional networks (None: on; see the README's performance
        section)
    :param merge_last_token: in imagination, write each generated frame's last token into the KV cache together
        with the next action token (K instead of K + 1 transformer passes per imagined step; same results)
    :param fused_optimizers: fused Adam/AdamW kernels (None: on where torch supports them for the device)
    :param compile_imagination: generate imagined frames through the world model's static-shape one-token pass
        compiled with ``torch.compile`` (CUDA graphs on CUDA); same results within float tolerance; compiling
        takes about a minute at the start (None: off)
    :param tune_cpu_allocator: make glibc's malloc keep freed memory for reuse instead of unmapping and
        page-faulting large tensors on every step (None: on for CPU devices on glibc; same results, a higher
        resident set; see the README's performance section). Process-wide: applied when ``learn()`` starts (announced
        at verbose >= 1) and kept for the rest of the process; never by ``load`` or by the evaluate / play tools
    :param stats_window_size: window for the rollout episode statistics
    :param tensorboard_log: TensorBoard log folder (None: no logging)
    :param policy_kwargs: keyword arguments of the policy (``tokenizer_kwargs``, ``world_model_kwargs``,
        ``actor_critic_kwargs``, ``world_model_weight_decay``, ``optimizer_kwargs``), merged key by key into the
        preset's network sizes (published: the config dataclasses' defaults; vector: see :mod:`sb3_iris.defaults`)
    :param verbose: 0 no output, 1 info (the schedule before training, epoch and phase progress with an estimate
        of the time left, losses at each log), 2 debug
    :param seed: random seed
    :param device: ``"cpu"``, ``"cuda"`` or ``"auto"``
    :param preset: where the arguments left at None come from: ``"published"`` (the paper's Atari 100k schedule and
        networks, for any policy), ``"vector"`` (MlpPolicy only) or None (by policy: ``MlpPolicy`` vector, else
        published)
    :param _init_setup_model: build the networks at construction (False when loading)
    """

    policy_aliases: ClassVar[dict[str, type[IrisPolicy]]] = {"CnnPolicy": CnnPolicy, "MlpPolicy": MlpPolicy}
    policy: IrisPolicy
    replay_buffer: EpisodeReplayBuffer

    def __init__(
        self,
        policy: Union[str, type[IrisPolicy]],
        env: Union[GymEnv, str, None],
        learning_rate: Union[float, Schedule, None] = None,
        n_steps_per_epoch: int = 200,
        tokenizer_updates_per_epoch: int = 200,
        world_model_updates_per_epoch: Optional[int] = None,
        actor_critic_updates_per_epoch: Optional[int] = None,
        tokenizer_batch_size: int = 256,
        world_model_batch_size: Optional[int] = None,
        actor_critic_batch_size: int = 64,
        tokenizer_start_after_epochs: Optional[int] = None,
        world_model_start_after_epochs: Optional[int] = None,
        actor_critic_start_after_epochs: Optional[int] = None,
        tokenizer_stop_after_epochs: Optional[int] = None,
        sequence_length: Optional[int] = None,
        imagination_horizon: Optional[int] = None,
        burn_in: Optional[int] = None,
        gamma: Optional[float] = None,
        gae_lambda: float = 0.95,
        ent_coef: Optional[float] = None,
        normalize_advantage: bool = False,
        max_grad_norm: float = 10.0,
        collect_epsilon: float = 0.01,
        collect_temperature: float = 1.0,
        imagination_temperature: float = 1.0,
        final_training_epochs: Union[int, float, None] = None,
        buffer_size: Optional[int] = None,
        replay_memory_budget_gb: Optional[float] = None,
        use_token_cache: bool = True,
        reconstruction_cache_gb: float = 1.0,
        mixed_precision: Optional[bool] = None,
        channels_last: Optional[bool] = None,
        merge_last_token: bool = True,
        fused_optimizers: Optional[bool] = None,
        compile_imagination: Optional[bool] = None,
        tune_cpu_allocator: Optional[bool] = None,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[torch.device, str] = "auto",
        preset: Optional[str] = None,
        _init_setup_model: bool = True,
    ) -> None:
        if env is not None and not isinstance(env, str):
            check_env_spaces(env)
        super().__init__(
            policy=policy,
            env=env,
            learning_rate=learning_rate,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            monitor_wrapper=True,
            seed=seed,
            supported_action_spaces=None,
        )
        if self.env is not None:
            check_env_spaces(self.env)
        self.n_steps_per_epoch = n_steps_per_epoch
        self.tokenizer_updates_per_epoch = tokenizer_updates_per_epoch
        self.world_model_updates_per_epoch = world_model_updates_per_epoch
        self.actor_critic_updates_per_epoch = actor_critic_updates_per_epoch
        self.tokenizer_batch_size = tokenizer_batch_size
        self.world_model_batch_size = world_model_batch_size
        self.actor_critic_batch_size = actor_critic_batch_size
        self.tokenizer_start_after_epochs = tokenizer_start_after_epochs
        self.world_model_start_after_epochs = world_model_start_after_epochs
        self.actor_critic_start_after_epochs = actor_critic_start_after_epochs
        self.tokenizer_stop_after_epochs = tokenizer_stop_after_epochs
        self.sequence_length = sequence_length
        self.imagination_horizon = imagination_horizon
        self.burn_in = burn_in
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.ent_coef = ent_coef
        self.normalize_advantage = normalize_advantage
        self.max_grad_norm = max_grad_norm
        self.collect_epsilon = collect_epsilon
        self.collect_temperature = collect_temperature
        self.imagination_temperature = imagination_temperature
        self.final_training_epochs = final_training_epochs
        self.buffer_size = buffer_size
        self.replay_memory_budget_gb = replay_memory_budget_gb
        self.use_token_cache = use_token_cache
        self.reconstruction_cache_gb = reconstruction_cache_gb
        self.mixed_precision = mixed_precision
        self.channels_last = channels_last
        self.merge_last_token = merge_last_token
        self.fused_optimizers = fused_optimizers
        self.compile_imagination = compile_imagination
        self.tune_cpu_allocator = tune_cpu_allocator
        self._n_epochs = 0
        self.last_phase_seconds: dict[str, float] = {}
        self.last_collection_seconds = 0.0
        self._collection_state: Optional[LSTMState] = None
        self._progress: Optional[TrainingProgress] = None
        self._apply_preset(preset)
        self._validate_hyperparameters()
        if _init_setup_model:
            self._setup_model()

    # ----------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------

    def _apply_preset(self, preset: Optional[str]) -> None:
        """Fill the arguments left at None, and the network sizes, from the preset (see :mod:`sb3_iris.defaults`)."""
        self.preset = resolve_preset(preset, self.policy_class)
        for name, value in PRESET_HYPERPARAMETERS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.policy_kwargs = merge_policy_kwargs(self.preset, self.policy_kwargs)

    def _validate_hyperparameters(self) -> None:
        """Refuse impossible values before any work, naming the argument, the value and what is valid.

        Also non-finite numbers (NaN fails every comparison) and values of the wrong type (``buffer_size="4"``).
        """
        positive = (
            "n_steps_per_epoch",
            "tokenizer_batch_size",
            "world_model_batch_size",
            "actor_critic_batch_size",
            "sequence_length",
            "imagination_horizon",
        )
        for name in positive:
            check_integer(name, getattr(self, name), 1)
        non_negative = (
            # 0 updates per epoch freezes that part (its phase is skipped).
            "tokenizer_updates_per_epoch",
            "world_model_updates_per_epoch",
            "actor_critic_updates_per_epoch",
            "tokenizer_start_after_epochs",
            "world_model_start_after_epochs",
            "actor_critic_start_after_epochs",
            "burn_in",
        )
        for name in non_negative:
            check_integer(name, getattr(self, name), 0)
        check_final_training_epochs(self.final_training_epochs)
        if self.tokenizer_stop_after_epochs is not None:
            check_integer("tokenizer_stop_after_epochs", self.tokenizer_stop_after_epochs, 0)
        if self.imagination_horizon < 2:
            raise ValueError(f"imagination_horizon={self.imagination_horizon} must be >= 2 (the loss uses H - 1 steps)")
        for name in ("gamma", "gae_lambda", "collect_epsilon"):
            check_real(name, getattr(self, name), 0.0, 1.0)
        for name in ("collect_temperature", "imagination_temperature", "max_grad_norm"):
            check_real(name, getattr(self, name), low=0.0, low_inclusive=False)
        check_real("ent_coef", self.ent_coef, low=0.0)
        if not callable(self.learning_rate):
            check_real("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        if self.buffer_size is not None and (not is_integer(self.buffer_size) or self.buffer_size < 1):
            raise ValueError(f"buffer_size={self.buffer_size!r} must be >= 1 (an integer) or None")
        check_real("reconstruction_cache_gb", self.reconstruction_cache_gb, low=0.0)
        if self.replay_memory_budget_gb is not None:
            check_real("replay_memory_budget_gb", self.replay_memory_budget_gb, low=0.0, low_inclusive=False)
        check_policy_kwargs(self.policy_kwargs)

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        check_spaces(self.observation_space, None)
        self.performance = PerformanceOptions(
            mixed_precision=self.mixed_precision,
            channels_last=self.channels_last,
            merge_last_token=self.merge_last_token,
            fused_optimizers=self.fused_optimizers,
            compile_imagination=self.compile_imagination,
            tune_cpu_allocator=self.tune_cpu_allocator,
        ).resolved(self.device)
        # Move the networks to the target device before making the optimisers, so that fused states are created there.
        self.policy = self.policy_class(
            self.observation_space,
            self.action_space,
            self.lr_schedule,
            **self.policy_kwargs,
        )
        self.policy = self.policy.to(self.device)
        configure_modules(self.performance, self.policy.tokenizer, self.policy.actor_critic)
        self.policy.make_optimizers(self.lr_schedule, fused=bool(self.performance.fused_optimizers))
        if self.policy.world_model.config.parallel_observations and self.performance.compile_imagination:
            raise ValueError(
                "compile_imagination=True cannot be combined with world_model_kwargs parallel_observations=True "
                "(the compiled pass generates one token at a time); set one of them to False"
            )
        max_blocks = self.policy.world_model.config.max_blocks
        if self.sequence_length > max_blocks:
            raise ValueError(
                f"sequence_length={self.sequence_length} exceeds the world model's context "
                f"(world_model_kwargs max_blocks={max_blocks})"
            )
        imagined_blocks = min(self.imagination_horizon + 1, max_blocks)
        if imagined_blocks > self.sequence_length:
            warnings.warn(
                f"imagination_horizon={self.imagination_horizon} reaches block position {imagined_blocks} of the "
                f"world model, but it is trained on segments of sequence_length={self.sequence_length} blocks: the "
                f"last {imagined_blocks - self.sequence_length} imagined steps use position embeddings that never "
                f"receive training. Use sequence_length >= min(imagination_horizon + 1, max_blocks={max_blocks}) "
                "(IRIS: 20 and 20, re-priming at max_blocks=20).",
                UserWarning,
                stacklevel=2,
            )
        self.replay_buffer = self._make_replay_buffer()
        self.tokenizer_cache = FrozenTokenizerCache(
            self.policy.tokenizer,
            self.observation_space,
            self.device,
            use_token_cache=self.use_token_cache,
            reconstruction_cache_bytes=int(self.reconstruction_cache_gb * 1024**3),
            autocast=self.autocast,
        )
        self.tokenizer_cache.attach(self.replay_buffer)
        compiled = self.performance.compile_imagination
        stepper = OneTokenStepper(self.policy.world_model, compile=True) if compiled else None
        # One dream environment reused by every imagination (its KV cache is allocated once per batch size).
        self.dream_env = DreamEnv(
            self.policy.world_model, self.imagination_temperature, self.performance.merge_last_token, stepper
        )
        self._collection_state = None

    def _make_replay_buffer(self) -> EpisodeReplayBuffer:
        budget = None if self.replay_memory_budget_gb is None else int(self.replay_memory_budget_gb * 1024**3)
        return EpisodeReplayBuffer(
            self.observation_space,
            n_envs=self.n_envs,
            buffer_size=self.buffer_size,
            memory_budget_bytes=budget,
            seed=self.seed,
        )

    def _excluded_save_params(self) -> list[str]:
        # Per-run caches: device tensors that must not be pickled (a CUDA tensor would not load on a CPU machine).
        return [
            *super()._excluded_save_params(),
            "_collection_state",
            "tokenizer_cache",
            "performance",
            "_progress",
            "dream_env",
        ]

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
        cls: type[SelfIRIS],
        path: Union[str, pathlib.Path, io.BufferedIOBase],
        env: Optional[GymEnv] = None,
        device: Union[torch.device, str] = "auto",
        custom_objects: Optional[dict[str, Any]] = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfIRIS:
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

    # ----------------------------------------------------------------------------------------------
    # Data: tokens of replay observations
    # ----------------------------------------------------------------------------------------------

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast context when mixed precision is enabled for this device, else a no-op."""
        return autocast_context(self.performance, self.device)

    def to_tensor(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor on the model's device."""
        return torch.as_tensor(array, device=self.device)

    def segment_tokens(
        self, observations: np.ndarray, env_indices: np.ndarray, time_indices: np.ndarray, mask_padding: np.ndarray
    ) -> torch.Tensor:
        """Tokens ``(B, L, K)`` of a batch of segments (:meth:`FrozenTokenizerCache.segment_tokens`)."""
        return self.tokenizer_cache.segment_tokens(observations, env_indices, time_indices, mask_padding)

    def context_reconstructions(
        self, context_tokens: torch.Tensor, env_indices: np.ndarray, time_indices: np.ndarray, mask_padding: np.ndarray
    ) -> torch.Tensor:
        """Reconstructions of replay contexts (:meth:`FrozenTokenizerCache.context_reconstructions`)."""
        return self.tokenizer_cache.context_reconstructions(context_tokens, env_indices, time_indices, mask_padding)

    # ----------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------

    def imagine(self, batch_size: int, keep_observations: bool = False):
        """Imagine ``batch_size`` trajectories from real replay contexts with the current networks.

        :return: the :class:`~sb3_iris.imagination.ImaginationOutput`
        """
        batch = self.replay_buffer.sample_segments(batch_size, self.burn_in + 1, "left")
        context_tokens = self.segment_tokens(
            batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding
        )
        self.policy.tokenizer.eval()
        self.policy.world_model.eval()
        with self.autocast():
            reconstructions = self.context_reconstructions(
                context_tokens, batch.env_indices, batch.time_indices, batch.mask_padding
            )
            return imagine_rollouts(
                self.policy.tokenizer,
                self.policy.world_model,
                self.policy.actor_critic,
                context_tokens,
                self.to_tensor(batch.mask_padding),
                self.imagination_horizon,
                temperature=self.imagination_temperature,
                keep_observations=keep_observations,
                context_reconstructions=reconstructions,
                dream=self.dream_env,
            )

    def _tokenizer_stopped(self, epoch: int) -> bool:
        """True once the tokenizer's training is over (``tokenizer_stop_after_epochs``)."""
        stop = self.tokenizer_stop_after_epochs
        return stop is not None and epoch > stop

    def _phase_runs(self, epoch: int, name: str) -> bool:
        """Whether part ``name`` trains in ``epoch``: after its warm-up, before its stop, with updates to do."""
        if epoch <= getattr(self, f"{name}_start_after_epochs") or getattr(self, f"{name}_updates_per_epoch") == 0:
            return False  # a part frozen with 0 updates per epoch: no phase, no (NaN) losses logged
        return not (name == "tokenizer" and self._tokenizer_stopped(epoch))

    def train(self) -> None:
        """One epoch of training: tokenizer, then world model, then actor-critic (each after its warm-up)."""
        if self.replay_buffer.n_steps == 0:
            return
        self._update_learning_rate(self.policy.optimizers)
        epoch = self._n_epochs
        metrics: dict[str, float] = {}
        phase_times: dict[str, float] = {}
        for phase in make_phases(self):
            if not self._phase_runs(epoch, phase.name):
                continue
            if self.verbose >= 2:
                print(f"IRIS epoch {epoch}: training {phase.name}", file=sys.stderr)
            start = time.perf_counter()
            history = run_phase(phase, self._progress_reporter(epoch, phase.name))
            metrics.update(phase_metrics(phase, history))
            self._n_updates += phase.n_updates
            phase_times[phase.name] = time.perf_counter() - start
        for key, value in metrics.items():
            self.logger.record(key, value)
        self.last_phase_seconds = phase_times
        for name, seconds in phase_times.items():
            self.logger.record(f"time/{name}_seconds", seconds)
        self.logger.record("train/n_updates", self._n_updates)
        self.logger.record("train/epoch", self._n_epochs)
        self.logger.record("train/learning_rate", self.lr_schedule(self._current_progress_remaining))

    def train_part(self, name: str) -> dict[str, float]:
        """Run one part's phase now (``<name>_updates_per_epoch`` updates), whatever the schedule says.

        :param name: ``"tokenizer"``, ``"world_model"`` or ``"actor_critic"``
        :return: the phase's metrics (``train/...`` keys), not logged
        """
        (phase,) = [phase for phase in make_phases(self) if phase.name == name]
        metrics = phase_metrics(phase, run_phase(phase))
        self._n_updates += phase.n_updates
        return metrics

    def _progress_reporter(self, epoch: int, name: str) -> Optional[Callable[[int, int], None]]:
        """What reports a phase's progress (verbose >= 1 or progress_bar: sb3_iris.progress), None if nothing."""
        progress = self._progress
        if progress is None:
            return None
        return lambda done, total: progress.phase_update(epoch, name, done, total)

    # ----------------------------------------------------------------------------------------------
    # Collection
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _burn_in_collection_state(self) -> LSTMState:
        """LSTM state from the last ``burn_in`` frames of each env's ongoing episode (IRIS, at each collection)."""
        policy = self.policy
        state = policy.initial_state(self.n_envs)
        if self.burn_in == 0:
            return state
        tails = [self.replay_buffer.episode_tail(i, self.burn_in) for i in range(self.n_envs)]
        length = max(len(tail) for tail in tails)
        if length == 0:
            return state
        shape = self.observation_space.shape
        frames = np.zeros((self.n_envs, length, *shape), dtype=self.replay_buffer.observation_dtype)
        mask = np.zeros((self.n_envs, length), dtype=bool)
        for i, tail in enumerate(tails):
            if len(tail):
                frames[i, length - len(tail) :] = tail
                mask[i, length - len(tail) :] = True
        reconstructions = policy.reconstruct(self.to_tensor(frames.reshape(-1, *shape)))
        reconstructions = reconstructions.view(self.n_envs, length, *reconstructions.shape[1:])
        return policy.actor_critic.burn_in(reconstructions, self.to_tensor(mask), state)

    def _sample_collection_actions(self, episode_starts: np.ndarray) -> np.ndarray:
        policy = self.policy
        assert self._collection_state is not None
        observations = self.to_tensor(self._last_obs)
        starts = self.to_tensor(episode_starts)
        actions, self._collection_state = policy.act(
            observations, self._collection_state, starts, temperature=self.collect_temperature
        )
        actions_np = actions.cpu().numpy()
        explore = np.random.random_sample(self.n_envs) < self.collect_epsilon
        if explore.any():
            actions_np[explore] = np.random.randint(self.action_space.n, size=int(explore.sum()))
        return actions_np

    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, n_vec_steps: int) -> bool:
        """Collect ``n_vec_steps`` steps of every env into the replay; False if a callback stopped training.

        :param env: the training VecEnv
        :param callback: callback called after every env step
        :param n_vec_steps: VecEnv steps to collect
        """
        start = time.perf_counter()
        self.policy.set_training_mode(False)
        self._collection_state = self._burn_in_collection_state()
        callback.on_rollout_start()
        reward_sum = 0.0
        for step in range(n_vec_steps):
            actions = self._sample_collection_actions(self._last_episode_starts)
            try:
                if step == 0:
                    check_env_step(self._last_obs, None, self.num_timesteps)  # e.g. the observations of a reset
                new_obs, rewards, dones, infos = env.step(actions)
                check_env_step(new_obs, rewards, self.num_timesteps + env.num_envs)
            except BaseException:
                # The envs may have moved on without this step being stored: the next learn() resets them (and
                # ends the replay's ongoing episodes) instead of joining two episodes.
                self._last_obs = None
                raise
            self.num_timesteps += env.num_envs
            reward_sum += float(np.sum(rewards))

            callback.update_locals(locals())
            try:
                continue_training = callback.on_step()
            finally:
                # Stored also when the callback stops training or raises (KeyboardInterrupt): the envs took this
                # step, so dropping it would lose a transition and join two episodes in the replay.
                self._store_transition(actions, new_obs, rewards, dones, infos)
            if not continue_training:
                return False
        self.last_collection_seconds = time.perf_counter() - start
        self.logger.record("time/collection_seconds", self.last_collection_seconds)
        # Comparable with train/imagined_reward_per_step: is the world model's picture of rewards the real one?
        self.logger.record("rollout/reward_per_step", reward_sum / max(n_vec_steps * env.num_envs, 1))
        callback.on_rollout_end()
        return True

    def _store_transition(
        self, actions: np.ndarray, new_obs: np.ndarray, rewards: np.ndarray, dones: np.ndarray, infos: list[dict]
    ) -> None:
        """Add one VecEnv step to the replay and move the collection state on to ``new_obs``."""
        self._update_info_buffer(infos, dones)
        truncations = truncations_from_infos(infos, dones)
        terminations = dones & ~truncations
        self.replay_buffer.add(self._last_obs, actions, rewards, terminations, truncations)
        self._last_obs = new_obs
        self._last_episode_starts = dones
        self._episode_num += int(dones.sum())
        self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)

    # ----------------------------------------------------------------------------------------------
    # learn
    # ----------------------------------------------------------------------------------------------

    def learn(
        self: SelfIRIS,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "IRIS",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfIRIS:
        """Train: epochs of collection then training, until ``total_timesteps`` transitions were collected,
        then ``final_training_epochs`` training-only epochs.

        :param total_timesteps: environment transitions to collect (summed over envs)
        :param callback: callback(s) called at every env step (SB3 protocol)
        :param log_interval: dump the logs every this many epochs
        :param tb_log_name: TensorBoard run name
        :param reset_num_timesteps: start counting timesteps from zero (False continues the count)
        :param progress_bar: show a tqdm/rich progress bar
        """
        if self.env is None:
            # Checked before _setup_learn, whose own check is a bare assert.
            raise ValueError("IRIS.learn() needs an environment: pass env= to IRIS() or IRIS.load(), or call set_env()")
        total_timesteps = check_total_timesteps(total_timesteps)
        env_was_reset = reset_num_timesteps or self._last_obs is None
        # IRIS's own progress bar counts epochs (see sb3_iris.progress), not SB3's env steps.
        total_timesteps, callback = self._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name)
        if self.replay_buffer.n_envs != self.n_envs:
            if self.replay_buffer.n_steps > 0:
                raise ValueError(
                    f"the replay buffer holds data of {self.replay_buffer.n_envs} envs but the env has {self.n_envs}"
                )
            self.replay_buffer = self._make_replay_buffer()
        if env_was_reset:
            # The env restarted its episodes: the replay's ongoing episodes end here.
            self.replay_buffer.close_ongoing_episodes()
        self.tokenizer_cache.attach(self.replay_buffer)
        n_vec_steps = -(-self.n_steps_per_epoch // self.n_envs)
        self._apply_process_options()
        timesteps = total_timesteps - self.num_timesteps
        self._progress = self._start_progress(timesteps, n_vec_steps * self.n_envs, progress_bar)

        callback.on_training_start(locals(), globals())
        stopped, collected = False, 0
        while self.num_timesteps < total_timesteps:
            if not self.collect_rollouts(self.env, callback, n_vec_steps):
                stopped = True
                break
            collected += 1
            self._run_epoch(log_interval)
        if not stopped:
            for _ in range(final_epochs(self.final_training_epochs, collected)):
                self._run_epoch(log_interval, collected=False)
        self._progress.close()
        self._progress = None
        callback.on_training_end()
        return self

    def _apply_process_options(self) -> None:
        """The process-wide switches (the CPU allocator), applied by learn(), announced at verbose >= 1."""
        if apply_process_options(self.performance) and self.verbose >= 1:
            print(
                "IRIS: tuned glibc malloc for this process (tune_cpu_allocator; process-wide, kept after learn())",
                file=sys.stderr,
            )

    def _start_progress(self, timesteps: int, steps_per_epoch: int, progress_bar: bool) -> TrainingProgress:
        """The schedule of a learn() call: warn if a part never trains in it; print it at verbose >= 1."""
        plan = plan_epochs(
            timesteps,
            steps_per_epoch,
            self._n_epochs,
            self.final_training_epochs,
            start_after={p: getattr(self, f"{p}_start_after_epochs") for p in PARTS},
            updates_per_epoch={p: getattr(self, f"{p}_updates_per_epoch") for p in PARTS},
            stop_after={p: getattr(self, f"{p}_stop_after_epochs", None) for p in PARTS},
        )
        if plan.unreachable_parts():
            warnings.warn(unreachable_message(plan, self.final_training_epochs), UserWarning, stacklevel=3)
        progress = TrainingProgress(plan, self.verbose, progress_bar, PROGRESS_PRINT_SECONDS)
        progress.announce(schedule_line(plan, network_summary(self.policy), getattr(self, "preset", None)))
        return progress

    def _run_epoch(self, log_interval: int, collected: bool = True) -> None:
        self._n_epochs += 1
        self.train()
        progress = self._progress
        if progress is not None:
            collection_seconds = self.last_collection_seconds if collected else None
            progress.epoch_end(self._n_epochs, self.last_phase_seconds, collection_seconds)
            self.logger.record("time/seconds_left", round(progress.seconds_left()[0]))
        if log_interval > 0 and self._n_epochs % log_interval == 0:
            self.dump_logs()

    def dump_logs(self) -> None:
        """Record rollout and time statistics and write all logged values."""
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        fps = int((self.num_timesteps - self._num_timesteps_at_start) / elapsed)
        self.logger.record("time/epochs", self._n_epochs, exclude="tensorboard")
        if self.ep_info_buffer is not None and len(self.ep_info_buffer) > 0:
            self.logger.record("rollout/ep_rew_mean", safe_mean([info["r"] for info in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([info["l"] for info in self.ep_info_buffer]))
        self.logger.record("rollout/replay_steps", self.replay_buffer.n_steps)
        self.logger.record("time/fps", fps)
        self.logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)

    # ----------------------------------------------------------------------------------------------
    # Replay save / load
    # ----------------------------------------------------------------------------------------------

    def save_replay_buffer(self, path: Union[str, pathlib.Path, io.BufferedIOBase]) -> None:
        """Save the replay buffer (pickled, trimmed to the stored data, with its sampling RNG) to ``path``.

        A path is written atomically, as :meth:`save` does (``.pkl`` added when the name has no suffix).

        :param path: file or writable file-like object
        """
        from stable_baselines3.common.save_util import save_to_pkl

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
        from stable_baselines3.common.save_util import load_from_pkl

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
