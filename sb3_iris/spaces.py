"""Which observation and action spaces IRIS takes, checked in one place.

IRIS acts in ``Discrete`` action spaces that start at 0 and sees ``Box`` observations: uint8 images
(``CnnPolicy``, channel-first after SB3's ``VecTransposeImage``) or 1-D vectors (``MlpPolicy``). The algorithm
checks an env's spaces before SB3 wraps it (SB3's own checks would be bare assertions); the policies check the
kind of observations they need.
"""

from __future__ import annotations

from typing import Any, Optional

from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space

__all__ = ["check_env_spaces", "check_image_observations", "check_spaces", "check_vector_observations", "is_image"]


def is_image(observation_space: spaces.Space) -> bool:
    """Whether IRIS treats the observations as images (a rank-3 ``Box``; vectors are rank 1).

    :param observation_space: the (policy's or env's) observation space
    """
    return len(observation_space.shape or ()) == 3


def check_action_space(action_space: spaces.Space) -> None:
    """Raise ``ValueError`` unless ``action_space`` is a ``Discrete`` space starting at 0."""
    if not isinstance(action_space, spaces.Discrete):
        raise ValueError(
            f"IRIS supports only Discrete action spaces, got action_space={action_space} "
            f"({type(action_space).__name__})"
        )
    if int(action_space.start) != 0:
        raise ValueError(
            f"IRIS needs Discrete action spaces that start at 0, got action_space={action_space} "
            f"(start={action_space.start}); wrap the env to shift its actions"
        )


def check_observation_space(observation_space: spaces.Space) -> None:
    """Raise ``ValueError`` unless ``observation_space`` is a ``Box``."""
    if isinstance(observation_space, spaces.Dict):
        raise ValueError(
            f"IRIS does not support Dict observation spaces (got {observation_space}); "
            "use a Box of images (CnnPolicy) or a 1-D Box (MlpPolicy)"
        )
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(
            f"IRIS supports only Box observation spaces (images or 1-D vectors), got observation_space="
            f"{observation_space}"
        )


def check_spaces(observation_space: Optional[spaces.Space], action_space: Optional[spaces.Space]) -> None:
    """Raise ``ValueError`` for spaces IRIS cannot train on (the action space is checked first; None: unknown).

    :param observation_space: observation space, or None to skip its check
    :param action_space: action space, or None to skip its check
    """
    if action_space is not None:
        check_action_space(action_space)
    if observation_space is not None:
        check_observation_space(observation_space)


def check_env_spaces(env: Any) -> None:
    """:func:`check_spaces` of an env (Gymnasium env or VecEnv), before SB3 wraps it."""
    check_spaces(getattr(env, "observation_space", None), getattr(env, "action_space", None))


def check_image_observations(observation_space: spaces.Box) -> None:
    """Raise ``ValueError`` unless the observations are uint8 images (what ``CnnPolicy`` needs)."""
    if not is_image_space(observation_space, check_channels=False) or not is_image(observation_space):
        raise ValueError(
            "CnnPolicy needs image observations: a uint8 Box in [0, 255] of shape (H, W, C) or (C, H, W); got "
            f"observation_space={observation_space}. Use MlpPolicy for 1-D vector observations."
        )


def check_vector_observations(observation_space: spaces.Box) -> None:
    """Raise ``ValueError`` unless the observations are 1-D vectors (what ``MlpPolicy`` needs)."""
    if len(observation_space.shape) != 1:
        raise ValueError(
            f"MlpPolicy needs 1-D Box observations, got shape {observation_space.shape} "
            f"(observation_space={observation_space}). Use CnnPolicy for images."
        )
