"""Tiny environments for the play / evaluate / callback tests, registered with Gymnasium on import.

Importable by a subprocess run from the repository root: ``python -m sb3_iris.play ... --env-module
tests.envs_for_tests`` (or ``--env tests.envs_for_tests:IrisTinyGrid-v0``).
"""

from __future__ import annotations

from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

TINY_GRID_ID = "IrisTinyGrid-v0"
TINY_GRID_64_ID = "IrisTinyGrid64-v0"


class TinyGridEnv(gym.Env):
    """A white agent square moves left/right on a dark ``size`` x ``size`` RGB image to reach a green target.

    Actions: 0 stay, 1 left, 2 right. Reward +1 on reaching the target (it then moves), -1 for bumping into a
    wall. The episode terminates after 3 targets; registered with a 20-step time limit. ``render()`` returns the
    frame upscaled 4x (a "full resolution" frame, as Atari renders are larger than the agent's observations).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, size: int = 16, render_mode: Optional[str] = None) -> None:
        super().__init__()
        self.size = size
        self.cell = size // 8
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(3)
        self._agent = 0
        self._target = 0
        self._hits = 0

    def _observation(self) -> np.ndarray:
        obs = np.full((self.size, self.size, 3), 30, dtype=np.uint8)
        c = self.cell
        row = self.size // 2
        obs[row - c : row + c, self._target * c : (self._target + 1) * c] = (0, 220, 0)
        obs[row : row + c, self._agent * c : (self._agent + 1) * c] = (255, 255, 255)
        return obs

    def _new_target(self) -> None:
        choices = [x for x in range(8) if x != self._agent]
        self._target = int(self.np_random.choice(choices))

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._agent = int(self.np_random.integers(8))
        self._hits = 0
        self._new_target()
        return self._observation(), {}

    def step(self, action):
        move = (0, -1, 1)[int(action)]
        position = self._agent + move
        reward = 0.0
        if position < 0 or position > 7:
            reward = -1.0
            position = min(max(position, 0), 7)
        self._agent = position
        if self._agent == self._target:
            reward = 1.0
            self._hits += 1
            self._new_target()
        terminated = self._hits >= 3
        return self._observation(), reward, terminated, False, {}

    def render(self):
        if self.render_mode == "rgb_array":
            return np.repeat(np.repeat(self._observation(), 4, axis=0), 4, axis=1)
        return None


def register() -> None:
    """Register the test envs (idempotent)."""
    if TINY_GRID_ID not in gym.registry:
        gym.register(TINY_GRID_ID, entry_point=TinyGridEnv, max_episode_steps=20, kwargs={"size": 16})
    if TINY_GRID_64_ID not in gym.registry:
        gym.register(TINY_GRID_64_ID, entry_point=TinyGridEnv, max_episode_steps=20, kwargs={"size": 64})


register()
