"""Callbacks that show what the IRIS networks learned: reconstructions, imagined rollouts, world-model metrics.

All three are SB3 ``BaseCallback`` subclasses constructible with keyword arguments only, so they work from Python
and from RL Zoo's ``callback:`` key::

    callback:
      - sb3_iris.callbacks.ReconstructionCallback: {every_n_epochs: 10}
      - sb3_iris.callbacks.ImaginedRolloutCallback: {every_n_epochs: 10, save_dir: logs/imagined}
      - sb3_iris.callbacks.WorldModelEvalCallback: {every_n_epochs: 10}

When they run. IRIS epochs are "collect, then train": in epoch ``e`` the agent collects ``n_steps_per_epoch``
steps with the networks trained during epochs ``1..e-1``, then trains them, then dumps the logs
(``logger.dump(step=num_timesteps)``). The callbacks act at the end of a collection phase (``_on_rollout_end``),
when ``k = model._n_epochs`` training epochs are done and ``k`` is a multiple of ``every_n_epochs``: what they
log shows the networks after ``k`` epochs of training (the ones that just collected the data), and it is written
by the dump at the end of epoch ``k + 1``, at the same step. Nothing trains during collection, so this is the
state the previous training phase left. With ``log_on_training_end`` (default) the final networks are also
logged (and dumped) when ``learn()`` returns; that covers the ``final_training_epochs`` of IRIS, during which no
collection -- hence no callback event -- happens.

Keys: ``iris/reconstructions`` (image) and ``iris/reconstruction_l1``; ``iris/imagined_rollouts`` (video) and
``iris/imagined_*`` scalars; ``iris_eval/*`` scalars. Images and videos only go to TensorBoard.

The callbacks leave training reproducible: they save and restore the random states they touch (numpy's global
generator, torch's, the replay buffer's), and restore the train/eval mode of the networks.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback

from sb3_iris.envs import truncations_from_infos
from sb3_iris.nn.tokenizer import codebook_usage
from sb3_iris.nn.world_model import IGNORE_INDEX
from sb3_iris.spaces import is_image
from sb3_iris.visualize import (
    GREY,
    RED,
    annotate,
    log_tensorboard_video,
    make_grid,
    to_uint8_images,
    upscale,
    video_grid,
    write_video,
)

__all__ = ["ImaginedRolloutCallback", "ReconstructionCallback", "WorldModelEvalCallback", "segments_from_steps"]

_MEDIA_EXCLUDE = ("stdout", "log", "json", "csv")


@contextmanager
def preserved_random_state(model: Any) -> Iterator[None]:
    """Run a block without changing the random streams training uses (numpy, torch, the replay's generator)."""
    np_state = np.random.get_state()
    buffer_rng = getattr(getattr(model, "replay_buffer", None), "rng", None)
    buffer_state = buffer_rng.bit_generator.state if isinstance(buffer_rng, np.random.Generator) else None
    device = torch.device(getattr(model, "device", "cpu"))
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)
        if buffer_state is not None:
            buffer_rng.bit_generator.state = buffer_state


@contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for a block, then restore their train/eval flags."""
    flags = [[m.training for m in module.modules()] for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, module_flags in zip(modules, flags):
            for m, flag in zip(module.modules(), module_flags):
                m.training = flag


class _IrisEpochCallback(BaseCallback):
    """Runs :meth:`_log_epoch` at the end of the collection after every ``every_n_epochs`` training epochs.

    :param every_n_epochs: log after every this many training epochs
    :param wait_for_training: skip the epochs before the networks involved started training
    :param log_on_training_end: also log the final networks when ``learn()`` returns (and dump the logger)
    :param verbose: 0 silent, 1 print a line when something is logged or saved
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        wait_for_training: bool = True,
        log_on_training_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} must be an integer >= 1")
        self.every_n_epochs = int(every_n_epochs)
        self.wait_for_training = wait_for_training
        self.log_on_training_end = log_on_training_end
        self._last_logged_epoch: Optional[int] = None

    # Which training phase must have run for the output to mean something.
    _needs_phase = "tokenizer"

    def _init_callback(self) -> None:
        model = self.model
        missing = [name for name in ("replay_buffer", "_n_epochs", "imagine") if not hasattr(model, name)]
        if missing or not hasattr(model.policy, "tokenizer"):
            raise TypeError(f"{type(self).__name__} works with sb3_iris.IRIS models, got {type(model).__name__}")

    @property
    def trained_epochs(self) -> int:
        """Training epochs done so far (``model._n_epochs``)."""
        return int(self.model._n_epochs)

    def _ready(self) -> bool:
        if self.model.replay_buffer.n_steps == 0:
            return False
        if not self.wait_for_training:
            return True
        start_after = getattr(self.model, f"{self._needs_phase}_start_after_epochs", 0)
        return self.trained_epochs > start_after

    def _due(self) -> bool:
        epochs = self.trained_epochs
        return epochs > 0 and epochs % self.every_n_epochs == 0 and epochs != self._last_logged_epoch and self._ready()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self._due():
            self._run()

    def _on_training_end(self) -> None:
        due = self.log_on_training_end and self.trained_epochs != self._last_logged_epoch and self._ready()
        if due and self._run(final=True):
            self.logger.dump(step=self.num_timesteps)

    def _run(self, final: bool = False) -> bool:
        self._last_logged_epoch = self.trained_epochs
        policy = self.model.policy
        modules = (policy.tokenizer, policy.world_model, policy.actor_critic)
        with preserved_random_state(self.model), torch.no_grad(), eval_mode(*modules):
            return self._log_epoch(final)

    def _log_epoch(self, final: bool) -> bool:
        """Record the values; return True if something was recorded."""
        raise NotImplementedError

    @property
    def _is_image(self) -> bool:
        return is_image(self.model.observation_space)


