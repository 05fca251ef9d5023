"""MinAtar (Young & Tian, 2019) for IRIS: Gymnasium registration and a small-image wrapper.

MinAtar games observe a ``10 x 10 x C`` boolean grid (one channel per object type: for Breakout,
paddle, ball, trail and brick). IRIS's ``CnnPolicy`` takes uint8 RGB images, so
:class:`MinAtarImageWrapper` draws the grid as a small picture: each cell becomes a
``cell_size x cell_size`` block (3 by default, 30x30), centred on a black ``image_size`` square
(32x32 by default, so that the tokenizer's halvings divide it). Each channel has one fixed colour;
where several channels are on in one cell the cell gets the mean of their colours. MinAtar's own
display draws only the highest channel there, which would hide Breakout's ball behind a brick at
the start of every episode. The palette is fixed here, so seaborn (which ``minatar.gym`` uses for
its ``rgb_array`` rendering) is not needed.

Importing this module registers the ``MinAtar/*-v0`` and ``MinAtar/*-v1`` ids with Gymnasium (once),
so RL Zoo can use them through ``--gym-packages``::

    python -m rl_zoo3.train --algo iris --env MinAtar/Breakout-v1 --gym-packages sb3_iris.minatar

The ``MinAtar/Breakout-v1`` entry of ``hyperparams/iris.yml`` names :class:`MinAtarImageWrapper` as its
``env_wrapper``. PPO and DQN can use the boolean grid directly with ``MlpPolicy`` (SB3 casts it to float
and flattens it).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["GRID_SIZE", "PALETTE", "MinAtarImageWrapper", "grid_to_image", "register_minatar_envs"]

#: Height and width of every MinAtar grid.
GRID_SIZE = 10

#: RGB colour of each MinAtar channel (index = channel); background is black. Bright, distinct colours
#: (the 10 of matplotlib's "tab10" cycle, brightened) so that the tokenizer's L1 loss sees every object.
PALETTE = np.array(
    [
        [255, 255, 255],  # Breakout: paddle
        [255, 64, 64],  # ball
        [64, 160, 255],  # trail
        [64, 255, 64],  # brick
        [255, 200, 0],
        [200, 80, 255],
        [0, 255, 255],
        [255, 120, 200],
        [160, 160, 160],
        [180, 255, 120],
    ],
    dtype=np.uint8,
)

_REGISTRATION_PROBE = "MinAtar/Breakout-v1"


def register_minatar_envs() -> None:
    """Register the MinAtar Gymnasium ids (``MinAtar/<Game>-v0`` and ``-v1``) unless they are registered already.

    :raises ImportError: if the ``minatar`` package is not installed
    """
    if _REGISTRATION_PROBE in gym.envs.registry:
        return
    try:
        import minatar.gym
    except ImportError as error:  # pragma: no cover - minatar is an optional dependency
        raise ImportError("MinAtar environments need the 'minatar' package: pip install minatar") from error
    minatar.gym.register_envs()


def grid_to_image(grid: np.ndarray, cell_size: int = 3, image_size: int = 32) -> np.ndarray:
    """Draw a MinAtar grid ``(10, 10, C)`` (bool) as a uint8 RGB image ``(image_size, image_size, 3)``.

    :param grid: MinAtar observation, ``(10, 10, C)`` with ``C <= len(PALETTE)``
    :param cell_size: pixels per grid cell (height and width)
    :param image_size: output height and width; the drawn grid (``10 * cell_size``) is centred on black
    :return: the image
    """
    active = grid.astype(np.float32)  # (10, 10, C)
    count = active.sum(axis=-1, keepdims=True)
    # Mean colour of the active channels per cell (black where none is active).
    cells = np.rint(active @ PALETTE[: grid.shape[-1]].astype(np.float32) / np.maximum(count, 1.0)).astype(np.uint8)
    drawn = np.repeat(np.repeat(cells, cell_size, axis=0), cell_size, axis=1)
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    offset = (image_size - drawn.shape[0]) // 2
    image[offset : offset + drawn.shape[0], offset : offset + drawn.shape[1]] = drawn
    return image


class MinAtarImageWrapper(gym.ObservationWrapper):
    """Turn a MinAtar boolean grid ``(10, 10, C)`` into a small uint8 RGB image for IRIS's ``CnnPolicy``.

    Every grid cell becomes a ``cell_size x cell_size`` block of its channel's colour (:data:`PALETTE`; the mean
    colour where several channels are on), centred on a black ``image_size x image_size`` square. Rewards, ends
    and actions are unchanged.

    :param env: a MinAtar env (``gym.make("MinAtar/Breakout-v1")``): boolean ``Box`` observations of shape
        ``(10, 10, C)`` with ``1 <= C <= 10``
    :param cell_size: pixels per grid cell (3: a 30x30 drawing)
    :param image_size: height and width of the output image, at least ``10 * cell_size`` (32: divisible by
        the 8 of a three-halving tokenizer, giving 4x4 = 16 tokens)
    """

    def __init__(self, env: gym.Env, cell_size: int = 3, image_size: int = 32) -> None:
        super().__init__(env)
        space = env.observation_space
        if not (
            isinstance(space, spaces.Box)
            and space.dtype == np.bool_
            and len(space.shape) == 3
            and space.shape[:2] == (GRID_SIZE, GRID_SIZE)
            and 1 <= space.shape[2] <= len(PALETTE)
        ):
            raise ValueError(
                f"MinAtarImageWrapper needs a MinAtar env: env.observation_space must be a bool Box of shape "
                f"({GRID_SIZE}, {GRID_SIZE}, C) with 1 <= C <= {len(PALETTE)}, got env.observation_space={space}"
            )
        if not isinstance(cell_size, (int, np.integer)) or cell_size < 1:
            raise ValueError(f"cell_size={cell_size!r} must be an integer >= 1")
        if not isinstance(image_size, (int, np.integer)) or image_size < GRID_SIZE * cell_size:
            raise ValueError(
                f"image_size={image_size!r} must be an integer >= {GRID_SIZE} * cell_size = {GRID_SIZE * cell_size}"
            )
        self.cell_size = int(cell_size)
        self.image_size = int(image_size)
        self.observation_space = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        """The image of one MinAtar grid observation."""
        return grid_to_image(np.asarray(observation), self.cell_size, self.image_size)


register_minatar_envs()
