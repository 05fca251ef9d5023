"""Per-epoch caches of what the frozen tokenizer computes from replay frames.

The tokenizer only changes during its own training phase; in the world-model and actor-critic
phases of an epoch its outputs for a given replay frame are fixed. Tokens are cached in the replay
buffer (``EpisodeReplayBuffer.store_tokens``); reconstructions, much larger, in the bounded
:class:`ReconstructionCache` below.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


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
