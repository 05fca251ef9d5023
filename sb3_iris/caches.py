"""What the frozen tokenizer computes from replay frames, cached while it is frozen.

The tokenizer only changes during its own training phase; in the world-model and actor-critic phases of an
epoch its outputs for a given replay frame are fixed, so tokens and burn-in reconstructions are computed once per
frame and reused (exactly what recomputing gives). :class:`FrozenTokenizerCache` is the one place that does it:
lookup-or-compute of the tokens of segments (a :class:`TokenTable` beside the replay buffer), of the padding
frame, and of the reconstructions of imagination contexts (the bounded :class:`ReconstructionCache`), and one
:meth:`~FrozenTokenizerCache.invalidate` that the tokenizer's training phase calls when it ends.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Optional

import numpy as np
import torch
from gymnasium import spaces

from sb3_iris.buffers import EpisodeReplayBuffer
from sb3_iris.imagination import reconstruct_context
from sb3_iris.nn.tokenizer import Tokenizer

__all__ = ["FrozenTokenizerCache", "ReconstructionCache", "TokenTable"]

# Frames tokenized per tokenizer call when filling world-model / imagination batches (bounds memory).
TOKENIZE_CHUNK = 512

# A token-table slot's stamp: the version it was stored under, shifted, plus the absolute time index of its step.
_TIME_BITS = 40


class TokenTable:
    """Tokens of replay steps by ``(env index, absolute time index)``, valid until :meth:`invalidate`.

    A ring of its own over the replay's time axis (slot ``time % capacity``), grown so that it always covers the
    replay's stored time range: an entry is found while its step is stored in the replay, nothing newer took its
    slot, and no invalidation came since (one int64 stamp per slot holds its version and time). Allocated on the
    first store; its bytes per step are added to the replay's memory accounting.

    :param buffer: the replay buffer whose steps the tokens belong to
    :param tokens_per_frame: tokens per observation (e.g. 16 for a 4x4 latent grid)
    """

    growth_factor = 1.5

    def __init__(self, buffer: EpisodeReplayBuffer, tokens_per_frame: int) -> None:
        if int(tokens_per_frame) != tokens_per_frame or tokens_per_frame <= 0:
            raise ValueError(f"tokens_per_frame must be a positive integer, got tokens_per_frame={tokens_per_frame!r}")
        self.buffer = buffer
        self.tokens_per_frame = int(tokens_per_frame)
        self._tokens: Optional[np.ndarray] = None
        self._stamps: Optional[np.ndarray] = None
        self._version = 0
        buffer.extra_bytes_per_time_step = 0

    @property
    def capacity(self) -> int:
        return 0 if self._tokens is None else self._tokens.shape[1]

    def invalidate(self) -> None:
        """Mark every entry stale (O(1)), e.g. after the tokenizer was trained."""
        self._version += 1

    def _slots(self, time_indices: np.ndarray) -> np.ndarray:
        return time_indices % max(self.capacity, 1)

    def lookup(self, env_indices: np.ndarray, time_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Look up tokens. Entries never stored, stored before the last invalidation, or not in the replay
        (padding, evicted) are invalid.

        :param env_indices: env of each entry (any shape, broadcast with ``time_indices``)
        :param time_indices: absolute time index of each entry
        :return: ``(tokens (*shape, K) int64, zeros where invalid; valid (*shape) bool)``
        """
        env_indices, time_indices = np.broadcast_arrays(np.asarray(env_indices), np.asarray(time_indices))
        if self._tokens is None:
            shape = env_indices.shape
            return np.zeros((*shape, self.tokens_per_frame), dtype=np.int64), np.zeros(shape, bool)
        stored = self.buffer.contains(env_indices, time_indices)
        safe_envs = np.where(stored, env_indices, 0)
        slots = np.where(stored, self._slots(time_indices), 0)
        valid = stored & (self._stamps[safe_envs, slots] == (self._version << _TIME_BITS) + time_indices)
        tokens = self._tokens[safe_envs, slots]
        tokens[~valid] = 0
        return tokens, valid

    def store(self, env_indices: np.ndarray, time_indices: np.ndarray, tokens: np.ndarray) -> None:
        """Keep tokens of stored steps. Entries with a negative time index (padding of a segment) are skipped.

        :param env_indices: env of each entry (any shape, broadcast with ``time_indices``)
        :param time_indices: absolute time index of each entry
        :param tokens: ``(*shape, K)`` integer tokens
        """
        env_indices, time_indices = np.broadcast_arrays(np.asarray(env_indices), np.asarray(time_indices))
        tokens = np.asarray(tokens)
        if tokens.shape != (*env_indices.shape, self.tokens_per_frame):
            raise ValueError(
                f"tokens must have shape {(*env_indices.shape, self.tokens_per_frame)} (indices shape + "
                f"tokens_per_frame), got shape {tokens.shape}"
            )
        keep = time_indices >= 0
        env_indices, time_indices, tokens = env_indices[keep], time_indices[keep], tokens[keep]
        self.buffer.check_stored(env_indices, time_indices)
        self._cover_stored_range()
        slots = self._slots(time_indices)
        self._tokens[env_indices, slots] = tokens
        self._stamps[env_indices, slots] = (self._version << _TIME_BITS) + time_indices

    def _cover_stored_range(self) -> None:
        """Grow the ring to at least the replay's stored time range, keeping the entries still stored."""
        first, end = self.buffer.time_range
        if end - first <= self.capacity:
            return
        n_envs = self.buffer.n_envs
        capacity = max(end - first, int(np.ceil(self.capacity * self.growth_factor)))
        tokens = np.zeros((n_envs, capacity, self.tokens_per_frame), dtype=np.int64)
        stamps = np.full((n_envs, capacity), -1, dtype=np.int64)
        if self._tokens is not None:
            times = np.arange(first, end)
            old, new = self._slots(times), times % capacity
            tokens[:, new] = self._tokens[:, old]
            stamps[:, new] = self._stamps[:, old]
        self._tokens, self._stamps = tokens, stamps
        self.buffer.extra_bytes_per_time_step = tokens.itemsize * self.tokens_per_frame + stamps.itemsize


