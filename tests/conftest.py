"""Shared helpers for the IRIS algorithm tests: tiny configurations and a tiny image environment.

Everything here is sized so that ``learn()`` of a few hundred steps takes a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.logger import KVWriter, Logger

# torch.compile's CPU backend (inductor, used by the compile_imagination tests) imports torch.utils.mkldnn, whose 14
# `@torch.jit.script_method` decorators each raise "`torch.jit.script_method` is deprecated" (torch >= 2.10) when the
# module is imported. That is torch's own code: import it once here with exactly that warning silenced, so the test
# output keeps any torch.jit deprecation that our code would cause.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated", category=DeprecationWarning)
    import torch.utils.mkldnn  # noqa: F401

# Log keys that IRIS documents and that every (fully warmed-up) training epoch must produce.
DOCUMENTED_LOG_KEYS = (
    "train/tokenizer_loss",
    "train/world_model_loss",
    "train/actor_critic_loss",
    "train/codebook_usage",
    "train/imagined_return",
    "rollout/ep_rew_mean",
    "time/fps",
    "train/n_updates",
)

COLORS = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)


class ColorBoxEnv(gym.Env):
    """A square of one colour (red or green) on a grey background; reward 1 when the action is the colour's index.

    Observations are uint8 ``(size, size, 3)`` (HxWxC, as Gymnasium image envs are), actions ``Discrete(2)``.
    Episodes terminate after ``episode_length`` steps.

    :param size: image height and width
    :param episode_length: steps per episode
    """

    metadata = {"render_modes": []}

    def __init__(self, size: int = 16, episode_length: int = 20) -> None:
        super().__init__()
        self.size = size
        self.episode_length = episode_length
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(2)
        self._color = 0
        self._t = 0

    def _observation(self) -> np.ndarray:
        obs = np.full((self.size, self.size, 3), 128, dtype=np.uint8)
        quarter = self.size // 4
        obs[quarter : self.size - quarter, quarter : self.size - quarter] = COLORS[self._color]
        return obs

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._t = 0
        self._color = int(self.np_random.integers(2))
        return self._observation(), {}

    def step(self, action):
        reward = float(int(action) == self._color)
        self._t += 1
        self._color = int(self.np_random.integers(2))
        terminated = self._t >= self.episode_length
        return self._observation(), reward, terminated, False, {}


def conv_tokenizer_kwargs(resolution: int) -> dict[str, Any]:
    """Smallest sensible ConvTokenizer for ``resolution`` x ``resolution`` RGB (4x4 = 16 tokens per frame)."""
    if resolution == 16:
        return dict(
            base_channels=8,
            channel_multipliers=(1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        )
    if resolution == 64:
        return dict(
            base_channels=8,
            channel_multipliers=(1, 1, 1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(8,),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        )
    raise ValueError(f"no tiny tokenizer config for resolution {resolution}")


def tiny_iris_kwargs(image: bool, resolution: int = 16, **overrides: Any) -> dict[str, Any]:
    """IRIS keyword arguments for tests: every phase trains from the first epoch, on tiny networks.

    :param image: CnnPolicy networks (for ``ColorBoxEnv(size=resolution)``) instead of MlpPolicy ones (CartPole)
    :param resolution: image size, 16 or 64
    :param overrides: replace or add IRIS keyword arguments
    """
    if image:
        tokenizer_kwargs = conv_tokenizer_kwargs(resolution)
        conv_channels = (8, 8) if resolution == 16 else (8, 8, 8, 8)
        actor_critic_kwargs = dict(conv_channels=conv_channels, lstm_dim=32)
    else:
        tokenizer_kwargs = dict(tokens_per_obs=4, hidden_sizes=(32,), embed_dim=16, vocab_size=32)
        actor_critic_kwargs = dict(mlp_hidden_sizes=(32,), lstm_dim=32)
    kwargs: dict[str, Any] = dict(
        n_steps_per_epoch=50,
        tokenizer_updates_per_epoch=2,
        world_model_updates_per_epoch=2,
        actor_critic_updates_per_epoch=2,
        tokenizer_batch_size=8,
        world_model_batch_size=4,
        actor_critic_batch_size=4,
        tokenizer_start_after_epochs=0,
        world_model_start_after_epochs=0,
        actor_critic_start_after_epochs=0,
        sequence_length=4,
        burn_in=2,
        imagination_horizon=3,
        final_training_epochs=0,
        device="cpu",
        # What these sizes leave unset keeps the published values (MlpPolicy's own default is the vector preset).
        preset="published",
        policy_kwargs=dict(
            tokenizer_kwargs=tokenizer_kwargs,
            world_model_kwargs=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=4),
            actor_critic_kwargs=actor_critic_kwargs,
        ),
    )
    kwargs.update(overrides)
    return kwargs


class RecordingWriter(KVWriter):
    """Keeps every dumped key/value dict in memory (an in-memory SB3 logger output)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.records.append({**key_values, "_step": step})

    @property
    def keys(self) -> set[str]:
        return {key for record in self.records for key in record}


def recording_logger() -> tuple[Logger, RecordingWriter]:
    """An SB3 logger whose output is kept in memory; attach it with ``model.set_logger(logger)``."""
    writer = RecordingWriter()
    return Logger(folder=None, output_formats=[writer]), writer


@pytest.fixture
def color_env() -> ColorBoxEnv:
    return ColorBoxEnv(size=16)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test machine has 2 cores shared with others: one intra-op thread per process is faster for tiny nets."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
