"""Collecting real transitions into the replay, with the IRIS collection policy.

:class:`IrisCollection` is the part of :class:`~sb3_iris.iris.IRIS` that steps the training ``VecEnv`` (the SB3
contract: ``num_timesteps``, callbacks with the locals ``new_obs``, ``rewards``, ``dones``, ``infos``): before each
collection the actor's LSTM is burned in on the last ``burn_in`` frames of each env's ongoing episode, actions are
sampled at ``collect_temperature`` with ``collect_epsilon`` random actions (IRIS; optionally annealed, see
:meth:`IrisCollection.current_collect_epsilon`), and every step is stored in the
replay, also when a callback stops training or raises. It also makes the replay and readies it at the start of
each ``learn()`` call (one per env count; the ongoing episodes closed when the envs restart).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_iris.buffers import EpisodeReplayBuffer
from sb3_iris.envs import truncations_from_infos
from sb3_iris.nn.actor_critic import LSTMState
from sb3_iris.validation import check_env_step

if TYPE_CHECKING:
    from sb3_iris.policies import IrisPolicy

__all__ = ["IrisCollection"]


class IrisCollection(BaseAlgorithm):
    """Real-env collection of IRIS (a base of :class:`~sb3_iris.iris.IRIS`; see the module docstring)."""

    policy: IrisPolicy
    replay_buffer: EpisodeReplayBuffer
    burn_in: int
    collect_epsilon: float
    collect_epsilon_initial: Optional[float]
    collect_epsilon_decay_steps: int
    collect_temperature: float
    last_collection_seconds: float
    buffer_size: Optional[int]
    replay_memory_budget_gb: Optional[float]
    _collection_state: Optional[LSTMState]

    def _make_replay_buffer(self) -> EpisodeReplayBuffer:
        budget = None if self.replay_memory_budget_gb is None else int(self.replay_memory_budget_gb * 1024**3)
        return EpisodeReplayBuffer(
            self.observation_space,
            n_envs=self.n_envs,
            buffer_size=self.buffer_size,
            memory_budget_bytes=budget,
            seed=self.seed,
        )

    def _prepare_replay(self, env_was_reset: bool) -> None:
        """At the start of ``learn()``: a replay of the env's ``n_envs`` (an empty one of another count is made anew,
        a filled one refused), its ongoing episodes ended when the env restarted them."""
        if self.replay_buffer.n_envs != self.n_envs:
            if self.replay_buffer.n_steps > 0:
                raise ValueError(
                    f"the replay buffer holds data of {self.replay_buffer.n_envs} envs but the env has {self.n_envs}"
                )
            self.replay_buffer = self._make_replay_buffer()
        if env_was_reset:
            # The env restarted its episodes: the replay's ongoing episodes end here.
            self.replay_buffer.close_ongoing_episodes()

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

    def current_collect_epsilon(self) -> float:
        """Probability of a uniformly random action at the current ``num_timesteps``: ``collect_epsilon`` (IRIS), or,
        with ``collect_epsilon_initial`` set, a linear fall from it to ``collect_epsilon`` over the first
        ``collect_epsilon_decay_steps`` env steps."""
        if self.collect_epsilon_initial is None:
            return self.collect_epsilon
        progress = min(1.0, self.num_timesteps / self.collect_epsilon_decay_steps)
        return self.collect_epsilon_initial + progress * (self.collect_epsilon - self.collect_epsilon_initial)

    def _sample_collection_actions(self, episode_starts: np.ndarray) -> np.ndarray:
        policy = self.policy
        assert self._collection_state is not None
        observations = self.to_tensor(self._last_obs)
        starts = self.to_tensor(episode_starts)
        actions, self._collection_state = policy.act(
            observations, self._collection_state, starts, temperature=self.collect_temperature
        )
        actions_np = actions.cpu().numpy()
        explore = np.random.random_sample(self.n_envs) < self.current_collect_epsilon()
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