class ReconstructionCache:
    """Reconstructions of replay frames keyed by (env index, absolute time index), bounded in bytes.

    Storage grows on demand up to ``max_bytes``; once full, new frames are simply not cached until
    :meth:`clear` (first come, first kept: deterministic, no eviction bookkeeping in the hot loop).

    :param max_bytes: memory budget of the stored reconstructions
    :param device: where the reconstructions live (the device of the networks)
    """

    def __init__(self, max_bytes: int, device: torch.device) -> None:
        self.max_bytes = int(max_bytes)
        self.device = device
        self._storage: Optional[torch.Tensor] = None
        self._capacity = 0
        self._slots: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        return 0 if self._storage is None else self._storage.numel() * self._storage.element_size()

    def clear(self) -> None:
        """Forget every cached frame (the memory is kept)."""
        self._slots.clear()

    def lookup(self, env_indices: np.ndarray, time_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slots of cached frames and a found mask, for 1-D index arrays."""
        slots = np.array([self._slots.get(key, -1) for key in zip(env_indices.tolist(), time_indices.tolist())])
        slots = slots.astype(np.int64, copy=False).reshape(len(env_indices))
        return slots, slots >= 0

    def gather(self, slots: np.ndarray) -> torch.Tensor:
        assert self._storage is not None
        return self._storage[torch.as_tensor(slots, device=self.device)]

    def _ensure_capacity(self, frame: torch.Tensor, needed: int) -> int:
        """Grow the storage to hold ``needed`` frames if the budget allows; return the usable capacity."""
        frame_bytes = frame.numel() * frame.element_size()
        limit = self.max_bytes // max(frame_bytes, 1)
        target = min(needed, limit)
        if target <= self._capacity:
            return self._capacity
        new_capacity = min(limit, max(target, 2 * self._capacity, 64))
        storage = torch.empty((new_capacity, *frame.shape), dtype=frame.dtype, device=self.device)
        if self._storage is not None and self._storage.dtype == frame.dtype:
            storage[: self._capacity] = self._storage[: self._capacity]
        else:
            self._slots.clear()
        self._storage, self._capacity = storage, new_capacity
        return new_capacity

    def store(self, env_indices: np.ndarray, time_indices: np.ndarray, reconstructions: torch.Tensor) -> None:
        """Cache ``reconstructions`` ``(N, *obs_shape)`` of the given frames while the budget allows."""
        if self.max_bytes <= 0 or len(reconstructions) == 0:
            return
        new_keys = []
        rows = []
        for row, key in enumerate(zip(env_indices.tolist(), time_indices.tolist())):
            if key not in self._slots and key not in new_keys:
                new_keys.append(key)
                rows.append(row)
        if not new_keys:
            return
        capacity = self._ensure_capacity(reconstructions[0], len(self._slots) + len(new_keys))
        room = capacity - len(self._slots)
        new_keys, rows = new_keys[:room], rows[:room]
        if not new_keys:
            return
        first = len(self._slots)
        assert self._storage is not None
        self._storage[first : first + len(rows)] = reconstructions[torch.as_tensor(rows, device=reconstructions.device)]
        for offset, key in enumerate(new_keys):
            self._slots[key] = first + offset


class FrozenTokenizerCache:
    """Tokens and reconstructions of replay frames by the tokenizer while it is frozen, each computed once.

    Serves the world-model and actor-critic phases: :meth:`segment_tokens` (token table lookup, tokenizing only
    the frames it misses), :meth:`padding_tokens` (what padded steps hold) and :meth:`context_reconstructions`
    (imagination burn-in frames). Results equal recomputing them for every batch. The tokenizer's training phase
    calls :meth:`invalidate` when it ends (also when it is interrupted).

    :param tokenizer: the tokenizer whose outputs are cached
    :param observation_space: the model's observation space (its zeros are the padding frame)
    :param device: where the networks live
    :param use_token_cache: keep tokens between batches (False: tokenize every batch's frames)
    :param reconstruction_cache_bytes: memory for cached reconstructions (0: decode every context)
    :param autocast: the autocast context of the tokenizer's forward passes (None: none)
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        observation_space: spaces.Box,
        device: torch.device,
        use_token_cache: bool = True,
        reconstruction_cache_bytes: int = 0,
        autocast: Optional[Callable[[], AbstractContextManager]] = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.observation_space = observation_space
        self.device = device
        self.use_token_cache = use_token_cache
        self.reconstructions = ReconstructionCache(reconstruction_cache_bytes, device)
        self.autocast = autocast or nullcontext
        self.tokens: Optional[TokenTable] = None
        self._padding_tokens: Optional[torch.Tensor] = None

    def attach(self, buffer: EpisodeReplayBuffer) -> None:
        """Serve the frames of ``buffer`` (a new buffer starts empty caches); forget the padding tokens.

        :param buffer: the replay buffer that segments and contexts are sampled from
        """
        if self.tokens is None or self.tokens.buffer is not buffer:
            self.tokens = TokenTable(buffer, self.tokenizer.tokens_per_obs)
            self.reconstructions.clear()
        self._padding_tokens = None

    def invalidate(self) -> None:
        """Forget everything computed so far (the tokenizer changed)."""
        if self.tokens is not None:
            self.tokens.invalidate()
        self.reconstructions.clear()
        self._padding_tokens = None

    def _table(self) -> TokenTable:
        if self.tokens is None:
            raise RuntimeError("FrozenTokenizerCache serves no replay buffer yet: call attach(buffer) first")
        return self.tokens

    @torch.no_grad()
    def tokenize(self, observations: np.ndarray) -> torch.Tensor:
        """Tokens ``(N, K)`` of raw observations ``(N, *obs_shape)``, computed in chunks."""
        tokenizer = self.tokenizer
        with self.autocast():
            chunks = [
                tokenizer.tokenize(
                    tokenizer.preprocess(torch.as_tensor(observations[i : i + TOKENIZE_CHUNK], device=self.device))
                )
                for i in range(0, len(observations), TOKENIZE_CHUNK)
            ]
        if not chunks:
            return torch.empty(0, tokenizer.tokens_per_obs, dtype=torch.long, device=self.device)
        return torch.cat(chunks)

    def padding_tokens(self) -> torch.Tensor:
        """Tokens ``(K,)`` of an all-zero observation (what padded steps contain), computed once until invalidated."""
        if self._padding_tokens is None:
            space = self.observation_space
            self._padding_tokens = self.tokenize(np.zeros((1, *space.shape), dtype=space.dtype))[0]
        return self._padding_tokens

    def segment_tokens(
        self, observations: np.ndarray, env_indices: np.ndarray, time_indices: np.ndarray, mask_padding: np.ndarray
    ) -> torch.Tensor:
        """Tokens ``(B, L, K)`` of a batch of segments, through the token table when ``use_token_cache``.

        :param observations: ``(B, L, *obs_shape)`` the segments' frames
        :param env_indices: ``(B, L)`` env of each step
        :param time_indices: ``(B, L)`` absolute time index of each step
        :param mask_padding: ``(B, L)`` True for real steps (padded steps get :meth:`padding_tokens`)
        """
        batch_shape = mask_padding.shape
        if not self.use_token_cache:
            flat = observations.reshape(-1, *observations.shape[len(batch_shape) :])
            return self.tokenize(flat).view(*batch_shape, -1)
        table = self._table()
        tokens = self.padding_tokens().expand(*batch_shape, table.tokens_per_frame).clone()
        real = mask_padding.astype(bool)
        env_real, time_real = env_indices[real], time_indices[real]
        cached, valid = table.lookup(env_real, time_real)
        cached = np.array(cached, dtype=np.int64, copy=True)
        missing = ~valid
        if missing.any():
            computed = self.tokenize(observations[real][missing]).cpu().numpy()
            cached[missing] = computed
            table.store(env_real[missing], time_real[missing], computed)
        tokens[torch.as_tensor(real, device=self.device)] = torch.as_tensor(cached, device=self.device)
        return tokens

    @torch.no_grad()
    def context_reconstructions(
        self, context_tokens: torch.Tensor, env_indices: np.ndarray, time_indices: np.ndarray, mask_padding: np.ndarray
    ) -> torch.Tensor:
        """Reconstructions ``(B, T + 1, *obs_shape)`` of replay contexts, through the reconstruction cache.

        Padded frames are zeros (the burn-in ignores them). Equal to decoding every real frame's tokens.

        :param context_tokens: ``(B, T + 1, K)`` tokens of the contexts (:meth:`segment_tokens`)
        :param env_indices: ``(B, T + 1)`` env of each frame
        :param time_indices: ``(B, T + 1)`` absolute time index of each frame
        :param mask_padding: ``(B, T + 1)`` True for real frames
        """
        mask = torch.as_tensor(mask_padding, device=self.device)
        cache = self.reconstructions
        if cache.max_bytes <= 0:
            return reconstruct_context(self.tokenizer, context_tokens, mask)
        real = mask_padding.astype(bool)
        env_real, time_real = env_indices[real], time_indices[real]
        tokens_real = context_tokens[mask]
        slots, found = cache.lookup(env_real, time_real)
        missing = ~found
        missing_rows = torch.as_tensor(missing, device=self.device)
        found_rows = torch.as_tensor(found, device=self.device)
        decoded = cached = None
        if missing.any():
            decoded = self.tokenizer.decode_tokens(tokens_real[missing_rows])
            cache.store(env_real[missing], time_real[missing], decoded)
        if found.any():
            cached = cache.gather(slots[found])
        sample = decoded if decoded is not None else cached
        assert sample is not None
        frames = sample.new_empty(len(env_real), *sample.shape[1:])
        if decoded is not None:
            frames[missing_rows] = decoded.to(frames.dtype)
        if cached is not None:
            frames[found_rows] = cached.to(frames.dtype)
        reconstructions = frames.new_zeros(*mask_padding.shape, *frames.shape[1:])
        reconstructions[mask] = frames
        return reconstructions
