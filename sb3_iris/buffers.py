"""World-model-aware replay: episodes on a common time axis, segment sampling with padding masks and
burn-in contexts.

IRIS (Micheli et al., 2023) trains its world model on segments of consecutive steps sampled from
stored episodes, padded with zeros (and a mask) where a segment runs past an episode edge. The
buffer here keeps the data of a ``VecEnv`` as one array per field of shape ``(n_envs, capacity, ...)``
(all envs are stepped together, so they share the time axis) and tracks where every episode starts
and ends. Every stored step has an *absolute* time index (the number of ``add`` calls before it) that
never changes, whatever growth or eviction happens: burn-in contexts and the entries of the frozen
tokenizer's caches (:mod:`sb3_iris.caches`) are addressed by ``(env_index, time_index)``.
"""

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from gymnasium import spaces

__all__ = ["EpisodeReplayBuffer", "SegmentBatch"]

PADDINGS = ("both", "left", "right")


@dataclass
class SegmentBatch:
    """A batch of segments of consecutive steps, each inside one episode.

    :param observations: ``(B, L, *obs_shape)``, dtype as stored (uint8 images, float32 vectors),
        zeros where padded
    :param actions: ``(B, L)`` int64, 0 where padded
    :param rewards: ``(B, L)`` float32, 0 where padded
    :param terminations: ``(B, L)`` bool, False where padded
    :param truncations: ``(B, L)`` bool, False where padded
    :param mask_padding: ``(B, L)`` bool, True for real steps
    :param env_indices: ``(B, L)`` int64, env of each step (the segment's env, also where padded)
    :param time_indices: ``(B, L)`` int64, absolute time index of each step, -1 where padded
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    mask_padding: np.ndarray
    env_indices: np.ndarray
    time_indices: np.ndarray


def _storage_dtype(observation_space: spaces.Space) -> np.dtype:
    """The dtype observations are stored with: uint8 for uint8 ``Box`` spaces of any rank (images),
    float32 for 1-D floating-point ``Box`` spaces (vectors).

    :param observation_space: the environment's observation space
    :return: the storage dtype
    """
    if not isinstance(observation_space, spaces.Box):
        raise TypeError(
            f"EpisodeReplayBuffer needs a gymnasium.spaces.Box observation space (uint8 images or 1-D float "
            f"vectors), got observation_space={observation_space!r}"
        )
    if observation_space.dtype == np.uint8:
        return np.dtype(np.uint8)
    if np.issubdtype(observation_space.dtype, np.floating) and len(observation_space.shape) == 1:
        return np.dtype(np.float32)
    raise ValueError(
        f"EpisodeReplayBuffer supports uint8 Box spaces (images) and 1-D float Box spaces (vectors), got "
        f"observation_space={observation_space!r}"
    )


def _check_positive(name: str, value: int) -> int:
    """:param name: the argument's name, for the error message
    :param value: the value received
    :return: ``value`` as an int, if it is > 0
    """
    if int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    return int(value)


class EpisodeReplayBuffer:
    """Replay buffer that stores whole episodes of a ``VecEnv`` and samples frames or padded segments,
    as the IRIS world model and actor-critic need them.

    Storage is a ring over a common time axis, ``(n_envs, capacity, ...)`` per field, that starts at
    ``initial_capacity`` steps and grows by 1.5x (``np.empty`` + copy of the live steps only), so a
    large ``buffer_size`` costs nothing until it is filled. Images are kept as uint8, vectors as
    float32.

    Eviction: when the stored steps exceed ``buffer_size`` or the bytes exceed ``memory_budget_bytes``
    after an ``add``, the oldest data is dropped as a time prefix that ends at the end of the oldest
    completed episode(s), repeated until the limits hold. With ``n_envs=1`` that is whole-episode
    eviction, as in the reference; with several envs, an episode of another env that straddles the cut
    keeps only its steps after the cut. When no completed episode can be dropped without emptying the
    buffer (a single ongoing episode longer than the limit), the oldest steps are dropped instead and
    the episode is truncated at the front. Dropping is O(1) (the ring's head moves); absolute time
    indices are unchanged.

    :param observation_space: a ``Box`` space: uint8 images of any rank or 1-D float vectors
    :param n_envs: number of parallel environments (steps are added for all of them at once)
    :param buffer_size: maximum number of stored steps, summed over envs (None: no limit)
    :param memory_budget_bytes: maximum ``nbytes`` of stored data (None: no limit)
    :param initial_capacity: number of time steps allocated at first; storage grows as needed
    :param seed: seed of the buffer's own ``np.random.Generator``
    """

    growth_factor = 1.5
    #: The ``Discrete`` action space of the stored actions, recorded by ``IRIS.save_replay_buffer`` so that a
    #: load into a model with another action space is refused (None: unknown, e.g. a file of an older version).
    action_space: Optional[spaces.Discrete] = None
    #: Bytes per stored step (and env) of data kept alongside the replay by others, e.g. the token table of
    #: :class:`~sb3_iris.caches.FrozenTokenizerCache`: counted in ``nbytes`` and so in ``memory_budget_bytes``.
    extra_bytes_per_time_step: int = 0

    def __init__(
        self,
        observation_space: spaces.Box,
        n_envs: int = 1,
        buffer_size: Optional[int] = None,
        memory_budget_bytes: Optional[int] = None,
        initial_capacity: int = 1024,
        seed: Optional[int] = None,
    ) -> None:
        self._obs_dtype = _storage_dtype(observation_space)
        self.observation_space = observation_space
        self.obs_shape: tuple[int, ...] = tuple(int(d) for d in observation_space.shape)
        self.n_envs = _check_positive("n_envs", n_envs)
        self.buffer_size = None if buffer_size is None else _check_positive("buffer_size", buffer_size)
        self.memory_budget_bytes = (
            None if memory_budget_bytes is None else _check_positive("memory_budget_bytes", memory_budget_bytes)
        )
        self.initial_capacity = _check_positive("initial_capacity", initial_capacity)

        if self.buffer_size is not None and self.buffer_size < self.n_envs:
            raise ValueError(
                f"buffer_size must hold at least one step per env (>= n_envs={self.n_envs}), got "
                f"buffer_size={self.buffer_size}"
            )
        if self.memory_budget_bytes is not None and self.memory_budget_bytes < self._bytes_per_time_step():
            raise ValueError(
                f"memory_budget_bytes must hold at least one step per env (>= {self._bytes_per_time_step()} bytes), "
                f"got memory_budget_bytes={self.memory_budget_bytes}"
            )
        self.rng = np.random.default_rng(seed)

        # Ring storage: the live time steps are [_offset, _end) in absolute time, at ring positions
        # (_head + t - _offset) % _capacity.
        self._capacity = 0
        self._head = 0
        self._offset = 0
        self._end = 0
        self._observations = np.empty((self.n_envs, 0, *self.obs_shape), dtype=self._obs_dtype)
        self._actions = np.empty((self.n_envs, 0), dtype=np.int64)
        self._rewards = np.empty((self.n_envs, 0), dtype=np.float32)
        self._terminations = np.empty((self.n_envs, 0), dtype=bool)
        self._truncations = np.empty((self.n_envs, 0), dtype=bool)

        # Completed episodes as rows (env, start, end) in absolute time, appended in order of their
        # end, live rows are [_episodes_head, _episodes_count). Starts before _offset are clipped when read.
        self._episodes = np.empty((16, 3), dtype=np.int64)
        self._episodes_head = 0
        self._episodes_count = 0
        self._ongoing_starts = np.zeros(self.n_envs, dtype=np.int64)

    # ------------------------------------------------------------------ sizes

    def size(self) -> int:
        """:return: number of stored time steps per env (SB3's ``BaseBuffer.size()`` convention);
        ``n_steps == size() * n_envs``
        """
        return self._end - self._offset

    @property
    def n_steps(self) -> int:
        """Number of stored steps, summed over envs."""
        return self.size() * self.n_envs

    @property
    def n_episodes(self) -> int:
        """Number of stored episodes (fully or partly), including ongoing episodes with at least one step."""
        return (self._episodes_count - self._episodes_head) + int(np.count_nonzero(self._ongoing_lengths() > 0))

    @property
    def nbytes(self) -> int:
        """Bytes of stored data in use (live steps of every field, and ``extra_bytes_per_time_step`` for each)."""
        return self.size() * self._bytes_per_time_step()

    @property
    def time_range(self) -> tuple[int, int]:
        """The absolute time indices ``[first, end)`` currently stored (the same for every env)."""
        return self._offset, self._end

    def _bytes_per_time_step(self) -> int:
        per_step = int(np.prod(self.obs_shape, dtype=np.int64)) * self._obs_dtype.itemsize + 8 + 4 + 1 + 1
        return (per_step + self.extra_bytes_per_time_step) * self.n_envs

    def _max_time_steps(self) -> Optional[int]:
        """The largest ``size()`` allowed by ``buffer_size`` and ``memory_budget_bytes`` (None: unbounded)."""
        limits = []
        if self.buffer_size is not None:
            limits.append(self.buffer_size // self.n_envs)
        if self.memory_budget_bytes is not None:
            limits.append(self.memory_budget_bytes // self._bytes_per_time_step())
        return max(1, min(limits)) if limits else None

    # ------------------------------------------------------------------ adding

    def add(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        truncations: np.ndarray,
    ) -> None:
        """Store one ``VecEnv`` step for every env. An episode ends at a step whose termination or
        truncation is True; the next ``add`` starts a new episode for that env.

        :param observations: ``(n_envs, *obs_shape)``, the observations the actions were taken in
        :param actions: ``(n_envs,)`` discrete actions
        :param rewards: ``(n_envs,)`` rewards received for the actions
        :param terminations: ``(n_envs,)`` True where the episode terminated at this step
        :param truncations: ``(n_envs,)`` True where the episode was truncated (time limit) at this step
        """
        observations = np.asarray(observations)
        expected = (self.n_envs, *self.obs_shape)
        if observations.shape != expected:
            raise ValueError(
                f"observations must have shape (n_envs, *obs_shape) = {expected}, got shape {observations.shape}"
            )
        actions = self._per_env("actions", actions)
        rewards = self._per_env("rewards", rewards)
        terminations = self._per_env("terminations", terminations).astype(bool)
        truncations = self._per_env("truncations", truncations).astype(bool)

        if self.size() == self._capacity:
            self._grow()
        position = (self._head + self.size()) % self._capacity
        self._observations[:, position] = observations
        self._actions[:, position] = actions
        self._rewards[:, position] = rewards
        self._terminations[:, position] = terminations
        self._truncations[:, position] = truncations
        self._end += 1

        for env_index in np.flatnonzero(terminations | truncations):
            self._append_episode(int(env_index), int(self._ongoing_starts[env_index]), self._end)
            self._ongoing_starts[env_index] = self._end
        self._evict()

    def close_ongoing_episodes(self) -> None:
        """End every env's unfinished episode here (marked truncated at its last stored step).

        Called when the envs are reset outside the normal flow (a new ``learn()``, a loaded buffer), so that
        the next ``add`` starts new episodes instead of joining the old ones.
        """
        if self._capacity == 0:
            return
        last_position = (self._head + self.size() - 1) % self._capacity
        for env_index in np.flatnonzero(self._ongoing_lengths() > 0):
            self._truncations[env_index, last_position] = True
            self._append_episode(int(env_index), int(self._ongoing_starts[env_index]), self._end)
            self._ongoing_starts[env_index] = self._end

    @property
    def observation_dtype(self) -> np.dtype:
        """dtype of the stored observations (uint8 images, float32 vectors)."""
        return self._obs_dtype

    def _per_env(self, name: str, values: Any) -> np.ndarray:
        values = np.asarray(values)
        if values.size != self.n_envs or values.ndim > 2:
            raise ValueError(f"{name} must have shape (n_envs,) = ({self.n_envs},), got shape {values.shape}")
        return values.reshape(self.n_envs)

    def _grow(self) -> None:
        """Reallocate the ring with more capacity (at most what the limits can use), live steps first."""
        size = self.size()
        new_capacity = max(self.initial_capacity, math.ceil(self._capacity * self.growth_factor))
        max_steps = self._max_time_steps()
        if max_steps is not None:
            # An add may exceed the limit by one step before eviction.
            new_capacity = min(new_capacity, max_steps + 1)
        new_capacity = max(new_capacity, size + 1)
        for name in ("_observations", "_actions", "_rewards", "_terminations", "_truncations"):
            old = getattr(self, name)
            new = np.empty((self.n_envs, new_capacity, *old.shape[2:]), dtype=old.dtype)
            self._copy_live(old, new)
            setattr(self, name, new)
        self._capacity = new_capacity
        self._head = 0

    def _copy_live(self, source: np.ndarray, target: np.ndarray) -> None:
        """Copy the live steps of a ring array to the front of ``target``, oldest first."""
        size = self.size()
        first = min(size, self._capacity - self._head)
        target[:, :first] = source[:, self._head : self._head + first]
        target[:, first:size] = source[:, : size - first]

    def _append_episode(self, env_index: int, start: int, end: int) -> None:
        if self._episodes_count == len(self._episodes):
            live = self._episodes[self._episodes_head : self._episodes_count]
            episodes = np.empty((max(16, 2 * len(live)), 3), dtype=np.int64)
            episodes[: len(live)] = live
            self._episodes, self._episodes_head, self._episodes_count = episodes, 0, len(live)
        self._episodes[self._episodes_count] = (env_index, start, end)
        self._episodes_count += 1

    def _evict(self) -> None:
        """Drop the oldest time prefix until ``buffer_size`` and ``memory_budget_bytes`` hold."""
        max_steps = self._max_time_steps()
        if max_steps is None or self.size() <= max_steps:
            return
        required_offset = self._end - max_steps
        ends = self._episodes[self._episodes_head : self._episodes_count, 2]
        # Cutting at the ends of the oldest completed episodes one after the other stops at the first
        # end that satisfies the limit; unless that would empty the buffer, then cut exactly.
        index = int(np.searchsorted(ends, required_offset, side="left"))
        if index < len(ends) and ends[index] < self._end:
            new_offset = int(ends[index])
        else:
            new_offset = required_offset
        self._head = (self._head + new_offset - self._offset) % self._capacity
        self._offset = new_offset
        self._episodes_head += int(np.searchsorted(ends, new_offset, side="right"))

    # ------------------------------------------------------------------ episodes and indexing

    def _ongoing_lengths(self) -> np.ndarray:
        return self._end - np.maximum(self._ongoing_starts, self._offset)

    def _episode_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:return: ``(env_indices, starts, ends)`` of every sampleable episode (completed ones first,
        then non-empty ongoing ones), starts clipped to the first stored step
        """
        completed = self._episodes[self._episodes_head : self._episodes_count]
        ongoing_envs = np.flatnonzero(self._ongoing_lengths() > 0)
        envs = np.concatenate([completed[:, 0], ongoing_envs])
        starts = np.maximum(np.concatenate([completed[:, 1], self._ongoing_starts[ongoing_envs]]), self._offset)
        ends = np.concatenate([completed[:, 2], np.full(len(ongoing_envs), self._end, dtype=np.int64)])
        return envs, starts, ends

    def _check_not_empty(self) -> None:
        if self.size() == 0:
            raise ValueError(
                f"cannot sample from an empty EpisodeReplayBuffer (n_steps={self.n_steps}): call add() first"
            )

    def _sample_episodes(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample episodes uniformly, then a time uniformly inside each.

        :return: ``(env_indices, starts, ends, times)``, each ``(batch_size,)``
        """
        batch_size = _check_positive("batch_size", batch_size)
        self._check_not_empty()
        envs, starts, ends = self._episode_table()
        chosen = self.rng.integers(0, len(envs), size=batch_size)
        envs, starts, ends = envs[chosen], starts[chosen], ends[chosen]
        times = starts + self.rng.integers(0, ends - starts)
        return envs, starts, ends, times

    def _episodes_holding(self, envs: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The episode that holds each stored ``(env, time)`` pair.

        :return: ``(starts, ends)`` of those episodes, each shaped as ``times``
        """
        table_envs, table_starts, table_ends = self._episode_table()
        # Episodes sorted by (env, start); the episode holding (env, t) is the last one of env starting at or before t.
        stride = self._end + 1
        keys = table_envs.astype(np.int64) * stride + table_starts
        order = np.argsort(keys, kind="stable")
        rows = order[np.searchsorted(keys[order], envs.astype(np.int64) * stride + times, side="right") - 1]
        starts, ends = table_starts[rows], table_ends[rows]
        if not (np.all(table_envs[rows] == envs) and np.all((starts <= times) & (times < ends))):
            raise RuntimeError("replay episode table does not cover its stored steps: the buffer is corrupt")
        return starts, ends

    def _sample_recent_episodes(
        self, batch_size: int, recent_time_steps: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample a step uniformly among the last ``recent_time_steps`` time steps of every env (each stored step
        equally likely), with the episode that holds it.

        :return: ``(env_indices, starts, ends, times)``, each ``(batch_size,)``
        """
        batch_size = _check_positive("batch_size", batch_size)
        recent_time_steps = _check_positive("recent_time_steps", recent_time_steps)
        self._check_not_empty()
        first_time = max(self._offset, self._end - recent_time_steps)
        envs = self.rng.integers(0, self.n_envs, size=batch_size)
        times = self.rng.integers(first_time, self._end, size=batch_size)
        starts, ends = self._episodes_holding(envs, times)
        return envs, starts, ends, times

    def event_steps(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored step with a non-zero reward or a termination (the rare steps whose reward and end the
        world model must predict).

        :return: ``(env_indices, time_indices)`` of those steps
        """
        times = np.arange(self._offset, self._end)
        positions = self._positions(times)
        events = (self._rewards[:, positions] != 0) | self._terminations[:, positions]
        envs, columns = np.nonzero(events)
        return envs, times[columns]

    def _sample_event_segments(
        self, batch_size: int, sequence_length: int, from_t: np.ndarray, event_lead: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Sample a step uniformly among :meth:`event_steps`, then a time ``t`` such that the segment at ``t``
        holds that step at a uniformly drawn position, or has it up to ``event_lead`` steps after its last step
        (clipped to its episode). With no event stored, fall back to :meth:`_sample_episodes`.

        :param from_t: ``(batch_size,)`` True where the segment starts at ``t`` (``"right"``), False where it
            ends there (``"left"``)
        :param event_lead: how many steps after the segment the event may also lie (0: inside the segment)
        :return: ``(env_indices, starts, ends, times)``, each ``(batch_size,)``
        """
        event_envs, event_times = self.event_steps()
        if len(event_envs) == 0:
            return self._sample_episodes(batch_size)
        chosen = self.rng.integers(0, len(event_envs), size=batch_size)
        envs, events = event_envs[chosen], event_times[chosen]
        # The event's offset from the segment's first step: inside it, or up to event_lead steps after it.
        first = events - self.rng.integers(0, sequence_length + event_lead, size=batch_size)
        times = np.where(from_t, first, first + sequence_length - 1)
        starts, ends = self._episodes_holding(envs, events)
        return envs, starts, ends, np.clip(times, starts, ends - 1)

    def _positions(self, time_indices: np.ndarray) -> np.ndarray:
        """Ring positions of absolute time indices (which must be stored)."""
        return (self._head + time_indices - self._offset) % max(self._capacity, 1)

    def contains(self, env_indices: np.ndarray, time_indices: np.ndarray) -> np.ndarray:
        """Mask of ``(env, time)`` pairs that are currently stored (same shapes in and out)."""
        return (
            (env_indices >= 0)
            & (env_indices < self.n_envs)
            & (time_indices >= self._offset)
            & (time_indices < self._end)
        )

    def check_stored(self, env_indices: np.ndarray, time_indices: np.ndarray) -> None:
        """Raise ``IndexError`` naming the first ``(env, time)`` pair that is not stored."""
        stored = self.contains(env_indices, time_indices)
        if not stored.all():
            bad = np.flatnonzero(~stored.ravel())[0]
            raise IndexError(
                f"(env_index, time_index)=({env_indices.ravel()[bad]}, {time_indices.ravel()[bad]}) is not stored: "
                f"env indices must be in [0, {self.n_envs}) and time indices in [{self._offset}, {self._end})"
            )

    # ------------------------------------------------------------------ sampling

    def sample_frames(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample single frames: an episode uniformly, then a time uniformly inside it.

        :param batch_size: number of frames
        :return: ``(frames (B, *obs_shape), env_indices (B,), time_indices (B,))``
        """
        envs, _, _, times = self._sample_episodes(batch_size)
        return self._observations[envs, self._positions(times)], envs, times

    def sample_segments(
        self,
        batch_size: int,
        sequence_length: int,
        padding: str = "both",
        recent_fraction: float = 0.0,
        recent_time_steps: Optional[int] = None,
        event_fraction: float = 0.0,
        event_lead: int = 0,
    ) -> SegmentBatch:
        """Sample segments of consecutive steps inside episodes: an episode uniformly, then a time ``t``
        uniformly inside it, then a segment at ``t`` that is padded (zeros, ``mask_padding`` False) where it
        runs past the episode's edges. The IRIS reference samples world-model segments with ``"right"``
        (they start at ``t``: padding only after the real steps, so position 0 is always a real frame, as in
        imagination) and burn-in contexts with ``"left"``.

        :param batch_size: number of segments
        :param sequence_length: steps per segment
        :param padding: ``"right"``: the segment starts at ``t`` (world-model segments); ``"left"``: it
            ends at ``t``, so its last step is always real (burn-in contexts); ``"both"``: each of the two
            with probability 0.5 (not used by IRIS)
        :param recent_fraction: share of the segments whose time ``t`` is drawn instead uniformly among the last
            ``recent_time_steps`` steps of each env (0: IRIS's episode-uniform sampling only); their number is
            ``round(recent_fraction * batch_size)``, and they come last in the batch
        :param recent_time_steps: the recent window in time steps per env (required with ``recent_fraction > 0``)
        :param event_fraction: share of the segments drawn instead around a step with a non-zero reward or a
            termination (:meth:`event_steps`), each holding that step at a uniformly drawn position (0: IRIS);
            their number is ``round(event_fraction * batch_size)``, and they come last in the batch
        :param event_lead: the event of an event segment may also lie up to this many steps after the segment's
            last step (0: inside the segment; imagination contexts use the imagination horizon, so that the
            imagined steps reach it)
        :return: the batch of segments
        """
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got padding={padding!r}")
        sequence_length = _check_positive("sequence_length", sequence_length)
        batch_size = _check_positive("batch_size", batch_size)
        if not 0.0 <= recent_fraction <= 1.0:
            raise ValueError(f"recent_fraction must be in [0, 1], got recent_fraction={recent_fraction!r}")
        if not 0.0 <= event_fraction <= 1.0:
            raise ValueError(f"event_fraction must be in [0, 1], got event_fraction={event_fraction!r}")
        if not isinstance(event_lead, (int, np.integer)) or event_lead < 0:
            raise ValueError(f"event_lead must be an integer >= 0, got event_lead={event_lead!r}")
        if recent_fraction + event_fraction > 1.0:
            raise ValueError(
                f"recent_fraction + event_fraction must be <= 1, got recent_fraction={recent_fraction!r} and "
                f"event_fraction={event_fraction!r}"
            )
        n_recent = int(round(recent_fraction * batch_size))
        n_event = min(int(round(event_fraction * batch_size)), batch_size - n_recent)
        if n_recent > 0 and recent_time_steps is None:
            raise ValueError(f"recent_fraction={recent_fraction} needs recent_time_steps (time steps per env)")
        n_uniform = batch_size - n_recent - n_event
        parts = []
        if n_uniform > 0:
            parts.append(self._sample_episodes(n_uniform))
        if n_recent > 0:
            parts.append(self._sample_recent_episodes(n_recent, recent_time_steps))
        event_from_t = np.empty(0, dtype=bool)
        if n_event > 0:
            event_from_t = self._segment_directions(padding, n_event)
            parts.append(self._sample_event_segments(n_event, sequence_length, event_from_t, event_lead))
        envs, starts, ends, times = (np.concatenate(values) for values in zip(*parts))
        from_t = np.concatenate([self._segment_directions(padding, batch_size - n_event), event_from_t])
        first = np.where(from_t, times, times - sequence_length + 1)
        time_indices = first[:, None] + np.arange(sequence_length)
        mask = (time_indices >= starts[:, None]) & (time_indices < ends[:, None])
        time_indices = np.where(mask, time_indices, -1)
        env_indices = np.broadcast_to(envs[:, None], mask.shape).copy()
        positions = self._positions(np.where(mask, time_indices, times[:, None]))

        batch = SegmentBatch(
            observations=self._observations[env_indices, positions],
            actions=self._actions[env_indices, positions],
            rewards=self._rewards[env_indices, positions],
            terminations=self._terminations[env_indices, positions],
            truncations=self._truncations[env_indices, positions],
            mask_padding=mask,
            env_indices=env_indices,
            time_indices=time_indices,
        )
        padded = ~mask
        if padded.any():
            for values in (batch.observations, batch.actions, batch.rewards, batch.terminations, batch.truncations):
                values[padded] = 0
        return batch

    def _segment_directions(self, padding: str, n: int) -> np.ndarray:
        """:return: ``(n,)`` True where a segment starts at its sampled time (``"right"``), False where it ends
        there (``"left"``); ``"both"`` draws each with probability 0.5
        """
        if padding == "both":
            return self.rng.random(n) < 0.5
        return np.full(n, padding == "right")

    def episode_tail(self, env_index: int, n: int) -> np.ndarray:
        """The last observations of an env's ongoing episode, e.g. to burn in an LSTM state.

        :param env_index: the env
        :param n: maximum number of observations
        :return: ``(k, *obs_shape)`` with ``k = min(n, stored steps of the ongoing episode)``; 0 rows
            right after an episode ended
        """
        if not 0 <= env_index < self.n_envs:
            raise ValueError(f"env_index must be in [0, {self.n_envs}), got env_index={env_index}")
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got n={n!r}")
        length = min(int(n), int(self._ongoing_lengths()[env_index]))
        times = np.arange(self._end - length, self._end)
        return self._observations[env_index, self._positions(times)]

    def observations_at(self, env_indices: np.ndarray, time_indices: np.ndarray) -> np.ndarray:
        """Gather stored observations by absolute index.

        :param env_indices: env of each observation (any shape, broadcast with ``time_indices``)
        :param time_indices: absolute time index of each observation
        :return: ``(*shape, *obs_shape)``
        """
        env_indices, time_indices = np.broadcast_arrays(np.asarray(env_indices), np.asarray(time_indices))
        self.check_stored(env_indices, time_indices)
        return self._observations[env_indices, self._positions(time_indices)]

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        """Compact state for pickling: live steps only, oldest first."""
        state = self.__dict__.copy()
        size = self.size()
        for name in ("_observations", "_actions", "_rewards", "_terminations", "_truncations"):
            old = state[name]
            if self._head + size <= self._capacity:
                state[name] = old[:, self._head : self._head + size]
            else:
                state[name] = np.empty((self.n_envs, size, *old.shape[2:]), dtype=old.dtype)
                self._copy_live(old, state[name])
        state["_capacity"] = size
        state["_head"] = 0
        state["_episodes"] = self._episodes[self._episodes_head : self._episodes_count].copy()
        state["_episodes_head"] = 0
        state["_episodes_count"] = len(state["_episodes"])
        state["extra_bytes_per_time_step"] = 0  # the data kept alongside is not pickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Files of older versions kept the token cache in the buffer (never pickled with data): drop its fields.
        for name in ("_tokens", "_token_versions", "_tokens_per_frame", "_token_version"):
            state.pop(name, None)
        self.__dict__.update(state)
        for name in ("_observations", "_actions", "_rewards", "_terminations", "_truncations"):
            # Sliced views were pickled as copies; make sure the arrays own contiguous memory.
            setattr(self, name, np.ascontiguousarray(getattr(self, name)))

    def check_integrity(self, n_actions: Optional[int] = None) -> None:
        """Raise ``ValueError`` if the state is not one that ``add`` and eviction can produce (e.g. a replay
        file that was edited, damaged, or written by an incompatible version).

        :param n_actions: when given, every stored action must be in ``[0, n_actions)``
        """
        problems = []
        capacity = self._capacity
        expected = {
            "_observations": ((self.n_envs, capacity, *self.obs_shape), self._obs_dtype),
            "_actions": ((self.n_envs, capacity), np.dtype(np.int64)),
            "_rewards": ((self.n_envs, capacity), np.dtype(np.float32)),
            "_terminations": ((self.n_envs, capacity), np.dtype(bool)),
            "_truncations": ((self.n_envs, capacity), np.dtype(bool)),
        }
        if self._obs_dtype != _storage_dtype(self.observation_space):
            problems.append(f"observations stored as {self._obs_dtype} for {self.observation_space}")
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.shape != shape or array.dtype != dtype:
                found = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
                problems.append(f"{name[1:]} are {found}, expected {dtype} {shape}")
        if not (0 <= self._offset <= self._end and self.size() <= capacity and 0 <= self._head < max(capacity, 1)):
            problems.append(
                f"time range [{self._offset}, {self._end}) and ring head {self._head} do not fit capacity {capacity}"
            )
        if problems:
            raise ValueError("inconsistent replay buffer: " + "; ".join(problems))
        problems += self._episode_problems()
        positions = self._positions(np.arange(self._offset, self._end))
        actions = self._actions[:, positions]
        if actions.size and (actions.min() < 0 or (n_actions is not None and actions.max() >= n_actions)):
            problems.append(
                f"stored actions range over [{actions.min()}, {actions.max()}], but the action space has "
                f"n={n_actions} actions (valid: [0, {n_actions}))"
            )
        if not np.isfinite(self._rewards[:, positions]).all():
            problems.append("stored rewards contain NaN or inf")
        if self._obs_dtype.kind == "f" and not np.isfinite(self._observations[:, positions]).all():
            problems.append("stored observations contain NaN or inf")
        if problems:
            raise ValueError("inconsistent replay buffer: " + "; ".join(problems))

    def _episode_problems(self) -> list:
        """What is wrong with the episode table and the ongoing episodes' starts (see :meth:`check_integrity`)."""
        episodes = self._episodes
        if not isinstance(episodes, np.ndarray) or episodes.ndim != 2 or episodes.shape[1] != 3:
            return ["the episode table is not an (n, 3) array"]
        if not 0 <= self._episodes_head <= self._episodes_count <= len(episodes):
            return [f"episode rows [{self._episodes_head}, {self._episodes_count}) exceed the table ({len(episodes)})"]
        live = episodes[self._episodes_head : self._episodes_count]
        envs, starts, ends = live[:, 0], live[:, 1], live[:, 2]
        problems = []
        if ((envs < 0) | (envs >= self.n_envs) | (starts < 0) | (starts >= ends) | (ends > self._end)).any():
            problems.append(f"episodes outside envs [0, {self.n_envs}) or times [0, {self._end}], or empty")
        if (np.diff(ends) < 0).any():
            problems.append("episodes are not in order of their end")
        ongoing = np.asarray(self._ongoing_starts)
        if ongoing.shape != (self.n_envs,) or (ongoing < 0).any() or (ongoing > self._end).any():
            problems.append(f"ongoing episode starts {ongoing} do not fit {self.n_envs} envs and end {self._end}")
        return problems