class ReconstructionCallback(_IrisEpochCallback):
    """Log real frames (top row) and the tokenizer's reconstructions of them (bottom row) as a TensorBoard image.

    Frames are drawn uniformly from the replay buffer. Also records ``iris/reconstruction_l1`` (mean absolute
    error in the tokenizer's preprocessed space: [-1, 1] for images). Vector observations get the scalar only.

    :param every_n_epochs: log after every this many training epochs
    :param n_frames: frames in the grid
    :param upscale_to: nearest-neighbour upscaling of each frame to at least this many pixels wide (1: none)
    :param save_dir: also save the grids as PNG files there (None: no files)
    :param seed: seed of the frame sampling
    :param wait_for_training: skip the epochs before the tokenizer started training
    :param log_on_training_end: also log the final tokenizer when ``learn()`` returns
    :param verbose: verbosity
    """

    _needs_phase = "tokenizer"

    def __init__(
        self,
        every_n_epochs: int = 10,
        n_frames: int = 8,
        upscale_to: int = 64,
        save_dir: Optional[str] = None,
        seed: Optional[int] = None,
        wait_for_training: bool = True,
        log_on_training_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, wait_for_training, log_on_training_end, verbose)
        if n_frames < 1:
            raise ValueError(f"n_frames={n_frames} must be >= 1")
        self.n_frames = int(n_frames)
        self.upscale_to = int(upscale_to)
        self.save_dir = save_dir
        self.rng = np.random.default_rng(seed)

    def _sample_frames(self) -> np.ndarray:
        buffer = self.model.replay_buffer
        first, end = buffer.time_range
        times = self.rng.integers(first, end, size=self.n_frames)
        envs = self.rng.integers(0, buffer.n_envs, size=self.n_frames)
        return buffer.observations_at(envs, times)

    def _log_epoch(self, final: bool) -> bool:
        policy = self.model.policy
        tokenizer = policy.tokenizer
        frames = self._sample_frames()
        x = tokenizer.preprocess(torch.as_tensor(frames, device=self.model.device))
        reconstruction = tokenizer.reconstruct(x)
        self.logger.record("iris/reconstruction_l1", float((x - reconstruction.float()).abs().mean()))
        if not self._is_image:
            return True
        real = to_uint8_images(frames, channels_first=True)
        fake = to_uint8_images(reconstruction, channels_first=True)
        factor = max(1, -(-self.upscale_to // real.shape[2]))
        grid = make_grid(upscale(np.concatenate([real, fake]), factor), ncols=len(real))
        from stable_baselines3.common.logger import Image

        self.logger.record("iris/reconstructions", Image(grid, "HWC"), exclude=_MEDIA_EXCLUDE)
        if self.save_dir is not None:
            from PIL import Image as PILImage

            os.makedirs(self.save_dir, exist_ok=True)
            path = os.path.join(self.save_dir, f"reconstructions_epoch{self.trained_epochs:04d}.png")
            PILImage.fromarray(grid).save(path)
            if self.verbose >= 1:
                print(f"ReconstructionCallback: saved {path}")
        return True


class ImaginedRolloutCallback(_IrisEpochCallback):
    """Generate trajectories in the world model with the policy acting, and log them as a video.

    Uses ``model.imagine(n_rollouts, keep_observations=True)``: real starting contexts from the replay (burned
    into the actor's LSTM), then ``imagination_horizon`` imagined steps. Each frame is upscaled and annotated
    with the step, the action and the predicted reward (``r=+1``); a predicted episode end gets a red border and
    the frames imagined after it are dimmed. The N rollouts are tiled side by side in one TensorBoard video
    ``iris/imagined_rollouts`` (see :func:`sb3_iris.visualize.log_tensorboard_video`) and, with ``save_dir``, in a
    GIF/MP4 file per logging epoch. Scalars: ``iris/imagined_reward_sum``, ``iris/imagined_return`` (discounted
    by ``gamma``, up to the first predicted end), ``iris/imagined_end_fraction``, ``iris/imagined_length``,
    ``iris/imagined_value_mean``. For vector observations only the scalars are logged (with a warning, once).

    :param every_n_epochs: log after every this many training epochs
    :param n_rollouts: imagined trajectories per video
    :param save_dir: also write a video file per logging epoch there (None: TensorBoard only)
    :param fps: frames per second of the videos
    :param file_format: ``"gif"`` or ``"mp4"`` (files in ``save_dir``)
    :param upscale_to: upscale frames (nearest neighbour) to at least this many pixels wide, for readable text
    :param wait_for_training: skip the epochs before the world model started training
    :param log_on_training_end: also log with the final networks when ``learn()`` returns
    :param verbose: verbosity
    """

    _needs_phase = "world_model"

    def __init__(
        self,
        every_n_epochs: int = 10,
        n_rollouts: int = 4,
        save_dir: Optional[str] = None,
        fps: float = 8,
        file_format: str = "gif",
        upscale_to: int = 128,
        wait_for_training: bool = True,
        log_on_training_end: bool = True,
        verbose: int = 0,
    ) -> None:
        super().__init__(every_n_epochs, wait_for_training, log_on_training_end, verbose)
        if n_rollouts < 1:
            raise ValueError(f"n_rollouts={n_rollouts} must be >= 1")
        file_format = file_format.lower().lstrip(".")
        if file_format not in ("gif", "mp4"):
            raise ValueError(f"file_format={file_format!r} must be 'gif' or 'mp4'")
        self.n_rollouts = int(n_rollouts)
        self.save_dir = save_dir
        self.fps = fps
        self.file_format = file_format
        self.upscale_to = int(upscale_to)
        self.saved_files: list[str] = []
        self._warned_vector = False
        self._action_names: Optional[list[str]] = None

    def _init_callback(self) -> None:
        super()._init_callback()
        try:
            names = self.training_env.env_method("get_action_meanings", indices=[0])[0]
            self._action_names = [str(name) for name in names]
        except Exception:
            self._action_names = None

    def _action_label(self, action: int) -> str:
        if self._action_names is not None and 0 <= action < len(self._action_names):
            return self._action_names[action]
        return str(action)

    def _log_epoch(self, final: bool) -> bool:
        model = self.model
        rollout = model.imagine(self.n_rollouts, keep_observations=True)
        rewards = rollout.rewards.float().cpu().numpy()
        ends = rollout.ends.bool().cpu().numpy()
        actions = rollout.actions.cpu().numpy()
        values = rollout.values.float().cpu().numpy()
        horizon = rewards.shape[1]
        # alive[b, t]: no end was predicted before step t (the step that predicts the end still counts).
        ended_before = np.concatenate([np.zeros((len(ends), 1), dtype=bool), np.cumsum(ends, 1)[:, :-1] > 0], 1)
        alive = ~ended_before
        discounts = float(model.gamma) ** np.arange(horizon)
        self.logger.record("iris/imagined_reward_sum", float((rewards * alive).sum(1).mean()))
        self.logger.record("iris/imagined_return", float((rewards * alive * discounts).sum(1).mean()))
        self.logger.record("iris/imagined_end_fraction", float(ends.any(1).mean()))
        self.logger.record("iris/imagined_length", float(alive.sum(1).mean()))
        self.logger.record("iris/imagined_value_mean", float(values.mean()))
        if not self._is_image:
            if not self._warned_vector:
                warnings.warn(
                    "ImaginedRolloutCallback: the observations are not images, no video is logged "
                    "(only the iris/imagined_* statistics)",
                    stacklevel=2,
                )
                self._warned_vector = True
            return True

        frames = to_uint8_images(rollout.observations, channels_first=True)  # (B, H, h, w, 3)
        factor = max(1, -(-self.upscale_to // frames.shape[3]))
        font_size = 10 if frames.shape[3] * factor >= 96 else 8
        videos = []
        for b in range(frames.shape[0]):
            video = []
            for t in range(horizon):
                lines = [f"t={t} a={self._action_label(int(actions[b, t]))}", f"r={rewards[b, t]:+.0f}"]
                if ends[b, t]:
                    lines[1] += " END"
                border = RED if ends[b, t] else (GREY if ended_before[b, t] else None)
                frame = annotate(
                    upscale(frames[b, t], factor), lines, border=border, font_size=font_size, dim=ended_before[b, t]
                )
                video.append(frame)
            videos.append(np.stack(video))
        videos = np.stack(videos)  # (N, T, H', W', 3)
        log_tensorboard_video(self.logger, "iris/imagined_rollouts", videos, self.fps, self.num_timesteps)
        if self.save_dir is not None:
            suffix = "_final" if final else ""
            path = os.path.join(self.save_dir, f"imagined_epoch{self.trained_epochs:04d}{suffix}.{self.file_format}")
            write_video(path, list(video_grid(videos)), self.fps)
            self.saved_files.append(path)
            if self.verbose >= 1:
                print(f"ImaginedRolloutCallback: saved {path}")
        return True


#: One recorded vector-env step: observations, actions, rewards, terminations and dones, one row per env.
RecordedStep = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def segments_from_steps(
    steps: Sequence[RecordedStep], length: int, n_segments: int, rng: np.random.Generator
) -> Optional[dict[str, np.ndarray]]:
    """Cut recorded vector-env steps into world-model segments, as training sees them (right-padded, with a mask).

    Each env's steps are split at episode ends (``dones``), then into pieces of at most ``length`` steps; up to
    ``n_segments`` pieces, chosen at random, are returned.

    :param steps: the steps in time order, each ``(observations, actions, rewards, terminations, dones)`` with one row
        per env
    :param length: steps per segment
    :param n_segments: most segments returned
    :param rng: chooses the segments
    :return: ``observations`` ``(N, length, ...)``, ``actions``, ``rewards``, ``terminations`` and ``mask`` ``(N,
        length)``; None when there are no steps
    """
    if not steps:
        return None
    obs, actions, rewards, terminations, dones = (np.stack(x, axis=1) for x in zip(*steps))  # (E, T, ...)
    pieces = []
    for env in range(obs.shape[0]):
        start = 0
        boundaries = [int(t) + 1 for t in np.flatnonzero(dones[env])]
        for stop in [*boundaries, obs.shape[1]]:
            for s in range(start, stop, length):
                pieces.append((env, s, min(s + length, stop)))
            start = stop
    chosen = rng.permutation(len(pieces))[:n_segments]
    n = len(chosen)
    batch = {
        "observations": np.zeros((n, length, *obs.shape[2:]), dtype=obs.dtype),
        "actions": np.zeros((n, length), dtype=np.int64),
        "rewards": np.zeros((n, length), dtype=np.float32),
        "terminations": np.zeros((n, length), dtype=bool),
        "mask": np.zeros((n, length), dtype=bool),
    }
    for i, index in enumerate(chosen):
        env, s, e = pieces[index]
        k = e - s
        batch["observations"][i, :k] = obs[env, s:e]
        batch["actions"][i, :k] = actions[env, s:e]
        batch["rewards"][i, :k] = rewards[env, s:e]
        batch["terminations"][i, :k] = terminations[env, s:e]
        batch["mask"][i, :k] = True
    return batch


class WorldModelEvalCallback(_IrisEpochCallback):
    """Evaluate the world model and the tokenizer on fresh real data that they have never been trained on.

    Held-out data. IRIS trains on all the data it collects, so an honest evaluation needs data the networks have
    not seen. This callback records the transitions of the collection phase that ends right before it evaluates
    (``n_steps_per_epoch`` steps collected by the current policy, the same distribution as the training data) and
    evaluates on them *before* the training phase of that epoch uses them. It needs no extra environment and no
    extra env steps; ``holdout`` data are simply "the newest data, not yet trained on". Segments of
    ``sequence_length`` consecutive steps are cut from these transitions at episode boundaries (right-padded with a
    mask, as in training) and up to ``n_segments`` of them are evaluated.

    Scalars (``iris_eval/...``), all teacher-forced on the real token sequences:

    - ``observation_loss``, ``reward_loss``, ``end_loss``: the world model's three cross-entropies;
    - ``next_token_accuracy``: argmax next-observation-token accuracy;
    - ``reward_sign_accuracy`` (and ``reward_sign_accuracy_nonzero`` on steps with a non-zero reward, when any);
    - ``end_accuracy`` (and ``end_recall`` on the steps that ended an episode, when any);
    - ``reconstruction_l1``: tokenizer L1 error in the preprocessed space ([-1, 1] for images);
    - ``codebook_usage`` (fraction of codes used by these frames) and ``codebook_perplexity``;
    - ``n_segments``, ``n_steps``.

    :param every_n_epochs: evaluate after every this many training epochs
    :param n_segments: maximum number of segments evaluated
    :param sequence_length: steps per segment (None: the model's ``sequence_length``)
    :param seed: seed of the segment selection
    :param wait_for_training: skip the epochs before the world model started training
    :param verbose: verbosity
    """

    _needs_phase = "world_model"

    def __init__(
        self,
        every_n_epochs: int = 10,
        n_segments: int = 32,
        sequence_length: Optional[int] = None,
        seed: Optional[int] = None,
        wait_for_training: bool = True,
        verbose: int = 0,
    ) -> None:
        # The final networks have no unseen data left to be evaluated on: no evaluation at training end.
        super().__init__(every_n_epochs, wait_for_training, log_on_training_end=False, verbose=verbose)
        if n_segments < 1:
            raise ValueError(f"n_segments={n_segments} must be >= 1")
        self.n_segments = int(n_segments)
        self.sequence_length = sequence_length
        self.rng = np.random.default_rng(seed)
        self._recording = False
        self._steps: list[RecordedStep] = []
        self.last_metrics: dict[str, float] = {}

    def _on_rollout_start(self) -> None:
        # The evaluation at the end of this collection will use exactly the steps collected now.
        self._steps = []
        self._recording = self._due_at_rollout_end()

    def _due_at_rollout_end(self) -> bool:
        epochs = self.trained_epochs
        if epochs <= 0 or epochs % self.every_n_epochs or epochs == self._last_logged_epoch:
            return False
        start_after = getattr(self.model, "world_model_start_after_epochs", 0)
        return not self.wait_for_training or epochs > start_after

    def _on_step(self) -> bool:
        if self._recording:
            infos = self.locals["infos"]
            dones = np.asarray(self.locals["dones"], dtype=bool)
            truncated = truncations_from_infos(infos, dones)
            self._steps.append(
                (
                    np.array(self.model._last_obs, copy=True),  # the observation the action was taken from
                    np.asarray(self.locals["actions"]).astype(np.int64).copy(),
                    np.asarray(self.locals["rewards"], dtype=np.float32).copy(),
                    dones & ~truncated,
                    dones,
                )
            )
        return True

    def _on_rollout_end(self) -> None:
        if self._recording and self._steps:
            self._run()
        self._recording = False
        self._steps = []

    def _log_epoch(self, final: bool) -> bool:
        world_model = self.model.policy.world_model
        length = int(self.sequence_length or self.model.sequence_length)
        batch = segments_from_steps(self._steps, min(length, world_model.config.max_blocks), self.n_segments, self.rng)
        if batch is None:
            return False
        metrics = self.evaluate_segments(**batch)
        for key, value in metrics.items():
            self.logger.record(f"iris_eval/{key}", value)
        self.last_metrics = metrics
        if self.verbose >= 1:
            print(
                f"WorldModelEvalCallback (after {self.trained_epochs} epochs): "
                + ", ".join(f"{k}={v:.3g}" for k, v in sorted(metrics.items()))
            )
        return True

    @torch.no_grad()
    def evaluate_segments(
        self,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminations: np.ndarray,
        mask: np.ndarray,
    ) -> dict[str, float]:
        """Metrics of the model's world model and tokenizer on a batch of segments (networks used as they are).

        :param observations: ``(B, L, *obs_shape)`` raw observations (policy layout)
        :param actions: ``(B, L)`` actions
        :param rewards: ``(B, L)`` rewards
        :param terminations: ``(B, L)`` episode terminations
        :param mask: ``(B, L)`` True for real steps (segments are right-padded)
        :return: the metrics, keys without the ``iris_eval/`` prefix
        """
        model = self.model
        tokenizer, world_model = model.policy.tokenizer, model.policy.world_model
        device = model.device
        mask_t = torch.as_tensor(mask, device=device)
        n, length = mask_t.shape
        real_obs = torch.as_tensor(observations[mask], device=device)
        x = tokenizer.preprocess(real_obs)
        real_tokens = tokenizer.tokenize(x)
        reconstruction = tokenizer.decode_tokens(real_tokens).float()
        # Padded steps hold the tokens of an all-zero observation, as in training (their labels are ignored).
        zero = torch.zeros((1, *real_obs.shape[1:]), dtype=real_obs.dtype, device=device)
        padding_tokens = tokenizer.tokenize(tokenizer.preprocess(zero))[0]
        obs_tokens = padding_tokens.expand(n, length, -1).clone()
        obs_tokens[mask_t] = real_tokens

        actions_t = torch.as_tensor(actions, device=device).long()
        rewards_t = torch.as_tensor(rewards, device=device).float()
        terminations_t = torch.as_tensor(terminations, device=device).bool()
        # The predictions and targets of the training loss (sequential or parallel observation prediction).
        predictions = world_model.predictions(obs_tokens, actions_t, rewards_t, terminations_t, mask_t)

        metrics: dict[str, float] = {}

        def correct_predictions(name: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = logits.float()
            valid = labels != IGNORE_INDEX
            if valid.any():
                metrics[f"{name}_loss"] = float(F.cross_entropy(logits[valid], labels[valid]))
            return (logits.argmax(-1) == labels) & valid

        correct_obs = correct_predictions("observation", predictions.observations, predictions.observation_labels)
        valid_obs = predictions.observation_labels != IGNORE_INDEX
        if valid_obs.any():
            metrics["next_token_accuracy"] = float(correct_obs.sum() / valid_obs.sum())
        correct_rewards = correct_predictions("reward", predictions.rewards, predictions.reward_labels)
        correct_ends = correct_predictions("end", predictions.ends, predictions.end_labels)
        flat_mask = mask_t.flatten()
        n_steps = int(flat_mask.sum())
        metrics["reward_sign_accuracy"] = float(correct_rewards.sum()) / n_steps
        metrics["end_accuracy"] = float(correct_ends.sum()) / n_steps
        nonzero = (rewards_t != 0).flatten() & flat_mask
        if nonzero.any():
            metrics["reward_sign_accuracy_nonzero"] = float(correct_rewards[nonzero].float().mean())
        ended = terminations_t.flatten() & flat_mask
        if ended.any():
            metrics["end_recall"] = float(correct_ends[ended].float().mean())
        metrics["reconstruction_l1"] = float((x.float() - reconstruction).abs().mean())
        used, perplexity = codebook_usage(real_tokens, tokenizer.vocab_size)
        metrics["codebook_usage"] = used
        metrics["codebook_perplexity"] = perplexity
        metrics["n_segments"] = float(n)
        metrics["n_steps"] = float(n_steps)
        return metrics
