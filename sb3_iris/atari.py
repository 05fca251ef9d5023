"""IRIS Atari preprocessing (the settings of the IRIS paper, Micheli et al. 2023, and its reference code).

The reference IRIS agent sees 64x64 RGB frames, not the 84x84 grayscale stacks of SB3's
``AtariWrapper`` (which also needs OpenCV). :class:`IrisAtariWrapper` reproduces the reference
preprocessing on top of a ``*NoFrameskip-v4`` ALE environment:

=========================  ============================  ===========================
setting                    training (``training=True``)  evaluation (``training=False``)
=========================  ============================  ===========================
observation                64x64x3 uint8 RGB, bilinear   same
random no-ops at reset     1..30                         exactly 1
frame skip                 4, max over the last 2 frames same
episode end on life loss   yes (game continues)          no
reward                     summed over skipped frames,   same
                           NOT clipped
time limit                 20 000 frames (5 000 steps)   108 000 frames (27 000 steps)
=========================  ============================  ===========================

Life loss in training mode works like SB3's ``EpisodicLifeEnv``: ``step()`` returns
``terminated=True`` (with ``info["life_loss"] = True``) but the game is not reset; the next
``reset()`` continues the same game with one no-op step. The real game reset only happens after
a true game over (or the time limit, or an explicit ``reset(seed=...)``).

Episode statistics. RL Zoo and SB3's ``make_vec_env(..., wrapper_class=...)`` apply ``Monitor``
*before* the wrapper, so the ``Monitor`` sits between this wrapper and the raw ALE env: it never
sees life-loss ends and reports one episode per real game (return = game score, length = raw
frames), exactly like SB3's ``AtariWrapper``. To keep that true for time-limit truncations as
well, the frame limit is enforced by a small wrapper inserted directly *below* the outermost
episode-statistics wrapper (SB3 ``Monitor`` or gymnasium ``RecordEpisodeStatistics``) found in
the wrapped chain, so the ``Monitor`` records the truncated game too. Without such a wrapper,
the limit wraps the given env directly. Do not put a ``Monitor`` *outside* this wrapper in
training mode: it would count every life as an episode. :func:`make_iris_atari_env` builds the
right stack (``Monitor`` inside) for a single env.

RL Zoo. The ``atari`` entry of ``iris.yml`` names this wrapper as ``env_wrapper``; RL Zoo applies the
same ``env_wrapper`` to its evaluation envs, so :mod:`sb3_iris.zoo` adds ``training=False`` to this
wrapper's arguments for the envs RL Zoo makes for evaluation (``EvalCallback`` and ``-optimize``
trials in ``train``; ``enjoy``, ``record_video``, ``push_to_hub``): they get the evaluation settings.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "EVAL_SETTINGS",
    "TRAINING_SETTINGS",
    "IrisAtariEvalWrapper",
    "IrisAtariWrapper",
    "make_iris_atari_env",
    "max_pool_frames",
    "resize_frame",
]

#: Reference settings for data collection (the IRIS paper's Atari preprocessing, training).
TRAINING_SETTINGS: dict[str, Any] = {"noop_max": 30, "terminal_on_life_loss": True, "max_episode_frames": 20_000}
#: Reference settings for evaluation (the IRIS paper's Atari preprocessing, evaluation).
EVAL_SETTINGS: dict[str, Any] = {"noop_max": 1, "terminal_on_life_loss": False, "max_episode_frames": 108_000}

_NOOP_ACTION = 0

try:  # Pillow's bilinear resize is the reference one (IRIS resizes with PIL).
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - exercised through ``resize_frame(..., backend="numpy")``
    _PILImage = None


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------
_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit resampling (32 - 8 - 2)


def _pil_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's (antialiased) bilinear resampling weights as an ``(out_size, in_size)`` matrix.

    Same arithmetic as Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: a triangle
    filter whose support is widened by the downscaling factor, normalised per output pixel, then
    converted to 22-bit fixed point.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter has support 1
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.arange(xmin, xmax, dtype=np.float64)
        w = np.clip(1.0 - np.abs((x - center + 0.5) / filterscale), 0.0, None)
        total = w.sum()
        if total != 0.0:
            w = w / total
        weights[xx, xmin:xmax] = w
    scaled = weights * (1 << _PRECISION_BITS)
    return np.where(scaled < 0, np.ceil(scaled - 0.5), np.floor(scaled + 0.5))


_WEIGHTS_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _weights(in_size: int, out_size: int) -> np.ndarray:
    key = (in_size, out_size)
    if key not in _WEIGHTS_CACHE:
        _WEIGHTS_CACHE[key] = _pil_bilinear_weights(in_size, out_size)
    return _WEIGHTS_CACHE[key]


def _fixed_point_to_uint8(acc: np.ndarray) -> np.ndarray:
    # Pillow: start from 1 << (PRECISION_BITS - 1) (rounding), shift right, clip to [0, 255].
    # ``acc`` holds exact integers (products < 2**30, sums far below 2**53), so float floor is exact.
    return np.clip(np.floor((acc + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)), 0, 255).astype(np.uint8)


def _resize_numpy(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pure-numpy replica of ``PIL.Image.resize((width, height), Image.BILINEAR)`` for uint8 images."""
    in_h, in_w = frame.shape[:2]
    out = frame
    # Pillow resamples horizontally first, rounding to uint8 in between, then vertically.
    if in_w != width:
        # (h * c, w) @ (w, x) -> (h, c, x) -> (h, x, c)
        channels = out.shape[2]
        columns = out.transpose(0, 2, 1).reshape(in_h * channels, in_w).astype(np.float64)
        acc = columns @ _weights(in_w, width).T
        out = _fixed_point_to_uint8(acc).reshape(in_h, channels, width).transpose(0, 2, 1)
    if in_h != height:
        # (y, h) @ (h, x * c)
        rows = out.astype(np.float64).reshape(in_h, -1)
        out = _fixed_point_to_uint8(_weights(in_h, height) @ rows).reshape(height, width, -1)
    return np.ascontiguousarray(out, dtype=np.uint8)


