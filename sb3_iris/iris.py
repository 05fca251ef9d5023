"""IRIS as a Stable-Baselines3 algorithm.

``learn()`` runs the IRIS schedule in epochs: collect ``n_steps_per_epoch`` real transitions, then
train the tokenizer, the world model and the actor-critic (in imagination), each after its warm-up.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Optional, TypeVar, Union

import numpy as np
import torch
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule

from sb3_iris.buffers import EpisodeReplayBuffer, SegmentBatch
from sb3_iris.caches import FrozenTokenizerCache
from sb3_iris.collection import IrisCollection
from sb3_iris.defaults import apply_preset
from sb3_iris.imagination import DreamEnv, OneTokenStepper, imagine_rollouts
from sb3_iris.nn.actor_critic import LSTMState
from sb3_iris.performance import PerformanceOptions, apply_process_options, autocast_context, configure_modules
from sb3_iris.persistence import IrisPersistence
from sb3_iris.policies import CnnPolicy, IrisPolicy, MlpPolicy
from sb3_iris.progress import TrainingProgress, record_epoch, record_run_statistics, start_progress
from sb3_iris.schedule import final_epochs
from sb3_iris.spaces import check_env_spaces, check_spaces
from sb3_iris.training import make_phases, train_epoch, train_phase
from sb3_iris.validation import (
    check_actor_critic_epochs,
    check_hyperparameters,
    check_networks_fit,
    check_total_timesteps,
)

SelfIRIS = TypeVar("SelfIRIS", bound="IRIS")

# At verbose >= 1, a training phase running longer than this prints its progress this often (seconds).
PROGRESS_PRINT_SECONDS = 30.0


class IRIS(IrisPersistence, IrisCollection):
    """IRIS: Transformers are Sample-Efficient World Models (Micheli et al., ICLR 2023).

    Paper: https://arxiv.org/abs/2209.00588. Defaults depend on the policy (``preset``, :mod:`sb3_iris.defaults`):
    ``CnnPolicy`` gets the published Atari 100k configuration, ``MlpPolicy`` the CPU-sized one of the tuned
    ``CartPole-v1`` entry. An argument shown as ``(a / b)`` below defaults to ``a`` under the published preset and
    to ``b`` under the vector one; ``None`` means "the preset's value".

    :param policy: ``"CnnPolicy"`` (images), ``"MlpPolicy"`` (1-D vectors) or an :class:`IrisPolicy` subclass
    :param env: environment (Gymnasium env, VecEnv or registered id); only ``Discrete`` actions
    :param learning_rate: learning rate of the three optimisers, constant or schedule (1e-4 / 1e-3)
    :param tokenizer_learning_rate: a constant learning rate of the tokenizer's optimiser instead (not in IRIS;
        None: ``learning_rate``)
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
    :param actor_critic_epochs: None: IRIS's one REINFORCE step on each imagined batch; an int N >= 1: N passes
        over each imagined batch with PPO's clipped loss, in ``actor_critic_minibatches`` minibatches of its steps,
        so each imagined transition teaches more (not in IRIS; a feed-forward actor only, ``recurrent=False``)
    :param actor_critic_minibatches: minibatches per pass with ``actor_critic_epochs`` (4)
    :param actor_critic_clip_range: PPO's clip range of the probability ratio with ``actor_critic_epochs`` (0.2)
    :param world_model_recent_fraction: share of each world-model batch whose segments start at a step drawn
        uniformly from the last ``recent_window_steps`` env transitions instead of IRIS's episode-uniform draw over
        the whole replay, so the world model learns the states a newly improved policy reaches sooner (0.0: IRIS;
        not in IRIS)
    :param world_model_event_fraction: share of each world-model batch whose segments are drawn around a stored
        step with a non-zero reward or a termination, each holding that step at a uniformly drawn position, so the
        world model sees its rare events (catches, rewards, ends) more often (0.0: IRIS; not in IRIS); with
        ``world_model_recent_fraction`` the two shares must sum to at most 1
    :param actor_critic_recent_fraction: the same for the real contexts imagination starts from (0.0: IRIS)
    :param actor_critic_event_fraction: share of the real contexts imagination starts from that are drawn up to
        ``imagination_horizon`` steps before (or at) a stored step with a non-zero reward or a termination, so the
        actor-critic imagines the moments where its actions decide a reward or a miss more often (0.0: IRIS; not
        in IRIS); with ``actor_critic_recent_fraction`` the two shares must sum to at most 1
    :param recent_window_steps: the recent window, in env transitions summed over the envs (5000)
    :param max_grad_norm: gradient-norm clip of the three optimisers (10)
    :param collect_epsilon: probability of a uniformly random action during collection (0.01)
    :param collect_epsilon_initial: if set, the collection epsilon starts here and falls linearly to
        ``collect_epsilon`` over the first ``collect_epsilon_decay_steps`` env steps, then stays there, as DQN's
        exploration schedule (None: IRIS's constant ``collect_epsilon``; not in IRIS)
    :param collect_epsilon_decay_steps: env steps (summed over the envs) of that fall; >= 1 when
        ``collect_epsilon_initial`` is set (0)
    :param collect_temperature: policy temperature during collection (1.0)
    :param imagination_temperature: sampling temperature of the world model's observation tokens (1.0; 0: the
        most likely token, not in IRIS)
    :param imagination_outcome_temperature: sampling temperature of the imagined rewards and ends (1.0: IRIS samples
        both; 0: the most likely class, so an imagined episode ends only where the end head's probability passes
        1/2; not in IRIS)
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
    :param inverse_cdf_sampling: draw imagined tokens, rewards and ends by inverting their cumulative distribution
        with one uniform number per row instead of ``torch.multinomial`` (the same distribution, a different random
        stream; about a fifth off a MinAtar actor-critic update on a CPU, see the README's performance section)
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
        tokenizer_learning_rate: Optional[float] = None,
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
        actor_critic_epochs: Optional[int] = None,
        actor_critic_minibatches: int = 4,
        actor_critic_clip_range: float = 0.2,
        world_model_recent_fraction: float = 0.0,
        world_model_event_fraction: float = 0.0,
        actor_critic_recent_fraction: float = 0.0,
        actor_critic_event_fraction: float = 0.0,
        recent_window_steps: int = 5000,
        max_grad_norm: float = 10.0,
        collect_epsilon: float = 0.01,
        collect_epsilon_initial: Optional[float] = None,
        collect_epsilon_decay_steps: int = 0,
        collect_temperature: float = 1.0,
        imagination_temperature: float = 1.0,
        imagination_outcome_temperature: float = 1.0,
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
        inverse_cdf_sampling: bool = False,
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
            # None: sb3_iris.spaces is the one place of space checks (ValueErrors that name the space, run before
            # SB3 wraps the env; SB3's own check is a bare assertion after it).
            supported_action_spaces=None,
        )
        if self.env is not None:
            check_env_spaces(self.env)
        self.n_steps_per_epoch = n_steps_per_epoch
        self.tokenizer_learning_rate = tokenizer_learning_rate
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
        self.actor_critic_epochs = actor_critic_epochs
        self.actor_critic_minibatches = actor_critic_minibatches
        self.actor_critic_clip_range = actor_critic_clip_range
        self.world_model_recent_fraction = world_model_recent_fraction
        self.world_model_event_fraction = world_model_event_fraction
        self.actor_critic_recent_fraction = actor_critic_recent_fraction
        self.actor_critic_event_fraction = actor_critic_event_fraction
        self.recent_window_steps = recent_window_steps
        self.max_grad_norm = max_grad_norm
        self.collect_epsilon = collect_epsilon
        self.collect_epsilon_initial = collect_epsilon_initial
        self.collect_epsilon_decay_steps = collect_epsilon_decay_steps
        self.collect_temperature = collect_temperature
        self.imagination_temperature = imagination_temperature
        self.imagination_outcome_temperature = imagination_outcome_temperature
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
        self.inverse_cdf_sampling = inverse_cdf_sampling
        self._n_epochs = 0
        self.last_phase_seconds: dict[str, float] = {}
        self.last_collection_seconds = 0.0
        self._collection_state: Optional[LSTMState] = None
        self._progress: Optional[TrainingProgress] = None
        apply_preset(self, preset)  # the arguments left at None (sb3_iris.defaults)
        check_hyperparameters(self)  # impossible values refused before any work (sb3_iris.validation)
        if _init_setup_model:
            self._setup_model()

    # ----------------------------------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------------------------------

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
            inverse_cdf_sampling=self.inverse_cdf_sampling,
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
        check_actor_critic_epochs(self.actor_critic_epochs, self.policy.actor_critic.config)
        check_networks_fit(
            self.policy.world_model.config, self.sequence_length, self.imagination_horizon, self.performance
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
            self.policy.world_model,
            self.imagination_temperature,
            self.performance.merge_last_token,
            stepper,
            inverse_cdf_sampling=self.performance.inverse_cdf_sampling,
        )
        self._collection_state = None

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

    def sample_replay_segments(
        self,
        batch_size: int,
        sequence_length: int,
        padding: str,
        recent_fraction: float,
        event_fraction: float = 0.0,
        event_lead: int = 0,
    ) -> SegmentBatch:
        """Replay segments, ``recent_fraction`` of them from the last ``recent_window_steps`` env transitions and
        ``event_fraction`` of them around rewarded or terminal steps.

        :param batch_size: number of segments
        :param sequence_length: steps per segment
        :param padding: ``"right"`` (world-model segments) or ``"left"`` (imagination contexts)
        :param recent_fraction: ``world_model_recent_fraction`` or ``actor_critic_recent_fraction``
        :param event_fraction: ``world_model_event_fraction`` or ``actor_critic_event_fraction``
        :param event_lead: how many steps after an event segment its event may lie (imagination: the horizon)
        :return: the batch
        """
        recent_time_steps = max(1, math.ceil(self.recent_window_steps / self.n_envs))
        return self.replay_buffer.sample_segments(
            batch_size,
            sequence_length,
            padding,
            recent_fraction=recent_fraction,
            recent_time_steps=recent_time_steps,
            event_fraction=event_fraction,
            event_lead=event_lead,
        )

    def imagine(self, batch_size: int, keep_observations: bool = False):
        """Imagine ``batch_size`` trajectories from real replay contexts with the current networks.

        :return: the :class:`~sb3_iris.imagination.ImaginationOutput`
        """
        batch = self.sample_replay_segments(
            batch_size,
            self.burn_in + 1,
            "left",
            self.actor_critic_recent_fraction,
            self.actor_critic_event_fraction,
            event_lead=self.imagination_horizon,
        )
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
                outcome_temperature=self.imagination_outcome_temperature,
                context_reconstructions=reconstructions,
                dream=self.dream_env,
            )

    def train(self) -> None:
        """One epoch of training: tokenizer, then world model, then actor-critic (each after its warm-up)."""
        if self.replay_buffer.n_steps == 0:
            return
        self._update_learning_rate(self.policy.optimizers)
        if self.tokenizer_learning_rate is not None:
            for group in self.policy.tokenizer_optimizer.param_groups:
                group["lr"] = self.tokenizer_learning_rate
        metrics, self.last_phase_seconds = train_epoch(self, self._n_epochs, self._progress)  # sb3_iris.training
        learning_rate = self.lr_schedule(self._current_progress_remaining)
        record_epoch(self.logger, metrics, self.last_phase_seconds, self._n_updates, self._n_epochs, learning_rate)

    def train_part(self, name: str) -> dict[str, float]:
        """Run one part's phase now (``<name>_updates_per_epoch`` updates), whatever the schedule says.

        :param name: ``"tokenizer"``, ``"world_model"`` or ``"actor_critic"``
        :return: the phase's metrics (``train/...`` keys), not logged
        """
        (phase,) = [phase for phase in make_phases(self) if phase.name == name]
        return train_phase(self, phase)

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
        self._prepare_replay(env_was_reset)  # sb3_iris.collection
        self.tokenizer_cache.attach(self.replay_buffer)
        n_vec_steps = -(-self.n_steps_per_epoch // self.n_envs)
        timesteps = total_timesteps - self.num_timesteps
        progress_args = (timesteps, n_vec_steps * self.n_envs, progress_bar, PROGRESS_PRINT_SECONDS)
        self._progress = start_progress(self, *progress_args)  # plan, warnings, schedule line: sb3_iris.progress
        if apply_process_options(self.performance):
            self._progress.note("IRIS: tuned glibc malloc for this process (tune_cpu_allocator; process-wide, kept)")

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
        """Record the rollout and time statistics (:mod:`sb3_iris.progress`) and write all logged values."""
        record_run_statistics(self)
        self.logger.dump(step=self.num_timesteps)