def resize_frame(frame: np.ndarray, size: int | tuple[int, int] = 64, backend: str = "auto") -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 frame to ``(size, size, 3)`` (or ``size=(h, w)``).

    :param frame: RGB frame, uint8, channels last.
    :param size: output side, or ``(height, width)``.
    :param backend: ``"pil"`` (Pillow, the reference), ``"numpy"`` (bit-exact replica of Pillow's
        bilinear filter, used when Pillow is not installed) or ``"auto"``.
    :return: the resized frame, uint8, ``(h, w, 3)``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if frame.shape[0] == height and frame.shape[1] == width:
        return np.ascontiguousarray(frame, dtype=np.uint8)
    if backend not in ("auto", "pil", "numpy"):
        raise ValueError(f"resize_frame: backend={backend!r} is not one of 'auto', 'pil', 'numpy'")
    if backend == "pil" and _PILImage is None:
        raise ImportError("resize_frame: backend='pil' needs Pillow (pip install pillow)")
    if backend == "numpy" or _PILImage is None:
        return _resize_numpy(frame, height, width)
    resized = _PILImage.fromarray(frame).resize((width, height), resample=_PILImage.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def max_pool_frames(previous: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Pixel-wise max of the last two raw frames (removes Atari sprite flicker)."""
    return np.maximum(previous, last)


# --------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------
class _EpisodeFrameLimit(gym.Wrapper):
    """Truncate a real game after ``max_frames`` raw frames (placed below any ``Monitor``)."""

    def __init__(self, env: gym.Env, max_frames: int) -> None:
        super().__init__(env)
        self.max_frames = max_frames
        self.elapsed_frames = 0

    def reset(self, **kwargs):
        self.elapsed_frames = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.elapsed_frames += 1
        if self.elapsed_frames >= self.max_frames and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, info


def _episode_statistics_classes() -> tuple[type, ...]:
    # Look the classes up only if their modules are already imported: an instance cannot exist
    # otherwise, and this keeps ``sb3_iris.atari`` free of a torch import.
    classes = []
    monitor_module = sys.modules.get("stable_baselines3.common.monitor")
    if monitor_module is not None and hasattr(monitor_module, "Monitor"):
        classes.append(monitor_module.Monitor)
    record_stats = getattr(gym.wrappers, "RecordEpisodeStatistics", None)
    if isinstance(record_stats, type):
        classes.append(record_stats)
    return tuple(classes)


def _insert_frame_limit(env: gym.Env, max_frames: int) -> tuple[gym.Env, _EpisodeFrameLimit]:
    """Put an :class:`_EpisodeFrameLimit` below the outermost episode-statistics wrapper of ``env``.

    :return: the env to wrap (``env`` itself when the limit went inside it) and the limit wrapper.
    """
    stats_classes = _episode_statistics_classes()
    layer = env
    while stats_classes and isinstance(layer, gym.Wrapper):
        if isinstance(layer, stats_classes):
            limit = _EpisodeFrameLimit(layer.env, max_frames)
            layer.env = limit
            return env, limit
        layer = layer.env
    limit = _EpisodeFrameLimit(env, max_frames)
    return limit, limit


class IrisAtariWrapper(gym.Wrapper):
    """IRIS Atari preprocessing for ``*NoFrameskip-v4`` environments (see the module docstring).

    Usable from an RL Zoo yml file as ``env_wrapper: sb3_iris.atari.IrisAtariWrapper`` (with
    optional keyword arguments, e.g. ``- sb3_iris.atari.IrisAtariWrapper: {training: false}``).

    :param env: an ALE environment with ``frameskip=1`` (``*NoFrameskip-v4`` ids), RGB observations.
    :param screen_size: side of the square RGB observation (reference: 64).
    :param noop_max: at a real reset, take a uniform number of no-ops in ``[1, noop_max]``
        (0 disables). ``None``: 30 in training, 1 in evaluation.
    :param frame_skip: number of raw frames per agent step; the action is repeated, rewards are
        summed and the observation is the max of the last two raw frames (reference: 4).
    :param terminal_on_life_loss: end the episode (``terminated=True``) when a life is lost,
        without resetting the game. ``None``: True in training, False in evaluation.
    :param max_episode_frames: truncate a game after this many raw frames, counting from the real
        reset (no-ops included); 0 disables. ``None``: 20 000 in training, 108 000 in evaluation.
    :param fire_on_reset: press FIRE after each reset (not part of the IRIS reference).
    :param training: choose the training (True) or the evaluation (False) reference settings for
        the arguments left at ``None``.
    """

    def __init__(
        self,
        env: gym.Env,
        screen_size: int = 64,
        noop_max: Optional[int] = None,
        frame_skip: int = 4,
        terminal_on_life_loss: Optional[bool] = None,
        max_episode_frames: Optional[int] = None,
        fire_on_reset: bool = False,
        training: bool = True,
    ) -> None:
        preset = TRAINING_SETTINGS if training else EVAL_SETTINGS
        noop_max = preset["noop_max"] if noop_max is None else int(noop_max)
        if terminal_on_life_loss is None:
            terminal_on_life_loss = preset["terminal_on_life_loss"]
        max_episode_frames = preset["max_episode_frames"] if max_episode_frames is None else int(max_episode_frames)
        if screen_size < 1:
            raise ValueError(f"IrisAtariWrapper: screen_size must be >= 1, got {screen_size}")
        if frame_skip < 1:
            raise ValueError(f"IrisAtariWrapper: frame_skip must be >= 1, got {frame_skip}")
        if noop_max < 0:
            raise ValueError(f"IrisAtariWrapper: noop_max must be >= 0, got {noop_max}")
        if max_episode_frames < 0:
            raise ValueError(
                f"IrisAtariWrapper: max_episode_frames must be >= 0 (0 = no limit), got {max_episode_frames}"
            )
        self._check_env(env)

        self._frame_limit: Optional[_EpisodeFrameLimit] = None
        if max_episode_frames > 0:
            env, self._frame_limit = _insert_frame_limit(env, max_episode_frames)
        super().__init__(env)

        self.training = training
        self.screen_size = screen_size
        self.noop_max = noop_max
        self.frame_skip = frame_skip
        self.terminal_on_life_loss = bool(terminal_on_life_loss)
        self.max_episode_frames = max_episode_frames
        self.fire_on_reset = fire_on_reset
        if fire_on_reset:
            meanings = env.unwrapped.get_action_meanings()
            if len(meanings) < 3 or meanings[1] != "FIRE":
                raise ValueError(f"IrisAtariWrapper: fire_on_reset=True but action 1 is not FIRE ({meanings})")

        self.observation_space = spaces.Box(low=0, high=255, shape=(screen_size, screen_size, 3), dtype=np.uint8)
        self._ale = env.unwrapped.ale
        self._lives = 0
        self._continue_game = False  # the last episode ended on a life loss, the game goes on
        self._previous_frame: Optional[np.ndarray] = None
        self._last_frame: Optional[np.ndarray] = None

    @staticmethod
    def _check_env(env: gym.Env) -> None:
        base = env.unwrapped
        env_id = env.spec.id if env.spec is not None else type(base).__name__
        if not hasattr(base, "ale"):
            raise ValueError(f"IrisAtariWrapper needs an ALE Atari env (ale_py), got {env_id} ({type(base).__name__})")
        frameskip = getattr(base, "_frameskip", 1)
        if frameskip != 1:
            raise ValueError(
                f"IrisAtariWrapper needs an env without internal frame skip (frameskip=1, a '*NoFrameskip-v4' id): "
                f"{env_id} has frameskip={frameskip}. Use e.g. 'PongNoFrameskip-v4', or make the env with frameskip=1."
            )
        if base.get_action_meanings()[_NOOP_ACTION] != "NOOP":
            raise ValueError(f"IrisAtariWrapper: action 0 of {env_id} is not NOOP ({base.get_action_meanings()})")
        obs_space = env.observation_space
        if not (isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 3 and obs_space.shape[2] == 3):
            raise ValueError(f"IrisAtariWrapper needs RGB observations (obs_type='rgb'), {env_id} has {obs_space}")

    # -- helpers -----------------------------------------------------------------------------
    def _observe(self, pooled: bool) -> np.ndarray:
        assert self._last_frame is not None and self._previous_frame is not None
        frame = max_pool_frames(self._previous_frame, self._last_frame) if pooled else self._last_frame
        return resize_frame(frame, self.screen_size)

    def _push_frame(self, frame: np.ndarray) -> None:
        self._previous_frame = self._last_frame if self._last_frame is not None else frame
        self._last_frame = frame

    def _repeat_action(self, action) -> tuple[float, bool, bool, dict[str, Any]]:
        """Play ``action`` for ``frame_skip`` raw frames (fewer if the game ends)."""
        total_reward = 0.0
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.frame_skip):
            frame, reward, terminated, truncated, info = self.env.step(action)
            self._push_frame(frame)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return total_reward, terminated, truncated, info

    def _real_reset(self, **kwargs) -> dict[str, Any]:
        frame, info = self.env.reset(**kwargs)
        self._previous_frame = self._last_frame = None
        self._push_frame(frame)
        if self.noop_max > 0:
            n_noops = int(self.unwrapped.np_random.integers(1, self.noop_max + 1))
            for _ in range(n_noops):
                frame, _, terminated, truncated, info = self.env.step(_NOOP_ACTION)
                self._push_frame(frame)
                if terminated or truncated:
                    frame, info = self.env.reset()
                    self._previous_frame = self._last_frame = None
                    self._push_frame(frame)
        return info

    def _press_fire(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for action in (1, 2):  # FIRE, then another action, as SB3's FireResetEnv
            frame, _, terminated, truncated, info = self.env.step(action)
            self._push_frame(frame)
            if terminated or truncated:
                info = self._real_reset()
        return info

    # -- gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        pooled = False
        if self._continue_game and seed is None and not options:
            # The previous episode ended on a life loss: go on with the same game (one no-op step).
            _, terminated, truncated, info = self._repeat_action(_NOOP_ACTION)
            pooled = True
            if terminated or truncated:
                info = self._real_reset()
                pooled = False
        else:
            reset_kwargs: dict[str, Any] = {}
            if seed is not None:
                reset_kwargs["seed"] = seed
            if options is not None:
                reset_kwargs["options"] = options
            info = self._real_reset(**reset_kwargs)
        if self.fire_on_reset:
            info = self._press_fire()
        self._continue_game = False
        self._lives = self._ale.lives()
        return self._observe(pooled=pooled), info

    def step(self, action):
        reward, terminated, truncated, info = self._repeat_action(action)
        lives = self._ale.lives()
        # ``0 < lives``: some games (Qbert) sit at 0 lives for a few frames before game over.
        life_lost = 0 < lives < self._lives
        self._lives = lives
        game_over = terminated or truncated
        info = dict(info)
        info["life_loss"] = life_lost
        if life_lost and self.terminal_on_life_loss and not game_over:
            terminated = True
            self._continue_game = True
        else:
            self._continue_game = False
        return self._observe(pooled=True), reward, terminated, truncated, info


class IrisAtariEvalWrapper(IrisAtariWrapper):
    """:class:`IrisAtariWrapper` with the evaluation reference settings (``training=False``):
    one no-op at reset, no episode end on life loss, 108 000-frame limit."""

    def __init__(self, env: gym.Env, **kwargs: Any) -> None:
        kwargs.setdefault("training", False)
        super().__init__(env, **kwargs)


def make_iris_atari_env(
    env_id: str,
    training: bool = True,
    seed: Optional[int] = None,
    render_mode: Optional[str] = None,
    monitor: bool = True,
    monitor_file: Optional[str] = None,
    env_kwargs: Optional[dict[str, Any]] = None,
    **wrapper_kwargs: Any,
) -> gym.Env:
    """Make one IRIS-preprocessed Atari env: ``gym.make`` -> ``Monitor`` -> :class:`IrisAtariWrapper`.

    The ``Monitor`` sits below the wrapper, so its episode statistics are per real game (and SB3
    algorithms will not add another ``Monitor`` on top). For several envs, use
    ``make_vec_env(env_id, n_envs, wrapper_class=IrisAtariWrapper, wrapper_kwargs=...)``, which
    gives the same stack.

    :param env_id: a ``*NoFrameskip-v4`` id, e.g. ``"PongNoFrameskip-v4"``.
    :param training: reference training settings (True) or evaluation settings (False).
    :param seed: seeds the first reset (and the no-op draws) and the action space.
    :param render_mode: passed to ``gym.make`` (e.g. ``"rgb_array"``).
    :param monitor: put SB3's ``Monitor`` below the wrapper.
    :param monitor_file: ``Monitor`` log file (None: no file).
    :param env_kwargs: extra keyword arguments for ``gym.make``.
    :param wrapper_kwargs: overrides for :class:`IrisAtariWrapper` (e.g. ``max_episode_frames``).
    """
    import ale_py

    if hasattr(gym, "register_envs"):
        gym.register_envs(ale_py)
    env = gym.make(env_id, render_mode=render_mode, **(env_kwargs or {}))
    if monitor:
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(env, filename=monitor_file)
    env = IrisAtariWrapper(env, training=training, **wrapper_kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env
